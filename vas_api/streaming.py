"""Streaming VAS responses as the openai SDK's own chunk types.

The decisions live in `StreamState`, a pure object (openai-python's streaming helpers are built
the same way, STYLE.md): it takes events ("choice i's response is now this text", "all done,
here is the report") and returns the chunks to send. `VASStream` and `AsyncVASStream` are thin
loops around it and around a `Drive` the client gives them (its `vas_api.sampler.run` / `arun`
call, paused after every committed token or accepted run of a draft), and mirror the SDK's `Stream` /
`AsyncStream`: iteration, context manager, `close()`.

Chunks, as the SDK delivers them with ``stream_options={"include_usage": True}``:
- chat: `ChatCompletionChunk`s, a first delta with ``role="assistant"`` per choice, then text
  deltas, then an empty delta with the choice's ``finish_reason``;
- completions: `Completion`s with ``object="text_completion"``, text deltas, then an empty
  text with the ``finish_reason``;
- last, a chunk with no choices and the usage summed over every API call, with the `VASReport`
  as ``chunk.vas`` (also ``stream.vas`` once the stream is done).
Text that could still be the start of a stop string is held back until it cannot match any
more, so the joined deltas equal the non-streamed response exactly.

API calls happen only while the stream is read: closing it early (``close()``, leaving a
``with`` block, or dropping it after a ``break``) makes no further calls.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar

from .report import VASReport
from .sampler import Timings
from .sampler.core import _SamplerBase

__all__ = ["Progress", "Finished", "StreamState", "VASStream", "AsyncVASStream", "held_back"]

_T = TypeVar("_T")
Kind = Literal["completion", "chat"]


@dataclass(frozen=True, slots=True)
class Progress:
    """Choice `index` has committed tokens: its response so far is `text`.

    `finish_reason` is set once the choice is done (then `text` is final).
    """

    index: int
    text: str
    finish_reason: str | None = None


@dataclass(frozen=True, slots=True)
class Finished:
    """Every choice is done; `report` holds the summed usage and what VAS did."""

    report: VASReport


Event = Progress | Finished


def held_back(text: str, stops: Sequence[str]) -> int:
    """How many trailing characters of `text` could still begin a stop string (0 if none).

    Those characters are not streamed yet: the next token may complete the stop string, and a
    stop string and what follows it are never part of the response.
    """
    longest = 0
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), longest, -1):
            if text.endswith(s[:k]):
                longest = k
                break
    return longest


class StreamState:
    """Pure: turns stream events into SDK chunks (no I/O, no clock but the one at creation).

    Args:
        kind: "chat" (ChatCompletionChunk) or "completion" (Completion chunks).
        model: the model name the chunks carry.
        n: number of choices.
        stop: the request's stop strings (text that may start one is held back).
        include_usage: end with a usage chunk that carries the report.
    """

    def __init__(
        self, kind: Kind, model: str, n: int, stop: Sequence[str], include_usage: bool = True
    ) -> None:
        self.kind, self.model, self.stop, self.include_usage = kind, model, tuple(stop), include_usage
        self.id = f"vas-{uuid.uuid4().hex[:16]}"
        self.created = int(time.time())
        self._sent = [0] * n  # characters of each choice already streamed
        self._started = [False] * n
        self._finished = [False] * n
        self.report: VASReport | None = None

    def handle_event(self, event: Event) -> list[Any]:
        """The chunks that `event` releases, in order (possibly none)."""
        if isinstance(event, Finished):
            self.report = event.report
            return [self._usage_chunk(event.report)] if self.include_usage else []
        i, out = event.index, []
        if self._finished[i]:
            return []
        if not self._started[i] and self.kind == "chat":
            out.append(self._chunk(i, "", role=True))
        self._started[i] = True
        done = event.finish_reason is not None
        safe = len(event.text) if done else len(event.text) - held_back(event.text, self.stop)
        if safe > self._sent[i]:
            out.append(self._chunk(i, event.text[self._sent[i] : safe]))
            self._sent[i] = safe
        if done:
            self._finished[i] = True
            reason = event.finish_reason if event.finish_reason in ("stop", "length") else "stop"
            out.append(self._chunk(i, "", finish_reason=reason))
        return out

    # -- chunk shapes (the SDK's own types) -------------------------------------------------
    def _chunk(self, index: int, text: str, *, role: bool = False, finish_reason: str | None = None) -> Any:
        if self.kind == "chat":
            from openai.types.chat import ChatCompletionChunk
            from openai.types.chat.chat_completion_chunk import Choice, ChoiceDelta

            delta = ChoiceDelta(role="assistant", content="") if role else (
                ChoiceDelta() if finish_reason else ChoiceDelta(content=text)
            )
            return ChatCompletionChunk(
                id=self.id, created=self.created, model=self.model, object="chat.completion.chunk",
                choices=[Choice(index=index, delta=delta, finish_reason=finish_reason, logprobs=None)],
            )
        from openai.types import Completion, CompletionChoice

        # Streamed completion chunks have finish_reason None until the last one, which the
        # SDK's (validated) CompletionChoice does not allow: built unvalidated, as the SDK does.
        choice = CompletionChoice.model_construct(index=index, text=text, finish_reason=finish_reason, logprobs=None)
        return Completion.model_construct(
            id=self.id, created=self.created, model=self.model, object="text_completion", choices=[choice],
        )

    def _usage_chunk(self, report: VASReport) -> Any:
        from openai.types import Completion, CompletionUsage
        from openai.types.chat import ChatCompletionChunk

        u = report.usage
        usage = CompletionUsage(
            prompt_tokens=u.prompt_tokens, completion_tokens=u.completion_tokens,
            total_tokens=u.total_tokens, prompt_tokens_details={"cached_tokens": u.cached_tokens},
        )
        if self.kind == "chat":
            chunk = ChatCompletionChunk(
                id=self.id, created=self.created, model=self.model, object="chat.completion.chunk",
                choices=[], usage=usage,
            )
        else:
            chunk = Completion.model_construct(
                id=self.id, created=self.created, model=self.model, object="text_completion",
                choices=[], usage=usage,
            )
        chunk.vas = report
        return chunk


Finish = Callable[[list[Timings], float], VASReport]
"""Builds the request's report from each choice's timings and the total wall time."""

PauseWhen = Callable[[], bool]
Drive = Callable[[_SamplerBase, Timings, PauseWhen], Any]
"""Drives one sampler (the client's `run` / `arun` with the request's provider and value models)
until `pause_when()` holds or it is done; the async stream awaits what it returns."""


def _committed(sampler: _SamplerBase) -> Callable[[], bool]:
    """True once `sampler` has committed a token (or finished) since this was made."""
    before = len(sampler.steps)
    return lambda: sampler.done or len(sampler.steps) > before


class _StreamBase:
    """What both streams hold: the chunk state, the samplers and what answers them."""

    def __init__(self, state: StreamState, samplers: list[_SamplerBase], drive: Drive, finish: Finish) -> None:
        self._state, self._samplers, self._drive, self._finish = state, samplers, drive, finish

    @property
    def vas(self) -> VASReport | None:
        """The VASReport, once the stream has ended (None before)."""
        return self._state.report

    def steps(self, index: int) -> list[Any]:
        """The tokens choice `index` has committed so far (`vas_api.sampler.core.Step`, with
        their value shifts): what a server adds to its chunks so a page can shade as it streams."""
        return list(self._samplers[index].steps)


class VASStream(_StreamBase, Generic[_T]):
    """A synchronous stream of chunks, like the SDK's `openai.Stream`.

    Iterate it (``for chunk in stream``), use it as a context manager, or `close()` it; each
    step of iteration makes the API calls for the next committed token(s), nothing runs ahead.
    """

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self._iterator = self._chunks()

    def _chunks(self) -> Iterator[Any]:
        timings = [Timings() for _ in self._samplers]
        start = time.perf_counter()
        for i, (s, t) in enumerate(zip(self._samplers, timings, strict=True)):
            while True:
                self._drive(s, t, _committed(s))
                yield from self._state.handle_event(Progress(i, s.response, s.finish_reason))
                if s.done:
                    break
        report = self._finish(timings, time.perf_counter() - start)
        yield from self._state.handle_event(Finished(report))

    def __next__(self) -> _T:
        return self._iterator.__next__()

    def __iter__(self) -> VASStream[_T]:
        # The stream itself (as `__aiter__`): a `break` leaves it open, and reading on resumes.
        return self

    def close(self) -> None:
        """Stop the stream: no further API calls are made."""
        self._iterator.close()

    def __enter__(self) -> VASStream[_T]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


async def _drive_choice(
    i: int, s: _SamplerBase, drive: Callable[..., Awaitable[Any]], t: Timings, queue: asyncio.Queue[Any]
) -> None:
    """One choice of an async stream: a Progress event after every commit, or its error.

    A module function, not a method: a running task must not keep its stream alive, so that a
    stream dropped after a `break` is collected and cancels its tasks.
    """
    try:
        while True:
            await drive(s, t, _committed(s))
            await queue.put(Progress(i, s.response, s.finish_reason))
            if s.done:
                return
    except Exception as exc:  # handed to the reader, which raises it
        await queue.put(exc)


class AsyncVASStream(_StreamBase, Generic[_T]):
    """An asyncio stream of chunks, like the SDK's `openai.AsyncStream`.

    ``async for chunk in stream``, ``async with stream``, ``await stream.close()`` (or
    `aclose()`). With n > 1 the choices run concurrently and their chunks interleave, each
    tagged with its choice index; closing the stream (or dropping it) cancels them at once.
    """

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self._tasks: list[asyncio.Task[None]] = []
        self._iterator = self._chunks()

    async def _chunks(self) -> AsyncIterator[Any]:
        timings = [Timings() for _ in self._samplers]
        start = time.perf_counter()
        # Bounded: a choice runs at most one event ahead of the reader, as the sync stream does.
        queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=len(self._samplers))
        self._tasks = [
            asyncio.ensure_future(_drive_choice(i, s, self._drive, t, queue))
            for i, (s, t) in enumerate(zip(self._samplers, timings, strict=True))
        ]
        try:
            remaining = len(self._samplers)
            while remaining:
                event = await queue.get()
                if isinstance(event, Exception):
                    raise event
                remaining -= event.finish_reason is not None
                for chunk in self._state.handle_event(event):
                    yield chunk
        finally:
            self._cancel()
        report = self._finish(timings, time.perf_counter() - start)
        for chunk in self._state.handle_event(Finished(report)):
            yield chunk

    def _cancel(self) -> None:
        for task in self._tasks:
            if not task.done():
                # RuntimeError: its event loop is already closed, so nothing runs any more.
                with contextlib.suppress(RuntimeError):
                    task.cancel()

    async def __anext__(self) -> _T:
        return await self._iterator.__anext__()

    def __aiter__(self) -> AsyncVASStream[_T]:
        # The stream itself, not a wrapping generator: nothing else then holds it after a
        # `break`, so dropping it cancels its choices (see __del__).
        return self

    async def close(self) -> None:
        """Stop the stream: the choices still running are cancelled; no further API calls."""
        self._cancel()
        await self._iterator.aclose()

    aclose = close

    async def __aenter__(self) -> AsyncVASStream[_T]:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def __del__(self) -> None:
        # Dropped after a `break` without close(): stop the choices' tasks (no more calls).
        self._cancel()
