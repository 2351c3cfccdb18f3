"""Adapters for OpenAI-compatible endpoints (OpenAI, vLLM, SGLang, llama.cpp servers, ...).

`OpenAICompatProvider` (sync) and `AsyncOpenAICompatProvider` (asyncio) implement
`vas_api.types.Provider` / `AsyncProvider`. They are thin shells: every request and every
reading of a response is decided by the pure flows in `openai_wire`, so both behave the same.

Retries: one layer, vas-api's (`vas_api.retry`, run by the drivers in `openai_wire`). The
client's ``max_retries`` sets how many; the calls themselves go out with the SDK's retries off,
so the two never multiply. Errors keep the SDK's exception classes (see `openai_wire.translate_error`).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence

import openai

from .. import profiles as _profiles
from ..call_options import CallOptions
from ..chat_template import ChatTemplate, load_chat_template
from ..errors import ConfigError
from ..logprobs import DEFAULT_SPECIAL_TOKENS
from ..types import Draft, Prefix, Prompt, ProviderProfile, Samples
from . import openai_wire as wire

__all__ = ["OpenAICompatProvider", "AsyncOpenAICompatProvider"]

log = logging.getLogger(__name__)


class _Core:
    """What the sync and async shells share: model, profile, chat template, flows."""

    def __init__(
        self,
        model: str,
        profile: ProviderProfile,
        chat_template: ChatTemplate | str | None,
    ) -> None:
        if not isinstance(model, str) or not model:
            raise ConfigError("model must be a non-empty string (the server's model name).")
        self.model = model
        self.profile = profile
        self.chat_template = (
            load_chat_template(chat_template) if chat_template is not None else None
        )
        specials = set(DEFAULT_SPECIAL_TOKENS)
        specials.update(profile.special_tokens)
        if self.chat_template is not None:
            specials.update(self.chat_template.end_tokens)
        self.special_tokens = frozenset(specials)
        self.call_options = CallOptions()  # per-request SDK options, see with_call_options

    def prompt_text(self, prompt: Prompt) -> str:
        wire.check_prompt(prompt)
        if isinstance(prompt, str):
            return prompt
        if self.chat_template is None:
            raise ConfigError(
                "chat messages need a chat template to become prompt text: pass "
                "chat_template= (a .gguf path, a Hugging Face tokenizer name, or a Jinja string)."
            )
        return self.chat_template.render(prompt, add_generation_prompt=True)

    def target(self, prefix: Prefix) -> wire.Target:
        if not isinstance(prefix, Prefix):
            raise ConfigError(f"expected a vas_api.Prefix, got {type(prefix).__name__}.")
        return wire.prefix_target(self.profile, prefix, self.prompt_text)

    def candidates(self, prefix: Prefix, k: int) -> wire.Flow:
        wire.check_k(self.profile, k)
        return self.call_options.flow(wire.candidates_flow(
            self.profile, self.model, self.target(prefix), k=k, special_tokens=self.special_tokens
        ))

    def draft(self, prefix: Prefix, m: int, k: int, restrict_top_k: bool) -> wire.Flow:
        wire.check_k(self.profile, k)
        return self.call_options.flow(wire.draft_flow(
            self.profile, self.model, self.target(prefix), m=m, k=k,
            restrict_top_k=restrict_top_k, special_tokens=self.special_tokens,
        ))

    def sample(
        self,
        prefix: Prefix,
        n: int,
        max_tokens: int,
        temperature: float,
        stop: Sequence[str] | None,
        seed: int | None,
    ) -> wire.Flow:
        return self.call_options.flow(wire.sample_flow(
            self.profile, self.model, self.target(prefix), n=n, max_tokens=max_tokens,
            temperature=temperature, stop=stop, seed=seed,
        ))


class OpenAICompatProvider:
    """A `Provider` over an ``openai.OpenAI`` client.

    Args:
        client: the SDK client (base_url, api_key, timeout and max_retries are yours to set;
            its max_retries is how often vas-api retries a failed call, see `vas_api.retry`).
        model: the model name to send.
        chat_template: renders chat messages for "completions" continuation: a ChatTemplate,
            a .gguf path, a Hugging Face tokenizer name/path, or a Jinja string. Needed only
            for chat prompts on raw-completion servers (llama.cpp).
        profile: what the endpoint can do; None uses a known or cached profile, or probes the
            server once (a few calls, see `vas_api.profiles`).

    Raises:
        ConfigError: model is empty or the chat template is invalid.
        ProviderConnectionError, ModelNotFoundError: probing failed.

    Attributes:
        client: the SDK client, untouched.
        model, profile, chat_template: as given / resolved.
    """

    def __init__(
        self,
        client: openai.OpenAI,
        model: str,
        *,
        chat_template: ChatTemplate | str | None = None,
        profile: ProviderProfile | None = None,
    ) -> None:
        if not isinstance(client, openai.OpenAI):
            raise ConfigError(
                f"OpenAICompatProvider needs an openai.OpenAI client, got {type(client).__name__}"
                " (use AsyncOpenAICompatProvider for openai.AsyncOpenAI)."
            )
        self.client = client
        if profile is None:
            profile = _profiles.probe_profile(client, model)
        self._core = _Core(model, profile, chat_template)
        self.model = model
        self.profile = profile
        self.chat_template = self._core.chat_template

    def prompt_text(self, prompt: Prompt) -> str:
        """The exact text the base model continues for `prompt` (chat rendered by the template).

        Raises:
            ConfigError: the prompt is empty, or chat messages come without a chat template.
        """
        return self._core.prompt_text(prompt)

    def candidates(self, prefix: Prefix, *, k: int) -> Draft:
        """The top-k next-token candidates after `prefix`, as a Draft with one Position.

        The top k always comes back, with end-of-sequence as a ``special`` candidate when it is
        among them, even when the server samples end-of-sequence (see
        `openai_wire.candidates_flow`).

        Raises:
            ConfigError: bad k or prompt. CapabilityError: k above the endpoint's maximum, or
            the endpoint cannot continue `prefix.response`. NoLogprobsError: no logprobs came
            back. ProviderConnectionError / ProviderError: the call failed.
        """
        return wire.drive_sync(self.client, self._core.candidates(prefix, k), model=self.model)

    def draft(self, prefix: Prefix, *, m: int, k: int, restrict_top_k: bool = False) -> Draft:
        """One call drafting up to m tokens at temperature 1 with every server-side sampler
        neutral (top_k=k when `restrict_top_k`), with top-k candidates and the sampled token's
        own logprob at each position.

        Raises:
            as `candidates`; CapabilityError also when restrict_top_k is asked of an endpoint
            without a top_k parameter.
        """
        flow = self._core.draft(prefix, m, k, restrict_top_k)
        return wire.drive_sync(self.client, flow, model=self.model)

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
        """n plain completions from the base distribution (neutral server-side samplers); one
        call with n= where the endpoint supports it, else n calls.

        Raises:
            ConfigError: bad n, max_tokens, temperature or prompt. ProviderError: a call failed.
        """
        flow = self._core.sample(prefix, n, max_tokens, temperature, stop, seed)
        return wire.drive_sync(self.client, flow, model=self.model)

    def with_call_options(self, options: CallOptions) -> OpenAICompatProvider:
        """A copy that applies `options` (extra_headers/query/body, timeout) to every call."""
        new = copy.copy(self)
        new._core = copy.copy(self._core)
        new._core.call_options = options
        return new

    def __repr__(self) -> str:
        return f"OpenAICompatProvider(model={self.model!r}, profile={self.profile.name!r})"


class AsyncOpenAICompatProvider:
    """The asyncio twin of `OpenAICompatProvider` over an ``openai.AsyncOpenAI`` client.

    With profile=None the profile comes from the known / cached ones, or is probed through a
    short-lived *sync* client with the same base_url and key (this blocks once, in the
    constructor). To probe without blocking an event loop, use ``await vas_api.providers.aconnect``
    or ``await vas_api.profiles.aprobe_profile`` first and pass the profile in.
    """

    def __init__(
        self,
        client: openai.AsyncOpenAI,
        model: str,
        *,
        chat_template: ChatTemplate | str | None = None,
        profile: ProviderProfile | None = None,
    ) -> None:
        if not isinstance(client, openai.AsyncOpenAI):
            raise ConfigError(
                "AsyncOpenAICompatProvider needs an openai.AsyncOpenAI client, got "
                f"{type(client).__name__} (use OpenAICompatProvider for openai.OpenAI)."
            )
        self.client = client
        if profile is None:
            profile = _profiles.cached_profile(str(client.base_url), model) or _probe_blocking(
                client, model
            )
        self._core = _Core(model, profile, chat_template)
        self.model = model
        self.profile = profile
        self.chat_template = self._core.chat_template

    def prompt_text(self, prompt: Prompt) -> str:
        """See `OpenAICompatProvider.prompt_text`."""
        return self._core.prompt_text(prompt)

    async def candidates(self, prefix: Prefix, *, k: int) -> Draft:
        """See `OpenAICompatProvider.candidates`."""
        return await wire.drive_async(
            self.client, self._core.candidates(prefix, k), model=self.model
        )

    async def draft(
        self, prefix: Prefix, *, m: int, k: int, restrict_top_k: bool = False
    ) -> Draft:
        """See `OpenAICompatProvider.draft`."""
        flow = self._core.draft(prefix, m, k, restrict_top_k)
        return await wire.drive_async(self.client, flow, model=self.model)

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
        """See `OpenAICompatProvider.sample`."""
        flow = self._core.sample(prefix, n, max_tokens, temperature, stop, seed)
        return await wire.drive_async(self.client, flow, model=self.model)

    def with_call_options(self, options: CallOptions) -> AsyncOpenAICompatProvider:
        """A copy that applies `options` (extra_headers/query/body, timeout) to every call."""
        new = copy.copy(self)
        new._core = copy.copy(self._core)
        new._core.call_options = options
        return new

    def __repr__(self) -> str:
        return f"AsyncOpenAICompatProvider(model={self.model!r}, profile={self.profile.name!r})"


def _probe_blocking(client: openai.AsyncOpenAI, model: str) -> ProviderProfile:
    static = _profiles.static_profile(str(client.base_url), model)
    if static is not None:
        return static
    log.info("probing %s for %s with a temporary sync client", client.base_url, model)
    sync = openai.OpenAI(
        api_key=client.api_key,
        base_url=client.base_url,
        timeout=client.timeout,
        max_retries=client.max_retries,
    )
    try:
        return _profiles.probe_profile(sync, model)
    finally:
        sync.close()
