"""Provider adapters: one module per provider family, all behind `vas_api.types.Provider`.

`connect(client, model)` picks the adapter for an SDK client: a sync provider for
``openai.OpenAI`` / ``anthropic.Anthropic``, an async one for ``openai.AsyncOpenAI`` /
``anthropic.AsyncAnthropic``.
"""

from __future__ import annotations

from typing import Any, overload

import anthropic as anthropic_sdk  # `anthropic` is also this package's submodule
import openai

from ..errors import ConfigError
from ..types import ProviderProfile
from .anthropic import AnthropicProvider, AsyncAnthropicProvider
from .openai_compat import AsyncOpenAICompatProvider, OpenAICompatProvider

__all__ = [
    "connect",
    "aconnect",
    "OpenAICompatProvider",
    "AsyncOpenAICompatProvider",
    "AnthropicProvider",
    "AsyncAnthropicProvider",
]


@overload
def connect(client: openai.OpenAI, model: str, **kw: Any) -> OpenAICompatProvider: ...


@overload
def connect(client: openai.AsyncOpenAI, model: str, **kw: Any) -> AsyncOpenAICompatProvider: ...


def connect(
    client: Any, model: str, **kw: Any
) -> OpenAICompatProvider | AsyncOpenAICompatProvider | AnthropicProvider | AsyncAnthropicProvider:
    """The provider for `client`: sync for ``openai.OpenAI`` / ``anthropic.Anthropic``, async
    for ``openai.AsyncOpenAI`` / ``anthropic.AsyncAnthropic``.

    Args:
        client: the SDK client (kept as ``provider.client``).
        model: the model name.
        **kw: ``chat_template=`` and ``profile=`` (see `OpenAICompatProvider`); for anthropic
            clients ``profile=`` and ``cache_prompt=`` (see `AnthropicProvider`).

    Raises:
        ConfigError: `client` is none of these clients, or an option does not apply to it.
    """
    if isinstance(client, anthropic_sdk.Anthropic | anthropic_sdk.AsyncAnthropic):
        if kw.get("chat_template") is not None:
            raise ConfigError(
                "chat_template does not apply to an Anthropic client: the Messages API renders "
                "its own template; drop it."
            )
        kw.pop("chat_template", None)
        cls = AsyncAnthropicProvider if isinstance(client, anthropic_sdk.AsyncAnthropic) else AnthropicProvider
        return cls(client, model, **kw)
    if isinstance(client, openai.AsyncOpenAI):
        return AsyncOpenAICompatProvider(client, model, **kw)
    if isinstance(client, openai.OpenAI):
        return OpenAICompatProvider(client, model, **kw)
    raise ConfigError(
        "connect() takes an openai.OpenAI / openai.AsyncOpenAI or anthropic.Anthropic / "
        f"anthropic.AsyncAnthropic client, got {type(client).__name__}."
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
