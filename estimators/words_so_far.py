"""A cheap look-ahead baseline for length-shaped rewards: the expected final reward given only
how many words the response has so far.

`WordsSoFarValue.fit(completions, rewards)` estimates, from the base model's own training
samples, V(n) = mean final reward of the responses that reached at least n words, i.e.
E[R | the response has n words so far] under the base policy, ignoring what the words say. It
looks ahead where the prefix reward cannot (a 20-word prefix of a reward that wants 25 to 35
words is promising, not bad), so a learned value model has to beat it too. It is a table of a
few dozen floats: free to evaluate, fitted in milliseconds, and it knows nothing the training
data's lengths do not.

It satisfies `vas_api.types.ValueFunction` (with `render_prompt` and prompt lengths, as
`estimators.baselines.PrefixRewardValue`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from vas_api.errors import DataError, ValueModelError

from .baselines import CHATML_ASSISTANT, PromptSplit, split_after_marker
from .prompt_format import DEFAULT_FORMAT, PromptFormat

__all__ = ["WordsSoFarValue"]


class WordsSoFarValue:
    """V(text) = table[number of words of the response so far] (see the module docstring).

    Args:
        table: table[n] = expected final reward at n words so far; counts past the end use the
            last entry.
        description: what the table was fitted on (shown in reports).
        prompt_split: for texts that come without their prompt's end (as in PrefixRewardValue).
        prompt_format: how `render_prompt` renders prompts.

    Raises:
        DataError: an empty table or a non-finite entry.
    """

    def __init__(
        self,
        table: Sequence[float],
        *,
        description: str = "words-so-far",
        prompt_split: PromptSplit | None = None,
        prompt_format: PromptFormat = DEFAULT_FORMAT,
    ) -> None:
        if not table or not all(isinstance(v, int | float) and math.isfinite(v) for v in table):
            raise DataError("a words-so-far table needs at least one entry, all finite")
        self.table = [float(v) for v in table]
        self.description = description
        self.split = prompt_split or split_after_marker(CHATML_ASSISTANT)
        self.prompt_format = prompt_format

    @classmethod
    def fit(
        cls,
        completions: Sequence[str],
        rewards: Sequence[float],
        *,
        min_count: int = 5,
        description: str = "",
        **kwargs: Any,
    ) -> WordsSoFarValue:
        """Fit the table on finished training samples.

        Args:
            completions: the base model's responses (whole, as sampled).
            rewards: each response's final reward.
            min_count: the table stops at the first word count fewer than this many responses
                reach (their mean would be noise); longer prefixes use the last entry.
            description: shown in reports; default names the sample count.
            **kwargs: prompt_split, prompt_format (see the class).

        Raises:
            DataError: no samples, unequal lengths, a non-finite reward, or min_count < 1.
        """
        if len(completions) != len(rewards):
            raise DataError(f"{len(completions)} completions for {len(rewards)} rewards")
        if not completions:
            raise DataError("fitting a words-so-far table needs at least one sample")
        if min_count < 1:
            raise DataError(f"min_count must be at least 1, got {min_count}")
        if not all(math.isfinite(r) for r in rewards):
            raise DataError("every reward must be a finite number")
        lengths = [len(c.split()) for c in completions]
        table: list[float] = []
        for n in range(max(lengths) + 1):
            reached = [r for length, r in zip(lengths, rewards, strict=True) if length >= n]
            if len(reached) < min(min_count, len(completions)):
                break
            table.append(sum(reached) / len(reached))
        return cls(table, description=description or f"words-so-far(n={len(completions)})", **kwargs)

    def value_of(self, response_so_far: str) -> float:
        """The table's value for one response prefix."""
        n = len(response_so_far.split())
        return self.table[min(n, len(self.table) - 1)]

    def render_prompt(self, prompt: str | Sequence[dict[str, Any]]) -> str:
        """The prompt text in this function's canonical form (only its length matters here)."""
        return self.prompt_format.render(prompt)

    def values(self, texts: Sequence[str], *, prompt_lens: Sequence[int] | None = None) -> list[float]:
        """V(text) for each rendered prompt + response so far, shape (B,).

        Raises:
            ValueModelError: prompt_lens of the wrong length, or a text without the prompt marker.
        """
        if prompt_lens is not None:
            if len(prompt_lens) != len(texts):
                raise ValueModelError(f"{len(prompt_lens)} prompt_lens for {len(texts)} texts.")
            return [self.value_of(t[n:]) for t, n in zip(texts, prompt_lens, strict=True)]
        return [self.value_of(self.split(t)[1]) for t in texts]

    def score_candidates(
        self, prefix_text: str, candidate_texts: Sequence[str], *, prompt_len: int | None = None
    ) -> list[float]:
        """V(prefix_text + c) for each candidate c, shape (k,)."""
        lens = None if prompt_len is None else [prompt_len] * len(candidate_texts)
        return self.values([prefix_text + c for c in candidate_texts], prompt_lens=lens)
