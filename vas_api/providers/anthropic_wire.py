"""The sans-IO core of the Anthropic Messages adapter: requests, responses, errors, profiles.

Pure functions only: what to send to ``client.messages.create`` for a `Prefix`, what a
`Message` (or an SDK error) means, and what a model can do. `vas_api.providers.anthropic` holds
the thin sync and async shells that make the calls.

Facts this module encodes (Anthropic Messages API, late 2026):
- no logprobs at all, and no ``n``: N samples are N calls;
- a final assistant message is a *prefill*: the model continues it and the reply holds only
  the continuation. The prefill must not end in whitespace (the API answers 400 "final
  assistant content cannot end with trailing whitespace"), so it is sent right-stripped and the
  whitespace is taken off the front of the continuation;
- models from the 4.6 generation on reject a prefill with 400 invalid_request_error "This model
  does not support assistant message prefill. The conversation must end with a user message.";
- llama.cpp's llama-server serves the same /v1/messages but returns the prefill text in front
  of the continuation; `strip_prefill_echo` handles both behaviours;
- prompt caching: a ``cache_control: {"type": "ephemeral"}`` breakpoint on the last block of the
  fixed prompt (the conversation up to its last user turn) caches everything before it; the
  usage then splits the prompt into ``input_tokens`` (uncached), ``cache_creation_input_tokens``
  (written) and ``cache_read_input_tokens`` (read). Below the model's minimum cacheable length
  the API ignores the breakpoint.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import anthropic

from ..errors import (
    CapabilityError,
    ConfigError,
    ModelNotFoundError,
    ProviderConnectionError,
    ProviderError,
)
from ..types import Completion, Prefix, Prompt, ProviderProfile, Usage

__all__ = [
    "PREFILL_REJECTED",
    "PrefillRejectedError",
    "anthropic_messages",
    "canonical_prompt_text",
    "completion_of",
    "profile_for",
    "request_kwargs",
    "strip_prefill_echo",
    "translate_error",
    "usage_of",
]

PREFILL_REJECTED = "does not support assistant message prefill"
"""The part of Anthropic's 400 message that says a model rejects prefill (4.6 models on)."""

_CACHE = {"type": "ephemeral"}
_STOP_REASONS = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length",
                 "refusal": "stop", "pause_turn": "stop", "model_context_window_exceeded": "length"}
_VERSION = re.compile(r"claude-(?:(?:opus|sonnet|haiku)-(\d+)(?:-(\d))?|(\d+)(?:-(\d))?-(?:opus|sonnet|haiku))")


class PrefillRejectedError(CapabilityError):
    """The model answered that it does not accept an assistant prefill (Anthropic 4.6+).

    The provider remembers it for the model, so later requests go straight to rerank mode.
    """


# -- profiles -----------------------------------------------------------------------------------


def _model_version(model: str) -> tuple[int, int] | None:
    """(major, minor) of a Claude model id ("claude-sonnet-4-5-20250929" -> (4, 5),
    "claude-3-5-haiku-latest" -> (3, 5)); None when the id does not say."""
    m = _VERSION.search(model)
    if not m:
        return None
    major, minor = (m.group(1), m.group(2)) if m.group(1) else (m.group(3), m.group(4))
    return int(major), int(minor or 0)


def profile_for(model: str, *, base_url: str = "", prefill: bool | None = None) -> ProviderProfile:
    """What an Anthropic Messages endpoint can do for `model`.

    Args:
        model: the model id.
        base_url: the client's base URL (llama-server and other compatible servers are told
            apart from api.anthropic.com by it, in the profile's name).
        prefill: force the continuation kind (True "prefill", False "none"); None decides from
            the model id: Claude models from 4.6 on reject prefill, everything else (older
            Claude models, llama-server, unknown ids) is tried with prefill, and a rejection is
            detected from the error and remembered.

    Returns:
        A profile with logprob_shape "none" (no logprobs) and n_param False (no n).
    """
    if prefill is None:
        version = _model_version(model)
        prefill = version is None or version < (4, 6)
    hosted = "api.anthropic.com" in base_url
    return ProviderProfile(
        name="Anthropic Messages" if hosted or not base_url else f"Anthropic-compatible ({base_url})",
        max_top_k=None,
        logprob_shape="none",
        continuation="prefill" if prefill else "none",
        top_k_param=False,
        n_param=False,
    )


# -- requests -----------------------------------------------------------------------------------


def _blocks(content: Any, where: str) -> list[dict[str, Any]]:
    """Anthropic content blocks for an OpenAI-style or Anthropic-style message content."""
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if isinstance(content, list) and all(isinstance(b, dict) for b in content):
        out = []
        for b in content:
            if b.get("type") == "text" and isinstance(b.get("text"), str):
                out.append({k: v for k, v in b.items() if k in ("type", "text", "cache_control")})
            else:
                raise ConfigError(
                    f"{where}: only text content blocks can be steered, got {b.get('type')!r} "
                    "(images, documents and tool blocks are not supported by VAS requests)."
                )
        return out
    raise ConfigError(f"{where}: content must be a string or a list of text blocks, got {content!r}.")


def anthropic_messages(prompt: Prompt) -> tuple[list[dict[str, Any]] | None, list[dict[str, Any]]]:
    """(system blocks or None, messages) for `prompt` in the Messages API's shape.

    A string prompt is one user turn; OpenAI-style "system" messages are lifted into the
    top-level `system` field; consecutive same-role turns are kept as they are (the API merges
    them).

    Raises:
        ConfigError: empty prompt, an unknown role, or non-text content.
    """
    if isinstance(prompt, str):
        if not prompt:
            raise ConfigError("the prompt is empty: pass a non-empty string or chat messages.")
        return None, [{"role": "user", "content": [{"type": "text", "text": prompt}]}]
    if not isinstance(prompt, list | tuple) or not prompt:
        raise ConfigError("messages must be a non-empty list of {'role': ..., 'content': ...} dicts.")
    system: list[dict[str, Any]] = []
    messages: list[dict[str, Any]] = []
    for i, m in enumerate(prompt):
        if not isinstance(m, dict) or "role" not in m:
            raise ConfigError(f"message {i} must be a dict with 'role' and 'content', got {m!r}.")
        role = m["role"]
        if role == "system":
            system += _blocks(m.get("content", ""), f"message {i}")
        elif role in ("user", "assistant"):
            messages.append({"role": role, "content": _blocks(m.get("content", ""), f"message {i}")})
        else:
            raise ConfigError(f"message {i} has role {role!r}; use 'system', 'user' or 'assistant'.")
    if not messages or messages[0]["role"] != "user":
        raise ConfigError("the conversation must start with a user message (after any system message).")
    if messages[-1]["role"] != "user":
        raise ConfigError(
            "the conversation must end with a user message; VAS continues the assistant's turn itself."
        )
    return system or None, messages


def canonical_prompt_text(prompt: Prompt) -> str:
    """A ChatML rendering of `prompt`, the stand-in `prompt_text` of an endpoint that renders its
    template server-side (value functions that only take whole texts score this)."""
    system, messages = anthropic_messages(prompt)
    parts = []
    if system:
        parts.append("<|im_start|>system\n" + "".join(b["text"] for b in system) + "<|im_end|>\n")
    for m in messages:
        parts.append(f"<|im_start|>{m['role']}\n" + "".join(b["text"] for b in m["content"]) + "<|im_end|>\n")
    return "".join(parts) + "<|im_start|>assistant\n"


def _with_cache_breakpoint(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Copy of `messages` with cache_control on the last block of the last user turn (the end of
    the fixed prompt), unless the caller already placed a breakpoint somewhere."""
    if any("cache_control" in b for m in messages for b in m["content"]):
        return messages
    out = [dict(m, content=[dict(b) for b in m["content"]]) for m in messages]
    out[-1]["content"][-1]["cache_control"] = dict(_CACHE)
    return out


# llama.cpp's own sampler defaults (temperature 0.8, top_k 40, top_p 0.95, min_p 0.05, ...) apply
# on llama-server's /v1/messages unless turned off: sent to compatible servers only, since the
# hosted API (anthropic SDK 2.x) takes no sampling parameters and samples at temperature 1.
_NEUTRAL_COMPAT = {"top_k": 0, "top_p": 1.0, "min_p": 0.0, "typical_p": 1.0, "repeat_penalty": 1.0,
                   "mirostat": 0, "xtc_probability": 0.0, "dry_multiplier": 0.0, "top_n_sigma": -1.0,
                   "dynatemp_range": 0.0}


def request_kwargs(
    model: str,
    prefix: Prefix,
    *,
    max_tokens: int,
    temperature: float = 1.0,
    stop: Sequence[str] | None = None,
    cache_prompt: bool = True,
    hosted: bool = True,
) -> dict[str, Any]:
    """The keyword arguments of one ``client.messages.create`` call continuing `prefix`.

    Args:
        model: the model id.
        prefix: the prompt and the response so far (sent as an assistant prefill when non-empty,
            right-stripped as the API demands).
        max_tokens: tokens to generate (required by the API).
        temperature: the hosted API takes none (anthropic SDK 2.x has no sampling parameters;
            the model samples at its own temperature 1), so only 1.0 is accepted there; a
            compatible server gets it, with every other sampler neutral, in extra_body.
        stop: stop sequences.
        cache_prompt: put a prompt-cache breakpoint at the end of the fixed prompt.
        hosted: the endpoint is Anthropic's own API (no extra sampling fields are sent).

    Raises:
        ConfigError: bad prompt, max_tokens, temperature or stop sequences.
    """
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise ConfigError(f"max_tokens must be a positive integer, got {max_tokens!r}.")
    if hosted and temperature != 1.0:
        raise ConfigError(
            f"temperature = {temperature!r}: the Anthropic Messages API takes no temperature (it "
            "samples at 1.0); drop it, or use an endpoint that takes one."
        )
    if not 0 <= temperature <= 2:
        raise ConfigError(f"temperature = {temperature!r}: use a number from 0 to 2.")
    if stop and any(not isinstance(s, str) or not s.strip() for s in stop):
        raise ConfigError(f"stop = {list(stop)!r}: each stop sequence must hold a non-whitespace character.")
    system, messages = anthropic_messages(prefix.prompt)
    if cache_prompt:
        messages = _with_cache_breakpoint(messages)
    prefill = prefix.response.rstrip()
    if prefill:
        messages = [*messages, {"role": "assistant", "content": [{"type": "text", "text": prefill}]}]
    kwargs: dict[str, Any] = {"model": model, "max_tokens": max_tokens, "messages": messages}
    if system:
        kwargs["system"] = system
    if stop:
        kwargs["stop_sequences"] = list(stop)
    if not hosted:
        kwargs["extra_body"] = {"temperature": temperature, **_NEUTRAL_COMPAT}
    return kwargs


# -- responses ----------------------------------------------------------------------------------


def usage_of(message: Any) -> Usage:
    """One call's usage: prompt_tokens counts every prompt token (uncached + written + read),
    cached_tokens the ones read from the cache, cache_write_tokens the ones written to it."""
    u = getattr(message, "usage", None)
    if u is None:
        return Usage(calls=1)
    read = int(getattr(u, "cache_read_input_tokens", 0) or 0)
    write = int(getattr(u, "cache_creation_input_tokens", 0) or 0)
    return Usage(
        prompt_tokens=int(getattr(u, "input_tokens", 0) or 0) + read + write,
        completion_tokens=int(getattr(u, "output_tokens", 0) or 0),
        cached_tokens=read,
        calls=1,
        cache_write_tokens=write,
    )


def _message_text(message: Any) -> str:
    return "".join(getattr(b, "text", "") for b in getattr(message, "content", None) or []
                   if getattr(b, "type", None) == "text")


def strip_prefill_echo(text: str, sent: str, echoes: bool | None) -> tuple[str, bool | None]:
    """The continuation alone, from a reply to a request that ended in the prefill `sent`.

    Args:
        text: the reply's text.
        sent: the prefill as sent (right-stripped); "" when there was none.
        echoes: whether this server is known to repeat the prefill (llama-server: True,
            api.anthropic.com: False), or None when not known yet.

    Returns:
        (continuation, what the reply says about `echoes`): an unknown server whose reply starts
        with a prefill of at least 8 characters is taken to echo (a true continuation that
        starts with 8 characters repeating the prefill is not plausible); one whose reply does
        not start with it does not echo; short prefills decide nothing.
    """
    if not sent:
        return text, echoes
    starts = text.startswith(sent)
    if echoes is None:
        if starts and len(sent) >= 8:
            echoes = True
        elif not starts:
            echoes = False
        if starts:
            return text[len(sent):], echoes
        return text, echoes
    if echoes and starts:
        return text[len(sent):], echoes
    return text, echoes


def completion_of(message: Any, prefix: Prefix, echoes: bool | None) -> tuple[Completion, bool | None]:
    """The text to append to `prefix.response` and the finish reason, from one Message.

    The prefill went out right-stripped, so the whitespace taken off is taken off the front of
    the continuation too (when the model wrote it again) and the rest is appended as is.

    Returns:
        (Completion, updated `echoes`; see `strip_prefill_echo`).
    """
    response = prefix.response
    sent = response.rstrip()
    text, echoes = strip_prefill_echo(_message_text(message), sent, echoes)
    trailing = response[len(sent):]
    if trailing:
        lead = len(text) - len(text.lstrip())
        common = 0
        while common < min(lead, len(trailing)) and text[common] == trailing[common]:
            common += 1
        text = text[common:]
    reason = getattr(message, "stop_reason", None)
    return Completion(text, _STOP_REASONS.get(reason, "stop" if reason else None)), echoes


# -- errors -------------------------------------------------------------------------------------


def _error_message(exc: anthropic.APIStatusError) -> str:
    body = exc.body
    if isinstance(body, dict):
        err = body.get("error", body)
        if isinstance(err, dict):
            return str(err.get("message", err))
        return str(err)
    return str(exc)


def translate_error(exc: anthropic.AnthropicError, *, base_url: str, model: str) -> Exception:
    """The VAS error for an anthropic SDK error (after the SDK's own retries), saying what to do.

    Returns:
        PrefillRejectedError for a model that rejects prefill; ModelNotFoundError for an unknown
        model; ProviderConnectionError when the server cannot be reached; otherwise
        ProviderError with the API's own message (429: with the Retry-After it asked for).
    """
    if isinstance(exc, anthropic.APIConnectionError):
        return ProviderConnectionError(
            f"could not reach the Anthropic endpoint at {base_url} ({type(exc).__name__}: {exc}); "
            "check base_url and the network."
        )
    if not isinstance(exc, anthropic.APIStatusError):
        return ProviderError(f"the Anthropic call failed: {exc}")
    message = _error_message(exc)
    if isinstance(exc, anthropic.BadRequestError) and PREFILL_REJECTED in message:
        return PrefillRejectedError(
            f"{model} does not accept an assistant prefill ({message}), so block mode cannot run "
            "on it; vas-api remembers this for the model.",
            workable_modes=["rerank"],
        )
    if isinstance(exc, anthropic.AuthenticationError):
        return ProviderError(
            f"the Anthropic endpoint at {base_url} refused the API key (401: {message}); check "
            "api_key / ANTHROPIC_API_KEY."
        )
    if isinstance(exc, anthropic.NotFoundError):
        return ModelNotFoundError(f"the Anthropic endpoint at {base_url} has no model {model!r} ({message}).")
    if isinstance(exc, anthropic.RateLimitError):
        after = exc.response.headers.get("retry-after")
        wait = f" It asked to retry after {after} s." if after else ""
        return ProviderError(
            f"rate limited by {base_url} (429: {message}) after the SDK's retries.{wait} Raise the "
            "client's max_retries, lower the concurrency, or wait."
        )
    return ProviderError(f"the Anthropic endpoint at {base_url} rejected the request ({exc.status_code}): {message}")
