"""Pool sampler_benchmark.py runs made with different `--seed`s into one table.

    .venv/bin/python benchmarks/pool_seeds.py sampler_benchmark sampler_benchmark_seed1

Each run has one response per held-out prompt and setting; pooling R runs gives R responses per
prompt. The pooled SEM is sqrt(sum of squared SEMs) / R: it treats the runs as independent, which
they are given the prompts (responses to the same prompt are correlated, so read it as a lower
bound on the uncertainty of a mean over new prompts). Prints a table and `vas_minus_bon8` per
value model; writes nothing.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import RESULTS  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", help="result names under benchmarks/results/ (without .json)")
    args = ap.parse_args()
    runs = []
    for name in args.runs:
        path = RESULTS / f"{name}.json"
        if not path.exists():
            sys.exit(f"{path} does not exist: run benchmarks/sampler_benchmark.py --out {name} first")
        runs.append(json.loads(path.read_text()))
    labels = [r["label"] for r in runs[0]["rows"]] + ["best-of-8"]
    by_label = [{r["label"]: r for r in run["rows"]} | {"best-of-8": run["best_of_8"]} for run in runs]
    missing = [lab for lab in labels if any(lab not in b for b in by_label)]
    if missing:
        sys.exit(f"the runs do not have the same settings (missing in some: {missing})")
    n = len(runs)
    pooled = {}
    print(f"{'setting':<22}{'mean reward':>12}{'SEM':>8}   per run")
    for lab in labels:
        means = [b[lab]["mean_reward"] for b in by_label]
        sem = math.sqrt(sum(b[lab]["sem_reward"] ** 2 for b in by_label)) / n
        pooled[lab] = sum(means) / n
        print(f"{lab:<22}{pooled[lab]:>12.3f}{sem:>8.3f}   " + " / ".join(f"{m:.3f}" for m in means))
    bon = pooled["best-of-8"]
    for name in runs[0].get("value_models", {}):
        best = max((lab for lab in labels if lab.startswith(f"{name} beta=")), key=pooled.get)
        print(f"vas_minus_bon8[{name}] = {pooled[best] - bon:+.3f} ({best})")


if __name__ == "__main__":
    main()
