"""The OpenAI-shaped client over the fake provider: SDK types, report, seeds, async, errors."""

from __future__ import annotations

import asyncio

import pytest
from openai.types import Completion
from openai.types.chat import ChatCompletion

import vas_api
from vas_api.errors import CapabilityError, CheckpointError, ConfigError
from vas_api.providers.fake import EOS, AsyncFakeProvider, FakeProvider, table_model
from vas_api.types import ProviderProfile

TABLE = {"good": 0.3, " bad": 0.3, " fine": 0.2, " ok": 0.1, "!": 0.05, EOS: 0.05}


class LikesGood:
    """Value = number of times "good" appears: beta > 0 pushes towards it."""

    def values(self, texts):
        return [t.count("good") for t in texts]

    def score_candidates(self, prefix_text, candidate_texts):
        return [(prefix_text + c).count("good") for c in candidate_texts]


def make(**kw):
    return vas_api.wrap(FakeProvider(table_model(TABLE), seed=1), **kw)


def test_completion_returns_sdk_type_with_report():
    client = make(value_model=LikesGood(), beta=2.0, k=4)
    resp = client.completions.create(model="fake", prompt="Say:", max_tokens=12, seed=3)
    assert isinstance(resp, Completion)
    report = resp.vas
    assert report.mode == "speculative"
    assert report.tokens == len(report.traces[0]) >= 1
    assert resp.usage.completion_tokens == report.usage.completion_tokens
    assert resp.usage.prompt_tokens == report.usage.prompt_tokens > 0
    assert report.api_calls >= 1 and report.drafted >= report.accepted
    assert "VASReport(" in repr(report) and "<span" in report._repr_html_()
    assert "".join(s.text for s in report.traces[0]) .startswith(resp.choices[0].text)


def test_chat_returns_chat_completion():
    client = make(value_model=LikesGood(), beta=1.0, k=4, mode="token")
    resp = client.chat.completions.create(model="fake", messages=[{"role": "user", "content": "hi"}], max_tokens=5)
    assert isinstance(resp, ChatCompletion)
    assert resp.choices[0].message.role == "assistant"
    assert resp.vas.mode == "token" and resp.vas.api_calls == resp.vas.tokens


def test_beta_steers_towards_value():
    client = make(value_model=LikesGood(), k=4)
    base = [client.completions.create(model="f", prompt="x", max_tokens=8, beta=0.0, seed=s).choices[0].text for s in range(60)]
    steer = [client.completions.create(model="f", prompt="x", max_tokens=8, beta=3.0, seed=s).choices[0].text for s in range(60)]
    assert sum(t.count("good") for t in steer) > 1.5 * sum(t.count("good") for t in base)


def test_same_seed_same_output_for_same_provider_answers():
    texts = []
    for _ in range(2):
        client = make(value_model=LikesGood(), beta=1.0, k=4)  # a fresh provider: same answers
        texts.append([client.completions.create(model="f", prompt="x", max_tokens=10, seed=7).choices[0].text for _ in range(3)])
    assert texts[0] == texts[1]


def test_n_choices_and_stop():
    client = make(k=4)
    resp = client.completions.create(model="f", prompt="x", max_tokens=20, n=3, seed=0, stop=["!"])
    assert len(resp.choices) == 3 and len(resp.vas.traces) == 3
    assert all("!" not in c.text for c in resp.choices)


def test_async_client_many_in_flight():
    fake = AsyncFakeProvider(FakeProvider(table_model(TABLE), seed=1))
    client = vas_api.wrap(fake, value_model=LikesGood(), beta=1.0, k=4)
    assert isinstance(client, vas_api.AsyncVASClient)

    async def main():
        return await asyncio.gather(*(
            client.completions.create(model="f", prompt=f"p{i}", max_tokens=6, seed=i) for i in range(8)
        ))

    results = asyncio.run(main())
    assert len(results) == 8 and all(isinstance(r, Completion) for r in results)
    # Calls of different requests interleave: they were in flight at once.
    texts = [h["text"][:2] for h in fake.history]
    assert texts != sorted(texts)


@pytest.mark.parametrize(
    ("kwargs", "error", "words"),
    [
        ({"beta": float("nan")}, ConfigError, "finite"),
        ({"beta": "high"}, ConfigError, "finite"),
        ({"mode": "magic"}, ConfigError, "speculative"),
        ({"value_model": "/no/such/dir"}, CheckpointError, "does not exist"),
        ({"k": 0}, ConfigError, "positive"),
        ({"logprobs": 5}, ConfigError, "not supported"),
        ({"beta": [1.0, 2.0]}, ConfigError, "one beta per value model"),
    ],
)
def test_bad_input_is_refused_before_any_call(kwargs, error, words):
    provider = FakeProvider(table_model(TABLE))
    client = vas_api.wrap(provider, value_model=LikesGood())
    with pytest.raises(error, match=words):
        client.completions.create(model="f", prompt="x", max_tokens=4, **kwargs)
    assert provider.history == []


def test_k_above_provider_max_and_no_continuation():
    capped = ProviderProfile(name="capped", max_top_k=5, logprob_shape="chat", continuation="completions")
    client = vas_api.wrap(FakeProvider(table_model(TABLE), profile=capped))
    with pytest.raises(CapabilityError, match="at most 5"):
        client.completions.create(model="f", prompt="x", k=20)
    # Token-level modes asked for explicitly fail at once, naming the modes that work
    # (mode="auto" runs rerank / block there: tests/test_modes.py).
    hosted = ProviderProfile(name="OpenAI chat", max_top_k=20, logprob_shape="chat", continuation="none")
    client = vas_api.wrap(FakeProvider(table_model(TABLE), profile=hosted))
    with pytest.raises(CapabilityError, match="cannot do.*supports: rerank"):
        client.chat.completions.create(model="f", messages=[{"role": "user", "content": "x"}], k=5, mode="token")
    nolog = ProviderProfile(name="no-logprobs", max_top_k=None, logprob_shape="none", continuation="completions")
    client = vas_api.wrap(FakeProvider(table_model(TABLE), profile=nolog))
    with pytest.raises(CapabilityError, match="needs top-k logprobs.*supports: block, rerank"):
        client.completions.create(model="f", prompt="x", mode="speculative")


def test_empty_prompt():
    with pytest.raises(ConfigError, match="empty"):
        make().completions.create(model="f", prompt="")


def test_provider_that_returns_no_logprobs():
    from vas_api.errors import NoLogprobsError
    from vas_api.types import Draft, Position, Usage

    class Silent(FakeProvider):
        def candidates(self, prefix, *, k):
            return Draft([Position(())], "length", Usage(calls=1))

        def draft(self, prefix, *, m, k, restrict_top_k=False):
            return Draft([Position(())], "length", Usage(calls=1))

    client = vas_api.wrap(Silent(table_model(TABLE)))
    with pytest.raises(NoLogprobsError, match="no logprobs"):
        client.completions.create(model="f", prompt="x")


# -- SDK pass-through, through the real openai SDK (HTTP mocked with respx) -------------------

BASE = "http://mock.test/v1"


def _one_token_body(token=" a"):
    """A legacy /v1/completions body with one position and two candidates."""
    return {
        "id": "c", "object": "text_completion", "created": 1, "model": "m",
        "choices": [{"index": 0, "text": token, "finish_reason": "length", "logprobs": {
            "tokens": [token], "text_offset": [0], "token_logprobs": [-0.5],
            "top_logprobs": [{" a": -0.5, " b": -1.0}]}}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
    }


def _sdk(async_=False, **kw):
    import httpx
    import openai

    # Legacy httpx clients so respx can intercept (the SDK's default transport is httpx2).
    if async_:
        return openai.AsyncOpenAI(base_url=BASE, api_key="sk-test", max_retries=0, http_client=httpx.AsyncClient(), **kw)
    return openai.OpenAI(base_url=BASE, api_key="sk-test", max_retries=0, http_client=httpx.Client(), **kw)


PASS = dict(extra_headers={"X-Trace": "t1"}, extra_query={"tag": "q"}, extra_body={"cache_prompt": False}, timeout=7.5)


def _check_every_request(route, calls):
    import json

    assert len(route.calls) == calls
    for call in route.calls:
        req = call.request
        body = json.loads(req.content)
        assert req.headers["x-trace"] == "t1" and req.url.params["tag"] == "q"
        assert body["cache_prompt"] is False and body["top_k"] in (0, 2)  # VAS's own samplers stay
        assert req.extensions["timeout"] == {"connect": 7.5, "read": 7.5, "write": 7.5, "pool": 7.5}


@pytest.mark.parametrize("mode", ["token", "speculative"])
def test_extra_options_and_timeout_reach_every_http_request(mode):
    import respx

    from vas_api.profiles import LLAMA_CPP_PYTHON

    with respx.mock(base_url=BASE) as mock:
        route = mock.post("/completions").respond(200, json=_one_token_body())
        client = vas_api.wrap(_sdk(), profile=LLAMA_CPP_PYTHON, k=2, mode=mode, draft_max=1, draft_min=1,
                              prices={"m": (0.0, 0.0, 0.0)})  # a non-loopback host needs a price
        resp = client.completions.create(model="m", prompt="Hi", max_tokens=3, **PASS)
        assert resp.vas.tokens == 3 and set(resp.choices[0].text.split()) <= {"a", "b"}
        _check_every_request(route, 3)
        client.completions.create(model="m", prompt="Hi", max_tokens=1)  # options are per request
        assert "x-trace" not in route.calls.last.request.headers


def test_extra_options_reach_every_http_request_async_and_streamed():
    import respx

    from vas_api.profiles import LLAMA_CPP_PYTHON

    async def main():
        client = vas_api.wrap(_sdk(async_=True), profile=LLAMA_CPP_PYTHON, k=2, mode="token", prices={"m": (0.0, 0.0, 0.0)})
        stream = await client.completions.create(model="m", prompt="Hi", max_tokens=2, stream=True, **PASS)
        return [c async for c in stream]

    with respx.mock(base_url=BASE) as mock:
        route = mock.post("/completions").respond(200, json=_one_token_body())
        chunks = asyncio.run(main())
        assert chunks[-1].vas.tokens == 2 and len("".join(c.choices[0].text for c in chunks if c.choices)) == 4
        _check_every_request(route, 2)


def test_with_options_keeps_value_models_and_caches():
    import respx

    from vas_api.profiles import LLAMA_CPP_PYTHON

    with respx.mock(base_url=BASE) as mock:
        route = mock.post("/completions").respond(200, json=_one_token_body())
        value = LikesGood()
        client = vas_api.wrap(_sdk(), profile=LLAMA_CPP_PYTHON, value_model=value, beta=1.0, k=2, mode="token",
                              prices={"m": (0.0, 0.0, 0.0)})
        client.completions.create(model="m", prompt="Hi", max_tokens=1)
        other = client.with_options(timeout=3.0, default_headers={"X-Team": "a"}, beta=2.0)
        assert isinstance(other, vas_api.VASClient) and other is not client
        assert other._loaded is client._loaded and other._policies is client._policies
        assert other.provider("m").profile is client.provider("m").profile
        assert other.client is not client.client and client.client.timeout != 3.0
        resp = other.completions.create(model="m", prompt="Hi", max_tokens=1)
        req = route.calls.last.request
        assert req.headers["x-team"] == "a" and req.extensions["timeout"]["read"] == 3.0
        assert resp.vas.betas == (2.0,) and client.defaults["beta"] == 1.0
        client.completions.create(model="m", prompt="Hi", max_tokens=1)
        assert "x-team" not in route.calls.last.request.headers


def test_with_options_on_a_provider_refuses_sdk_options():
    client = make(k=4)
    assert client.with_options(k=3).defaults["k"] == 3
    with pytest.raises(ConfigError, match="not an openai client"):
        client.with_options(timeout=3.0)


def test_create_is_overloaded_for_stream_and_no_stream():
    import typing

    from vas_api import resources

    for cls, streamed in [(resources.Completions, "VASStream[Completion]"),
                          (resources.ChatCompletions, "VASStream[ChatCompletionChunk]"),
                          (resources.AsyncCompletions, "AsyncVASStream[Completion]"),
                          (resources.AsyncChatCompletions, "AsyncVASStream[ChatCompletionChunk]")]:
        with_stream, without = typing.get_overloads(cls.create)
        assert with_stream.__annotations__["stream"] == "Literal[True]"
        assert with_stream.__annotations__["return"] == streamed
        assert without.__annotations__["return"] in ("Completion", "ChatCompletion")


def test_with_options_on_the_async_client_stays_async():
    from vas_api.resources import AsyncChatCompletions

    client = vas_api.wrap(AsyncFakeProvider(FakeProvider(table_model(TABLE), seed=1)), k=4)
    other = client.with_options(k=2, mode="token")
    assert isinstance(other, vas_api.AsyncVASClient) and isinstance(other.chat.completions, AsyncChatCompletions)
    resp = asyncio.run(other.completions.create(model="f", prompt="x", max_tokens=3))
    assert resp.vas.k == 2 and resp.vas.mode == "token" and client.defaults["k"] == 4
