"""What streaming buys: time to the first text against the time of the whole response.

    .venv/bin/python benchmarks/streaming_benchmark.py [--prompts 4] [--max-tokens 32] [--n-batch 1]

On the embedded local server (SmolLM2-135M-Instruct), with the prefix-reward value
(`reward:vader`, beta 2), for token and speculative mode: each prompt is generated once with
stream=True (time to the first text chunk, time to the last chunk, chunks per response) and once
without (time of the response), in alternating order (the server's prompt cache favours the
second request of a pair). The prompts are the first lines of the *training* prompts
(nothing is chosen from these numbers). Writes benchmarks/results/streaming_benchmark.json.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import ROOT, add_threads_option, print_table, set_threads, write_result  # noqa: E402

TRAIN = ROOT / "estimators" / "data" / "train_prompts.txt"


def one_streamed(client, model: str, messages, max_tokens: int, seed: int, mode: str) -> dict:
    start = time.perf_counter()
    first, chunks = None, 0
    for chunk in client.chat.completions.create(model=model, messages=messages, max_tokens=max_tokens,
                                                seed=seed, mode=mode, stream=True):
        if chunk.choices and chunk.choices[0].delta.content:
            chunks += 1
            if first is None:
                first = time.perf_counter() - start
        report = getattr(chunk, "vas", None)
    return {"first_s": first, "total_s": time.perf_counter() - start, "chunks": chunks,
            "tokens": report.tokens, "api_calls": report.api_calls}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--beta", type=float, default=2.0)
    ap.add_argument("--n-batch", type=int, default=None,
                    help="llama.cpp --n_batch for the server (1 avoids a crash of some CPU builds)")
    ap.add_argument("--out", default="streaming_benchmark")
    add_threads_option(ap)
    args = ap.parse_args()
    set_threads(args.threads)

    from estimators.baselines import PrefixRewardValue
    from estimators.collect import as_prompt
    from vas_api.local import LocalServer

    lines = [ln.strip() for ln in TRAIN.read_text().splitlines() if ln.strip()][: args.prompts]
    prompts = [as_prompt(ln) for ln in lines]
    extra = ("--n_batch", str(args.n_batch)) if args.n_batch else ()
    rows = []
    with LocalServer(extra_args=extra) as server:
        client = server.wrap(value_model=PrefixRewardValue("vader"), beta=args.beta, k=20)
        for mode in ("token", "speculative"):
            streamed, plain = [], []
            for i, messages in enumerate(prompts):
                # The server caches the last prompt's prefix, which speeds up whichever request
                # comes second: the order alternates so neither side always gets the cache.
                for streamed_first in ((True, False) if i % 2 == 0 else (False, True)):
                    if streamed_first:
                        streamed.append(one_streamed(client, server.model, messages, args.max_tokens, i, mode))
                        continue
                    start = time.perf_counter()
                    client.chat.completions.create(model=server.model, messages=messages,
                                                   max_tokens=args.max_tokens, seed=i, mode=mode)
                    plain.append(time.perf_counter() - start)
            firsts = [r["first_s"] for r in streamed if r["first_s"] is not None]
            rows.append({
                "mode": mode,
                "responses": len(prompts),
                "first_text_s": round(statistics.median(firsts), 3) if firsts else None,
                "streamed_total_s": round(statistics.median(r["total_s"] for r in streamed), 3),
                "plain_total_s": round(statistics.median(plain), 3),
                "chunks_per_response": round(statistics.fmean(r["chunks"] for r in streamed), 2),
                "tokens_per_response": round(statistics.fmean(r["tokens"] for r in streamed), 2),
                "calls_per_response": round(statistics.fmean(r["api_calls"] for r in streamed), 2),
            })
    print_table(rows, ["mode", "responses", "first_text_s", "streamed_total_s", "plain_total_s",
                       "chunks_per_response", "tokens_per_response", "calls_per_response"])
    path = write_result(args.out, {
        "settings": {"prompts": len(prompts), "max_tokens": args.max_tokens, "beta": args.beta, "k": 20,
                     "value": "reward:vader", "n_batch": args.n_batch, "medians": "over prompts"},
        "rows": rows,
    })
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
