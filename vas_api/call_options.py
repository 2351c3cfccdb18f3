"""Per-request SDK options that travel to every API call a VAS request makes.

A VAS request makes many SDK calls (one per token in token mode, one per draft in speculative
mode). `extra_headers`, `extra_query`, `extra_body` and `timeout`, given to `create(...)` as the
openai SDK takes them, are applied to each of those calls: `CallOptions.flow` wraps a provider
flow (vas_api.providers.openai_wire) and adds them to every `Call` it yields, so the sync and
async providers share it and nothing else changes.
"""

from __future__ import annotations

from collections.abc import Generator, Mapping
from dataclasses import dataclass, field
from typing import Any

import openai

from .errors import ConfigError

__all__ = ["CallOptions", "RESERVED_BODY_KEYS"]

RESERVED_BODY_KEYS = frozenset({
    # what every VAS call sets itself: the request, and the samplers it turns neutral so the
    # drafts follow the reported logprobs (changing them would break exactness)
    "model", "prompt", "messages", "max_tokens", "max_completion_tokens", "logprobs",
    "top_logprobs", "temperature", "top_p", "n", "stop", "seed", "stream", "stream_options",
    "echo", "presence_penalty", "frequency_penalty", "logit_bias",
    "top_k", "min_p", "typical_p", "repeat_penalty", "repetition_penalty", "mirostat",
    "mirostat_mode", "tfs_z", "xtc_probability", "dry_multiplier", "top_n_sigma",
    "dynatemp_range", "min_tokens", "continue_final_message", "add_generation_prompt",
})
"""extra_body keys a caller may not set: VAS decides them for every call."""


def _mapping(name: str, value: Any) -> dict[str, Any]:
    if value is None or isinstance(value, openai.NotGiven | openai.Omit):
        return {}
    if not isinstance(value, Mapping) or any(not isinstance(k, str) for k in value):
        raise ConfigError(f"{name} must be a dict with string keys, got {type(value).__name__}.")
    return dict(value)


@dataclass(frozen=True)
class CallOptions:
    """SDK options for every call of one request (see the module docstring).

    Attributes:
        extra_headers, extra_query, extra_body: as in the openai SDK's `create(...)`.
        timeout: seconds (or an httpx Timeout, or None for none) for each call; NOT_GIVEN keeps
            the client's own.
    """

    extra_headers: dict[str, Any] = field(default_factory=dict)
    extra_query: dict[str, Any] = field(default_factory=dict)
    extra_body: dict[str, Any] = field(default_factory=dict)
    timeout: Any = openai.NOT_GIVEN

    @classmethod
    def of(
        cls, *, extra_headers: Any = None, extra_query: Any = None, extra_body: Any = None,
        timeout: Any = openai.NOT_GIVEN,
    ) -> CallOptions:
        """Validated options from `create(...)` arguments.

        Raises:
            ConfigError: a non-dict, an extra_body key VAS sets itself (named), or a timeout
                that is not a positive number, an httpx Timeout or None.
        """
        body = _mapping("extra_body", extra_body)
        clash = sorted(set(body) & RESERVED_BODY_KEYS)
        if clash:
            raise ConfigError(
                f"extra_body sets {', '.join(clash)}, which VAS sets itself on every call (the request, "
                "and neutral samplers so drafts follow the reported logprobs); drop "
                f"{'it' if len(clash) == 1 else 'them'} (temperature, top_p, stop, seed: pass them to create())."
            )
        if isinstance(timeout, openai.Omit):
            timeout = openai.NOT_GIVEN
        if not (
            timeout is None or isinstance(timeout, openai.NotGiven)
            or (isinstance(timeout, int | float) and not isinstance(timeout, bool) and timeout > 0)
            or type(timeout).__name__ == "Timeout"  # httpx.Timeout or httpx2.Timeout
        ):
            raise ConfigError(f"timeout = {timeout!r}: use seconds > 0, an httpx.Timeout, or None.")
        return cls(_mapping("extra_headers", extra_headers), _mapping("extra_query", extra_query), body, timeout)

    def __bool__(self) -> bool:
        return bool(self.extra_headers or self.extra_query or self.extra_body) or not isinstance(
            self.timeout, openai.NotGiven
        )

    def apply(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        """One SDK call's kwargs with these options merged in (VAS's own extra_body keys win)."""
        out = dict(kwargs)
        for name in ("extra_headers", "extra_query", "extra_body"):
            mine = getattr(self, name)
            if mine:
                out[name] = {**mine, **(out.get(name) or {})}
        if not isinstance(self.timeout, openai.NotGiven):
            out["timeout"] = self.timeout
        return out

    def flow(self, flow: Generator[Any, Any, Any]) -> Generator[Any, Any, Any]:
        """`flow` with these options on every Call it yields (replies and errors pass through)."""
        if not self:
            return flow
        return self._wrapped(flow)

    def _wrapped(self, flow: Generator[Any, Any, Any]) -> Generator[Any, Any, Any]:
        from dataclasses import replace

        reply: Any = None
        error: BaseException | None = None
        while True:
            try:
                call = flow.throw(error) if error is not None else flow.send(reply)
            except StopIteration as stop:
                return stop.value
            try:
                reply, error = (yield replace(call, kwargs=self.apply(call.kwargs))), None
            except Exception as exc:  # the driver throws the SDK's errors in: hand them on
                reply, error = None, exc
