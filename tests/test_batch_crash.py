"""kill -9 in the middle of `vas batch` against the real local server, then a rerun: every id
exactly once in the output, and every line written before the kill unchanged."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

N_ITEMS = 200
ROOT = Path(__file__).resolve().parents[1]


def _cli(local_server, inp: Path, out: Path) -> list[str]:
    return [
        sys.executable, "-m", "vas_api.cli", "batch", str(inp), "-o", str(out),
        "--base-url", local_server.base_url, "--model", local_server.model,
        "--max-tokens", "4", "--concurrency", "4", "--mode", "speculative", "--k", "5",
        "--no-progress", "--summary-json", str(out.with_suffix(".summary.json")),
    ]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def test_kill_9_mid_run_then_rerun_gives_every_id_once(local_server, tmp_path):
    from vas_api.profiles import store_profile

    # The CLI gets --base-url only: give it the server's known profile through the profile
    # cache (the session fixture points VAS_API_CACHE_DIR at a private directory), so it does
    # not probe (probing this server stops it: see the batch engineer's report).
    store_profile(local_server.base_url, local_server.model, local_server.profile)
    inp = tmp_path / "in.jsonl"
    inp.write_text("".join(
        json.dumps({"id": f"item-{i}", "prompt": f"Say one word about the number {i}:", "seed": i}) + "\n"
        for i in range(N_ITEMS)
    ))
    out = tmp_path / "out.jsonl"
    proc = subprocess.Popen(_cli(local_server, inp, out), env=_env(), cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 900  # a guard against a hang, not a speed check
    try:
        # Wait until a good part of the job is written, then kill it without warning.
        while time.monotonic() < deadline and proc.poll() is None:
            if out.exists() and out.read_bytes().count(b"\n") >= 30:
                break
            time.sleep(0.05)
        assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    snapshot = out.read_bytes()
    complete = snapshot[: snapshot.rfind(b"\n") + 1]
    n_before = complete.count(b"\n")
    assert 30 <= n_before < N_ITEMS

    rerun = subprocess.run(_cli(local_server, inp, out), env=_env(), cwd=ROOT,
                           capture_output=True, text=True, timeout=900)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    final = out.read_bytes()
    # Lines written before the kill are unchanged (a torn last line is the only thing cut).
    assert final.startswith(complete)
    recs = [json.loads(line) for line in final.splitlines()]
    ids = [r["id"] for r in recs]
    assert len(ids) == len(set(ids)) == N_ITEMS
    assert set(ids) == {f"item-{i}" for i in range(N_ITEMS)}
    assert all(r["status"] == "ok" and r["text"] is not None for r in recs)
    summary = json.loads(out.with_suffix(".summary.json").read_text())
    assert summary["skipped"] == n_before and summary["done"] == N_ITEMS - n_before
    assert summary["spend_usd"] == 0 and summary["spend_recomputed_usd"] == 0  # a local server
