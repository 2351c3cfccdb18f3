"""Where the states of a sample lie in a value model's tokenization.

A sample's text is prompt_text + completion, tokenized once by the value model's tokenizer.
Its states are the prefix that ends the prompt and the prefix after each completion token:
L + 1 states for a completion of L value-model tokens. The prompt/completion boundary is found
from the tokenizer's character offsets; a token that straddles the boundary (BPE merges across
the join) counts as the first completion token.

A finished sample (the base chose end of sequence) can have one more state, the *end state*:
the ids + the EOS id (`split_states(..., end_id=...)`); V there learns the terminal reward, V of
the state before it the value of going on. Fractions count completion tokens only, so the end
state is never the state at any fraction (1 is the finished text without EOS).

"Half the completion" is the state after the first floor(L / 2) completion tokens; in general
the state at fraction f is the one after floor(f * L) tokens (f = 0: the prompt alone, f = 1:
the finished text).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from vas_api.errors import DataError

from ._tokens import TextEncoder

__all__ = ["StateSplit", "split_states", "prefix_at", "prefixes_at"]


@dataclass(frozen=True, slots=True)
class StateSplit:
    """One sample's tokens and states.

    Attributes:
        input_ids: value-model token ids of prompt_text + completion (possibly left-truncated).
        prompt_state: index of the token that ends the prompt (the first state).
        ends: for each of the L + 1 states (L + 2 with the end state), how many characters of
            the completion it holds: ends[0] = 0 (the prompt alone), ends[j] = end of
            completion token j, ends[L] = len(completion) (and the end state's too).
            Non-decreasing.
        end_state: the last id is the EOS id and the last state the end state.
    """

    input_ids: tuple[int, ...]
    prompt_state: int
    ends: tuple[int, ...]
    end_state: bool = False

    @property
    def num_states(self) -> int:
        return len(self.ends)

    def state_at(self, fraction: float) -> int:
        """The state index (0..L) after floor(fraction * L) completion tokens."""
        completion_tokens = self.num_states - 1 - int(self.end_state)
        return int(fraction * completion_tokens)


def split_states(
    tokenizer: Any, prompt_text: str, completion: str, *, max_length: int | None = None,
    end_id: int | None = None,
) -> StateSplit | None:
    """Tokenize prompt_text + completion and locate its states.

    Args:
        tokenizer: a Hugging Face *fast* tokenizer (it must return offsets).
        prompt_text: the text the base continued.
        completion: the base's continuation.
        max_length: keep at most this many tokens by dropping prompt tokens from the left;
            None keeps everything.
        end_id: the EOS id: the sample finished, and gets the end state (ids + end_id, as
            `ValueModel.encode` reads text + END_OF_TEXT). None: no end state.

    Returns:
        The split, or None when the completion alone does not fit in max_length.

    Raises:
        DataError: the tokenizer returns no offsets (not a fast tokenizer) or no token.
    """
    text = prompt_text + completion
    try:
        enc = tokenizer(text, return_offsets_mapping=True, add_special_tokens=False)
    except NotImplementedError as exc:  # slow tokenizers cannot give offsets
        raise DataError("the value model's tokenizer must be a fast tokenizer") from exc
    # The same ids as ValueModel.encode: the specials the tokenizer puts in front of every
    # text (a BOS, if any), then the text's own tokens; trailing specials are left out.
    lead = TextEncoder(tokenizer).lead
    ids: list[int] = lead + list(enc["input_ids"])
    offsets: list[tuple[int, int]] = [(0, 0)] * len(lead) + [
        tuple(o) for o in enc["offset_mapping"]
    ]
    if not ids:
        raise DataError(f"the tokenizer returned no token for {text[:60]!r}")
    boundary = len(prompt_text)
    prompt_state = 0
    for i, (_, end) in enumerate(offsets):
        # Special tokens have (0, 0) offsets and belong to the prompt.
        if end <= boundary:
            prompt_state = i
        else:
            break
    ends = [0]
    for _, end in offsets[prompt_state + 1 :]:
        # Offsets may trim whitespace; keep the ends monotone and inside the completion.
        ends.append(min(len(completion), max(ends[-1], end - boundary)))
    if len(ends) > 1:
        ends[-1] = len(completion)
    if end_id is not None:
        ids.append(int(end_id))
        ends.append(len(completion))
    if max_length is not None and len(ids) > max_length:
        cut = len(ids) - max_length
        if cut > prompt_state:
            return None
        ids, prompt_state = ids[cut:], prompt_state - cut
    return StateSplit(tuple(ids), prompt_state, tuple(ends), end_id is not None)


def prefix_at(prompt_text: str, completion: str, split: StateSplit, fraction: float) -> str:
    """The text of the state at `fraction` of the completion: prompt + completion[:end]."""
    return prompt_text + completion[: split.ends[split.state_at(fraction)]]


def prefixes_at(
    tokenizer: Any, pairs: Sequence[tuple[str, str]], fraction: float
) -> list[str]:
    """`prefix_at` for many (prompt_text, completion) pairs."""
    out = []
    for prompt_text, completion in pairs:
        split = split_states(tokenizer, prompt_text, completion)
        out.append(prefix_at(prompt_text, completion, split, fraction) if split else prompt_text)
    return out
