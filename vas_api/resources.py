"""`client.completions` and `client.chat.completions`: the SDK's call shapes, typed.

Overloads tell an editor what comes back: the SDK's `Completion` / `ChatCompletion` (with a
`.vas` report), or with ``stream=True`` a `VASStream` / `AsyncVASStream` of `Completion` /
`ChatCompletionChunk` chunks. The keyword arguments are typed as TypedDicts, so editors
complete them. Every request goes to the owning client's `_create`; nothing is decided here
but which prompt form the endpoint takes.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, Literal, TypedDict, overload

import httpx
from openai import NotGiven
from openai.types import Completion
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from typing_extensions import Unpack

from .errors import ConfigError
from .request_checks import flatten_messages

if TYPE_CHECKING:
    from .client import _Base
    from .streaming import AsyncVASStream, VASStream

__all__ = ["Completions", "Chat", "ChatCompletions", "AsyncCompletions", "AsyncChat", "AsyncChatCompletions"]

_VAS_KEYS = ("value_model", "beta", "k", "mode", "draft_min", "draft_max", "restrict_top_k")


class RequestArgs(TypedDict, total=False):
    """Keyword arguments of both endpoints: the SDK's (None, NOT_GIVEN, omit = default) and VAS's."""

    max_tokens: int | None | NotGiven
    temperature: float | None | NotGiven
    top_p: float | None | NotGiven
    n: int | None | NotGiven
    stop: str | Sequence[str] | None | NotGiven
    seed: int | None | NotGiven
    user: str | NotGiven
    stream_options: dict[str, bool] | None | NotGiven
    extra_headers: dict[str, str] | None
    extra_query: dict[str, object] | None
    extra_body: dict[str, object] | None
    timeout: float | httpx.Timeout | None | NotGiven
    # VAS
    value_model: Any
    """A checkpoint directory, a value function, or a list of them."""
    beta: float | Sequence[float]
    """One number, or one per value model (0 = the base model)."""
    k: int
    """Candidates per position."""
    mode: Literal["auto", "speculative", "token", "block", "rerank"]
    draft_min: int
    draft_max: int
    restrict_top_k: bool | None
    # block and rerank modes (vas_api.sampler.block / rerank)
    block_len: int
    block_n: int
    rerank_n: int
    rerank: Literal["sample", "argmax"]
    # spend caps (vas_api.budget)
    max_cost_usd: float
    max_total_tokens: int
    budget: Any
    on_budget: Literal["raise", "partial"]


class ChatArgs(RequestArgs, total=False):
    max_completion_tokens: int | None | NotGiven


def _split(kwargs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(SDK arguments, VAS options)."""
    vas = {k: kwargs.pop(k) for k in _VAS_KEYS if k in kwargs}
    return kwargs, vas


def _completion_prompt(prompt: Any) -> str:
    if not isinstance(prompt, str):
        raise ConfigError("prompt must be one string (for chat messages use client.chat.completions.create).")
    if not prompt:
        raise ConfigError("the prompt is empty; give the base model something to continue.")
    return prompt


class Completions:
    """`client.completions.create(...)`: raw-prompt completions."""

    def __init__(self, owner: _Base) -> None:
        self._owner = owner

    @overload
    def create(
        self, *, model: str, prompt: str, stream: Literal[True], **kwargs: Unpack[RequestArgs]
    ) -> VASStream[Completion]: ...

    @overload
    def create(
        self, *, model: str, prompt: str, stream: Literal[False] | None | NotGiven = ...,
        **kwargs: Unpack[RequestArgs],
    ) -> Completion: ...

    def create(self, *, model: str, prompt: str, stream: Any = None, **kwargs: Any) -> Any:
        """Like `openai.OpenAI().completions.create`, steered by the value model(s).

        Args:
            model, prompt, max_tokens, temperature, top_p, stop, n, seed, user, stream,
                stream_options, extra_headers, extra_query, extra_body, timeout: as in the SDK.
            value_model: a checkpoint directory, a value function, or a list of them.
            beta: one number, or one per value model (0 = the base model).
            k: candidates per position. mode: "auto", "speculative" or "token".
            draft_min, draft_max, restrict_top_k: speculative-mode controls.

        Returns:
            openai.types.Completion with a `.vas` VASReport; with stream=True a VASStream of
            Completion chunks, the last one carrying the usage and `.vas`.

        Raises:
            ConfigError, CapabilityError, CheckpointError, ValueModelError: before any call
            where the request itself is wrong.
        """
        sdk, vas = _split(kwargs)
        return self._owner._create("completion", model, _completion_prompt(prompt), {**sdk, "stream": stream}, vas)


class ChatCompletions:
    """`client.chat.completions.create(...)`: chat messages, continued as the assistant."""

    def __init__(self, owner: _Base) -> None:
        self._owner = owner

    @overload
    def create(
        self, *, model: str, messages: Iterable[dict[str, Any]], stream: Literal[True],
        **kwargs: Unpack[ChatArgs],
    ) -> VASStream[ChatCompletionChunk]: ...

    @overload
    def create(
        self, *, model: str, messages: Iterable[dict[str, Any]],
        stream: Literal[False] | None | NotGiven = ..., **kwargs: Unpack[ChatArgs],
    ) -> ChatCompletion: ...

    def create(self, *, model: str, messages: Any, stream: Any = None, **kwargs: Any) -> Any:
        """Like `openai.OpenAI().chat.completions.create`, steered by the value model(s).

        Same arguments as `Completions.create`, with `messages` (content as a string or a list
        of text parts; None for an assistant turn) and `max_completion_tokens`. Returns
        openai.types.chat.ChatCompletion with a `.vas` VASReport, or with stream=True a
        VASStream of ChatCompletionChunk. Raises CapabilityError at once for an endpoint that
        cannot continue a partial response (OpenAI's hosted chat models).
        """
        sdk, vas = _split(kwargs)
        return self._owner._create("chat", model, flatten_messages(messages), {**sdk, "stream": stream}, vas)


class Chat:
    def __init__(self, owner: _Base) -> None:
        self.completions = ChatCompletions(owner)


class AsyncCompletions:
    """`await client.completions.create(...)` on AsyncVASClient."""

    def __init__(self, owner: _Base) -> None:
        self._owner = owner

    @overload
    async def create(
        self, *, model: str, prompt: str, stream: Literal[True], **kwargs: Unpack[RequestArgs]
    ) -> AsyncVASStream[Completion]: ...

    @overload
    async def create(
        self, *, model: str, prompt: str, stream: Literal[False] | None | NotGiven = ...,
        **kwargs: Unpack[RequestArgs],
    ) -> Completion: ...

    async def create(self, *, model: str, prompt: str, stream: Any = None, **kwargs: Any) -> Any:
        """See `Completions.create`; returns an AsyncVASStream with stream=True."""
        sdk, vas = _split(kwargs)
        return await self._owner._create(
            "completion", model, _completion_prompt(prompt), {**sdk, "stream": stream}, vas
        )


class AsyncChatCompletions:
    """`await client.chat.completions.create(...)` on AsyncVASClient."""

    def __init__(self, owner: _Base) -> None:
        self._owner = owner

    @overload
    async def create(
        self, *, model: str, messages: Iterable[dict[str, Any]], stream: Literal[True],
        **kwargs: Unpack[ChatArgs],
    ) -> AsyncVASStream[ChatCompletionChunk]: ...

    @overload
    async def create(
        self, *, model: str, messages: Iterable[dict[str, Any]],
        stream: Literal[False] | None | NotGiven = ..., **kwargs: Unpack[ChatArgs],
    ) -> ChatCompletion: ...

    async def create(self, *, model: str, messages: Any, stream: Any = None, **kwargs: Any) -> Any:
        """See `ChatCompletions.create`; returns an AsyncVASStream with stream=True."""
        sdk, vas = _split(kwargs)
        return await self._owner._create("chat", model, flatten_messages(messages), {**sdk, "stream": stream}, vas)


class AsyncChat:
    def __init__(self, owner: _Base) -> None:
        self.completions = AsyncChatCompletions(owner)
