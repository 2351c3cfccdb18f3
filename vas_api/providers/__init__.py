"""Provider adapters: one module per provider family, all behind `vas_api.types.Provider`.

`connect(client, model)` picks the adapter for an SDK client: a sync provider for
``openai.OpenAI``, an async one for ``openai.AsyncOpenAI``.
"""

from __future__ import annotations

from typing import Any, overload

import openai

from ..errors import ConfigError
from ..types import ProviderProfile
from .openai_compat import AsyncOpenAICompatProvider, OpenAICompatProvider

__all__ = ["connect", "aconnect", "OpenAICompatProvider", "AsyncOpenAICompatProvider"]


@overload
def connect(client: openai.OpenAI, model: str, **kw: Any) -> OpenAICompatProvider: ...


@overload
def connect(client: openai.AsyncOpenAI, model: str, **kw: Any) -> AsyncOpenAICompatProvider: ...


def connect(
    client: openai.OpenAI | openai.AsyncOpenAI, model: str, **kw: Any
) -> OpenAICompatProvider | AsyncOpenAICompatProvider:
    """The provider for `client`: sync for ``openai.OpenAI``, async for ``openai.AsyncOpenAI``.

    Args:
        client: the SDK client (kept as ``provider.client``).
        model: the model name.
        **kw: ``chat_template=`` and ``profile=`` (see `OpenAICompatProvider`).

    Raises:
        ConfigError: `client` is neither kind of openai client.
    """
    if isinstance(client, openai.AsyncOpenAI):
        return AsyncOpenAICompatProvider(client, model, **kw)
    if isinstance(client, openai.OpenAI):
        return OpenAICompatProvider(client, model, **kw)
    raise ConfigError(
        f"connect() takes an openai.OpenAI or openai.AsyncOpenAI client, got {type(client).__name__}."
    )


async def aconnect(
    client: openai.AsyncOpenAI,
    model: str,
    *,
    profile: ProviderProfile | None = None,
    **kw: Any,
) -> AsyncOpenAICompatProvider:
    """Like `connect` for an async client, but probes the profile without blocking the loop."""
    from ..profiles import aprobe_profile

    if profile is None:
        profile = await aprobe_profile(client, model)
    return AsyncOpenAICompatProvider(client, model, profile=profile, **kw)
