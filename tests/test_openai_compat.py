"""The OpenAI-compatible provider without a server: requests and replies mocked with respx.

Covers the paths no local server can exercise (vLLM's chat_continue, OpenAI hosted chat) and
every bad-input error, with the real openai SDK doing the HTTP.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import httpx
import openai
import pytest
import respx
from openai.types import Completion

from vas_api.errors import (
    CapabilityError,
    ConfigError,
    ModelNotFoundError,
    NoLogprobsError,
    ProviderConnectionError,
    ProviderError,
)
from vas_api.profiles import (
    LLAMA_CPP_PYTHON,
    OPENAI_CHAT,
    OPENAI_COMPLETIONS,
    VLLM,
    cache_key,
    cached_profile,
    clear_memory_cache,
    probe_profile,
    store_profile,
)
from vas_api.providers import (
    AsyncOpenAICompatProvider,
    OpenAICompatProvider,
    aconnect,
    connect,
)
from vas_api.types import AsyncProvider, Prefix, Provider

DATA = Path(__file__).parent / "data"
BASE = "http://mock.test/v1"
TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def sync_client(base: str = BASE) -> openai.OpenAI:
    # A legacy httpx client so respx can intercept (the SDK's default transport is httpx2).
    return openai.OpenAI(base_url=base, api_key="sk-test", max_retries=0, http_client=httpx.Client())


def async_client(base: str = BASE) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(
        base_url=base, api_key="sk-test", max_retries=0, http_client=httpx.AsyncClient()
    )


def completion(tokens, tops, *, finish="length", text=None, usage=(10, None, 0)) -> dict:
    """A legacy-shape /v1/completions body."""
    text = "".join(tokens) if text is None else text
    offsets, pos = [], 0
    for t in tokens:
        offsets.append(pos)
        pos += len(t)
    prompt, completion_tokens, cached = usage
    body = {
        "id": "cmpl-1", "object": "text_completion", "created": 1, "model": "m",
        "choices": [{
            "index": 0, "text": text, "finish_reason": finish,
            "logprobs": {
                "tokens": tokens, "text_offset": offsets,
                "token_logprobs": [tops[i].get(t, -7.0) for i, t in enumerate(tokens)],
                "top_logprobs": tops,
            },
        }],
        "usage": {
            "prompt_tokens": prompt,
            "completion_tokens": len(tokens) if completion_tokens is None else completion_tokens,
            "total_tokens": prompt + len(tokens),
            "prompt_tokens_details": {"cached_tokens": cached},
        },
    }
    return body


def body_of(route) -> dict:
    return json.loads(route.calls.last.request.content)


# -- request building ---------------------------------------------------------------------------


@respx.mock(base_url=BASE)
def test_draft_sends_neutral_llama_samplers(respx_mock):
    route = respx_mock.post("/completions").respond(
        200, json=completion([" a", " b"], [{" a": -0.5, " c": -1.0}, {" b": -0.1}])
    )
    p = OpenAICompatProvider(sync_client(), "m", profile=LLAMA_CPP_PYTHON, chat_template=TEMPLATE)
    d = p.draft(Prefix("Hello", " there"), m=2, k=2)
    sent = body_of(route)
    assert sent["prompt"] == "Hello there" and sent["max_tokens"] == 2 and sent["logprobs"] == 2
    assert sent["temperature"] == 1.0 and sent["top_p"] == 1.0
    assert sent["top_k"] == 0 and sent["min_p"] == 0.0 and sent["repeat_penalty"] == 1.0
    assert sent["typical_p"] == 1.0 and sent["mirostat_mode"] == 0
    assert sent["presence_penalty"] == 0.0 and sent["frequency_penalty"] == 0.0
    assert "n" not in sent
    assert len(d.positions) == 2 and d.text == " a b"
    assert d.usage.calls == 1 and d.usage.completion_tokens == 2

    p.draft(Prefix("Hello"), m=2, k=3, restrict_top_k=True)
    assert body_of(route)["top_k"] == 3


@respx.mock(base_url=BASE)
def test_candidates_chat_prompt_rendered_and_min_tokens(respx_mock):
    route = respx_mock.post("/completions").respond(
        200, json=completion([" x"], [{"": -0.2, " x": -2.0}], usage=(30, 1, 12))
    )
    p = OpenAICompatProvider(sync_client(), "m", profile=LLAMA_CPP_PYTHON, chat_template=TEMPLATE)
    msgs = [{"role": "user", "content": "hi"}]
    d = p.candidates(Prefix(msgs, "Hey"), k=5)
    sent = body_of(route)
    assert sent["prompt"] == "<|user|>hi<|end|>\n<|assistant|>Hey"
    assert sent["max_tokens"] == 1 and sent["logprobs"] == 5 and sent["min_tokens"] == 1
    (pos,) = d.positions
    assert pos.candidates[0].special and pos.candidates[0].logprob == -0.2
    assert (d.usage.prompt_tokens, d.usage.cached_tokens, d.usage.calls) == (30, 12, 1)


@respx.mock(base_url=BASE)
def test_candidates_asks_again_when_eos_was_sampled_unreported(respx_mock):
    stopped = completion([], [], finish="stop", usage=(30, 0, 0))
    ok = completion([" y"], [{" y": -0.3, "": -1.4}], usage=(30, 1, 0))
    route = respx_mock.post("/completions").mock(
        side_effect=[httpx.Response(200, json=stopped), httpx.Response(200, json=ok)]
    )
    profile = OPENAI_COMPLETIONS  # no min_tokens support assumed
    p = OpenAICompatProvider(sync_client(), "m", profile=profile)
    d = p.candidates(Prefix("Hi"), k=2)
    assert route.call_count == 2 and d.usage.calls == 2
    assert [c.raw for c in d.positions[0].candidates] == [b" y", b""]
    assert body_of(route)["seed"] != json.loads(route.calls[0].request.content).get("seed")


@respx.mock(base_url=BASE)
def test_candidates_every_try_stopped_gives_eos_only(respx_mock):
    stopped = completion([], [], finish="stop", usage=(30, 0, 0))
    route = respx_mock.post("/completions").respond(200, json=stopped)
    p = OpenAICompatProvider(sync_client(), "m", profile=OPENAI_COMPLETIONS)
    d = p.candidates(Prefix("Hi"), k=2)
    assert route.call_count == 3 and d.usage.calls == 3 and d.finish_reason == "stop"
    (pos,) = d.positions
    assert [c.special for c in pos.candidates] == [True] and pos.sampled.special


@respx.mock(base_url=BASE)
def test_sample_n_calls_without_n_param_and_one_call_with(respx_mock):
    body = completion([" ok"], [{" ok": -0.1}])
    body["choices"][0]["logprobs"] = None
    route = respx_mock.post("/completions").respond(200, json=body)
    p = OpenAICompatProvider(sync_client(), "m", profile=LLAMA_CPP_PYTHON)
    s = p.sample(Prefix("Hi"), n=3, max_tokens=4, seed=7, stop=["\n"])
    assert route.call_count == 3 and s.usage.calls == 3 and len(s.completions) == 3
    seeds = [json.loads(c.request.content)["seed"] for c in route.calls]
    assert seeds == [7, 8, 9]
    assert json.loads(route.calls[0].request.content)["stop"] == ["\n"]

    route.reset()
    body["choices"] = [dict(body["choices"][0], index=i) for i in range(3)]
    route.respond(200, json=body)
    q = OpenAICompatProvider(sync_client(), "m", profile=VLLM)
    s = q.sample(Prefix("Hi"), n=3, max_tokens=4)
    assert route.call_count == 1 and body_of(route)["n"] == 3 and len(s.completions) == 3
    assert body_of(route)["top_k"] == -1 and body_of(route)["repetition_penalty"] == 1.0


# -- chat_continue (vLLM / SGLang / TGI) -------------------------------------------------------


@respx.mock(base_url=BASE)
def test_chat_continue_request_and_chat_shape(respx_mock):
    route = respx_mock.post("/chat/completions").respond(
        200, json=json.loads((DATA / "vllm_chat_continue.json").read_text())
    )
    p = OpenAICompatProvider(sync_client(), "Qwen", profile=VLLM)
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    d = p.draft(Prefix(msgs, "Hello"), m=4, k=3, restrict_top_k=True)
    sent = body_of(route)
    assert sent["messages"] == [*msgs, {"role": "assistant", "content": "Hello"}]
    assert sent["continue_final_message"] is True and sent["add_generation_prompt"] is False
    assert sent["logprobs"] is True and sent["top_logprobs"] == 3 and sent["max_tokens"] == 4
    assert sent["top_k"] == 3 and sent["temperature"] == 1.0 and sent["top_p"] == 1.0
    assert d.finish_reason == "stop" and len(d.positions) == 3
    assert d.positions[-1].sampled.special and d.text == " there!"


@respx.mock(base_url=BASE)
def test_chat_continue_first_token_and_string_prompts(respx_mock):
    chat = respx_mock.post("/chat/completions").respond(
        200, json=json.loads((DATA / "vllm_chat_continue.json").read_text())
    )
    comp = respx_mock.post("/completions").respond(200, json=completion([" a"], [{" a": -0.1}]))
    p = OpenAICompatProvider(sync_client(), "Qwen", profile=VLLM)
    p.candidates(Prefix([{"role": "user", "content": "Hi"}]), k=3)
    sent = body_of(chat)
    assert sent["messages"] == [{"role": "user", "content": "Hi"}]
    assert "continue_final_message" not in sent  # nothing to continue yet
    p.candidates(Prefix("raw text", " more"), k=3)
    assert body_of(comp)["prompt"] == "raw text more"


async def test_async_chat_continue_same_as_sync():
    payload = json.loads((DATA / "vllm_chat_continue.json").read_text())
    msgs = [{"role": "user", "content": "Hi"}]
    with respx.mock(base_url=BASE) as mock:
        mock.post("/chat/completions").respond(200, json=payload)
        sync_draft = OpenAICompatProvider(sync_client(), "Q", profile=VLLM).draft(
            Prefix(msgs, "Hello"), m=4, k=3
        )
        ap = AsyncOpenAICompatProvider(async_client(), "Q", profile=VLLM)
        async_draft = await ap.draft(Prefix(msgs, "Hello"), m=4, k=3)
    assert async_draft == sync_draft


# -- OpenAI hosted chat: no continuation ---------------------------------------------------------


@respx.mock(base_url=BASE)
def test_openai_chat_first_token_works_continuation_refused(respx_mock):
    route = respx_mock.post("/chat/completions").respond(
        200, json=json.loads((DATA / "openai_chat_logprobs.json").read_text())
    )
    p = OpenAICompatProvider(sync_client(), "gpt-4o-mini", profile=OPENAI_CHAT)
    d = p.draft(Prefix([{"role": "user", "content": "Hi"}]), m=4, k=3)
    assert body_of(route)["max_completion_tokens"] == 4
    assert "top_k" not in body_of(route)
    assert len(d.positions) == 4 and d.usage.cached_tokens == 8
    with pytest.raises(CapabilityError) as err:
        p.candidates(Prefix([{"role": "user", "content": "Hi"}], "Caf"), k=3)
    assert "rerank" in str(err.value)
    with pytest.raises(CapabilityError, match="top_k"):
        p.draft(Prefix([{"role": "user", "content": "Hi"}]), m=2, k=3, restrict_top_k=True)


# -- bad input ----------------------------------------------------------------------------------


def test_unreachable_base_url():
    with socket_port() as port:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0)
    p = OpenAICompatProvider(client, "m", profile=LLAMA_CPP_PYTHON)
    with pytest.raises(ProviderConnectionError, match="vas local-server"):
        p.candidates(Prefix("Hi"), k=2)
    with pytest.raises(ProviderConnectionError, match="base_url"):
        probe_profile(client, "m", refresh=True, cache=False)


@respx.mock(base_url=BASE)
def test_unknown_model_lists_available(respx_mock):
    respx_mock.get("/models").respond(
        200, json={"object": "list", "data": [
            {"id": "llama-3", "object": "model", "created": 0, "owned_by": "vllm"},
            {"id": "qwen", "object": "model", "created": 0, "owned_by": "vllm"},
        ]},
    )
    respx_mock.post("/completions").respond(
        404, json={"error": {"message": "The model `nope` does not exist.", "code": 404}}
    )
    with pytest.raises(ModelNotFoundError) as err:
        probe_profile(sync_client(), "nope", refresh=True, cache=False)
    assert err.value.available == ["llama-3", "qwen"] and "llama-3, qwen" in str(err.value)
    p = OpenAICompatProvider(sync_client(), "nope", profile=VLLM)
    with pytest.raises(ModelNotFoundError, match="qwen"):
        p.candidates(Prefix("Hi"), k=2)


def test_k_above_max_names_the_max():
    p = OpenAICompatProvider(sync_client(), "gpt-3.5-turbo-instruct", profile=OPENAI_COMPLETIONS)
    with pytest.raises(CapabilityError, match="maximum top-k is 5"):
        p.candidates(Prefix("Hi"), k=6)
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ConfigError):
            p.candidates(Prefix("Hi"), k=bad)


def test_empty_and_malformed_prompts():
    p = OpenAICompatProvider(sync_client(), "m", profile=LLAMA_CPP_PYTHON, chat_template=TEMPLATE)
    for bad in ("", [], [{"content": "no role"}], None):
        with pytest.raises(ConfigError):
            p.candidates(Prefix(bad), k=2)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="m must be"):
        p.draft(Prefix("Hi"), m=0, k=2)
    with pytest.raises(ConfigError, match="n must be"):
        p.sample(Prefix("Hi"), n=0, max_tokens=3)
    no_template = OpenAICompatProvider(sync_client(), "m", profile=LLAMA_CPP_PYTHON)
    with pytest.raises(ConfigError, match="chat_template"):
        no_template.candidates(Prefix([{"role": "user", "content": "hi"}]), k=2)


@respx.mock(base_url=BASE)
def test_response_without_logprobs(respx_mock):
    body = completion([" a"], [{" a": -0.1}])
    body["choices"][0]["logprobs"] = None
    respx_mock.post("/completions").respond(200, json=body)
    p = OpenAICompatProvider(sync_client(), "m", profile=LLAMA_CPP_PYTHON)
    with pytest.raises(NoLogprobsError, match="no logprobs"):
        p.candidates(Prefix("Hi"), k=2)


@respx.mock(base_url=BASE)
def test_server_rejection_is_a_provider_error(respx_mock):
    respx_mock.post("/completions").respond(
        400, json={"error": {"message": "Requested tokens (5000) exceed context window of 2048"}}
    )
    p = OpenAICompatProvider(sync_client(), "m", profile=LLAMA_CPP_PYTHON)
    with pytest.raises(ProviderError, match="context window"):
        p.candidates(Prefix("Hi"), k=2)


def test_wrong_client_type():
    with pytest.raises(ConfigError):
        connect(object(), "m")  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        OpenAICompatProvider(async_client(), "m", profile=VLLM)  # type: ignore[arg-type]


# -- profiles: probe and cache -------------------------------------------------------------------


def two_choices(tokens, tops) -> dict:
    body = completion(tokens, tops)
    body["choices"].append(dict(body["choices"][0], index=1))
    return body


# Under top_k=1 an honouring server samples the argmax everywhere. Spread-out distributions
# (argmax probability e^-1 = 0.37) make that unlikely for an ignoring server: 8 positions x 2
# choices give P0 = e^-16 = 1.1e-7 < 1e-3. A peaky model (argmax 0.99) gives P0 = 0.99^16 = 0.85.
SPREAD = [{f" w{i}": -1.0, f" v{i}": -1.5, f" u{i}": -2.0} for i in range(8)]
PEAKY = [{f" w{i}": math.log(0.99), f" v{i}": -6.0} for i in range(8)]


@respx.mock(base_url=BASE)
def test_probe_vllm_like_server_in_two_to_three_calls(respx_mock):
    models = respx_mock.get("/models").respond(200, json={"object": "list", "data": [
        {"id": "qwen", "object": "model", "created": 0, "owned_by": "vllm"}]})
    comp = respx_mock.post("/completions").mock(side_effect=[
        httpx.Response(400, json={"object": "error", "message":
            "Requested sample logprobs of 64, which is greater than max allowed: 20"}),
        httpx.Response(200, json=two_choices([f" w{i}" for i in range(8)], SPREAD)),
    ])
    profile = probe_profile(sync_client(), "qwen", refresh=True, cache=False)
    assert models.call_count == 1 and comp.call_count == 2
    assert profile.max_top_k == 20 and profile.n_param and profile.top_k_param
    assert profile.continuation == "chat_continue" and profile.family == "vllm"
    assert profile.completions and profile.token_id_prompts
    body = json.loads(comp.calls.last.request.content)
    assert body["logprobs"] == 20 and body["top_k"] == 1
    assert body["min_p"] == 0.0 and body["repetition_penalty"] == 1.0


@respx.mock(base_url=BASE)
def test_probe_top_k_ignored_by_peaky_model_is_not_honoured(respx_mock):
    # Every sampled token is the argmax (what the old check took as "honoured"), but with
    # p(argmax) = 0.99 an ignoring server does that 85% of the time: the check samples more
    # prompts, stays undecided, and reports top_k as not usable.
    respx_mock.get("/models").respond(200, json={"object": "list", "data": [
        {"id": "m", "object": "model", "created": 0, "owned_by": "vllm"}]})
    peaky = two_choices([f" w{i}" for i in range(8)], PEAKY)
    comp = respx_mock.post("/completions").mock(return_value=httpx.Response(200, json=peaky))
    profile = probe_profile(sync_client(), "m", refresh=True, cache=False)
    assert comp.call_count == 4  # the first call and 3 more prompts, then it gives up
    assert not profile.top_k_param


@respx.mock(base_url=BASE)
def test_probe_top_k_refuted_by_one_non_argmax_sample(respx_mock):
    respx_mock.get("/models").respond(200, json={"object": "list", "data": [
        {"id": "m", "object": "model", "created": 0, "owned_by": "vllm"}]})
    tokens = [f" w{i}" for i in range(8)]
    tokens[3] = " v3"  # below the argmax: top_k=1 cannot have been applied
    comp = respx_mock.post("/completions").respond(200, json=two_choices(tokens, SPREAD))
    profile = probe_profile(sync_client(), "m", refresh=True, cache=False)
    assert comp.call_count == 1 and not profile.top_k_param


def test_top_k_evidence_false_alarm_rate_and_power():
    # A server that ignores top_k, on positions whose argmax has probability 0.37-0.6: it says
    # "honoured" only when all 16 sampled tokens were the argmax (rate E[prod p] ~ 1e-5, far
    # below the stated 1e-3). Failing bound: more than 40 false alarms in 20,000 runs, which at
    # the allowed rate 1e-3 (mean 20) has probability below 1e-4. An honouring server (always
    # the argmax) is recognised every time: 16 such positions give P0 <= 0.6^16 = 2.8e-4.
    import random

    from vas_api.profiles import TOP_K_ALPHA, top_k_evidence
    from vas_api.types import Candidate, Position

    rng = random.Random(0)
    false_alarms, runs = 0, 20_000
    for _ in range(runs):
        ignoring, honouring = [], []
        for _ in range(16):
            p = rng.uniform(0.37, 0.6)
            rest = math.log((1 - p) / 2)  # two others, each below the argmax
            cands = (Candidate(b"a", math.log(p)), Candidate(b"b", rest), Candidate(b"c", rest))
            ignoring.append(Position(cands, cands[0] if rng.random() < p else cands[1]))
            honouring.append(Position(cands, cands[0]))
        verdict, p0 = top_k_evidence([ignoring])
        false_alarms += verdict is True
        assert verdict is not True or p0 < TOP_K_ALPHA
        assert top_k_evidence([honouring])[0] is True
    assert false_alarms <= 40


@respx.mock(base_url=BASE)
def test_probe_chat_only_server(respx_mock):
    respx_mock.get("/models").respond(200, json={"object": "list", "data": [
        {"id": "chatty", "object": "model", "created": 0, "owned_by": "someone"}]})
    props = respx_mock.get("http://mock.test/props").respond(404, json={"error": "Not found"})
    respx_mock.post("/completions").respond(404, json={"error": {"message": "Not found"}})
    respx_mock.post("/chat/completions").respond(
        200, json=json.loads((DATA / "openai_chat_logprobs.json").read_text())
    )
    profile = probe_profile(sync_client(), "chatty", refresh=True, cache=False)
    assert profile.logprob_shape == "chat" and profile.continuation == "none"
    assert profile.max_top_k == 20 and profile.modes() == ["rerank"]
    assert props.call_count == 1 and profile.family == "unknown"


def test_static_profiles_need_no_calls():
    client = openai.OpenAI(api_key="sk-test", max_retries=0)
    assert probe_profile(client, "gpt-4o-mini") == OPENAI_CHAT
    assert probe_profile(client, "gpt-3.5-turbo-instruct") == OPENAI_COMPLETIONS


def test_profile_cache_roundtrip_without_secrets(tmp_path, monkeypatch):
    monkeypatch.setenv("VAS_API_CACHE_DIR", str(tmp_path))
    clear_memory_cache()
    url = "https://user:secret@host.test:8443/v1/?api-key=sk-123"
    key = cache_key(url, "m")
    assert key == "https://host.test:8443/v1|m"
    store_profile(url, "m", VLLM)
    text = (tmp_path / "profiles.json").read_text()
    assert "secret" not in text and "sk-123" not in text
    clear_memory_cache()
    assert cached_profile("https://host.test:8443/v1", "m") == VLLM
    (tmp_path / "profiles.json").write_text("{not json")
    clear_memory_cache()
    assert cached_profile("https://host.test:8443/v1", "m") is None


async def test_connect_picks_sync_or_async():
    p = connect(sync_client(), "m", profile=VLLM)
    a = connect(async_client(), "m", profile=VLLM)
    assert isinstance(p, OpenAICompatProvider) and isinstance(p, Provider)
    assert isinstance(a, AsyncOpenAICompatProvider) and isinstance(a, AsyncProvider)
    b = await aconnect(async_client(), "m", profile=VLLM)
    assert b.profile == VLLM


class socket_port:
    """A port that nothing listens on (bound, then released)."""

    def __enter__(self) -> int:
        import socket

        self._s = socket.socket()
        self._s.bind(("127.0.0.1", 0))
        return self._s.getsockname()[1]

    def __exit__(self, *exc: object) -> None:
        self._s.close()


def test_family_table_neutral_samplers():
    from vas_api.families import FAMILIES, family_from_owned_by
    from vas_api.profiles import LLAMA_CPP_PYTHON, LLAMA_SERVER
    from vas_api.providers.openai_wire import neutral_sampler_params

    standard, extra = neutral_sampler_params(LLAMA_SERVER)
    assert standard == {"temperature": 1.0, "top_p": 1.0, "presence_penalty": 0.0,
                        "frequency_penalty": 0.0}
    # llama-server: the chain itself is reduced to temperature, and each sampler is off too.
    assert extra["samplers"] == ["temperature"] and extra["top_k"] == 0
    assert extra["dry_multiplier"] == 0.0 and extra["xtc_probability"] == 0.0
    assert extra["mirostat"] == 0 and extra["top_n_sigma"] == -1.0 and extra["min_p"] == 0.0
    _, restricted = neutral_sampler_params(LLAMA_SERVER, top_k=5)
    assert restricted["samplers"] == ["top_k", "temperature"] and restricted["top_k"] == 5
    assert extra["samplers"] == ["temperature"]  # the table itself is not changed
    _, lcp = neutral_sampler_params(LLAMA_CPP_PYTHON)
    assert lcp["mirostat_mode"] == 0 and lcp["repeat_penalty"] == 1.0 and "samplers" not in lcp
    for key in ("ollama", "lmstudio"):  # servers that apply top_k 40 / min_p / repeat 1.1
        fam = FAMILIES[key]
        assert fam.neutral["top_k"] == 0 and fam.neutral["repeat_penalty"] == 1.0
    assert not FAMILIES["ollama"].neutral_exact and FAMILIES["lmstudio"].neutral_exact
    assert family_from_owned_by("llamacpp").key == "llama.cpp"
    assert family_from_owned_by("me").key == "llama-cpp-python"
    assert family_from_owned_by("organization_owner").key == "lmstudio"
    assert family_from_owned_by("nobody") is None


def test_old_cached_profile_is_reprobed_not_an_error(tmp_path, monkeypatch):
    monkeypatch.setenv("VAS_API_CACHE_DIR", str(tmp_path))
    clear_memory_cache()
    old = {"name": "vLLM", "max_top_k": 20, "logprob_shape": "chat",
           "continuation": "chat_continue", "top_k_param": True, "n_param": True,
           "price_prompt": 0.0, "price_completion": 0.0,
           "extra": {"sampler_dialect": "vllm", "family": "vllm"}}
    (tmp_path / "profiles.json").write_text(json.dumps({"http://h.test/v1|m": old}))
    assert cached_profile("http://h.test/v1", "m") is None
    bad = {"schema": 2, "name": "x", "unknown_field": 1}
    (tmp_path / "profiles.json").write_text(json.dumps({"http://h.test/v1|m": bad}))
    assert cached_profile("http://h.test/v1", "m") is None


def mock_llama_server(respx_mock):
    """respx routes answering like llama-server (payloads in its wire format)."""
    respx_mock.get("/models").respond(200, json={"object": "list", "data": [
        {"id": "smol", "object": "model", "created": 0, "owned_by": "llamacpp"}]})
    root = "http://mock.test"
    respx_mock.get(f"{root}/props").respond(200, json={
        "default_generation_settings": {}, "eos_token": "<|im_end|>", "total_slots": 2})

    def tokenize(request):
        body = json.loads(request.content)
        known = {"<|im_end|>": [2], ".": [30]}
        return httpx.Response(200, json={"tokens": known.get(body["content"], [101, 102, 103])})

    respx_mock.post(f"{root}/tokenize").mock(side_effect=tokenize)
    respx_mock.post(f"{root}/detokenize").respond(200, json={"content": "<|im_end|>"})
    respx_mock.post(f"{root}/apply-template").respond(200, json={"prompt": "<|im_start|>..."})

    def entry(i):
        tops = [{"id": 10 + j, "token": f" w{i}{j}", "bytes": list(f" w{i}{j}".encode()),
                 "logprob": lp} for j, lp in enumerate([-1.0, -1.5, -2.0])]
        return {**tops[0], "top_logprobs": tops}

    choice = {"index": 0, "text": "", "finish_reason": "length",
              "logprobs": {"content": [entry(i) for i in range(8)]}}
    body = {"id": "c", "object": "text_completion", "created": 0, "model": "smol",
            "choices": [choice, dict(choice, index=1)]}
    return respx_mock.post("/completions").respond(200, json=body)


@respx.mock(base_url=BASE)
def test_probe_llama_server_shape_and_endpoints(respx_mock):
    # llama-server answers /v1/completions with the chat shape; the probe finds its EOS id
    # through /props + /tokenize and sends the prompt as token ids.
    comp = mock_llama_server(respx_mock)
    profile = probe_profile(sync_client(), "smol", refresh=True, cache=False)
    assert profile.family == "llama.cpp" and profile.logprob_shape == "chat"
    assert profile.eos_token_ids == (2,) and profile.tokenize and profile.apply_template
    assert profile.token_id_prompts and profile.top_k_param and profile.n_param
    assert profile.max_top_k == 3  # it returned fewer than the 64 asked for
    assert profile.anchor_token_id == 30
    sent = json.loads(comp.calls.last.request.content)
    assert sent["prompt"] == [101, 102, 103] and sent["samplers"] == ["top_k", "temperature"]


@respx.mock(base_url=BASE)
async def test_aprobe_llama_server_same_profile(respx_mock):
    from vas_api.profiles import aprobe_profile

    mock_llama_server(respx_mock)
    sync = probe_profile(sync_client(), "smol", refresh=True, cache=False)
    client = async_client()
    assert await aprobe_profile(client, "smol", refresh=True, cache=False) == sync
    await client.close()


def test_anchored_candidates_call_forces_a_whole_token():
    # llama-server: the candidates call forces the anchor token with logit_bias, and the
    # position it returns carries the candidates but no sampled token (the anchor is no sample).
    from dataclasses import replace

    from vas_api.profiles import LLAMA_SERVER
    from vas_api.providers.openai_wire import Target, candidates_flow

    profile = replace(LLAMA_SERVER, anchor_token_id=30)
    flow = candidates_flow(profile, "m", Target("completions", prompt="Hi"), k=2,
                           special_tokens=())
    call = next(flow)
    assert call.kwargs["extra_body"]["logit_bias"] == {"30": 100.0}
    assert "min_tokens" not in call.kwargs["extra_body"]
    tops = [{"id": 5, "token": "", "bytes": [0xF0, 0x9F], "logprob": -1.0},
            {"id": 6, "token": " I", "bytes": [32, 73], "logprob": -2.0}]
    reply = Completion.model_validate({
        "id": "c", "object": "text_completion", "created": 0, "model": "m",
        "choices": [{"index": 0, "text": ".", "finish_reason": "length", "logprobs": {
            "content": [{"id": 30, "token": ".", "bytes": [46], "logprob": -6.0,
                         "top_logprobs": tops}]}}]})
    with pytest.raises(StopIteration) as done:
        flow.send(reply)
    (pos,) = done.value.value.positions
    assert pos.sampled is None and [c.id for c in pos.candidates] == [5, 6]
    assert pos.candidates[0].text is None and not pos.candidates[0].special


def test_draft_ends_before_a_merged_llama_server_entry():
    # A draft whose third entry is llama-server's merged character (whole emoji sent, the last
    # token's continuation-byte candidates): the draft keeps the two positions before it.
    from vas_api.providers.openai_wire import draft_from_response

    def entry(tid, sent, tops):
        return {"id": tid, "token": sent.decode("utf-8", "ignore"), "bytes": list(sent),
                "logprob": -0.5, "top_logprobs": [
                    {"id": i, "token": b.decode("utf-8", "ignore"), "bytes": list(b),
                     "logprob": -0.5 - j} for j, (i, b) in enumerate(tops)]}

    content = [entry(1, b" Hi", [(1, b" Hi"), (2, b" Ho")]),
               entry(3, b"!", [(3, b"!"), (4, b".")]),
               entry(5, b" \xf0\x9f\x9a\xa8", [(5, b"\xa8"), (6, b"\x80")]),
               entry(7, b" ok", [(7, b" ok")])]
    response = Completion.model_validate({
        "id": "c", "object": "text_completion", "created": 0, "model": "m",
        "choices": [{"index": 0, "text": " Hi! \U0001f6a8 ok", "finish_reason": "length",
                     "logprobs": {"content": content}}]})
    draft = draft_from_response(response, k=2, m=8, special_tokens=())
    assert [p.sampled.raw for p in draft.positions] == [b" Hi", b"!"]
    assert draft.finish_reason == "length"


def test_draft_of_only_unfinished_character_is_empty_not_an_error():
    # llama-server, when every generated token was part of one unfinished character: text
    # "\ufffd", logprobs null. A server that returns text without logprobs is still an error.
    from vas_api.errors import NoLogprobsError
    from vas_api.providers.openai_wire import draft_from_response

    def reply(text):
        return Completion.model_validate({
            "id": "c", "object": "text_completion", "created": 0, "model": "m",
            "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7},
            "choices": [{"index": 0, "text": text, "finish_reason": "length", "logprobs": None}]})

    draft = draft_from_response(reply("\ufffd"), k=5, m=2, special_tokens=())
    assert draft.positions == [] and draft.finish_reason == "length"
    with pytest.raises(NoLogprobsError):
        draft_from_response(reply("Hello"), k=5, m=2, special_tokens=())
