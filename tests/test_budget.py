"""Prices, usage accounting and hard caps (vas_api.pricing, vas_api.budget, the client hook).

The cap tests are properties (hypothesis): whatever the usages and however many requests are
in flight (threads or asyncio tasks), the spend never passes a cap.
"""

from __future__ import annotations

import asyncio
import json
import threading

import httpx
import openai
import pytest
import respx
from hypothesis import given, settings
from hypothesis import strategies as st

import vas_api
from vas_api.budget import Budget, Meter, UsageRecord
from vas_api.errors import BudgetExceededError, ConfigError
from vas_api.pricing import (
    LOCAL_PRICE,
    Price,
    PriceTable,
    default_prices,
    parse_price,
    resolve_price,
)
from vas_api.profiles import OPENAI_COMPLETIONS
from vas_api.providers.fake import EOS, AsyncFakeProvider, FakeProvider, table_model
from vas_api.sampler.core import CandidatesCall, DraftCall
from vas_api.types import Prefix, Usage

TABLE = {"good": 0.3, " bad": 0.3, " fine": 0.2, " ok": 0.1, "!": 0.05, EOS: 0.05}
PRICE = Price(2.0, 0.5, 8.0, "test")


# -- prices ---------------------------------------------------------------------------------------


def test_shipped_table_has_every_provider_with_sources():
    data = json.loads((vas_api.pricing.resources.files("vas_api") / "data/prices.json").read_text())
    assert data["checked"] and "could NOT be re-checked" in data["note"]
    providers = {m["provider"] for m in data["models"].values()}
    assert {"openai", "anthropic", "together", "fireworks", "deepseek", "mistral"} <= providers
    assert all(m["source"] and m["source_date"] for m in data["models"].values())
    table = default_prices()
    assert len(table) == len(data["models"])


def test_lookup_exact_dated_and_prefixed_names():
    table = default_prices()
    p = table.lookup("gpt-4o-mini")
    assert p is not None and p.cached_input is not None and p.cached_input < p.input
    assert table.lookup("gpt-4o-mini-2024-07-18") == p
    assert table.lookup("openai/GPT-4o-mini") == p
    assert table.lookup("gpt-oss-120b") == table.lookup("accounts/fireworks/models/gpt-oss-120b")
    assert table.lookup("no-such-model-xyz") is None


def test_cached_tokens_cost_their_own_price():
    full = PRICE.cost(1000, 0, 0)
    half_cached = PRICE.cost(1000, 0, 500)
    assert half_cached < full
    assert half_cached == pytest.approx(500 * 2.0 / 1e6 + 500 * 0.5 / 1e6)
    # No cached price: cached tokens are billed as input.
    assert Price(2.0, None, 8.0).cost(1000, 10, 500) == Price(2.0, None, 8.0).cost(1000, 10, 0)


def test_parse_price_and_bad_prices():
    model, p = parse_price("my-model=0.1,0.05,0.4")
    assert model == "my-model" and (p.input, p.cached_input, p.output) == (0.1, 0.05, 0.4)
    assert parse_price("m=1,2")[1].cached_input is None
    for bad in ("m", "m=1", "=1,2,3", "m=a,b,c", "m=1,2,3,4"):
        with pytest.raises(ConfigError, match="MODEL=INPUT"):
            parse_price(bad)
    with pytest.raises(ConfigError, match="finite number"):
        Price(-1.0, None, 1.0)


def test_resolve_price_local_hosted_unknown_and_user(tmp_path, monkeypatch):
    assert resolve_price("anything", "http://127.0.0.1:8080/v1") == LOCAL_PRICE
    assert resolve_price("anything", None) == LOCAL_PRICE
    assert resolve_price("gpt-4o", "https://api.openai.com/v1").input > 0
    with pytest.raises(ConfigError, match="no price is known") as e:
        resolve_price("secret-model", "https://api.example.com/v1")
    assert "max_total_tokens" in str(e.value) and "--price" in str(e.value)
    assert resolve_price("secret-model", "https://api.example.com/v1", token_capped=True) is None
    user = resolve_price("secret-model", "https://api.example.com/v1", {"secret-model": (1, 0.5, 2)})
    assert user.output == 2
    # A user price wins over the shipped one and over "local is free".
    assert resolve_price("gpt-4o", "https://api.openai.com/v1", {"gpt-4o": (9, 9, 9)}).input == 9
    f = tmp_path / "prices.json"
    f.write_text(json.dumps({"models": {"secret-model": {"input": 3, "output": 4}}}))
    monkeypatch.setenv("VAS_API_PRICES", str(f))
    assert resolve_price("secret-model", "https://api.example.com/v1").input == 3
    f.write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        resolve_price("secret-model", "https://api.example.com/v1")


def test_price_table_merge_overrides():
    base = PriceTable({"a": (1, None, 1)})
    merged = base.merged({"a": (2, None, 2), "b": (3, None, 3)})
    assert merged.lookup("a").input == 2 and merged.lookup("b").input == 3 and base.lookup("a").input == 1


# -- budget -----------------------------------------------------------------------------------


def _record(prompt: int, completion: int, price: Price | None = PRICE, cached: int = 0) -> UsageRecord:
    cost = None if price is None else price.cost(prompt, completion, cached)
    return UsageRecord("m", "draft", prompt, cached, completion, 1, cost)


def test_reserve_refuses_what_does_not_fit_and_settle_frees_the_rest():
    b = Budget(max_tokens=100, name="job")
    r = b.reserve(60, None)
    with pytest.raises(BudgetExceededError) as e:
        b.reserve(50, None)
    assert e.value.unit == "tokens" and e.value.limit == 100 and "job" in str(e.value)
    b.settle(r, _record(20, 5, None))
    assert b.spent_tokens == 25 and b.reserved_tokens == 0
    b.reserve(75, None)  # fits now
    with pytest.raises(ConfigError, match="finite number"):
        Budget(max_usd=float("nan"))
    with pytest.raises(ConfigError, match="whole number"):
        Budget(max_tokens=1.5)


def test_child_counts_against_parent():
    job = Budget(max_usd=1e-3, name="job")
    a, c = job.child(max_usd=8e-4), job.child()
    ra = a.reserve(10, 6e-4)
    with pytest.raises(BudgetExceededError, match="job"):
        c.reserve(10, 5e-4)
    a.settle(ra, _record(100, 0))
    assert job.spent_usd == pytest.approx(2e-4) and a.spent_usd == pytest.approx(2e-4)
    assert len(a.records) == 1 and job.records == a.records and c.records == []


usages = st.lists(
    st.tuples(st.integers(1, 400), st.integers(1, 64), st.floats(0.0, 1.0), st.floats(0.0, 1.0)),
    min_size=1, max_size=60,
)


@settings(max_examples=40, deadline=None)
@given(usages=usages, cap=st.floats(1e-5, 5e-3), token_cap=st.integers(50, 20_000), workers=st.integers(2, 16))
def test_threads_never_push_spend_past_the_caps(usages, cap, token_cap, workers):
    """Many threads reserve worst cases and settle random real usages (<= the worst case)."""
    job = Budget(max_usd=cap, max_tokens=token_cap, name="job")
    todo = list(usages)
    lock = threading.Lock()
    peaks: list[tuple[float, int]] = []

    def worker() -> None:
        req = job.child(max_usd=cap / 2)
        while True:
            with lock:
                if not todo:
                    return
                prompt, completion, f_p, f_c = todo.pop()
            try:
                r = req.reserve(prompt + completion, PRICE.worst_case(prompt, completion))
            except BudgetExceededError as e:
                assert e.spent <= e.limit
                continue
            used_p, used_c = max(1, int(prompt * f_p)), int(completion * f_c)
            req.settle(r, _record(used_p, used_c, cached=used_p // 3))
            peaks.append((job.spent_usd, job.spent_tokens))

    threads = [threading.Thread(target=worker) for _ in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert job.reserved_tokens == 0 and job.reserved_usd == 0
    assert job.spent_usd <= cap and job.spent_tokens <= token_cap
    assert all(usd <= cap and tok <= token_cap for usd, tok in peaks)


@settings(max_examples=15, deadline=None)
@given(cap=st.floats(2e-5, 2e-3), n_requests=st.integers(2, 24), seed=st.integers(0, 10_000))
def test_concurrent_requests_through_the_async_client_never_exceed_the_job_cap(cap, n_requests, seed):
    """Real samplers over the async fake provider: many requests in flight share one job
    budget; every one ends done or stopped by the budget, and the spend stays under the cap."""
    provider = AsyncFakeProvider(FakeProvider(table_model(TABLE), seed=seed))
    client = vas_api.wrap(provider, k=4, prices={"fake": PRICE})
    job = Budget(max_usd=cap, name="job")

    async def main():
        async def one(i):
            try:
                return await client.completions.create(
                    model="fake", prompt="Say something:", max_tokens=12, seed=seed + i, budget=job,
                    mode="token" if i % 2 else "speculative",
                )
            except BudgetExceededError as e:
                assert e.partial.choices[0].finish_reason == "budget"
                return e.partial
        return await asyncio.gather(*(one(i) for i in range(n_requests)))

    responses = asyncio.run(main())
    assert job.spent_usd <= cap and job.reserved_usd == 0
    # The job's spend is exactly the sum of the requests' records.
    total = sum(r.vas.cost_usd for r in responses)
    assert total == pytest.approx(job.spent_usd, rel=1e-9, abs=1e-15)


# -- the client hook ----------------------------------------------------------------------------


def test_report_keeps_every_call_and_its_spend_recomputes():
    client = vas_api.wrap(FakeProvider(table_model(TABLE), seed=2), k=4, prices={"fake": PRICE})
    resp = client.completions.create(model="fake", prompt="Say:", max_tokens=16, seed=1, n=2,
                                     value_model=_Likes(), beta=4.0)
    rep = resp.vas
    assert len(rep.usage_records) == rep.api_calls >= 2
    total = Usage()
    for r in rep.usage_records:
        total = total + Usage(r.prompt_tokens, r.completion_tokens, r.cached_tokens, r.calls)
    assert (total.prompt_tokens, total.completion_tokens) == (rep.usage.prompt_tokens, rep.usage.completion_tokens)
    assert rep.cost_usd > 0 and rep.recomputed_cost_usd() == pytest.approx(rep.cost_usd, rel=1e-12)
    # Rejected drafts are billed too: every drafted token is in the completion tokens.
    assert rep.usage.completion_tokens >= rep.drafted


def test_local_and_fake_providers_cost_nothing_but_are_counted():
    client = vas_api.wrap(FakeProvider(table_model(TABLE), seed=2), k=4)
    rep = client.completions.create(model="fake", prompt="Say:", max_tokens=6, seed=1).vas
    assert rep.cost_usd == 0 and rep.usage_records and rep.recomputed_cost_usd() == 0


@pytest.mark.parametrize("mode", ["token", "speculative"])
def test_request_cap_raises_with_partial_output_and_is_never_exceeded(mode):
    client = vas_api.wrap(FakeProvider(table_model({"a": 0.5, " b": 0.5}), seed=3), k=2,
                          prices={"fake": PRICE})
    cap = 4e-4
    with pytest.raises(BudgetExceededError) as e:
        client.completions.create(model="fake", prompt="Write:", max_tokens=200, seed=1,
                                  mode=mode, max_cost_usd=cap)
    err = e.value
    assert err.unit == "usd" and err.limit == cap and err.spent <= cap
    resp = err.partial
    assert resp.choices[0].finish_reason == "budget" and resp.vas.stopped_by_budget
    assert 0 < resp.vas.cost_usd <= cap and resp.choices[0].text
    assert resp.vas.recomputed_cost_usd() == pytest.approx(resp.vas.cost_usd)


def test_partial_option_returns_finish_reason_budget_and_token_cap():
    client = vas_api.wrap(FakeProvider(table_model({"a": 0.5, " b": 0.5}), seed=3), k=2)
    resp = client.chat.completions.create(
        model="fake", messages=[{"role": "user", "content": "hi"}], max_tokens=500, seed=1,
        mode="token", max_total_tokens=300, on_budget="partial",
    )
    assert resp.choices[0].finish_reason == "budget"
    assert 0 < resp.vas.usage.total_tokens <= 300
    with pytest.raises(ConfigError, match="on_budget"):
        client.completions.create(model="fake", prompt="x", on_budget="sometimes")


def test_meter_bound_is_above_real_prompt_tokens():
    """The prompt bound (UTF-8 bytes, then the last reported count plus new bytes) is never
    below what the fake provider bills (one token per character)."""
    provider = FakeProvider(table_model({"é": 0.5, " 😀": 0.5}), seed=0)
    budget = Budget()
    meter = Meter("fake", PRICE, budget)

    class S:
        prompt_text = "Prompt ü:"
        response = ""

    s = S()
    for _ in range(10):
        call = DraftCall(Prefix(s.prompt_text, s.response), 3, 2, False)
        prompt, completion, _ = meter.worst_case(call, s.prompt_text + s.response)
        with meter.call(call, s) as bill:
            d = provider.draft(Prefix(s.prompt_text, s.response), m=3, k=2)
            bill(d.usage)
        assert d.usage.prompt_tokens <= prompt and d.usage.completion_tokens <= completion
        s.response += d.text
    c = CandidatesCall(Prefix("x"), 2)
    assert Meter("fake", PRICE, budget, candidate_attempts=3).worst_case(c, "x")[2] == 3


def test_failed_call_released_or_counted_as_estimate():
    budget = Budget(max_tokens=10_000)
    meter = Meter("fake", PRICE, budget)

    class S:
        prompt_text, response = "p", ""

    call = DraftCall(Prefix("p"), 4, 2, False)
    with pytest.raises(vas_api.ProviderError), meter.call(call, S()):
        raise vas_api.ProviderError("HTTP 400")  # refused: not billed
    assert budget.reserved_tokens == 0 and budget.spent_tokens == 0 and not budget.records
    with pytest.raises(vas_api.ProviderConnectionError), meter.call(call, S()):
        raise vas_api.ProviderConnectionError("connection reset")  # may have been billed
    assert budget.records[-1].estimated and budget.spent_tokens > 0


# -- hosted endpoints through the real SDK -------------------------------------------------------

BASE = "https://api.example.com/v1"


def _legacy_body(cached: int) -> dict:
    return {
        "id": "cmpl-1", "object": "text_completion", "created": 1, "model": "m",
        "choices": [{"index": 0, "text": " a b", "finish_reason": "length", "logprobs": {
            "tokens": [" a", " b"], "text_offset": [0, 2], "token_logprobs": [-0.1, -0.2],
            "top_logprobs": [{" a": -0.1, " c": -2.5}, {" b": -0.2, " d": -2.0}],
        }}],
        "usage": {"prompt_tokens": 12, "completion_tokens": 2, "total_tokens": 14,
                  "prompt_tokens_details": {"cached_tokens": cached}},
    }


def _sdk() -> openai.OpenAI:
    return openai.OpenAI(base_url=BASE, api_key="sk-test", max_retries=0, http_client=httpx.Client())


def test_unknown_hosted_model_refused_before_any_call():
    with respx.mock(base_url=BASE, assert_all_called=False) as mock:
        route = mock.post("/completions").respond(200, json=_legacy_body(0))
        client = vas_api.wrap(_sdk(), profile=OPENAI_COMPLETIONS, k=2)
        with pytest.raises(ConfigError, match="no price is known"):
            client.completions.create(model="secret-model", prompt="Hi", max_tokens=2)
        assert not route.called
        # A token cap lets it run (spend unknown), a money cap does not.
        resp = client.completions.create(model="secret-model", prompt="Hi", max_tokens=2,
                                         max_total_tokens=1000, mode="speculative", seed=0)
        assert resp.vas.cost_usd is None and resp.vas.usage_records
        with pytest.raises(ConfigError):
            client.completions.create(model="secret-model", prompt="Hi", max_tokens=2,
                                      max_total_tokens=1000, max_cost_usd=1.0)


def test_cached_prompt_tokens_from_the_wire_are_billed_at_the_cached_price():
    with respx.mock(base_url=BASE) as mock:
        mock.post("/completions").respond(200, json=_legacy_body(8))
        client = vas_api.wrap(_sdk(), profile=OPENAI_COMPLETIONS, k=2,
                              prices={"my-model": (1.0, 0.25, 4.0)})
        rep = client.completions.create(model="my-model", prompt="Hi", max_tokens=2, seed=0,
                                        mode="speculative", restrict_top_k=False).vas
    assert all(r.cached_tokens == 8 for r in rep.usage_records)
    n = len(rep.usage_records)
    expected = n * (4 * 1.0 + 8 * 0.25 + 2 * 4.0) / 1e6
    assert rep.cost_usd == pytest.approx(expected) and rep.recomputed_cost_usd() == pytest.approx(expected)


class _Likes:
    def values(self, texts):
        return [t.count("good") for t in texts]

    def score_candidates(self, prefix_text, candidate_texts):
        return [(prefix_text + c).count("good") for c in candidate_texts]


def test_areserve_waits_for_holds_in_flight_but_refuses_when_spend_leaves_no_room():
    b = Budget(max_tokens=100, name="job")

    async def main():
        held = b.reserve(60, None)  # a call in flight holding its worst case
        waiter = asyncio.ensure_future(b.areserve(50, None))
        await asyncio.sleep(0)
        assert not waiter.done()  # 60 held + 50 > 100, but 0 spent + 50 fits: it waits
        b.settle(held, _record(8, 2, None))  # the call billed only 10
        r = await waiter
        assert b.spent_tokens == 10 and b.reserved_tokens == 50
        b.settle(r, _record(40, 10, None))
        with pytest.raises(BudgetExceededError):  # 60 spent + 50 > 100: no waiting helps
            await b.areserve(50, None)

    asyncio.run(main())


def test_reserve_wait_blocks_a_thread_until_holds_settle():
    b = Budget(max_usd=1e-3, name="job")
    held = b.reserve(10, 8e-4)
    got: list = []
    t = threading.Thread(target=lambda: got.append(b.reserve_wait(10, 5e-4)))
    t.start()
    t.join(timeout=0.2)
    assert t.is_alive() and not got  # waiting: 8e-4 held + 5e-4 > 1e-3, nothing spent yet
    b.settle(held, _record(50, 0))  # billed 1e-4
    t.join(timeout=10)
    assert got and b.reserved_usd == pytest.approx(5e-4)
    with pytest.raises(BudgetExceededError):
        b.reserve_wait(10, 9.5e-4)  # 1e-4 spent + 9.5e-4 > 1e-3: refused at once
