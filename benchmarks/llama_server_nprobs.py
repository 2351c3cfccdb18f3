"""Is llama-server's native /completion with n_probs cheaper than /v1/completions with logprobs?

Issue 9 asks for "n_probs-style requests where they are cheaper". This times both on the same
prompt and the same neutral sampler chain (median of --repeats calls, one call of each kind first
to warm the prompt cache), for a candidates call (1 token) and a 16-token draft, and writes
benchmarks/results/llama_server_nprobs.json. Loopback only; starts and stops its own server.

    .venv/bin/python benchmarks/llama_server_nprobs.py
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx

from vas_api.local import LlamaServer

PROMPT = (
    "<|im_start|>user\nTell me about your favourite city.<|im_end|>\n"
    "<|im_start|>assistant\nMy favourite city is"
)
NEUTRAL = {"temperature": 1.0, "top_k": 0, "top_p": 1.0, "min_p": 0.0, "samplers": ["temperature"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--k", type=int, default=20)
    args = ap.parse_args()
    out: dict[str, object] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()} {__import__('os').cpu_count()} CPUs, no GPU (shared)",
        "k": args.k, "repeats": args.repeats,
    }
    with LlamaServer() as server:
        root = server.base_url[: -len("/v1")]
        with httpx.Client(base_url=root, timeout=120) as http:
            kinds = {
                "v1_completions_logprobs": lambda m: http.post("/v1/completions", json={
                    "prompt": PROMPT, "max_tokens": m, "logprobs": args.k, **NEUTRAL}),
                "native_completion_n_probs": lambda m: http.post("/completion", json={
                    "prompt": PROMPT, "n_predict": m, "n_probs": args.k, **NEUTRAL}),
            }
            for m in (1, 16):
                for name, call in kinds.items():
                    call(m).raise_for_status()
                    times = []
                    for _ in range(args.repeats):
                        t0 = time.perf_counter()
                        r = call(m)
                        times.append(time.perf_counter() - t0)
                        r.raise_for_status()
                    out[f"{name}_m{m}_ms"] = round(1000 * statistics.median(times), 1)
                    out[f"{name}_m{m}_bytes"] = len(r.content)
    for m in (1, 16):
        a, b = out[f"v1_completions_logprobs_m{m}_ms"], out[f"native_completion_n_probs_m{m}_ms"]
        print(f"m={m:2d}: /v1/completions {a} ms, /completion n_probs {b} ms (ratio {b / a:.2f})")
    path = Path(__file__).parent / "results" / "llama_server_nprobs.json"
    path.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
