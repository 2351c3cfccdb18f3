"""Soak run: many short VAS generations through the loopback fault proxy, 10% of calls faulted.

    python benchmarks/soak.py                         # 500 generations, the defaults below
    python benchmarks/soak.py --generations 40        # a quick look

The base is SmolLM2-135M-Instruct on the embedded local server; between it and the async
openai client sits tests/fault_proxy.py, which gives each generation call a random fault
(429 with and without Retry-After, 500, 502, 503, connection reset, a stall past the client's
timeout, a truncated body, a body without logprobs, fewer candidates) with probability
``--fault-rate``. The value function is ``reward:vader`` (VADER of the response so far).
Speculative and token mode alternate (one in ``--token-every`` generations is token mode).

Counted: completed (and of those, retried), failed (and with which exception type), hangs
(a generation still running after ``--hang-s``); lost tokens = billed tokens the server reported
in the answers the client could read, minus the tokens in every report and partial output
(goal 0: every billed attempt counted); unreadable answers (truncated bodies: billed, token
count unknowable) are counted as calls. Writes benchmarks/results/soak.json. Loopback only;
bounded by ``--generations`` and ``--max-s``.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.common import print_table, set_threads, write_result  # noqa: E402


def _prompts() -> list[list[dict[str, str]]]:
    from estimators.collect import as_prompt

    lines = (ROOT / "estimators" / "data" / "train_prompts.txt").read_text().splitlines()
    return [as_prompt(ln.strip()) for ln in lines if ln.strip()]


async def soak(args: argparse.Namespace) -> dict:
    import openai

    import vas_api
    from estimators.baselines import PrefixRewardValue
    from tests.fault_proxy import FaultProxy
    from vas_api.local import LocalServer
    from vas_api.retry import RetryPolicy, use_retry_policy

    prompts = _prompts()
    value = PrefixRewardValue("vader")
    outcomes: collections.Counter[str] = collections.Counter()
    failures: collections.Counter[str] = collections.Counter()
    reported = {"prompt": 0, "completion": 0, "calls": 0, "retries": 0, "short": 0, "tokens": 0}
    hangs = corrupted = 0
    with LocalServer() as server, FaultProxy(server.base_url, rate=args.fault_rate, seed=args.seed,
                                             stall_s=args.timeout_s + 2.0) as proxy:
        client = use_retry_policy(
            openai.AsyncOpenAI(base_url=proxy.base_url, api_key="sk-soak", timeout=args.timeout_s,
                               max_retries=args.max_retries),
            RetryPolicy(initial_delay=args.initial_delay, max_delay=args.max_delay),
        )
        vas = vas_api.wrap(client, value_model=value, beta=args.beta, k=args.k,
                           profile=server.profile, chat_template=str(server.gguf_path))
        gate = asyncio.Semaphore(args.concurrency)
        deadline = time.monotonic() + args.max_s
        started = 0

        def account(report) -> None:
            reported["prompt"] += report.usage.prompt_tokens
            reported["completion"] += report.usage.completion_tokens
            reported["calls"] += report.usage.calls
            reported["retries"] += report.retries
            reported["short"] += report.short_positions
            reported["tokens"] += report.tokens

        async def one(i: int) -> None:
            nonlocal hangs, corrupted, started
            async with gate:
                if time.monotonic() > deadline:
                    outcomes["not started (time)"] += 1
                    return
                started += 1
                mode = "token" if i % args.token_every == 0 else "speculative"
                task = asyncio.ensure_future(vas.chat.completions.create(
                    model=server.model, messages=prompts[i % len(prompts)], max_tokens=args.max_tokens,
                    mode=mode, seed=i))
                try:
                    resp = await asyncio.wait_for(task, args.hang_s)
                except TimeoutError:
                    hangs += 1
                    return
                except vas_api.ProviderError as exc:
                    outcomes["failed"] += 1
                    failures[type(exc).__name__] += 1
                    if exc.partial is not None:
                        account(exc.partial.report)
                        steps = exc.partial.steps[0]
                        corrupted += exc.partial.text != "".join(s.text for s in steps if not s.special)
                    return
                report = resp.vas
                account(report)
                outcomes["completed"] += 1
                outcomes["retried"] += report.retries > 0
                steps = report.traces[0]
                text = resp.choices[0].message.content or ""
                # a stop string is not used, so the text is exactly the committed tokens
                corrupted += text != "".join(s.text for s in steps if not s.special)

        t0 = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(args.generations)))
        wall = time.perf_counter() - t0
        await client.close()
        records = list(proxy.records)
    generation_records = [r for r in records if r.path.endswith("completions")]
    # what the client received and could read; answers written after the client had gone
    # (its timeout) were billed upstream but never seen: counted apart, they are not "lost"
    readable = [r for r in generation_records
                if r.usage is not None and r.fault != "truncated" and r.delivered]
    undelivered = [r for r in generation_records if r.usage is not None and not r.delivered]
    upstream_prompt = sum(r.usage["prompt_tokens"] for r in readable)
    upstream_completion = sum(r.usage["completion_tokens"] for r in readable)
    billed_calls = sum(1 for r in generation_records if r.status == 200 and r.delivered)
    lost = (upstream_prompt + upstream_completion) - (reported["prompt"] + reported["completion"])
    faults = collections.Counter(r.fault for r in generation_records if r.fault)
    return {
        "soak_generations": started,
        "soak_lost_tokens": lost,
        "soak_hangs": hangs,
        "completed": outcomes["completed"],
        "retried": outcomes["retried"],
        "failed": outcomes["failed"],
        "failures_by_type": dict(failures),
        "not_started_time_limit": outcomes["not started (time)"],
        "corrupted_texts": corrupted,
        "generation_calls": len(generation_records),
        "faults_injected": dict(faults),
        "fault_share": len([r for r in generation_records if r.fault]) / max(1, len(generation_records)),
        "billed_calls_upstream": billed_calls,
        "billed_calls_reported": reported["calls"],
        "unreadable_billed_calls": sum(1 for r in generation_records if r.fault == "truncated" and r.delivered),
        "billed_tokens_upstream": upstream_prompt + upstream_completion,
        "billed_tokens_reported": reported["prompt"] + reported["completion"],
        "billed_upstream_after_client_timeout_calls": len(undelivered),
        "billed_upstream_after_client_timeout_tokens": sum(
            r.usage["prompt_tokens"] + r.usage["completion_tokens"] for r in undelivered),
        "retries_reported": reported["retries"],
        "short_positions_reported": reported["short"],
        "tokens_committed": reported["tokens"],
        "wall_s": round(wall, 1),
        "settings": {k: v for k, v in vars(args).items()},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--generations", type=int, default=500)
    ap.add_argument("--concurrency", type=int, default=3,
                    help="generations in flight (the local server answers one call at a time)")
    ap.add_argument("--fault-rate", type=float, default=0.10)
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--beta", type=float, default=1.0)
    ap.add_argument("--token-every", type=int, default=5, help="one generation in this many is token mode")
    ap.add_argument("--timeout-s", type=float, default=10.0, help="the client's timeout (a stall lasts 2 s longer)")
    ap.add_argument("--max-retries", type=int, default=2, help="the SDK client's max_retries (our retry count)")
    ap.add_argument("--initial-delay", type=float, default=0.1, help="first retry backoff (openai-python: 0.5)")
    ap.add_argument("--max-delay", type=float, default=1.0, help="backoff cap (openai-python: 8)")
    ap.add_argument("--hang-s", type=float, default=180.0, help="a generation running longer is a hang")
    ap.add_argument("--max-s", type=float, default=1200.0, help="start no generation after this many seconds")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="soak")
    args = ap.parse_args()
    set_threads(args.threads)
    result = asyncio.run(soak(args))
    rows = [{"metric": k, "value": v} for k, v in result.items() if not isinstance(v, dict)]
    print_table(rows, ["metric", "value"])
    print("faults injected:", result["faults_injected"])
    print("failures by type:", result["failures_by_type"])
    print("written", write_result(args.out, result))


if __name__ == "__main__":
    main()
