"""Sans-IO VAS samplers: pure state machines that say what to do next and take the answers.

    sampler = TokenSampler(settings, prefix, prompt_text)
    while not sampler.done:
        call = sampler.next_request()        # CandidatesCall, DraftCall or ScoreCall
        sampler.feed(answer_to(call))        # a Draft, or value scores

The sync and async clients are short loops around these objects; nothing here does I/O, so
the statistical tests drive them with a fake provider and a fixed value function.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import VASError
from ..types import Draft, Prefix, Usage
from .settings import SamplerSettings
from .target import Options, options_of, target_probs, value_shift

__all__ = [
    "CandidatesCall",
    "DraftCall",
    "ScoreCall",
    "Call",
    "Step",
    "TokenSampler",
]

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
    """

    text: str
    base_logprob: float
    shift: float
    prob: float
    source: str
    special: bool = False


@dataclass
class _State:
    response: str = ""
    tokens: int = 0
    finish_reason: str | None = None
    usage: Usage = field(default_factory=Usage)
    steps: list[Step] = field(default_factory=list)


class _SamplerBase:
    """What token and speculative mode share: the response, stop handling, usage, trace."""

    def __init__(self, settings: SamplerSettings, prefix: Prefix, prompt_text: str) -> None:
        self.settings = settings
        self.prompt = prefix.prompt
        self.prompt_text = prompt_text
        self.rng = np.random.default_rng(settings.seed)
        self.state = _State(response=prefix.response)
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

    # -- shared helpers -------------------------------------------------------------------
    def _prefix(self) -> Prefix:
        return Prefix(self.prompt, self.state.response)

    def _prefix_text(self) -> str:
        return self.prompt_text + self.state.response

    def _add_usage(self, draft: Draft) -> None:
        self.state.usage = self.state.usage + draft.usage

    def _target(self, options: Options, scores: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """(target probabilities, value shift) over one position's options."""
        s = self.settings
        shift = value_shift(scores, s.betas) if scores else np.zeros(len(options.texts))
        return target_probs(options.logprobs, shift, s.temperature, s.top_p), shift

    def _commit(self, options: Options, i: int, probs: np.ndarray, shift: np.ndarray, source: str) -> None:
        """Append option i to the response; end on EOS, a stop string or max_tokens."""
        cand = options.candidates[i]
        st = self.state
        st.steps.append(
            Step(options.texts[i], float(options.logprobs[i]), float(shift[i]), float(probs[i]), source, cand.special)
        )
        st.tokens += 1
        if cand.special:
            st.finish_reason = "stop"
            return
        before = len(st.response)
        st.response += options.texts[i]
        if self.settings.stop:
            # Only text that can contain a stop string spanning the new token is searched.
            start = max(0, before - max(len(x) for x in self.settings.stop) + 1)
            hits = [j for x in self.settings.stop if (j := st.response.find(x, start)) >= 0]
            if hits:
                st.response = st.response[: min(hits)]
                st.finish_reason = "stop"
                return
        if st.tokens >= self.settings.max_tokens:
            st.finish_reason = "length"

    def _score_call(self, path: tuple[str, ...], options: Sequence[Options]) -> ScoreCall:
        return ScoreCall(self._prefix_text(), path, tuple(o.texts for o in options))

    def next_request(self) -> Call | None:  # pragma: no cover - overridden
        raise NotImplementedError

    def feed(self, answer: Draft | Scores) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def _expect(self, answer: Any, kind: type) -> None:
        if not isinstance(answer, kind):
            raise VASError(f"sampler fed a {type(answer).__name__}, expected {kind.__name__}")


class TokenSampler(_SamplerBase):
    """Token mode, the paper's algorithm: one candidates call per generated token."""

    def next_request(self) -> Call | None:
        if self.done:
            return None
        if self._pending is None:
            return CandidatesCall(self._prefix(), self.settings.k)
        return self._score_call((), [self._pending])

    def feed(self, answer: Draft | Scores) -> None:
        if self._pending is None:
            self._expect(answer, Draft)
            self._add_usage(answer)  # type: ignore[arg-type]
            if not answer.positions:  # type: ignore[union-attr]
                # The server ended without reporting the position: nothing to choose from.
                self.state.finish_reason = answer.finish_reason or "stop"  # type: ignore[union-attr]
                return
            self._pending = options_of(answer.positions[0])  # type: ignore[union-attr]
            if not self.settings.steered:
                self._choose([])
            return
        self._expect(answer, list)
        self._choose([per_model[0] for per_model in answer])  # type: ignore[union-attr]

    def _choose(self, scores: list[np.ndarray]) -> None:
        options, self._pending = self._pending, None
        probs, shift = self._target(options, scores)
        i = int(self.rng.choice(len(probs), p=probs))
        self._commit(options, i, probs, shift, "sampled")
