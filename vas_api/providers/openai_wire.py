"""The sans-IO core of the OpenAI-compatible adapter: requests, responses, errors, flows.

Everything that decides *what* to send and *what a reply means* lives here as pure functions and
generator "flows". A flow yields `Call`s and receives each call's reply (or has the SDK's
exception thrown into it); `drive_sync` / `drive_async` are the only code that touches a client,
so the sync and async providers share every decision and tests can run a flow without a network.

Transport retries happen in ONE layer: the openai SDK's own ``max_retries`` (exponential backoff,
Retry-After honoured). Nothing here retries a failed HTTP request. The only repeated calls are
semantic: a candidates call whose sampled token was an unreported end-of-sequence (see
`candidates_flow`), which is a new question, not a retry of a failed one.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Generator, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import openai

from ..errors import (
    CapabilityError,
    ConfigError,
    ModelNotFoundError,
    NoLogprobsError,
    ProviderConnectionError,
    ProviderError,
)
from ..logprobs import parse_logprobs
from ..types import Candidate, Completion, Draft, Position, Prefix, ProviderProfile, Samples, Usage

__all__ = [
    "Call",
    "Flow",
    "Target",
    "neutral_sampler_params",
    "prefix_target",
    "takes_id_prompts",
    "candidates_flow",
    "draft_flow",
    "sample_flow",
    "usage_from",
    "draft_from_response",
    "check_k",
    "translate_error",
    "drive_sync",
    "drive_async",
]

log = logging.getLogger(__name__)

CallKind = Literal["completions", "chat", "models"]

EOS_RETRIES = 2
"""Extra candidates calls when the server sampled an end-of-sequence token and, like
llama-cpp-python without min_tokens, did not report that position."""

HIDDEN_RETRIES = 8
"""Extra candidates calls when the server generated a token but reported no position for it
(llama.cpp's server hides a token that ends mid-character)."""


@dataclass(frozen=True)
class Call:
    """One SDK call: ``client.completions.create(**kwargs)``, ``client.chat.completions.create``
    or ``client.models.list()`` (kwargs empty)."""

    kind: CallKind
    kwargs: dict[str, Any] = field(default_factory=dict)


Flow = Generator[Call, Any, Any]
"""A generator that yields Calls, receives replies, and returns its result."""


@dataclass(frozen=True)
class Target:
    """How a prefix is sent: raw text (or token ids) to /v1/completions, or messages to chat.

    `ids`, when set, is what goes out as the completions ``prompt`` (a list of token ids:
    llama.cpp's server, the exact local server, vLLM and OpenAI legacy completions take it);
    `prompt` is then the same prefix as text, for messages and logs only.
    """

    kind: Literal["completions", "chat"]
    prompt: str = ""
    messages: tuple[dict[str, Any], ...] = ()
    extra_body: dict[str, Any] = field(default_factory=dict)
    ids: tuple[int, ...] | None = None

    @property
    def continuation(self) -> str:
        """"token_ids" or "text": how this target sends the response so far."""
        return "token_ids" if self.ids is not None else "text"


# -- sampler settings ----------------------------------------------------------------------

# Server-side samplers that are not OpenAI parameters, set to the value that turns each off.
# llama-cpp-python defaults: top_k 40, top_p 0.95, min_p 0.05, repeat_penalty 1.1, temp 0.8.
# In llama.cpp top_k <= 0 disables the top-k sampler (llama_sampler_top_k: "if k <= 0 return"),
# min_p 0 and typical_p 1 are no-ops, the penalties sampler returns early when repeat 1,
# frequency 0 and presence 0; mirostat 0 keeps the plain dist sampler. llama-server (C++) names
# some of them differently (mirostat, repeat_last_n, xtc_*, dry_*), so those are sent too:
# llama-cpp-python ignores fields it does not know.
_NEUTRAL_EXTRA: dict[str, dict[str, Any]] = {
    "llama.cpp": {
        "top_k": 0,
        "min_p": 0.0,
        "typical_p": 1.0,
        "repeat_penalty": 1.0,
        "mirostat_mode": 0,
        "mirostat": 0,
        "tfs_z": 1.0,
        "xtc_probability": 0.0,
        "dry_multiplier": 0.0,
        "top_n_sigma": -1.0,
        "dynatemp_range": 0.0,
    },
    # vLLM / SGLang: top_k -1 (or 0 in newer versions) disables it; -1 is accepted by both.
    "vllm": {"top_k": -1, "min_p": 0.0, "repetition_penalty": 1.0},
    "openai": {},
}


def neutral_sampler_params(
    profile: ProviderProfile, *, temperature: float = 1.0, top_k: int | None = None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Request parameters that sample from the model's own distribution (scaled by temperature).

    Args:
        profile: the endpoint; ``profile.extra["sampler_dialect"]`` picks the extra parameters
            ("llama.cpp", "vllm" or "openai"; unknown servers get only the OpenAI ones).
        temperature: sampling temperature (1.0 = the base distribution).
        top_k: restrict sampling to the top k tokens (only where ``profile.top_k_param``).

    Returns:
        (standard kwargs for the SDK call, extra_body dict).
    """
    standard: dict[str, Any] = {
        "temperature": temperature,
        "top_p": 1.0,
        "presence_penalty": 0.0,
        "frequency_penalty": 0.0,
    }
    dialect = str(profile.extra.get("sampler_dialect", "openai"))
    extra = dict(_NEUTRAL_EXTRA.get(dialect, {}))
    if top_k is not None:
        extra["top_k"] = top_k
    return standard, extra


# -- validation and targets ----------------------------------------------------------------


def check_k(profile: ProviderProfile, k: int) -> None:
    """Raise unless 1 <= k <= the endpoint's maximum.

    Raises:
        ConfigError: k is not a positive integer.
        CapabilityError: k is above ``profile.max_top_k`` (the message names the maximum).
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ConfigError(f"k must be a positive integer, got {k!r}.")
    if profile.logprob_shape == "none":
        raise NoLogprobsError(
            f"{profile.name} returns no logprobs, so candidates and drafts are impossible.",
            workable_modes=profile.modes(),
        )
    if profile.max_top_k is not None and k > profile.max_top_k:
        raise CapabilityError(
            f"k={k} is more than {profile.name} returns: its maximum top-k is "
            f"{profile.max_top_k}. Use k <= {profile.max_top_k}."
        )


def _check_messages(messages: Sequence[Any]) -> list[dict[str, Any]]:
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or "role" not in m:
            raise ConfigError(
                f"chat message {i} must be a dict with 'role' and 'content', got {m!r}."
            )
        out.append(dict(m))
    return out


def check_prompt(prompt: Any) -> None:
    """Raise ConfigError for an empty or malformed prompt (a str or a list of message dicts)."""
    if isinstance(prompt, str):
        if not prompt:
            raise ConfigError("the prompt is empty: pass a non-empty string or chat messages.")
        return
    if not isinstance(prompt, list | tuple) or not prompt:
        raise ConfigError(
            "the prompt must be a non-empty string or a non-empty list of chat messages "
            f"({{'role': ..., 'content': ...}}), got {prompt!r}."
        )
    _check_messages(prompt)


def takes_id_prompts(profile: ProviderProfile) -> bool:
    """Whether /v1/completions of this endpoint takes the prompt as a list of token ids: the
    profile says so, or it is vas-api's exact llama-cpp-python server (`vas_api._llama_server`
    accepts id prompts; the stock llama-cpp-python server does not)."""
    return bool(profile.token_id_prompts or profile.extra.get("exact_logprobs"))


def prefix_target(
    profile: ProviderProfile,
    prefix: Prefix,
    render: Callable[[Any], str],
    prompt_ids: Sequence[int] | None = None,
) -> Target:
    """Decide how `prefix` is sent to this endpoint.

    Token ids go out (prompt ids + `prefix.response_ids`) when the profile says the endpoint
    takes id prompts, the prompt's ids are known and the response's ids are; otherwise text,
    which the server re-tokenizes (DESIGN.md section 7).

    Args:
        profile: the endpoint (its ``continuation`` and ``token_id_prompts`` decide).
        prefix: the prompt and the response so far.
        render: the provider's ``prompt_text`` (renders chat with the chat template).
        prompt_ids: the server's token ids of ``render(prefix.prompt)``, when known.

    Raises:
        ConfigError: the prompt is empty or malformed.
        CapabilityError: the endpoint cannot continue a partial response.
    """
    check_prompt(prefix.prompt)
    prompt, response, cont = prefix.prompt, prefix.response, profile.continuation
    has_completions = cont == "completions" or bool(profile.extra.get("completions"))
    if (
        has_completions
        and (isinstance(prompt, str) or cont == "completions")
        and takes_id_prompts(profile)
        and prompt_ids is not None
        and prefix.response_ids is not None
    ):
        text = prompt if isinstance(prompt, str) else render(prompt)
        ids = tuple(int(i) for i in prompt_ids) + tuple(int(i) for i in prefix.response_ids)
        return Target("completions", prompt=text + response, ids=ids)
    if isinstance(prompt, str) and has_completions:
        return Target("completions", prompt=prompt + response)
    if cont == "completions":
        return Target("completions", prompt=render(prompt) + response)
    messages = (
        _check_messages(prompt)
        if not isinstance(prompt, str)
        else [{"role": "user", "content": prompt}]
    )
    if not response:
        return Target("chat", messages=tuple(messages))
    if cont == "chat_continue":
        return Target(
            "chat",
            messages=(*messages, {"role": "assistant", "content": response}),
            extra_body={"continue_final_message": True, "add_generation_prompt": False},
        )
    if cont == "prefix":
        return Target(
            "chat", messages=(*messages, {"role": "assistant", "content": response, "prefix": True})
        )
    raise CapabilityError(
        f"{profile.name} cannot continue a partial response (continuation={cont!r}).",
        workable_modes=profile.modes(),
    )


def _call(
    profile: ProviderProfile,
    model: str,
    target: Target,
    *,
    max_tokens: int,
    logprobs_k: int | None,
    temperature: float = 1.0,
    top_k: int | None = None,
    n: int = 1,
    stop: Sequence[str] | None = None,
    seed: int | None = None,
    extra: dict[str, Any] | None = None,
) -> Call:
    standard, extra_body = neutral_sampler_params(profile, temperature=temperature, top_k=top_k)
    extra_body.update(target.extra_body)
    extra_body.update(extra or {})
    kwargs: dict[str, Any] = {"model": model, **standard}
    if n != 1:
        kwargs["n"] = n
    if stop:
        kwargs["stop"] = list(stop)
    if seed is not None:
        kwargs["seed"] = seed
    if target.kind == "completions":
        prompt = list(target.ids) if target.ids is not None else target.prompt
        kwargs.update(prompt=prompt, max_tokens=max_tokens)
        if logprobs_k is not None:
            kwargs["logprobs"] = logprobs_k
    else:
        kwargs["messages"] = [dict(m) for m in target.messages]
        kwargs[str(profile.extra.get("max_tokens_param", "max_tokens"))] = max_tokens
        if logprobs_k is not None:
            kwargs.update(logprobs=True, top_logprobs=logprobs_k)
    if extra_body:
        kwargs["extra_body"] = extra_body
    return Call(target.kind, kwargs)


# -- responses -------------------------------------------------------------------------------


def usage_from(response: Any) -> Usage:
    """Usage of one SDK response (prompt, cached, completion tokens; calls=1)."""
    usage = getattr(response, "usage", None)
    if usage is None:
        return Usage(calls=1)
    details = getattr(usage, "prompt_tokens_details", None)
    cached = getattr(details, "cached_tokens", None) if details is not None else None
    return Usage(
        prompt_tokens=int(getattr(usage, "prompt_tokens", 0) or 0),
        completion_tokens=int(getattr(usage, "completion_tokens", 0) or 0),
        cached_tokens=int(cached or 0),
        calls=1,
    )


def _first_choice(response: Any) -> Any:
    choices = getattr(response, "choices", None) or []
    if not choices:
        raise ProviderError("the provider answered with no choices; check the server's logs.")
    return choices[0]


def _choice_text(choice: Any) -> str:
    text = getattr(choice, "text", None)
    if text is None:
        message = getattr(choice, "message", None)
        text = getattr(message, "content", None) if message is not None else None
    return text or ""


def draft_from_response(
    response: Any, *, k: int, m: int, special_tokens: Iterable[str]
) -> Draft:
    """Parse one logprob response into a Draft of at most m positions with top-k candidates.

    Raises:
        NoLogprobsError: tokens were generated but the response carries no logprobs.
    """
    choice = _first_choice(response)
    usage = usage_from(response)
    finish = getattr(choice, "finish_reason", None)
    logprobs = getattr(choice, "logprobs", None)
    if logprobs is None:
        if usage.completion_tokens == 0 and finish == "stop":
            return Draft([], finish, usage)  # stopped at once; nothing to report
        raise NoLogprobsError(
            "the provider returned no logprobs, so token and speculative modes cannot run. "
            "Check that the endpoint supports logprobs (reasoning models refuse them)."
        )
    positions = parse_logprobs(
        logprobs, k=k, text=_choice_text(choice), finish_reason=finish,
        special_tokens=special_tokens,
    )
    # llama-cpp-python keeps generating past max_tokens until a multi-byte character is whole;
    # the extra positions are cut so a draft never holds more than m.
    if len(positions) > m:
        positions, finish = positions[:m], "length"
    return Draft(positions, finish, usage)


# -- flows -------------------------------------------------------------------------------------


def candidates_flow(
    profile: ProviderProfile,
    model: str,
    target: Target,
    *,
    k: int,
    special_tokens: Iterable[str],
    extra_body: dict[str, Any] | None = None,
) -> Flow:
    """One max_tokens=1 call returning the top-k next-token candidates as a 1-position Draft.

    llama.cpp's server reports no entry when the token it sampled ends mid-character (it waits
    for the character to complete). The candidates do not depend on which token is sampled, so
    such a call is asked again with a new seed (up to HIDDEN_RETRIES times); `extra_body` can
    carry a ``logit_bias`` against those tokens, which steers only the server's sampler, not the
    reported logprobs (checked on llama-server), so one call suffices.

    llama-cpp-python drops the position when it samples an end-of-sequence token, which would
    lose the whole top-k list exactly where the response should end. Where the profile says so
    (``extra["min_tokens_for_eos"]``) the call sends ``min_tokens=1``: that masks EOS in the
    *sampler* only, while the reported logprobs come from the raw logits, so EOS still appears
    among the candidates with its real logprob (verified against the server). Elsewhere, or for
    another end-of-generation token, the call is asked again with a new seed; when every try
    ends at once the only honest answer is a Position holding just the end-of-sequence token.
    """
    specials = list(special_tokens)
    extra: dict[str, Any] = dict(extra_body or {})
    if profile.extra.get("min_tokens_for_eos"):
        extra["min_tokens"] = 1
    usage = Usage()
    attempt = eos_tries = hidden_tries = 0
    while eos_tries <= EOS_RETRIES:
        seed = None if attempt == 0 else 1_000_003 * attempt
        attempt += 1
        call = _call(profile, model, target, max_tokens=1, logprobs_k=k, seed=seed, extra=extra)
        response = yield call
        try:
            draft = draft_from_response(response, k=k, m=1, special_tokens=specials)
        except NoLogprobsError:
            if usage_from(response).completion_tokens == 0 or hidden_tries >= HIDDEN_RETRIES:
                raise
            draft = Draft([], "length", usage_from(response))
        usage = usage + draft.usage
        if draft.positions:
            return Draft(draft.positions[:1], draft.finish_reason, usage)
        if draft.finish_reason == "stop":
            eos_tries += 1
            continue
        if draft.usage.completion_tokens > 0 and hidden_tries < HIDDEN_RETRIES:
            hidden_tries += 1  # a token was generated but not reported (see above)
            continue
        raise ProviderError(
            "the provider generated no token and did not say it stopped "
            f"(finish_reason={draft.finish_reason!r}); is the prompt longer than the "
            "model's context?"
        )
    log.warning(
        "every candidates call ended at once with an unreported end-of-sequence token; "
        "returning end-of-sequence as the only candidate"
    )
    eos = Candidate(b"", 0.0, special=True)
    return Draft([Position((eos,), eos)], "stop", usage)


def draft_flow(
    profile: ProviderProfile,
    model: str,
    target: Target,
    *,
    m: int,
    k: int,
    restrict_top_k: bool,
    special_tokens: Iterable[str],
    exclude: Iterable[int] = (),
) -> Flow:
    """One call drafting m tokens at temperature 1 with every sampler neutral (top_k=k when
    `restrict_top_k`), parsed into up to m Positions. `exclude`: token ids the draft may not
    sample (sent as a logit_bias, only with restrict_top_k; the Draft says which)."""
    if isinstance(m, bool) or not isinstance(m, int) or m < 1:
        raise ConfigError(f"m must be a positive integer, got {m!r}.")
    if restrict_top_k and not profile.top_k_param:
        raise CapabilityError(
            f"{profile.name} takes no top_k sampling parameter, so drafts cannot be restricted "
            "to the top k; call draft(..., restrict_top_k=False)."
        )
    excluded = frozenset(int(i) for i in exclude) if restrict_top_k else frozenset()
    extra = {"logit_bias": {str(i): -100 for i in sorted(excluded)}} if excluded else None
    call = _call(
        profile, model, target, max_tokens=m, logprobs_k=k, top_k=k if restrict_top_k else None,
        extra=extra,
    )
    response = yield call
    draft = draft_from_response(response, k=k, m=m, special_tokens=list(special_tokens))
    draft.excluded = excluded
    return draft


def sample_flow(
    profile: ProviderProfile,
    model: str,
    target: Target,
    *,
    n: int,
    max_tokens: int,
    temperature: float,
    stop: Sequence[str] | None,
    seed: int | None,
) -> Flow:
    """n plain completions with neutral samplers: one call with n= where the endpoint accepts
    it (``profile.n_param``), otherwise n calls (seeds seed, seed+1, ... when a seed is given)."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigError(f"n must be a positive integer, got {n!r}.")
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise ConfigError(f"max_tokens must be a positive integer, got {max_tokens!r}.")
    if not temperature >= 0:
        raise ConfigError(f"temperature must be >= 0, got {temperature!r}.")
    per_call = [n] if profile.n_param else [1] * n
    completions: list[Completion] = []
    usage = Usage()
    for i, count in enumerate(per_call):
        call = _call(
            profile, model, target, max_tokens=max_tokens, logprobs_k=None,
            temperature=temperature, n=count, stop=stop,
            seed=None if seed is None else seed + i,
        )
        response = yield call
        usage = usage + usage_from(response)
        for choice in getattr(response, "choices", None) or []:
            completions.append(
                Completion(_choice_text(choice), getattr(choice, "finish_reason", None))
            )
    return Samples(completions, usage)


# -- errors and drivers -------------------------------------------------------------------------


def _status_message(exc: openai.APIStatusError) -> str:
    body = exc.body
    if isinstance(body, dict):
        detail = body.get("message") or body.get("detail") or body.get("error") or body
        if isinstance(detail, dict):
            detail = detail.get("message", detail)
        return str(detail)
    return str(exc)


def translate_error(
    exc: openai.OpenAIError, *, base_url: str, model: str, available: list[str] | None = None
) -> Exception:
    """The VAS error for an SDK error, with what to do about it (pure; no calls).

    Args:
        exc: the SDK's exception (after the SDK's own retries).
        base_url: the client's base URL, for the message.
        model: the model that was asked for.
        available: model ids the server lists, when known (for ModelNotFoundError).
    """
    if isinstance(exc, openai.APIConnectionError):
        return ProviderConnectionError(
            f"could not reach the provider at {base_url} ({type(exc).__name__}: {exc}). Is the "
            "server running? Start the local one with `vas local-server`, or check base_url."
        )
    if isinstance(exc, openai.AuthenticationError):
        return ProviderError(
            f"the provider at {base_url} refused the API key (401): check api_key / "
            "OPENAI_API_KEY."
        )
    if isinstance(exc, openai.NotFoundError):
        message = _status_message(exc)
        if available is not None and model not in available:
            return ModelNotFoundError(
                f"the server at {base_url} has no model {model!r} ({message}).",
                available=available,
            )
        return ProviderError(
            f"the provider at {base_url} answered 404 for model {model!r}: {message}. Check "
            "base_url (it usually ends in /v1) and the model name."
        )
    if isinstance(exc, openai.APIStatusError):
        return ProviderError(
            f"the provider at {base_url} rejected the request ({exc.status_code}): "
            f"{_status_message(exc)}"
        )
    return ProviderError(f"the provider call failed: {exc}")


def _base_url(client: Any) -> str:
    return str(getattr(client, "base_url", "?"))


def _execute_sync(client: openai.OpenAI, call: Call) -> Any:
    if call.kind == "completions":
        return client.completions.create(**call.kwargs)
    if call.kind == "chat":
        return client.chat.completions.create(**call.kwargs)
    return list(client.models.list().data)


async def _execute_async(client: openai.AsyncOpenAI, call: Call) -> Any:
    if call.kind == "completions":
        return await client.completions.create(**call.kwargs)
    if call.kind == "chat":
        return await client.chat.completions.create(**call.kwargs)
    return list((await client.models.list()).data)


def drive_sync(client: openai.OpenAI, flow: Flow, *, model: str) -> Any:
    """Run `flow` against a sync client; SDK errors the flow does not handle become VAS errors.

    Raises:
        ProviderConnectionError, ModelNotFoundError, ProviderError: see `translate_error`.
    """
    reply: Any = None
    error: Exception | None = None
    while True:
        try:
            call = flow.throw(error) if error is not None else flow.send(reply)
        except StopIteration as stop:
            return stop.value
        except openai.OpenAIError as exc:
            available = _list_models_sync(client) if isinstance(exc, openai.NotFoundError) else None
            raise translate_error(
                exc, base_url=_base_url(client), model=model, available=available
            ) from exc
        try:
            reply, error = _execute_sync(client, call), None
        except openai.OpenAIError as exc:
            reply, error = None, exc


async def drive_async(client: openai.AsyncOpenAI, flow: Flow, *, model: str) -> Any:
    """The asyncio twin of `drive_sync` (same flow, awaited calls)."""
    reply: Any = None
    error: Exception | None = None
    while True:
        try:
            call = flow.throw(error) if error is not None else flow.send(reply)
        except StopIteration as stop:
            return stop.value
        except openai.OpenAIError as exc:
            available = (
                await _list_models_async(client) if isinstance(exc, openai.NotFoundError) else None
            )
            raise translate_error(
                exc, base_url=_base_url(client), model=model, available=available
            ) from exc
        try:
            reply, error = await _execute_async(client, call), None
        except openai.OpenAIError as exc:
            reply, error = None, exc


def _list_models_sync(client: openai.OpenAI) -> list[str] | None:
    try:
        return [m.id for m in client.models.list().data]
    except openai.OpenAIError:
        return None


async def _list_models_async(client: openai.AsyncOpenAI) -> list[str] | None:
    try:
        return [m.id for m in (await client.models.list()).data]
    except openai.OpenAIError:
        return None
