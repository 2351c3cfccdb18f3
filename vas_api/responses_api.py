"""`client.responses.create(...)`: the openai SDK's Responses API call shape in, its own
`openai.types.responses.Response` out, with the VAS report attached as `.vas`.

    client = vas_api.wrap(openai.OpenAI(), value_model="path/to/ckpt", beta=4.0)
    resp = client.responses.create(model="gpt-4o-mini", input="Review my hotel.",
                                   instructions="Be brief.", max_output_tokens=64)
    resp.output_text, resp.usage, resp.vas

The request runs with chat semantics: the input becomes chat messages (`instructions` a leading
system message) and goes through the client's chat planning, so the underlying calls are the
provider's chat / completions calls exactly as for `client.chat.completions.create` (on OpenAI's
hosted chat models auto mode runs rerank). Only text input is taken, one answer per request, no
streaming, tools, reasoning or stored conversations: those are refused before any call.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from .errors import ConfigError
from .request_checks import flatten_messages, is_given

if TYPE_CHECKING:
    from openai.types.responses import Response

    from .client import _Base, _Plan
    from .report import VASReport

__all__ = ["Responses", "AsyncResponses", "to_messages", "response_from"]

# Options handed on to the client's request planning: VAS settings, spend caps, and the SDK's
# per-request options that go to every underlying call.
_PASSED = ("value_model", "beta", "k", "mode", "seed", "draft_min", "draft_max", "restrict_top_k",
           "block_len", "block_n", "rerank_n", "rerank", "max_cost_usd", "max_total_tokens", "budget",
           "on_budget", "user", "extra_headers", "extra_query", "extra_body", "timeout")
_VAS_KEYS = ("value_model", "beta", "k", "mode", "draft_min", "draft_max", "restrict_top_k")
_TEXT_PARTS = ("input_text", "output_text")
_ROLES = {"user": "user", "assistant": "assistant", "system": "system", "developer": "system"}


def to_messages(input: Any, instructions: Any = None) -> list[dict[str, Any]]:
    """Chat messages for a Responses API `input` (a string, or a list of input messages whose
    content is a string or `input_text` / `output_text` parts); `instructions` becomes a leading
    system message.

    Raises:
        ConfigError: empty input, an item that is not a text message (function calls, item
            references, ...), or a non-text content part (images, files, audio).
    """
    if isinstance(input, str):
        if not input:
            raise ConfigError("input is empty; give the model something to answer.")
        items: list[Any] = [{"role": "user", "content": input}]
    elif isinstance(input, list | tuple) and input:
        items = list(input)
    else:
        raise ConfigError("input must be a string or a non-empty list of {'role': ..., 'content': ...} messages.")
    messages = []
    for i, item in enumerate(items):
        if not isinstance(item, Mapping) or item.get("type", "message") != "message" or "role" not in item:
            kind = item.get("type") if isinstance(item, Mapping) else type(item).__name__
            raise ConfigError(f"input[{i}] is {kind!r}; VAS takes only text messages ({{'role': ..., 'content': ...}}).")
        if item["role"] not in _ROLES:
            raise ConfigError(f"input[{i}] has role {item['role']!r}; use one of {', '.join(_ROLES)}.")
        messages.append({"role": _ROLES[item["role"]], "content": _text(item.get("content"), i)})
    if is_given(instructions):
        if not isinstance(instructions, str):
            raise ConfigError("instructions must be a string.")
        if instructions:
            messages.insert(0, {"role": "system", "content": instructions})
    return flatten_messages(messages)


def _text(content: Any, i: int) -> str:
    """A message's content as one string (text parts joined with newlines, as chat joins them)."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list | tuple):
        raise ConfigError(f"input[{i}].content must be a string or a list of input_text parts.")
    texts = []
    for part in content:
        if not isinstance(part, Mapping) or part.get("type") not in _TEXT_PARTS or not isinstance(part.get("text"), str):
            kind = part.get("type") if isinstance(part, Mapping) else type(part).__name__
            raise ConfigError(f"input[{i}] has a {kind!r} content part; VAS requests take text only (input_text).")
        texts.append(part["text"])
    return "\n".join(texts)


def _request(model: Any, input: Any, instructions: Any, max_output_tokens: Any, temperature: Any, top_p: Any,
             kwargs: dict[str, Any]) -> tuple[list[dict[str, Any]], dict[str, Any], dict[str, Any]]:
    """(chat messages, SDK arguments, VAS options) for `_create`, every argument checked.

    Raises:
        ConfigError: an argument VAS cannot honour (stream, tools, previous_response_id,
            reasoning, ...), or bad input.
    """
    try:
        import openai.types.responses  # noqa: F401  (the Responses API types: openai >= 1.66)
    except ImportError as e:
        raise ConfigError("client.responses.create needs openai >= 1.66 (pip install -U openai).") from e
    refused = sorted(k for k, v in kwargs.items() if k not in _PASSED and is_given(v) and v is not False)
    if refused:
        raise ConfigError(
            f"{', '.join(refused)} cannot be used in a VAS responses.create request (it takes text input, "
            "gives one text answer, no streaming, tools, reasoning or stored conversations); drop them."
        )
    given = {k: v for k, v in kwargs.items() if k in _PASSED}
    vas = {k: given.pop(k) for k in _VAS_KEYS if k in given}
    sdk = {**given, "max_tokens": max_output_tokens, "temperature": temperature, "top_p": top_p}
    return to_messages(input, instructions), sdk, vas


def response_from(plan: _Plan, report: VASReport) -> Response:
    """An `openai.types.responses.Response` holding the plan's answer, with usage summed over
    every call and `.vas` = report (a finish by length or budget is status "incomplete")."""
    from openai.types.responses import (
        Response,
        ResponseOutputMessage,
        ResponseOutputText,
        ResponseUsage,
    )

    sampler = plan.samplers[0]
    settings = sampler.settings
    complete = sampler.finish_reason not in ("length", "budget")
    u = report.usage
    message = ResponseOutputMessage(
        id=f"msg_vas_{uuid.uuid4().hex[:20]}", type="message", role="assistant",
        status="completed" if complete else "incomplete",
        content=[ResponseOutputText(type="output_text", text=sampler.response, annotations=[])],
    )
    resp = Response(
        id=f"resp_vas_{uuid.uuid4().hex[:20]}", object="response", created_at=time.time(), model=plan.model,
        output=[message], status="completed" if complete else "incomplete",
        incomplete_details=None if complete else {"reason": "max_output_tokens"},
        parallel_tool_calls=False, tool_choice="none", tools=[],
        temperature=settings.temperature, top_p=settings.top_p, max_output_tokens=settings.max_tokens,
        usage=ResponseUsage(
            input_tokens=u.prompt_tokens, output_tokens=u.completion_tokens, total_tokens=u.total_tokens,
            input_tokens_details={"cached_tokens": u.cached_tokens, "cache_write_tokens": u.cache_write_tokens},
            output_tokens_details={"reasoning_tokens": 0},
        ),
    )
    resp.vas = report
    return resp


class Responses:
    """`client.responses` of a wrapped openai client (see the module docstring).

    Args:
        owner: the VASClient (its defaults, providers and value models).
    """

    def __init__(self, owner: _Base) -> None:
        self._owner = owner

    def create(self, *, model: str, input: Any, instructions: str | None = None, max_output_tokens: int | None = None,
               temperature: float | None = None, top_p: float | None = None, **vas_and_sdk: Any) -> Response:
        """Like `openai.OpenAI().responses.create`, steered by the value model(s).

        Args:
            model: the base model's name at the provider.
            input: a string, or a list of messages with string or `input_text` content.
            instructions: a system message put first. max_output_tokens: as max_tokens.
            temperature, top_p, user, extra_headers, extra_query, extra_body, timeout: as in the SDK.
            **vas_and_sdk: VAS options as for chat.completions.create (value_model, beta, k, mode,
                seed, draft bounds, block / rerank sizes, spend caps).

        Returns:
            openai.types.responses.Response with `.vas` (a VASReport); `output_text` is the answer.

        Raises:
            ConfigError: stream, tools, previous_response_id, reasoning or another argument VAS
            cannot honour, or non-text input (before any call); as chat.completions.create otherwise.
        """
        prompt, sdk, vas = _request(model, input, instructions, max_output_tokens, temperature, top_p, vas_and_sdk)
        resp = self._owner._create("responses", model, prompt, sdk, vas)
        resp.instructions = instructions if is_given(instructions) else None
        return resp


class AsyncResponses(Responses):
    """`await client.responses.create(...)` on AsyncVASClient."""

    async def create(self, *, model: str, input: Any, instructions: str | None = None,  # type: ignore[override]
                     max_output_tokens: int | None = None, temperature: float | None = None,
                     top_p: float | None = None, **vas_and_sdk: Any) -> Response:
        """See `Responses.create`."""
        prompt, sdk, vas = _request(model, input, instructions, max_output_tokens, temperature, top_p, vas_and_sdk)
        resp = await self._owner._create("responses", model, prompt, sdk, vas)
        resp.instructions = instructions if is_given(instructions) else None
        return resp
