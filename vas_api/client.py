"""The OpenAI-shaped VAS client.

    from openai import OpenAI
    import vas_api

    client = vas_api.wrap(OpenAI(base_url=..., api_key=...), value_model="path/to/ckpt", beta=2.0)
    resp = client.chat.completions.create(model="...", messages=[...], max_tokens=48)
    resp.choices[0].message.content      # the SDK's own response types
    resp.vas                             # VASReport: calls, billed tokens, per-token trace

Calls mirror the SDK (`client.completions.create`, `client.chat.completions.create`); the VAS
settings are keyword-only (`value_model`, `beta`, `k`, `mode`, `seed`, draft bounds) and can be
given once to `wrap` and overridden per request. The wrapped SDK client stays reachable as
`.client`. A sync client gives `VASClient`, an async one `AsyncVASClient`; both drive the same
sampler objects (vas_api.sampler).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .errors import CapabilityError, CheckpointError, ConfigError
from .report import VASReport
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
from .sampler.settings import DEFAULT_K, SEQUENCE_KEYS
from .types import Prefix, Prompt, ValueFunction

__all__ = ["wrap", "VASClient", "AsyncVASClient", "NOT_GIVEN"]


class _NotGiven:
    def __repr__(self) -> str:
        return "NOT_GIVEN"

    def __bool__(self) -> bool:
        return False


NOT_GIVEN: Any = _NotGiven()
"""Sentinel for "use the client's default" (None can be a meaningful value)."""

ValueSpec = ValueFunction | str | Path
_REQUEST_KEYS = ("value_model", "beta", "k", "mode", "seed", "draft_min", "draft_max", "restrict_top_k",
                 *SEQUENCE_KEYS)
# SDK arguments VAS cannot honour; refused at once rather than silently ignored.
_UNSUPPORTED = ("stream", "logprobs", "top_logprobs", "echo", "best_of", "logit_bias", "tools", "functions",
                "response_format", "presence_penalty", "frequency_penalty")


def wrap(client: Any, **defaults: Any) -> VASClient | AsyncVASClient:
    """Wrap an openai `OpenAI` or `AsyncOpenAI` client (or a vas-api provider) for VAS.

    Args:
        client: openai.OpenAI / openai.AsyncOpenAI, or an object implementing
            vas_api.types.Provider / AsyncProvider (e.g. FakeProvider).
        **defaults: VAS defaults for every request: value_model, beta, k, mode, seed,
            draft_min, draft_max, restrict_top_k; and provider options chat_template, profile.

    Returns:
        AsyncVASClient for an async client or provider, otherwise VASClient.
    """
    import inspect

    is_async = type(client).__name__.startswith("Async") or (
        hasattr(client, "candidates") and inspect.iscoroutinefunction(client.candidates)
    )
    return (AsyncVASClient if is_async else VASClient)(client, **defaults)


class _Base:
    def __init__(
        self,
        client: Any,
        *,
        chat_template: str | None = None,
        profile: Any = None,
        **defaults: Any,
    ) -> None:
        unknown = set(defaults) - set(_REQUEST_KEYS)
        if unknown:
            raise ConfigError(f"unknown VAS option(s) {sorted(unknown)}; known: {', '.join(_REQUEST_KEYS)}.")
        self.client = client
        # k None: the endpoint's default (20, or its cap when smaller; sampler.settings.default_k)
        self.defaults = {"beta": 1.0, "k": None, "mode": "auto", "seed": None, **defaults}
        self._provider_options = {"chat_template": chat_template, "profile": profile}
        self._providers: dict[str, Any] = {}
        self._loaded: dict[str, ValueFunction] = {}
        self._policies: dict[tuple, DraftLengthPolicy] = {}
        self.completions = _Completions(self)
        self.chat = _Chat(self)

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
        if spec is None or spec is NOT_GIVEN:
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

                self._loaded[key] = load_value_function(key)
            return self._loaded[key]
        if not (hasattr(spec, "score_candidates") and hasattr(spec, "values")):
            raise ConfigError(
                f"value_model {spec!r} is neither a checkpoint path nor a value function "
                "(an object with values() and score_candidates())."
            )
        return spec

    # -- one request ----------------------------------------------------------------------
    def _plan(self, model: str, prompt: Prompt, sdk: dict[str, Any], vas: dict[str, Any]):
        """Validate everything up front and build one sampler per choice."""
        vas = {**vas, **{k: sdk.pop(k) for k in SEQUENCE_KEYS if k in sdk}}  # block/rerank options
        bad = [k for k in _UNSUPPORTED if sdk.get(k) not in (None, False, NOT_GIVEN)]
        if bad:
            raise ConfigError(f"{', '.join(bad)} {'is' if len(bad) == 1 else 'are'} not supported by VAS requests; drop them.")
        extra = set(sdk) - {"max_tokens", "max_completion_tokens", "temperature", "top_p", "stop", "n", "seed", "user", *_UNSUPPORTED}
        if extra:
            raise ConfigError(f"unknown argument(s) {sorted(extra)} for a VAS request.")
        if not model:
            raise ConfigError("model is required (the base model's name at the provider).")
        if not prompt:
            raise ConfigError("the prompt (or messages) is empty; give the base model something to continue.")
        opts = {**self.defaults, **{k: v for k, v in vas.items() if v is not NOT_GIVEN}}
        value_fns = self._value_fns(opts.get("value_model"))
        betas = _betas(opts["beta"], len(value_fns))
        stop = sdk.get("stop")
        settings = SamplerSettings(
            betas=betas,
            k=DEFAULT_K if opts["k"] is None else opts["k"],
            temperature=1.0 if sdk.get("temperature") is None else sdk["temperature"],
            top_p=1.0 if sdk.get("top_p") is None else sdk["top_p"],
            max_tokens=sdk.get("max_tokens") or sdk.get("max_completion_tokens") or 16,
            stop=(stop,) if isinstance(stop, str) else tuple(stop or ()),
            seed=sdk.get("seed") if sdk.get("seed") is not None else opts["seed"],
            **{k: opts[k] for k in ("draft_min", "draft_max", *SEQUENCE_KEYS) if k in opts},
        )
        provider = self.provider(model)
        choice = choose_mode(opts["mode"], provider.profile, opts["k"])
        mode, settings = choice.mode, _replace(settings, k=choice.k)
        restrict = opts.get("restrict_top_k")
        if restrict is None:
            restrict = provider.profile.top_k_param
        elif restrict and not provider.profile.top_k_param and mode == "speculative":
            raise CapabilityError(f"{provider.profile.name} takes no top_k parameter; set restrict_top_k=False.")
        prompt_text = value_prompt_text(provider, prompt, mode)
        n = sdk.get("n") or 1
        if not isinstance(n, int) or n < 1:
            raise ConfigError(f"n = {n!r}: use a positive integer.")
        samplers: list[_SamplerBase] = []
        for i in range(n):
            s = settings if settings.seed is None or i == 0 else _reseed(settings, settings.seed + i)
            if mode == "token":
                samplers.append(TokenSampler(s, Prefix(prompt), prompt_text))
            elif mode in ("block", "rerank"):
                samplers.append(sequence_sampler(mode, s, Prefix(prompt), prompt_text))
            else:
                # The acceptance rate depends on all of these; the bounds must follow the request.
                key = (model, betas, restrict, settings.temperature, settings.top_p, s.draft_min, s.draft_max)
                policy = self._policies.setdefault(key, DraftLengthPolicy(
                    m_min=s.draft_min, m_max=s.draft_max,
                    price_prompt=provider.profile.price_prompt, price_completion=provider.profile.price_completion,
                ))
                samplers.append(SpeculativeSampler(s, Prefix(prompt), prompt_text, restrict_top_k=restrict, policy=policy))
        report = VASReport(mode=mode, model=model, k=settings.k, betas=betas, mode_reason=choice.reason)
        return provider, value_fns, samplers, report

    @staticmethod
    def _finish(kind: str, model: str, samplers: list[_SamplerBase], report: VASReport, timings: Timings, provider: Any):
        for s in samplers:
            report.usage = report.usage + s.usage
            report.traces.append(list(s.steps))
            if isinstance(s, SpeculativeSampler):
                report.drafted += s.drafted
                report.tested += s.tested
                report.accepted += s.accepted
                report.resampled += s.resampled
            if hasattr(s, "pool_size"):  # block / rerank
                report.add_pool(s)
        report.api_calls = timings.api_calls
        report.cost_usd = provider.profile.cost(report.usage)
        report.time_api_s, report.time_value_s, report.time_total_s = timings.api_s, timings.value_s, timings.total_s
        return _response(kind, model, samplers, report)


class VASClient(_Base):
    """VAS over a synchronous openai client (or provider). See the module docstring."""

    def _create(self, kind: str, model: str, prompt: Prompt, sdk: dict[str, Any], vas: dict[str, Any]):
        provider, value_fns, samplers, report = self._plan(model, prompt, sdk, vas)
        timings = Timings()
        start = time.perf_counter()
        for s in samplers:
            run(s, provider, value_fns, timings)
        timings.total_s = time.perf_counter() - start
        return self._finish(kind, model, samplers, report, timings, provider)


class AsyncVASClient(_Base):
    """VAS over an asyncio openai client (or provider): the n choices, and any number of
    concurrent requests, are in flight at once; value scoring runs off the event loop."""

    async def _create(self, kind: str, model: str, prompt: Prompt, sdk: dict[str, Any], vas: dict[str, Any]):
        provider, value_fns, samplers, report = self._plan(model, prompt, sdk, vas)
        per = [Timings() for _ in samplers]
        start = time.perf_counter()
        await asyncio.gather(*(arun(s, provider, value_fns, t) for s, t in zip(samplers, per, strict=True)))
        timings = Timings(
            api_s=sum(t.api_s for t in per), value_s=sum(t.value_s for t in per),
            total_s=time.perf_counter() - start, api_calls=sum(t.api_calls for t in per),
        )
        return self._finish(kind, model, samplers, report, timings, provider)


class _Completions:
    """`client.completions.create(...)`: raw-prompt completions."""

    def __init__(self, owner: _Base) -> None:
        self._owner = owner

    def create(
        self,
        *,
        model: str,
        prompt: str,
        value_model: Any = NOT_GIVEN,
        beta: Any = NOT_GIVEN,
        k: Any = NOT_GIVEN,
        mode: Any = NOT_GIVEN,
        draft_min: Any = NOT_GIVEN,
        draft_max: Any = NOT_GIVEN,
        restrict_top_k: Any = NOT_GIVEN,
        **sdk: Any,
    ):
        """Like `openai.OpenAI().completions.create`, steered by the value model(s).

        Args:
            model, prompt, max_tokens, temperature, top_p, stop, n, seed: as in the SDK.
            value_model: a checkpoint directory, a value function, or a list of them.
            beta: one number, or one per value model (0 = the base model).
            k: candidates per position (default: 20, or the endpoint's cap when smaller).
            mode: "auto" (the best the endpoint allows: speculative > block > rerank),
                "speculative", "token", "block" or "rerank"; `.vas.mode_reason` says why.
            draft_min, draft_max, restrict_top_k: speculative-mode controls.
            block_len, block_n: block mode's tokens per block (L) and blocks per step (n).
            rerank_n, rerank: rerank mode's pool size (N) and "sample" / "argmax"; with the
                SDK's n, every choice is drawn from its own pool of N.

        Returns:
            openai.types.Completion with a `.vas` VASReport (a coroutine on AsyncVASClient).

        Raises:
            ConfigError, CapabilityError, CheckpointError, ProviderError: before any call
            where the request itself is wrong.
        """
        if not isinstance(prompt, str):
            raise ConfigError("prompt must be one string (for chat messages use client.chat.completions.create).")
        vas = dict(value_model=value_model, beta=beta, k=k, mode=mode, draft_min=draft_min,
                   draft_max=draft_max, restrict_top_k=restrict_top_k)
        return self._owner._create("completion", model, prompt, sdk, vas)


class _ChatCompletions:
    """`client.chat.completions.create(...)`: chat messages, continued as the assistant."""

    def __init__(self, owner: _Base) -> None:
        self._owner = owner

    def create(
        self,
        *,
        model: str,
        messages: Sequence[dict[str, Any]],
        value_model: Any = NOT_GIVEN,
        beta: Any = NOT_GIVEN,
        k: Any = NOT_GIVEN,
        mode: Any = NOT_GIVEN,
        draft_min: Any = NOT_GIVEN,
        draft_max: Any = NOT_GIVEN,
        restrict_top_k: Any = NOT_GIVEN,
        **sdk: Any,
    ):
        """Like `openai.OpenAI().chat.completions.create`, steered by the value model(s).

        Same VAS options as `completions.create`. Returns openai.types.chat.ChatCompletion
        with a `.vas` VASReport. On an endpoint that cannot continue a partial response
        (OpenAI's hosted chat models) mode="auto" runs rerank mode; an explicit token-level mode
        raises CapabilityError at once, naming the modes that work.
        """
        msgs = list(messages or [])
        if not msgs or any(not isinstance(m, dict) or "role" not in m for m in msgs):
            raise ConfigError("messages must be a non-empty list of {'role': ..., 'content': ...} dicts.")
        vas = dict(value_model=value_model, beta=beta, k=k, mode=mode, draft_min=draft_min,
                   draft_max=draft_max, restrict_top_k=restrict_top_k)
        return self._owner._create("chat", model, msgs, sdk, vas)


class _Chat:
    def __init__(self, owner: _Base) -> None:
        self.completions = _ChatCompletions(owner)


# -- helpers ------------------------------------------------------------------------------
def _betas(beta: Any, n_models: int) -> tuple[float, ...]:
    """One beta per value model: a single number is used for all of them."""
    if n_models == 0:
        return ()
    if isinstance(beta, list | tuple):
        if len(beta) != n_models:
            raise ConfigError(f"{len(beta)} betas for {n_models} value models; give one beta per value model.")
        return tuple(beta)
    return (beta,) * n_models


def _reseed(settings: SamplerSettings, seed: int) -> SamplerSettings:
    return _replace(settings, seed=seed)


def _replace(settings: SamplerSettings, **changes: Any) -> SamplerSettings:
    from dataclasses import replace

    return replace(settings, **changes)


def _response(kind: str, model: str, samplers: list[_SamplerBase], report: VASReport):
    """The SDK's own response type, with usage summed over every call and `.vas` attached."""
    from openai.types import Completion, CompletionChoice, CompletionUsage
    from openai.types.chat import ChatCompletion, ChatCompletionMessage
    from openai.types.chat.chat_completion import Choice

    u = report.usage
    usage = CompletionUsage(
        prompt_tokens=u.prompt_tokens, completion_tokens=u.completion_tokens, total_tokens=u.total_tokens,
        prompt_tokens_details={"cached_tokens": u.cached_tokens},
    )
    created, rid = int(time.time()), f"vas-{uuid.uuid4().hex[:16]}"
    finish = [s.finish_reason if s.finish_reason in ("stop", "length") else "stop" for s in samplers]
    if kind == "completion":
        choices = [CompletionChoice(index=i, text=s.response, finish_reason=f, logprobs=None)
                   for i, (s, f) in enumerate(zip(samplers, finish, strict=True))]
        resp = Completion(id=rid, choices=choices, created=created, model=model, object="text_completion", usage=usage)
    else:
        choices = [Choice(index=i, finish_reason=f, logprobs=None,
                          message=ChatCompletionMessage(role="assistant", content=s.response))
                   for i, (s, f) in enumerate(zip(samplers, finish, strict=True))]
        resp = ChatCompletion(id=rid, choices=choices, created=created, model=model, object="chat.completion", usage=usage)
    resp.vas = report
    return resp

