"""Capability profiles of OpenAI-compatible endpoints: known ones, probing, and a cache.

A profile says what an endpoint can do (max top-k, logprob shape, how to continue a partial
response, whether top_k and n>1 are accepted). Known hosted endpoints get a static profile with
no calls; anything else is probed with as few calls as possible:

1. ``GET /models``: checks that the model exists and tells the server family by ``owned_by``
   ("me" is llama-cpp-python, "vllm", "sglang", "llamacpp" is llama-server);
2. one /v1/completions call (4 tokens, logprobs=64, n=2, top_k=1): the number of entries per
   position gives the top-k cap (a server that clamps returns fewer; one that refuses says its
   maximum in the error, and the call is repeated once with it), the number of choices says
   whether n>1 works, and "every sampled token is the argmax" says whether top_k is honoured;
3. only when /v1/completions is missing: one chat call with logprobs instead.

Keys this module puts in ``ProviderProfile.extra`` (read by `vas_api.providers.openai_wire`):
``sampler_dialect`` ("llama.cpp", "vllm", "openai": which neutral-sampler parameters to send),
``min_tokens_for_eos`` (send min_tokens=1 on candidates calls), ``completions`` (string prompts
may use /v1/completions even when chat is used for messages), ``max_tokens_param``
("max_completion_tokens" for OpenAI), ``family``, ``special_tokens`` (control-token strings) and
``exact_logprobs`` (the local server's lossless reporter).

Probed profiles are cached in memory and in ``~/.cache/vas-api/profiles.json`` (or
``$VAS_API_CACHE_DIR``), keyed by base URL (credentials and query stripped) + model. API keys are
never stored.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import openai

from .errors import ModelNotFoundError, ProviderError
from .logprobs import parse_logprobs
from .providers.openai_wire import Call, Flow, drive_async, drive_sync
from .types import ProviderProfile

__all__ = [
    "OPENAI_CHAT",
    "OPENAI_COMPLETIONS",
    "VLLM",
    "LLAMA_CPP_PYTHON",
    "MISTRAL",
    "static_profile",
    "probe_profile",
    "aprobe_profile",
    "probe_flow",
    "cached_profile",
    "store_profile",
    "cache_key",
    "cache_path",
    "clear_memory_cache",
]

OPENAI_CHAT = ProviderProfile(
    name="OpenAI chat",
    max_top_k=20,
    logprob_shape="chat",
    continuation="none",
    top_k_param=False,
    n_param=True,
    extra={"sampler_dialect": "openai", "max_tokens_param": "max_completion_tokens"},
)
"""Hosted chat models: up to 20 top logprobs, a trailing assistant message starts a new turn."""

OPENAI_COMPLETIONS = ProviderProfile(
    name="OpenAI legacy completions",
    max_top_k=5,
    logprob_shape="legacy",
    continuation="completions",
    top_k_param=False,
    n_param=True,
    extra={"sampler_dialect": "openai"},
)
"""gpt-3.5-turbo-instruct, davinci-002, babbage-002: raw prompts, at most 5 logprobs."""

VLLM = ProviderProfile(
    name="vLLM",
    max_top_k=20,
    logprob_shape="chat",
    continuation="chat_continue",
    top_k_param=True,
    n_param=True,
    extra={"sampler_dialect": "vllm", "completions": True, "family": "vllm"},
)
"""vLLM (and SGLang) defaults: max_logprobs 20; strings go to /v1/completions, chat messages to
chat with continue_final_message=true, add_generation_prompt=false."""

LLAMA_CPP_PYTHON = ProviderProfile(
    name="llama-cpp-python server",
    max_top_k=None,
    logprob_shape="legacy",
    continuation="completions",
    top_k_param=True,
    n_param=False,
    extra={
        "sampler_dialect": "llama.cpp",
        "min_tokens_for_eos": True,
        "family": "llama-cpp-python",
    },
)
"""llama-cpp-python's server: no cap on k (it returned 48,776 entries for k = 49,152), n is
silently ignored (one choice), top_k honoured, chat is rendered by the client."""

MISTRAL = ProviderProfile(
    name="Mistral chat",
    max_top_k=None,
    logprob_shape="none",
    continuation="prefix",
    top_k_param=False,
    n_param=False,
    extra={"sampler_dialect": "openai", "family": "mistral"},
)
"""api.mistral.ai: no logprobs; a final assistant message with prefix=true is continued (block
mode). n is left off (one call per sample) until a probe shows it is honoured."""

_OPENAI_LEGACY_MODELS = re.compile(r"(instruct|davinci|babbage|curie|ada)", re.IGNORECASE)
_PROBE_K = 64


def static_profile(base_url: str, model: str) -> ProviderProfile | None:
    """The known profile for a hosted endpoint, or None when it must be probed."""
    host = urlsplit(str(base_url)).hostname or ""
    if host == "api.openai.com" or host.endswith(".openai.azure.com"):
        return OPENAI_COMPLETIONS if _OPENAI_LEGACY_MODELS.search(model) else OPENAI_CHAT
    if host == "api.mistral.ai":  # a chat probe cannot see prefix continuation
        return MISTRAL
    return None


# -- cache -------------------------------------------------------------------------------------

_MEMORY: dict[str, ProviderProfile] = {}


def cache_path() -> Path:
    """Where probed profiles are stored: profiles.json in `vas_api.paths.cache_dir()`."""
    from .paths import cache_dir

    return cache_dir() / "profiles.json"


def cache_key(base_url: str, model: str) -> str:
    """``base_url|model`` with user:password, query and fragment removed (they may hold keys)."""
    parts = urlsplit(str(base_url))
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    clean = urlunsplit((parts.scheme, host, parts.path.rstrip("/"), "", ""))
    return f"{clean}|{model}"


def clear_memory_cache() -> None:
    """Forget profiles cached in memory (the disk cache stays)."""
    _MEMORY.clear()


def _read_disk() -> dict[str, Any]:
    try:
        data = json.loads(cache_path().read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def cached_profile(base_url: str, model: str) -> ProviderProfile | None:
    """A profile probed earlier for this endpoint and model (memory first, then disk)."""
    key = cache_key(base_url, model)
    if key in _MEMORY:
        return _MEMORY[key]
    entry = _read_disk().get(key)
    if not isinstance(entry, dict):
        return None
    try:
        profile = ProviderProfile(**entry)
    except TypeError:  # written by another version of vas-api
        return None
    _MEMORY[key] = profile
    return profile


def store_profile(base_url: str, model: str, profile: ProviderProfile) -> None:
    """Cache `profile` in memory and on disk (best effort: a read-only home is not an error)."""
    key = cache_key(base_url, model)
    _MEMORY[key] = profile
    path = cache_path()
    data = _read_disk()
    data[key] = asdict(profile)
    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True)
        # Write then rename, so a crash or a concurrent reader never sees half a file.
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".profiles.", suffix=".json")
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh, indent=1, sort_keys=True)
        os.replace(tmp, path)


# -- probing -----------------------------------------------------------------------------------

_FAMILIES = {
    "me": "llama-cpp-python",
    "llamacpp": "llama.cpp",
    "vllm": "vllm",
    "sglang": "sglang",
}

_CAP_PATTERNS = [
    re.compile(r"max(?:imum)?(?: allowed)?[^0-9]{0,40}?(\d+)", re.IGNORECASE),
    re.compile(r"(?:<=|less than or equal to|at most|no more than|up to)\s*(\d+)", re.IGNORECASE),
    re.compile(r"between\s*\d+\s*and\s*(\d+)", re.IGNORECASE),
]


def _cap_from_message(message: str) -> int | None:
    for pattern in _CAP_PATTERNS:
        found = pattern.search(message)
        if found:
            value = int(found.group(1))
            if 0 < value < _PROBE_K:
                return value
    return None


def _error_text(exc: openai.APIStatusError) -> str:
    return f"{exc.body!r} {exc}"


def probe_flow(model: str, base_url: str) -> Flow:
    """The probe as a sans-IO flow (see the module docstring); returns a ProviderProfile.

    Raises:
        ModelNotFoundError: /models lists models and `model` is not among them.
        ProviderError: neither /v1/completions nor chat answered usefully.
    """
    static = static_profile(base_url, model)
    if static is not None:
        return static
    family = None
    try:
        models = yield Call("models")
    except openai.APIStatusError:
        models = []  # some servers have no /models; the calls below still tell a wrong model
    ids = [str(getattr(m, "id", "")) for m in models]
    if ids and model not in ids:
        raise ModelNotFoundError(
            f"the server at {base_url} does not serve {model!r} (llama-cpp-python would answer "
            "with its own model anyway, which is why this is checked).",
            available=ids,
        )
    for m in models:
        if str(getattr(m, "id", "")) == model:
            family = _FAMILIES.get(str(getattr(m, "owned_by", "")).lower())

    profile = yield from _probe_completions(model, family)
    if profile is None:
        profile = yield from _probe_chat(model, family, base_url)
    return profile


def _family_extra(family: str | None) -> dict[str, Any]:
    if family == "llama-cpp-python":
        return dict(LLAMA_CPP_PYTHON.extra)
    if family == "llama.cpp":
        return {"sampler_dialect": "llama.cpp", "family": family}
    if family in ("vllm", "sglang"):
        return {"sampler_dialect": "vllm", "completions": True, "family": family}
    return {"sampler_dialect": "openai", "family": family or "unknown"}


def _probe_completions(model: str, family: str | None) -> Flow:
    extra = _family_extra(family)
    extra_body: dict[str, Any] = {}
    if extra["sampler_dialect"] == "llama.cpp":
        extra_body.update(min_p=0.0, repeat_penalty=1.0, typical_p=1.0)
    elif extra["sampler_dialect"] == "vllm":
        extra_body.update(min_p=0.0, repetition_penalty=1.0)
    extra_body["top_k"] = 1
    kwargs: dict[str, Any] = {
        "model": model, "prompt": "Once upon a time", "max_tokens": 4, "logprobs": _PROBE_K,
        "n": 2, "temperature": 1.0, "top_p": 1.0, "extra_body": extra_body,
    }
    cap: int | None = None
    top_k_refused = False
    response = None
    for _ in range(3):
        try:
            response = yield Call("completions", kwargs)
            break
        except (openai.BadRequestError, openai.UnprocessableEntityError) as exc:
            text = _error_text(exc)
            if "top_k" in text and not top_k_refused:
                top_k_refused = True
                extra_body.pop("top_k", None)
                continue
            found = _cap_from_message(text) if "logprob" in text.lower() else None
            if found is not None and cap is None:
                cap = found
                kwargs["logprobs"] = cap
                continue
            if "chat" in text.lower():  # "This is a chat model ... use v1/chat/completions"
                return None
            raise
        except openai.NotFoundError:
            return None
    if response is None:
        return None
    choices = list(getattr(response, "choices", None) or [])
    lengths, argmax_hits, argmax_seen = [], 0, 0
    for choice in choices:
        lp = getattr(choice, "logprobs", None)
        tops = list(getattr(lp, "top_logprobs", None) or []) if lp is not None else []
        lengths += [len(t) for t in tops if t]
        for pos in parse_logprobs(lp, text=getattr(choice, "text", None)):
            if pos.sampled is None or not pos.candidates:
                continue
            argmax_seen += 1
            argmax_hits += pos.sampled.raw == pos.candidates[0].raw
    if not lengths:
        shape, max_k = "none", None
    else:
        shape = "legacy"
        if cap is not None:
            max_k = cap
        elif max(lengths) >= _PROBE_K - 8:  # collisions on "" can cost a few entries
            max_k = None
        else:
            max_k = min(lengths)
    top_k_param = not top_k_refused and argmax_seen >= 3 and argmax_hits == argmax_seen
    continuation = "chat_continue" if family in ("vllm", "sglang") else "completions"
    names = {
        "llama-cpp-python": LLAMA_CPP_PYTHON.name, "llama.cpp": "llama.cpp server",
        "vllm": "vLLM", "sglang": "SGLang",
    }
    return ProviderProfile(
        name=names.get(family or "", "OpenAI-compatible completions"),
        max_top_k=max_k,
        logprob_shape="chat" if continuation == "chat_continue" and shape != "none" else shape,
        continuation=continuation,
        top_k_param=top_k_param,
        n_param=len(choices) >= 2,
        extra=extra,
    )


def _probe_chat(model: str, family: str | None, base_url: str) -> Flow:
    extra = _family_extra(family)
    kwargs: dict[str, Any] = {
        "model": model, "messages": [{"role": "user", "content": "Say hi"}], "max_tokens": 2,
        "logprobs": True, "top_logprobs": 20, "n": 2,
    }
    response = None
    for _ in range(3):
        try:
            response = yield Call("chat", kwargs)
            break
        except (openai.BadRequestError, openai.UnprocessableEntityError) as exc:
            text = _error_text(exc)
            found = _cap_from_message(text)
            if "top_logprobs" in text and found is not None:
                kwargs["top_logprobs"] = found
                continue
            if "logprobs" in text:
                kwargs.pop("logprobs", None)
                kwargs.pop("top_logprobs", None)
                continue
            if "'n'" in text or " n " in text:
                kwargs.pop("n", None)
                continue
            raise
    if response is None:
        raise ProviderError(f"could not probe {base_url}: neither completions nor chat answered.")
    choices = list(getattr(response, "choices", None) or [])
    content = []
    for choice in choices:
        lp = getattr(choice, "logprobs", None)
        content += list(getattr(lp, "content", None) or []) if lp is not None else []
    lengths = [len(getattr(c, "top_logprobs", None) or []) for c in content]
    shape = "chat" if "logprobs" in kwargs and lengths else "none"
    continuation = "chat_continue" if family in ("vllm", "sglang") else "none"
    if "deepseek" in base_url:
        continuation = "prefix"
    return ProviderProfile(
        name=f"{family or 'OpenAI-compatible'} chat",
        max_top_k=kwargs.get("top_logprobs") if shape == "chat" else None,
        logprob_shape=shape,
        continuation=continuation,
        top_k_param=family in ("vllm", "sglang", "llama.cpp", "llama-cpp-python"),
        n_param=len(choices) >= 2,
        extra=extra,
    )


def _resolve_cached(base_url: str, model: str, refresh: bool) -> ProviderProfile | None:
    static = static_profile(base_url, model)
    if static is not None:
        return static
    return None if refresh else cached_profile(base_url, model)


def probe_profile(
    client: openai.OpenAI, model: str, *, refresh: bool = False, cache: bool = True
) -> ProviderProfile:
    """What the endpoint behind `client` can do for `model` (static, cached, or probed).

    Args:
        client: an ``openai.OpenAI`` client (its base_url decides the cache key).
        model: the model name to check and probe.
        refresh: ignore cached profiles and probe again.
        cache: store a probed profile in memory and on disk.

    Returns:
        The profile.

    Raises:
        ModelNotFoundError: the server lists models and `model` is not one of them.
        ProviderConnectionError: the server cannot be reached.
        ProviderError: the server answered nothing usable.
    """
    base_url = str(client.base_url)
    found = _resolve_cached(base_url, model, refresh)
    if found is not None:
        return found
    profile = drive_sync(client, probe_flow(model, base_url), model=model)
    if cache:
        store_profile(base_url, model, profile)
    return profile


async def aprobe_profile(
    client: openai.AsyncOpenAI, model: str, *, refresh: bool = False, cache: bool = True
) -> ProviderProfile:
    """The asyncio twin of `probe_profile` (same flow, same cache)."""
    base_url = str(client.base_url)
    found = _resolve_cached(base_url, model, refresh)
    if found is not None:
        return found
    profile = await drive_async(client, probe_flow(model, base_url), model=model)
    if cache:
        store_profile(base_url, model, profile)
    return profile


def with_extra(profile: ProviderProfile, **extra: Any) -> ProviderProfile:
    """A copy of `profile` with `extra` entries added (e.g. special_tokens)."""
    return replace(profile, extra={**profile.extra, **extra})
