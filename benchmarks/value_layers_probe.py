"""Can the first N layers of SmolLM2-135M learn a sentiment value? A quick fine-tuning check.

Evidence for DEFAULT_LAYERS beside latency (benchmarks/value_latency.py). Reads completions of
the frozen base (a JSONL with prompt_text and completion per line, e.g. the value benchmark's
cache ~/.cache/vas-api/value_benchmark/train-n16-t48.jsonl), scores each with VADER, splits the
*prompts* 75/25 into fit and check sets, and for each N trains a fresh ValueModel (first N
layers, zero head, token embeddings frozen unless --train-embeddings) with Monte Carlo targets
(the final reward at every completion token, MSE; the same settings for every N). It reports the Spearman correlation on the check prompts between
V(prompt + first half of the completion) and the final reward, next to VADER of the half text.
This is a smaller, cruder cousin of the TD(lambda) value benchmark: use it to compare N only.

    .venv/bin/python benchmarks/value_layers_probe.py --samples FILE [--layers 2 4 6 8]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from pathlib import Path

import torch
from scipy.stats import spearmanr
from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

from estimators.backbone import cache_dir
from estimators.value_model import ValueModel

RESULTS = Path(__file__).resolve().parent / "results"


def load_samples(path: Path) -> list[dict]:
    rows = [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()]
    return [r for r in rows if r.get("completion", "").strip()]


def train_and_check(n: int, fit: list[dict], check: list[dict], args) -> dict:
    torch.manual_seed(0)
    model = ValueModel.from_backbone(num_layers=n, device="cpu")
    if not args.train_embeddings:
        # 28 M of the 135 M parameters; freezing them makes this check several times cheaper.
        model.backbone.get_input_embeddings().weight.requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)
    model.train()
    rng = random.Random(0)
    t = time.perf_counter()
    for _ in range(args.epochs):
        order = list(range(len(fit)))
        rng.shuffle(order)
        for i in range(0, len(order), args.batch_size):
            rows = [fit[j] for j in order[i : i + args.batch_size]]
            ids, mask = model.batch([r["prompt_text"] + r["completion"] for r in rows])
            # Completion positions: from the last prompt token (V of the bare prompt) on.
            start = torch.tensor([len(model.encode(r["prompt_text"])) - 1 for r in rows])
            pos = torch.arange(ids.shape[1])[None]  # (1, T)
            sel = (pos >= start[:, None]) & mask.bool()  # (B, T)
            target = torch.tensor([r["reward"] for r in rows])[:, None].expand_as(ids)
            loss = 0.5 * ((model(ids, mask) - target)[sel] ** 2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    seconds = time.perf_counter() - t
    model.eval()
    halves = [r["prompt_text"] + r["completion"][: len(r["completion"]) // 2] for r in check]
    v = model.values(halves).tolist()
    rho = float(spearmanr(v, [r["reward"] for r in check]).statistic)
    return {"num_layers": n, "spearman_half": rho, "train_seconds": seconds}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--samples",
        type=Path,
        default=cache_dir() / "value_benchmark" / "train-n16-t48.jsonl",
    )
    ap.add_argument("--layers", type=int, nargs="+", default=[2, 4, 6, 8])
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--train-embeddings", action="store_true")
    args = ap.parse_args()

    vader = SentimentIntensityAnalyzer()
    rows = load_samples(args.samples)
    for r in rows:
        r["reward"] = vader.polarity_scores(r["completion"])["compound"]
    prompts = sorted({r["prompt_text"] for r in rows})
    random.Random(0).shuffle(prompts)
    check_prompts = set(prompts[: len(prompts) // 4])
    fit = [r for r in rows if r["prompt_text"] not in check_prompts]
    check = [r for r in rows if r["prompt_text"] in check_prompts]
    base = spearmanr(
        [
            vader.polarity_scores(r["completion"][: len(r["completion"]) // 2])["compound"]
            for r in check
        ],
        [r["reward"] for r in check],
    ).statistic
    print(f"{len(fit)} fit / {len(check)} check samples ({len(prompts)} prompts); "
          f"reward sd {statistics.pstdev([r['reward'] for r in rows]):.2f}")  # fmt: skip
    print(f"VADER of the half text: Spearman {base:.3f}")
    out = {"samples": str(args.samples), "fit": len(fit), "check": len(check),
           "vader_half_spearman": float(base), "settings": {k: v for k, v in vars(args).items()
           if k != "samples"}, "rows": []}  # fmt: skip
    for n in args.layers:
        row = train_and_check(n, fit, check, args)
        out["rows"].append(row)
        print(f"layers={n:2d}  Spearman at half {row['spearman_half']:.3f}  "
              f"(train {row['train_seconds']:.0f} s)", flush=True)  # fmt: skip
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "value_layers_probe.json").write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
