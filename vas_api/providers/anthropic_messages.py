"""`client.messages.create(...)` for a wrapped Anthropic client: the anthropic SDK's call shape
in, its own `anthropic.types.Message` out, with the VAS report attached as `.vas`.

    import anthropic, vas_api
    client = vas_api.wrap(anthropic.Anthropic(), value_model="path/to/ckpt", beta=4.0)
    msg = client.messages.create(model="claude-sonnet-4-5", max_tokens=64,
                                 messages=[{"role": "user", "content": "Review my hotel."}])
    msg.content[0].text, msg.usage, msg.vas

The Messages API has no logprobs, so the modes are block (assistant prefill, where the model
accepts it) and rerank (N whole responses); both run through the client's sampler loop. A
request with no value model, or every beta 0, is one plain call. Usage is summed over every
call, with the prompt split as the API splits it (uncached input, cache writes, cache reads).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from typing import Any

from ..errors import ConfigError
from ..types import Prefix, Usage

__all__ = ["AnthropicMessages", "message_from", "to_prompt"]

# Messages API arguments VAS cannot honour: refused at once rather than silently ignored.
_UNSUPPORTED = ("stream", "tools", "tool_choice", "thinking", "container", "mcp_servers")
_STOP_REASON = {"stop": "end_turn", "length": "max_tokens"}
# VAS options handed on to the client's request planning (block and rerank sizes, the seed).
_VAS_OPTIONS = ("seed", "block_len", "block_n", "rerank_n", "rerank")


def to_prompt(messages: Sequence[dict[str, Any]], system: Any = None) -> list[dict[str, Any]]:
    """The vas-api prompt (chat messages) for a Messages API request: `system` (a string or
    text blocks) becomes a leading system message; message contents stay as given.

    Raises:
        ConfigError: messages is empty or not a list of role/content dicts.
    """
    msgs = list(messages or [])
    if not msgs or any(not isinstance(m, dict) or "role" not in m for m in msgs):
        raise ConfigError("messages must be a non-empty list of {'role': ..., 'content': ...} dicts.")
    if system is None:
        return msgs
    if isinstance(system, str):
        return [{"role": "system", "content": system}, *msgs] if system else msgs
    return [{"role": "system", "content": list(system)}, *msgs]


def message_from(model: str, text: str, finish_reason: str | None, usage: Usage, report: Any) -> Any:
    """An `anthropic.types.Message` holding `text`, with `usage` summed over every call and
    `.vas` = report."""
    from anthropic.types import Message, TextBlock
    from anthropic.types import Usage as AnthropicUsage

    message = Message(
        id=f"msg_vas_{uuid.uuid4().hex[:20]}",
        type="message",
        role="assistant",
        model=model,
        content=[TextBlock(type="text", text=text)],
        stop_reason=_STOP_REASON.get(finish_reason or "stop", "end_turn"),
        stop_sequence=None,
        usage=AnthropicUsage(
            input_tokens=usage.prompt_tokens - usage.cached_tokens - usage.cache_write_tokens,
            output_tokens=usage.completion_tokens,
            cache_creation_input_tokens=usage.cache_write_tokens,
            cache_read_input_tokens=usage.cached_tokens,
        ),
    )
    message.vas = report
    return message


class AnthropicMessages:
    """`client.messages` of a wrapped Anthropic client (see the module docstring).

    Args:
        owner: the VASClient / AsyncVASClient (its defaults, providers and value models).
    """

    def __init__(self, owner: Any) -> None:
        self._owner = owner

    def create(
        self,
        *,
        model: str,
        messages: Sequence[dict[str, Any]],
        max_tokens: int,
        system: Any = None,
        stop_sequences: Sequence[str] | None = None,
        temperature: float | None = None,
        value_model: Any = None,
        beta: Any = None,
        k: Any = None,
        mode: Any = None,
        **sdk: Any,
    ):
        """Like `anthropic.Anthropic().messages.create`, steered by the value model(s).

        Args:
            model, messages, max_tokens, system, stop_sequences: as in the SDK (text content
                only). temperature: only for Anthropic-compatible servers that take one
                (the hosted API has no sampling parameters).
            value_model: a checkpoint directory, a value function, or a list of them.
            beta: one number, or one per value model (0 = the base model).
            k, mode: as for the OpenAI-shaped calls ("auto" picks block where the model accepts
                a prefill, else rerank); seed, block_len, block_n, rerank_n, rerank are handed on
                to the client's block and rerank settings.

        Returns:
            anthropic.types.Message with `.vas` (a coroutine on the async client).

        Raises:
            ConfigError: a bad or unsupported argument (before any call). CapabilityError: a
            mode the model cannot run. ProviderError: a call failed.
        """
        bad = [key for key in _UNSUPPORTED if sdk.get(key) not in (None, False)]
        if bad:
            raise ConfigError(f"{', '.join(bad)} cannot be used in a VAS request; drop them.")
        extra = set(sdk) - set(_UNSUPPORTED) - set(_VAS_OPTIONS)  # others would be dropped: refused
        if extra:
            raise ConfigError(f"unknown argument(s) {sorted(extra)} for messages.create.")
        if stop_sequences is not None and (isinstance(stop_sequences, str) or not isinstance(stop_sequences, list | tuple)):
            raise ConfigError("stop_sequences must be a list of strings.")
        prompt = to_prompt(messages, system)
        given = {"value_model": value_model, "beta": beta, "k": k, "mode": mode}
        vas = {key: v for key, v in given.items() if v is not None}
        opts = {**self._owner.defaults, **vas}
        value_fns = self._owner._value_fns(opts.get("value_model"))
        betas = opts.get("beta", 0)
        steered = bool(value_fns) and any(b != 0 for b in (betas if isinstance(betas, list | tuple) else [betas]))
        sampler_args = {"max_tokens": max_tokens, "temperature": temperature,
                        "stop": list(stop_sequences) if stop_sequences else None,
                        **{key: sdk[key] for key in _VAS_OPTIONS if key in sdk}}
        if steered or opts.get("mode", "auto") not in ("auto", None):
            from ..client import NOT_GIVEN

            vas_full = {key: vas.get(key, NOT_GIVEN) for key in ("value_model", "beta", "k", "mode")}
            return self._steered(model, prompt, sampler_args, vas_full, auto=opts.get("mode", "auto") == "auto")
        return self._plain(model, prompt, sampler_args, opts)

    def _steered(self, model: str, prompt: list[dict[str, Any]], args: dict[str, Any], vas: dict[str, Any],
                 *, auto: bool):
        """The client's sampler loop; in auto mode a model that turns out to reject prefill
        (the provider now remembers it) is asked again, and auto mode then picks rerank. The
        calls the first try made before the rejection are billed: they are added to the answer's
        usage and call count."""
        from .anthropic import SPENT
        from .anthropic_wire import PrefillRejectedError

        create = self._owner._create
        sink: list[Usage] = []
        token = SPENT.set(sink)
        try:
            result = create("messages", model, prompt, args, vas)
        except PrefillRejectedError:
            if not auto:
                raise
            lost = list(sink)  # the retry below records into the sink too
            return _with_spent(create("messages", model, prompt, args, vas), lost)
        finally:
            SPENT.reset(token)
        if not hasattr(result, "__await__"):
            return result

        async def later() -> Any:
            inner = SPENT.set(sink)
            try:
                return await result
            except PrefillRejectedError:
                if not auto:
                    raise
                lost = list(sink)
                return _with_spent(await create("messages", model, prompt, args, vas), lost)
            finally:
                SPENT.reset(inner)

        return later()

    def _plain(self, model: str, prompt: list[dict[str, Any]], args: dict[str, Any], opts: dict[str, Any]):
        """One base-model call (no steering), through the provider's `sample`."""
        from ..pricing import base_url_of, resolve_price
        from ..report import VASReport

        provider = self._owner.provider(model)
        temperature = 1.0 if args["temperature"] is None else args["temperature"]
        report = VASReport(mode="plain", model=model, k=0, betas=())
        prefix = Prefix(prompt)

        def finish(samples: Any, start: float) -> Any:
            report.usage = samples.usage
            report.api_calls = samples.usage.calls
            # One plain call, priced from the table (or the user's prices); None when unknown.
            price = resolve_price(model, base_url_of(provider), self._owner.prices, token_capped=True)
            report.price = price
            report.cost_usd = None if price is None else price.cost_of(samples.usage)
            report.time_total_s = report.time_api_s = time.perf_counter() - start
            c = samples.completions[0]
            return message_from(model, c.text, c.finish_reason, samples.usage, report)

        start = time.perf_counter()
        result = provider.sample(prefix, n=1, max_tokens=args["max_tokens"], temperature=temperature,
                                 stop=args["stop"], seed=args.get("seed", opts.get("seed")))
        if hasattr(result, "__await__"):
            async def later() -> Any:
                return finish(await result, start)

            return later()
        return finish(result, start)


def _with_spent(message: Any, spent: list[Usage]) -> Any:
    """`message` with the usage of calls a discarded first try made added to its usage and report."""
    from anthropic.types import Usage as AnthropicUsage

    lost = sum(spent, Usage())
    if not lost.calls:
        return message
    u = message.usage
    message.usage = AnthropicUsage(
        input_tokens=u.input_tokens + lost.prompt_tokens - lost.cached_tokens - lost.cache_write_tokens,
        output_tokens=u.output_tokens + lost.completion_tokens,
        cache_creation_input_tokens=(u.cache_creation_input_tokens or 0) + lost.cache_write_tokens,
        cache_read_input_tokens=(u.cache_read_input_tokens or 0) + lost.cached_tokens,
    )
    report = getattr(message, "vas", None)
    if report is not None:
        report.usage = report.usage + lost
        report.api_calls += lost.calls
    return message
