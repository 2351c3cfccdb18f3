"""Value benchmark: does a TD(lambda) value model predict the reward from half a completion?

Base: SmolLM2-135M-Instruct on the embedded llama.cpp server. Reward: VADER compound sentiment
of the completion. Data: `--n-train` completions (up to `--max-tokens` tokens) for each training
prompt (estimators/data/train_prompts.txt) and `--n-heldout` for each of the 32 held-out prompts
(estimators/data/heldout_prompts.txt), collected once and cached under
~/.cache/vas-api/value_benchmark/ (re-runs resume/reuse them).

Trained (checkpoints under ~/.cache/vas-api/models/, reused when complete):
- learned: the default value model (DEFAULT_LAYERS of SmolLM2) with TD(0.95);
- residual: V = VADER(prefix) + a learned correction, same data and targets.
Compared on the held-out prompts, at half of each completion (estimators.states):
the two models above and the prefix-reward baseline (VADER of the half text).

Choices (lr, passes, ...) may only be made on the validation split of the *training* prompts
(`heldout_fraction` of them, recorded in each checkpoint); the held-out prompts are scored once,
here, and never used to pick anything.

    .venv/bin/python benchmarks/value_benchmark.py            # collect (cached), train, report
    .venv/bin/python benchmarks/value_benchmark.py --passes 2 --lr 1e-4
Writes benchmarks/results/value_benchmark.json and prints a table.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import signal
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from estimators.baselines import PrefixRewardValue, load_value_function  # noqa: E402
from estimators.collect import as_prompt, collect  # noqa: E402
from estimators.data import read_prompts, read_samples  # noqa: E402
from estimators.evaluate import (  # noqa: E402
    DEFAULT_FRACTIONS,
    evaluate_value,
    json_safe,
    metrics_of,
    spearman,
    values_at,
)
from estimators.states import split_states  # noqa: E402
from estimators.train import TrainConfig, score_samples, split_by_prompt, train  # noqa: E402
from estimators.value_model import DEFAULT_LAYERS  # noqa: E402
from vas_api.paths import cache_dir  # noqa: E402

PROMPTS = ROOT / "estimators" / "data"
RESULTS = ROOT / "benchmarks" / "results" / "value_benchmark.json"
# One llama.cpp thread: on a shared 2-core machine two spinning threads lose badly to any
# other busy process (measured: 8 s a sample with 2 threads under load).
N_THREADS = int(os.environ.get("VAS_BENCH_SERVER_THREADS", "1"))


def _collect(name: str, prompts_file: Path, n: int, max_tokens: int, data_dir: Path,
             server_box: dict[str, Any]) -> dict[str, Any]:
    """Collect (or finish collecting) one sample file; timings accumulate in a sidecar JSON."""
    out = data_dir / f"{name}.jsonl"
    stats_path = data_dir / f"{name}.stats.json"
    stats = json.loads(stats_path.read_text()) if stats_path.exists() else {
        "seconds": 0.0, "prompt_tokens": 0, "completion_tokens": 0, "calls": 0}
    prompts = [as_prompt(p) for p in read_prompts(prompts_file)]
    have = len(read_samples(out, require=False).samples)
    if have < n * len(prompts):
        if "provider" not in server_box:
            from vas_api.local import LocalServer
            from vas_api.providers import connect

            server = LocalServer(n_threads=N_THREADS).start()
            server_box["server"] = server
            server_box["provider"] = connect(
                server.client(max_retries=0, timeout=300), server.model,
                chat_template=str(server.gguf_path), profile=server.profile,
            )
        summary = collect(server_box["provider"], prompts, out, n=n, max_tokens=max_tokens, seed=0)
        print(f"{name}: {summary.line()}")
        stats["seconds"] += summary.seconds
        stats["prompt_tokens"] += summary.usage.prompt_tokens
        stats["completion_tokens"] += summary.usage.completion_tokens
        stats["calls"] += summary.usage.calls
        stats_path.write_text(json.dumps(stats, indent=1))
    read = read_samples(out)
    stats.update(file=str(out), samples=len(read.samples), skipped_lines=len(read.skipped),
                 prompts=len(prompts))
    return stats


def _train(cfg: TrainConfig) -> dict[str, Any]:
    result = train(cfg)
    meta = result.model.config.metadata["training"]
    return {"checkpoint": cfg.output_dir, "seconds": meta["seconds_total"],
            "batches": meta["batches"], "optimizer_steps": meta["optimizer_steps"],
            "train_samples": meta["train_samples"], "val_samples": meta["val_samples"],
            "validation": meta["val"], "model": result.model}


def _bootstrap_diff(a: list[float], b: list[float], rewards: list[float], groups: list[str],
                    draws: int = 1000, seed: int = 0) -> dict[str, float]:
    """Paired bootstrap over prompts of spearman(a, R) - spearman(b, R): mean and 95% interval."""
    import random

    rng = random.Random(seed)
    by_group: dict[str, list[int]] = {}
    for i, g in enumerate(groups):
        by_group.setdefault(g, []).append(i)
    keys = sorted(by_group)
    diffs = []
    for _ in range(draws):
        idx = [i for k in rng.choices(keys, k=len(keys)) for i in by_group[k]]
        r = [rewards[i] for i in idx]
        diffs.append(spearman([a[i] for i in idx], r) - spearman([b[i] for i in idx], r))
    diffs.sort()
    return {"observed": spearman(a, rewards) - spearman(b, rewards),
            "bootstrap_mean": sum(diffs) / len(diffs),
            "ci95_low": diffs[int(0.025 * draws)], "ci95_high": diffs[int(0.975 * draws) - 1],
            "draws": draws, "resampled_unit": "prompt"}


def _selection(models_dir: Path, layers: int) -> dict[str, Any]:
    """Validation-split metrics of every benchmark checkpoint variant found (the choices)."""
    out = {}
    for d in sorted(models_dir.glob(f"value-benchmark-vader*-L{layers}-*")):
        try:
            meta = json.loads((d / "config.json").read_text())["metadata"]["training"]
        except (OSError, KeyError, ValueError):
            continue
        cfg = meta["config"]
        out[d.name] = {"lr": cfg["lr"], "passes": cfg["passes"], "residual": cfg["residual"],
                       "val_spearman@0.5": meta["val"].get("spearman"),
                       "val_mse@0.5": meta["val"].get("mse")}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n-train", type=int, default=16)
    ap.add_argument("--n-heldout", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--passes", type=int, default=1)
    ap.add_argument("--epochs-per-batch", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--layers", type=int, default=DEFAULT_LAYERS)
    ap.add_argument("--lam", type=float, default=0.95)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (1: two threads thrash on a busy 2-core machine)")
    ap.add_argument("--eval-every", type=int, default=43,
                    help="batches between validation-split evaluations (for choosing passes)")
    ap.add_argument("--only", choices=["learned", "residual"], default=None,
                    help="train just one model (e.g. two runs side by side), then stop")
    ap.add_argument("--tag", default="", help="suffix of the checkpoint names (for variants)")
    ap.add_argument("--collect-only", action="store_true")
    ap.add_argument("--no-write", action="store_true", help="do not overwrite the results JSON")
    ap.add_argument("--note", action="append", default=[],
                    help="a remark about this run for the results JSON (machine load, restarts)")
    args = ap.parse_args()
    # Turn SIGTERM into an exception, so `finally` stops the llama.cpp child process.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    data_dir = cache_dir() / "value_benchmark"
    models_dir = cache_dir() / "models"
    server_box: dict[str, Any] = {}
    try:
        train_stats = _collect(f"train-n{args.n_train}-t{args.max_tokens}",
                               PROMPTS / "train_prompts.txt", args.n_train, args.max_tokens,
                               data_dir, server_box)
        heldout_stats = _collect(f"heldout-n{args.n_heldout}-t{args.max_tokens}",
                                 PROMPTS / "heldout_prompts.txt", args.n_heldout,
                                 args.max_tokens, data_dir, server_box)
    finally:
        if "server" in server_box:
            server_box["server"].stop()
    if args.collect_only:
        return

    common = dict(
        data=train_stats["file"], reward="vader", num_layers=args.layers, lam=args.lam,
        lr=args.lr, passes=args.passes, epochs_per_batch=args.epochs_per_batch,
        batch_size=args.batch_size, heldout_fraction=0.1, seed=0, device="cpu",
        num_threads=args.threads, eval_every=args.eval_every,
        base_model="SmolLM2-135M-Instruct (Q4_1 GGUF, llama-cpp-python)",
    )
    # Passes are not in the name: a finished run can be extended with more passes.
    suffix = f"-L{args.layers}-lr{args.lr:g}-e{args.epochs_per_batch}{args.tag}"
    learned_cfg = TrainConfig(output_dir=str(models_dir / f"value-benchmark-vader{suffix}"),
                              **common)
    residual_cfg = TrainConfig(
        output_dir=str(models_dir / f"value-benchmark-vader-residual{suffix}"), residual=True,
        **common)
    if args.only:
        result = _train(learned_cfg if args.only == "learned" else residual_cfg)
        print(f"{args.only}: validation {result['validation']}, {result['seconds']:.0f} s")
        return
    learned = _train(learned_cfg)
    residual = _train(residual_cfg)

    tokenizer = learned["model"].tokenizer
    # The prefix baseline on the same validation split the trained models were chosen on.
    train_samples = score_samples(read_samples(train_stats["file"]).samples, "vader")
    _, val_samples = split_by_prompt(train_samples, common["heldout_fraction"], common["seed"])
    val_prefix = evaluate_value(PrefixRewardValue("vader"), val_samples, tokenizer)

    heldout = score_samples(read_samples(heldout_stats["file"]).samples, "vader")
    rewards = [float(x.reward) for x in heldout]
    splits = [split_states(tokenizer, x.prompt_text, x.completion) for x in heldout]
    started = time.perf_counter()
    values = {  # each value function scores each held-out state once
        name: {f: values_at(fn, heldout, tokenizer, f, splits=splits) for f in DEFAULT_FRACTIONS}
        for name, fn in (("learned", learned["model"]),
                         ("prefix_reward", PrefixRewardValue("vader")),
                         ("residual", residual["model"]))
    }
    scores = {name: metrics_of(v, rewards) for name, v in values.items()}
    eval_seconds = time.perf_counter() - started
    groups = [json.dumps(x.prompt) for x in heldout]
    paired = {
        f"{name}_minus_prefix": _bootstrap_diff(values[name][0.5], values["prefix_reward"][0.5],
                                                rewards, groups)
        for name in ("residual", "learned")
    }
    # The saved checkpoint gives the same values as the in-memory model.
    reloaded = values_at(load_value_function(learned["checkpoint"]), heldout, tokenizer, 0.5,
                         splits=splits)
    if max(abs(a - b) for a, b in zip(reloaded, values["learned"][0.5], strict=True)) > 1e-4:
        raise RuntimeError("the saved checkpoint scores differently from the trained model")

    print(f"\nheld-out: {len(heldout)} samples from {heldout_stats['prompts']} prompts")
    print(f"{'value function':<16}{'spearman@0.5':>14}{'mse@0.5':>10}{'spearman@0':>12}"
          f"{'spearman@1':>12}")
    for name, m in scores.items():
        print(f"{name:<16}{m['spearman']:>14.3f}{m['mse']:>10.4f}{m['spearman@0']:>12.3f}"
              f"{m['spearman@1']:>12.3f}")
    for name, d in paired.items():
        print(f"{name}: {d['observed']:+.3f} (95% bootstrap over prompts "
              f"{d['ci95_low']:+.3f} .. {d['ci95_high']:+.3f})")
    print(f"collection: train {train_stats['seconds']:.0f} s, held-out "
          f"{heldout_stats['seconds']:.0f} s; training: learned {learned['seconds']:.0f} s, "
          f"residual {residual['seconds']:.0f} s")

    report = {
        "benchmark": "value_benchmark",
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "processor": platform.processor(),
                    "cpu_count": os.cpu_count(), "python": platform.python_version(),
                    "torch": __import__("torch").__version__,
                    "torch_threads": __import__("torch").get_num_threads(), "gpu": None},
        "base_model": common["base_model"],
        "reward": "vader (VADER compound sentiment of the completion)",
        "metric_definition": "states at half the completion = after floor(L/2) of its L "
                             "value-model tokens; Spearman/MSE of V(prompt + half) vs the final "
                             "reward over held-out samples",
        "spearman": scores["learned"]["spearman"],
        "spearman_prefix_reward": scores["prefix_reward"]["spearman"],
        "spearman_residual": scores["residual"]["spearman"],
        "mse": scores["learned"]["mse"],
        "mse_prefix_reward": scores["prefix_reward"]["mse"],
        "mse_residual": scores["residual"]["mse"],
        "heldout_metrics": scores,
        "heldout_paired_bootstrap_spearman@0.5": paired,
        "validation_metrics": {"learned": learned["validation"],
                               "residual": residual["validation"],
                               "prefix_reward": val_prefix},
        "selection_on_validation_split": _selection(models_dir, args.layers),
        "targets": {
            "learned_spearman>=0.5": scores["learned"]["spearman"] >= 0.5,
            "residual>=prefix_reward":
                scores["residual"]["spearman"] >= scores["prefix_reward"]["spearman"],
        },
        "samples": {"train": train_stats["samples"], "train_prompts": train_stats["prompts"],
                    "train_per_prompt": args.n_train, "heldout": heldout_stats["samples"],
                    "heldout_prompts": heldout_stats["prompts"],
                    "heldout_per_prompt": args.n_heldout, "max_tokens": args.max_tokens,
                    "trained_on": learned["train_samples"],
                    "validation_split": learned["val_samples"]},
        "training": {k: v for k, v in common.items() if k not in ("data", "base_model")}
        | {"batches": learned["batches"], "optimizer_steps": learned["optimizer_steps"]},
        "timings_s": {
            "collect_train": round(train_stats["seconds"], 1),
            "collect_heldout": round(heldout_stats["seconds"], 1),
            "train_learned": learned["seconds"], "train_residual": residual["seconds"],
            "evaluate_all": round(eval_seconds, 1),
        },
        "tokens": {"train": {k: train_stats[k] for k in ("prompt_tokens", "completion_tokens",
                                                          "calls")},
                   "heldout": {k: heldout_stats[k] for k in ("prompt_tokens",
                                                              "completion_tokens", "calls")}},
        "notes": args.note,
        "checkpoints": {"learned": learned["checkpoint"], "residual": residual["checkpoint"]},
        "data_files": {"train": train_stats["file"], "heldout": heldout_stats["file"]},
    }
    if not args.no_write:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(json_safe(report), indent=1) + "\n")
        print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
