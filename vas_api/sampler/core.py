"""Sans-IO VAS samplers: pure state machines that say what to do next and take the answers.

    sampler = TokenSampler(settings, prefix, prompt_text)
    while not sampler.done:
        call = sampler.next_request()        # CandidatesCall, DraftCall or ScoreCall
        sampler.feed(answer_to(call))        # a Draft, or value scores

The sync and async clients are short loops around these objects; nothing here does I/O, so
the statistical tests drive them with a fake provider and a fixed value function.

Token-id continuation: when the provider sends the committed token ids instead of re-tokenized
text (`by_ids=True`), the samplers keep the id of every committed token in
`Prefix.response_ids`; it becomes None (text from then on) as soon as one committed token has no
id. The per-position target, including byte fragments, is defined in `vas_api.sampler.target`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import VASError
from ..types import END_OF_TEXT, Draft, Prefix, Usage
from .settings import SamplerSettings
from .target import Options, decode_step, options_of, target_probs, value_shift

__all__ = [
    "CandidatesCall",
    "DraftCall",
    "ScoreCall",
    "Call",
    "Step",
    "TokenSampler",
    "BASE_CHARACTER_TOKENS",
]

BASE_CHARACTER_TOKENS = 4
"""Draft length asked for the base's own next character (a UTF-8 character has at most 4 bytes,
and every token holds at least one)."""

Scores = list[list[np.ndarray]]
"""Value scores: scores[i][j] is the (n_j,) array of value model i at position j."""


@dataclass(frozen=True, slots=True)
class CandidatesCall:
    """Ask the provider for the top-k candidates after `prefix` (one call, max_tokens=1)."""

    prefix: Prefix
    k: int


@dataclass(frozen=True, slots=True)
class DraftCall:
    """Ask the provider to draft m tokens after `prefix` (one call, temperature 1)."""

    prefix: Prefix
    m: int
    k: int
    restrict_top_k: bool


@dataclass(frozen=True, slots=True)
class ScoreCall:
    """Ask every value model for V(prefix_text + path[:j] + c) for c in candidates[j].

    Token mode sends one position (path empty); speculative mode sends the drafted path.
    A candidate that ends the response (end of sequence; in block and rerank mode a block or
    response that finished with "stop") ends with `END_OF_TEXT`; the drivers drop the marker
    for value functions that do not score it (`vas_api.value_binding.texts_for`).
    Answer with `Scores`.
    """

    prefix_text: str
    path: tuple[str, ...]
    candidates: tuple[tuple[str, ...], ...]


Call = CandidatesCall | DraftCall | ScoreCall


@dataclass(frozen=True, slots=True)
class Step:
    """One committed token, for the report.

    Attributes:
        text: what it appended to the response ("" for end of sequence).
        base_logprob: its logprob under the base model.
        shift: the value shift sum_i beta_i (V_i - mean V_i) it received.
        prob: its probability under the VAS target.
        source: "sampled" (token mode), "accepted" (a draft token kept) or "resampled"
            (drawn from the residual after a rejection).
        special: end of sequence.
        raw: the token's bytes (a byte fragment adds them to the pending bytes, not to `text`).
        tokens: provider tokens it stands for (more than 1 only for a "base" character).

    `source` can also be "base": the base model's own next character at a position that
    offered no option (see `vas_api.sampler.target`); its shift is 0 and prob its base
    probability.
    """

    text: str
    base_logprob: float
    shift: float
    prob: float
    source: str
    special: bool = False
    raw: bytes = b""
    tokens: int = 1


@dataclass
class _State:
    response: str = ""
    tail: bytes = b""  # committed bytes that do not yet form a whole character
    response_ids: list[int] | None = None
    by_ids: bool = False  # every call so far continued with token ids
    tokens: int = 0
    finish_reason: str | None = None
    usage: Usage = field(default_factory=Usage)
    steps: list[Step] = field(default_factory=list)


class _SamplerBase:
    """What token and speculative mode share: the response, stop handling, usage, trace."""

    def __init__(
        self, settings: SamplerSettings, prefix: Prefix, prompt_text: str, *, by_ids: bool = False
    ) -> None:
        """Args:
            settings: the request's settings.
            prefix: prompt and any response so far (with its ids, when known).
            prompt_text: the text the base continues for the prompt (for the value models).
            by_ids: the provider continues with token ids (`Prefix.response_ids`); a prefix
                whose response has no ids continues as text.
        """
        self.settings = settings
        self.prompt = prefix.prompt
        self.prompt_text = prompt_text
        self.rng = np.random.default_rng(settings.seed)
        ids = prefix.response_ids if prefix.response_ids is not None else (None if prefix.response else ())
        self.state = _State(
            response=prefix.response, response_ids=list(ids) if by_ids and ids is not None else None
        )
        self.state.by_ids = self.state.response_ids is not None
        self._pending: Any = None  # what the last answer left to do

    # -- public read-outs -----------------------------------------------------------------
    @property
    def done(self) -> bool:
        return self.state.finish_reason is not None

    @property
    def response(self) -> str:
        return self.state.response

    @property
    def finish_reason(self) -> str | None:
        return self.state.finish_reason

    @property
    def usage(self) -> Usage:
        return self.state.usage

    @property
    def steps(self) -> list[Step]:
        return self.state.steps

    @property
    def response_ids(self) -> tuple[int, ...] | None:
        """Provider ids of the committed tokens; None when the response went (partly) as text."""
        ids = self.state.response_ids
        return None if ids is None else tuple(ids)

    @property
    def continuation(self) -> str:
        """"token_ids" when every call continued with the committed token ids, else "text"."""
        return "token_ids" if self.state.by_ids else "text"

    # -- shared helpers -------------------------------------------------------------------
    def _prefix(self) -> Prefix:
        return Prefix(self.prompt, self.state.response, self.response_ids)

    def _options_at(self, position: Any, pending: bytes | None = None) -> Options:
        """The options of `position` after the committed bytes (or `pending` along a draft)."""
        pending = self.state.tail if pending is None else pending
        return options_of(position, pending, by_ids=self.state.response_ids is not None)

    def _prefix_text(self) -> str:
        return self.prompt_text + self.state.response

    def _add_usage(self, draft: Draft) -> None:
        self.state.usage = self.state.usage + draft.usage

    def _target(self, options: Options, scores: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """(target probabilities, value shift) over one position's options."""
        s = self.settings
        shift = value_shift(scores, s.betas) if scores else np.zeros(len(options.texts))
        return target_probs(options.logprobs, shift, s.temperature, s.top_p), shift

    def _commit(
        self, options: Options, i: int, probs: np.ndarray, shift: np.ndarray, source: str,
        token: Any = None,
    ) -> None:
        """Append option i to the response; end on EOS, a stop string or max_tokens.

        `token` is the drafted token when a draft position is accepted: its own id is the one
        the rest of the draft was conditioned on (a merged candidate may stand for several).
        """
        cand = options.candidates[i]
        tid = token.id if token is not None and token.id is not None else cand.id
        step = Step(
            options.texts[i], float(options.logprobs[i]), float(shift[i]), float(probs[i]),
            source, cand.special, cand.raw,
        )
        self._append(step, options.tails[i], [tid])

    def _commit_base_character(self, draft: Draft) -> None:
        """Commit the base model's own next character: the draft's sampled tokens from its first
        position up to the one that completes text or ends the response (an unfinished run is
        decoded as U+FFFD). Used where a position offers no option (see `target`)."""
        st = self.state
        pending, text, logprob, raw, ids, special = st.tail, "", 0.0, b"", [], False
        for pos in draft.positions:
            tok = pos.sampled
            if tok is None:
                break
            logprob += tok.logprob
            ids.append(tok.id)
            if tok.special:
                special = True
                break
            raw += tok.raw
            text, pending = decode_step(pending, tok.raw)
            if text:
                break
        if not ids:
            # The server said nothing usable about its own next token: the response ends here.
            st.finish_reason = draft.finish_reason or "stop"
            return
        if not text and pending and not special:
            text, pending = pending.decode("utf-8", errors="replace"), b""
        prob = float(np.exp(logprob))
        step = Step(text, logprob, 0.0, prob, "base", special, raw, len(ids))
        self._append(step, pending, ids)

    def _append(self, step: Step, tail: bytes, ids: list[int | None]) -> None:
        st = self.state
        st.steps.append(step)
        st.tokens += step.tokens
        if st.response_ids is not None:
            if any(i is None for i in ids):
                st.response_ids, st.by_ids = None, False  # text from here on
            else:
                st.response_ids.extend(ids)  # type: ignore[arg-type]
        if step.special:
            st.finish_reason = "stop"
            return
        text = step.text
        if tail and st.response_ids is None:
            # Text continuation cannot send half a character: what cannot complete is U+FFFD.
            text, tail = text + tail.decode("utf-8", errors="replace"), b""
        before = len(st.response)
        st.response += text
        st.tail = tail
        if self.settings.stop:
            # Only text that can contain a stop string spanning the new token is searched.
            start = max(0, before - max(len(x) for x in self.settings.stop) + 1)
            hits = [j for x in self.settings.stop if (j := st.response.find(x, start)) >= 0]
            if hits:
                st.response = st.response[: min(hits)]
                st.response_ids = None  # the ids no longer spell the cut response
                st.finish_reason = "stop"
                return
        if st.tokens >= self.settings.max_tokens:
            st.finish_reason = "length"

    def _score_call(self, path: tuple[str, ...], options: Sequence[Options]) -> ScoreCall:
        # An end-of-sequence option appends "" to the response but is scored as the finished
        # text (END_OF_TEXT); it is only ever the last position of a drafted path.
        return ScoreCall(self._prefix_text(), path, tuple(_scored_texts(o) for o in options))

    def next_request(self) -> Call | None:  # pragma: no cover - overridden
        raise NotImplementedError

    def feed(self, answer: Draft | Scores) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def _expect(self, answer: Any, kind: type) -> None:
        if not isinstance(answer, kind):
            raise VASError(f"sampler fed a {type(answer).__name__}, expected {kind.__name__}")


def _scored_texts(options: Options) -> tuple[str, ...]:
    """The texts value models score for one position's options: END_OF_TEXT for the special
    (end-of-sequence) ones, the appended text for the rest."""
    return tuple(END_OF_TEXT if c.special else t for c, t in zip(options.candidates, options.texts, strict=True))


def finished_texts(texts: Sequence[str], finishes: Sequence[str | None]) -> tuple[str, ...]:
    """Block / rerank candidates as value models score them: a text whose finish_reason is
    "stop" (the base ended it) gets END_OF_TEXT; one cut at max_tokens ("length") does not."""
    return tuple(t + END_OF_TEXT if f == "stop" else t for t, f in zip(texts, finishes, strict=True))


_BASE = "base character"  # TokenSampler._pending: the next call drafts the base's own character


class TokenSampler(_SamplerBase):
    """Token mode, the paper's algorithm: one candidates call per generated token (plus one
    short draft where a position offers no option, see `vas_api.sampler.target`)."""

    def next_request(self) -> Call | None:
        if self.done:
            return None
        if self._pending is None:
            return CandidatesCall(self._prefix(), self.settings.k)
        if self._pending is _BASE:
            return DraftCall(self._prefix(), BASE_CHARACTER_TOKENS, self.settings.k, False)
        return self._score_call((), [self._pending])

    def feed(self, answer: Draft | Scores) -> None:
        if self._pending is _BASE:
            self._expect(answer, Draft)
            self._pending = None
            self._add_usage(answer)  # type: ignore[arg-type]
            self._commit_base_character(answer)  # type: ignore[arg-type]
            return
        if self._pending is None:
            self._expect(answer, Draft)
            self._add_usage(answer)  # type: ignore[arg-type]
            if not answer.positions:  # type: ignore[union-attr]
                # The server ended without reporting the position: nothing to choose from.
                self.state.finish_reason = answer.finish_reason or "stop"  # type: ignore[union-attr]
                return
            options = self._options_at(answer.positions[0])  # type: ignore[union-attr]
            self._pending = options if len(options) else _BASE
            if self._pending is not _BASE and not self.settings.steered:
                self._choose([])
            return
        self._expect(answer, list)
        self._choose([per_model[0] for per_model in answer])  # type: ignore[union-attr]

    def _choose(self, scores: list[np.ndarray]) -> None:
        options, self._pending = self._pending, None
        probs, shift = self._target(options, scores)
        i = int(self.rng.choice(len(probs), p=probs))
        self._commit(options, i, probs, shift, "sampled")
