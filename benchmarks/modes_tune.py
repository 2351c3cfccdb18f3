"""Choose block mode's defaults (block_len L, block_n n) on TRAINING prompts, never held-out ones.

    nice .venv/bin/python benchmarks/modes_tune.py --value reward:vader --prompts 8 --n-batch 1

A grid of (L, n), one block-mode response of up to 48 tokens per prompt and setting, on every
8th of the 96 training prompts (estimators/data/train_prompts.txt), with the local server's
logprobs switched off. Rule fixed before the run: among settings whose mean reward is within
one SEM (of the best setting) of the best, take the one with the fewest billed tokens per
response. Writes benchmarks/results/modes_tune.json.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import ROOT, add_threads_option, machine, print_table, set_threads, vader, write_result  # noqa: E402
from modes_common import block_profile, run_mode, server_args  # noqa: E402


def training_prompts(limit: int) -> list[str]:
    from estimators.collect import as_prompt

    lines = [ln.strip() for ln in (ROOT / "estimators" / "data" / "train_prompts.txt").read_text().splitlines() if ln.strip()]
    return [as_prompt(ln) for ln in lines[::8][:limit]]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--value", default="reward:vader", help="checkpoint dir, or reward:vader")
    ap.add_argument("--beta", type=float, default=4.0)
    ap.add_argument("--lens", type=int, nargs="+", default=[4, 8, 16])
    ap.add_argument("--ns", type=int, nargs="+", default=[2, 4, 8])
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n-batch", type=int, default=None, help="llama.cpp n_batch (1 works around a crash, see modes_common)")
    add_threads_option(ap)
    ap.add_argument("--out", default="modes_tune")
    args = ap.parse_args()
    set_threads(args.threads)

    import vas_api
    from vas_api.commands.generate import local_options, value_functions
    from vas_api.local import LocalServer

    reward = vader()
    value = value_functions([args.value])[0]
    rows = []
    with LocalServer(extra_args=server_args(args.n_batch)) as server:
        opts = {**local_options(server), "profile": block_profile(server)}
        client = vas_api.wrap(server.client(), mode="block", value_model=value, beta=args.beta, **opts)
        prompts = [client.provider(server.model).prompt_text(p) for p in training_prompts(args.prompts)]
        for L in args.lens:
            for n in args.ns:
                row = run_mode(client, server.model, prompts, reward, f"L={L} n={n}", seed=args.seed,
                               block_len=L, block_n=n)
                rows.append({"block_len": L, "block_n": n, **row})
                print(f"{row['label']}: reward {row['mean_reward']:.3f} ({row['sem_reward']:.3f}), "
                      f"{row['api_calls_per_response']} calls, {row['billed_tokens_per_response']} billed", file=sys.stderr)
    best = max(rows, key=lambda r: r["mean_reward"])
    sem = best["sem_reward"] if best["sem_reward"] == best["sem_reward"] else 0.0  # NaN for one prompt
    near = [r for r in rows if r["mean_reward"] >= best["mean_reward"] - sem]
    chosen = min(near, key=lambda r: r["billed_tokens_per_response"])
    print_table(rows, ["label", "mean_reward", "sem_reward", "api_calls_per_response",
                       "billed_tokens_per_response", "mean_ess", "wall_s_per_response"])
    print(f"chosen: L={chosen['block_len']} n={chosen['block_n']} (best: {best['label']})")
    path = write_result(args.out, {
        "command": " ".join(sys.argv), "machine_note": machine() + "; 2 cores shared with four other engineers",
        "value": args.value, "beta": args.beta, "prompts": "every 8th training prompt, first " + str(args.prompts),
        "max_tokens": 48, "n_batch": args.n_batch,
        "rule": "fewest billed tokens among settings within one SEM of the best mean reward",
        "chosen": {"block_len": chosen["block_len"], "block_n": chosen["block_n"]},
        "best": {"block_len": best["block_len"], "block_n": best["block_n"]},
        "rows": rows,
    })
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
