"""The OpenAI-shaped VAS client.

    from openai import OpenAI
    import vas_api

    client = vas_api.wrap(OpenAI(base_url=..., api_key=...), value_model="path/to/ckpt", beta=2.0)
    resp = client.chat.completions.create(model="...", messages=[...], max_tokens=48)
    resp.choices[0].message.content      # the SDK's own response types
    resp.vas                             # VASReport: calls, billed tokens, per-token trace
    for chunk in client.chat.completions.create(..., stream=True):   # ChatCompletionChunk
        ...

Calls mirror the SDK (`client.completions.create`, `client.chat.completions.create`, typed in
`vas_api.resources`); the VAS settings are keyword-only (`value_model`, `beta`, `k`, `mode`,
`seed`, draft bounds) and can be given once to `wrap` and overridden per request. SDK
arguments pass through as the SDK takes them: `openai.NOT_GIVEN` / `openai.omit` anywhere,
`stream=True` (vas_api.streaming), and `extra_headers`, `extra_query`, `extra_body`, `timeout`
on every underlying call (vas_api.call_options). Every argument is checked before the first
API call (vas_api.request_checks). The wrapped SDK client stays reachable as `.client`. A sync
client gives `VASClient`, an async one `AsyncVASClient`; both drive the same sampler objects.
"""

from __future__ import annotations

import copy
import time
import uuid
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import openai

from .budget import REQUEST_BUDGET_KEYS, request_meter
from .call_options import CallOptions
from .errors import BudgetExceededError, CapabilityError, CheckpointError, ConfigError
from .providers.anthropic_messages import AnthropicMessages, message_from
from .report import VASReport
from .request_checks import (
    drop_not_given,
    is_given,
    positive_int,
    real_number,
    seed_value,
    stop_strings,
    stream_flag,
)
from .resources import AsyncChat, AsyncCompletions, Chat, Completions
from .responses_api import AsyncResponses, Responses, response_from
from .sampler import (
    DraftLengthPolicy,
    SamplerSettings,
    SpeculativeSampler,
    Timings,
    TokenSampler,
    arun,
    choose_mode,
    run,
)
from .sampler.block import sequence_sampler, value_prompt_text
from .sampler.core import _SamplerBase
from .sampler.run import add_samplers, arun_all, price_report, run_all
from .sampler.settings import DEFAULT_K, SEQUENCE_KEYS
from .streaming import AsyncVASStream, StreamState, VASStream
from .types import Prefix, Prompt, ValueFunction
from .value_binding import bind_values
from .value_checks import probe_value_model

__all__ = ["wrap", "VASClient", "AsyncVASClient", "NOT_GIVEN"]

NOT_GIVEN: Any = openai.NOT_GIVEN
"""The openai SDK's sentinel for "use the default" (`openai.omit` works the same)."""

ValueSpec = ValueFunction | str | Path
_REQUEST_KEYS = ("value_model", "beta", "k", "mode", "seed", "draft_min", "draft_max", "restrict_top_k",
                 *REQUEST_BUDGET_KEYS, *SEQUENCE_KEYS)
_SDK_ARGS = ("max_tokens", "max_completion_tokens", "temperature", "top_p", "stop", "n", "seed", "user",
             "stream", "stream_options")
_PASS_THROUGH = ("extra_headers", "extra_query", "extra_body", "timeout")
# SDK arguments VAS cannot honour; refused at once rather than silently ignored.
_UNSUPPORTED = ("logprobs", "top_logprobs", "echo", "best_of", "logit_bias", "tools", "functions",
                "tool_choice", "response_format", "presence_penalty", "frequency_penalty")
_DEFAULT_MAX_TOKENS = 16  # the openai completions endpoint's default


def wrap(client: Any, **defaults: Any) -> VASClient | AsyncVASClient:
    """Wrap an openai `OpenAI` / `AsyncOpenAI` or anthropic `Anthropic` / `AsyncAnthropic` client
    (or a vas-api provider) for VAS.

    Args:
        client: openai.OpenAI / openai.AsyncOpenAI, anthropic.Anthropic / anthropic.AsyncAnthropic
            (use `client.messages.create`), or an object implementing
            vas_api.types.Provider / AsyncProvider (e.g. FakeProvider).
        **defaults: VAS defaults for every request: value_model, beta, k, mode, seed,
            draft_min, draft_max, restrict_top_k; and provider options chat_template, profile.

    Returns:
        AsyncVASClient for an async client or provider, otherwise VASClient.

    Raises:
        ConfigError: an unknown option.
    """
    import inspect

    is_async = type(client).__name__.startswith("Async") or (
        hasattr(client, "candidates") and inspect.iscoroutinefunction(client.candidates)
    )
    return (AsyncVASClient if is_async else VASClient)(client, **defaults)


@dataclass
class _Plan:
    """One validated request: everything the loops need, built before any API call."""

    kind: str
    model: str
    provider: Any
    value_fns: list[ValueFunction]
    samplers: list[_SamplerBase]
    report: VASReport
    stream: bool
    include_usage: bool
    meter: Any = None  # vas_api.budget.Meter: prices, caps, usage records


class _Base:
    def __init__(
        self,
        client: Any,
        *,
        chat_template: str | None = None,
        profile: Any = None,
        prices: Any = None,
        **defaults: Any,
    ) -> None:
        unknown = set(defaults) - set(_REQUEST_KEYS)
        if unknown:
            raise ConfigError(f"unknown VAS option(s) {sorted(unknown)}; known: {', '.join(_REQUEST_KEYS)}.")
        self.client = client
        self._given_defaults = drop_not_given(defaults)
        # k None: the endpoint's default (20, or its cap when smaller; sampler.settings.default_k)
        self.defaults = {"beta": 1.0, "k": None, "mode": "auto", "seed": None, **self._given_defaults}
        self._provider_options = {"chat_template": chat_template, "profile": profile}
        self.prices = prices  # user prices on top of vas_api/data/prices.json (vas_api.pricing)
        self._providers: dict[str, Any] = {}
        self._loaded: dict[str, ValueFunction] = {}
        self._policies: dict[tuple, DraftLengthPolicy] = {}
        self._resources()

    def _resources(self) -> None:
        raise NotImplementedError  # pragma: no cover - each client sets its own

    def with_options(self, **options: Any) -> Any:
        """A client with other options that keeps this one's value models and caches.

        Args:
            **options: VAS defaults (value_model, beta, k, mode, seed, draft_min, draft_max,
                restrict_top_k), and openai client options (timeout, max_retries,
                default_headers, default_query, api_key, base_url, ...), which go to the SDK
                client's own `with_options`.

        Returns:
            A new VASClient / AsyncVASClient sharing loaded value models, probed providers (for
            the same base_url) and draft-length statistics.

        Raises:
            ConfigError: SDK options for a client that is a vas-api provider, not an SDK client.
        """
        vas = {k: options.pop(k) for k in list(options) if k in _REQUEST_KEYS}
        new = copy.copy(self)
        new._given_defaults = {**self._given_defaults, **drop_not_given(vas)}
        new.defaults = {**self.defaults, **new._given_defaults}
        if options:
            if not hasattr(self.client, "with_options"):
                raise ConfigError(
                    f"{sorted(options)} are openai client options, but this client wraps "
                    f"{type(self.client).__name__}, not an openai client."
                )
            new.client = self.client.with_options(**options)
            same_server = "base_url" not in options
            new._providers = {m: _rebind(p, new.client) for m, p in self._providers.items()} if same_server else {}
        new._resources()
        return new

    # -- providers and value models ---------------------------------------------------------
    def provider(self, model: str) -> Any:
        """The provider adapter for `model` (built once per model and cached)."""
        if hasattr(self.client, "candidates"):  # already a provider
            return self.client
        if model not in self._providers:
            from .providers import connect

            opts = {k: v for k, v in self._provider_options.items() if v is not None}
            self._providers[model] = connect(self.client, model, **opts)
        return self._providers[model]

    def _value_fns(self, spec: Any) -> list[ValueFunction]:
        if not is_given(spec):
            return []
        specs = list(spec) if isinstance(spec, list | tuple) else [spec]
        return [self._load(s) for s in specs]

    def _load(self, spec: ValueSpec) -> ValueFunction:
        if isinstance(spec, str | Path):
            key = str(Path(spec).expanduser().resolve())
            if key not in self._loaded:
                if not Path(key).exists():
                    raise CheckpointError(
                        f"value model {str(spec)!r} does not exist. Pass the directory a `vas train` "
                        "run saved (it holds config.json and model.safetensors)."
                    )
                from estimators.baselines import load_value_function

                vf = load_value_function(key)
                probe_value_model(vf, key)  # NaN weights load without complaint: refuse them now
                self._loaded[key] = vf
            return self._loaded[key]
        if not (hasattr(spec, "score_candidates") and hasattr(spec, "values")):
            raise ConfigError(
                f"value_model {spec!r} is neither a checkpoint path nor a value function "
                "(an object with values() and score_candidates())."
            )
        return spec

    # -- one request ----------------------------------------------------------------------
    def _plan(self, kind: str, model: str, prompt: Prompt, sdk: dict[str, Any], vas: dict[str, Any]) -> _Plan:
        """Validate everything up front and build one sampler per choice."""
        vas = {**vas, **{k: sdk.pop(k) for k in REQUEST_BUDGET_KEYS if k in sdk}}
        vas = {**vas, **{k: sdk.pop(k) for k in SEQUENCE_KEYS if k in sdk}}  # block/rerank options
        options = CallOptions.of(**{k: sdk.pop(k) for k in _PASS_THROUGH if k in sdk})
        sdk = drop_not_given(sdk)
        bad = [k for k in _UNSUPPORTED if k in sdk and sdk[k] is not False]
        if bad:
            raise ConfigError(f"{', '.join(bad)} {'is' if len(bad) == 1 else 'are'} not supported by VAS requests; drop them.")
        extra = set(sdk) - {*_SDK_ARGS, *_UNSUPPORTED}
        if extra:
            raise ConfigError(f"unknown argument(s) {sorted(extra)} for a VAS request.")
        if not isinstance(model, str) or not model:
            raise ConfigError("model is required (the base model's name at the provider).")
        if is_given(sdk.get("user")) and not isinstance(sdk["user"], str):
            raise ConfigError(f"user = {sdk['user']!r}: use a string.")
        stream, include_usage = stream_flag(sdk.get("stream"), sdk.get("stream_options"))
        given_vas = drop_not_given(vas)
        opts = {**self.defaults, **given_vas}
        value_fns = self._value_fns(opts.get("value_model"))
        if not value_fns and ("beta" in given_vas or "beta" in self._given_defaults):
            beta = opts["beta"]
            if any(b != 0 for b in (beta if isinstance(beta, list | tuple) else [beta])):
                raise ConfigError(
                    f"beta = {beta!r} but no value model: pass value_model= (a checkpoint directory or a "
                    "value function) to steer, or beta=0 for the base model."
                )
        settings = self._settings(sdk, opts, len(value_fns))
        provider = self.provider(model)
        if options:
            if not hasattr(provider, "with_call_options"):
                raise ConfigError(
                    f"{type(provider).__name__} takes no extra_headers, extra_query, extra_body or "
                    "timeout; they apply to openai clients."
                )
            provider = provider.with_call_options(options)
        meter = request_meter(model, provider, prices=self.prices,
                              **{k: opts[k] for k in REQUEST_BUDGET_KEYS if k in opts})
        choice = choose_mode(opts["mode"], provider.profile, opts["k"])
        mode, settings = choice.mode, replace(settings, k=choice.k)
        restrict = opts.get("restrict_top_k")
        if restrict is not None and not isinstance(restrict, bool):
            raise ConfigError(f"restrict_top_k = {restrict!r}: use True, False or None (automatic).")
        if restrict is None:
            restrict = provider.profile.top_k_param
        elif restrict and not provider.profile.top_k_param and mode == "speculative":
            raise CapabilityError(f"{provider.profile.name} takes no top_k parameter; set restrict_top_k=False.")
        prompt_text = value_prompt_text(provider, prompt, mode)
        by_ids = _continues_with_ids(provider, prompt)
        n = positive_int("n", sdk.get("n"), default=1, hint="the number of choices")
        value_fns = bind_values(value_fns, prompt, prompt_text)  # each scores its own rendering
        samplers: list[_SamplerBase] = []
        for i in range(n):
            s = settings if settings.seed is None or i == 0 else replace(settings, seed=settings.seed + i)
            if mode == "token":
                samplers.append(TokenSampler(s, Prefix(prompt), prompt_text, by_ids=by_ids))
            elif mode in ("block", "rerank"):
                samplers.append(sequence_sampler(mode, s, Prefix(prompt), prompt_text))
            else:
                # The acceptance rate depends on all of these; the bounds must follow the request.
                key = (model, settings.betas, restrict, settings.temperature, settings.top_p, s.draft_min, s.draft_max)
                policy = self._policies.setdefault(key, DraftLengthPolicy(
                    m_min=s.draft_min, m_max=s.draft_max,
                    price_prompt=meter.price.input if meter.price else 1.0,
                    price_completion=meter.price.output if meter.price else 1.0,
                ))
                samplers.append(SpeculativeSampler(s, Prefix(prompt), prompt_text, restrict_top_k=restrict, policy=policy,
                                                     by_ids=by_ids))
        report = VASReport(mode=mode, model=model, k=settings.k, betas=settings.betas, mode_reason=choice.reason)
        return _Plan(kind, model, provider, value_fns, samplers, report, stream, include_usage, meter)

    @staticmethod
    def _settings(sdk: dict[str, Any], opts: dict[str, Any], n_models: int) -> SamplerSettings:
        """The sampler settings of a request, every number and type checked."""
        max_tokens = positive_int("max_tokens", sdk.get("max_tokens"), hint="the tokens to generate")
        max_completion = positive_int("max_completion_tokens", sdk.get("max_completion_tokens"),
                                      hint="the tokens to generate")
        if max_tokens and max_completion and max_tokens != max_completion:
            raise ConfigError(f"max_tokens = {max_tokens} and max_completion_tokens = {max_completion}: give one.")
        seed = seed_value(sdk["seed"]) if "seed" in sdk else seed_value(opts.get("seed"))
        draft = {k: positive_int(k, opts[k], hint="a draft length in tokens") for k in ("draft_min", "draft_max") if k in opts}
        return SamplerSettings(
            betas=_betas(opts["beta"], n_models),
            k=positive_int("k", opts["k"], default=DEFAULT_K, hint="20 is typical"),
            temperature=real_number("temperature", sdk.get("temperature"), default=1.0, low=0.0,
                                    hint="0 is greedy, 1 samples the target as it is"),
            top_p=real_number("top_p", sdk.get("top_p"), default=1.0, low=0.0, high=1.0, low_open=True),
            max_tokens=max_tokens or max_completion or _DEFAULT_MAX_TOKENS,
            stop=stop_strings(sdk.get("stop")),
            seed=seed,
            **{k: v for k, v in draft.items() if v is not None},
            **{k: opts[k] for k in SEQUENCE_KEYS if k in opts},  # block / rerank settings
        )

    @staticmethod
    def _report(plan: _Plan, per_choice: list[Timings], total_s: float) -> VASReport:
        """Fill the plan's report from its finished samplers and their timings."""
        report = plan.report
        add_samplers(report, plan.samplers)
        report.api_calls = sum(t.api_calls for t in per_choice)
        report.retries = sum(t.retries for t in per_choice)
        report.short_positions = sum(t.short_positions for t in per_choice)
        price_report(report, plan.meter)
        report.time_api_s = sum(t.api_s for t in per_choice)
        report.time_value_s = sum(t.value_s for t in per_choice)
        report.time_total_s = total_s
        return report

    @staticmethod
    def _stream_state(plan: _Plan) -> StreamState:
        return StreamState(plan.kind, plan.model, len(plan.samplers), plan.samplers[0].settings.stop, plan.include_usage)


class VASClient(_Base):
    """VAS over a synchronous openai client (or provider). See the module docstring.

    Attributes:
        client: the wrapped SDK client (or provider), untouched.
        completions, chat: the SDK-shaped resources (`vas_api.resources`); responses:
            `client.responses.create` (`vas_api.responses_api`).
    """

    def _resources(self) -> None:
        self.completions = Completions(self)
        self.chat = Chat(self)
        self.responses = Responses(self)  # openai Responses API shape: client.responses.create
        self.messages = AnthropicMessages(self)  # anthropic SDK shape: client.messages.create

    @staticmethod
    def _drive(plan: _Plan):
        """How this request drives one sampler (the one place that calls `run`)."""
        def drive(s: _SamplerBase, t: Timings, pause_when: Any = None) -> Timings:
            return run(s, plan.provider, plan.value_fns, t, pause_when=pause_when, meter=plan.meter)
        return drive

    def _create(self, kind: str, model: str, prompt: Prompt, sdk: dict[str, Any], vas: dict[str, Any]):
        plan = self._plan(kind, model, prompt, sdk, vas)
        drive = self._drive(plan)
        if plan.stream:
            return VASStream(self._stream_state(plan), plan.samplers, drive,
                             lambda per, total: self._report(plan, per, total))
        timings = Timings()
        start = time.perf_counter()
        stop = None
        try:
            run_all(plan.samplers, plan.provider, plan.value_fns, timings, meter=plan.meter)
        except BudgetExceededError as e:
            stop = _stop_all(plan.samplers, e)
        return _budget_outcome(plan, self._report(plan, [timings], time.perf_counter() - start), stop)


class AsyncVASClient(_Base):
    """VAS over an asyncio openai client (or provider): the n choices, and any number of
    concurrent requests, are in flight at once; value scoring runs off the event loop."""

    def _resources(self) -> None:
        self.completions = AsyncCompletions(self)
        self.chat = AsyncChat(self)
        self.responses = AsyncResponses(self)  # openai Responses API shape: client.responses.create
        self.messages = AnthropicMessages(self)  # anthropic SDK shape: client.messages.create

    @staticmethod
    def _drive(plan: _Plan):
        """How this request drives one sampler (the one place that calls `arun`)."""
        async def drive(s: _SamplerBase, t: Timings, pause_when: Any = None) -> Timings:
            return await arun(s, plan.provider, plan.value_fns, t, pause_when=pause_when, meter=plan.meter)
        return drive

    async def _create(self, kind: str, model: str, prompt: Prompt, sdk: dict[str, Any], vas: dict[str, Any]):
        plan = self._plan(kind, model, prompt, sdk, vas)
        drive = self._drive(plan)
        if plan.stream:
            return AsyncVASStream(self._stream_state(plan), plan.samplers, drive,
                                  lambda per, total: self._report(plan, per, total))
        samplers = plan.samplers
        per = [Timings() for _ in samplers]
        start = time.perf_counter()
        stop = None
        try:
            await arun_all(samplers, plan.provider, plan.value_fns, per, meter=plan.meter)
        except BudgetExceededError as e:  # the other choices were cancelled with it
            stop = _stop_all(samplers, e)
        return _budget_outcome(plan, self._report(plan, per, time.perf_counter() - start), stop)


# -- helpers ------------------------------------------------------------------------------
def _stop_all(samplers: list[_SamplerBase], exc: BudgetExceededError) -> BudgetExceededError:
    """Mark every unfinished sampler as stopped by the budget (finish_reason "budget")."""
    for s in samplers:
        if not s.done:
            s.state.finish_reason = "budget"
    return exc


def _betas(beta: Any, n_models: int) -> tuple[float, ...]:
    """One beta per value model: a single number is used for all of them."""
    if n_models == 0:
        return ()
    if isinstance(beta, list | tuple):
        if len(beta) != n_models:
            raise ConfigError(f"{len(beta)} betas for {n_models} value models; give one beta per value model.")
        return tuple(beta)
    return (beta,) * n_models


def _rebind(provider: Any, client: Any) -> Any:
    """The same provider (profile, chat template) over another SDK client."""
    new = copy.copy(provider)
    new.client = client
    return new


def _response(plan: _Plan, report: VASReport):
    """The SDK's own response type, with usage summed over every call and `.vas` attached."""
    from openai.types import Completion, CompletionChoice, CompletionUsage
    from openai.types.chat import ChatCompletion, ChatCompletionMessage
    from openai.types.chat.chat_completion import Choice

    u = report.usage
    usage = CompletionUsage(
        prompt_tokens=u.prompt_tokens, completion_tokens=u.completion_tokens, total_tokens=u.total_tokens,
        prompt_tokens_details={"cached_tokens": u.cached_tokens},
    )
    created, rid, model = int(time.time()), f"vas-{uuid.uuid4().hex[:16]}", plan.model
    samplers = plan.samplers
    if plan.kind == "messages":  # an anthropic.types.Message (providers/anthropic_messages.py)
        return message_from(model, samplers[0].response, samplers[0].finish_reason, u, report)
    if plan.kind == "responses":  # an openai.types.responses.Response (vas_api/responses_api.py)
        return response_from(plan, report)
    finish = [s.finish_reason if s.finish_reason in ("stop", "length", "budget") else "stop" for s in samplers]
    if plan.kind == "completion":
        choices = [CompletionChoice(index=i, text=s.response, finish_reason=_sdk_finish(f), logprobs=None)
                   for i, (s, f) in enumerate(zip(samplers, finish, strict=True))]
        resp = Completion(id=rid, choices=choices, created=created, model=model, object="text_completion", usage=usage)
    else:
        choices = [Choice(index=i, finish_reason=_sdk_finish(f), logprobs=None,
                          message=ChatCompletionMessage(role="assistant", content=s.response))
                   for i, (s, f) in enumerate(zip(samplers, finish, strict=True))]
        resp = ChatCompletion(id=rid, choices=choices, created=created, model=model, object="chat.completion", usage=usage)
    for c, f in zip(resp.choices, finish, strict=True):
        c.finish_reason = f  # "budget" is ours: the SDK's types validate only at construction
    resp.vas = report
    return resp


def _continues_with_ids(provider: Any, prompt: Prompt) -> bool:
    """Whether `provider` continues partial responses with token ids (it says so through an
    optional ``continues_with_ids(prompt)``; providers without it continue with text)."""
    ask = getattr(provider, "continues_with_ids", None)
    return bool(ask(prompt)) if callable(ask) else False


def _sdk_finish(f: str) -> str:
    return "length" if f == "budget" else f


def _budget_outcome(plan: _Plan, report: VASReport, stop: BudgetExceededError | None):
    """The SDK response; when a cap stopped the request, raise BudgetExceededError carrying it
    (or return it with finish_reason "budget" when the request asked for on_budget="partial")."""
    resp = _response(plan, report)
    if stop is not None:
        report.stopped_by_budget = str(stop)
        if plan.meter.on_budget == "raise":
            raise BudgetExceededError(
                f"{stop} The partial response is in .partial (finish_reason 'budget').",
                spent=stop.spent, limit=stop.limit, unit=stop.unit, partial=resp,
            ) from stop
    return resp
