"""Value scoring of B concurrent requests: one batched forward against one forward per request.

`ValueModel.score_many(requests, keys)` (what the ScoreBatcher calls) runs the requests' trees
as one forward over their own KV caches; the baseline scores each request alone over its own
cache. Default 4-layer SmolLM2 value backbone with a random head (timing does not depend on the
weights), 1 torch thread. Each step scores a 6-token draft with 10 candidates at 7 positions per
request on its own cached prefix, which grows by two tokens a step. Both paths must give the
same values (1e-4).

    python benchmarks/value_batch_speed.py [--batch 1 4 8 16] [--steps 4]

Prints ms per step and writes benchmarks/results/value_batch_speed.json.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.common import RESULTS, machine  # noqa: E402

WORDS = [" good", " bad", " fine", " room", " staff", " the", " was", " and", " very", " nice", " clean", " slow"]


def _requests(rng: random.Random, prefixes: dict[int, str]) -> list[tuple[str, list[str], list[list[str]]]]:
    out = []
    for i in sorted(prefixes):
        path = [rng.choice(WORDS) for _ in range(6)]
        cands = [[rng.choice(WORDS) for _ in range(10)] for _ in range(7)]
        out.append((prefixes[i], path, cands))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 4, 8, 16])
    ap.add_argument("--steps", type=int, default=4)
    args = ap.parse_args()

    import torch

    from estimators import ValueModel

    torch.set_num_threads(1)
    model = ValueModel.from_backbone(num_layers=4, device="cpu")
    torch.nn.init.normal_(model.head.weight, std=0.1)
    rng = random.Random(0)
    rows = []
    for b in args.batch:
        prefixes = {
            i: f"<|im_start|>user\nWrite a short review of hotel number {i}.<|im_end|>\n<|im_start|>assistant\n"
            for i in range(b)
        }
        model.reset_cache()
        t_batched = t_alone = 0.0
        for _ in range(args.steps):
            reqs = _requests(rng, prefixes)
            t0 = time.perf_counter()
            together = model.score_many(reqs, keys=list(range(b)))
            t_batched += time.perf_counter() - t0
            t0 = time.perf_counter()
            alone = [model._score_draft_in(model._keyed_slot(("alone", i)), *reqs[i]) for i in range(b)]
            t_alone += time.perf_counter() - t0
            for x, y in zip(together, alone, strict=True):
                for u, v in zip(x, y, strict=True):
                    assert torch.allclose(u, v, atol=1e-4), float((u - v).abs().max())
            for i, (_, path, _) in enumerate(reqs):
                prefixes[i] += path[0] + path[1]
        row = {"requests": b, "batched_ms_per_step": 1000 * t_batched / args.steps,
               "one_by_one_ms_per_step": 1000 * t_alone / args.steps}
        row["speedup"] = row["one_by_one_ms_per_step"] / row["batched_ms_per_step"]
        rows.append(row)
        print(f"B={b:<3} batched {row['batched_ms_per_step']:7.0f} ms/step   one by one "
              f"{row['one_by_one_ms_per_step']:7.0f} ms/step   x{row['speedup']:.2f}", flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / "value_batch_speed.json"
    path.write_text(json.dumps({
        "benchmark": "value_batch_speed", "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine() + " (shared with other jobs)", "layers": 4, "torch_threads": 1,
        "steps": args.steps, "rows": rows,
    }, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
