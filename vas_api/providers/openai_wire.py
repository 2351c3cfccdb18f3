"""The sans-IO core of the OpenAI-compatible adapter: requests, responses, errors, flows.

Everything that decides *what* to send and *what a reply means* lives here as pure functions and
generator "flows". A flow yields `Call`s and receives each call's reply (or has the SDK's
exception thrown into it); `drive_sync` / `drive_async` are the only code that touches a client,
so the sync and async providers share every decision and tests can run a flow without a network.

Retries happen in ONE layer, vas-api's own (`vas_api.retry`): every call is sent with the SDK's
``max_retries`` set to 0, and the drivers retry transport failures (429, 5xx, connection reset,
timeout, a truncated or malformed 200 body) with openai-python's backoff, as many times as the
SDK client's ``max_retries`` says. A degraded answer (a 200 body without logprobs) is re-asked
by the flow itself (`_logprob_reply`); the driver waits the same backoff before such a re-ask
and stops them at the same count. Fewer candidates than asked and a draft shorter than asked
are used as they are (counted in the report). Every attempt the server billed is added to the
usage. The other
repeated calls are semantic: a candidates call whose sampled token was an unreported
end-of-sequence (see `candidates_flow`), which is a new question, not a retry of a failed one.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import weakref
from collections.abc import Callable, Generator, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import openai

from .. import retry as _retry
from ..errors import (
    CapabilityError,
    ConfigError,
    MalformedResponseError,
    ModelNotFoundError,
    NoLogprobsError,
    ProviderConnectionError,
    ProviderError,
    VASError,
    sdk_error,
)
from ..families import family
from ..logprobs import parse_logprobs
from ..redact import client_secrets, install_log_redaction, redact_text, redact_url, redact_urls_in
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
install_log_redaction()  # httpx logs full request URLs, credentials included

CallKind = Literal["completions", "chat", "models", "http"]

EOS_RETRIES = 2
"""Extra candidates calls when the server sampled an end-of-sequence token and, like
llama-cpp-python without min_tokens, did not report that position."""

HIDDEN_RETRIES = 8
"""Extra candidates calls when the server generated a token but reported no position for it
(llama.cpp's server hides a token that ends mid-character)."""


class _RetriesExhausted(Exception):
    """Thrown into a flow by a driver when a re-ask would pass the retry count."""


@dataclass(frozen=True)
class Call:
    """One SDK call: ``client.completions.create(**kwargs)``, ``client.chat.completions.create``,
    ``client.models.list()`` (kwargs empty), or "http": a plain JSON request through the client
    (kwargs ``method`` "get"/"post", absolute ``url``, ``body``) for a server's own endpoints
    (llama.cpp's /props, /tokenize); its reply is the decoded JSON.

    Attributes:
        retry: 0 for a first ask; n when a flow asks the same call again for the n-th time
            after a degraded answer (the driver waits the retry backoff first).
        reason: why it is asked again ("no logprobs").
    """

    kind: CallKind
    kwargs: dict[str, Any] = field(default_factory=dict)
    retry: int = 0
    reason: str = ""


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

def neutral_sampler_params(
    profile: ProviderProfile, *, temperature: float = 1.0, top_k: int | None = None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Request parameters that sample from the model's own distribution (scaled by temperature).

    Args:
        profile: the endpoint; its ``family`` picks the neutral values of that server's whole
            sampler chain from `vas_api.families.FAMILIES` (unknown servers get only the
            OpenAI parameters).
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
    fam = family(profile.family)
    extra = {k: list(v) if isinstance(v, list) else v for k, v in fam.neutral.items()}
    if top_k is not None:
        extra["top_k"] = top_k
        if "samplers" in extra:  # llama.cpp: a sampler left out of the chain is not applied
            extra["samplers"] = ["top_k", *extra["samplers"]]
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
    return bool(profile.token_id_prompts or profile.exact_logprobs)


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
    has_completions = cont == "completions" or profile.completions
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
        kwargs[profile.max_tokens_param] = max_tokens
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
    response: Any,
    *,
    k: int,
    m: int,
    special_tokens: Iterable[str],
    eos_token_ids: Iterable[int] = (),
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
        if not _choice_text(choice).strip("\ufffd"):
            # llama-server: every token it generated was part of one unfinished character, and
            # it reports no entry for those (see vas_api.logprobs); nothing usable, not an error.
            return Draft([], "length", usage)
        raise NoLogprobsError(
            "the provider's answer carried no logprobs although they were asked for, so this "
            "token or draft cannot be sampled. An endpoint that returned them before may be "
            "overloaded or behind a proxy that drops them: retry later. A model that never "
            "returns them (reasoning models refuse logprobs unless reasoning is off) needs "
            "mode='rerank'.",
            workable_modes=["rerank"],
        )
    positions = parse_logprobs(
        logprobs, k=k, text=_choice_text(choice), finish_reason=finish,
        special_tokens=special_tokens, eos_token_ids=eos_token_ids,
    )
    # llama-server's merged entries (a whole character over unreported tokens, see
    # vas_api.logprobs) parse as positions with nothing known: the draft ends before the first.
    for i, pos in enumerate(positions):
        if not pos.candidates and pos.sampled is None:
            positions, finish = positions[:i], "length"
            break
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

    llama.cpp's server (family "llama.cpp") reports no entry when the token it sampled ends
    mid-character (it waits for the character to complete); elsewhere an answer without
    logprobs is a degraded one, re-asked through the retry layer (`_logprob_reply`). The candidates do not depend on which token is sampled, so
    such a call is asked again with a new seed (up to HIDDEN_RETRIES times); `extra_body` can
    carry a ``logit_bias`` against those tokens, which steers only the server's sampler, not the
    reported logprobs (checked on llama-server), so one call suffices.

    llama-cpp-python drops the position when it samples an end-of-sequence token, which would
    lose the whole top-k list exactly where the response should end. Where the profile says so
    (``profile.min_tokens_for_eos``) the call sends ``min_tokens=1``: that masks EOS in the
    *sampler* only, while the reported logprobs come from the raw logits, so EOS still appears
    among the candidates with its real logprob (verified against the server). Elsewhere, or for
    another end-of-generation token, the call is asked again with a new seed; when every try
    ends at once the only honest answer is a Position holding just the end-of-sequence token.
    Where the profile has an ``anchor_token_id`` (llama-server) the call forces that whole
    token with logit_bias, so the server reports the position even where the model would have
    sampled a byte fragment or end-of-sequence; the candidates are the raw distribution and the
    returned Position has no sampled token.
    """
    specials = list(special_tokens)
    extra: dict[str, Any] = dict(extra_body or {})
    if profile.min_tokens_for_eos:
        extra["min_tokens"] = 1
    anchored = profile.anchor_token_id is not None
    if anchored:  # the forced token is not a sample: the position reports no sampled token
        extra["logit_bias"] = {**extra.get("logit_bias", {}), str(profile.anchor_token_id): 100.0}

    def parse(r: Any) -> Draft:
        return draft_from_response(
            r, k=k, m=1, special_tokens=specials, eos_token_ids=profile.eos_token_ids
        )

    usage = Usage()
    attempt = eos_tries = hidden_tries = 0
    while eos_tries <= EOS_RETRIES:
        seed = None if attempt == 0 else 1_000_003 * attempt
        attempt += 1
        call = _call(profile, model, target, max_tokens=1, logprobs_k=k, seed=seed, extra=extra)
        response = yield call
        try:
            draft = parse(response)
        except NoLogprobsError:
            hidden = profile.family == "llama.cpp" and usage_from(response).completion_tokens > 0
            if hidden and hidden_tries < HIDDEN_RETRIES:
                draft = Draft([], "length", usage_from(response))  # a hidden token, see above
            else:  # a degraded answer: re-asked through the retry layer
                draft = yield from _logprob_reply(call, parse, first=response)
        usage = usage + draft.usage
        if draft.positions:
            first = draft.positions[0]
            if anchored:
                first = Position(first.candidates, None)
            return Draft([first], draft.finish_reason, usage)
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
    specials = list(special_tokens)
    draft = yield from _logprob_reply(
        call, lambda r: draft_from_response(
            r, k=k, m=m, special_tokens=specials, eos_token_ids=profile.eos_token_ids
        ),
    )
    draft.excluded = excluded
    return draft


def _logprob_reply(
    call: Call, parse: Callable[[Any], Draft], *, first: Any = None
) -> Generator[Call, Any, Draft]:
    """Ask `call` and parse its answer, re-asking a degraded one (a sub-flow: ``yield from``).

    A 200 answer without logprobs is a fault (the endpoint's profile says it gives them): it
    is asked again (the driver waits the backoff, and stops the re-asks at the client's retry
    count), then NoLogprobsError with the billed ``usage`` and ``attempts`` attached. Fewer
    than k candidates at a position is *not* re-asked: servers do that legitimately (OpenAI
    drops the -9999 sentinels; duplicates are merged), VAS samples over the candidates that
    were reported, and the run counts the short positions (`VASReport.short_positions`).

    `first`, when given, is an answer to `call` already received (it is parsed before any ask).

    Returns:
        The parsed Draft; its usage includes every re-asked answer (they were billed).
    """
    wasted = Usage()
    retry = 0
    failure: NoLogprobsError | None = None
    while True:
        try:
            if first is not None:
                response, first = first, None
            else:
                response = yield call if retry == 0 else replace(call, retry=retry, reason="no logprobs")
        except _RetriesExhausted:
            if failure is None:  # only thrown after a re-ask; anything else is a driver bug
                raise
            failure.usage, failure.attempts = wasted, retry
            raise failure from None
        try:
            draft = parse(response)
        except NoLogprobsError as exc:
            wasted = wasted + usage_from(response)
            failure, retry = exc, retry + 1
            continue
        draft.usage = draft.usage + wasted
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

_MALFORMED = (json.JSONDecodeError, UnicodeDecodeError)
"""What the SDK lets through from a 200 body that is not JSON (it does not wrap these)."""
_CALL_ERRORS = (openai.OpenAIError, *_MALFORMED)


def _status_message(exc: openai.APIStatusError) -> str:
    """The server's own words, without a trailing full stop (the caller adds its own)."""
    body = exc.body
    if isinstance(body, dict):
        detail = body.get("message") or body.get("detail") or body.get("error") or body
        if isinstance(detail, dict):
            detail = detail.get("message", detail)
        return str(detail).rstrip(". ")
    return str(exc).rstrip(". ")


def translate_error(
    exc: BaseException,
    *,
    base_url: str,
    model: str,
    available: list[str] | None = None,
    usage: Usage | None = None,
    attempts: int = 1,
) -> Exception:
    """The error a caller sees for an SDK error, with what to do about it (pure; no calls).

    The result is an instance of the SDK's own class *and* of a VAS class (see
    `vas_api.errors.sdk_error`): ``except openai.RateLimitError`` and ``except
    vas_api.ProviderError`` both catch it, and ``status_code``, ``response``, ``body`` stay.
    A truncated or malformed 200 body (a raw ``json.JSONDecodeError`` from the SDK) becomes a
    `MalformedResponseError` that is still a ``json.JSONDecodeError``. Errors that are already
    vas-api's pass through with `usage` and `attempts` set. The base URL is printed with
    credentials and query values masked.

    Args:
        exc: the SDK's exception (after the retries).
        base_url: the client's base URL, for the message.
        model: the model that was asked for.
        available: model ids the server lists, when known (for ModelNotFoundError).
        usage: tokens billed by the failed call's attempts.
        attempts: how many times the call was tried.
    """
    url = redact_url(base_url)
    tries = f" after {attempts} attempts" if attempts > 1 else ""
    attrs: dict[str, Any] = {"usage": usage if usage is not None else Usage(), "attempts": attempts}
    if isinstance(exc, VASError):
        for name, value in attrs.items():
            setattr(exc, name, value)
        return exc
    if isinstance(exc, _MALFORMED):
        return sdk_error(
            exc,
            f"the provider at {url} answered with a body that is not valid JSON{tries} "
            f"({type(exc).__name__}: {exc}); a proxy or an overloaded server may cut answers "
            "short. Retry later, or raise max_retries on the client.",
            base=MalformedResponseError, **attrs,
        )
    if isinstance(exc, openai.APITimeoutError):
        return sdk_error(
            exc,
            f"the provider at {url} did not answer within the client's timeout{tries}. Raise "
            "timeout= on the client, or check the server's load.",
            base=ProviderConnectionError, **attrs,
        )
    if isinstance(exc, openai.APIConnectionError):
        return sdk_error(
            exc,
            f"could not reach the provider at {url}{tries} ({type(exc).__name__}: {exc}). Is "
            "the server running? Start the local one with `vas local-server`, or check base_url.",
            base=ProviderConnectionError, **attrs,
        )
    if isinstance(exc, openai.AuthenticationError):
        return sdk_error(
            exc,
            f"the provider at {url} refused the API key (401): check api_key / OPENAI_API_KEY.",
            **attrs,
        )
    if isinstance(exc, openai.NotFoundError):
        message = _status_message(exc)
        if available is not None and model not in available:
            listed = f" Models this server has: {', '.join(available)}." if available else ""
            return sdk_error(
                exc, f"the server at {url} has no model {model!r} ({message}).{listed}",
                base=ModelNotFoundError, available=list(available), **attrs,
            )
        return sdk_error(
            exc,
            f"the provider at {url} answered 404 for model {model!r}: {message}. Check "
            "base_url (it usually ends in /v1) and the model name.",
            **attrs,
        )
    if isinstance(exc, openai.RateLimitError):
        return sdk_error(
            exc,
            f"the provider at {url} is rate-limiting requests (429){tries}: "
            f"{_status_message(exc)}. Wait and retry, lower the concurrency, or raise "
            "max_retries on the client.",
            **attrs,
        )
    if isinstance(exc, openai.APIStatusError):
        hint = (
            " The server failed: retry later or check its logs."
            if exc.status_code >= 500 else " Change the request as the message says."
        )
        return sdk_error(
            exc,
            f"the provider at {url} rejected the request ({exc.status_code}){tries}: "
            f"{_status_message(exc)}.{hint}",
            **attrs,
        )
    if isinstance(exc, openai.OpenAIError):
        return sdk_error(exc, f"the provider call to {url} failed{tries}: {exc}", **attrs)
    return ProviderError(f"the provider call to {url} failed{tries}: {type(exc).__name__}: {exc}")


def _base_url(client: Any) -> str:
    return str(getattr(client, "base_url", "?"))


_NO_SDK_RETRIES: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()


def _without_sdk_retries(client: Any) -> Any:
    """The same client with the SDK's own retries off (ours are the only layer); cached."""
    if getattr(client, "max_retries", 0) == 0 or not hasattr(client, "with_options"):
        return client
    try:
        found = _NO_SDK_RETRIES.get(client)
        if found is None:
            found = _NO_SDK_RETRIES[client] = client.with_options(max_retries=0)
        return found
    except TypeError:  # not weak-referenceable
        return client.with_options(max_retries=0)


def _execute_sync(client: openai.OpenAI, call: Call) -> Any:
    if call.kind == "http":
        kw = call.kwargs
        if kw["method"] == "get":
            return client.get(kw["url"], cast_to=object)
        return client.post(kw["url"], body=kw.get("body"), cast_to=object)
    if call.kind == "completions":
        return client.completions.create(**call.kwargs)
    if call.kind == "chat":
        return client.chat.completions.create(**call.kwargs)
    return list(client.models.list().data)


async def _execute_async(client: openai.AsyncOpenAI, call: Call) -> Any:
    if call.kind == "http":
        kw = call.kwargs
        if kw["method"] == "get":
            return await client.get(kw["url"], cast_to=object)
        return await client.post(kw["url"], body=kw.get("body"), cast_to=object)
    if call.kind == "completions":
        return await client.completions.create(**call.kwargs)
    if call.kind == "chat":
        return await client.chat.completions.create(**call.kwargs)
    return list((await client.models.list()).data)


@dataclass
class _Attempts:
    """The bookkeeping of one flow's calls: billed usage of failed attempts, tries of the
    current call. Pure decisions; the drivers only sleep and send."""

    policy: _retry.RetryPolicy
    retries: int
    wasted: Usage = field(default_factory=Usage)
    tries: int = 0

    def start(self, call: Call) -> float | None:
        """Seconds to wait before sending `call` (a flow's re-ask waits the backoff), or None
        when a re-ask would pass the retry count."""
        self.tries = 1
        if call.retry <= 0:
            return 0.0
        if call.retry > self.retries:
            return None
        _retry.record_retry(call.reason or "degraded answer")
        return _retry.backoff_delay(call.retry - 1, self.policy, u=_retry.jitter_u()) or 0.0

    def failed(self, exc: BaseException) -> float | None:
        """Seconds to wait before trying the failed call again, or None to give up."""
        if isinstance(exc, _MALFORMED):
            self.wasted = self.wasted + Usage(calls=1)  # billed, tokens unknown: body unreadable
        reason = _retry.retry_reason(exc)
        if reason is None or self.tries > self.retries:
            return None
        delay = _retry.backoff_delay(
            self.tries - 1, self.policy, retry_after=_retry.exc_retry_after(exc), u=_retry.jitter_u()
        )
        if delay is not None:
            self.tries += 1
            _retry.record_retry(reason)
        return delay

    def result(self, value: Any) -> Any:
        """The flow's result with the failed attempts' billed usage added."""
        if self.wasted.calls and isinstance(getattr(value, "usage", None), Usage):
            value.usage = value.usage + self.wasted
        return value


def _give_up(
    exc: BaseException, client: Any, model: str, book: _Attempts, available: list[str] | None
) -> BaseException:
    if isinstance(exc, VASError) and not isinstance(exc, ProviderError):
        return _scrubbed(exc, client)  # the request itself is wrong: nothing billed
    return _scrubbed(translate_error(
        exc, base_url=_base_url(client), model=model, available=available,
        usage=book.wasted + (getattr(exc, "usage", None) or Usage()),
        attempts=max(book.tries, getattr(exc, "attempts", 1) or 1),
    ), client)


def _scrubbed(err: BaseException, client: Any) -> BaseException:
    """`err` with the client's secrets (API key, base-URL credentials) masked in its message,
    whoever wrote it (flows such as the profile probe print the base URL)."""
    text = str(err)
    clean = redact_urls_in(redact_text(text, client_secrets(client)))
    if clean != text:
        err.args = (clean,)
        if hasattr(err, "message"):
            err.message = clean  # type: ignore[attr-defined]
    return err


def drive_sync(client: openai.OpenAI, flow: Flow, *, model: str) -> Any:
    """Run `flow` against a sync client, retrying transport failures (`vas_api.retry`).

    Raises:
        The SDK's exception type mixed with a VAS error (see `translate_error`):
        ProviderConnectionError, ModelNotFoundError, MalformedResponseError, ProviderError;
        NoLogprobsError. Each carries ``usage`` (billed attempts) and ``attempts``.
    """
    policy = _retry.policy_for(client)
    book = _Attempts(policy, policy.retries_for(client))
    sdk = _without_sdk_retries(client)
    reply: Any = None
    error: BaseException | None = None
    while True:
        try:
            call = flow.throw(error) if error is not None else flow.send(reply)
        except StopIteration as stop:
            return book.result(stop.value)
        except (*_CALL_ERRORS, VASError) as exc:
            available = _list_models_sync(sdk) if isinstance(exc, openai.NotFoundError) else None
            err = _give_up(exc, client, model, book, available)
            if err is exc:
                raise
            raise err from exc
        delay = book.start(call)
        if delay is None:
            reply, error = None, _RetriesExhausted()
            continue
        while True:
            if delay:
                time.sleep(delay)
            try:
                reply, error = _execute_sync(sdk, call), None
                break
            except _CALL_ERRORS as exc:
                delay = book.failed(exc)
                if delay is None:
                    reply, error = None, exc
                    break


async def drive_async(client: openai.AsyncOpenAI, flow: Flow, *, model: str) -> Any:
    """The asyncio twin of `drive_sync` (same flow, same retries, awaited calls)."""
    policy = _retry.policy_for(client)
    book = _Attempts(policy, policy.retries_for(client))
    sdk = _without_sdk_retries(client)
    reply: Any = None
    error: BaseException | None = None
    while True:
        try:
            call = flow.throw(error) if error is not None else flow.send(reply)
        except StopIteration as stop:
            return book.result(stop.value)
        except (*_CALL_ERRORS, VASError) as exc:
            available = (
                await _list_models_async(sdk) if isinstance(exc, openai.NotFoundError) else None
            )
            err = _give_up(exc, client, model, book, available)
            if err is exc:
                raise
            raise err from exc
        delay = book.start(call)
        if delay is None:
            reply, error = None, _RetriesExhausted()
            continue
        while True:
            if delay:
                await asyncio.sleep(delay)
            try:
                reply, error = await _execute_async(sdk, call), None
                break
            except _CALL_ERRORS as exc:
                delay = book.failed(exc)
                if delay is None:
                    reply, error = None, exc
                    break


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
