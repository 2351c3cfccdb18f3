"""Errors in VAS generations on llama.cpp's llama-server (speculative mode, beta 4).

Prompts that invite emoji and non-English text (multi-byte characters split over tokens, the
case llama-server reports as merged entries); the value function is the prefix reward
(VADER of the response so far), so nothing needs training. Counts generations that raised,
by error. Prints a table and writes benchmarks/results/llama_server_smoke.json.

Run: .venv/bin/python benchmarks/llama_server_smoke.py [--seeds 10] [--max-tokens 24]
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import time
from datetime import UTC, datetime
from pathlib import Path

import vas_api
from estimators.baselines import PrefixRewardValue
from vas_api.local import LlamaServer

RESULTS = Path(__file__).resolve().parent / "results"
PROMPTS = [
    "Reply with five emoji about the sea.", "Dis bonjour en français et raconte ta journée.",
    "用中文介绍一下你自己。", "Schreib zwei Sätze über den Winter.", "日本語で挨拶してください。",
    "Напиши два предложения о Москве.", "Describe your perfect day using emoji.",
    "Escribe una frase sobre el mar.", "Write a happy birthday message with emoji.",
    "¿Qué tal? Answer in Spanish and add an emoji.",
]


def main() -> None:
    """Run len(PROMPTS) x seeds generations and count the errors."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--max-tokens", type=int, default=24)
    parser.add_argument("--beta", type=float, default=4.0)
    args = parser.parse_args()
    errors: collections.Counter[str] = collections.Counter()
    calls = tokens = n = 0
    start = time.perf_counter()
    with LlamaServer() as server:
        client = vas_api.wrap(
            server.client(max_retries=0, timeout=120), value_model=PrefixRewardValue("vader"),
            chat_template=str(server.gguf_path), profile=server.profile,
        )
        for seed in range(args.seeds):
            for prompt in PROMPTS:
                n += 1
                try:
                    r = client.chat.completions.create(
                        model=server.model, messages=[{"role": "user", "content": prompt}],
                        max_tokens=args.max_tokens, beta=args.beta, seed=seed,
                    )
                except Exception as exc:  # counted, by kind  # noqa: BLE001
                    errors[f"{type(exc).__name__}: {str(exc)[:120]}"] += 1
                    continue
                calls += r.vas.api_calls
                tokens += sum(len(t) for t in r.vas.traces)
    seconds = time.perf_counter() - start
    print(f"{'server':24} {'generations':>11} {'errors':>6} {'calls/token':>11}")
    print(f"{'llama.cpp llama-server':24} {n:11d} {sum(errors.values()):6d} "
          f"{calls / max(tokens, 1):11.2f}")
    for kind, count in errors.items():
        print(f"  {count} x {kind}")
    out = {
        "benchmark": "llama_server_smoke",
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}, no GPU",
        "server": "llama.cpp llama-server (tools/llama_server.py build)",
        "mode": "speculative", "beta": args.beta, "max_tokens": args.max_tokens,
        "generations": n, "errors": sum(errors.values()), "errors_by_kind": dict(errors),
        "calls_per_token": calls / max(tokens, 1), "seconds": round(seconds, 1),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "llama_server_smoke.json").write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {RESULTS / 'llama_server_smoke.json'}")


if __name__ == "__main__":
    main()
