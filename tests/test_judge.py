"""The LLM judge reward: P(yes) arithmetic on the local server's exact wire shapes (respx), the
usage meter, errors before and after calls, specs, and one run against the real local server."""

from __future__ import annotations

import json
import math

import httpx
import openai
import pytest
import respx

from estimators.judge import JudgeReward, JudgeUsage, answer_distribution, top_candidates
from estimators.rewards import build_reward, compute_rewards
from vas_api.errors import ConfigError, RewardError

BASE = "http://judge.test/v1"
Q = "Does this review recommend the product to others? Answer Yes or No."
PROMPT = (
    "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
    "<|im_end|>\n<|im_start|>user\nWrite a short review of a desk lamp.<|im_end|>\n"
    "<|im_start|>assistant\n"
)


def chat_reply(top: list[tuple[str, float]], *, usage: bool = True) -> dict:
    """A chat.completion body as llama-cpp-python's server returns it (bytes null, no ids)."""
    entries = [{"token": t, "bytes": None, "logprob": lp} for t, lp in top]
    body = {
        "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "m",
        "choices": [{
            "index": 0, "finish_reason": "length",
            "message": {"role": "assistant", "content": top[0][0] if top else ""},
            "logprobs": {"content": [{**entries[0], "top_logprobs": entries}] if top else []},
        }],
    }
    if usage:
        body["usage"] = {"prompt_tokens": 60, "completion_tokens": 1, "total_tokens": 61}
    return body


def legacy_reply(top: dict[str, float], *, with_content: bool) -> dict:
    """A text_completion body: the legacy logprob shape, plus the chat-shape `content` list with
    token ids that vas_api.local.LocalServer's reporter adds when `with_content`."""
    first = next(iter(top))
    logprobs: dict = {
        "text_offset": [52], "token_logprobs": [top[first]], "tokens": [first], "top_logprobs": [top],
    }
    if with_content:
        entries = [
            {"id": i, "token": t, "bytes": list(t.encode()), "logprob": lp}
            for i, (t, lp) in enumerate(top.items())
        ]
        logprobs["content"] = [{**entries[0], "top_logprobs": entries}]
    return {
        "id": "cmpl-1", "object": "text_completion", "created": 1, "model": "m",
        "choices": [{"index": 0, "finish_reason": "length", "text": first, "logprobs": logprobs}],
        "usage": {"prompt_tokens": 70, "completion_tokens": 1, "total_tokens": 71},
    }


def judge(**kw) -> JudgeReward:
    # openai here runs on its own httpx fork: an explicit httpx.Client is what respx patches.
    client = openai.OpenAI(base_url=BASE, api_key="sk-test", max_retries=0, http_client=httpx.Client())
    return JudgeReward(client, "m", kw.pop("question", Q), **kw)


def p_of(yes: list[float], no: list[float]) -> float:
    py, pn = sum(map(math.exp, yes)), sum(map(math.exp, no))
    return py / (py + pn)


# -- arithmetic ------------------------------------------------------------------------------


def test_chat_shape_sums_the_yes_and_no_variants():
    top = [("No", -0.52), ("Yes", -1.68), ("The", -3.1), ("Y", -3.9), ("Not", -5.2), ("yes", -5.65),
           (" NO", -6.0), ("Nope", -6.1)]
    with respx.mock(base_url=BASE) as mock:
        route = mock.post("/chat/completions").respond(json=chat_reply(top))
        (value,) = judge()([PROMPT], ["A fine lamp, bright and cheap. I would buy it again."])
    # "Y", "Not" and "Nope" are other words; " NO" is a no after stripping and casefolding.
    assert value == pytest.approx(p_of([-1.68, -5.65], [-0.52, -6.0]))
    sent = json.loads(route.calls[0].request.content)
    assert sent["max_tokens"] == 1 and sent["logprobs"] is True and sent["top_logprobs"] == 20
    user = sent["messages"][-1]["content"]
    assert "Write a short review of a desk lamp." in user and "<|im_start|>" not in user
    assert "A fine lamp, bright and cheap." in user and user.endswith(Q)


def test_the_local_servers_completion_shape_and_the_legacy_one_agree():
    top = {" Yes": -0.4, " No": -1.3, "Maybe": -2.0, "yes": -4.0}
    expected = p_of([-0.4, -4.0], [-1.3])
    for with_content in (True, False):
        with respx.mock(base_url=BASE) as mock:
            route = mock.post("/completions").respond(json=legacy_reply(top, with_content=with_content))
            r = judge(endpoint="completions", chat_template="{% for m in messages %}<{{ m.role }}>"
                      "{{ m.content }}{% endfor %}<assistant>")
            assert r([PROMPT], ["Bright."]) == [pytest.approx(expected)]
        sent = json.loads(route.calls[0].request.content)
        assert sent["logprobs"] == 20 and sent["max_tokens"] == 1
        assert sent["prompt"].startswith("<user>Request: Write a short review") and sent["prompt"].endswith(
            "<assistant>"
        )


def test_top_candidates_drops_sentinels_and_adds_a_missing_sampled_token():
    logprobs = {"content": [{"token": "Yes", "logprob": -3.0, "top_logprobs": [
        {"token": "No", "logprob": -0.1}, {"token": "Maybe", "logprob": -9999.0},
    ]}]}
    assert top_candidates(logprobs) == [("No", -0.1), ("Yes", -3.0)]
    assert top_candidates({"content": []}) == []
    assert answer_distribution([("\u0120Yes", math.log(0.3)), ("\u2581no", math.log(0.1))]) == (
        pytest.approx(0.3), pytest.approx(0.1)
    )


def test_one_sided_and_undecided_answers():
    r = judge()
    with respx.mock(base_url=BASE) as mock:
        mock.post("/chat/completions").mock(side_effect=[
            httpx.Response(200, json=chat_reply([("Yes", -0.2), ("The", -2.0)])),
            httpx.Response(200, json=chat_reply([("The", -0.2), ("A", -2.0)])),
        ])
        assert r([PROMPT] * 2, ["good", "meh"]) == [1.0, 0.5]
    assert r.usage.undecided == 1 and r.usage.calls == 2


def test_custom_answer_words():
    r = judge(question="Est-ce poli ? Oui ou non.", yes="oui", no="non")
    with respx.mock(base_url=BASE) as mock:
        mock.post("/chat/completions").respond(json=chat_reply([("Non", -1.0), ("Oui", -2.0), ("Yes", -0.1)]))
        assert r([PROMPT], ["x"]) == [pytest.approx(p_of([-2.0], [-1.0]))]
    assert "yes=oui" in r.description and "no=non" in r.description


# -- the meter ---------------------------------------------------------------------------------


def test_usage_counts_calls_and_billed_tokens_and_resets():
    r = judge()
    with respx.mock(base_url=BASE) as mock:
        mock.post("/chat/completions").respond(json=chat_reply([("Yes", -0.1), ("No", -2.5)]))
        r([PROMPT] * 3, ["a", "b", "c"])
    assert r.usage == JudgeUsage(calls=3, prompt_tokens=180, completion_tokens=3, seconds=r.usage.seconds)
    assert r.usage.total_tokens == 183 and r.usage.seconds > 0
    spent = r.reset_usage()
    assert spent.calls == 3 and r.usage == JudgeUsage()


def test_a_reply_without_usage_is_counted_as_unmetered():
    r = judge()
    with respx.mock(base_url=BASE) as mock:
        mock.post("/chat/completions").respond(json=chat_reply([("Yes", -0.1)], usage=False))
        r([PROMPT], ["a"])
    assert (r.usage.calls, r.usage.unmetered, r.usage.prompt_tokens) == (1, 1, 0)


def test_concurrent_calls_keep_the_order_and_count_every_call():
    def answer(request: httpx.Request) -> httpx.Response:
        text = json.loads(request.content)["messages"][-1]["content"]
        n = int(text.split("Response: item")[1].split("\n")[0])
        return httpx.Response(200, json=chat_reply([("Yes", math.log(n / 10)), ("No", math.log(1 - n / 10))]))

    r = judge(max_workers=3)
    with respx.mock(base_url=BASE) as mock:
        mock.post("/chat/completions").mock(side_effect=answer)
        values = r([PROMPT] * 7, [f"item{n}" for n in range(1, 8)])
    assert values == pytest.approx([n / 10 for n in range(1, 8)])
    assert r.usage.calls == 7 and r.usage.prompt_tokens == 7 * 60


# -- errors ------------------------------------------------------------------------------------


def test_a_server_without_logprobs_is_a_clear_reward_error():
    body = chat_reply([("Yes", -0.1)])
    body["choices"][0]["logprobs"] = None
    r = judge()
    with respx.mock(base_url=BASE) as mock:
        mock.post("/chat/completions").respond(json=body)
        with pytest.raises(RewardError, match="no logprobs.*top_logprobs=20"):
            compute_rewards(r, [PROMPT], ["a"])
    assert r.usage.calls == 1  # the call was made (and billed) even though it is useless


def test_a_refused_call_is_a_reward_error_and_counted_as_failed():
    r = judge()
    with respx.mock(base_url=BASE) as mock:
        mock.post("/chat/completions").respond(400, json={"error": {"message": "logprobs are not supported"}})
        with pytest.raises(RewardError, match="support logprobs"):
            r([PROMPT], ["a"])
    assert (r.usage.calls, r.usage.failed) == (1, 1)


@pytest.mark.parametrize(
    "kw, match",
    [({"question": " "}, "yes/no question"), ({"template": "{question}"}, "{response}"),
     ({"template": "{response} {question} {other}"}, "may only use"), ({"endpoint": "responses"}, "endpoint"),
     ({"top_logprobs": 0}, "top_logprobs"), ({"yes": "yes|ok", "no": "OK"}, "both"),
     ({"max_workers": 0}, "max_workers"), ({"yes": ""}, "answer word")],
)
def test_bad_settings_fail_before_any_call(kw, match):
    with respx.mock(base_url=BASE) as mock, pytest.raises(ConfigError, match=match):
        judge(**kw)
    assert not mock.calls


def test_bad_connections_fail_before_any_call():
    with pytest.raises(ConfigError, match="model name"):
        JudgeReward(BASE, "", Q)
    with pytest.raises(ConfigError, match="http"):
        JudgeReward("127.0.0.1:8080", "m", Q)
    with pytest.raises(ConfigError, match="openai.OpenAI"):
        JudgeReward(object(), "m", Q)
    with pytest.raises(ConfigError, match="chat_template"):
        r = JudgeReward(BASE, "m", Q, endpoint="completions")
        r([PROMPT], ["a"])


# -- specs -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "spec",
    [f'judge:question="{Q}",base_url={BASE},model=m',
     f'judge:"{Q}",base_url={BASE},model=m,top_logprobs=5,system="Be strict, brief."',
     f'judge:question="Polite? Yes or No.",base_url={BASE},model=m,template="Text: {{response}}\n{{question}}"',
     f'judge:"{Q}",model=smollm2-135m-instruct'],
)
def test_judge_specs_round_trip(spec):
    r = build_reward(spec)
    assert isinstance(r, JudgeReward) and r.question in spec
    again = build_reward(r.description)
    assert again.description == r.description
    assert (again.base_url, again.model, again.template, again.system, again.top_logprobs) == (
        r.base_url, r.model, r.template, r.system, r.top_logprobs
    )


def test_a_judge_in_a_weighted_spec_answers_through_the_url(monkeypatch):
    class Patchable(openai.OpenAI):  # the client the judge builds from its URL, on plain httpx
        def __init__(self, **kw):
            super().__init__(http_client=httpx.Client(), **kw)

    monkeypatch.setattr(openai, "OpenAI", Patchable)
    reward = build_reward(f'0.5*judge:"{Q}",base_url={BASE},model=m+0.5*ending:min_words=1,max_words=3')
    with respx.mock(base_url=BASE) as mock:
        mock.post("/chat/completions").respond(json=chat_reply([("Yes", math.log(0.6)), ("No", math.log(0.2))]))
        assert reward([PROMPT], ["Good lamp."]) == [pytest.approx(0.5 * 0.75 + 0.5 * 1.0)]


# -- the real local server ---------------------------------------------------------------------


@pytest.mark.integration
def test_the_judge_on_the_local_server(local_server, openai_client):
    texts = ["I love this lamp. It is bright and I recommend it to everyone.",
             "Terrible lamp. It broke on day one; do not buy it.", "The lamp"]
    r = JudgeReward(openai_client, local_server.model, Q)
    values = compute_rewards(r, [PROMPT] * 3, texts)
    assert all(0.0 <= v <= 1.0 for v in values)
    assert r.usage.calls == 3 and r.usage.failed == 0 and r.usage.prompt_tokens > 3 * 20
    assert r.usage.completion_tokens == 3
    # The legacy endpoint with the GGUF's own template sees the same prompt as the chat endpoint.
    legacy = JudgeReward(
        openai_client, local_server.model, Q, endpoint="completions", chat_template=str(local_server.gguf_path)
    )
    assert legacy([PROMPT] * 3, texts) == pytest.approx(values, abs=0.02)


@pytest.mark.integration
def test_a_spec_without_base_url_uses_the_embedded_server(local_server, monkeypatch):
    import vas_api.local

    started = []

    class Shared:  # the session's server stands in for the one the judge would start
        model, gguf_path = local_server.model, local_server.gguf_path

        def start(self):
            started.append(True)
            return self

        def client(self, **kw):
            return local_server.client(**kw)

        def stop(self):
            started.append(False)

    monkeypatch.setattr(vas_api.local, "LocalServer", Shared)
    r = build_reward(f'judge:"{Q}"')
    assert not started  # nothing starts before the first call
    with r:
        (value,) = r([PROMPT], ["Bright and cheap. Buy it."])
        assert 0.0 <= value <= 1.0 and r.model == local_server.model and r.usage.calls == 1
    assert started == [True, False]
