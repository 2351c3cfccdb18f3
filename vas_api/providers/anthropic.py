"""Adapters for the Anthropic Messages API (and compatible servers such as llama-server).

`AnthropicProvider` (sync, over ``anthropic.Anthropic``) and `AsyncAnthropicProvider` (asyncio,
over ``anthropic.AsyncAnthropic``) implement `vas_api.types.Provider` / `AsyncProvider` for what
the API allows: `sample()` (plain completions, continued from an assistant prefill where the
model accepts one), which block and rerank modes call. `candidates()` and `draft()` need
logprobs, which the API never returns: they raise `NoLogprobsError` naming the modes that work.

Every decision is a pure function in `anthropic_wire`; these classes only make the calls.
What a provider learns at run time (a model rejected prefill, a server echoes the prefill) is
remembered per (base URL, model) for the life of the process.

Transport retries: only the anthropic SDK's own ``max_retries`` (it honours Retry-After);
nothing here retries a failed request.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from contextvars import ContextVar
from dataclasses import replace
from typing import Any

import anthropic

from ..errors import ConfigError, NoLogprobsError
from ..types import Completion, Draft, Prefix, Prompt, ProviderProfile, Samples, Usage
from . import anthropic_wire as wire

__all__ = ["AnthropicProvider", "AsyncAnthropicProvider", "forget_learned", "SPENT"]

SPENT: ContextVar[list[Usage] | None] = ContextVar("vas_anthropic_spent", default=None)
"""Where `sample()` also records each answer's usage, when set (a list): lets a request that is
asked again (a model that turned out to reject prefill) still count what its first try billed."""

# (base_url, model) -> {"prefill": False once rejected, "echoes_prefill": bool}
_LEARNED: dict[tuple[str, str], dict[str, bool]] = {}
_LEARNED_LOCK = threading.Lock()
_MAX_THREADS = 8  # concurrent calls of one sync sample(); the async shell has no such bound


def forget_learned() -> None:
    """Drop what providers learned at run time (prefill rejections, echo behaviour)."""
    with _LEARNED_LOCK:
        _LEARNED.clear()


class _Core:
    """What the sync and async shells share: the profile, the learned flags, the parsing."""

    def __init__(self, client: Any, model: str, profile: ProviderProfile | None, cache_prompt: bool) -> None:
        if not isinstance(model, str) or not model:
            raise ConfigError("model must be a non-empty string (the Anthropic model id).")
        self.client = client
        self.model = model
        self.base_url = str(getattr(client, "base_url", ""))
        self.key = (self.base_url, model)
        self.cache_prompt = cache_prompt
        self.hosted = "api.anthropic.com" in self.base_url
        base = profile or wire.profile_for(model, base_url=self.base_url)
        learned = _LEARNED.get(self.key, {})
        if learned.get("prefill") is False:
            base = replace(base, continuation="none")
        self.profile = base

    @property
    def echoes(self) -> bool | None:
        learned = _LEARNED.get(self.key, {})
        if "echoes_prefill" in learned:
            return learned["echoes_prefill"]
        return False if self.hosted else None  # Anthropic's own API returns the continuation alone

    def _learn(self, **flags: bool) -> None:
        with _LEARNED_LOCK:
            _LEARNED.setdefault(self.key, {}).update(flags)

    def requests(
        self, prefix: Prefix, n: int, max_tokens: int, temperature: float, stop: Sequence[str] | None,
    ) -> list[dict[str, Any]]:
        """The n calls' kwargs, validated before any call."""
        if not isinstance(prefix, Prefix):
            raise ConfigError(f"expected a vas_api.Prefix, got {type(prefix).__name__}.")
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ConfigError(f"n must be a positive integer, got {n!r}.")
        if prefix.response.strip() and self.profile.continuation == "none":
            raise wire.PrefillRejectedError(
                f"{self.model} cannot continue a partial response (it rejects assistant prefill).",
                workable_modes=self.profile.modes(),
            )
        kwargs = wire.request_kwargs(
            self.model, prefix, max_tokens=max_tokens, temperature=temperature, stop=stop,
            cache_prompt=self.cache_prompt, hosted=self.hosted,
        )
        return [kwargs] * n

    def error(self, exc: anthropic.AnthropicError) -> Exception:
        err = wire.translate_error(exc, base_url=self.base_url, model=self.model)
        if isinstance(err, wire.PrefillRejectedError):
            self._learn(prefill=False)
            self.profile = replace(self.profile, continuation="none")
        return err

    def parse(self, messages: Sequence[Any], prefix: Prefix) -> Samples:
        sink = SPENT.get()
        if sink is not None:
            sink.extend(wire.usage_of(m) for m in messages)
        usage = Usage()
        completions: list[Completion] = []
        for message in messages:
            usage = usage + wire.usage_of(message)
            before = self.echoes
            completion, echoes = wire.completion_of(message, prefix, before)
            if echoes is not None and echoes != before:
                self._learn(echoes_prefill=echoes)
            completions.append(completion)
        return Samples(completions, usage)

    def no_logprobs(self) -> NoLogprobsError:
        return NoLogprobsError(
            f"{self.profile.name} returns no logprobs, so token and speculative modes cannot run.",
            workable_modes=self.profile.modes(),
        )


class AnthropicProvider:
    """A `Provider` over an ``anthropic.Anthropic`` client.

    Args:
        client: the SDK client (api_key, base_url, timeout and max_retries are yours to set;
            its max_retries is the only transport retry layer).
        model: the model id ("claude-sonnet-4-5", or the id a compatible server serves).
        profile: what the endpoint can do; None decides from the model id
            (`anthropic_wire.profile_for`) and what was learned at run time.
        cache_prompt: mark the fixed prompt with a cache_control breakpoint (default True; the
            block-mode calls of one request all share that prompt).

    Raises:
        ConfigError: `client` is not an anthropic.Anthropic, or model is empty.
    """

    def __init__(
        self, client: anthropic.Anthropic, model: str, *, profile: ProviderProfile | None = None,
        cache_prompt: bool = True,
    ) -> None:
        if not isinstance(client, anthropic.Anthropic):
            raise ConfigError(
                f"AnthropicProvider needs an anthropic.Anthropic client, got {type(client).__name__} "
                "(use AsyncAnthropicProvider for anthropic.AsyncAnthropic)."
            )
        self.client = client
        self._core = _Core(client, model, profile, cache_prompt)
        self.model = model

    @property
    def profile(self) -> ProviderProfile:
        """The endpoint's profile; its continuation turns to "none" once the model rejected prefill."""
        return self._core.profile

    def prompt_text(self, prompt: Prompt) -> str:
        """A ChatML rendering of `prompt` (the API renders its own template server-side; this is
        the text value functions without their own rendering score).

        Raises:
            ConfigError: the prompt is empty or not a user-ended conversation of text turns.
        """
        return wire.canonical_prompt_text(prompt)

    def candidates(self, prefix: Prefix, *, k: int) -> Draft:
        """Always raises NoLogprobsError: the Messages API returns no logprobs."""
        raise self._core.no_logprobs()

    def draft(self, prefix: Prefix, *, m: int, k: int, restrict_top_k: bool = False) -> Draft:
        """Always raises NoLogprobsError: the Messages API returns no logprobs."""
        raise self._core.no_logprobs()

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
        """n plain completions continuing `prefix` (n calls: the API has no n parameter; the
        first one alone, so that it writes the prompt cache, then the rest concurrently).

        A non-empty `prefix.response` is sent as an assistant prefill and only the continuation
        comes back (also from servers that echo the prefill). `seed` is accepted for the
        protocol but the API has no seed: samples are not reproducible.

        Raises:
            ConfigError: bad n, max_tokens, temperature, stop or prompt (before any call).
            PrefillRejectedError: the model rejects prefill (remembered for the model).
            ProviderError and subclasses: the call failed after the SDK's retries.
        """
        calls = self._core.requests(prefix, n, max_tokens, temperature, stop)

        def one(kwargs: dict[str, Any]) -> Any:
            try:
                return self.client.messages.create(**kwargs)
            except anthropic.AnthropicError as exc:
                raise self._core.error(exc) from exc

        # The first call writes the prompt cache; the others then read it, concurrently.
        messages = [one(calls[0])]
        if len(calls) > 1:
            with ThreadPoolExecutor(max_workers=min(len(calls) - 1, _MAX_THREADS)) as pool:
                messages += list(pool.map(one, calls[1:]))
        return self._core.parse(messages, prefix)

    def __repr__(self) -> str:
        return f"AnthropicProvider(model={self.model!r}, profile={self.profile.name!r})"


class AsyncAnthropicProvider:
    """The asyncio twin of `AnthropicProvider` over ``anthropic.AsyncAnthropic``: after the first
    call of `sample()`, the other n - 1 run concurrently. Same arguments."""

    def __init__(
        self, client: anthropic.AsyncAnthropic, model: str, *, profile: ProviderProfile | None = None,
        cache_prompt: bool = True,
    ) -> None:
        if not isinstance(client, anthropic.AsyncAnthropic):
            raise ConfigError(
                f"AsyncAnthropicProvider needs an anthropic.AsyncAnthropic client, got "
                f"{type(client).__name__} (use AnthropicProvider for anthropic.Anthropic)."
            )
        self.client = client
        self._core = _Core(client, model, profile, cache_prompt)
        self.model = model

    @property
    def profile(self) -> ProviderProfile:
        """See `AnthropicProvider.profile`."""
        return self._core.profile

    def prompt_text(self, prompt: Prompt) -> str:
        """See `AnthropicProvider.prompt_text`."""
        return wire.canonical_prompt_text(prompt)

    async def candidates(self, prefix: Prefix, *, k: int) -> Draft:
        """Always raises NoLogprobsError."""
        raise self._core.no_logprobs()

    async def draft(self, prefix: Prefix, *, m: int, k: int, restrict_top_k: bool = False) -> Draft:
        """Always raises NoLogprobsError."""
        raise self._core.no_logprobs()

    async def sample(
        self,
        prefix: Prefix,
        *,
        n: int,
        max_tokens: int,
        temperature: float = 1.0,
        stop: Sequence[str] | None = None,
        seed: int | None = None,
    ) -> Samples:
        """See `AnthropicProvider.sample`; the n calls are in flight at once."""
        calls = self._core.requests(prefix, n, max_tokens, temperature, stop)
        # The first call writes the prompt cache; the others then read it, concurrently.
        first = await asyncio.gather(self.client.messages.create(**calls[0]), return_exceptions=True)
        rest = await asyncio.gather(
            *(self.client.messages.create(**kwargs) for kwargs in calls[1:]), return_exceptions=True
        ) if not isinstance(first[0], BaseException) else []
        results = [*first, *rest]
        for r in results:
            if isinstance(r, anthropic.AnthropicError):
                raise self._core.error(r) from r
            if isinstance(r, BaseException):
                raise r
        return self._core.parse(results, prefix)

    def __repr__(self) -> str:
        return f"AsyncAnthropicProvider(model={self.model!r}, profile={self.profile.name!r})"
