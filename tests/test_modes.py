"""Mode choice (`mode="auto"`, explicit modes, k defaults) and the hosted OpenAI endpoints
through the real openai SDK, with replies in OpenAI's wire format mocked by respx: hosted chat
runs rerank mode (a normal answer, n > 1, an error, a rate limit), gpt-3.5-turbo-instruct runs
speculative mode with k = 5. The API key is a placeholder; no request or reply is recorded.
"""

from __future__ import annotations

import json

import httpx
import openai
import pytest
import respx

import vas_api
from vas_api.errors import CapabilityError, ConfigError, ProviderError, VASError
from vas_api.providers.fake import FakeProvider, table_model
from vas_api.sampler import choose_mode, default_k
from vas_api.types import ProviderProfile

OPENAI = "https://api.openai.com/v1"
MESSAGES = [{"role": "user", "content": "Review my hotel."}]
PLACEHOLDER_KEY = "sk-placeholder-not-a-key"


def profile(shape="legacy", cont="completions", cap=None) -> ProviderProfile:
    return ProviderProfile(name="p", max_top_k=cap, logprob_shape=shape, continuation=cont, n_param=True)


# -- choose_mode --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("shape", "cont", "mode", "why"),
    [
        ("legacy", "completions", "speculative", "top-k logprobs"),
        ("chat", "prefix", "speculative", "top-k logprobs"),
        ("none", "prefill", "block", "no logprobs"),
        ("none", "prefix", "block", "no logprobs"),
        ("chat", "none", "rerank", "cannot continue"),
        ("none", "none", "rerank", "cannot continue"),
    ],
)
def test_auto_takes_the_best_mode_and_says_why(shape, cont, mode, why):
    choice = choose_mode("auto", profile(shape, cont))
    assert choice.mode == mode and why in choice.reason and choice.reason.startswith("auto")


def test_explicit_modes_run_where_allowed_and_fail_naming_the_others():
    assert choose_mode("token", profile()).mode == "token"
    assert choose_mode("rerank", profile()).mode == "rerank"  # always possible
    assert choose_mode("block", profile("none", "prefill")).reason == "block: asked for by the request"
    with pytest.raises(CapabilityError, match="supports: rerank") as err:
        choose_mode("block", profile("chat", "none"))
    assert err.value.workable_modes == ["rerank"]
    with pytest.raises(CapabilityError, match="needs top-k logprobs.*block, rerank"):
        choose_mode("speculative", profile("none", "prefix"))
    with pytest.raises(ConfigError, match="rerank"):
        choose_mode("beam", profile())


def test_k_defaults_to_what_the_endpoint_gives():
    assert default_k(profile(cap=None)) == 20 and default_k(profile(cap=5)) == 5 and default_k(profile(cap=50)) == 20
    assert choose_mode("auto", profile(cap=5)).k == 5
    assert choose_mode("auto", profile(cap=5), 3).k == 3
    with pytest.raises(CapabilityError, match="at most 5"):
        choose_mode("auto", profile(cap=5), 20)
    # k is a token-level setting: rerank and block ignore the cap
    assert choose_mode("rerank", profile(cap=5), 20).k == 20
    with pytest.raises(ConfigError, match="positive"):
        choose_mode("auto", profile(), 0)


def test_client_default_k_follows_the_cap_and_explicit_mode_fails_before_any_call():
    fake = FakeProvider(table_model({"a": 0.5, "b": 0.5}), profile=profile(cap=5))
    resp = vas_api.wrap(fake).completions.create(model="m", prompt="x", max_tokens=3, seed=1)
    assert resp.vas.k == 5 and {h["k"] for h in fake.history} == {5}
    hosted = FakeProvider(table_model({"a": 1.0}), profile=profile("chat", "none", 20))
    with pytest.raises(CapabilityError, match="'speculative'.*supports: rerank"):
        vas_api.wrap(hosted).chat.completions.create(model="m", messages=MESSAGES, mode="speculative")
    assert hosted.history == []


# -- OpenAI hosted chat: rerank ---------------------------------------------------------------------


def chat_body(contents, *, prompt_tokens=14, completion_tokens=None, model="gpt-4o-mini-2024-07-18"):
    """A /v1/chat/completions reply as OpenAI sends it (n choices, no logprobs)."""
    completion_tokens = completion_tokens if completion_tokens is not None else 6 * len(contents)
    return {
        "id": "chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT",
        "object": "chat.completion",
        "created": 1741569952,
        "model": model,
        "choices": [
            {
                "index": i,
                "message": {"role": "assistant", "content": c, "refusal": None, "annotations": []},
                "logprobs": None,
                "finish_reason": "stop",
            }
            for i, c in enumerate(contents)
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": 0, "audio_tokens": 0,
                "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0,
            },
        },
        "service_tier": "default",
        "system_fingerprint": "fp_06737a9306",
    }


def error_body(message, type_, code, param=None):
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


POOL = ["It was awful.", "A great stay, great staff!", "Fine.", "Great view.",
        "Noisy rooms.", "Okay I guess.", "Terrible breakfast.", "Clean."]


class LikesGreat:
    """V = how often "great" appears in the response; records the texts it saw."""

    def __init__(self):
        self.seen = []

    def values(self, texts):
        self.seen += list(texts)
        return [t.split("<|im_start|>assistant\n")[-1].lower().count("great") for t in texts]

    def score_candidates(self, prefix_text, candidate_texts):
        return self.values([prefix_text + c for c in candidate_texts])


def hosted(max_retries=0, is_async=False):
    cls, http = (openai.AsyncOpenAI, httpx.AsyncClient) if is_async else (openai.OpenAI, httpx.Client)
    return cls(api_key=PLACEHOLDER_KEY, base_url=OPENAI, max_retries=max_retries, http_client=http())


@respx.mock(base_url=OPENAI)
def test_hosted_chat_runs_rerank_with_one_call_of_n(respx_mock):
    route = respx_mock.post("/chat/completions").respond(200, json=chat_body(POOL))
    value = LikesGreat()
    client = vas_api.wrap(hosted(), value_model=value, beta=8.0, rerank="argmax")
    resp = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, max_tokens=32)
    assert route.call_count == 1
    sent = json.loads(route.calls.last.request.content)
    assert sent["n"] == 8 and sent["max_completion_tokens"] == 32 and sent["temperature"] == 1.0
    assert "logprobs" not in sent and "top_logprobs" not in sent
    assert resp.choices[0].message.content == "A great stay, great staff!"  # the argmax
    report = resp.vas
    assert report.mode == "rerank" and "cannot continue" in report.mode_reason
    assert report.api_calls == 1 and report.pool_size == 8 and 1 <= report.ess[0] < 8
    assert (resp.usage.prompt_tokens, resp.usage.completion_tokens) == (14, 48)  # the prompt billed once
    # The value model saw the conversation (ChatML: hosted chat renders no template) + each answer.
    assert all(t.startswith("<|im_start|>user\nReview my hotel.<|im_end|>\n") for t in value.seen)
    assert route.calls.last.request.headers["authorization"] == f"Bearer {PLACEHOLDER_KEY}"


@respx.mock(base_url=OPENAI)
def test_hosted_chat_user_n_gives_one_pool_per_choice(respx_mock):
    route = respx_mock.post("/chat/completions").mock(side_effect=[
        httpx.Response(200, json=chat_body(POOL[:4])), httpx.Response(200, json=chat_body(POOL[4:])),
    ])
    client = vas_api.wrap(hosted(), value_model=LikesGreat(), beta=1.0)
    resp = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, max_tokens=16, n=2,
                                          rerank_n=4, seed=7)
    assert route.call_count == 2
    sent = [json.loads(c.request.content) for c in route.calls]
    assert [s["n"] for s in sent] == [4, 4] and sent[0]["seed"] != sent[1]["seed"]
    assert resp.choices[0].message.content in POOL[:4] and resp.choices[1].message.content in POOL[4:]
    assert resp.vas.api_calls == 2 and resp.usage.prompt_tokens == 28 and len(resp.vas.ess) == 2


@respx.mock(base_url=OPENAI)
def test_hosted_chat_error_is_a_vas_error_with_openai_message(respx_mock):
    respx_mock.post("/chat/completions").respond(400, json=error_body(
        "Invalid 'n': integer above maximum value. Expected a value <= 128, but got 500 instead.",
        "invalid_request_error", "integer_above_max_value", "n"))
    client = vas_api.wrap(hosted())
    with pytest.raises(ProviderError, match="400.*Expected a value <= 128"):
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, max_tokens=8, rerank_n=500)


RATE_LIMIT = error_body(
    "Rate limit reached for gpt-4o-mini in organization org-placeholder on requests per min (RPM): "
    "Limit 3, Used 3, Requested 1. Please try again in 20s.", "requests", "rate_limit_exceeded")


@respx.mock(base_url=OPENAI)
def test_hosted_chat_rate_limit(respx_mock):
    limited = httpx.Response(429, json=RATE_LIMIT, headers={"retry-after-ms": "5", "x-ratelimit-remaining-requests": "0"})
    route = respx_mock.post("/chat/completions").mock(
        side_effect=[limited, httpx.Response(200, json=chat_body(POOL)), limited])
    # With the SDK's own retries (the one retry layer) the second attempt answers ...
    resp = vas_api.wrap(hosted(max_retries=1)).chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, max_tokens=8)
    assert route.call_count == 2 and resp.choices[0].message.content in POOL and resp.vas.api_calls == 1
    # ... without them the rate limit surfaces as a VAS error that says so.
    with pytest.raises(VASError, match="429") as err:
        vas_api.wrap(hosted()).chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, max_tokens=8)
    assert route.call_count == 3 and "Rate limit reached" in str(err.value)


@respx.mock(base_url=OPENAI)
async def test_hosted_chat_async_rerank(respx_mock):
    route = respx_mock.post("/chat/completions").respond(200, json=chat_body(POOL))
    client = vas_api.wrap(hosted(is_async=True), value_model=LikesGreat(), beta=2.0)
    resp = await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, max_tokens=16, seed=3)
    assert route.call_count == 1 and resp.vas.mode == "rerank" and resp.choices[0].message.content in POOL


# -- OpenAI legacy completions: speculative with k = 5 ---------------------------------------------

TOPS = {" great": -0.9, " good": -1.2, " bad": -1.9, " fine": -2.4, " ok": -3.1, " meh": -3.6}


def legacy_reply(request: httpx.Request) -> httpx.Response:
    """/v1/completions as OpenAI answers it: legacy logprobs with at most 5 entries a position."""
    body = json.loads(request.content)
    k, m = body.get("logprobs"), body["max_tokens"]
    assert k is not None and k <= 5, "OpenAI refuses logprobs > 5 on completions"
    top = dict(list(TOPS.items())[:k])
    tokens = [" good"] * m
    offsets = [len(body["prompt"]) + 5 * i for i in range(m)]
    return httpx.Response(200, json={
        "id": "cmpl-placeholder", "object": "text_completion", "created": 1741569952,
        "model": "gpt-3.5-turbo-instruct:20230824-v2",
        "choices": [{
            "text": "".join(tokens), "index": 0, "finish_reason": "length",
            "logprobs": {"tokens": tokens, "token_logprobs": [TOPS[t] for t in tokens],
                         "top_logprobs": [top] * m, "text_offset": offsets},
        }],
        "usage": {"prompt_tokens": 9, "completion_tokens": m, "total_tokens": 9 + m},
    })


@respx.mock(base_url=OPENAI)
def test_gpt_35_instruct_runs_speculative_with_k_5_by_default(respx_mock):
    route = respx_mock.post("/completions").mock(side_effect=legacy_reply)

    class LikesGreatRaw:
        def values(self, texts):
            return [t.count("great") for t in texts]

        def score_candidates(self, prefix_text, candidate_texts):
            return self.values([prefix_text + c for c in candidate_texts])

    client = vas_api.wrap(hosted(), value_model=LikesGreatRaw(), beta=2.0)
    resp = client.completions.create(model="gpt-3.5-turbo-instruct", prompt="The hotel was", max_tokens=12, seed=0)
    report = resp.vas
    assert report.mode == "speculative" and report.k == 5 and "top-k logprobs" in report.mode_reason
    assert {json.loads(c.request.content)["logprobs"] for c in route.calls} == {5}
    assert report.tokens == 12 and report.api_calls == route.call_count
    assert set(resp.choices[0].text.split()) <= {w.strip() for w in list(TOPS)[:5]}
    with pytest.raises(CapabilityError, match="at most 5"):
        client.completions.create(model="gpt-3.5-turbo-instruct", prompt="The hotel was", k=20)


# -- Mistral: block mode through prefix continuation ---------------------------------------------

MISTRAL = "https://api.mistral.ai/v1"
BLOCKS = [" The lobby", " was great", " and calm."]


def mistral_reply(request: httpx.Request) -> httpx.Response:
    """A Mistral chat reply (OpenAI-shaped): the next block after the assistant prefix, if any."""
    body = json.loads(request.content)
    last = body["messages"][-1]
    done = last["content"] if last["role"] == "assistant" else ""
    i = sum(done.count(b) for b in BLOCKS)
    text, finish = (BLOCKS[i], "length") if i < len(BLOCKS) - 1 else (BLOCKS[-1], "stop")
    return httpx.Response(200, json={
        "id": "cmpl-e5cc70bb28c444948073e77776eb30ef", "object": "chat.completion", "created": 1702256327,
        "model": "mistral-small-latest",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text, "tool_calls": None},
                     "finish_reason": finish}],
        "usage": {"prompt_tokens": 16 + 3 * i, "completion_tokens": 3, "total_tokens": 19 + 3 * i},
    })


@respx.mock(base_url=MISTRAL)
def test_mistral_runs_block_mode_with_assistant_prefix(respx_mock):
    route = respx_mock.post("/chat/completions").mock(side_effect=mistral_reply)
    client = vas_api.wrap(openai.OpenAI(api_key=PLACEHOLDER_KEY, base_url=MISTRAL, max_retries=0, http_client=httpx.Client()),
                          value_model=LikesGreat(), beta=1.0)
    resp = client.chat.completions.create(model="mistral-small-latest", messages=MESSAGES, max_tokens=30,
                                          block_len=3, block_n=2)
    report = resp.vas
    assert report.mode == "block" and "no logprobs" in report.mode_reason
    assert resp.choices[0].message.content == "".join(BLOCKS) and resp.choices[0].finish_reason == "stop"
    sent = [json.loads(c.request.content) for c in route.calls]
    assert len(sent) == 6 and report.api_calls == 6  # 3 steps x 2 blocks, one call each (no n=)
    assert all("n" not in s and "logprobs" not in s and s["max_tokens"] == 3 for s in sent)
    assert sent[0]["messages"] == MESSAGES
    assert sent[2]["messages"][-1] == {"role": "assistant", "content": BLOCKS[0], "prefix": True}
    assert sent[4]["messages"][-1]["content"] == BLOCKS[0] + BLOCKS[1]


def test_a_server_that_ignores_sampler_options_runs_token_mode_not_drafts():
    # Ollama's /v1 drops top_k / min_p / repeat-penalty options, so drafts would not follow the
    # reported logprobs: auto picks token mode, and speculative is refused before any call.
    from dataclasses import replace as _replace

    from vas_api.errors import CapabilityError as _CapabilityError
    from vas_api.profiles import LLAMA_CPP_PYTHON
    from vas_api.sampler.settings import choose_mode as _choose

    ollama_like = _replace(LLAMA_CPP_PYTHON, name="Ollama", neutral_sampling=False)
    assert _choose("auto", ollama_like).mode == "token"
    with pytest.raises(_CapabilityError, match="neutral_sampling"):
        _choose("speculative", ollama_like)
    assert _choose("auto", LLAMA_CPP_PYTHON).mode == "speculative"
