"""`client.responses.create` (vas_api.responses_api) through the real openai SDK, with the chat
completions endpoint mocked by respx: string and message-list input give the SDK's own
`Response` (output_text, usage summed over the calls, `.vas`), instructions arrive as a system
message, OpenAI's hosted chat models run rerank with one call of n, the async client works,
and what VAS cannot honour is refused before any call. The API key is a placeholder.
"""

from __future__ import annotations

import json

import httpx
import openai
import pytest
import respx
from openai.types.responses import Response

import vas_api
from vas_api.errors import ConfigError
from vas_api.profiles import OPENAI_CHAT

from .test_modes import (
    BLOCKS,
    MISTRAL,
    OPENAI,
    PLACEHOLDER_KEY,
    POOL,
    LikesGreat,
    chat_body,
    mistral_reply,
)

MESSAGES = [{"role": "user", "content": "Review my hotel."}]


def sdk(base_url=OPENAI, is_async=False):
    cls, http = (openai.AsyncOpenAI, httpx.AsyncClient) if is_async else (openai.OpenAI, httpx.Client)
    return cls(api_key=PLACEHOLDER_KEY, base_url=base_url, max_retries=0, http_client=http())


@respx.mock(base_url=OPENAI)
def test_string_input_on_hosted_chat_runs_rerank_with_one_call_of_n(respx_mock):
    route = respx_mock.post("/chat/completions").respond(200, json=chat_body(POOL))
    client = vas_api.wrap(sdk(), profile=OPENAI_CHAT, value_model=LikesGreat(), beta=8.0, rerank="argmax")
    resp = client.responses.create(model="gpt-4o-mini", input="Review my hotel.", max_output_tokens=32)
    assert isinstance(resp, Response) and resp.object == "response" and resp.status == "completed"
    assert resp.output_text == "A great stay, great staff!"  # the argmax of the pool
    assert route.call_count == 1
    sent = json.loads(route.calls.last.request.content)
    assert sent["n"] == 8 and sent["max_completion_tokens"] == 32 and sent["messages"] == MESSAGES
    assert resp.vas.mode == "rerank" and resp.vas.api_calls == 1 and resp.vas.pool_size == 8
    u = resp.usage
    assert (u.input_tokens, u.output_tokens, u.total_tokens) == (14, 48, 62)
    assert u.input_tokens_details.cached_tokens == 0 and u.output_tokens_details.reasoning_tokens == 0
    assert resp.max_output_tokens == 32 and resp.instructions is None


@respx.mock(base_url=MISTRAL)
def test_message_list_and_instructions_sum_the_usage_of_every_call(respx_mock):
    route = respx_mock.post("/chat/completions").mock(side_effect=mistral_reply)
    client = vas_api.wrap(sdk(MISTRAL), value_model=LikesGreat(), beta=1.0)
    resp = client.responses.create(
        model="mistral-small-latest", instructions="Be brief.", max_output_tokens=30, block_len=3, block_n=2,
        input=[{"role": "user", "content": [{"type": "input_text", "text": "Review my hotel."}]}],
    )
    assert resp.output_text == "".join(BLOCKS) and resp.vas.mode == "block"
    sent = [json.loads(c.request.content) for c in route.calls]
    assert len(sent) == 6 and resp.vas.api_calls == 6
    assert sent[0]["messages"] == [{"role": "system", "content": "Be brief."}, *MESSAGES]
    # Every call's prompt and completion tokens, summed (mistral_reply bills 16 + 3 i, then 3).
    assert resp.usage.input_tokens == sum(16 + 3 * i for i in (0, 0, 1, 1, 2, 2))
    assert resp.usage.output_tokens == 18 and resp.usage.total_tokens == resp.usage.input_tokens + 18
    assert resp.usage.input_tokens == resp.vas.usage.prompt_tokens and resp.instructions == "Be brief."


@respx.mock(base_url=OPENAI)
def test_a_length_finish_is_an_incomplete_response(respx_mock):
    body = chat_body(["Cut sh"])
    body["choices"][0]["finish_reason"] = "length"
    respx_mock.post("/chat/completions").respond(200, json=body)
    resp = vas_api.wrap(sdk()).responses.create(model="gpt-4o-mini", input="Hi", max_output_tokens=2)
    assert resp.status == "incomplete" and resp.incomplete_details.reason == "max_output_tokens"
    assert resp.output_text == "Cut sh"


@respx.mock(base_url=OPENAI)
async def test_async_client(respx_mock):
    route = respx_mock.post("/chat/completions").respond(200, json=chat_body(POOL))
    client = vas_api.wrap(sdk(is_async=True), value_model=LikesGreat(), beta=2.0)
    resp = await client.responses.create(model="gpt-4o-mini", input=MESSAGES, instructions="Be kind.",
                                         max_output_tokens=16, seed=3)
    assert isinstance(resp, Response) and resp.output_text in POOL and resp.vas.mode == "rerank"
    assert route.call_count == 1 and json.loads(route.calls.last.request.content)["messages"][0]["role"] == "system"


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"stream": True}, "stream"),
    ({"tools": [{"type": "web_search"}]}, "tools"),
    ({"previous_response_id": "resp_1"}, "previous_response_id"),
    ({"reasoning": {"effort": "low"}}, "reasoning"),
    ({"n": 2}, "n cannot"),
    ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "https://x.test/a.png"}]}]},
     "input_image"),
    ({"input": [{"type": "function_call_output", "call_id": "c", "output": "{}"}]}, "function_call_output"),
    ({"input": ""}, "empty"),
    ({"input": [{"role": "tool", "content": "x"}]}, "role 'tool'"),
])
@respx.mock(base_url=OPENAI, assert_all_called=False)
def test_refused_before_any_call(respx_mock, kwargs, match):
    route = respx_mock.post("/chat/completions").respond(200, json=chat_body(POOL))
    client = vas_api.wrap(sdk())
    with pytest.raises(ConfigError, match=match):
        client.responses.create(**{"model": "gpt-4o-mini", "input": "Hi", **kwargs})
    assert route.call_count == 0


async def test_async_refuses_before_any_call():
    client = vas_api.wrap(sdk(is_async=True))
    with respx.mock(base_url=OPENAI, assert_all_called=False) as mock:
        route = mock.post("/chat/completions").respond(200, json=chat_body(POOL))
        with pytest.raises(ConfigError, match="stream"):
            await client.responses.create(model="gpt-4o-mini", input="Hi", stream=True)
        assert route.call_count == 0


def test_not_given_and_false_are_not_refused():
    with respx.mock(base_url=OPENAI) as mock:
        mock.post("/chat/completions").respond(200, json=chat_body(["Fine."]))
        resp = vas_api.wrap(sdk()).responses.create(model="gpt-4o-mini", input="Hi", stream=False,
                                                    tools=openai.NOT_GIVEN, instructions=openai.NOT_GIVEN)
    assert resp.output_text == "Fine." and resp.instructions is None


def test_with_options_gives_the_new_client_its_own_responses():
    client = vas_api.wrap(sdk())
    other = client.with_options(beta=0.0)
    assert other.responses._owner is other and client.responses._owner is client
