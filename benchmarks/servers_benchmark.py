"""VAS on both real local servers, from one run: errors, calls per token, reward at beta 0 and 4.

Per server (the embedded llama-cpp-python server, and llama.cpp's llama-server when its binary
is known: $VAS_API_LLAMA_SERVER or /work/wt/briefs/llama_server_path.txt), with SmolLM2-135M:
- `generations` VAS generations at beta 4, speculative mode, on prompts that invite emoji and
  French, German, Russian, Chinese and Japanese text; `errors` counts the ones that raised;
- calls_per_token_beta1: API calls per generated token at beta 1 on the held-out prompts;
- mean_reward_beta0 / mean_reward_beta4: the VADER reward of the response on the held-out
  prompts (estimators/data/heldout_prompts.txt), value = `reward:vader` (VADER of the prefix).
Writes benchmarks/results/servers_benchmark.json and prints a table.

    python benchmarks/servers_benchmark.py --generations 100 --heldout 8 --max-tokens 32
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import sys
import time
import traceback
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import vas_api  # noqa: E402
from estimators.baselines import PrefixRewardValue  # noqa: E402
from estimators.rewards import VaderReward  # noqa: E402

MULTILINGUAL = [
    "Écris une phrase joyeuse sur la mer, avec des emoji.",
    "Schreibe einen fröhlichen Satz über den Winter mit Emoji.",
    "Напиши короткое доброе пожелание другу.",
    "用中文写一句关于春天的话。",
    "日本語で猫についての短い文を書いてください。",
    "Reply only with emoji that describe a party 🎉",
    "Describe your favourite food using lots of emoji.",
    "Translate 'good morning, friend' into French, German, Russian, Chinese and Japanese.",
    "Écris un message d'anniversaire avec des emoji 🎂.",
    "Wie war dein Tag? Antworte mit Emoji.",
]


def llama_server_binary() -> str | None:
    """The llama-server binary the `servers` work built, when known."""
    env = os.environ.get("VAS_API_LLAMA_SERVER")
    if env and Path(env).is_file():
        return env
    note = Path("/work/wt/briefs/llama_server_path.txt")
    if note.is_file():
        path = note.read_text().strip()
        return path if Path(path).is_file() else None
    return None


def _die_with_parent() -> None:
    import ctypes
    import signal

    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class _BareLlamaServer:
    """A minimal llama-server launcher for checkouts without `vas_api.local.LlamaServer` (the
    `servers` work's launcher, used when present): free port, readiness wait, hand-made profile
    (chat-shape logprobs with ids, id prompts, /tokenize, top_k)."""

    model = "smollm2-135m-instruct"

    def __init__(self, binary: str) -> None:
        from vas_api.local import find_smollm2_gguf

        self.binary, self.gguf_path = binary, find_smollm2_gguf()

    def __enter__(self):
        import socket
        import subprocess

        import httpx

        from vas_api.types import ProviderProfile

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        env = {**os.environ, "LD_LIBRARY_PATH": str(Path(self.binary).parent)}
        self.log = open(f"/tmp/llama-server-bench-{port}.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [self.binary, "-m", str(self.gguf_path), "--host", "127.0.0.1", "--port", str(port), "-t", "1",
             "--alias", self.model, "-c", "2048"], stdout=self.log, stderr=subprocess.STDOUT, env=env,
            preexec_fn=_die_with_parent)
        self.base_url = f"http://127.0.0.1:{port}/v1"
        for _ in range(600):
            try:
                if httpx.get(self.base_url + "/models", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        else:
            raise RuntimeError(f"llama-server did not start; see {self.log.name}")
        from vas_api.logprobs import DEFAULT_SPECIAL_TOKENS

        self.profile = ProviderProfile(
            name="llama.cpp server", max_top_k=None, logprob_shape="chat", continuation="completions",
            top_k_param=True, n_param=False, token_id_prompts=True,
            extra={"sampler_dialect": "llama.cpp", "family": "llama.cpp",
                   "special_tokens": sorted(DEFAULT_SPECIAL_TOKENS)},
        )
        return self

    def client(self, **kw):
        import openai

        return openai.OpenAI(base_url=self.base_url, api_key="none", **kw)

    def __exit__(self, *exc) -> None:
        self.proc.terminate()
        self.proc.wait(10)
        self.log.close()


def run_server(name: str, client, model: str, options: dict, args, value, reward) -> dict:
    """Every measurement of one server; errors are counted, never raised."""
    vas = vas_api.wrap(client, value_model=value, k=args.k, **options)
    errors: Counter = Counter()
    examples: list[str] = []
    continuations: Counter = Counter()
    t0 = time.perf_counter()
    for i in range(args.generations):
        prompt = MULTILINGUAL[i % len(MULTILINGUAL)]
        try:
            r = vas.chat.completions.create(
                model=model, messages=[{"role": "user", "content": prompt}],
                max_tokens=args.max_tokens, beta=4.0, mode="speculative", seed=i,
            )
            continuations[r.vas.continuation] += 1
            if len(examples) < 6:
                examples.append(r.choices[0].message.content)
        except Exception as exc:  # counted: the point is that there are none
            errors[f"{type(exc).__name__}: {str(exc)[:120]}"] += 1
            traceback.print_exc(limit=3)
    multi_s = time.perf_counter() - t0
    heldout = [p for p in (ROOT / "estimators/data/heldout_prompts.txt").read_text().splitlines() if p.strip()]
    heldout = heldout[: args.heldout]
    rewards: dict[float, list[float]] = {}
    calls = tokens = 0
    for beta in (0.0, 1.0, 4.0):
        rewards[beta] = []
        for j, prompt in enumerate(heldout):
            try:
                r = vas.chat.completions.create(
                    model=model, messages=[{"role": "user", "content": prompt}],
                    max_tokens=args.max_tokens, beta=beta, mode="speculative", seed=1000 + j,
                )
            except Exception as exc:
                errors[f"heldout {type(exc).__name__}: {str(exc)[:120]}"] += 1
                continue
            continuations[r.vas.continuation] += 1
            rewards[beta].append(reward([prompt], [r.choices[0].message.content])[0])
            if beta == 1.0:
                calls, tokens = calls + r.vas.api_calls, tokens + r.vas.tokens
    return {
        "server": name,
        "generations": args.generations,
        "errors": sum(errors.values()),
        "error_kinds": dict(errors),
        "calls_per_token_beta1": calls / tokens if tokens else None,
        "mean_reward_beta0": statistics.fmean(rewards[0.0]) if rewards[0.0] else None,
        "mean_reward_beta4": statistics.fmean(rewards[4.0]) if rewards[4.0] else None,
        "heldout_prompts": len(heldout),
        "continuation": dict(continuations),
        "multilingual_seconds": round(multi_s, 1),
        "examples": examples,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--generations", type=int, default=100)
    ap.add_argument("--heldout", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--servers", default="llama-cpp-python,llama-server",
                    help="comma-separated: llama-cpp-python, llama-server (default both, in one run)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/servers_benchmark.json"))
    args = ap.parse_args()

    from vas_api.commands.generate import local_options
    from vas_api.local import LocalServer

    reward = VaderReward()
    binary = llama_server_binary()
    wanted = {x.strip() for x in args.servers.split(",")}
    launchers: list[tuple[str, object, bool]] = []
    if "llama-cpp-python" in wanted:
        launchers.append(("llama-cpp-python (vas-api exact reporter)", LocalServer(), True))
    if binary is not None and "llama-server" in wanted:
        try:
            from vas_api.local import LlamaServer  # the `servers` work's launcher
        except ImportError:
            launchers.append(("llama-server", _BareLlamaServer(binary), False))
        else:
            launchers.append(("llama-server", LlamaServer(), False))
    # Both servers at once, one thread each (each server is single-threaded, -t 1).
    with contextlib.ExitStack() as stack, ThreadPoolExecutor(max(1, len(launchers))) as pool:
        jobs = []
        for name, launcher, embedded in launchers:
            srv = stack.enter_context(launcher)  # type: ignore[arg-type]
            client = srv.client(max_retries=0, timeout=300)
            opts = local_options(srv) if embedded else {"profile": srv.profile, "chat_template": str(srv.gguf_path)}
            jobs.append(pool.submit(run_server, name, client, srv.model, opts, args,
                                    PrefixRewardValue("vader"), reward))
        results = [j.result() for j in jobs]
    if binary is None and "llama-server" in wanted:
        results.append({"server": "llama-server", "skipped": "no llama-server binary on this machine yet"})
    out = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.node()} ({os.cpu_count()} cores, shared, busy)",
        "value": "reward:vader (VADER of the prefix, PrefixRewardValue)",
        "settings": {"max_tokens": args.max_tokens, "k": args.k, "beta_multilingual": 4.0,
                     "mode": "speculative"},
        "results": results,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1, ensure_ascii=False) + "\n")
    print(f"{'server':44} {'gens':>5} {'errors':>6} {'calls/tok b1':>12} {'R b0':>7} {'R b4':>7}  continuation")
    for r in results:
        if "skipped" in r:
            print(f"{r['server']:44} skipped: {r['skipped']}")
            continue
        fmt = lambda x: "n/a" if x is None else f"{x:.3f}"  # noqa: E731
        print(f"{r['server']:44} {r['generations']:>5} {r['errors']:>6} {fmt(r['calls_per_token_beta1']):>12} "
              f"{fmt(r['mean_reward_beta0']):>7} {fmt(r['mean_reward_beta4']):>7}  {r['continuation']}")


if __name__ == "__main__":
    main()
