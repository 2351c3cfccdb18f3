"""Batch jobs over the fake provider: malformed input, resume, torn-line repair, error records,
rate-limit pause, job caps, and the spend summary against the raw usage records."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import httpx
import openai
import pytest
import respx

import vas_api
from vas_api.batch import arun_batch, read_items, run_batch
from vas_api.errors import ConfigError, ProviderError
from vas_api.profiles import OPENAI_COMPLETIONS
from vas_api.providers.fake import EOS, AsyncFakeProvider, FakeProvider, table_model

TABLE = {" good": 0.3, " bad": 0.3, " fine": 0.2, " ok": 0.1, "!": 0.05, EOS: 0.05}
PRICES = {"fake": (2.0, 0.5, 8.0)}


def client(provider=None, **kw):
    provider = provider or AsyncFakeProvider(FakeProvider(table_model(TABLE), seed=0))
    return vas_api.wrap(provider, k=4, prices=PRICES, **kw)


def write_items(path: Path, n: int, start: int = 0) -> Path:
    path.write_text("".join(json.dumps({"id": f"q{i}", "prompt": f"Item {i}:", "max_tokens": 6, "seed": i}) + "\n"
                            for i in range(start, start + n)))
    return path


def records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_malformed_lines_are_reported_with_line_numbers_and_skipped(tmp_path):
    lines = [
        json.dumps({"id": "a", "prompt": "Hello:"}),                      # 1 ok
        "{not json",                                                      # 2 bad JSON
        json.dumps({"prompt": "no id"}),                                  # 3 missing id
        json.dumps({"id": "a", "prompt": "again"}),                       # 4 duplicate id
        json.dumps({"id": "b", "prompt": "   "}),                         # 5 empty prompt
        json.dumps({"id": "c", "prompt": "x", "temprature": 1.0}),        # 6 unknown option
        json.dumps({"id": "d", "prompt": "x", "messages": [{"role": "user", "content": "y"}]}),  # 7 both
        "",                                                               # 8 blank: ignored
        json.dumps(["id", "e"]),                                          # 9 not an object
        json.dumps({"id": "f", "messages": [{"role": "user", "content": "Hi"}], "beta": 0.0}),  # 10 ok
        json.dumps({"id": True, "prompt": "x"}),                          # 11 bad id
        json.dumps({"id": "g", "messages": []}),                          # 12 empty messages
    ]
    inp = tmp_path / "in.jsonl"
    inp.write_text("\n".join(lines) + "\n")
    items, problems = read_items(inp)
    assert [it.id for it in items] == ["a", "f"]
    by_line = {p.line: p.message for p in problems}
    assert sorted(by_line) == [2, 3, 4, 5, 6, 7, 9, 11, 12]
    assert "JSON" in by_line[2] and "id" in by_line[3] and "duplicate" in by_line[4] and "line 1" in by_line[4]
    assert "empty" in by_line[5] and "temprature" in by_line[6] and "exactly one" in by_line[7]
    out = tmp_path / "out.jsonl"
    summary = run_batch(client(), inp, out, model="fake", progress=False, max_tokens=4)
    assert summary.invalid == 9 and summary.done == 2 and summary.failed == 0
    assert {r["id"] for r in records(out)} == {"a", "f"}
    assert "line 6" in str(summary)


def test_rerun_skips_done_ids_and_repairs_a_torn_last_line(tmp_path):
    inp = write_items(tmp_path / "in.jsonl", 12)
    out = tmp_path / "out.jsonl"
    first = run_batch(client(), inp, out, model="fake", progress=False, concurrency=3)
    assert first.done == 12 and first.skipped == 0
    before = out.read_bytes()
    again = run_batch(client(), inp, out, model="fake", progress=False)
    assert again.skipped == 12 and again.done == 0 and out.read_bytes() == before
    # A kill while writing leaves half a line: it is cut off and that item runs again.
    lines = before.splitlines(keepends=True)
    kept = b"".join(lines[:7])
    out.write_bytes(kept + lines[7][: len(lines[7]) // 2])
    third = run_batch(client(), inp, out, model="fake", progress=False)
    assert third.repaired and third.skipped == 7 and third.done == 5
    assert out.read_bytes().startswith(kept)
    ids = [r["id"] for r in records(out)]
    assert sorted(ids) == sorted(f"q{i}" for i in range(12)) and len(ids) == len(set(ids))


class Flaky(AsyncFakeProvider):
    """Fails every call whose prompt is in `bad` (an HTTP error the provider did not bill)."""

    def __init__(self, bad: set[str], retry_after: float | None = None):
        super().__init__(FakeProvider(table_model(TABLE), seed=0))
        self.bad, self.retry_after, self.starts = bad, retry_after, []

    async def draft(self, prefix, **kw):
        self.starts.append((prefix.prompt, time.monotonic()))
        if prefix.prompt in self.bad:
            err = ProviderError(f"HTTP 500 for {prefix.prompt}")
            if self.retry_after is not None:
                err.retry_after = self.retry_after
            raise err
        return await super().draft(prefix, **kw)


def test_item_errors_are_records_the_job_goes_on_and_a_rerun_retries_them(tmp_path):
    inp = write_items(tmp_path / "in.jsonl", 10)
    out = tmp_path / "out.jsonl"
    s1 = run_batch(client(Flaky({"Item 3:", "Item 7:"})), inp, out, model="fake", progress=False,
                   mode="speculative")
    assert (s1.done, s1.failed) == (8, 2)
    errs = [r for r in records(out) if r["status"] == "error"]
    assert {r["id"] for r in errs} == {"q3", "q7"} and all("HTTP 500" in r["error"]["message"] for r in errs)
    s2 = run_batch(client(), inp, out, model="fake", progress=False, mode="speculative")
    assert (s2.skipped, s2.done, s2.failed) == (8, 2, 0)
    recs = records(out)
    assert sorted(r["id"] for r in recs) == sorted(f"q{i}" for i in range(10))
    assert all(r["status"] == "ok" for r in recs)


def test_rate_limit_pauses_new_items_for_retry_after(tmp_path):
    inp = write_items(tmp_path / "in.jsonl", 6)
    out = tmp_path / "out.jsonl"
    provider = Flaky({"Item 0:"}, retry_after=0.3)
    summary = run_batch(client(provider), inp, out, model="fake", progress=False, concurrency=1,
                        mode="speculative")
    assert summary.failed == 1 and summary.done == 5
    rec = next(r for r in records(out) if r["id"] == "q0")
    assert rec["error"]["retry_after_s"] == 0.3
    t_fail = next(t for p, t in provider.starts if p == "Item 0:")
    t_next = min(t for p, t in provider.starts if p != "Item 0:")
    assert t_next - t_fail >= 0.3  # no item started inside the pause
    # The runner itself never calls a failed item again.
    assert sum(p == "Item 0:" for p, _ in provider.starts) == 1


def test_job_cap_stops_the_job_under_concurrency_and_spend_matches_records(tmp_path):
    inp = write_items(tmp_path / "in.jsonl", 40)
    out = tmp_path / "out.jsonl"
    cap = 3e-3
    s = run_batch(client(), inp, out, model="fake", progress=False, concurrency=8, max_usd=cap,
                  mode="token")
    assert s.budget_message and "job" in s.budget_message
    assert s.spend_usd <= cap and s.not_started > 0 and s.done < 40
    assert s.spend_recomputed_usd == pytest.approx(s.spend_usd, rel=1e-9)
    written = records(out)
    assert sum(r["cost_usd"] for r in written) == pytest.approx(s.spend_usd, rel=1e-9)
    stopped = [r for r in written if r["status"] == "budget"]
    assert all(r["finish_reason"] == "budget" for r in stopped)
    # With room again the rest runs; every id once.
    s2 = run_batch(client(), inp, out, model="fake", progress=False, concurrency=8, mode="token")
    ids = [r["id"] for r in records(out)]
    assert s2.done == 40 - s.done and sorted(ids) == sorted(f"q{i}" for i in range(40))


def test_item_caps_and_async_entry_point(tmp_path):
    inp = tmp_path / "in.jsonl"
    inp.write_text(json.dumps({"id": 1, "prompt": "Long:", "max_tokens": 400, "max_total_tokens": 200}) + "\n"
                   + json.dumps({"id": 2, "prompt": "Short:", "max_tokens": 3}) + "\n")
    out = tmp_path / "out.jsonl"
    s = asyncio.run(arun_batch(client(), inp, out, model="fake", progress=False, mode="token"))
    by_id = {r["id"]: r for r in records(out)}
    assert by_id[1]["status"] == "budget" and by_id[1]["usage"]["prompt_tokens"] + by_id[1]["usage"]["completion_tokens"] <= 200
    assert by_id[2]["status"] == "ok" and s.stopped_by_budget == 1 and s.done == 1


def test_unknown_hosted_model_refused_before_any_call(tmp_path):
    inp = write_items(tmp_path / "in.jsonl", 2)
    base = "https://api.example.com/v1"
    with respx.mock(base_url=base, assert_all_called=False) as mock:
        route = mock.post("/completions").respond(500)
        sdk = openai.OpenAI(base_url=base, api_key="sk-test", max_retries=0, http_client=httpx.Client())
        vas = vas_api.wrap(sdk, profile=OPENAI_COMPLETIONS, k=2)
        with pytest.raises(ConfigError, match="no price is known"):
            run_batch(vas, inp, tmp_path / "out.jsonl", model="secret-model", progress=False)
        assert not route.called and not (tmp_path / "out.jsonl").exists()
    with pytest.raises(ConfigError, match="concurrency"):
        run_batch(client(), inp, tmp_path / "o.jsonl", model="fake", concurrency=0)


def test_sync_client_runs_items_in_threads(tmp_path):
    inp = write_items(tmp_path / "in.jsonl", 8)
    out = tmp_path / "out.jsonl"
    sync = vas_api.wrap(FakeProvider(table_model(TABLE), seed=0), k=4, prices=PRICES)
    s = run_batch(sync, inp, out, model="fake", progress=False, concurrency=4, max_usd=1.0)
    assert s.done == 8 and 0 < s.spend_usd <= 1.0
    assert s.spend_recomputed_usd == pytest.approx(s.spend_usd, rel=1e-9)


def test_run_batch_inside_a_running_event_loop_like_a_notebook(tmp_path):
    inp = write_items(tmp_path / "in.jsonl", 4)
    out = tmp_path / "out.jsonl"

    async def cell():  # a notebook cell: an event loop is already running
        return run_batch(client(), inp, out, model="fake", progress=False)

    s = asyncio.run(cell())
    assert s.done == 4 and len(records(out)) == 4
