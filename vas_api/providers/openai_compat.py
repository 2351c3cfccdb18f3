"""Adapters for OpenAI-compatible endpoints (OpenAI, vLLM, SGLang, llama.cpp servers, ...).

`OpenAICompatProvider` (sync) and `AsyncOpenAICompatProvider` (asyncio) implement
`vas_api.types.Provider` / `AsyncProvider`. They are thin shells: every request and every
reading of a response is decided by the pure flows in `openai_wire`, so both behave the same.

Retries: one layer, vas-api's (`vas_api.retry`, run by the drivers in `openai_wire`). The
client's ``max_retries`` sets how many; the calls themselves go out with the SDK's retries off,
so the two never multiply. Errors keep the SDK's exception classes (see `openai_wire.translate_error`).

Token-id continuation (DESIGN.md section 7): where the profile says the server takes id prompts
(``token_id_prompts``) and its family has a tokenizer endpoint (`TOKENIZE_ENDPOINTS`), the
prompt text is tokenized by the server once (cached per prompt text) and every call sends the
prompt ids followed by the response's own ids (`Prefix.response_ids`), so the server never
re-tokenizes what the base produced.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import openai

from .. import profiles as _profiles
from ..call_options import CallOptions
from ..chat_template import ChatTemplate, load_chat_template
from ..errors import ConfigError, ProviderError, sdk_error
from ..logprobs import DEFAULT_SPECIAL_TOKENS
from ..redact import redact_url, redact_urls_in
from ..types import Draft, Prefix, Prompt, ProviderProfile, Samples
from . import openai_wire as wire

__all__ = ["OpenAICompatProvider", "AsyncOpenAICompatProvider", "TOKENIZE_ENDPOINTS", "tokenize_request"]

log = logging.getLogger(__name__)

TOKENIZE_ENDPOINTS: dict[str, tuple[str, Callable[[str, str], dict[str, Any]]]] = {
    # llama-server: POST /tokenize {content, add_special, parse_special} -> {"tokens": [...]};
    # add_special=True is how it tokenizes a text prompt itself.
    "llama.cpp": ("/tokenize", lambda model, text: {
        "content": text, "add_special": True, "parse_special": True}),
    # llama-cpp-python: POST /extras/tokenize {input} -> {"tokens": [...]}; it tokenizes with
    # add_bos and special=True, as its /v1/completions does a text prompt.
    "llama-cpp-python": ("/extras/tokenize", lambda model, text: {"model": model, "input": text}),
    # vLLM / SGLang have POST /tokenize too, but report no ids in their logprobs, so their
    # responses continue as text and no tokenize call is made (tokenize_request).
}
"""Server family -> (path under the server root, request body) of its tokenizer endpoint."""

_PROMPT_IDS_CACHE = 256  # prompt texts whose ids a provider remembers


def tokenize_request(profile: ProviderProfile, base_url: str, model: str, text: str) -> tuple[str, dict[str, Any]] | None:
    """(absolute URL, JSON body) of the server's tokenize call for `text`, or None when the
    endpoint cannot take id prompts or its family has no known tokenizer endpoint (pure)."""
    if not wire.takes_id_prompts(profile) or not (profile.family == "llama.cpp" or profile.exact_logprobs):
        return None  # no id prompts, or no ids in the logprobs to continue with (vLLM, ...)
    if profile.family not in TOKENIZE_ENDPOINTS:
        return None
    path, body = TOKENIZE_ENDPOINTS[profile.family]
    parts = urlsplit(str(base_url))  # the query (it may hold a key) is not the server's root
    root = parts.path.rstrip("/")
    if root.endswith("/v1"):
        root = root[: -len("/v1")]
    return urlunsplit((parts.scheme, parts.netloc, root + path, "", "")), body(model, text)


def _tokens_from(reply: Any, url: str) -> tuple[int, ...]:
    tokens = reply.get("tokens") if isinstance(reply, dict) else None
    if not isinstance(tokens, list) or not all(isinstance(t, int) for t in tokens):
        raise ProviderError(
            f"the tokenizer endpoint {redact_url(url)} answered without a list of token ids ({str(reply)[:200]}); "
            "pass a profile with token_id_prompts=False to continue responses as text."
        )
    return tuple(tokens)


def _tokenize_failed(url: str, exc: Exception) -> ProviderError:
    # The SDK's exception class is kept (`sdk_error`): `except openai.APIConnectionError` still
    # matches a server that is down, as it would without VAS.
    message = (
        f"the server's tokenizer endpoint {redact_url(url)} failed ({type(exc).__name__}: "
        f"{redact_urls_in(str(exc))}); token-id continuation needs it. Pass a profile with "
        "token_id_prompts=False to continue as text."
    )
    return sdk_error(exc, message)


def _tokenize_flow(url: str, body: dict[str, Any]) -> wire.Flow:
    """The server's tokenize call as a flow, so it goes through the drivers like every other
    call (one retry layer, keys masked, the SDK's exception classes); a refusal says how to
    continue as text instead."""
    try:
        return (yield wire.Call("http", {"method": "post", "url": url, "body": body}))
    except openai.APIStatusError as exc:  # a plain ProviderError: not a missing *model*
        raise ProviderError(_tokenize_failed(url, exc).args[0]) from exc


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
        self._prompt_ids: dict[str, tuple[int, ...]] = {}  # prompt text -> the server's ids
        self._gguf = str(chat_template) if isinstance(chat_template, str) and chat_template.endswith(".gguf") else None
        self._candidates_extra: dict[str, Any] | None = None

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

    # -- token ids ------------------------------------------------------------------------
    def continues_with_ids(self, prompt: Prompt, base_url: str) -> bool:
        """True when partial responses after `prompt` go out as token ids."""
        if isinstance(prompt, str):
            ok = self.profile.continuation == "completions" or self.profile.completions
        else:
            ok = self.profile.continuation == "completions"
        return ok and tokenize_request(self.profile, base_url, self.model, "") is not None

    def tokenize_call(self, prefix: Prefix, base_url: str) -> tuple[str, dict[str, Any]] | None:
        """The tokenize call still needed before `prefix` can be sent as ids (None: not needed,
        because the ids are cached or the prefix goes as text)."""
        if prefix.response_ids is None or not self.continues_with_ids(prefix.prompt, base_url):
            return None
        text = self.prompt_text(prefix.prompt)
        if text in self._prompt_ids:
            return None
        return tokenize_request(self.profile, base_url, self.model, text)

    def remember_ids(self, prefix: Prefix, url: str, reply: Any) -> None:
        if len(self._prompt_ids) >= _PROMPT_IDS_CACHE:
            self._prompt_ids.pop(next(iter(self._prompt_ids)))
        self._prompt_ids[self.prompt_text(prefix.prompt)] = _tokens_from(reply, url)

    def target(self, prefix: Prefix) -> wire.Target:
        if not isinstance(prefix, Prefix):
            raise ConfigError(f"expected a vas_api.Prefix, got {type(prefix).__name__}.")
        ids = None
        if prefix.response_ids is not None:
            ids = self._prompt_ids.get(self.prompt_text(prefix.prompt))
        return wire.prefix_target(self.profile, prefix, self.prompt_text, prompt_ids=ids)

    def mid_character_ids(self) -> frozenset[int]:
        """On llama.cpp's server: ids of the tokens that end mid-character (it reports no
        position for a sampled one), from the GGUF; empty elsewhere or without the GGUF."""
        if self.profile.family != "llama.cpp" or self._gguf is None:
            return frozenset()
        from .llama_vocab import incomplete_token_ids

        return incomplete_token_ids(self._gguf)

    def candidates_extra(self) -> dict[str, Any]:
        """Extra body of candidates calls: on llama.cpp's server, a logit_bias against the tokens
        that end mid-character (it reports no position for a sampled one; the bias steers only
        its sampler, see `vas_api.providers.llama_vocab`), when the GGUF is known."""
        if self._candidates_extra is None:
            self._candidates_extra = {}
            # An anchored call (profile.anchor_token_id) forces a whole token already.
            ids = self.mid_character_ids() if self.profile.anchor_token_id is None else ()
            if ids:
                self._candidates_extra = {"logit_bias": {str(i): -100 for i in sorted(ids)}}
        return self._candidates_extra

    def candidates(self, prefix: Prefix, k: int) -> wire.Flow:
        wire.check_k(self.profile, k)
        return self.call_options.flow(wire.candidates_flow(
            self.profile, self.model, self.target(prefix), k=k, special_tokens=self.special_tokens,
            extra_body=self.candidates_extra(),
        ))

    def draft(self, prefix: Prefix, m: int, k: int, restrict_top_k: bool) -> wire.Flow:
        wire.check_k(self.profile, k)
        return self.call_options.flow(wire.draft_flow(
            self.profile, self.model, self.target(prefix), m=m, k=k,
            restrict_top_k=restrict_top_k, special_tokens=self.special_tokens,
            exclude=self.mid_character_ids() if restrict_top_k else (),
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

    def continues_with_ids(self, prompt: Prompt) -> bool:
        """True when partial responses after `prompt` are sent as token ids (prompt ids from
        the server's tokenizer, then `Prefix.response_ids`); False: as text."""
        return self._core.continues_with_ids(prompt, str(self.client.base_url))

    def _ensure_ids(self, prefix: Prefix) -> None:
        call = self._core.tokenize_call(prefix, str(self.client.base_url))
        if call is None:
            return
        url, body = call
        reply = wire.drive_sync(self.client, _tokenize_flow(url, body), model=self.model)
        self._core.remember_ids(prefix, url, reply)

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
        self._ensure_ids(prefix)
        return wire.drive_sync(self.client, self._core.candidates(prefix, k), model=self.model)

    def draft(self, prefix: Prefix, *, m: int, k: int, restrict_top_k: bool = False) -> Draft:
        """One call drafting up to m tokens at temperature 1 with every server-side sampler
        neutral (top_k=k when `restrict_top_k`), with top-k candidates and the sampled token's
        own logprob at each position.

        Raises:
            as `candidates`; CapabilityError also when restrict_top_k is asked of an endpoint
            without a top_k parameter.
        """
        self._ensure_ids(prefix)
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

    def continues_with_ids(self, prompt: Prompt) -> bool:
        """See `OpenAICompatProvider.continues_with_ids`."""
        return self._core.continues_with_ids(prompt, str(self.client.base_url))

    async def _ensure_ids(self, prefix: Prefix) -> None:
        call = self._core.tokenize_call(prefix, str(self.client.base_url))
        if call is None:
            return
        url, body = call
        reply = await wire.drive_async(self.client, _tokenize_flow(url, body), model=self.model)
        self._core.remember_ids(prefix, url, reply)

    async def candidates(self, prefix: Prefix, *, k: int) -> Draft:
        """See `OpenAICompatProvider.candidates`."""
        await self._ensure_ids(prefix)
        return await wire.drive_async(
            self.client, self._core.candidates(prefix, k), model=self.model
        )

    async def draft(
        self, prefix: Prefix, *, m: int, k: int, restrict_top_k: bool = False
    ) -> Draft:
        """See `OpenAICompatProvider.draft`."""
        await self._ensure_ids(prefix)
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
