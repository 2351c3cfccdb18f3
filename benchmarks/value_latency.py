"""Value-model latency on the default backbone (SmolLM2-135M-Instruct from the GGUF), CPU.

For num_layers in (2, 4, 6, 8, 30):
- candidates: median of 50 `score_candidates` calls, 20 one-token candidates, a cached prefix
  of about 200 tokens that grows by one token per call (like real generation);
- full recompute: `values()` on the same 20 full texts (what the cache saves);
- drafts: `score_draft` over m drafted positions with k = 20 candidates each (m = 8, 16),
  against m separate `score_candidates` calls on the same texts (token mode's cost);
- train step: forward + backward on 8 x 64 tokens.
Prints a table and writes benchmarks/results/value_latency.json.

    .venv/bin/python benchmarks/value_latency.py [--layers 2 4 6 8 30] [--calls 50]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import torch

from estimators import DEFAULT_LAYERS, ValueModel

RESULTS = Path(__file__).resolve().parent / "results"
PROMPT = (
    "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
    "<|im_end|>\n<|im_start|>user\nWrite a short story about a cat who finds a new home."
    "<|im_end|>\n<|im_start|>assistant\n"
)
STORY = (
    "Once upon a time, in a small town by the sea, there lived a little grey cat named Pip. "
    "Pip had no home, and every night she slept under the old wooden bench near the harbour, "
    "listening to the waves and dreaming of a warm fire. One cold morning a kind fisherman "
    "noticed her shivering and offered her a piece of bread. Pip was scared at first, but the "
    "man sat quietly and waited. Slowly she came closer, sniffed his hand and purred. From that "
    "day on they met every morning, and the fisherman started to bring milk as well as bread. "
    "When winter came he opened the door of his cottage and Pip walked in"
)
# 20 candidates that are one SmolLM2 token each, like a top-20 from the API.
CANDIDATES = [" the", " a", " and", ",", ".", " was", " is", " very", " little", " big",
              " sun", " day", " of", " to", " in", " it", " he", " she", " happy", " sad"]  # fmt: skip
PATH = [" and", " she", " was", " happy", ".", " The", " fire", " was", " warm", ",", " the",
        " milk", " was", " sweet", " and", " Pip"]  # fmt: skip


def median_ms(fn: Callable[[], object], reps: int) -> float:
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1000 * statistics.median(times)


def bench_candidates(model: ValueModel, calls: int) -> dict[str, float]:
    """Median ms of score_candidates on a prefix growing by one token per call."""
    prefix = PROMPT + STORY
    model.reset_cache()
    model.score_candidates(prefix, CANDIDATES)  # fills the cache (not timed)
    times, worst = [], 0.0
    for i in range(calls + 5):
        prefix += CANDIDATES[(7 * i) % len(CANDIDATES)]
        t = time.perf_counter()
        got = model.score_candidates(prefix, CANDIDATES)
        if i >= 5:  # warm-up calls excluded
            times.append(time.perf_counter() - t)
        if i % 10 == 0:
            ref = model.values([prefix + c for c in CANDIDATES])
            worst = max(worst, (got - ref).abs().max().item())
    full = median_ms(lambda: model.values([prefix + c for c in CANDIDATES]), 5)
    return {
        "prefix_tokens": len(model.encode(PROMPT + STORY)),
        "candidates_median_ms": 1000 * statistics.median(times),
        "candidates_p90_ms": 1000 * sorted(times)[int(0.9 * len(times))],
        "full_recompute_ms": full,
        "max_abs_diff_vs_full": worst,
    }


def bench_draft(model: ValueModel, m: int, rounds: int) -> dict[str, float]:
    """score_draft (one forward) vs m score_candidates calls, same texts, warm cache."""
    prefix = PROMPT + STORY
    path, cands = PATH[:m], [CANDIDATES] * m
    model.reset_cache()
    model.score_candidates(prefix, CANDIDATES)
    draft_t, seq_t, worst = [], [], 0.0
    for _ in range(rounds + 1):
        t = time.perf_counter()
        drafted = model.score_draft(prefix, path, cands)
        draft_t.append(time.perf_counter() - t)
        t = time.perf_counter()
        seq = [model.score_candidates(prefix + "".join(path[:i]), cands[i]) for i in range(m)]
        seq_t.append(time.perf_counter() - t)
        worst = max(
            worst, max((a - b).abs().max().item() for a, b in zip(drafted, seq, strict=True))
        )
        prefix += "".join(path)  # the whole draft was accepted; the next one follows it
    d, s = statistics.median(draft_t[1:]), statistics.median(seq_t[1:])
    return {
        f"draft{m}_ms": 1000 * d,
        f"sequential{m}_ms": 1000 * s,
        f"draft{m}_speedup": s / d,
        f"draft{m}_max_abs_diff": worst,
    }


def bench_train(model: ValueModel, reps: int = 3) -> float:
    """Median ms of forward + backward on 8 x 64 tokens."""
    ids = torch.randint(100, 40000, (8, 64))
    mask = torch.ones_like(ids)
    model.train()

    def step() -> None:
        model.zero_grad(set_to_none=True)
        model(ids, mask).pow(2).mean().backward()

    step()
    ms = median_ms(step, reps)
    model.zero_grad(set_to_none=True)
    model.eval()
    return ms


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, nargs="+", default=[2, 4, 6, 8, 30])
    ap.add_argument("--calls", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    ap.add_argument("--out", type=Path, default=RESULTS / "value_latency.json")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    rows = []
    for n in args.layers:
        torch.manual_seed(0)
        t = time.perf_counter()
        model = ValueModel.from_backbone(num_layers=n, device="cpu")
        load_s = time.perf_counter() - t
        # A non-zero head so the exactness columns compare real numbers (V is 0 at init).
        torch.nn.init.normal_(model.head.weight, std=0.05)
        row: dict[str, float | int] = {"num_layers": n, "load_s": load_s}
        row.update(bench_candidates(model, args.calls))
        for m in (8, 16):
            row.update(bench_draft(model, m, args.rounds))
        row["train_step_8x64_ms"] = bench_train(model)
        rows.append(row)
        print(
            f"layers={n:2d}  candidates {row['candidates_median_ms']:6.1f} ms "
            f"(p90 {row['candidates_p90_ms']:6.1f}, full {row['full_recompute_ms']:6.1f})  "
            f"draft8 {row['draft8_ms']:6.1f} vs {row['sequential8_ms']:6.1f} ms "
            f"(x{row['draft8_speedup']:.1f})  draft16 {row['draft16_ms']:6.1f} vs "
            f"{row['sequential16_ms']:6.1f} ms (x{row['draft16_speedup']:.1f})  "
            f"train {row['train_step_8x64_ms']:6.0f} ms",
            flush=True,
        )
        del model

    print()
    head = "| layers | cand. median ms | p90 | full recompute | draft m=8 | 8 calls | speed-up | draft m=16 | 16 calls | speed-up | train 8x64 | max diff |"
    print(head)
    print("|---" * (head.count("|") - 1) + "|")
    for r in rows:
        diff = max(r["max_abs_diff_vs_full"], r["draft8_max_abs_diff"], r["draft16_max_abs_diff"])
        print(
            f"| {r['num_layers']} | {r['candidates_median_ms']:.1f} | {r['candidates_p90_ms']:.1f} "
            f"| {r['full_recompute_ms']:.1f} | {r['draft8_ms']:.1f} | {r['sequential8_ms']:.1f} "
            f"| x{r['draft8_speedup']:.1f} | {r['draft16_ms']:.1f} | {r['sequential16_ms']:.1f} "
            f"| x{r['draft16_speedup']:.1f} | {r['train_step_8x64_ms']:.0f} ms | {diff:.1e} |"
        )
    out = args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "date": datetime.now(UTC).isoformat(timespec="seconds"),
                "machine": f"{platform.machine()} {os.cpu_count()} CPUs, torch {torch.__version__}, "
                f"{torch.get_num_threads()} threads",
                "default_layers": DEFAULT_LAYERS,
                "candidates": len(CANDIDATES),
                "calls": args.calls,
                "load_average_1min": os.getloadavg()[0],
                "rows": rows,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
