"""Capability profiles of OpenAI-compatible endpoints: known ones, probing, and a cache.

A profile says what an endpoint can do (max top-k, logprob shape, how to continue a partial
response, whether top_k and n>1 are accepted, token-id prompts, tokenizer endpoints). Known
hosted endpoints get a static profile with no calls; anything else is probed with few calls:

1. ``GET /models``: checks that the model exists and tells the server family by ``owned_by``
   (the table in `vas_api.families`: "me" is llama-cpp-python, "llamacpp" llama-server, ...);
2. for llama.cpp's server (or an unknown one): ``GET /props`` (its ``eos_token``), then
   ``POST /tokenize`` of that token (its id, and that /tokenize works), ``POST /detokenize`` and
   ``POST /apply-template`` (that they work), and ``POST /tokenize`` of "." (the anchor token
   of candidates calls, see `ProviderProfile.anchor_token_id`);
3. one /v1/completions call (8 tokens, logprobs=64, n=2, top_k=1, the prompt sent as token ids
   where the server can tokenize): the entries per position give the top-k cap (a server that
   clamps returns fewer; one that refuses says its maximum in the error, and the call is
   repeated with it), the number of choices says whether n>1 works, the logprobs may come in
   either shape (llama-server answers /v1/completions with the chat shape's ``content`` list),
   and the sampled tokens feed the top_k check (`top_k_evidence`; up to 3 more calls on other
   high-entropy prompts until it can decide);
4. only when /v1/completions is missing: one chat call with logprobs instead.

Probed profiles are cached in memory and in ``~/.cache/vas-api/profiles.json`` (or
``$VAS_API_CACHE_DIR``), keyed by base URL (credentials and query stripped) + model, with the
profile schema version: an entry of another version (or one that does not load) is probed
again, never an error. API keys are never stored.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import openai

from .errors import ModelNotFoundError, ProviderError
from .families import FAMILIES, ServerFamily, family_from_owned_by
from .logprobs import parse_logprobs
from .providers.openai_wire import Call, Flow, drive_async, drive_sync, neutral_sampler_params
from .types import PROFILE_SCHEMA, Position, ProviderProfile

__all__ = [
    "OPENAI_CHAT",
    "OPENAI_COMPLETIONS",
    "VLLM",
    "LLAMA_CPP_PYTHON",
    "LLAMA_SERVER",
    "TOP_K_ALPHA",
    "MISTRAL",
    "static_profile",
    "probe_profile",
    "aprobe_profile",
    "probe_flow",
    "top_k_evidence",
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
    family="openai",
    max_tokens_param="max_completion_tokens",
)
"""Hosted chat models: up to 20 top logprobs, a trailing assistant message starts a new turn."""

OPENAI_COMPLETIONS = ProviderProfile(
    name="OpenAI legacy completions",
    max_top_k=5,
    logprob_shape="legacy",
    continuation="completions",
    top_k_param=False,
    n_param=True,
    family="openai",
    token_id_prompts=True,
)
"""gpt-3.5-turbo-instruct, davinci-002, babbage-002: raw prompts (text or token ids), at most 5
logprobs."""

VLLM = ProviderProfile(
    name="vLLM",
    max_top_k=20,
    logprob_shape="chat",
    continuation="chat_continue",
    top_k_param=True,
    n_param=True,
    family="vllm",
    completions=True,
    token_id_prompts=True,
    tokenize=True,
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
    family="llama-cpp-python",
    completions=True,
    min_tokens_for_eos=True,
    token_id_prompts=False,
)
"""llama-cpp-python's server: no cap on k (it returned 48,776 entries for k = 49,152), n is
silently ignored (one choice), top_k honoured, chat is rendered by the client."""

LLAMA_SERVER = ProviderProfile(
    name="llama.cpp server",
    max_top_k=None,
    logprob_shape="chat",
    continuation="completions",
    top_k_param=True,
    n_param=True,
    family="llama.cpp",
    completions=True,
    token_id_prompts=True,
    tokenize=True,
    apply_template=True,
)
"""llama.cpp's llama-server: /v1/completions answers in the chat logprob shape (``content``
with id, token, bytes, logprob, top_logprobs), takes token-id prompts, has /tokenize,
/detokenize and /apply-template; n up to its slot count (``-np``)."""

MISTRAL = ProviderProfile(
    name="Mistral chat",
    max_top_k=None,
    logprob_shape="none",
    continuation="prefix",
    top_k_param=False,
    n_param=False,
    family="openai",  # OpenAI-style request fields; no server-side sampler extras
)
"""api.mistral.ai: no logprobs; a final assistant message with prefix=true is continued (block
mode). n is left off (one call per sample) until a probe shows it is honoured."""

_OPENAI_LEGACY_MODELS = re.compile(r"(instruct|davinci|babbage|curie|ada)", re.IGNORECASE)
_PROBE_K = 64

TOP_K_ALPHA = 1e-3
"""The top_k check says "honoured" only when a server that ignored top_k=1 would have sampled
the argmax at every checked position with probability below this (its false-alarm rate)."""

_TOP_K_PROMPTS = (
    "Here is a list of random words, one per line:\n",
    "My favourite names for a cat are",
    "Twenty random numbers between 1 and 1000:",
    "Some things you might find in a kitchen drawer:",
)


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
    if not isinstance(entry, dict) or entry.get("schema") != PROFILE_SCHEMA:
        return None  # absent, or written by another version of vas-api: probe again
    try:
        profile = ProviderProfile(**{k: v for k, v in entry.items() if k != "schema"})
    except (TypeError, ValueError):
        return None
    _MEMORY[key] = profile
    return profile


def store_profile(base_url: str, model: str, profile: ProviderProfile) -> None:
    """Cache `profile` in memory and on disk (best effort: a read-only home is not an error)."""
    key = cache_key(base_url, model)
    _MEMORY[key] = profile
    path = cache_path()
    data = _read_disk()
    data[key] = {"schema": PROFILE_SCHEMA, **asdict(profile)}
    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True)
        # Write then rename, so a crash or a concurrent reader never sees half a file.
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".profiles.", suffix=".json")
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh, indent=1, sort_keys=True)
        os.replace(tmp, path)


# -- probing -----------------------------------------------------------------------------------

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


def _root_url(base_url: str) -> str:
    url = str(base_url).rstrip("/")
    return url[: -len("/v1")] if url.endswith("/v1") else url


def top_k_evidence(drafts: Iterable[Sequence[Position]]) -> tuple[bool | None, float]:
    """Decide from top_k=1 drafts whether the server honoured top_k.

    With top_k=1 honoured, every sampled token is the argmax of the reported distribution. A
    server that ignores top_k samples the argmax at a position only with the argmax's
    probability, so the chance that it sampled the argmax at every checked position is the
    product P0 of those probabilities (the positions' conditional probabilities multiply along
    the path, and separate choices are independent). The verdict is "honoured" only when
    P0 < `TOP_K_ALPHA`: the check's false-alarm rate (calling an ignoring server honouring) is
    at most 1e-3, and an honouring server passes once enough high-entropy positions were seen
    (a peaky model whose argmax has probability 0.99 needs about 690 positions; at the 0.3-0.6
    seen on open-ended prompts, 8 to 14 positions). One sampled token below the argmax proves
    top_k was ignored.

    Args:
        drafts: the positions of each top_k=1 draft (sampled token and reported candidates).

    Returns:
        (True: honoured, False: ignored, None: undecided, sample more), and P0.
    """
    log_p0 = 0.0
    for positions in drafts:
        for pos in positions:
            if pos.sampled is None or not pos.candidates or math.isinf(pos.sampled.logprob):
                continue  # nothing usable at this position: it adds no evidence
            if pos.sampled.logprob < pos.candidates[0].logprob - 1e-4:
                return False, math.exp(log_p0)
            log_p0 += pos.sampled.logprob
    p0 = math.exp(log_p0)
    return (True if p0 < TOP_K_ALPHA else None), p0


def probe_flow(model: str, base_url: str) -> Flow:
    """The probe as a sans-IO flow (see the module docstring); returns a ProviderProfile.

    Raises:
        ModelNotFoundError: /models lists models and `model` is not among them.
        ProviderError: neither /v1/completions nor chat answered usefully.
    """
    static = static_profile(base_url, model)
    if static is not None:
        return static
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
    fam = None
    for m in models:
        if str(getattr(m, "id", "")) == model:
            fam = family_from_owned_by(str(getattr(m, "owned_by", "")))
    tools: dict[str, Any] = {}
    if fam is None or fam.has_props:
        tools = yield from _probe_llama_endpoints(_root_url(base_url))
        if tools:
            fam = FAMILIES["llama.cpp"]
    fam = fam or FAMILIES["unknown"]
    profile = yield from _probe_completions(model, fam, tools)
    if profile is None:
        profile = yield from _probe_chat(model, fam, base_url)
    return profile


def _http(method: str, url: str, body: dict[str, Any] | None = None) -> Flow:
    """One plain HTTP call through the client; None when the server refused it."""
    try:
        reply = yield Call("http", {"method": method, "url": url, "body": body})
    except (openai.APIStatusError, openai.APIConnectionError):
        return None
    return reply


def _probe_llama_endpoints(root: str) -> Flow:
    """llama.cpp's own endpoints: {} when /props is not llama.cpp's, else what works."""
    props = yield from _http("get", f"{root}/props")
    if not isinstance(props, dict) or "default_generation_settings" not in props:
        return {}
    found: dict[str, Any] = {"eos_ids": (), "tokenize": False, "apply_template": False}
    eos = str(props.get("eos_token") or "")
    tok = yield from _http("post", f"{root}/tokenize", {"content": eos, "parse_special": True})
    tokens = tok.get("tokens") if isinstance(tok, dict) else None
    if isinstance(tokens, list) and all(isinstance(t, int) for t in tokens):
        detok = yield from _http("post", f"{root}/detokenize", {"tokens": tokens})
        found["tokenize"] = isinstance(detok, dict) and detok.get("content") == eos
        if eos and len(tokens) == 1:
            found["eos_ids"] = (int(tokens[0]),)
    found["eos_token"] = eos
    anchor = yield from _tokenize(root, ".")
    if anchor is not None and len(anchor) == 1:
        found["anchor"] = int(anchor[0])
    tmpl = yield from _http(
        "post", f"{root}/apply-template", {"messages": [{"role": "user", "content": "Hi"}]}
    )
    found["apply_template"] = isinstance(tmpl, dict) and isinstance(tmpl.get("prompt"), str)
    found["root"] = root
    return found


def _tokenize(root: str, text: str) -> Flow:
    reply = yield from _http("post", f"{root}/tokenize", {"content": text, "add_special": False})
    tokens = reply.get("tokens") if isinstance(reply, dict) else None
    ok = isinstance(tokens, list) and bool(tokens) and all(isinstance(t, int) for t in tokens)
    return tokens if ok else None


def _probe_completions(model: str, fam: ServerFamily, tools: dict[str, Any]) -> Flow:
    probe_profile = ProviderProfile(
        name=fam.name, max_top_k=None, logprob_shape="legacy", continuation="completions",
        family=fam.key,
    )
    standard, extra_body = neutral_sampler_params(probe_profile, top_k=1)
    prompt: str | list[int] = _TOP_K_PROMPTS[0]
    sent_ids = False
    if tools.get("tokenize"):
        ids = yield from _tokenize(tools["root"], _TOP_K_PROMPTS[0])
        if ids is not None:
            prompt, sent_ids = ids, True
    kwargs: dict[str, Any] = {
        "model": model, "prompt": prompt, "max_tokens": 8, "logprobs": _PROBE_K, "n": 2,
        **standard, "extra_body": extra_body,
    }
    cap: int | None = None
    top_k_refused = False
    response = None
    for _ in range(5):
        try:
            response = yield Call("completions", kwargs)
            break
        except (openai.BadRequestError, openai.UnprocessableEntityError) as exc:
            text = _error_text(exc)
            low = text.lower()
            if sent_ids and isinstance(kwargs["prompt"], list) and "prompt" in low:
                kwargs["prompt"], sent_ids = _TOP_K_PROMPTS[0], False
                continue
            if "top_k" in text and not top_k_refused:
                top_k_refused = True
                extra_body.pop("top_k", None)
                continue
            if ("n_cmpl" in low or "'n'" in low or " n " in low) and "n" in kwargs:
                kwargs.pop("n")
                continue
            found = _cap_from_message(text) if "logprob" in low else None
            if found is not None and cap is None:
                cap = found
                kwargs["logprobs"] = cap
                continue
            if "chat" in low:  # "This is a chat model ... use v1/chat/completions"
                return None
            raise
        except openai.NotFoundError:
            return None
    if response is None:
        return None
    choices = list(getattr(response, "choices", None) or [])
    shape, lengths, drafts = _read_choices(choices)
    if shape == "none":
        max_k = None
    elif cap is not None:
        max_k = cap
    elif max(lengths) >= _PROBE_K - 8:  # collisions on "" can cost a few entries
        max_k = None
    else:
        max_k = min(lengths)
    top_k_ok: bool | None = False
    if not top_k_refused and shape != "none":
        top_k_ok = yield from _top_k_check(kwargs, drafts)
    continuation = "chat_continue" if fam.chat_continue else "completions"
    name = fam.name if fam.key != "unknown" else "OpenAI-compatible completions"
    return ProviderProfile(
        name=name,
        max_top_k=max_k,
        logprob_shape="chat" if continuation == "chat_continue" and shape != "none" else shape,
        continuation=continuation,
        top_k_param=bool(top_k_ok),
        n_param=len(choices) >= 2,
        family=fam.key,
        completions=True,
        min_tokens_for_eos=fam.min_tokens_for_eos,
        special_tokens=(tools["eos_token"],) if tools.get("eos_token") else (),
        eos_token_ids=tuple(tools.get("eos_ids", ())),
        token_id_prompts=sent_ids or (fam.token_id_prompts and not tools),
        tokenize=bool(tools.get("tokenize")) if tools else fam.tokenize,
        apply_template=bool(tools.get("apply_template")) if tools else fam.apply_template,
        neutral_sampling=fam.neutral_exact,
        anchor_token_id=tools.get("anchor") if fam.anchor_candidates else None,
    )


def _read_choices(choices: Sequence[Any]) -> tuple[str, list[int], list[list[Position]]]:
    """(logprob shape, entries per position, parsed positions per choice) of a response."""
    shape, lengths, drafts = "none", [], []
    for choice in choices:
        lp = getattr(choice, "logprobs", None)
        if lp is None:
            continue
        content = getattr(lp, "content", None)
        if content is None and getattr(lp, "model_extra", None):
            content = lp.model_extra.get("content")
        if content:
            shape = "chat"
            lengths += [len(_get(c, "top_logprobs") or []) for c in content]
        else:
            tops = list(getattr(lp, "top_logprobs", None) or [])
            if tops:
                shape = "legacy"
            lengths += [len(t) for t in tops if t]
        drafts.append(parse_logprobs(lp, text=getattr(choice, "text", None)))
    if not lengths:
        shape = "none"
    return shape, lengths, drafts


def _get(obj: Any, name: str) -> Any:
    return obj.get(name) if isinstance(obj, dict) else getattr(obj, name, None)


def _top_k_check(kwargs: dict[str, Any], drafts: list[list[Position]]) -> Flow:
    """`top_k_evidence` over the first call's drafts, then up to 3 more top_k=1 calls on other
    high-entropy prompts (sent as text) while it is undecided; undecided at the end is False."""
    verdict, _ = top_k_evidence(drafts)
    for prompt in _TOP_K_PROMPTS[1:]:
        if verdict is not None:
            break
        more = {**kwargs, "prompt": prompt, "max_tokens": 16}
        try:
            response = yield Call("completions", more)
        except (openai.BadRequestError, openai.UnprocessableEntityError):
            break
        drafts = drafts + _read_choices(list(getattr(response, "choices", None) or []))[2]
        verdict, _ = top_k_evidence(drafts)
    return bool(verdict)


def _probe_chat(model: str, fam: ServerFamily, base_url: str) -> Flow:
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
    continuation = "chat_continue" if fam.chat_continue else "none"
    if "deepseek" in base_url:
        continuation = "prefix"
    return ProviderProfile(
        name=f"{fam.name if fam.key != 'unknown' else 'OpenAI-compatible'} chat",
        max_top_k=kwargs.get("top_logprobs") if shape == "chat" else None,
        logprob_shape=shape,
        continuation=continuation,
        top_k_param=fam.top_k_param,
        n_param=len(choices) >= 2,
        family=fam.key,
        completions=False,
        min_tokens_for_eos=fam.min_tokens_for_eos,
        token_id_prompts=False,
        tokenize=fam.tokenize,
        apply_template=fam.apply_template,
        neutral_sampling=fam.neutral_exact,
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
