"""Rerank mode (DESIGN.md section 5): for endpoints that cannot continue a partial response.

N whole responses are sampled from the base (one call with n=N where the endpoint takes n, so
the prompt is billed once), every value model scores each finished response, and the answer is
drawn in proportion to

    w(y) = exp( sum_i beta_i * V_i(prompt + y) )

over the N: self-normalized importance resampling toward pi_base(y) * exp(beta * V(y)), the
sequence-level optimum that token-level VAS also approximates (exact as N grows; with a small N
it is a different, weaker algorithm, which is why the report gives N and the effective sample
size (sum w)^2 / sum w^2). `rerank="argmax"` keeps the highest-valued response instead.

    sampler = RerankSampler(settings, Prefix(prompt), prompt_text)
    while not sampler.done:
        call = sampler.next_request()    # SampleCall, then ScoreCall (when steered)
        sampler.feed(answer_to(call))    # Samples, then value scores

The user's `n` gives n independent pools (n samplers, N responses each): every choice is an
independent draw from the same resampling distribution, as every choice is in token mode.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import ProviderError
from ..types import Prefix, Prompt, Samples
from .core import ScoreCall, Scores, Step, _SamplerBase, finished_texts
from .settings import SamplerSettings
from .target import value_shift

__all__ = [
    "SampleCall",
    "RerankSampler",
    "resampling_probs",
    "effective_sample_size",
    "chatml_text",
]


@dataclass(frozen=True, slots=True)
class SampleCall:
    """Ask the provider for n plain samples after `prefix` (`Provider.sample`); answer with
    `Samples`. One call with n= where the endpoint takes it; the drivers in
    `vas_api.sampler.run` otherwise make n calls (concurrent ones in the async client)."""

    prefix: Prefix
    n: int
    max_tokens: int
    temperature: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None


def resampling_probs(
    scores: Sequence[Sequence[float]], betas: Sequence[float], pick: str = "sample"
) -> np.ndarray:
    """Selection probabilities over N items from their value scores.

    Args:
        scores: one (N,) array per value model.
        betas: one weight per value model.
        pick: "sample" gives softmax(sum_i beta_i V_i); "argmax" puts all mass on the highest
            (the first one on ties).

    Returns:
        (N,) probabilities summing to 1.
    """
    shift = value_shift(scores, betas)
    if pick == "argmax":
        out = np.zeros(len(shift))
        out[int(np.argmax(shift))] = 1.0
        return out
    z = np.exp(shift - shift.max())
    return z / z.sum()


def effective_sample_size(probs: np.ndarray) -> float:
    """(sum w)^2 / sum w^2 of normalized weights: N when they are equal, 1 when one dominates."""
    p = np.asarray(probs, dtype=np.float64)
    return float(p.sum() ** 2 / np.square(p).sum())


def chatml_text(messages: Prompt) -> str:
    """Chat messages in ChatML form ending with the assistant header, for value models when the
    base endpoint renders no template (hosted chat APIs). A raw string prompt is returned as is.
    ChatML is the form the value models here are trained on (SmolLM2's template)."""
    if isinstance(messages, str):
        return messages
    parts = [f"<|im_start|>{m['role']}\n{m.get('content') or ''}<|im_end|>\n" for m in messages]
    return "".join(parts) + "<|im_start|>assistant\n"


class RerankSampler(_SamplerBase):
    """Rerank mode over N whole responses (see the module docstring).

    Read-outs besides `_SamplerBase`'s: `pool` (the N responses), `probs` (their selection
    probabilities), `chosen` (the index drawn), `ess` (effective sample size of the weights).
    The trace holds one Step for the chosen response (source "reranked"; its base logprob is
    unknown, NaN).
    """

    def __init__(self, settings: SamplerSettings, prefix: Prefix, prompt_text: str) -> None:
        super().__init__(settings, prefix, prompt_text)
        self.pool: list[str] = []
        self.finishes: list[str | None] = []
        self.probs: np.ndarray | None = None
        self.shift: np.ndarray | None = None
        self.chosen: int | None = None
        self.ess: float = float("nan")

    @property
    def pool_size(self) -> int:
        return self.settings.rerank_n

    def next_request(self) -> SampleCall | ScoreCall | None:
        if self.done:
            return None
        s = self.settings
        if not self.pool:
            return SampleCall(
                Prefix(self.prompt, self.state.response), s.rerank_n, s.max_tokens,
                s.temperature, s.stop, s.seed,
            )
        return ScoreCall(self._prefix_text(), (), (finished_texts(self.pool, self.finishes),))

    def feed(self, answer: Samples | Scores) -> None:
        if not self.pool:
            self._expect(answer, Samples)
            self._add_samples(answer)  # type: ignore[arg-type]
            if not self.settings.steered:
                self._choose([])
            return
        self._expect(answer, list)
        self._choose([per_model[0] for per_model in answer])  # type: ignore[union-attr]

    def _add_samples(self, samples: Samples) -> None:
        self.state.usage = self.state.usage + samples.usage
        if not samples.completions:
            raise ProviderError("the provider returned no completions for a rerank pool.")
        self.pool = [c.text for c in samples.completions]
        self.finishes = [c.finish_reason for c in samples.completions]

    def _choose(self, scores: list[np.ndarray]) -> None:
        n = len(self.pool)
        self.shift = value_shift(scores, self.settings.betas) if scores else np.zeros(n)
        if scores:
            self.probs = resampling_probs(scores, self.settings.betas, self.settings.rerank)
        else:  # unsteered: every base sample is as good as another
            self.probs = np.full(n, 1.0 / n)
        self.ess = effective_sample_size(np.exp(self.shift - self.shift.max()))
        i = self.chosen = int(self.rng.choice(n, p=self.probs))
        st = self.state
        st.response += self.pool[i]
        st.steps.append(Step(self.pool[i], float("nan"), float(self.shift[i]), float(self.probs[i]), "reranked"))
        st.finish_reason = self.finishes[i] if self.finishes[i] in ("stop", "length") else "stop"
