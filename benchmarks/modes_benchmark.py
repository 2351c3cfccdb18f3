"""Rerank and block mode end to end on the real local server, next to base sampling,
speculative VAS and Best-of-N with the same N, in one run, on the held-out prompts.

    nice .venv/bin/python benchmarks/modes_benchmark.py --value ~/.cache/vas-api/models/demo-sentiment --n-batch 1

Base: SmolLM2-135M-Instruct on the embedded server; reward: VADER compound of the completion;
the 32 held-out prompts (estimators/data/heldout_prompts.txt), one response of up to 48 tokens
per prompt and setting. Rerank runs against the server profiled as unable to continue a
partial response, block against it with logprobs switched off (see modes_common.py). Block
mode uses the library's defaults for L and n (chosen on training prompts by modes_tune.py).

Rows: base sampling (the mean reward of every sample in the Best-of-N pools: N per prompt),
Best-of-N (the pool's sample with the highest TRUE reward: an oracle no value model sees),
speculative VAS, rerank with N, block. Writes benchmarks/results/modes_benchmark.json with
`rerank_reward_gain` and `block_reward_gain` (mean reward minus base sampling's).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    MAX_TOKENS,
    add_threads_option,
    heldout_prompts,
    machine,
    print_table,
    sem_of,
    set_threads,
    vader,
    write_result,
)
from modes_common import block_profile, rerank_profile, run_mode, server_args  # noqa: E402

COLUMNS = ["label", "mean_reward", "sem_reward", "api_calls_per_response", "billed_tokens_per_response",
           "mean_ess", "wall_s_per_response"]


def pools(provider, prompts, reward, n, seed):
    """N plain base samples per prompt: the base-sampling and Best-of-N rows."""
    from tqdm import tqdm

    from vas_api.types import Prefix

    all_r, best, calls, billed, start = [], [], 0, 0, time.perf_counter()
    for i, prompt in enumerate(tqdm(prompts, desc=f"pool of {n}", leave=False, file=sys.stderr)):
        samples = provider.sample(Prefix(prompt), n=n, max_tokens=MAX_TOKENS, seed=seed * 100_003 + i)
        scores = reward([c.text for c in samples.completions])
        all_r += scores
        best.append(max(scores))
        calls += samples.usage.calls
        billed += samples.usage.total_tokens
    wall = (time.perf_counter() - start) / len(prompts)
    base = {"label": "base sampling", "responses": len(all_r), "mean_reward": round(statistics.fmean(all_r), 4),
            "sem_reward": round(sem_of(all_r), 4), "api_calls_per_response": 1.0,
            "billed_tokens_per_response": round(billed / len(all_r), 1), "wall_s_per_response": round(wall / n, 3)}
    bon = {"label": f"best-of-{n} (true reward)", "responses": len(best), "mean_reward": round(statistics.fmean(best), 4),
           "sem_reward": round(sem_of(best), 4), "api_calls_per_response": calls / len(best),
           "billed_tokens_per_response": round(billed / len(best), 1), "wall_s_per_response": round(wall, 3)}
    return base, bon


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--value", default="reward:vader", help="checkpoint dir, or reward:vader (prefix reward)")
    ap.add_argument("--beta", type=float, default=4.0, help="one beta for every VAS row (fixed in advance)")
    ap.add_argument("--n", type=int, default=8, help="rerank's N and Best-of-N's N")
    ap.add_argument("--prompts", type=int, default=None, help="only the first N held-out prompts")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip", nargs="*", default=[], choices=["pools", "speculative", "rerank", "block", "argmax"],
                    help="rows to leave out (pools: the base and Best-of-N rows; the gains are then not computed)")
    ap.add_argument("--n-batch", type=int, default=None, help="llama.cpp n_batch (1 works around a crash, see modes_common)")
    add_threads_option(ap)
    ap.add_argument("--out", default="modes_benchmark")
    args = ap.parse_args()
    set_threads(args.threads)

    import vas_api
    from vas_api.commands.generate import local_options, value_functions
    from vas_api.local import LocalServer
    from vas_api.providers import connect
    from vas_api.sampler.settings import DEFAULT_BLOCK_LEN, DEFAULT_BLOCK_N

    reward = vader()
    value = value_functions([args.value])[0]
    started = time.time()
    rows = []
    with LocalServer(extra_args=server_args(args.n_batch)) as server:
        opts = local_options(server)
        provider = connect(server.client(), server.model, **opts)
        prompts = [provider.prompt_text(p) for p in heldout_prompts(args.prompts)]
        base = bon = None
        if "pools" not in args.skip:
            base, bon = pools(provider, prompts, reward, args.n, args.seed)
            rows += [base, bon]
            print(f"base {base['mean_reward']:.3f}, best-of-{args.n} {bon['mean_reward']:.3f}", file=sys.stderr)
        vas = {"value_model": value, "beta": args.beta}
        settings = []
        if "speculative" not in args.skip:
            settings.append(("speculative VAS", opts, {"mode": "speculative"}))
        if "rerank" not in args.skip:
            settings.append((f"rerank N={args.n}", {**opts, "profile": rerank_profile(server)},
                             {"mode": "auto", "rerank_n": args.n}))
        if "argmax" not in args.skip:
            settings.append((f"rerank N={args.n} argmax", {**opts, "profile": rerank_profile(server)},
                             {"mode": "auto", "rerank_n": args.n, "rerank": "argmax"}))
        if "block" not in args.skip:
            settings.append((f"block L={DEFAULT_BLOCK_LEN} n={DEFAULT_BLOCK_N}", {**opts, "profile": block_profile(server)},
                             {"mode": "auto"}))
        for label, wrap_opts, extra in settings:
            client = vas_api.wrap(server.client(), **wrap_opts)
            row = run_mode(client, server.model, prompts, reward, label, seed=args.seed, **vas, **extra)
            rows.append(row)
            print(f"{label}: reward {row['mean_reward']:.3f}, {row['api_calls_per_response']} calls, "
                  f"{row['billed_tokens_per_response']} billed", file=sys.stderr)

    print_table(rows, COLUMNS)
    by: dict = {}
    for r in rows:  # "rerank N=8" comes before "rerank N=8 argmax"
        by.setdefault("argmax" if r["label"].endswith("argmax") else r["label"].split(" ")[0], r)
    gain = lambda key: round(by[key]["mean_reward"] - base["mean_reward"], 4) if key in by and base else None  # noqa: E731
    path = write_result(args.out, {
        "command": " ".join(sys.argv),
        "machine_note": machine() + "; 2 cores shared with four other engineers; wall times are upper bounds",
        "value": args.value, "beta": args.beta, "n": args.n, "max_tokens": MAX_TOKENS, "k": 20,
        "prompts": len(prompts), "n_batch": args.n_batch,
        "block_defaults": {"block_len": DEFAULT_BLOCK_LEN, "block_n": DEFAULT_BLOCK_N},
        "minutes": round((time.time() - started) / 60, 1),
        "rerank_reward_gain": gain("rerank"),
        "block_reward_gain": gain("block"),
        "rerank_argmax_reward_gain": gain("argmax"),
        "speculative_reward_gain": gain("speculative"),
        "best_of_n_reward_gain": round(bon["mean_reward"] - base["mean_reward"], 4) if base else None,
        "rows": rows,
    })
    print(f"rerank_reward_gain {gain('rerank')}, block_reward_gain {gain('block')}; wrote {path}")


if __name__ == "__main__":
    main()
