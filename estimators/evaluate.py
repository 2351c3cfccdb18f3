"""Held-out metrics for any value function (learned, residual, or a reward on the prefix).

For each scored sample with final reward R and a fraction f of its completion (see
`estimators.states`: the state after floor(f * L) value-model tokens), the value function
scores the text prompt_text + completion[:that state] through its public `values(texts)`, where
prompt_text is the value function's own rendering of the prompt (`render_prompt`, told where it
ends) or, for one without, the base's rendered prompt text:
- mse@f: mean of (V - R)^2 over samples (how well V predicts the reward it will get);
- spearman@f: Spearman rank correlation between V and R over samples.
The headline numbers `mse` and `spearman` are those at f = 0.5 ("half the completion").
f = "end" scores the end state: V(text + END_OF_TEXT) for a sample the base finished
(finish_reason "stop"), V(text) for one cut at max_tokens; a value function without
`scores_end_of_text` sees the text without the marker (as the sampler gives it), so its "end"
figures equal f = 1. A model trained with end states learns R there.
At f = 1 a reward-on-the-prefix baseline is exact by construction; at f = 0 every sample of a
prompt shares one state, so only the prompts are ranked.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from vas_api.errors import DataError
from vas_api.types import END_OF_TEXT, ValueFunction
from vas_api.value_binding import text_for

from .data import Sample
from .prompt_format import prompt_text_for, values_for
from .states import split_states

__all__ = ["END", "spearman", "spearman_within", "evaluate_value", "values_at", "metrics_of", "json_safe", "DEFAULT_FRACTIONS"]

DEFAULT_FRACTIONS = (0.0, 0.5, 1.0)

END = "end"
"""The fraction that names the end state (see the module docstring)."""

Fraction = float | str


def _key(fraction: Fraction) -> str:
    return fraction if isinstance(fraction, str) else f"{fraction:g}"


def _ranks(values: Sequence[float]) -> list[float]:
    """1-based ranks; ties share their average rank."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman rank correlation with average ranks for ties (as scipy.stats.spearmanr).

    Returns:
        The correlation in [-1, 1], or NaN when either side is constant or has < 2 items.
    """
    if len(x) != len(y):
        raise ValueError(f"spearman needs equal lengths, got {len(x)} and {len(y)}")
    if len(x) < 2:
        return math.nan
    rx, ry = _ranks(x), _ranks(y)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry, strict=True))
    vx = sum((a - mx) ** 2 for a in rx)
    vy = sum((b - my) ** 2 for b in ry)
    if vx == 0 or vy == 0:
        return math.nan
    return cov / math.sqrt(vx * vy)


def spearman_within(x: Sequence[float], y: Sequence[float], groups: Sequence[Any]) -> float:
    """Mean Spearman correlation within groups (e.g. the samples of one prompt).

    Steering only ever compares continuations of the same prefix, so what a value model must get
    right is the order *within* a prompt; the pooled `spearman` also credits it for ranking the
    prompts, which steering never uses. Groups with fewer than 3 items, or where either side is
    constant, are left out.

    Returns:
        The unweighted mean over the groups that count, or NaN when none does.

    Raises:
        ValueError: the three sequences differ in length.
    """
    if not len(x) == len(y) == len(groups):
        raise ValueError(f"spearman_within needs equal lengths, got {len(x)}, {len(y)}, {len(groups)}")
    by_group: dict[Any, list[int]] = {}
    for i, g in enumerate(groups):
        by_group.setdefault(g, []).append(i)
    per_group = [spearman([x[i] for i in idx], [y[i] for i in idx])
                 for idx in by_group.values() if len(idx) >= 3]
    per_group = [r for r in per_group if not math.isnan(r)]
    return sum(per_group) / len(per_group) if per_group else math.nan


def _as_floats(values: Any) -> list[float]:
    if hasattr(values, "detach"):  # a torch tensor
        values = values.detach().float().cpu().tolist()
    return [float(v) for v in values]


def values_at(
    value_fn: ValueFunction,
    samples: Sequence[Sample],
    tokenizer: Any,
    fraction: Fraction,
    *,
    batch_size: int = 32,
    splits: Sequence[Any] | None = None,
) -> list[float]:
    """V at the state `fraction` of the way through each sample's completion.

    Args:
        value_fn: anything with `values(texts)`.
        samples: the samples (rewards not needed).
        tokenizer: the fast tokenizer that defines the states.
        fraction: 0 = the prompt alone, 0.5 = half the completion, 1 = the finished text,
            "end" = the end state (text + END_OF_TEXT for finished samples).
        batch_size: texts per `values` call.
        splits: precomputed `split_states` of the samples on the value function's prompt texts
            (optional).

    Returns:
        One float per sample.

    Raises:
        DataError: the value function returned the wrong number of values, or `fraction` is
            neither a number nor "end".
    """
    if isinstance(fraction, str) and fraction != END:
        raise DataError(f'a fraction is a number in [0, 1] or "end", not {fraction!r}')
    prompts = [prompt_text_for(value_fn, s.prompt, s.prompt_text) for s in samples]
    if splits is None:
        splits = [split_states(tokenizer, p, s.completion) for p, s in zip(prompts, samples, strict=True)]
    if fraction == END:
        responses = [text_for(value_fn, s.completion + (END_OF_TEXT if s.finish_reason == "stop" else ""))
                     for s in samples]
    else:
        responses = [
            s.completion[: sp.ends[sp.state_at(fraction)]] if sp else ""  # type: ignore[arg-type]
            for s, sp in zip(samples, splits, strict=True)
        ]
    values: list[float] = []
    for i in range(0, len(samples), batch_size):
        part = slice(i, i + batch_size)
        values += _as_floats(values_for(value_fn, prompts[part], responses[part]))
    if len(values) != len(samples):
        raise DataError(f"value function returned {len(values)} values for {len(samples)} texts")
    return values


def evaluate_value(
    value_fn: ValueFunction,
    samples: Sequence[Sample],
    tokenizer: Any,
    *,
    fractions: Sequence[Fraction] = DEFAULT_FRACTIONS,
    batch_size: int = 32,
) -> dict[str, float]:
    """Held-out MSE and Spearman of a value function against the samples' final rewards.

    Args:
        value_fn: anything with `values(texts)`.
        samples: scored samples (each needs `reward`).
        tokenizer: the fast tokenizer that defines the states (the value model's; the same one
            for every value function being compared, so they are scored on the same texts).
        fractions: fractions of the completion to score at ("end": the end state).
        batch_size: texts per `values` call.

    Returns:
        {"n": ..., "mse": ..., "spearman": ..., "mse@0.5": ..., "spearman@0.5": ..., ...};
        the bare keys are the f = 0.5 figures when 0.5 is among the fractions.

    Raises:
        DataError: no samples, or a sample without a reward.
    """
    if not samples:
        raise DataError("no samples to evaluate on")
    unscored = sum(s.reward is None for s in samples)
    if unscored:
        raise DataError(f"{unscored} of {len(samples)} samples have no reward; pass a reward spec")
    splits = [split_states(tokenizer, prompt_text_for(value_fn, s.prompt, s.prompt_text), s.completion)
              for s in samples]
    values = {f: values_at(value_fn, samples, tokenizer, f, batch_size=batch_size, splits=splits)
              for f in fractions}
    return metrics_of(values, [float(s.reward) for s in samples])  # type: ignore[arg-type]


def metrics_of(values: Mapping[Fraction, Sequence[float]], rewards: Sequence[float]) -> dict[str, float]:
    """The metrics of `evaluate_value` from values already computed: {fraction: one V per sample}.

    Lets a caller that also needs the values themselves (a bootstrap, a plot) score each state
    once.
    """
    metrics: dict[str, float] = {"n": float(len(rewards))}
    for f, vals in values.items():
        metrics[f"mse@{_key(f)}"] = sum((v - r) ** 2 for v, r in zip(vals, rewards, strict=True)) / len(vals)
        metrics[f"spearman@{_key(f)}"] = spearman(vals, rewards)
    if 0.5 in values:
        metrics["mse"], metrics["spearman"] = metrics["mse@0.5"], metrics["spearman@0.5"]
    return metrics


def json_safe(value: Any) -> Any:
    """`value` with every NaN (a Spearman over constant values) as None: strict JSON has no NaN."""
    if isinstance(value, float) and value != value:
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value
