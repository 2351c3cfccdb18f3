"""Which depth of the frozen backbone holds the look-ahead? A linear probe per layer.

For each task of the values benchmark (its scored training samples, ~/.cache/vas-api/
values_benchmark/<task>-train.jsonl), one forward pass of SmolLM2-135M-Instruct (all 30 layers,
frozen) over every sample gives each layer's hidden state at every state (normed as a value model
truncated to that many layers would see it). A ridge regression per layer from the hidden state
of every completion state (and the end state) to the sample's final reward (Monte Carlo
targets) is fitted on the training split and scored on the benchmark's validation split (the
same 10% of the training prompts, `split_by_prompt(..., 0.1, 0)`): pooled and within-prompt
Spearman at half of each completion and at the end state. Held-out prompts are never read.

What it answers: whether a value head on deeper frozen features ranks the responses to one prompt
better than the fine-tuned 4-layer models (within-prompt 0.20 to 0.33 on this validation split
for the judge, 2026-12-05), before paying for a full training run (`values_benchmark.py
--freeze --layers N`). Ridge, not TD(lambda): a cheap stand-in to pick the depth.

    .venv/bin/python benchmarks/value_depth_probe.py [--task judge] [--layers 4 8 12 16 20 24 30]
Writes benchmarks/results/value_depth_probe.json.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from common import write_result  # noqa: E402

from estimators.data import prompt_key, read_samples  # noqa: E402
from estimators.evaluate import spearman, spearman_within  # noqa: E402
from estimators.states import split_states  # noqa: E402
from estimators.train import RidgeStats, prompt_text_of, split_by_prompt  # noqa: E402
from estimators.value_model import ValueModel  # noqa: E402
from vas_api.paths import cache_dir  # noqa: E402

DATA = cache_dir() / "values_benchmark"


@torch.no_grad()
def features(model: ValueModel, samples: list, layers: list[int]) -> list[dict]:
    """Per sample: {layer: (states, hidden) tensor} for every state, and the half / end indices."""
    eos = model.tokenizer.eos_token_id
    norm = model.backbone.norm
    out = []
    for i, s in enumerate(samples):
        split = split_states(model.tokenizer, prompt_text_of(model, s), s.completion, max_length=256,
                             end_id=eos if s.finish_reason == "stop" else None)
        ids = torch.tensor([split.input_ids])
        hs = model.backbone(input_ids=ids, attention_mask=torch.ones_like(ids),
                            output_hidden_states=True, use_cache=False).hidden_states
        p, n = split.prompt_state, split.num_states
        # hidden_states[k] is the input of layer k (k = 1..30: the output of layer k - 1's
        # block, the last one already normed); a model cut to N layers applies the norm to
        # the output of its last layer, hidden_states[N].
        per = {L: (hs[L][0] if len(hs) - 1 == L else norm(hs[L][0]))[p:p + n].clone() for L in layers}
        out.append({"feats": per, "half": split.state_at(0.5), "end": n - 1})
        if (i + 1) % 100 == 0:
            print(f"  features {i + 1}/{len(samples)}", file=sys.stderr, flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", action="append", choices=("judge", "ending", "sentiment"))
    ap.add_argument("--layers", type=int, nargs="+", default=[4, 8, 12, 16, 20, 24, 30])
    ap.add_argument("--ridge", type=float, nargs="+", default=[1e-3, 1e-2, 1e-1, 1.0])
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = ValueModel.from_backbone(None, num_layers=max(args.layers), device="cpu")
    results = {}
    tasks = args.task or ["judge"]
    # The tasks score the same samples (the benchmark's train.jsonl), so features are computed once.
    by_task = {t: read_samples(DATA / f"{t}-train.jsonl").samples for t in tasks}
    first = by_task[tasks[0]]
    for t in tasks[1:]:
        if [s.completion for s in by_task[t]] != [s.completion for s in first]:
            raise SystemExit(f"{t}-train.jsonl holds other samples than {tasks[0]}-train.jsonl")
    fit, val = split_by_prompt(first, 0.1, 0)
    start = time.perf_counter()
    f_fit, f_val = features(model, fit, args.layers), features(model, val, args.layers)
    seconds = time.perf_counter() - start
    groups = [prompt_key(s.prompt) for s in val]
    for task in tasks:
        fit_t, val_t = split_by_prompt(by_task[task], 0.1, 0)
        y_val = [float(s.reward) for s in val_t]
        rows = {}
        for L in args.layers:
            stats = RidgeStats(f_fit[0]["feats"][L].shape[1])  # the regression TrainConfig.ridge fits
            stats.add(torch.cat([f["feats"][L] for f in f_fit]),
                      torch.cat([torch.full((len(f["feats"][L]),), float(s.reward))
                                 for f, s in zip(f_fit, fit_t, strict=True)]))
            for lam in args.ridge:
                w, b, _ = stats.solve(lam)
                row = {}
                for at in ("half", "end"):
                    v = [float(f["feats"][L][f[at]].double() @ w + b) for f in f_val]
                    row[f"spearman@{at}"] = spearman(v, y_val)
                    row[f"within_prompt_spearman@{at}"] = spearman_within(v, y_val, groups)
                rows[f"L{L}/ridge{lam:g}"] = row
                print(task, f"L{L} ridge {lam:g}", {k: round(x, 3) for k, x in row.items()}, flush=True)
        results[task] = {"fit_samples": len(fit), "val_samples": len(val), "rows": rows}
    write_result("value_depth_probe", {
        "threads": args.threads, "feature_seconds": round(seconds, 1),
        "method": "ridge regression from each layer's frozen hidden state (every state, final reward "
                  "as target) on the values benchmark's training split; Spearman on its validation split",
        "tasks": results,
    })


if __name__ == "__main__":
    main()
