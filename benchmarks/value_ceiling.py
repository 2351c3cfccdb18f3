"""How much of the final reward does a prefix decide? The Monte Carlo value as a ceiling.

A value model estimates V(prefix) = E[reward | prefix] under the base policy, so the best a value
function can do on the values benchmark's held-out Spearman is about what the true V(prefix)
does there. This script measures that: for every held-out sample it cuts the completion at half
(`--at half`, the state of `estimators.evaluate.values_at(..., 0.5)`) or after N value-model
tokens (`--at 32`, as `values_benchmark.values_after_tokens`), asks the base model for `--n`
continuations of that prefix through the embedded server (temperature 1, the remaining token
budget, as the samples were drawn), scores each finished text with the task's true reward, and
ranks the samples by the mean (the Monte Carlo value). With m of the n rollouts it reports pooled
and within-prompt Spearman against each sample's own reward; the curve over m = 1, 2, 4, ...
shows where the estimate levels off (the noise of a finite mean only lowers it).

The held-out split is only measured here, never used to choose anything. The tasks score the same
held-out samples, so they share the rollouts, kept in ~/.cache/vas-api/values_benchmark/
rollouts-heldout-<at>.jsonl one line per sample (an interrupted run resumes), and each task's
scores beside them. Judge calls and billed tokens are counted: this is what steering by rollouts
would cost per candidate.

    .venv/bin/python benchmarks/value_ceiling.py [--at half] [--n 4] [--task ending --task judge]
Writes benchmarks/results/value_ceiling.json (one entry per --at, kept across runs).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from common import write_result  # noqa: E402
from values_benchmark import DATA, make_reward  # noqa: E402

from estimators.data import prompt_key, read_samples  # noqa: E402
from estimators.evaluate import spearman, spearman_within  # noqa: E402
from estimators.rewards import compute_rewards  # noqa: E402
from estimators.states import split_states  # noqa: E402
from vas_api.types import Prefix  # noqa: E402


def _rollouts_path(at: str) -> Path:
    return DATA / f"rollouts-heldout-{at}.jsonl"


def _read_rollouts(at: str) -> dict[int, dict]:
    path = _rollouts_path(at)
    if not path.exists():
        return {}
    rows = {}
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:  # a line cut by a crash: its sample is rolled out again
            continue
        rows[row["i"]] = row
    return rows


def state_of(split, at: str) -> int:
    """The state `at` names: "half" (`values_at(..., 0.5)`) or a token count N (the state after
    min(N, L) tokens, as `values_benchmark.values_after_tokens`)."""
    return split.state_at(0.5) if at == "half" else min(int(at), split.num_states - 1)


def rollouts(provider, samples, tokenizer, n: int, max_tokens: int, at: str) -> tuple[list[dict], int]:
    """n continuations of each sample's prefix at `at` (resumable; appended line by line): one row
    per sample, and how many samples this call rolled out (0: all were on disk)."""
    from tqdm import tqdm

    have, rolled = _read_rollouts(at), 0
    with _rollouts_path(at).open("a") as f:
        for i, s in enumerate(tqdm(samples, desc="rollouts", file=sys.stderr)):
            if i in have and len(have[i]["texts"]) >= n:
                continue
            sp = split_states(tokenizer, s.prompt_text, s.completion)
            state = state_of(sp, at)
            prefix = s.completion[: sp.ends[state]]
            budget = max(1, max_tokens - state)
            out = provider.sample(Prefix(s.prompt, prefix), n=n, max_tokens=budget, temperature=1.0,
                                  seed=1000 + i)
            row = {"i": i, "prefix": prefix, "budget": budget,
                   "texts": [prefix + c.text for c in out.completions],
                   "completion_tokens": out.usage.completion_tokens,
                   "prompt_tokens": out.usage.prompt_tokens, "calls": out.usage.calls}
            f.write(json.dumps(row) + "\n")
            f.flush()
            have[i] = row
            rolled += 1
    return [have[i] for i in range(len(samples))], rolled


def score_task(task: str, reward, samples, rows, y, groups, n: int, at: str) -> dict:
    """Score each rollout with the task's reward (cached with its calls, tokens and seconds, so
    a re-run adds only what is missing) and the Spearman curve over m = 1, 2, 4, ... rollouts."""
    cache = DATA / f"rollouts-heldout-{at}-{task}.json"
    state = json.loads(cache.read_text()) if cache.exists() else {"scores": {}, "seconds": 0.0}
    scores = state["scores"]
    start = time.perf_counter()
    for i, r in enumerate(rows):
        if len(scores.get(str(i), [])) < n:
            scores[str(i)] = compute_rewards(reward, [samples[i].prompt_text] * n, r["texts"][:n])
        if i % 16 == 15 or i == len(rows) - 1:
            spent = reward.reset_usage() if hasattr(reward, "reset_usage") else None  # a judge's
            for k in ("calls", "prompt_tokens", "completion_tokens"):
                state[k] = state.get(k, 0) + (getattr(spent, k) if spent else 0)
            state["seconds"] += time.perf_counter() - start
            start = time.perf_counter()
            cache.write_text(json.dumps(state))
    view = "0.5" if at == "half" else f"{at}tokens"  # the values benchmark's key names
    curve = {}
    m = 1
    while m <= n:
        mc = [sum(scores[str(i)][:m]) / m for i in range(len(samples))]
        curve[str(m)] = {f"spearman@{view}": spearman(mc, y),
                         f"within_prompt_spearman@{view}": spearman_within(mc, y, groups)}
        print(task, m, {k: round(v, 3) for k, v in curve[str(m)].items()}, flush=True)
        m *= 2
    return {"curve": curve, "noise_corrected": _corrected(scores, y, groups, n, view),
            "score_seconds": round(state["seconds"], 1),
            **{k: state.get(k, 0) for k in ("calls", "prompt_tokens", "completion_tokens")}}


def _corrected(scores: dict, y: list[float], groups: list[str], n: int, view: str) -> dict:
    """The n-rollout Spearman corrected for the noise of its mean (correction for attenuation):
    divided by the square root of the mean's reliability, which the agreement of two halves of
    the rollouts estimates (Spearman-Brown: rel = 2 r / (1 + r)). An estimate of what the exact
    V(prefix) would score, not a measurement; None when the halves do not agree at all."""
    if n < 2:
        return {}
    h = n // 2
    ids = range(len(y))
    a = [sum(scores[str(i)][:h]) / h for i in ids]
    b = [sum(scores[str(i)][h:2 * h]) / h for i in ids]
    mc = [sum(scores[str(i)][:2 * h]) / (2 * h) for i in ids]
    out: dict = {"rollouts": 2 * h}
    for name, corr in (("spearman", spearman),
                       ("within_prompt_spearman", lambda u, v: spearman_within(u, v, groups))):
        r = corr(a, b)
        rel = 2 * r / (1 + r) if r > 0 else None
        out[f"reliability_{name}"] = rel
        out[f"{name}@{view}"] = min(1.0, corr(mc, y) / rel ** 0.5) if rel else None
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", action="append", choices=("ending", "judge", "sentiment"))
    ap.add_argument("--n", type=int, default=4, help="continuations per prefix")
    ap.add_argument("--max-tokens", type=int, default=64, help="the samples' token budget")
    ap.add_argument("--at", default="half",
                    help='where to cut: "half" of each completion, or a number of value-model tokens')
    ap.add_argument("--limit", type=int, default=None, help="only the first samples: a quick look, printed and not saved")
    args = ap.parse_args()
    if args.at != "half" and not args.at.isdigit():
        ap.error(f'--at is "half" or a number of tokens, not {args.at!r}')
    if args.n < 1 or args.max_tokens < 1:
        ap.error("--n and --max-tokens must be at least 1")
    tasks = args.task or ["ending", "judge", "sentiment"]
    from estimators.value_model import ValueModel
    from vas_api.local import LocalServer

    tokenizer = ValueModel.from_backbone(None, num_layers=1, device="cpu").tokenizer
    by_task = {t: read_samples(DATA / f"{t}-heldout.jsonl").samples[: args.limit] for t in tasks}
    samples = by_task[tasks[0]]
    for t in tasks[1:]:
        if [s.completion for s in by_task[t]] != [s.completion for s in samples]:
            raise SystemExit(f"{t}-heldout.jsonl holds other samples than {tasks[0]}-heldout.jsonl")
    groups = [prompt_key(s.prompt) for s in samples]
    results: dict = {}
    with LocalServer(n_threads=1) as server:
        provider = server.wrap().provider(server.model)
        start = time.perf_counter()
        rows, rolled = rollouts(provider, samples, tokenizer, args.n, args.max_tokens, args.at)
        rollout_seconds = time.perf_counter() - start
        judge_endpoint = (server.client(max_retries=2, timeout=300), server.model)
        for task in tasks:
            y = [float(s.reward) for s in by_task[task]]
            results[task] = score_task(task, make_reward(task, judge_endpoint), samples, rows, y, groups,
                                       args.n, args.at)
    if args.limit is not None:
        return
    billed = sum(r["prompt_tokens"] + r["completion_tokens"] for r in rows)
    path = ROOT / "benchmarks" / "results" / "value_ceiling.json"
    views = json.loads(path.read_text()).get("views", {}) if path.exists() else {}
    earlier = views.get(args.at, {})
    views[args.at] = {
        "samples": len(samples), "prompts": len(set(groups)), "rollouts_per_prefix": args.n,
        # a run that found every rollout cached keeps the run that made them
        "rollout_seconds": round(rollout_seconds, 1) if rolled else earlier.get("rollout_seconds"),
        "rollout_calls": sum(r["calls"] for r in rows), "rollout_billed_tokens": billed,
        "rollout_billed_tokens_per_prefix": round(billed / len(samples), 1),
        "tasks": {**earlier.get("tasks", {}), **results},
    }
    write_result("value_ceiling", {
        "method": "Monte Carlo value of a prefix of each held-out completion (at half of it, or after "
                  "N value-model tokens): the mean true reward of n base continuations of the prefix "
                  "(embedded server, temperature 1, the remaining budget); Spearman against the "
                  "sample's own reward with the first m rollouts",
        "views": views,
    })

if __name__ == "__main__":
    main()
