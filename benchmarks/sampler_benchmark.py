"""Does VAS raise the reward? Mean VADER reward on the 32 held-out prompts against beta, and
Best-of-8 over the same base model as the bar to clear.

    .venv/bin/python benchmarks/sampler_benchmark.py --value learned=PATH --value residual=PATH

Each value model is a checkpoint trained by benchmarks/value_benchmark.py (on the training
prompts only). One VAS response per held-out prompt per (value model, beta); Best-of-8 draws
eight plain base samples per prompt and keeps the one with the highest TRUE reward (an oracle
the value model never sees). Writes benchmarks/results/sampler_benchmark.json, including
`vas_minus_bon8` (best-beta VAS mean reward minus Best-of-8 mean reward).
"""

from __future__ import annotations

import argparse
import operator
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    add_threads_option,
    best_of_n,
    heldout_prompts,
    machine,
    print_table,
    run_setting,
    set_threads,
    vader,
    write_result,
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--value", action="append", required=True, metavar="NAME=PATH",
                    help="a value model to sweep (checkpoint dir, or reward:vader for the prefix-reward baseline)")
    ap.add_argument("--betas", type=float, nargs="+", default=[0, 1, 2, 4, 8])
    ap.add_argument("--mode", default="speculative", choices=["speculative", "token"],
                    help="speculative has exactly token mode's distribution (tests/test_sampler_exact.py) at a fraction of the calls")
    ap.add_argument("--k", type=int, default=20)
    ap.add_argument("--prompts", type=int, default=None, help="use only the first N held-out prompts (smoke runs)")
    ap.add_argument("--seed", type=int, default=0)
    add_threads_option(ap)
    ap.add_argument("--out", default="sampler_benchmark")
    args = ap.parse_args()
    if not any(b > 0 for b in args.betas):
        ap.error("--betas needs at least one beta above 0 (beta = 0 is plain base sampling)")
    set_threads(args.threads)

    import vas_api
    from vas_api.commands.generate import local_options, value_functions
    from vas_api.local import LocalServer
    from vas_api.providers import connect

    prompts = heldout_prompts(args.prompts)
    reward = vader()
    rows = []
    with LocalServer() as server:
        client = vas_api.wrap(server.client(), k=args.k, mode=args.mode, **local_options(server))
        provider = connect(server.client(), server.model, **local_options(server))
        bon = best_of_n(provider, prompts, reward, n=8, seed=args.seed)
        print(f"best-of-8: {bon['mean_reward']:.3f} (single sample {bon['mean_reward_single_sample']:.3f})", file=sys.stderr)
        specs = [spec.partition("=")[::2] for spec in args.value]
        for name, path in specs:
            value = value_functions([path])[0]
            # beta = 0 is base sampling whatever the value model (it is never scored): run it once.
            betas = [b for b in args.betas if b != 0 or name == specs[0][0]]
            for beta in betas:
                label = "base (beta=0)" if beta == 0 else f"{name} beta={beta:g}"
                stats = run_setting(client, server.model, prompts, reward, label,
                                    seed=args.seed, value_model=value, beta=beta)
                row = {"value_model": name if beta else None, "beta": beta, **stats.row()}
                rows.append(row)
                print(f"{row['label']}: reward {row['mean_reward']:.3f}", file=sys.stderr)

    by_reward = operator.itemgetter("mean_reward")
    best_by_value = {name: max((r for r in rows if r["beta"] > 0 and r["value_model"] == name),
                               key=by_reward) for name, _ in specs}
    best = max(best_by_value.values(), key=by_reward)
    cols = ["label", "mean_reward", "sem_reward", "calls_per_token", "tokens_per_response",
            "acceptance", "wall_s_per_response", "api_share", "value_share"]
    print_table(rows + [bon], cols)
    path = write_result(args.out, {
        "task": "SmolLM2-135M-Instruct (local llama.cpp, Q4_1), VADER compound, 32 held-out prompts, 48 tokens",
        "mode": args.mode, "k": args.k, "seed": args.seed, "machine_detail": machine(),
        "rows": rows, "best_of_8": bon,
        "best": {"label": best["label"], "mean_reward": best["mean_reward"]},
        "vas_minus_bon8": round(best["mean_reward"] - bon["mean_reward"], 4),
        "vas_minus_bon8_by_value": {name: {"label": r["label"],
                                           "diff": round(r["mean_reward"] - bon["mean_reward"], 4)}
                                    for name, r in best_by_value.items()},
        "value_models": dict(specs), "torch_threads": args.threads,
        "note": "best beta is picked on the held-out prompts themselves, as the issue defines it",
    })
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
