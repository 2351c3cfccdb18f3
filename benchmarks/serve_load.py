"""Load test of `vas serve` on loopback: requests per minute and p50/p95 latency at 1, 8 and 32
concurrent clients, with nothing dropped and each level's key budget never exceeded.

It starts the real `vas serve` command (the embedded SmolLM2-135M-Instruct on llama-cpp-python)
with the prefix-reward value function `reward:vader` (VADER of the response so far: no training,
no download) as the value model `sentiment`, and one proxy key per level with its own token
budget (a keys file). Each level sends a bounded number of chat requests through the openai SDK
(AsyncOpenAI, `extra_body={"vas": {"beta": {"sentiment": 2}}}`), at most `concurrency` at a
time. The server's own generation slots (--max-concurrency) queue the rest; the queue timeout is
long enough that no request is refused for want of a slot, so any error counts as dropped.

    PYTHONPATH=. python benchmarks/serve_load.py            # 16 / 32 / 64 requests
    PYTHONPATH=. python benchmarks/serve_load.py --requests 4 4 8 --max-tokens 8   # smoke

Writes benchmarks/results/serve_load.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import openai

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, ROOT, machine, print_table  # noqa: E402

PROMPTS = ["Write one sentence about the sea.", "Describe your morning.", "Say something about rain.",
           "Tell me about a dog.", "What is a good book?", "Write a line about work."]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def quantile(xs: list[float], q: float) -> float:
    """The q-quantile (linear interpolation; the sample itself for one value)."""
    xs = sorted(xs)
    if len(xs) == 1:
        return xs[0]
    return statistics.quantiles(xs, n=100, method="inclusive")[round(q * 100) - 1]


async def level(url: str, key: str, model: str, concurrency: int, n: int, max_tokens: int) -> dict:
    """Send `n` requests with at most `concurrency` in flight; latency per request, errors."""
    client = openai.AsyncOpenAI(base_url=url, api_key=key, max_retries=0, timeout=900)
    gate = asyncio.Semaphore(concurrency)
    latencies: list[float] = []
    errors: list[str] = []
    billed = 0

    async def one(i: int) -> None:
        nonlocal billed
        async with gate:
            t0 = time.perf_counter()
            try:
                r = await client.chat.completions.create(
                    model=model, messages=[{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}],
                    max_tokens=max_tokens, seed=i, extra_body={"vas": {"beta": {"sentiment": 2.0}}},
                )
            except openai.APIError as exc:
                errors.append(f"{type(exc).__name__}: {exc}"[:200])
                return
            latencies.append(time.perf_counter() - t0)
            billed += r.usage.total_tokens

    start = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(n)))
    wall = time.perf_counter() - start
    await client.close()
    async with httpx.AsyncClient() as http:
        usage = (await http.get(url.removesuffix("/v1") + "/vas/usage",
                                headers={"Authorization": f"Bearer {key}"})).json()
    return {
        "concurrency": concurrency, "requests": n, "ok": len(latencies), "dropped": n - len(latencies),
        "errors": errors[:3], "wall_s": round(wall, 2),
        "requests_per_minute": round(len(latencies) / wall * 60, 2),
        "p50_s": round(quantile(latencies, 0.5), 3) if latencies else None,
        "p95_s": round(quantile(latencies, 0.95), 3) if latencies else None,
        "budget_limit_tokens": usage["max_tokens"], "budget_spent_tokens": usage["spent_tokens"],
        "billed_tokens_in_responses": billed,
        "budget_never_exceeded": usage["spent_tokens"] <= usage["max_tokens"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--levels", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--requests", type=int, nargs="+", default=[16, 32, 64], help="requests per level")
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--server-slots", type=int, default=8, help="vas serve --max-concurrency")
    ap.add_argument("--budget-per-request", type=int, default=1000,
                    help="each level's key budget is this many billed tokens per request it sends")
    ap.add_argument("--out", default=str(RESULTS / "serve_load.json"))
    args = ap.parse_args()
    if len(args.requests) != len(args.levels):
        ap.error("give one --requests count per level")
    keys = [f"bench-{c}-{secrets.token_hex(8)}" for c in args.levels]
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        keys_file = Path(tmp) / "keys.json"
        keys_file.write_text(json.dumps({k: {"max_tokens": n * args.budget_per_request}
                                         for k, n in zip(keys, args.requests, strict=True)}))
        log = Path(tmp) / "serve.log"
        cmd = [sys.executable, "-m", "vas_api.cli", "serve", "--port", str(port), "--keys-file", str(keys_file),
               "--value", "sentiment=reward:vader", "--max-concurrency", str(args.server_slots),
               "--queue-timeout", "3600"]
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        with open(log, "w") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        url = f"http://127.0.0.1:{port}/v1"
        try:
            model = wait_ready(url, proc, log)
            rows = [asyncio.run(level(url, k, model, c, n, args.max_tokens))
                    for k, c, n in zip(keys, args.levels, args.requests, strict=True)]
        finally:
            proc.terminate()
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
    print_table(rows, ["concurrency", "requests", "ok", "dropped", "requests_per_minute", "p50_s", "p95_s",
                       "budget_spent_tokens", "budget_limit_tokens"])
    payload = {
        "benchmark": "serve_load", "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(), "base": f"{model} (embedded llama-cpp-python)",
        "value_model": "sentiment = reward:vader (prefix reward, no training), beta 2",
        "max_tokens": args.max_tokens, "server_slots": args.server_slots, "mode": "auto", "levels": rows,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {args.out}")


def wait_ready(url: str, proc: subprocess.Popen, log: Path, timeout: float = 300) -> str:
    """Poll /vas/info until the server answers (the embedded model takes seconds to load);
    the served model's id."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"vas serve exited:\n{log.read_text()[-2000:]}")
        try:
            return httpx.get(url.removesuffix("/v1") + "/vas/info", timeout=2).json()["model"]
        except (httpx.HTTPError, ValueError, KeyError):
            time.sleep(0.5)
    raise SystemExit(f"vas serve did not start in {timeout:.0f} s:\n{log.read_text()[-2000:]}")


if __name__ == "__main__":
    main()
