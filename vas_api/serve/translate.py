"""Pure translation between HTTP bodies and the VAS client: a request body into `create`
keyword arguments, a VASReport and SDK objects into JSON. No I/O; tested on its own.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

from ..sampler.settings import MODES, SEQUENCE_KEYS
from .errors import APIError

__all__ = ["Named", "request_kwargs", "report_json", "step_json", "jsonable"]

# OpenAI body fields a VAS request takes (the client refuses the ones it cannot honour with a
# clear message); anything else is refused here, so a body can never reach the client's
# keyword-only VAS options (value_model= with a path) or its pass-through options (extra_*).
_OPENAI_FIELDS = ("max_tokens", "max_completion_tokens", "temperature", "top_p", "stop", "n", "seed",
                  "user", "stream", "stream_options",
                  "logprobs", "top_logprobs", "echo", "best_of", "logit_bias", "tools", "functions",
                  "tool_choice", "response_format", "presence_penalty", "frequency_penalty")
_VAS_OPTIONS = ("mode", "k", "seed", "draft_min", "draft_max", "restrict_top_k",
                "max_cost_usd", "max_total_tokens", "on_budget", *SEQUENCE_KEYS)
# Counts that multiply the work of one request (choices, candidate blocks, whole responses per
# choice): without a cap one body ({"n": 1000000}) holds a slot, and with an in-process
# provider the event loop, for as long as it runs. max_tokens has its own cap (config).
COUNT_LIMITS = {"n": 16, "vas.block_n": 64, "vas.rerank_n": 64}


class Named:
    """The value models a server holds: name -> (value function, default beta)."""

    def __init__(self, models: Mapping[str, tuple[Any, float]]) -> None:
        self.models = dict(models)

    def choose(self, beta: Any, names: Any) -> tuple[list[str], list[Any], list[float]]:
        """(names, value functions, betas) of one request.

        Args:
            beta: the body's ``vas.beta``: {NAME: number} (others keep their default), one
                number for every chosen model, or None (the defaults).
            names: the body's ``vas.value_model``: a name or list of names to use (None: all).

        Models whose beta comes out 0 are left out: beta * (V - mean V) is then 0, so scoring
        them would change nothing but the time taken.

        Raises:
            APIError: 400 for an unknown name or a beta that is not a finite number.
        """
        chosen = list(self.models)
        if names is not None:
            listed = [names] if isinstance(names, str) else names
            if not isinstance(listed, list) or not all(isinstance(n, str) for n in listed):
                raise APIError(400, "vas.value_model must be a value model name or a list of names.",
                               param="vas.value_model")
            for n in listed:
                self._known(n, "vas.value_model")
            chosen = list(dict.fromkeys(listed))
        betas = {n: self.models[n][1] for n in chosen}
        if isinstance(beta, Mapping):
            for n, b in beta.items():
                self._known(n, f"vas.beta.{n}")
                if n not in betas:  # naming a beta selects the model too
                    chosen.append(n)
                betas[n] = _finite(b, f"vas.beta.{n}")
        elif beta is not None:
            b = _finite(beta, "vas.beta")
            if b != 0 and not chosen:
                raise APIError(400, f"vas.beta = {beta!r} but this server has no value model to steer with.",
                               param="vas.beta")
            betas = dict.fromkeys(chosen, b)
        used = [n for n in chosen if betas[n] != 0]
        return used, [self.models[n][0] for n in used], [betas[n] for n in used]

    def _known(self, name: str, param: str) -> None:
        if name not in self.models:
            have = ", ".join(self.models) or "none"
            raise APIError(400, f"unknown value model {name!r}; this server has: {have}.",
                           param=param, code="value_model_not_found")


def _finite(x: Any, param: str) -> float:
    if isinstance(x, bool) or not isinstance(x, int | float) or not math.isfinite(x):
        raise APIError(400, f"{param} = {x!r}: give a finite number.", param=param)
    return float(x)


def request_kwargs(
    body: Any, kind: str, named: Named, *, default_k: int, default_max_tokens: int, max_tokens_limit: int
) -> tuple[dict[str, Any], list[str]]:
    """`create` keyword arguments for one request body, and the value model names it uses.

    Args:
        body: the parsed JSON body.
        kind: "chat" (messages) or "completion" (prompt).
        named: the server's value models.
        default_k, default_max_tokens: used when the body does not say.
        max_tokens_limit: the most tokens one request may ask for.

    Raises:
        APIError: 400 for a body that is not an object, misses its prompt, carries fields no
            VAS request takes, or names value models this server does not have.
    """
    if not isinstance(body, dict):
        raise APIError(400, "the request body must be a JSON object.")
    try:  # a lone surrogate ("\\ud800") parses as JSON but no upstream can be sent it
        json.dumps(body, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError as exc:
        raise APIError(400, f"the body holds text that is not valid Unicode ({exc.reason}: "
                       f"{exc.object[exc.start:exc.end]!r}); send UTF-8 text.") from None
    text_key = "messages" if kind == "chat" else "prompt"
    if text_key not in body:
        raise APIError(400, f"'{text_key}' is required.", param=text_key)
    vas = body.get("vas", {})
    if vas is None:
        vas = {}
    if not isinstance(vas, dict):
        raise APIError(400, "vas must be an object, e.g. {\"beta\": {\"sentiment\": 2}}.", param="vas")
    unknown = sorted(set(body) - {"model", text_key, "vas", *_OPENAI_FIELDS})
    if unknown:
        raise APIError(400, f"unknown field(s) {unknown}; VAS options go in the \"vas\" object.",
                       param=unknown[0])
    bad = sorted(set(vas) - {"beta", "value_model", *_VAS_OPTIONS})
    if bad:
        raise APIError(400, f"unknown vas option(s) {bad}; known: beta, value_model, {', '.join(_VAS_OPTIONS)}.",
                       param=f"vas.{bad[0]}")
    if "mode" in vas and vas["mode"] not in MODES:
        raise APIError(400, f"vas.mode = {vas['mode']!r}: use one of {', '.join(MODES)}.", param="vas.mode")
    for param, limit in COUNT_LIMITS.items():
        v = (vas if param.startswith("vas.") else body).get(param.removeprefix("vas."))
        if isinstance(v, int) and not isinstance(v, bool) and v > limit:
            raise APIError(400, f"{param} = {v}: this server allows at most {limit}.", param=param)
    names, fns, betas = named.choose(vas.get("beta"), vas.get("value_model"))
    kwargs: dict[str, Any] = {k: body[k] for k in _OPENAI_FIELDS if k in body}
    kwargs[text_key] = body[text_key]
    kwargs.update({k: vas[k] for k in _VAS_OPTIONS if k in vas})
    kwargs["value_model"] = fns
    kwargs["beta"] = betas if fns else 0.0
    kwargs.setdefault("k", default_k)
    if "max_tokens" not in kwargs and "max_completion_tokens" not in kwargs:
        kwargs["max_tokens"] = default_max_tokens
    for key in ("max_tokens", "max_completion_tokens"):
        v = kwargs.get(key)
        if isinstance(v, int) and not isinstance(v, bool) and v > max_tokens_limit:
            raise APIError(400, f"{key} = {v}: this server allows at most {max_tokens_limit}.", param=key)
    if kwargs.get("stream"):  # the last chunk always carries usage and the report
        opts = kwargs.get("stream_options")
        kwargs["stream_options"] = {**(opts if isinstance(opts, dict) else {}), "include_usage": True}
    return kwargs, names


def jsonable(x: float | None) -> float | None:
    """A float JSON can hold (NaN and infinities become null)."""
    return x if x is None or math.isfinite(x) else None


def step_json(step: Any, full: bool = True) -> dict[str, Any]:
    """One committed token of a trace as JSON."""
    out: dict[str, Any] = {"text": step.text, "shift": jsonable(float(step.shift))}
    if full:
        out.update(prob=jsonable(float(step.prob)), base_logprob=jsonable(float(step.base_logprob)),
                   source=step.source)
    return out


def report_json(report: Any, value_models: Sequence[str]) -> dict[str, Any]:
    """The VAS report of a response as JSON (the ``"vas"`` object of the contract)."""
    u = report.usage
    out: dict[str, Any] = {
        "mode": report.mode,
        "mode_reason": report.mode_reason,
        "model": report.model,
        "k": report.k,
        "value_models": list(value_models),
        "betas": dict(zip(value_models, (float(b) for b in report.betas), strict=False)),
        "api_calls": report.api_calls,
        "usage": {"prompt_tokens": u.prompt_tokens, "completion_tokens": u.completion_tokens,
                  "cached_tokens": u.cached_tokens, "total_tokens": u.prompt_tokens + u.completion_tokens},
        "cost_usd": jsonable(report.cost_usd),
        "stopped_by_budget": report.stopped_by_budget,
        "continuation": report.continuation,
        "time_s": {"total": report.time_total_s, "api": report.time_api_s, "value": report.time_value_s},
        "tokens": [[step_json(s) for s in trace] for trace in report.traces],
    }
    if report.drafted:
        out["speculative"] = {"drafted": report.drafted, "tested": report.tested,
                              "accepted": report.accepted, "resampled": report.resampled}
    if report.pool_size:
        out["pool"] = {"size": report.pool_size, "ess": [jsonable(e) for e in report.ess],
                       "block_len": report.block_len, "blocks": report.blocks}
    return out
