"""Answering a sampler's calls: the only place that touches providers and value models.

`run` and `arun` are the sync and async loops around a sampler (STYLE.md: sans-IO core, thin
shells). Value-model work in `arun` is batched across the requests in flight (`ScoreBatcher`,
one per value model and event loop): score calls that arrive while the value model is busy, or
within a short window, go to a worker thread together, as one `score_many` call where the value
model has it (each request keeps its own KV cache there), so the event loop stays free and
concurrent requests do not queue behind a lock one forward at a time.

Faults: the provider retries failed calls itself (`vas_api.retry`), so a sampler is only fed
answers that arrived; committed tokens are never lost, and a call that fails for good raises
the provider's error with ``partial`` (a `PartialOutput`: the text and tokens of every choice
so far and the VASReport so far) and the billed usage of every attempt added to the sampler's.
`run_all` / `arun_all` drive the n choices of one request; in `arun_all` a failing choice
cancels its siblings at once (no API call after the error).
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .. import retry as _retry
from ..budget import Meter, ametered, metered
from ..errors import ProviderError, VASError
from ..types import AsyncProvider, Draft, Provider, Samples, Usage, ValueFunction
from ..value_checks import checked_scores
from .core import Call, CandidatesCall, DraftCall, ScoreCall, Scores, Step, _SamplerBase
from .rerank import SampleCall

__all__ = [
    "Timings", "PartialOutput", "ScoreBatcher", "BATCH_WINDOW_S", "score", "ascore", "run", "arun",
    "run_all", "arun_all",
]

BATCH_WINDOW_S = 0.002
"""How long the first score call of a quiet spell waits for others to join its batch. Calls that
arrive while a batch is running join the next one without waiting."""
_MAX_BATCH = 64


@dataclass
class Timings:
    """Wall time spent waiting for the API and in the value models (seconds)."""

    api_s: float = 0.0
    value_s: float = 0.0
    total_s: float = 0.0
    api_calls: int = 0
    value_calls: int = 0
    retries: int = 0
    short_positions: int = 0


@dataclass
class PartialOutput:
    """What a request had produced when a provider call failed for good.

    Attributes:
        texts: the response so far, per choice.
        steps: the committed tokens, per choice.
        finished: whether each choice had finished.
        usage: billed tokens over every choice, failed attempts included.
        report: the VASReport so far (a `vas_api.VASReport`).
    """

    texts: list[str]
    steps: list[list[Step]]
    finished: list[bool]
    usage: Usage = field(default_factory=Usage)
    report: Any = None

    @property
    def text(self) -> str:
        """The first choice's text so far."""
        return self.texts[0] if self.texts else ""

    def __repr__(self) -> str:
        lens = [len(s) for s in self.steps]
        return f"PartialOutput(tokens={lens}, finished={self.finished}, usage={self.usage})"


def _seen_by(vf: ValueFunction, call: ScoreCall) -> ScoreCall:
    """`call` as value function `vf` must see it: candidates that end the response keep the
    END_OF_TEXT marker only for a function that scores it (`vas_api.value_binding.texts_for`,
    the one rule); every other function scores them as the response so far, as before."""
    from dataclasses import replace

    from ..value_binding import texts_for

    cands = tuple(texts_for(vf, c) for c in call.candidates)
    return call if cands == call.candidates else replace(call, candidates=cands)


def _lock_for(vf: ValueFunction) -> Any:
    from ..value_binding import shared_lock

    return shared_lock(vf)


def score(call: ScoreCall, value_fns: Sequence[ValueFunction], betas: Sequence[float]) -> Scores:
    """Every value model's scores for a ScoreCall (zeros for a model whose beta is 0).

    Uses a value model's batched `score_draft` when it has one; otherwise one
    `score_candidates` per position.
    """
    out: Scores = []
    for vf, beta in zip(value_fns, betas, strict=True):
        if beta == 0:
            out.append(_zeros(call))
            continue
        with _lock_for(vf):
            out.append(_score_one(vf, _seen_by(vf, call)))
    return out


def _zeros(call: ScoreCall) -> list[np.ndarray]:
    return [np.zeros(len(c)) for c in call.candidates]


def _score_one(vf: ValueFunction, call: ScoreCall) -> list[np.ndarray]:
    if len(call.candidates) > 1 and hasattr(vf, "score_draft"):
        per_pos = vf.score_draft(call.prefix_text, list(call.path), [list(c) for c in call.candidates])
    else:
        per_pos = [
            vf.score_candidates(call.prefix_text + "".join(call.path[:j]), list(cands))
            for j, cands in enumerate(call.candidates)
        ]
    return checked_scores(per_pos, call.candidates, vf)  # NaN, inf, counts


class ScoreBatcher:
    """Dynamic batching of one value model's score calls across concurrent requests.

    `await batcher.score(call, key)` queues the call; one drain task at a time takes every
    queued call (waiting `window_s` first when it starts), runs them in a worker thread as one
    `vf.score_many(requests, keys)` when the value model has it (else one after another), and
    hands each caller its result. A batch that fails is retried call by call, so one bad request
    gets its own error and the others their scores.

    Args:
        vf: the value function.
        window_s: how long a new batch waits for more calls.
        max_batch: most calls in one batch.
    """

    def __init__(self, vf: ValueFunction, *, window_s: float = BATCH_WINDOW_S, max_batch: int = _MAX_BATCH) -> None:
        self.vf = vf
        self.window_s = window_s
        self.max_batch = max_batch
        self._queue: list[tuple[ScoreCall, Any, asyncio.Future]] = []
        self._drain_task: asyncio.Task | None = None
        self._released: set[int] = set()
        self.batches = 0  # batches run, calls in them, and seconds the worker was busy (benchmarks)
        self.calls = 0
        self.busy_s = 0.0

    async def score(self, call: ScoreCall, key: Any = None) -> list[np.ndarray]:
        """The value model's (n_j,) scores at every position of `call`.

        Args:
            call: the sampler's ScoreCall.
            key: the request it belongs to (any object; its KV cache is kept under its id
                while it lives).
        """
        loop = asyncio.get_running_loop()
        fut: asyncio.Future = loop.create_future()
        self._queue.append((call, self._key(key), fut))
        if self._drain_task is None or self._drain_task.done():
            self._drain_task = loop.create_task(self._drain())
        return await fut

    def _key(self, owner: Any) -> int | None:
        if owner is None:
            return None
        k = id(owner)
        release = getattr(self.vf, "release", None)
        if release is not None and k not in self._released:
            self._released.add(k)
            weakref.finalize(owner, self._release, k)
        return k

    def _release(self, k: int) -> None:
        self._released.discard(k)
        with _lock_for(self.vf):
            self.vf.release(k)

    async def _drain(self) -> None:
        if self.window_s > 0:
            await asyncio.sleep(self.window_s)
        while self._queue:
            batch, self._queue = self._queue[: self.max_batch], self._queue[self.max_batch:]
            batch = [b for b in batch if not b[2].cancelled()]
            if not batch:
                continue
            t0 = time.perf_counter()
            results = await asyncio.to_thread(self._run, [(c, k) for c, k, _ in batch])
            self.busy_s += time.perf_counter() - t0
            self.batches += 1
            self.calls += len(batch)
            for (_, _, fut), r in zip(batch, results, strict=True):
                if fut.cancelled():
                    continue
                if isinstance(r, BaseException):
                    fut.set_exception(r)
                else:
                    fut.set_result(r)

    def _run(self, items: list[tuple[ScoreCall, Any]]) -> list[list[np.ndarray] | BaseException]:
        vf = self.vf
        with _lock_for(vf):
            if hasattr(vf, "score_many"):
                try:
                    keys = [k for _, k in items]
                    many = vf.score_many(
                        [(c.prefix_text, list(c.path), [list(x) for x in c.candidates]) for c, _ in items],
                        keys=None if any(k is None for k in keys) else keys,
                    )
                    return [checked_scores(per_pos, c.candidates, vf) for per_pos, (c, _) in zip(many, items, strict=True)]
                except Exception:  # noqa: BLE001 - retried one by one below to find the culprit
                    pass
            out: list[list[np.ndarray] | BaseException] = []
            for c, _ in items:
                try:
                    out.append(_score_one(vf, c))
                except Exception as e:  # noqa: BLE001 - delivered to that call's awaiter
                    out.append(e)
            return out


_BATCHERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # loop -> {id(vf): batcher}


def batcher_for(vf: ValueFunction) -> ScoreBatcher:
    """The ScoreBatcher of `vf` on the running event loop."""
    per_loop = _BATCHERS.setdefault(asyncio.get_running_loop(), {})
    b = per_loop.get(id(vf))
    if b is None or b.vf is not vf:
        b = per_loop[id(vf)] = ScoreBatcher(vf)
    return b


async def ascore(
    call: ScoreCall, value_fns: Sequence[ValueFunction], betas: Sequence[float], key: Any = None
) -> Scores:
    """`score` for the event loop: every value model's scores, batched with the score calls of
    the other requests in flight (`ScoreBatcher`). `key`: the request (e.g. its sampler)."""
    parts = await asyncio.gather(*(
        _batched(vf, _seen_by(vf, call), key) if beta != 0 else _done(_zeros(call))
        for vf, beta in zip(value_fns, betas, strict=True)
    ))
    return list(parts)


def _batched(vf: Any, call: ScoreCall, key: Any) -> Any:
    """Queue `call` on the batcher of the model itself: a per-request view (`BoundValue`) of a
    model that reads the whole text (no prompt_len needed) hands over its rendered text, so
    the requests of one model batch together instead of one batcher per view."""
    inner = getattr(vf, "value_fn", None)
    if inner is not None and getattr(inner, "reads_whole_text", False) and hasattr(inner, "score_many"):
        from dataclasses import replace

        return batcher_for(inner).score(replace(call, prefix_text=vf.own_text(call.prefix_text)), key)
    return batcher_for(vf).score(call, key)


async def _done(value: Any) -> Any:
    return value


def _api(call: Call | SampleCall, provider: Provider) -> Draft | Samples:
    if isinstance(call, SampleCall):
        return provider.sample(call.prefix, n=call.n, max_tokens=call.max_tokens,
                               temperature=call.temperature, stop=call.stop or None, seed=call.seed)
    if isinstance(call, CandidatesCall):
        return provider.candidates(call.prefix, k=call.k)
    if not isinstance(call, DraftCall):
        raise VASError(f"the sampler asked for {type(call).__name__}, not an API call")
    return provider.draft(call.prefix, m=call.m, k=call.k, restrict_top_k=call.restrict_top_k)


async def _aapi(call: Call | SampleCall, provider: AsyncProvider) -> Draft | Samples:
    if isinstance(call, SampleCall):
        return await _asample(call, provider)
    if isinstance(call, CandidatesCall):
        return await provider.candidates(call.prefix, k=call.k)
    if not isinstance(call, DraftCall):
        raise VASError(f"the sampler asked for {type(call).__name__}, not an API call")
    return await provider.draft(call.prefix, m=call.m, k=call.k, restrict_top_k=call.restrict_top_k)


def _short_positions(answer: Draft, k: int) -> int:
    return sum(1 for p in answer.positions if len(p.candidates) < k)


def _count_failure(sampler: _SamplerBase, exc: BaseException) -> None:
    """Add the failed call's billed attempts (``exc.usage``) to the sampler's usage: they were
    paid for, so the partial output's usage (and a later successful run's) includes them."""
    usage = getattr(exc, "usage", None)
    if isinstance(usage, Usage) and not getattr(exc, "_vas_counted", False):
        sampler.state.usage = sampler.state.usage + usage
        exc._vas_counted = True  # type: ignore[attr-defined] - one exception, counted once


def _failed(
    exc: ProviderError, sampler: _SamplerBase, provider: Any, t: Timings, log: _retry.RetryLog,
    meter: Meter | None = None,
) -> None:
    """What `run` / `arun` do when a call fails for good: count it, attach the partial output."""
    _count_failure(sampler, exc)
    t.retries += log.retries
    log.retries = 0
    exc.partial = partial_output([sampler], provider, t, meter)


def add_samplers(report: Any, samplers: Sequence[_SamplerBase]) -> None:
    """Add each sampler's usage, trace and draft / pool counts to `report` (a VASReport), and
    say how the response was continued: the one place the client and `partial_output` do it."""
    from .speculative import SpeculativeSampler

    for s in samplers:
        report.usage = report.usage + s.usage
        report.traces.append(list(s.steps))
        if isinstance(s, SpeculativeSampler):
            report.drafted += s.drafted
            report.tested += s.tested
            report.accepted += s.accepted
            report.resampled += s.resampled
        if hasattr(s, "pool_size"):  # block / rerank
            report.add_pool(s)
    report.continuation = "token_ids" if all(getattr(s, "continuation", "text") == "token_ids" for s in samplers) else "text"


def price_report(report: Any, meter: Meter) -> None:
    """The report's spend from the meter's raw usage records (None when the price is unknown)."""
    report.usage_records, report.price = list(meter.records), meter.price
    costs = [r.cost_usd for r in report.usage_records]
    report.cost_usd = None if meter.price is None else sum(c for c in costs if c is not None)


def partial_output(
    samplers: Sequence[_SamplerBase], provider: Any, timings: Timings | None = None,
    meter: Meter | None = None,
) -> PartialOutput:
    """The `PartialOutput` of `samplers` (with a VASReport built like the client's: priced by
    the request's `meter` where there is one)."""
    from ..report import VASReport
    from .speculative import SpeculativeSampler

    first = samplers[0]
    mode = "speculative" if isinstance(first, SpeculativeSampler) else "token"
    report = VASReport(mode=mode, model=str(getattr(provider, "model", "?")), k=first.settings.k,
                       betas=tuple(first.settings.betas))
    add_samplers(report, samplers)
    if timings is not None:
        report.api_calls = timings.api_calls
        report.time_api_s, report.time_value_s, report.time_total_s = timings.api_s, timings.value_s, timings.total_s
        report.retries, report.short_positions = timings.retries, timings.short_positions
    if meter is not None:
        price_report(report, meter)
    elif (profile := getattr(provider, "profile", None)) is not None:
        report.cost_usd = profile.cost(report.usage)
    return PartialOutput(
        texts=[s.response for s in samplers], steps=[list(s.steps) for s in samplers],
        finished=[s.done for s in samplers], usage=report.usage, report=report,
    )


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
    pause_when: Callable[[], bool] | None = None,
    meter: Meter | None = None,
) -> Timings:
    """Drive `sampler` to the end, synchronously. Returns where the time went.

    `pause_when`, checked after each answer, returns early when true (streaming: a call
    again resumes the same sampler where it stopped). `meter` (vas_api.budget) reserves each API
    call's worst case against the request's budget and records its usage; BudgetExceededError
    stops the loop before a call that does not fit.

    Raises:
        ProviderError (an instance of the SDK's exception class too) when a call fails after
        its retries, with ``partial`` set (`PartialOutput`); the sampler keeps every committed
        token and can be driven on with `run` again.
    """
    t = timings or Timings()
    start = time.perf_counter()
    log = _retry.RetryLog()
    token = _retry.set_retry_log(log)
    try:
        while (call := sampler.next_request()) is not None:
            t0 = time.perf_counter()
            if isinstance(call, ScoreCall):
                answer: Draft | Samples | Scores = score(call, value_fns, sampler.settings.betas)
                t.value_s += time.perf_counter() - t0
                t.value_calls += 1
            else:
                answer = None
                try:
                    with metered(meter, call, sampler) as bill:
                        answer = _api(call, provider)
                        bill(answer.usage)
                finally:
                    t.api_s += time.perf_counter() - t0
                    t.api_calls += 1 if answer is None else _calls(answer)
                if isinstance(answer, Draft):
                    t.short_positions += _short_positions(answer, call.k)
            sampler.feed(answer)
            if pause_when is not None and pause_when():
                break
    except ProviderError as exc:
        _failed(exc, sampler, provider, t, log, meter)
        raise
    finally:
        _retry.reset_retry_log(token)
        t.total_s += time.perf_counter() - start
    t.retries += log.retries
    return t


async def arun(
    sampler: _SamplerBase,
    provider: AsyncProvider,
    value_fns: Sequence[ValueFunction],
    timings: Timings | None = None,
    pause_when: Callable[[], bool] | None = None,
    meter: Meter | None = None,
) -> Timings:
    """Drive `sampler` to the end on the event loop; value scoring runs in a worker thread.
    `pause_when` and `meter` as in `run`.

    Raises:
        as `run`.
    """
    t = timings or Timings()
    start = time.perf_counter()
    log = _retry.RetryLog()
    token = _retry.set_retry_log(log)
    try:
        while (call := sampler.next_request()) is not None:
            t0 = time.perf_counter()
            if isinstance(call, ScoreCall):
                answer: Draft | Samples | Scores = await ascore(call, value_fns, sampler.settings.betas, key=sampler)
                t.value_s += time.perf_counter() - t0
                t.value_calls += 1
            else:
                answer = None
                try:
                    async with ametered(meter, call, sampler) as bill:
                        answer = await _aapi(call, provider)
                        bill(answer.usage)
                finally:
                    t.api_s += time.perf_counter() - t0
                    t.api_calls += 1 if answer is None else _calls(answer)
                if isinstance(answer, Draft):
                    t.short_positions += _short_positions(answer, call.k)
            sampler.feed(answer)
            if pause_when is not None and pause_when():
                break
    except ProviderError as exc:
        _failed(exc, sampler, provider, t, log, meter)
        raise
    finally:
        _retry.reset_retry_log(token)
        t.total_s += time.perf_counter() - start
    t.retries += log.retries
    return t


def run_all(
    samplers: Sequence[_SamplerBase],
    provider: Provider,
    value_fns: Sequence[ValueFunction],
    timings: Timings,
    meter: Meter | None = None,
) -> Timings:
    """Drive the n choices of one request one after another (one shared `timings`).

    Raises:
        as `run`, with ``partial`` covering every choice (finished ones included).
    """
    try:
        for s in samplers:
            run(s, provider, value_fns, timings, meter=meter)
    except ProviderError as exc:
        exc.partial = partial_output(samplers, provider, timings, meter)
        raise
    return timings


async def arun_all(
    samplers: Sequence[_SamplerBase],
    provider: AsyncProvider,
    value_fns: Sequence[ValueFunction],
    timings: Sequence[Timings],
    meter: Meter | None = None,
) -> None:
    """Drive the n choices of one request concurrently (one `Timings` each).

    The first choice that fails cancels the others at once, so no API call is made after
    the error (a call already in flight is abandoned); cancelling the caller cancels all.

    Raises:
        the first failure (as `run`), with ``partial`` covering every choice.
    """
    tasks = [asyncio.ensure_future(arun(s, provider, value_fns, t, meter=meter)) for s, t in zip(samplers, timings, strict=True)]
    try:
        done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
    failed = [task for task in tasks if task in done and not task.cancelled() and task.exception() is not None]
    if not failed:
        return
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    for task in failed[1:]:
        task.exception()  # retrieved: no "exception was never retrieved" warning
    exc = failed[0].exception()
    if isinstance(exc, ProviderError):
        total = Timings(
            api_s=sum(t.api_s for t in timings), value_s=sum(t.value_s for t in timings),
            api_calls=sum(t.api_calls for t in timings), retries=sum(t.retries for t in timings),
            short_positions=sum(t.short_positions for t in timings),
        )
        exc.partial = partial_output(samplers, provider, total, meter)
    raise exc  # type: ignore[misc]
