"""The one transport-retry layer: which failures are retried, and how long to wait.

Why ours and not the SDK's ``max_retries``: the SDK retries 408/409/429/5xx and connection
errors, but not a 200 whose body is truncated or malformed, nor a 200 without the logprobs that
were asked for, and it cannot tell the sampler which attempts were billed. So vas-api sends
every call it makes with the SDK's retries set to 0 (``client.with_options(max_retries=0)``)
and retries here instead, with the SDK's own arithmetic (0.5 s doubling to 8 s, up to 25%
jitter, Retry-After / retry-after-ms honoured up to 60 s). The number of retries is the one
the user already set on their SDK client (``OpenAI(max_retries=...)``, default 2), so nothing
is multiplied: a failure is tried ``1 + max_retries`` times in all.

Everything that decides is a pure function (tested without a network); the drivers in
`vas_api.providers.openai_wire` only sleep and count.
"""

from __future__ import annotations

import contextvars
import email.utils
import json
import math
import random
import time
import weakref
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "RetryPolicy",
    "RetryLog",
    "backoff_delay",
    "retry_after_seconds",
    "retry_reason",
    "use_retry_policy",
    "policy_for",
    "retry_log",
]

RETRYABLE_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504})
"""Statuses worth asking again (the SDK's own list: timeouts, lock conflicts, rate limits,
server errors; 5xx beyond these are retried too, see `retry_reason`)."""


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long to retry a failed or degraded call.

    Attributes:
        max_retries: retries after the first attempt (None: the SDK client's ``max_retries``).
        initial_delay: seconds before the first retry (doubles each retry).
        max_delay: cap on the exponential delay.
        jitter: the delay is reduced by a random share in [0, jitter).
        max_retry_after: a server's Retry-After up to this many seconds is honoured as is;
            a longer one is not waited for (the call fails at once, as in the SDK).
    """

    max_retries: int | None = None
    initial_delay: float = 0.5
    max_delay: float = 8.0
    jitter: float = 0.25
    max_retry_after: float = 60.0

    def retries_for(self, client: Any) -> int:
        """The retry count: ours when set, otherwise the SDK client's own (default 2)."""
        if self.max_retries is not None:
            return self.max_retries
        n = getattr(client, "max_retries", 2)
        return n if isinstance(n, int) and n >= 0 else 2


def backoff_delay(
    attempt: int, policy: RetryPolicy, *, retry_after: float | None = None, u: float = 0.0
) -> float | None:
    """Seconds to wait before retry number `attempt` (0 = the first retry).

    Args:
        attempt: how many retries were made already.
        policy: the delays.
        retry_after: the server's Retry-After in seconds, when it sent one.
        u: a uniform random number in [0, 1) for the jitter (pass ``random.random()``).

    Returns:
        The delay, or None when the server asks for a wait longer than
        ``policy.max_retry_after`` (then the call should not be retried).
    """
    if retry_after is not None and math.isfinite(retry_after):
        if retry_after > policy.max_retry_after:
            return None
        if retry_after > 0:
            return retry_after
    base = min(policy.initial_delay * 2.0 ** min(attempt, 1000), policy.max_delay)
    return max(0.0, base * (1.0 - policy.jitter * u))


def retry_after_seconds(headers: Mapping[str, str] | None, *, now: float | None = None) -> float | None:
    """The wait a response asks for: ``retry-after-ms``, then ``retry-after`` (seconds or an
    HTTP date), as openai-python reads them. None when absent or unreadable."""
    if not headers:
        return None
    lower = {str(k).lower(): str(v) for k, v in headers.items()}
    for name, divisor in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        value = lower.get(name)
        if value is None:
            continue
        try:
            return float(value) / divisor
        except ValueError:
            pass
    value = lower.get("retry-after")
    if value is None:
        return None
    try:
        parsed = email.utils.parsedate_tz(value)
        if parsed is None:
            return None
        return float(email.utils.mktime_tz(parsed) - (time.time() if now is None else now))
    except (TypeError, ValueError, OverflowError):
        return None


def retry_reason(exc: BaseException) -> str | None:
    """Why `exc` is worth retrying ("429", "500", "connection", "timeout", "malformed body"),
    or None when asking again cannot help (400, 401, 404, ...; the library's own errors).

    Works on openai and anthropic SDK exceptions by their shape (``status_code`` and the
    class names of the connection errors), and on the JSON errors a truncated body raises.
    """
    name = type(exc).__name__
    if name == "APITimeoutError":
        return "timeout"
    if name == "APIConnectionError":
        return "connection"
    if isinstance(exc, json.JSONDecodeError | UnicodeDecodeError) or name == "APIResponseValidationError":
        return "malformed body"
    status = getattr(exc, "status_code", None)
    if isinstance(status, int) and getattr(exc, "response", None) is not None:
        headers = getattr(exc.response, "headers", None)  # type: ignore[attr-defined]
        hint = headers.get("x-should-retry") if headers is not None else None
        if hint == "false":
            return None
        if status in RETRYABLE_STATUS or status >= 500 or hint == "true":
            return str(status)
    return None


def exc_retry_after(exc: BaseException) -> float | None:
    """The Retry-After of the response behind an SDK status error, if any."""
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None)
    return retry_after_seconds(dict(headers.items())) if headers is not None else None


# -- per-client policies ------------------------------------------------------------------------

_POLICIES: weakref.WeakKeyDictionary[Any, RetryPolicy] = weakref.WeakKeyDictionary()
_DEFAULT = RetryPolicy()


def use_retry_policy(client: Any, policy: RetryPolicy) -> Any:
    """Make vas-api retry calls through `client` by `policy` (returns `client`).

    Without it, the SDK client's own ``max_retries`` and openai-python's delays are used.
    """
    if not isinstance(policy, RetryPolicy):
        from .errors import ConfigError

        raise ConfigError(f"policy must be a vas_api.retry.RetryPolicy, got {type(policy).__name__}.")
    _POLICIES[client] = policy
    return client


def policy_for(client: Any) -> RetryPolicy:
    """The policy set with `use_retry_policy` for `client`, else the default."""
    try:
        return _POLICIES.get(client, _DEFAULT)
    except TypeError:  # not weak-referenceable
        return _DEFAULT


def jitter_u() -> float:
    """A uniform draw for `backoff_delay` (kept apart so tests can pass their own)."""
    return random.random()  # noqa: S311 - jitter, not cryptography


# -- what happened, per generation ------------------------------------------------------------


@dataclass
class RetryLog:
    """Retries made while a `RetryLog` is current (see `retry_log`).

    Attributes:
        retries: calls asked again.
        reasons: one entry per retry ("429", "timeout", "no logprobs", ...).
    """

    retries: int = 0
    reasons: list[str] = field(default_factory=list)

    def record(self, reason: str) -> None:
        self.retries += 1
        self.reasons.append(reason)


_CURRENT: contextvars.ContextVar[RetryLog | None] = contextvars.ContextVar("vas_retry_log", default=None)


def retry_log() -> RetryLog | None:
    """The RetryLog of the running generation, if one was set (`set_retry_log`)."""
    return _CURRENT.get()


def set_retry_log(log: RetryLog | None) -> contextvars.Token:
    """Make `log` current in this context (an asyncio task keeps its own)."""
    return _CURRENT.set(log)


def reset_retry_log(token: contextvars.Token) -> None:
    """Undo `set_retry_log`."""
    _CURRENT.reset(token)


def record_retry(reason: str) -> None:
    """Count one retry in the current RetryLog (no-op when none is set)."""
    log = _CURRENT.get()
    if log is not None:
        log.record(reason)
