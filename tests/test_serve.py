"""`vas serve` over HTTP: the openai SDK (sync, async, streaming) and curl against a real
uvicorn server in a background thread, first over the fake provider (fast: errors, budgets,
slots, redaction), then over the real local llama.cpp server with a tiny value model."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

import vas_api
from tests.browser import serve_in_thread
from vas_api.errors import BudgetExceededError, ConfigError, ProviderConnectionError, ProviderError
from vas_api.providers.fake import EOS, AsyncFakeProvider, FakeProvider, table_model
from vas_api.serve import (
    KeySpec,
    ServeConfig,
    ValueSpec,
    create_app,
    load_keys_file,
    parse_value_spec,
)
from vas_api.serve.errors import from_exception
from vas_api.serve.translate import Named, request_kwargs

pytest.importorskip("uvicorn")

TABLE = {"good": 0.3, " bad": 0.3, " fine": 0.2, " ok": 0.1, "!": 0.05, EOS: 0.05}
PRICES = {"fake": (2.0, 0.5, 8.0)}
KEY, KEY2 = "proxy-key-0123456789", "proxy-key-other-9876"
UPSTREAM_SECRET = "sk-upstream-SECRET-do-not-leak-42"
CURL = "/usr/bin/curl"


class LikesGood:
    """Value = how often "good" appears: a positive beta pushes towards it."""

    def values(self, texts):
        return [t.count("good") for t in texts]

    def score_candidates(self, prefix_text, candidate_texts):
        return [(prefix_text + c).count("good") for c in candidate_texts]


@contextlib.contextmanager
def serving(app) -> Iterator[str]:
    """Run `app` under uvicorn in a thread on a free loopback port; yield its /v1 base URL
    (tests.browser.serve_in_thread: listening before it yields, so no polling, no sleeps)."""
    with serve_in_thread(app) as base:
        yield f"{base}/v1"


def fake_client(provider=None):
    provider = provider or AsyncFakeProvider(FakeProvider(table_model(TABLE), seed=0))
    return vas_api.wrap(provider, prices=PRICES)


def fake_app(provider=None, **cfg):
    cfg.setdefault("values", [ValueSpec("good", LikesGood(), 0.0), ValueSpec("good2", LikesGood(), 0.0)])
    cfg.setdefault("keys", [KeySpec(KEY)])
    cfg.setdefault("default_k", 4)
    return create_app(ServeConfig(model="fake", **cfg), client=fake_client(provider))


@pytest.fixture(scope="module")
def fake_url():
    with serving(fake_app()) as url:
        yield url


# -- pure parts ------------------------------------------------------------------------------
def test_value_specs_parse_names_sources_and_default_betas(tmp_path):
    assert parse_value_spec("s=reward:vader") == ValueSpec("s", "reward:vader", 0.0)
    assert parse_value_spec("s=reward:vader:2.5") == ValueSpec("s", "reward:vader", 2.5)
    assert parse_value_spec(f"s={tmp_path}:-1") == ValueSpec("s", str(tmp_path), -1.0)
    for bad in ("no-equals", "=reward:vader", f"s={tmp_path / 'missing'}", "bad name=reward:vader"):
        with pytest.raises(ConfigError):
            parse_value_spec(bad)
    with pytest.raises(ConfigError, match="twice"):
        ServeConfig(values=[ValueSpec("a", "reward:vader"), ValueSpec("a", "reward:vader")])
    with pytest.raises(ConfigError, match="--model"):
        ServeConfig(upstream="http://127.0.0.1:1/v1")


def test_keys_file_gives_each_key_its_budget_and_never_shows_a_key(tmp_path):
    path = tmp_path / "keys.json"
    path.write_text(json.dumps({KEY: {"max_tokens": 100}, KEY2: {}}))
    keys = load_keys_file(path)
    assert [(k.key, k.max_tokens) for k in keys] == [(KEY, 100), (KEY2, None)]
    assert KEY not in repr(keys)
    path.write_text(json.dumps({KEY: {"max_tokenz": 1}}))
    with pytest.raises(ConfigError, match="entry 1"):
        load_keys_file(path)


def test_betas_by_name_select_models_and_zero_betas_drop_them():
    a, b = LikesGood(), LikesGood()
    named = Named({"a": (a, 0.0), "b": (b, 2.0)})
    assert named.choose(None, None) == (["b"], [b], [2.0])  # defaults: a has beta 0
    assert named.choose({"a": 1}, None) == (["a", "b"], [a, b], [1.0, 2.0])
    assert named.choose({"b": 0}, None) == ([], [], [])
    assert named.choose(3, None) == (["a", "b"], [a, b], [3.0, 3.0])
    assert named.choose(3, "a") == (["a"], [a], [3.0])
    for beta, names, param in (({"c": 1}, None, "vas.beta.c"), ({"a": "x"}, None, "vas.beta.a"),
                               (float("nan"), None, "vas.beta"), (None, ["zzz"], "vas.value_model")):
        with pytest.raises(Exception) as info:
            named.choose(beta, names)
        assert info.value.status == 400 and info.value.param == param


def test_a_body_cannot_reach_checkpoint_paths_or_pass_through_options():
    named = Named({"a": (LikesGood(), 1.0)})
    opts = dict(default_k=20, default_max_tokens=64, max_tokens_limit=100)
    kw, names = request_kwargs({"model": "m", "prompt": "x", "vas": {"beta": {"a": 2}, "mode": "token"}},
                               "completion", named, **opts)
    assert names == ["a"] and kw["beta"] == [2.0] and kw["mode"] == "token" and kw["max_tokens"] == 64
    for body in ({"model": "m", "prompt": "x", "value_model": "/etc"},
                 {"model": "m", "prompt": "x", "extra_headers": {"a": "b"}},
                 {"model": "m", "prompt": "x", "vas": {"budget": 1}},
                 {"model": "m", "prompt": "x", "vas": {"value_model": "/tmp/ckpt"}},
                 {"model": "m", "prompt": "x", "max_tokens": 101},
                 {"model": "m", "messages": []}, ["not", "an", "object"]):
        with pytest.raises(Exception) as info:
            request_kwargs(body, "completion", named, **opts)
        assert info.value.status == 400


def test_exceptions_map_to_openai_statuses():
    assert from_exception(BudgetExceededError("cap", spent=1, limit=1)).status == 429
    assert from_exception(BudgetExceededError("cap", spent=1, limit=1)).type == "insufficient_quota"
    assert from_exception(ConfigError("bad")).status == 400
    assert from_exception(ProviderConnectionError("down")).status == 502
    refused = ProviderError("nope")
    refused.status_code = 401  # the upstream refused the *server's* key: not the client's fault
    assert from_exception(refused).status == 502
    refused.status_code = 400
    assert from_exception(refused).status == 400
    assert from_exception(RuntimeError("boom")).status == 500


# -- over HTTP, fake provider ------------------------------------------------------------------
def test_sdk_chat_carries_the_report_and_betas_steer(fake_url):
    client = openai.OpenAI(base_url=fake_url, api_key=KEY, max_retries=0)
    assert [m.id for m in client.models.list().data] == ["fake"]
    counts = {}
    for beta in (0.0, 8.0):
        total = 0
        for seed in range(6):
            resp = client.chat.completions.create(
                model="fake", messages=[{"role": "user", "content": "Say"}], max_tokens=6, seed=seed,
                extra_body={"vas": {"beta": {"good": beta}, "mode": "token"}},
            )
            report = resp.model_extra["vas"]
            assert report["mode"] == "token" and report["usage"]["total_tokens"] == resp.usage.total_tokens
            assert report["value_models"] == (["good"] if beta else [])
            tokens = report["tokens"][0]
            assert "".join(t["text"] for t in tokens) == resp.choices[0].message.content
            if not beta:
                assert all(t["shift"] == 0 for t in tokens)
            total += resp.choices[0].message.content.count("good")
        counts[beta] = total
    # beta 8 on "count of good" makes "good" near-certain at every step (p ~ 0.3 at beta 0)
    assert counts[8.0] > counts[0.0]


def test_sdk_streams_chunks_with_vas_tokens_then_the_report(fake_url):
    client = openai.OpenAI(base_url=fake_url, api_key=KEY, max_retries=0)
    stream = client.chat.completions.create(
        model="fake", messages=[{"role": "user", "content": "Say"}], max_tokens=6, seed=1, stream=True,
        extra_body={"vas": {"beta": {"good": 2}}},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    shaded = [t for c in chunks if c.choices for t in (c.model_extra.get("vas_tokens") or [])]
    assert "".join(t["text"] for t in shaded) == text and text
    last = chunks[-1]
    assert last.choices == [] and last.usage.total_tokens > 0
    assert "".join(t["text"] for t in last.model_extra["vas"]["tokens"][0]) == text


def test_completions_over_curl_stream_and_not(fake_url):
    body = json.dumps({"model": "fake", "prompt": "Say:", "max_tokens": 5, "vas": {"beta": {"good": 1}}})
    common = [CURL, "-sS", "-H", f"Authorization: Bearer {KEY}", "-H", "Content-Type: application/json"]
    out = subprocess.run([*common, "-d", body, f"{fake_url}/completions"], capture_output=True, text=True,
                         check=True, timeout=60).stdout
    resp = json.loads(out)
    assert resp["object"] == "text_completion" and resp["vas"]["value_models"] == ["good"]
    streamed = json.dumps({**json.loads(body), "stream": True})
    out = subprocess.run([*common, "-N", "-d", streamed, f"{fake_url}/completions"], capture_output=True,
                         text=True, check=True, timeout=60).stdout
    events = [line.removeprefix("data: ") for line in out.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    data = [json.loads(e) for e in events[:-1]]
    assert data[-1]["choices"] == [] and "vas" in data[-1]
    assert "".join(c["choices"][0]["text"] for c in data[:-1]) == "".join(
        t["text"] for t in data[-1]["vas"]["tokens"][0])


def test_errors_come_in_openai_format_with_their_status(fake_url):
    ok = {"Authorization": f"Bearer {KEY}"}
    chat = {"model": "fake", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3}
    cases = [
        ({}, "/chat/completions", chat, 401, "invalid_api_key"),
        ({"Authorization": "Bearer wrong-key-123456"}, "/chat/completions", chat, 401, "invalid_api_key"),
        (ok, "/chat/completions", {**chat, "model": "other"}, 404, "model_not_found"),
        (ok, "/nowhere", chat, 404, "unknown_url"),
        (ok, "/chat/completions", {**chat, "vas": {"beta": {"nope": 1}}}, 400, "value_model_not_found"),
        (ok, "/chat/completions", {**chat, "vas": {"beta": {"good": "x"}}}, 400, None),
        (ok, "/chat/completions", {**chat, "temperature": -1}, 400, None),
        (ok, "/chat/completions", {**chat, "tools": [{"type": "function"}]}, 400, None),
    ]
    with httpx.Client(timeout=30) as http:
        for headers, path, body, status, code in cases:
            r = http.post(fake_url + path, json=body, headers=headers)
            assert r.status_code == status, (path, body, r.text)
            err = r.json()["error"]
            assert set(err) == {"message", "type", "param", "code"} and err["message"]
            if code:
                assert err["code"] == code
        r = http.post(fake_url + "/chat/completions", content=b"{not json", headers=ok)
        assert r.status_code == 400
        info = http.get(fake_url.removesuffix("/v1") + "/vas/info").json()
        assert info["model"] == "fake" and {v["name"] for v in info["value_models"]} == {"good", "good2"}
        assert http.get(fake_url + "/models").status_code == 401
        assert http.get(fake_url.removesuffix("/v1") + "/").status_code == 200
    sdk = openai.OpenAI(base_url=fake_url, api_key="wrong-key-123456", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        sdk.models.list()


def test_a_key_budget_is_never_exceeded_by_concurrent_requests():
    """A token cap that fits about three requests: of 12 sent at once (two generating at a
    time), some finish, the rest get 429 insufficient_quota, and the key's spend (and the
    responses' usage) stays within the cap."""
    app = fake_app(keys=[KeySpec(KEY2), KeySpec(KEY, max_tokens=10**9)], max_concurrency=2)
    budget = app.state.vas.budgets[KEY]

    async def send(url, key, n):
        client = openai.AsyncOpenAI(base_url=url, api_key=key, max_retries=0)

        async def one(i):
            try:
                return await client.completions.create(model="fake", prompt=f"Item {i}:", max_tokens=8, seed=i,
                                                       extra_body={"vas": {"beta": {"good": 1}}})
            except openai.RateLimitError as e:
                assert e.body["type"] == "insufficient_quota"
                return None
        out = await asyncio.gather(*(one(i) for i in range(n)))
        await client.close()
        return out

    with serving(app) as url:
        sizes = [r.usage.total_tokens for r in asyncio.run(send(url, KEY2, 12))]  # uncapped key
        budget.max_tokens = cap = 3 * max(sizes)  # before any request of this key
        results = asyncio.run(send(url, KEY, 12))
        seen = httpx.get(url.removesuffix("/v1") + "/vas/usage", headers={"Authorization": f"Bearer {KEY}"}).json()
    done = [r for r in results if r is not None]
    assert 2 <= len(done) < len(results)  # the first two in flight always fit
    assert sum(r.usage.total_tokens for r in done) <= budget.spent_tokens <= cap
    assert budget.reserved_tokens == 0
    assert seen["spent_tokens"] == budget.spent_tokens and seen["max_tokens"] == cap


class Gated(AsyncFakeProvider):
    """Waits for `gate` before answering: holds a generation slot for as long as a test needs.
    Thread events: the test runs on its own thread, the server on its own loop."""

    def __init__(self):
        super().__init__(FakeProvider(table_model(TABLE), seed=0))
        self.gate, self.entered = threading.Event(), threading.Event()

    async def _wait(self):
        self.entered.set()
        await asyncio.to_thread(self.gate.wait, 60)

    async def candidates(self, prefix, *, k):
        await self._wait()
        return await super().candidates(prefix, k=k)

    async def draft(self, prefix, *, m, k, restrict_top_k=False):
        await self._wait()
        return await super().draft(prefix, m=m, k=k, restrict_top_k=restrict_top_k)


def test_a_full_server_answers_429_rate_limit_and_frees_the_slot_after():
    from concurrent.futures import ThreadPoolExecutor

    provider = Gated()
    app = fake_app(provider, max_concurrency=1, queue_timeout_s=0)
    body = {"model": "fake", "prompt": "Say:", "max_tokens": 3}
    headers = {"Authorization": f"Bearer {KEY}"}
    with serving(app) as url, httpx.Client(base_url=url, headers=headers, timeout=60) as http, \
            ThreadPoolExecutor(1) as pool:
        first = pool.submit(http.post, "/completions", json=body)
        assert provider.entered.wait(60)  # the first request holds the only slot
        second = http.post("/completions", json=body)
        assert second.status_code == 429 and second.json()["error"]["type"] == "rate_limit_exceeded"
        provider.gate.set()
        assert first.result(60).status_code == 200
        assert http.post("/completions", json=body).status_code == 200  # the slot came back


class LeaksKey(AsyncFakeProvider):
    """An upstream whose error message repeats the server's key (as some APIs do)."""

    async def candidates(self, prefix, *, k):
        raise ProviderError(f"Incorrect API key provided: {UPSTREAM_SECRET}")

    draft = None  # token mode only


def test_the_upstream_key_never_reaches_a_response_or_the_log(monkeypatch, caplog):
    monkeypatch.setenv("VAS_TEST_UPSTREAM_KEY", UPSTREAM_SECRET)
    app = fake_app(LeaksKey(FakeProvider(table_model(TABLE), seed=0)), upstream_key_env="VAS_TEST_UPSTREAM_KEY")
    caplog.set_level(logging.DEBUG)
    body = {"model": "fake", "prompt": "Say:", "max_tokens": 3, "vas": {"mode": "token"}}
    with serving(app) as url, httpx.Client(base_url=url, headers={"Authorization": f"Bearer {KEY}"}) as http:
        r = http.post("/completions", json=body)
        s = http.post("/completions", json={**body, "stream": True})
    assert r.status_code == 502 and "***" in r.json()["error"]["message"]
    assert s.status_code == 502
    for text in (r.text, s.text, caplog.text, *(rec.getMessage() for rec in caplog.records)):
        assert UPSTREAM_SECRET not in text and KEY not in text


# -- over HTTP, the real local server as upstream --------------------------------------------
@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A tiny randomly initialised value model (2 layers, random head: its shifts are not 0)."""
    pytest.importorskip("torch")
    from tests.test_value_model import tiny_model

    path = tmp_path_factory.mktemp("serve-ckpt") / "tiny"
    tiny_model().save(path)
    return path


@pytest.fixture(scope="module")
def local_url(local_server, checkpoint):
    import os

    os.environ["VAS_TEST_UPSTREAM_KEY"] = UPSTREAM_SECRET  # the llama.cpp server takes any key
    config = ServeConfig(
        upstream=local_server.base_url, model=local_server.model,
        values=[ValueSpec("tiny", str(checkpoint), 0.0), ValueSpec("vader", "reward:vader", 0.0)],
        keys=[KeySpec(KEY)], chat_template=str(local_server.gguf_path), profile=local_server.profile,
        upstream_key_env="VAS_TEST_UPSTREAM_KEY",
    )
    try:
        with serving(create_app(config)) as url:
            yield url
    finally:
        os.environ.pop("VAS_TEST_UPSTREAM_KEY", None)


CHAT = [{"role": "user", "content": "Write one happy sentence."}]


@pytest.mark.integration
def test_real_upstream_sync_sdk_chat_with_a_checkpoint(local_url, local_server, caplog):
    caplog.set_level(logging.DEBUG)
    client = openai.OpenAI(base_url=local_url, api_key=KEY, max_retries=0, timeout=300)
    resp = client.chat.completions.create(model=local_server.model, messages=CHAT, max_tokens=6, seed=0,
                                          extra_body={"vas": {"beta": {"tiny": 3}}})
    report = resp.model_extra["vas"]
    assert report["value_models"] == ["tiny"] and report["betas"] == {"tiny": 3.0}
    tokens = report["tokens"][0]
    assert "".join(t["text"] for t in tokens) == resp.choices[0].message.content
    assert any(t["shift"] != 0 for t in tokens)  # a random head moves the candidates apart
    assert resp.usage.total_tokens == report["usage"]["total_tokens"] > 0
    assert UPSTREAM_SECRET not in resp.model_dump_json()
    assert UPSTREAM_SECRET not in caplog.text


@pytest.mark.integration
def test_real_upstream_async_sdk_stream_and_plain(local_url, local_server):
    async def main():
        client = openai.AsyncOpenAI(base_url=local_url, api_key=KEY, max_retries=0, timeout=300)
        plain, stream = await asyncio.gather(
            client.completions.create(model=local_server.model, prompt="The weather today is", max_tokens=6,
                                      extra_body={"vas": {"beta": {"vader": 2}, "mode": "token", "k": 8}}),
            client.chat.completions.create(model=local_server.model, messages=CHAT, max_tokens=6, stream=True,
                                           extra_body={"vas": {"beta": {"vader": 2}}}),
        )
        chunks = [c async for c in stream]
        await client.close()
        return plain, chunks

    plain, chunks = asyncio.run(main())
    assert plain.model_extra["vas"]["mode"] == "token" and plain.model_extra["vas"]["k"] == 8
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0
    assert "".join(t["text"] for t in chunks[-1].model_extra["vas"]["tokens"][0]) == text


@pytest.mark.integration
def test_real_upstream_over_curl_streams_sse(local_url, local_server):
    body = json.dumps({"model": local_server.model, "messages": CHAT, "max_tokens": 5, "stream": True,
                       "vas": {"beta": {"tiny": 1, "vader": 1}}})
    out = subprocess.run(
        [CURL, "-sS", "-N", "-H", f"Authorization: Bearer {KEY}", "-H", "Content-Type: application/json",
         "-d", body, f"{local_url}/chat/completions"], capture_output=True, text=True, check=True, timeout=300,
    ).stdout
    events = [line.removeprefix("data: ") for line in out.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    last = json.loads(events[-2])
    assert last["vas"]["value_models"] == ["tiny", "vader"] and UPSTREAM_SECRET not in out


def test_an_unreachable_upstream_is_a_502():
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app = create_app(ServeConfig(upstream=f"http://127.0.0.1:{port}/v1", model="m", chat_template="{{ messages[0].content }}"))
    with serving(app) as url, httpx.Client(timeout=120) as http:
        r = http.post(f"{url}/completions", json={"model": "m", "prompt": "x", "max_tokens": 2})
    assert r.status_code == 502 and r.json()["error"]["code"] == "upstream_unreachable", r.text


def test_a_stream_closed_early_gives_its_slot_back():
    app = fake_app(max_concurrency=1, queue_timeout_s=30)
    body = {"model": "fake", "prompt": "Say:", "max_tokens": 16, "stream": True, "vas": {"mode": "token"}}
    headers = {"Authorization": f"Bearer {KEY}"}
    with serving(app) as url, httpx.Client(base_url=url, headers=headers, timeout=60) as http:
        with http.stream("POST", "/completions", json=body) as r:
            assert r.status_code == 200
            first = next(line for line in r.iter_lines() if line.startswith("data: "))
            assert json.loads(first.removeprefix("data: "))["object"] == "text_completion"
        # the client went away after one event: the only slot must come back for the next one
        again = http.post("/completions", json={**body, "stream": False})
        assert again.status_code == 200, again.text


def test_huge_counts_and_lone_surrogates_are_400s_not_hangs_or_500s(fake_url):
    # Review of issue 14: {"n": 1000000} held a slot (and the in-process provider's event loop)
    # until the client gave up; a lone surrogate in a message was a 500 UnicodeEncodeError.
    ok = {"Authorization": f"Bearer {KEY}", "content-type": "application/json"}
    chat = {"model": "fake", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3}
    bad = [({**chat, "n": 10**6}, "n"), ({**chat, "vas": {"mode": "rerank", "rerank_n": 10**6}}, "vas.rerank_n"),
           ({**chat, "vas": {"mode": "block", "block_n": 10**6}}, "vas.block_n"),
           ({**chat, "messages": [{"role": "user", "content": "a \ud800 b"}]}, None)]
    with httpx.Client(timeout=30) as http:
        for body, param in bad:
            r = http.post(fake_url + "/chat/completions", content=json.dumps(body), headers=ok)
            assert r.status_code == 400, (body, r.text)
            err = r.json()["error"]
            assert err["type"] == "invalid_request_error" and err["param"] == param
            assert "at most" in err["message"] or "Unicode" in err["message"]
        # emoji and other valid non-ASCII text still go through
        r = http.post(fake_url + "/chat/completions", headers=ok,
                      content=json.dumps({**chat, "messages": [{"role": "user", "content": "héllo 🎉"}]}))
        assert r.status_code == 200, r.text


def test_an_upstream_that_is_not_an_http_url_is_refused_before_start():
    # Review of issue 14: `vas serve --upstream notaurl --model m` started, then every request was a 502.
    for bad in ("notaurl", "127.0.0.1:8080/v1", "ftp://host/v1", "http:///v1"):
        with pytest.raises(ConfigError, match="http"):
            ServeConfig(upstream=bad, model="m")
    with pytest.raises(ConfigError) as info:
        ServeConfig(upstream="htp://user:hunter2-secret@host/v1", model="m")
    assert "hunter2-secret" not in str(info.value)
    assert ServeConfig(upstream="https://api.example.com/v1", model="m").upstream


def test_a_request_cancelled_while_generating_gives_its_slot_back():
    # Review of issue 14: the slot was released only on `except Exception`, so a request task
    # cancelled mid-`create` (CancelledError is a BaseException) kept its slot for good.
    import types

    app = fake_app(max_concurrency=1)
    state = app.state.vas
    started = asyncio.Event()

    async def never_done(**kwargs):
        started.set()
        await asyncio.Event().wait()

    state.client = types.SimpleNamespace(chat=types.SimpleNamespace(completions=types.SimpleNamespace(create=never_done)))
    body = {"model": "fake", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3}

    async def main():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
            task = asyncio.ensure_future(http.post("/v1/chat/completions", json=body,
                                                   headers={"Authorization": f"Bearer {KEY}"}))
            await started.wait()
            assert state.slots.locked()
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        assert not state.slots.locked()

    asyncio.run(main())


def test_a_keys_file_mistake_names_its_entry_and_never_the_key(tmp_path):
    # Review of issue 14: {"KEY": {"max_tokens": "abc"}} failed later with only
    # "max_tokens = 'abc': ..." (which file, which entry?).
    for caps, words in (({"max_tokens": "abc"}, "max_tokens"), ({"max_usd": -1}, "max_usd")):
        path = tmp_path / "keys.json"
        path.write_text(json.dumps({"good-key-0123456789": {}, "secret-key-0123456789": caps}))
        with pytest.raises(ConfigError) as info:
            load_keys_file(path)
        msg = str(info.value)
        assert "entry 2" in msg and words in msg and "keys.json" in msg and "secret-key" not in msg
