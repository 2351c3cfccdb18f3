"""Which training settings make the notebook's value model learn? (examples/value_models.py)

The notebook trains on 16 training prompts x 6 base samples (up to 40 tokens) with its own
reward, "concrete details". With one pass at lr 1e-4 its model learned nothing (validation
Spearman -0.14, 2026-12-01). This script collects the same kind of data for the notebook's 16
fit prompts and for 16 *other* training prompts (lines 17-32 of estimators/data/
train_prompts.txt; never the held-out file, nor the notebook's steer prompts, its last 6),
trains each variant on the first and scores it on the second: pooled and within-prompt
Spearman of V at half of each response and at its end against the final reward, the free
prefix reward beside them, and training time (1 torch thread).

    .venv/bin/python benchmarks/notebook_train_probe.py [VARIANT ...]
Writes benchmarks/results/notebook_train_probe.json (variants already there are kept).
"""

from __future__ import annotations

import json
import re
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from common import RESULTS, write_result  # noqa: E402

import estimators  # noqa: E402
from estimators.baselines import PrefixRewardValue  # noqa: E402
from estimators.collect import as_prompt, collect  # noqa: E402
from estimators.data import prompt_key, read_prompts, read_samples  # noqa: E402
from estimators.evaluate import spearman, spearman_within, values_at  # noqa: E402
from estimators.train import TrainConfig, train  # noqa: E402
from vas_api.local import LocalServer  # noqa: E402
from vas_api.paths import cache_dir  # noqa: E402

WORK = cache_dir() / "notebook_train_probe"

# The notebook's reward, as its section 2 defines it (kept in step by hand: it is the example).
_PRICE = re.compile(r"\$|€|£|\b(?:price[sd]?|cheap|expensive|costs?|pricey|affordable|money|budget)\b", re.I)
_NUMBER = re.compile(r"\b\d+(?:[.,]\d+)?\b|\b(?:one|two|three|four|five|six|seven|eight|nine|ten|"
                     r"minutes?|hours?|days?|weeks?|months?|years?)\b", re.I)


def concrete_details(prompts: list[str], completions: list[str]) -> list[float]:
    """Numbers, durations and price mentions in each completion: min(count, 3) / 3."""
    return [min(3, len(_PRICE.findall(c)) + len(_NUMBER.findall(c))) / 3 for c in completions]


concrete_details.description = "concrete-details"  # type: ignore[attr-defined]
VARIANTS = {
    "L2-lr1e-4-p1 (the notebook before)": dict(num_layers=2, passes=1, lr=1e-4),
    "L2-lr1e-3-p5": dict(num_layers=2, passes=5, lr=1e-3),
    "L2-lr1e-3-p10": dict(num_layers=2, passes=10, lr=1e-3),
    "L4-lr2e-4-p3": dict(num_layers=4, passes=3, lr=2e-4),
    "L4-lr1e-3-p5": dict(num_layers=4, passes=5, lr=1e-3),
    "frozen-L4-lr3e-3-p30": dict(num_layers=4, passes=30, lr=3e-3, freeze_backbone=True),
    "frozen-L8-lr1e-3-p30": dict(num_layers=8, passes=30, lr=1e-3, freeze_backbone=True),
    "frozen-L8-lr3e-3-p30": dict(num_layers=8, passes=30, lr=3e-3, freeze_backbone=True),
    "frozen-L8-lr1e-2-p100": dict(num_layers=8, passes=100, lr=1e-2, freeze_backbone=True),
    "frozen-L16-lr3e-3-p30": dict(num_layers=16, passes=30, lr=3e-3, freeze_backbone=True),
    "frozen-L30-lr3e-3-p30": dict(num_layers=30, passes=30, lr=3e-3, freeze_backbone=True),
}


def main() -> None:
    torch.set_num_threads(1)
    WORK.mkdir(parents=True, exist_ok=True)
    prompts = read_prompts(Path(estimators.__file__).parent / "data" / "train_prompts.txt")
    fit_p, check_p = [as_prompt(p) for p in prompts[:16]], [as_prompt(p) for p in prompts[16:32]]
    if not (WORK / "check.jsonl").exists():
        server = LocalServer().start()
        provider = server.wrap().provider(server.model)
        collect(provider, fit_p, WORK / "fit.jsonl", n=6, max_tokens=40, reward=concrete_details)
        collect(provider, check_p, WORK / "check.jsonl", n=6, max_tokens=40, seed=5, reward=concrete_details)
        server.stop()
    check = read_samples(WORK / "check.jsonl").samples
    rewards, groups = [float(s.reward) for s in check], [prompt_key(s.prompt) for s in check]
    path = RESULTS / "notebook_train_probe.json"
    rows = json.loads(path.read_text())["variants"] if path.exists() else {}
    prefix = None
    for name in sys.argv[1:] or list(VARIANTS):
        start = time.perf_counter()
        result = train(TrainConfig(data=str(WORK / "fit.jsonl"), output_dir=str(WORK / name.split()[0]),
                                   reward=None, batch_size=8, epochs_per_batch=2, heldout_fraction=0.0,
                                   num_threads=1, eval_every=-1, **VARIANTS[name]),
                       progress=False, resume=False)
        row = {"settings": VARIANTS[name], "train_seconds": round(time.perf_counter() - start, 1)}
        tok = result.model.tokenizer
        if prefix is None:
            prefix = {}
            for f in (0.5, 1.0):
                b = values_at(PrefixRewardValue(concrete_details), check, tok, f)
                prefix[f"spearman@{f:g}"] = spearman(b, rewards)
                prefix[f"within_prompt_spearman@{f:g}"] = spearman_within(b, rewards, groups)
        for f in (0.5, 1.0):
            v = values_at(result.model, check, tok, f)
            row[f"spearman@{f:g}"] = spearman(v, rewards)
            row[f"within_prompt_spearman@{f:g}"] = spearman_within(v, rewards, groups)
            row[f"value_sd@{f:g}"] = statistics.pstdev(v)
        rows[name] = row
        print(name, {k: round(v, 3) for k, v in row.items() if isinstance(v, float)}, flush=True)
        write_result("notebook_train_probe", {
            "fit": "16 training prompts x 6 (the notebook's), up to 40 tokens",
            "check": f"{len(check)} samples of 16 other training prompts x 6",
            "prefix_reward": prefix, "variants": rows,
        })


if __name__ == "__main__":
    main()
