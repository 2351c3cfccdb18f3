"""A provider with known next-token distributions, for tests and offline examples.

The "model" is any function from the context so far to a {token: probability} table; the special
token `EOS` ends a response. Every call is recorded in `history` so tests can count calls and
check the requests, and usage is counted as one token per character of prompt text (a stand-in
for billing that still grows with the prefix, like a real API).

With a `vocab` the fake is a token-level model like a real server: tokens are vocabulary entries
(str, or bytes for byte fragments that are not UTF-8 on their own), candidates carry their
index as `Candidate.id`, and the model sees the *token sequence* (prompt tokens, then response
tokens), so how a text is split into tokens matters. Text is tokenized greedily, longest match
first (prompt and response together, as a server re-tokenizes a text prompt); with
``profile.token_id_prompts`` a prefix that carries `Prefix.response_ids` is continued with those
ids instead (prompt tokenized on its own), exactly like llama.cpp's server given a list of ids.
Candidates with identical bytes are merged (probabilities added) under the id of the likelier
one, as `vas_api.logprobs.merge_candidates` does with a server's report.
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

Token = str | bytes
NextTokenModel = Callable[[Any], Mapping[Token, float]]
"""text so far -> {token: weight}; with a vocab, tuple of tokens so far -> {token: weight}."""


def table_model(table: Mapping[str, float]) -> NextTokenModel:
    """A model whose next-token distribution is the same table after every prefix."""
    return lambda _context: table


def _raw(token: Token) -> bytes:
    return token if isinstance(token, bytes) else token.encode()


@dataclass
class FakeProvider:
    """Synchronous fake endpoint over a known next-token model.

    Args:
        next_token: maps the full text so far (with a vocab: the tuple of tokens so far) to
            {token: probability} (need not be normalised; it is normalised here). Use the key
            `EOS` for end of sequence.
        profile: what the fake endpoint claims it can do (defaults: completions-style
            continuation, legacy logprobs, top_k parameter accepted, no cap on k).
        seed: seeds the fake server's own sampling (drafts and plain samples).
        vocab: token strings/bytes, id = index (EOS gets id len(vocab)); see the module
            docstring. None: tokens are the model's own keys and carry no ids.
        draft_exclude: ids a top-k draft may not sample (as the llama.cpp provider's
            logit_bias against tokens that end mid-character); the Draft says so.
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
    vocab: Sequence[Token] | None = None
    draft_exclude: frozenset[int] = frozenset()

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)
        if self.vocab is not None:
            self.vocab = tuple(self.vocab)
            self._ids = {t: i for i, t in reversed(list(enumerate(self.vocab)))}
            self._ids[EOS] = len(self.vocab)

    # -- the Provider protocol ------------------------------------------------------------
    def prompt_text(self, prompt: Prompt) -> str:
        if isinstance(prompt, str):
            return prompt
        return "".join(f"<{m['role']}>{m['content']}\n" for m in prompt) + "<assistant>"

    def continues_with_ids(self, prompt: Prompt) -> bool:
        """True when partial responses after `prompt` are sent as token ids."""
        return self.vocab is not None and self.profile.token_id_prompts

    def candidates(self, prefix: Prefix, *, k: int) -> Draft:
        context, by_ids = self._context(prefix)
        self.history.append({"call": "candidates", "text": self._text(prefix), "k": k, "by_ids": by_ids})
        position = Position(self._top_k(context, k), None)
        return Draft([position], "length", self._usage(self._text(prefix), 1))

    def draft(self, prefix: Prefix, *, m: int, k: int, restrict_top_k: bool = False) -> Draft:
        if restrict_top_k and not self.profile.top_k_param:
            raise ConfigError("this fake profile has no top_k parameter")
        context, by_ids = self._context(prefix)
        self.history.append({
            "call": "draft", "text": self._text(prefix), "m": m, "k": k,
            "restrict_top_k": restrict_top_k, "by_ids": by_ids,
        })
        positions: list[Position] = []
        finish = "length"
        for _ in range(m):
            dist = self._dist(context)
            top = self._top_k(context, k)
            if restrict_top_k:
                raws = {c.raw for c in top}
                pool = {t: dist[t] for t in dist if self._candidate(t, 0.5).raw in raws
                        and self._candidate(t, 0.5).id not in self.draft_exclude}
            else:
                pool = dist
            token = self._draw(pool)
            positions.append(Position(top, self._candidate(token, dist[token])))
            if token == EOS:
                finish = "stop"
                break
            context = self._extend(context, token)
        excluded = frozenset(self.draft_exclude) if restrict_top_k else frozenset()
        return Draft(positions, finish, self._usage(self._text(prefix), len(positions)), excluded)

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
        base = self._text(prefix)
        start, _ = self._context(prefix)
        self.history.append({"call": "sample", "text": base, "n": n, "max_tokens": max_tokens})
        out, generated = [], 0
        for _ in range(n):
            context, raw, finish = start, b"", "length"
            for _ in range(max_tokens):
                token = self._draw(self._dist(context), rng)
                generated += 1
                if token == EOS:
                    finish = "stop"
                    break
                context, raw = self._extend(context, token), raw + _raw(token)
                text = raw.decode("utf-8", errors="replace")
                if stop and any(s in text for s in stop):
                    raw = text[: min(text.index(s) for s in stop if s in text)].encode()
                    finish = "stop"
                    break
            out.append(Completion(raw.decode("utf-8", errors="replace"), finish))
        return Samples(out, Usage(len(base), generated, 0, 1))

    # -- tokens -----------------------------------------------------------------------------
    def tokenize(self, text: str) -> tuple[Token, ...]:
        """Greedy longest-match tokenization over the vocab's text entries (vocab only)."""
        assert self.vocab is not None  # noqa: S101 - internal
        words = sorted({t for t in self.vocab if isinstance(t, str) and t and t != EOS}, key=len, reverse=True)
        out, i = [], 0
        while i < len(text):
            match = next((w for w in words if text.startswith(w, i)), None)
            if match is None:
                raise ConfigError(f"the fake vocab cannot tokenize {text[i:i + 10]!r}")
            out.append(match)
            i += len(match)
        return tuple(out)

    def _text(self, prefix: Prefix) -> str:
        return self.prompt_text(prefix.prompt) + prefix.response

    def _context(self, prefix: Prefix) -> tuple[Any, bool]:
        """The model's context for `prefix`, and whether it came from response ids."""
        if self.vocab is None:
            return self._text(prefix), False
        if prefix.response_ids is not None and self.profile.token_id_prompts:
            ids = prefix.response_ids
            if any(not 0 <= i < len(self.vocab) for i in ids):
                raise ConfigError(f"token ids {ids} are outside the fake vocab")
            return self.tokenize(self.prompt_text(prefix.prompt)) + tuple(self.vocab[i] for i in ids), True
        return self.tokenize(self._text(prefix)), False

    def _extend(self, context: Any, token: Token) -> Any:
        return context + (token,) if self.vocab is not None else context + token

    def _dist(self, context: Any) -> dict[Token, float]:
        table = {t: float(p) for t, p in self.next_token(context).items() if p > 0}
        total = sum(table.values())
        if not table or not math.isfinite(total):
            raise ConfigError(f"fake model gave no distribution after {context!r}"[:200])
        return {t: p / total for t, p in table.items()}

    def _top_k(self, context: Any, k: int) -> tuple[Candidate, ...]:
        merged: dict[tuple[bytes, bool], Candidate] = {}
        dist = self._dist(context)
        for t, p in sorted(dist.items(), key=lambda kv: (-kv[1], str(kv[0]))):
            c = self._candidate(t, p)
            key = (c.raw, c.special)
            if key in merged:  # identical bytes: one candidate, the likelier id
                prev = merged[key]
                merged[key] = Candidate(prev.raw, math.log(prev.prob + p), prev.special, prev.id)
            else:
                merged[key] = c
        ranked = sorted(merged.values(), key=lambda c: -c.logprob)
        return tuple(ranked[:k])

    def _candidate(self, token: Token, p: float) -> Candidate:
        tid = self._ids.get(token) if self.vocab is not None else None
        if token == EOS:
            return Candidate(b"", math.log(p), special=True, id=tid)
        return Candidate(_raw(token), math.log(p), id=tid)

    def _draw(self, pool: Mapping[Token, float], rng: random.Random | None = None) -> Token:
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

    def continues_with_ids(self, prompt: Prompt) -> bool:
        return self.sync.continues_with_ids(prompt)

    async def candidates(self, prefix: Prefix, *, k: int) -> Draft:
        await asyncio.sleep(0)
        return self.sync.candidates(prefix, k=k)

    async def draft(self, prefix: Prefix, *, m: int, k: int, restrict_top_k: bool = False) -> Draft:
        await asyncio.sleep(0)
        return self.sync.draft(prefix, m=m, k=k, restrict_top_k=restrict_top_k)

    async def sample(self, prefix: Prefix, **kwargs: Any) -> Samples:
        await asyncio.sleep(0)
        return self.sync.sample(prefix, **kwargs)
