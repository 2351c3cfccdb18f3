"""Rerank and block mode end to end against the real local server (llama-cpp-python with
SmolLM2-135M-Instruct): its chat endpoint profiled as "no continuation" for rerank (and the same
through /v1/completions with the client-rendered prompt, the route the modes benchmark takes), and
its logprobs switched off for block, with the free prefix-reward value function (VADER).
"""

from __future__ import annotations

from dataclasses import replace

import pytest

import vas_api
from vas_api.errors import CapabilityError

pytestmark = pytest.mark.integration

MESSAGES = [{"role": "user", "content": "Write one sentence about the sea."}]


@pytest.fixture(scope="module")
def vader_value():
    from estimators.baselines import PrefixRewardValue

    return PrefixRewardValue("vader")


def _client(local_server, openai_client, profile, value):
    return vas_api.wrap(openai_client, value_model=value, beta=4.0, profile=profile,
                        chat_template=str(local_server.gguf_path))


def test_rerank_on_the_local_chat_endpoint(local_server, openai_client, vader_value):
    profile = replace(local_server.profile, name="local chat (no continuation)", continuation="none")
    client = _client(local_server, openai_client, profile, vader_value)
    resp = client.chat.completions.create(model=local_server.model, messages=MESSAGES, max_tokens=8,
                                          rerank_n=3, seed=11)
    report = resp.vas
    assert report.mode == "rerank" and "cannot continue" in report.mode_reason
    assert report.pool_size == 3 and report.api_calls == 3 and len(report.ess) == 1
    assert resp.choices[0].message.content == report.traces[0][0].text


def test_rerank_through_completions(local_server, openai_client, vader_value):
    profile = replace(local_server.profile, name="local (no continuation)", continuation="none",
                      completions=True)
    client = _client(local_server, openai_client, profile, vader_value)
    prompt = client.provider(local_server.model).prompt_text(MESSAGES)
    resp = client.completions.create(model=local_server.model, prompt=prompt, max_tokens=8, rerank_n=3, seed=11)
    report = resp.vas
    assert report.mode == "rerank" and report.pool_size == 3 and len(report.ess) == 1
    assert report.api_calls == 3  # llama-cpp-python ignores n=: one call per response
    assert 0 < report.usage.completion_tokens <= 3 * 8 and report.usage.prompt_tokens > 0
    (step,) = report.traces[0]
    assert step.text == resp.choices[0].text and step.source == "reranked"
    with pytest.raises(CapabilityError, match="supports: rerank"):
        client.completions.create(model=local_server.model, prompt=prompt, mode="block")


def test_block_on_the_local_server_without_logprobs(local_server, openai_client, vader_value):
    profile = replace(local_server.profile, name="local, logprobs off", logprob_shape="none")
    client = _client(local_server, openai_client, profile, vader_value)
    resp = client.chat.completions.create(model=local_server.model, messages=MESSAGES, max_tokens=12,
                                          block_len=4, block_n=2, seed=5)
    report = resp.vas
    assert report.mode == "block" and report.block_len == 4 and 1 <= report.blocks <= 3
    assert report.api_calls == 2 * report.blocks  # two blocks a step, one call each
    assert resp.choices[0].message.content == "".join(s.text for s in report.traces[0])
    assert report.usage.completion_tokens <= 2 * 12
    assert resp.choices[0].finish_reason in ("stop", "length")
