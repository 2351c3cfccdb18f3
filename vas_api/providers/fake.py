"""A provider with known next-token distributions, for tests and offline examples.

The "model" is any function from the text so far to a {token: probability} table; the special
token `EOS` ends a response. Every call is recorded in `history` so tests can count calls and
check the requests, and usage is counted as one token per character of prompt text (a stand-in
for billing that still grows with the prefix, like a real API).
"""

from __future__ import annotations

import asyncio
import math
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigError
from ..types import (
    Candidate,
    Completion,
    Draft,
    Position,
    Prefix,
    Prompt,
    ProviderProfile,
    Samples,
    Usage,
)

__all__ = ["EOS", "FakeProvider", "AsyncFakeProvider", "table_model"]

EOS = "<eos>"

NextTokenModel = Callable[[str], Mapping[str, float]]


def table_model(table: Mapping[str, float]) -> NextTokenModel:
    """A model whose next-token distribution is the same table after every prefix."""
    return lambda _text: table


@dataclass
class FakeProvider:
    """Synchronous fake endpoint over a known next-token model.

    Args:
        next_token: maps the full text so far to {token: probability} (need not be normalised;
            it is normalised here). Use the key `EOS` for end of sequence.
        profile: what the fake endpoint claims it can do (defaults: completions-style
            continuation, legacy logprobs, top_k parameter accepted, no cap on k).
        seed: seeds the fake server's own sampling (drafts and plain samples).
    """

    next_token: NextTokenModel
    profile: ProviderProfile = field(
        default_factory=lambda: ProviderProfile(
            name="fake", max_top_k=None, logprob_shape="legacy", continuation="completions",
            top_k_param=True, n_param=True,
        )
    )
    seed: int | None = 0
    model: str = "fake-model"
    history: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)

    # -- the Provider protocol ------------------------------------------------------------
    def prompt_text(self, prompt: Prompt) -> str:
        if isinstance(prompt, str):
            return prompt
        return "".join(f"<{m['role']}>{m['content']}\n" for m in prompt) + "<assistant>"

    def candidates(self, prefix: Prefix, *, k: int) -> Draft:
        text = self.prompt_text(prefix.prompt) + prefix.response
        self.history.append({"call": "candidates", "text": text, "k": k})
        position = Position(self._top_k(text, k), None)
        return Draft([position], "length", self._usage(text, 1))

    def draft(self, prefix: Prefix, *, m: int, k: int, restrict_top_k: bool = False) -> Draft:
        if restrict_top_k and not self.profile.top_k_param:
            raise ConfigError("this fake profile has no top_k parameter")
        text = self.prompt_text(prefix.prompt) + prefix.response
        self.history.append(
            {"call": "draft", "text": text, "m": m, "k": k, "restrict_top_k": restrict_top_k}
        )
        start_len = len(text)
        positions: list[Position] = []
        finish = "length"
        for _ in range(m):
            dist = self._dist(text)
            top = self._top_k(text, k)
            pool = {t: dist[t] for t in map(self._token_of, top)} if restrict_top_k else dist
            token = self._draw(pool)
            positions.append(Position(top, self._candidate(token, dist[token])))
            if token == EOS:
                finish = "stop"
                break
            text += token
        usage = self._usage(text[:start_len], len(positions))
        return Draft(positions, finish, usage)

    def sample(
        self,
        prefix: Prefix,
        *,
        n: int,
        max_tokens: int,
        temperature: float = 1.0,
        stop: Sequence[str] | None = None,
        seed: int | None = None,
    ) -> Samples:
        if temperature != 1.0:
            raise ConfigError("the fake provider samples only at temperature 1")
        rng = random.Random(seed) if seed is not None else self._rng
        base = self.prompt_text(prefix.prompt) + prefix.response
        self.history.append({"call": "sample", "text": base, "n": n, "max_tokens": max_tokens})
        out, generated = [], 0
        for _ in range(n):
            text, finish = "", "length"
            for _ in range(max_tokens):
                token = self._draw(self._dist(base + text), rng)
                generated += 1
                if token == EOS:
                    finish = "stop"
                    break
                text += token
                if stop and any(s in text for s in stop):
                    text = text[: min(text.index(s) for s in stop if s in text)]
                    finish = "stop"
                    break
            out.append(Completion(text, finish))
        return Samples(out, Usage(len(base), generated, 0, 1))

    # -- helpers ----------------------------------------------------------------------------
    def _dist(self, text: str) -> dict[str, float]:
        table = {t: float(p) for t, p in self.next_token(text).items() if p > 0}
        total = sum(table.values())
        if not table or not math.isfinite(total):
            raise ConfigError(f"fake model gave no distribution after {text[-30:]!r}")
        return {t: p / total for t, p in table.items()}

    def _top_k(self, text: str, k: int) -> tuple[Candidate, ...]:
        dist = self._dist(text)
        ranked = sorted(dist.items(), key=lambda kv: (-kv[1], kv[0]))[:k]
        return tuple(self._candidate(t, p) for t, p in ranked)

    @staticmethod
    def _candidate(token: str, p: float) -> Candidate:
        if token == EOS:
            return Candidate(b"", math.log(p), special=True)
        return Candidate(token.encode(), math.log(p))

    @staticmethod
    def _token_of(candidate: Candidate) -> str:
        return EOS if candidate.special else candidate.raw.decode()

    def _draw(self, pool: Mapping[str, float], rng: random.Random | None = None) -> str:
        tokens = list(pool)
        return (rng or self._rng).choices(tokens, weights=[pool[t] for t in tokens])[0]

    @staticmethod
    def _usage(prompt_text: str, completion_tokens: int) -> Usage:
        return Usage(len(prompt_text), completion_tokens, 0, 1)


class AsyncFakeProvider:
    """The asyncio twin of `FakeProvider` (same model, same history), for async client tests.

    Each call yields to the event loop once, so several requests are really in flight at once.
    """

    def __init__(self, sync: FakeProvider) -> None:
        self.sync = sync
        self.model = sync.model
        self.profile = sync.profile

    @property
    def history(self) -> list[dict[str, Any]]:
        return self.sync.history

    def prompt_text(self, prompt: Prompt) -> str:
        return self.sync.prompt_text(prompt)

    async def candidates(self, prefix: Prefix, *, k: int) -> Draft:
        await asyncio.sleep(0)
        return self.sync.candidates(prefix, k=k)

    async def draft(self, prefix: Prefix, *, m: int, k: int, restrict_top_k: bool = False) -> Draft:
        await asyncio.sleep(0)
        return self.sync.draft(prefix, m=m, k=k, restrict_top_k=restrict_top_k)

    async def sample(self, prefix: Prefix, **kwargs: Any) -> Samples:
        await asyncio.sleep(0)
        return self.sync.sample(prefix, **kwargs)
