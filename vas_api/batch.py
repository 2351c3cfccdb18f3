"""Cost-capped, resumable batch jobs: many VAS requests from a JSONL file into a JSONL file.

    summary = vas_api.run_batch(client, "in.jsonl", "out.jsonl", model="gpt-x", max_usd=2.0)
    summary = await vas_api.arun_batch(async_client, "in.jsonl", "out.jsonl", model=..., concurrency=16)

Input: one JSON object a line with an ``id`` (string or integer) and a ``prompt`` (string) or
``messages`` (OpenAI chat messages), plus optional per-item settings: ``model`` and any of
`ITEM_OPTIONS` (VAS settings, SDK settings, per-item caps). Lines that cannot be run (bad
JSON, no id, an id seen before, an empty prompt, an unknown option, both or neither of prompt
and messages) are reported with their line numbers and skipped; blank lines are ignored.

Output: one complete JSON line per item, appended, flushed and fsynced as soon as the item
ends: ``{"id", "status": "ok" | "error" | "budget", ...}`` with the text, finish reason, usage,
spend and the raw usage record of every API call. A rerun skips the ids already "ok", runs the
rest again and first drops their old "error"/"budget" lines (rewriting the file atomically), so
every id appears once; a torn last line (a crash or kill -9 while writing) is cut off. A crash
therefore loses at most the items in flight and never duplicates one.

Retries: the call layer (the SDK's max_retries / the provider adapter) is the one retry layer;
this runner never calls an item twice. A rate limit that escapes it pauses the start of new
items for its Retry-After and writes the item as an error record (a rerun retries it).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .budget import Budget, request_meter
from .errors import BudgetExceededError, ConfigError, DataError

__all__ = [
    "ITEM_OPTIONS",
    "BatchItem",
    "InputProblem",
    "BatchSummary",
    "read_items",
    "run_batch",
    "arun_batch",
]

ITEM_OPTIONS = (
    "beta", "k", "mode", "seed", "draft_min", "draft_max", "restrict_top_k",  # VAS
    "max_tokens", "temperature", "top_p", "stop", "n",  # SDK
    "max_cost_usd", "max_total_tokens",  # per-item caps
)
"""Settings an input line may carry besides id, prompt / messages and model."""


@dataclass(frozen=True)
class BatchItem:
    """One runnable input line."""

    id: str | int
    line: int
    prompt: str | None = None
    messages: list[dict[str, Any]] | None = None
    model: str | None = None
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return _key(self.id)


@dataclass(frozen=True)
class InputProblem:
    """An input line that was skipped, and why."""

    line: int
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}"


@dataclass
class BatchSummary:
    """What one run of a batch job did.

    Attributes:
        total: runnable items in the input.
        done: items that ended "ok" in this run.
        failed: items written as "error" records in this run.
        stopped_by_budget: items written as "budget" records (a cap stopped them).
        skipped: items already "ok" in the output before this run.
        not_started: items not started because the job's cap was reached or a rate limit
            outlasted the job (a rerun runs them).
        invalid: input lines skipped (see `problems`).
        spend_usd: the job's spend in this run from its Budget (None: a price was unknown).
        spend_recomputed_usd: the same, recomputed from the raw usage records written to the
            output in this run (prompt, cached, completion tokens at the prices).
        tokens: billed tokens (prompt + completion) in this run.
        api_calls: API calls in this run.
        seconds: wall time of this run.
        repaired: a torn last line was cut off the output.
        problems: the skipped input lines.
        budget_message: why the job stopped early, if its cap did.
    """

    total: int = 0
    done: int = 0
    failed: int = 0
    stopped_by_budget: int = 0
    skipped: int = 0
    not_started: int = 0
    invalid: int = 0
    spend_usd: float | None = 0.0
    spend_recomputed_usd: float | None = 0.0
    tokens: int = 0
    api_calls: int = 0
    seconds: float = 0.0
    repaired: bool = False
    problems: list[InputProblem] = field(default_factory=list)
    budget_message: str | None = None

    def as_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in self.__dict__.items() if k != "problems"}
        d["problems"] = [str(p) for p in self.problems]
        return d

    def __str__(self) -> str:
        spend = "unknown" if self.spend_usd is None else f"${self.spend_usd:.6f}"
        again = "unknown" if self.spend_recomputed_usd is None else f"${self.spend_recomputed_usd:.6f}"
        lines = [
            f"done {self.done}, failed {self.failed}, stopped by budget {self.stopped_by_budget}, "
            f"skipped (already done) {self.skipped}, not started {self.not_started}, "
            f"invalid lines {self.invalid} (of {self.total} runnable items)",
            f"spend {spend} (recomputed from the usage records: {again}), {self.tokens} billed "
            f"tokens, {self.api_calls} API calls, {self.seconds:.1f} s",
        ]
        if self.repaired:
            lines.append("a torn last output line (from a crash) was cut off")
        if self.budget_message:
            lines.append(f"stopped early: {self.budget_message}")
        lines += [f"skipped {p}" for p in self.problems]
        return "\n".join(lines)


# -- input --------------------------------------------------------------------------------------


def _key(item_id: Any) -> str:
    return str(item_id)


def _parse_line(obj: Any, line: int) -> BatchItem | str:
    """A BatchItem, or the reason the line cannot be run."""
    if not isinstance(obj, dict):
        return f"expected a JSON object, got {type(obj).__name__}"
    if "id" not in obj:
        return "no 'id'"
    item_id = obj["id"]
    if isinstance(item_id, bool) or not isinstance(item_id, str | int) or _key(item_id).strip() == "":
        return f"'id' must be a non-empty string or an integer, got {item_id!r}"
    unknown = sorted(set(obj) - {"id", "prompt", "messages", "model", *ITEM_OPTIONS})
    if unknown:
        return f"unknown option(s) {unknown}; known: prompt, messages, model, {', '.join(ITEM_OPTIONS)}"
    prompt, messages = obj.get("prompt"), obj.get("messages")
    if (prompt is None) == (messages is None):
        return "give exactly one of 'prompt' and 'messages'"
    if prompt is not None and (not isinstance(prompt, str) or not prompt.strip()):
        return "'prompt' is empty (or not a string)"
    if messages is not None and (
        not isinstance(messages, list) or not messages
        or any(not isinstance(m, dict) or "role" not in m for m in messages)
        or not any(isinstance(m.get("content"), str) and m["content"].strip() for m in messages)
    ):
        return "'messages' must be a non-empty list of {'role', 'content'} objects with some text"
    model = obj.get("model")
    if model is not None and (not isinstance(model, str) or not model):
        return f"'model' must be a non-empty string, got {model!r}"
    options = {k: obj[k] for k in ITEM_OPTIONS if k in obj}
    return BatchItem(item_id, line, prompt, messages, model, options)


def read_items(path: str | Path) -> tuple[list[BatchItem], list[InputProblem]]:
    """Parse a batch input file: the runnable items, and the lines skipped with why.

    A duplicate id keeps its first line. Raises DataError only when the file cannot be read.
    """
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as e:
        raise DataError(f"cannot read the batch input {str(p)!r}: {e}") from None
    items: list[BatchItem] = []
    problems: list[InputProblem] = []
    seen: dict[str, int] = {}
    for n, chunk in enumerate(raw.split(b"\n"), start=1):
        if not chunk.strip():
            continue
        try:
            obj = json.loads(chunk)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            problems.append(InputProblem(n, f"not valid JSON ({e.msg if hasattr(e, 'msg') else e})"))
            continue
        parsed = _parse_line(obj, n)
        if isinstance(parsed, str):
            problems.append(InputProblem(n, parsed))
            continue
        if parsed.key in seen:
            problems.append(InputProblem(n, f"duplicate id {parsed.id!r} (first on line {seen[parsed.key]}; this line is skipped)"))
            continue
        seen[parsed.key] = n
        items.append(parsed)
    return items, problems


# -- output ---------------------------------------------------------------------------------------


class _Output:
    """The append-only output file: repaired and compacted on open, one fsynced line per item."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.done: set[str] = set()
        self.repaired = False
        self._prepare()
        self._fh = open(path, "ab")  # noqa: SIM115 - closed by close()

    def _prepare(self) -> None:
        if not self.path.exists():
            self.path.parent.mkdir(parents=True, exist_ok=True)
            return
        raw = self.path.read_bytes()
        complete, _, torn = raw.rpartition(b"\n")
        if torn:
            # A line without its newline was being written when the process died.
            self.repaired = True
        keep: list[bytes] = []
        dropped = False
        for line in complete.split(b"\n") if complete else []:
            try:
                rec = json.loads(line)
                key, status = _key(rec["id"]), rec.get("status")
            except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError):
                dropped = True  # not a record this runner wrote whole; drop it
                continue
            if status == "ok" and key not in self.done:
                self.done.add(key)
                keep.append(line)
            else:
                dropped = True  # a failed or budget-stopped item (run again) or a duplicate
        if dropped or self.repaired:
            self._rewrite(keep)

    def _rewrite(self, lines: list[bytes]) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "wb") as fh:
            fh.write(b"".join(line + b"\n" for line in lines))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)
        with contextlib.suppress(OSError):  # make the rename itself durable
            dfd = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)

    def write(self, record: Mapping[str, Any]) -> None:
        data = (json.dumps(record, ensure_ascii=False, allow_nan=False) + "\n").encode("utf-8")
        self._fh.write(data)  # one write of the whole line
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def close(self) -> None:
        self._fh.close()


# -- records ------------------------------------------------------------------------------------


def _text_of(resp: Any) -> list[str]:
    out = []
    for c in resp.choices:
        msg = getattr(c, "message", None)
        out.append(msg.content if msg is not None else c.text)
    return out


def _ok_record(item: BatchItem, model: str, resp: Any, seconds: float) -> dict[str, Any]:
    rep = resp.vas
    texts = _text_of(resp)
    rec: dict[str, Any] = {
        "id": item.id,
        "status": "budget" if rep.stopped_by_budget else "ok",
        "model": model,
        "text": texts[0],
        "finish_reason": resp.choices[0].finish_reason,
    }
    if len(texts) > 1:
        rec["choices"] = [{"text": t, "finish_reason": c.finish_reason} for t, c in zip(texts, resp.choices, strict=True)]
    rec.update(_spend(rep.usage_records))
    rec["vas"] = {"mode": rep.mode, "k": rep.k, "betas": list(rep.betas), "api_calls": rep.api_calls,
                  "tokens": rep.tokens, "drafted": rep.drafted, "accepted": rep.accepted,
                  "tested": rep.tested, "time_api_s": round(rep.time_api_s, 4),
                  "time_value_s": round(rep.time_value_s, 4)}
    if rep.stopped_by_budget:
        rec["error"] = {"type": "BudgetExceededError", "message": rep.stopped_by_budget}
    rec["seconds"] = round(seconds, 4)
    return rec


def _spend(records: list[Any]) -> dict[str, Any]:
    costs = [r.cost_usd for r in records]
    return {
        "usage": {
            "prompt_tokens": sum(r.prompt_tokens for r in records),
            "cached_tokens": sum(r.cached_tokens for r in records),
            "completion_tokens": sum(r.completion_tokens for r in records),
            "calls": sum(r.calls for r in records),
        },
        "cost_usd": None if any(c is None for c in costs) else sum(costs),
        "usage_records": [r.as_dict() for r in records],
    }


def _error_record(item: BatchItem, model: str, exc: BaseException, budget: Budget, seconds: float) -> dict[str, Any]:
    rec: dict[str, Any] = {"id": item.id, "status": "error", "model": model,
                           "error": {"type": type(exc).__name__, "message": str(exc)[:2000]}}
    if isinstance(exc, BudgetExceededError):
        rec["status"] = "budget"
        partial = exc.partial
        if partial is not None and hasattr(partial, "choices"):
            rec["text"] = _text_of(partial)[0]
            rec["finish_reason"] = "budget"
    rec.update(_spend(list(budget.records)))
    rec["seconds"] = round(seconds, 4)
    return rec


# -- rate limits --------------------------------------------------------------------------------


def _retry_after(exc: BaseException) -> float | None:
    """Seconds a rate-limit error asks to wait (None: not a rate limit)."""
    seen = 0
    e: BaseException | None = exc
    while e is not None and seen < 6:
        seen += 1
        after = getattr(e, "retry_after", None)
        if isinstance(after, int | float):
            return float(after)
        status = getattr(e, "status_code", None) or getattr(getattr(e, "response", None), "status_code", None)
        if status == 429 or type(e).__name__ == "RateLimitError":
            headers = getattr(getattr(e, "response", None), "headers", None) or {}
            value = headers.get("retry-after") if hasattr(headers, "get") else None
            try:
                return max(0.0, float(value)) if value is not None else 1.0
            except ValueError:
                return 1.0
        e = e.__cause__ or e.__context__
    return None


def _budget_name(exc: BudgetExceededError) -> str | None:
    e: BaseException | None = exc
    while e is not None:
        name = getattr(e, "budget_name", None)
        if name:
            return name
        e = e.__cause__
    return None


# -- the runner ---------------------------------------------------------------------------------


def _progress(total: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="item", disable=not enabled, dynamic_ncols=True, file=sys.stderr)


async def arun_batch(
    client: Any,
    input_path: str | Path,
    output_path: str | Path,
    *,
    model: str | None = None,
    concurrency: int = 8,
    max_usd: float | None = None,
    max_total_tokens: int | None = None,
    item_max_usd: float | None = None,
    item_max_tokens: int | None = None,
    prices: Mapping[str, Any] | None = None,
    progress: bool = True,
    **defaults: Any,
) -> BatchSummary:
    """Run a batch job with up to `concurrency` items in flight (see the module docstring).

    Args:
        client: a vas_api AsyncVASClient (or a sync VASClient: its calls then run in threads).
        input_path: the JSONL input.
        output_path: the JSONL output (appended; resumed when it exists).
        model: the base model for items that do not name one.
        concurrency: items in flight at once.
        max_usd, max_total_tokens: caps of the whole job (money; billed prompt + completion
            tokens).
        item_max_usd, item_max_tokens: default caps of each item (an item's own
            max_cost_usd / max_total_tokens win).
        prices: prices on top of the shipped table for this job ({model: (in, cached, out)}).
        progress: show a live progress bar (items, spend, tokens/s, ETA) on stderr.
        **defaults: request settings for every item (value_model, beta, k, mode, max_tokens,
            ...); an item's own settings win.

    Returns:
        The BatchSummary of this run.

    Raises:
        ConfigError: bad settings, or a model without a known price and no token cap: before
            any call. DataError: the input cannot be read.
    """
    if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
        raise ConfigError(f"concurrency = {concurrency!r}: use a positive integer.")
    start = time.perf_counter()
    job = Budget(max_usd=max_usd, max_tokens=max_total_tokens, name="job")
    Budget(max_usd=item_max_usd, max_tokens=item_max_tokens)  # validates the item caps
    if prices:
        client.prices = {**(client.prices or {}), **dict(prices)}
    items, problems = read_items(input_path)
    summary = BatchSummary(total=len(items), invalid=len(problems), problems=problems)
    for p in problems:
        print(f"vas batch: skipping input {p}", file=sys.stderr)
    models = {it.model or model for it in items}
    if None in models:
        raise ConfigError("some items name no model: pass model=... (vas batch --model).")
    for m in sorted(models):  # prices and caps checked once per model, before any call
        probe = job.child(max_usd=item_max_usd, max_tokens=item_max_tokens)
        request_meter(m, client.provider(m), prices=client.prices, budget=probe)

    out = _Output(Path(output_path))
    summary.repaired = out.repaired
    todo = [it for it in items if it.key not in out.done]
    summary.skipped = len(items) - len(todo)
    queue: asyncio.Queue[BatchItem] = asyncio.Queue()
    for it in todo:
        queue.put_nowait(it)
    state = {"pause_until": 0.0, "stop": None}
    written_records: list[dict[str, Any]] = []
    from .client import AsyncVASClient

    is_async = isinstance(client, AsyncVASClient)
    bar = _progress(len(todo), progress)
    tokens_at_start = job.spent_tokens

    async def call(item: BatchItem, budget: Budget) -> Any:
        opts = {**defaults, **item.options}
        caps = {"max_cost_usd": opts.pop("max_cost_usd", item_max_usd),
                "max_total_tokens": opts.pop("max_total_tokens", item_max_tokens)}
        kw = dict(model=item.model or model, budget=budget, **{k: v for k, v in caps.items() if v is not None}, **opts)
        if item.prompt is not None:
            fn, kw["prompt"] = client.completions.create, item.prompt
        else:
            fn, kw["messages"] = client.chat.completions.create, item.messages
        return await fn(**kw) if is_async else await asyncio.to_thread(fn, **kw)

    async def worker() -> None:
        while True:
            try:
                item = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            while (wait := state["pause_until"] - time.monotonic()) > 0:
                await asyncio.sleep(wait)
            if state["stop"] is not None:
                summary.not_started += 1
                continue
            budget = job.child(name="item")
            t0 = time.perf_counter()
            m = item.model or model
            try:
                resp = await call(item, budget)
                rec = _ok_record(item, m, resp, time.perf_counter() - t0)
            except BudgetExceededError as e:
                rec = _error_record(item, m, e, budget, time.perf_counter() - t0)
                if _budget_name(e) == "job":
                    state["stop"] = str(e.__cause__ or e)
            except Exception as e:  # noqa: BLE001 - any item failure becomes its error record
                rec = _error_record(item, m, e, budget, time.perf_counter() - t0)
                after = _retry_after(e)
                if after is not None:
                    state["pause_until"] = max(state["pause_until"], time.monotonic() + after)
                    rec["error"]["retry_after_s"] = after
            out.write(rec)
            written_records.append(rec)
            status = rec["status"]
            summary.done += status == "ok"
            summary.failed += status == "error"
            summary.stopped_by_budget += status == "budget"
            bar.update(1)
            elapsed = max(1e-9, time.perf_counter() - start)
            bar.set_postfix_str(
                f"${job.spent_usd:.4f} {(job.spent_tokens - tokens_at_start) / elapsed:.0f} tok/s "
                f"failed {summary.failed}", refresh=False,
            )

    try:
        await asyncio.gather(*(worker() for _ in range(min(concurrency, max(1, len(todo))))))
    finally:
        bar.close()
        out.close()
    summary.budget_message = state["stop"]
    summary.spend_usd = None if job.unpriced_calls else job.spent_usd
    summary.tokens = job.spent_tokens
    summary.api_calls = job.calls
    summary.spend_recomputed_usd = _recompute(written_records, client, model)
    summary.seconds = time.perf_counter() - start
    return summary


def _recompute(records: list[dict[str, Any]], client: Any, default_model: str | None) -> float | None:
    """The spend of the written records from their raw usage fields at the prices."""
    from .pricing import base_url_of, resolve_price

    total = 0.0
    prices: dict[str, Any] = {}
    for rec in records:
        for u in rec.get("usage_records", []):
            m = u["model"]
            if m not in prices:
                prices[m] = resolve_price(m, base_url_of(client.provider(m)), client.prices, token_capped=True)
            p = prices[m]
            if p is None:
                return None
            if u["estimated"]:
                total += p.worst_case(u["prompt_tokens"], u["completion_tokens"])
            else:
                total += p.cost(u["prompt_tokens"], u["completion_tokens"], u["cached_tokens"])
    return total


def run_batch(client: Any, input_path: str | Path, output_path: str | Path, **kwargs: Any) -> BatchSummary:
    """`arun_batch` for scripts and notebooks: runs the job to the end and returns its summary.

    In a notebook (an event loop already running) the job runs on its own loop in a thread.
    Same arguments as `arun_batch`.
    """
    coro = arun_batch(client, input_path, output_path, **kwargs)
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    result: dict[str, Any] = {}

    def target() -> None:
        try:
            result["value"] = asyncio.run(coro)
        except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread
            result["error"] = e

    t = threading.Thread(target=target, name="vas-batch")
    t.start()
    t.join()
    if "error" in result:
        raise result["error"]
    return result["value"]
