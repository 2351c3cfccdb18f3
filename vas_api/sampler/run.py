"""Answering a sampler's calls: the only place that touches providers and value models.

`run` and `arun` are the sync and async loops around a sampler (STYLE.md: sans-IO core, thin
shells). Value-model work in `arun` goes to a worker thread, one request at a time per value
model (a value model keeps a KV cache and is not thread-safe), so the event loop stays free.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..types import AsyncProvider, Draft, Provider, Samples, Usage, ValueFunction
from .core import Call, CandidatesCall, DraftCall, ScoreCall, Scores, _SamplerBase
from .rerank import SampleCall

__all__ = ["Timings", "score", "run", "arun"]


@dataclass
class Timings:
    """Wall time spent waiting for the API and in the value models (seconds)."""

    api_s: float = 0.0
    value_s: float = 0.0
    total_s: float = 0.0
    api_calls: int = 0
    value_calls: int = 0


_LOCKS: dict[int, threading.Lock] = {}
_LOCKS_GUARD = threading.Lock()


def _lock_for(vf: ValueFunction) -> threading.Lock:
    with _LOCKS_GUARD:
        return _LOCKS.setdefault(id(vf), threading.Lock())


def score(call: ScoreCall, value_fns: Sequence[ValueFunction], betas: Sequence[float]) -> Scores:
    """Every value model's scores for a ScoreCall (zeros for a model whose beta is 0).

    Uses a value model's batched `score_draft` when it has one; otherwise one
    `score_candidates` per position.
    """
    out: Scores = []
    for vf, beta in zip(value_fns, betas, strict=True):
        if beta == 0:
            out.append([np.zeros(len(c)) for c in call.candidates])
            continue
        with _lock_for(vf):
            if len(call.candidates) > 1 and hasattr(vf, "score_draft"):
                per_pos = vf.score_draft(call.prefix_text, list(call.path), [list(c) for c in call.candidates])
            else:
                per_pos = [
                    vf.score_candidates(call.prefix_text + "".join(call.path[:j]), list(cands))
                    for j, cands in enumerate(call.candidates)
                ]
        out.append([_as_array(v) for v in per_pos])
    return out


def _as_array(v: object) -> np.ndarray:
    if hasattr(v, "detach"):  # a torch tensor
        v = v.detach().float().cpu().numpy()  # type: ignore[union-attr]
    return np.asarray(v, dtype=np.float64).reshape(-1)


def _api(call: Call | SampleCall, provider: Provider) -> Draft | Samples:
    if isinstance(call, SampleCall):
        return provider.sample(call.prefix, n=call.n, max_tokens=call.max_tokens,
                               temperature=call.temperature, stop=call.stop or None, seed=call.seed)
    if isinstance(call, CandidatesCall):
        return provider.candidates(call.prefix, k=call.k)
    assert isinstance(call, DraftCall)  # noqa: S101 - the sampler only makes these
    return provider.draft(call.prefix, m=call.m, k=call.k, restrict_top_k=call.restrict_top_k)


async def _aapi(call: Call | SampleCall, provider: AsyncProvider) -> Draft | Samples:
    if isinstance(call, SampleCall):
        return await _asample(call, provider)
    if isinstance(call, CandidatesCall):
        return await provider.candidates(call.prefix, k=call.k)
    assert isinstance(call, DraftCall)  # noqa: S101
    return await provider.draft(call.prefix, m=call.m, k=call.k, restrict_top_k=call.restrict_top_k)


async def _asample(call: SampleCall, provider: AsyncProvider) -> Samples:
    """One call with n= where the endpoint takes it; otherwise n concurrent one-sample calls."""
    kw = dict(max_tokens=call.max_tokens, temperature=call.temperature, stop=call.stop or None)
    if provider.profile.n_param or call.n == 1:
        return await provider.sample(call.prefix, n=call.n, seed=call.seed, **kw)
    parts = await asyncio.gather(*(
        provider.sample(call.prefix, n=1, seed=None if call.seed is None else call.seed + i, **kw)
        for i in range(call.n)
    ))
    return Samples([c for p in parts for c in p.completions], sum((p.usage for p in parts), Usage()))


def _calls(answer: Draft | Samples) -> int:
    """API calls behind one answer (a SampleCall may take n; Usage.calls counts them)."""
    return max(1, answer.usage.calls) if isinstance(answer, Samples) else 1


def run(
    sampler: _SamplerBase,
    provider: Provider,
    value_fns: Sequence[ValueFunction],
    timings: Timings | None = None,
) -> Timings:
    """Drive `sampler` to the end, synchronously. Returns where the time went."""
    t = timings or Timings()
    start = time.perf_counter()
    while (call := sampler.next_request()) is not None:
        t0 = time.perf_counter()
        if isinstance(call, ScoreCall):
            answer: Draft | Samples | Scores = score(call, value_fns, sampler.settings.betas)
            t.value_s += time.perf_counter() - t0
            t.value_calls += 1
        else:
            answer = _api(call, provider)
            t.api_s += time.perf_counter() - t0
            t.api_calls += _calls(answer)
        sampler.feed(answer)
    t.total_s += time.perf_counter() - start
    return t


async def arun(
    sampler: _SamplerBase,
    provider: AsyncProvider,
    value_fns: Sequence[ValueFunction],
    timings: Timings | None = None,
) -> Timings:
    """Drive `sampler` to the end on the event loop; value scoring runs in a worker thread."""
    t = timings or Timings()
    start = time.perf_counter()
    while (call := sampler.next_request()) is not None:
        t0 = time.perf_counter()
        if isinstance(call, ScoreCall):
            answer: Draft | Samples | Scores = await asyncio.to_thread(score, call, value_fns, sampler.settings.betas)
            t.value_s += time.perf_counter() - t0
            t.value_calls += 1
        else:
            answer = await _aapi(call, provider)
            t.api_s += time.perf_counter() - t0
            t.api_calls += _calls(answer)
        sampler.feed(answer)
    t.total_s += time.perf_counter() - start
    return t
