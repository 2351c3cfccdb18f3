"""Checks on what a caller passes to `create(...)`, run before any API call.

Each function takes one argument as the caller gave it and returns it in the form the sampler
uses, or raises a `ConfigError` that names the argument and says what to pass instead. The
openai SDK's "not given" sentinels (`openai.NOT_GIVEN`, `openai.omit`) and None mean "use the
default" everywhere, as they do in the SDK.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import openai

from .errors import ConfigError

__all__ = [
    "is_given",
    "drop_not_given",
    "flatten_messages",
    "positive_int",
    "real_number",
    "seed_value",
    "stop_strings",
    "stream_flag",
]

# Roles whose turns VAS can render and continue. Tool turns need tool calling, which VAS
# does not do (it chooses tokens of text).
_TEXT_ROLES = ("system", "developer", "user", "assistant")


def is_given(value: Any) -> bool:
    """False for None, `openai.NOT_GIVEN` and `openai.omit` (the SDK's "leave it out")."""
    return value is not None and not isinstance(value, openai.NotGiven | openai.Omit)


def drop_not_given(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """`kwargs` without the arguments that were not given (see `is_given`)."""
    return {k: v for k, v in kwargs.items() if is_given(v)}


def flatten_messages(messages: Any) -> list[dict[str, Any]]:
    """Chat messages in the form the chat template renders: `content` one string.

    Content given as a list of parts (`[{"type": "text", "text": ...}, ...]`, a standard
    OpenAI format) is joined with newlines, as vLLM joins text parts; `content=None` is taken as
    "" for assistant messages (the SDK allows it there).

    Raises:
        ConfigError: not a non-empty list of dicts with a role; a role VAS cannot continue
            (tool, function); a non-text content part (image, audio, file); missing content
            for a role that needs it; tool calls.
    """
    if not isinstance(messages, str | bytes | Mapping) and isinstance(messages, Iterable):
        messages = list(messages)
    if not isinstance(messages, list) or not messages:
        raise ConfigError(
            "messages must be a non-empty list of {'role': ..., 'content': ...} dicts; "
            f"got {type(messages).__name__}."
        )
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping) or "role" not in m:
            raise ConfigError(f"messages[{i}] must be a dict with 'role' and 'content', got {m!r}.")
        role = m["role"]
        if role not in _TEXT_ROLES:
            raise ConfigError(
                f"messages[{i}] has role {role!r}; VAS requests take only {', '.join(_TEXT_ROLES)} "
                "messages (no tool calling): drop tool turns or summarise them as text."
            )
        for key in ("tool_calls", "function_call", "audio"):
            if is_given(m.get(key)) and m[key] != []:
                raise ConfigError(f"messages[{i}] has {key}; VAS requests continue text only: drop it.")
        out.append({**m, "content": _content_text(i, role, m.get("content"))})
    return out


def _content_text(i: int, role: str, content: Any) -> str:
    if content is None or isinstance(content, openai.NotGiven | openai.Omit):
        if role == "assistant":
            return ""
        raise ConfigError(f"messages[{i}] ({role}) has no content; give a string or a list of text parts.")
    if isinstance(content, str):
        return content
    if isinstance(content, Mapping) or not isinstance(content, Sequence):
        raise ConfigError(
            f"messages[{i}].content must be a string or a list of parts like "
            f"{{'type': 'text', 'text': ...}}, got {type(content).__name__}."
        )
    texts = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, Mapping) else None
        if kind != "text" or not isinstance(part.get("text"), str):
            shown = kind if kind is not None else type(part).__name__
            raise ConfigError(
                f"messages[{i}].content[{j}] is a {shown!r} part; VAS steers text models, so only "
                "{'type': 'text', 'text': '...'} parts are accepted: drop images, audio and files."
            )
        texts.append(part["text"])
    return "\n".join(texts)


def positive_int(name: str, value: Any, *, default: int | None = None, hint: str = "") -> int | None:
    """`value` as an int >= 1, or `default` when not given.

    Raises:
        ConfigError: a bool, a non-integer, or a number below 1 (`hint` says what is typical).
    """
    if not is_given(value):
        return default
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        extra = f" ({hint})" if hint else ""
        raise ConfigError(f"{name} = {value!r}: use a positive integer{extra}.")
    return int(value)


def real_number(
    name: str, value: Any, *, default: float, low: float, high: float = math.inf,
    low_open: bool = False, hint: str = "",
) -> float:
    """`value` as a finite float in [low, high] ((low, high] with `low_open`), or `default`.

    Raises:
        ConfigError: a string, a bool, NaN, inf or a number out of range.
    """
    if not is_given(value):
        return default
    ok = not isinstance(value, bool) and isinstance(value, numbers.Real) and math.isfinite(value)
    if ok:
        number = float(value)
        ok = (number > low if low_open else number >= low) and number <= high
    if not ok:
        bound = f"{'(' if low_open else '['}{low:g}, {high:g}]"
        extra = f"; {hint}" if hint else ""
        raise ConfigError(f"{name} = {value!r}: use a number in {bound}{extra}.")
    return number


def seed_value(value: Any) -> int | None:
    """A seed as a non-negative int, or None when not given.

    Raises:
        ConfigError: a string, float, bool or negative number.
    """
    if not is_given(value):
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
        raise ConfigError(f"seed = {value!r}: use a non-negative integer (or leave it out).")
    return int(value)


def stop_strings(value: Any) -> tuple[str, ...]:
    """`stop` (a string or a list of strings, as in the SDK) as a tuple.

    Raises:
        ConfigError: anything else, or an empty string.
    """
    if not is_given(value):
        return ()
    items = (value,) if isinstance(value, str) else value
    if not isinstance(items, Sequence) or any(not isinstance(s, str) or not s for s in items):
        raise ConfigError(f"stop = {value!r}: give a non-empty string or a list of non-empty strings.")
    return tuple(items)


def stream_flag(stream: Any, stream_options: Any) -> tuple[bool, bool]:
    """(stream, include_usage) from the SDK's `stream` and `stream_options`.

    VAS always reports usage at the end of a stream unless
    `stream_options={"include_usage": False}` (the report rides on the usage chunk).

    Raises:
        ConfigError: stream not a bool; stream_options without stream=True, or malformed.
    """
    on = is_given(stream) and stream
    if is_given(stream) and not isinstance(stream, bool):
        raise ConfigError(f"stream = {stream!r}: use True or False.")
    if not is_given(stream_options):
        return bool(on), True
    if not on:
        raise ConfigError("stream_options is only valid with stream=True.")
    if not isinstance(stream_options, Mapping) or set(stream_options) - {"include_usage", "include_obfuscation"}:
        raise ConfigError(f"stream_options = {stream_options!r}: VAS takes only {{'include_usage': bool}}.")
    include = stream_options.get("include_usage", True)
    if not isinstance(include, bool):
        raise ConfigError(f"stream_options['include_usage'] = {include!r}: use True or False.")
    return True, include
