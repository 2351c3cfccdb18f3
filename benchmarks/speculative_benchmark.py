"""Token mode against speculative mode on the same held-out prompts.

    .venv/bin/python benchmarks/speculative_benchmark.py --value PATH

For each beta: token mode (one call per token), speculative mode drafting with the server's
top_k = k (every drafted token is a candidate), and speculative mode drafting from the full
distribution. Reports API calls per generated token, billed prompt and completion tokens per
response, wall time per response, the acceptance rate and mean reward, and one plain generation
per prompt (a single 48-token call) as the reference for billed tokens. Writes
benchmarks/results/speculative_benchmark.json with `calls_per_token_speculative_beta1` (top-k
drafts) and `calls_per_token_token_beta1`.
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
    print_table,
    run_setting,
    set_threads,
    vader,
    write_result,
)


def plain_generation(provider, prompts, reward, seed: int) -> dict:
    """One ordinary sampled completion per prompt: the billing reference."""
    from vas_api.types import Prefix

    billed_p, billed_c, rewards, start = [], [], [], time.perf_counter()
    for i, messages in enumerate(prompts):
        s = provider.sample(Prefix(messages), n=1, max_tokens=MAX_TOKENS, seed=seed * 100_003 + i)
        billed_p.append(s.usage.prompt_tokens)
        billed_c.append(s.usage.completion_tokens)
        rewards.append(reward([s.completions[0].text])[0])
    return {
        "label": "plain generation",
        "responses": len(prompts),
        "mean_reward": round(statistics.fmean(rewards), 4),
        "calls_per_token": round(len(prompts) / max(1, sum(billed_c)), 4),
        "prompt_tokens_per_response": round(statistics.fmean(billed_p), 1),
        "completion_tokens_per_response": round(statistics.fmean(billed_c), 1),
        "wall_s_per_response": round((time.perf_counter() - start) / len(prompts), 3),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--value", required=True, help="value model checkpoint dir (or reward:vader)")
    ap.add_argument("--betas", type=float, nargs="+", default=[0.5, 1, 2, 4])
    ap.add_argument("--k", type=int, default=20)
    ap.add_argument("--prompts", type=int, default=None, help="first N held-out prompts only (smoke runs)")
    ap.add_argument("--variants", nargs="+", default=["token", "spec-topk", "spec-full"],
                    choices=["token", "spec-topk", "spec-full"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="speculative_benchmark")
    add_threads_option(ap)
    args = ap.parse_args()
    set_threads(args.threads)

    import vas_api
    from vas_api.commands.generate import local_options, value_functions
    from vas_api.local import LocalServer
    from vas_api.providers import connect

    prompts = heldout_prompts(args.prompts)
    reward = vader()
    value = value_functions([args.value])[0]
    variants = {
        "token": {"mode": "token"},
        "spec-topk": {"mode": "speculative", "restrict_top_k": True},
        "spec-full": {"mode": "speculative", "restrict_top_k": False},
    }
    rows = []
    with LocalServer() as server:
        client = vas_api.wrap(server.client(), k=args.k, value_model=value, **local_options(server))
        plain = plain_generation(connect(server.client(), server.model, **local_options(server)), prompts, reward, args.seed)
        for beta in args.betas:
            for name in args.variants:
                stats = run_setting(client, server.model, prompts, reward, f"{name} beta={beta:g}",
                                    seed=args.seed, beta=beta, **variants[name])
                row = {"variant": name, "beta": beta, **stats.row()}
                row["billed_tokens_vs_plain"] = round(
                    (row["prompt_tokens_per_response"] + row["completion_tokens_per_response"])
                    / (plain["prompt_tokens_per_response"] + plain["completion_tokens_per_response"]), 2)
                rows.append(row)
                print(f"{row['label']}: {row['calls_per_token']} calls/token, reward {row['mean_reward']:.3f}",
                      file=sys.stderr)

    cols = ["label", "calls_per_token", "prompt_tokens_per_response", "completion_tokens_per_response",
            "billed_tokens_vs_plain", "acceptance", "wall_s_per_response", "api_share", "value_share",
            "mean_reward", "sem_reward"]
    print_table(rows + [plain], cols)

    def pick(variant: str, beta: float, key: str):
        return next((r[key] for r in rows if r["variant"] == variant and r["beta"] == beta), None)

    path = write_result(args.out, {
        "task": "SmolLM2-135M-Instruct (local llama.cpp, Q4_1), VADER compound, held-out prompts, 48 tokens",
        "k": args.k, "seed": args.seed, "value_model": args.value, "prompts": len(prompts),
        "torch_threads": args.threads,
        "rows": rows, "plain_generation": plain,
        "calls_per_token_speculative_beta1": pick("spec-topk", 1.0, "calls_per_token"),
        "calls_per_token_speculative_full_beta1": pick("spec-full", 1.0, "calls_per_token"),
        "calls_per_token_token_beta1": pick("token", 1.0, "calls_per_token"),
    })
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
