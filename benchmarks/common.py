"""Shared pieces of the sampler benchmarks: the task, the value model, runs, and result files.

The task is the estimators benchmark's: SmolLM2-135M-Instruct on the embedded local server as
the base, VADER compound of the completion as the reward, the 32 held-out prompts (never used to
train or tune anything), responses of up to 48 tokens.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
HELDOUT = ROOT / "estimators" / "data" / "heldout_prompts.txt"
MAX_TOKENS = 48


def machine() -> str:
    """A one-line description of this machine, for result files."""
    return f"{platform.machine()} {os.cpu_count()} CPUs, {platform.python_version()}, no GPU"


def sem_of(values: Sequence[float]) -> float:
    """Standard error of the mean (NaN for fewer than two values)."""
    return statistics.stdev(values) / len(values) ** 0.5 if len(values) > 1 else float("nan")


def add_threads_option(ap: Any) -> None:
    """`--threads` (torch intra-op threads for the value models; default 1)."""
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads for the value models (the local server takes another core; "
                         "2 threads beside it on a busy 2-core machine were 10-25x slower)")


def set_threads(n: int) -> None:
    """Apply `--threads` (0 or None: leave torch's default)."""
    if n:
        import torch

        torch.set_num_threads(n)


def heldout_prompts(limit: int | None = None) -> list[list[dict[str, str]]]:
    """The held-out prompts as chat messages (the same wrapping the collection step used)."""
    from estimators.collect import as_prompt

    lines = [ln.strip() for ln in HELDOUT.read_text().splitlines() if ln.strip()]
    return [as_prompt(ln) for ln in lines[:limit]]


def vader() -> Callable[[Sequence[str]], list[float]]:
    """The true reward: VADER compound of each completion."""
    from estimators.rewards import VaderReward

    reward = VaderReward()
    return lambda completions: reward([""] * len(completions), list(completions))


@dataclass
class RunStats:
    """Aggregates of one setting over the prompts."""

    label: str
    responses: int = 0
    tokens: int = 0
    api_calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    drafted: int = 0
    tested: int = 0
    accepted: int = 0
    time_total_s: float = 0.0
    time_api_s: float = 0.0
    time_value_s: float = 0.0
    rewards: list[float] = field(default_factory=list)

    def add(self, report: Any, reward: float) -> None:
        self.responses += 1
        self.tokens += report.tokens
        self.api_calls += report.api_calls
        self.prompt_tokens += report.usage.prompt_tokens
        self.completion_tokens += report.usage.completion_tokens
        self.drafted += report.drafted
        self.tested += report.tested
        self.accepted += report.accepted
        self.time_total_s += report.time_total_s
        self.time_api_s += report.time_api_s
        self.time_value_s += report.time_value_s
        self.rewards.append(reward)

    def row(self) -> dict[str, Any]:
        n = max(1, self.responses)
        mean = statistics.fmean(self.rewards) if self.rewards else float("nan")
        sem = sem_of(self.rewards)
        return {
            "label": self.label,
            "responses": self.responses,
            "mean_reward": round(mean, 4),
            "sem_reward": round(sem, 4),
            "calls_per_token": round(self.api_calls / max(1, self.tokens), 4),
            "tokens_per_response": round(self.tokens / n, 2),
            "prompt_tokens_per_response": round(self.prompt_tokens / n, 1),
            "completion_tokens_per_response": round(self.completion_tokens / n, 1),
            "acceptance": round(self.accepted / self.tested, 4) if self.tested else None,
            "drafted_per_response": round(self.drafted / n, 1),
            "wall_s_per_response": round(self.time_total_s / n, 3),
            "api_share": round(self.time_api_s / max(1e-9, self.time_total_s), 3),
            "value_share": round(self.time_value_s / max(1e-9, self.time_total_s), 3),
        }


def run_setting(
    client: Any,
    model: str,
    prompts: Sequence[Any],
    reward: Callable[[Sequence[str]], list[float]],
    label: str,
    *,
    seed: int = 0,
    **vas: Any,
) -> RunStats:
    """One VAS response per prompt with the given settings; returns the aggregates."""
    from tqdm import tqdm

    stats = RunStats(label)
    for i, messages in enumerate(tqdm(prompts, desc=label, leave=False, file=sys.stderr)):
        resp = client.chat.completions.create(
            model=model, messages=messages, max_tokens=MAX_TOKENS, seed=seed * 100_003 + i, **vas
        )
        stats.add(resp.vas, reward([resp.choices[0].message.content])[0])
    return stats


def best_of_n(provider: Any, prompts: Sequence[Any], reward: Callable, n: int = 8, seed: int = 0) -> dict[str, Any]:
    """Best-of-n with the TRUE reward: n plain base samples per prompt, keep the best."""
    from tqdm import tqdm

    from vas_api.types import Prefix

    best, mean_all, start, calls, billed = [], [], time.perf_counter(), 0, 0
    for i, messages in enumerate(tqdm(prompts, desc=f"best-of-{n}", leave=False, file=sys.stderr)):
        samples = provider.sample(Prefix(messages), n=n, max_tokens=MAX_TOKENS, seed=seed * 100_003 + i)
        scores = reward([c.text for c in samples.completions])
        best.append(max(scores))
        mean_all.extend(scores)
        calls += samples.usage.calls
        billed += samples.usage.total_tokens
    return {
        "label": f"best-of-{n}",
        "responses": len(best),
        "mean_reward": round(statistics.fmean(best), 4),
        "sem_reward": round(sem_of(best), 4),
        "mean_reward_single_sample": round(statistics.fmean(mean_all), 4),
        "api_calls_per_prompt": calls / len(best),
        "billed_tokens_per_prompt": billed / len(best),
        "wall_s_per_prompt": round((time.perf_counter() - start) / len(best), 3),
    }


def write_result(name: str, payload: dict[str, Any]) -> Path:
    """Write benchmarks/results/NAME.json with the date and machine added."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    payload = {"date": datetime.now(UTC).strftime("%Y-%m-%d"), "machine": machine(), **payload}
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2, default=lambda o: asdict(o)) + "\n")
    return path


def print_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> None:
    """A plain-text table of `columns` for each row (missing values shown as -)."""
    widths = [max(len(c), *(len(_fmt(r.get(c))) for r in rows)) for c in columns]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)))
    for r in rows:
        print("  ".join(_fmt(r.get(c)).ljust(w) for c, w in zip(columns, widths, strict=True)))


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3f}"
    return str(v)
