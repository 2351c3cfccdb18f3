"""The Anthropic client end to end: the real anthropic SDK against llama.cpp's llama-server, which
serves an Anthropic-compatible /v1/messages with SmolLM2-135M-Instruct.

llama-server honours an assistant prefill but puts the prefill text in front of the
continuation (Anthropic's own API returns only the continuation): the provider must detect the
echo and return the continuation alone. The server is the session's `llama_server` fixture.
"""

from __future__ import annotations

import pytest

anthropic = pytest.importorskip("anthropic")

import vas_api  # noqa: E402
from vas_api.providers import AnthropicProvider  # noqa: E402
from vas_api.providers.anthropic import _LEARNED, forget_learned  # noqa: E402
from vas_api.types import Prefix  # noqa: E402

pytestmark = pytest.mark.integration
CHAT = [{"role": "user", "content": "Write one sentence about a hotel you liked."}]


@pytest.fixture(scope="module")
def messages_server(llama_server):
    """The root URL of the session's llama-server (`llama_server` in conftest.py: a missing
    binary is built, never skipped), whose /v1/messages the anthropic SDK talks to."""
    return llama_server.base_url[: -len("/v1")]


@pytest.fixture
def client(messages_server):
    forget_learned()
    c = anthropic.Anthropic(base_url=messages_server, api_key="placeholder", max_retries=0, timeout=120)
    yield c
    c.close()


def test_plain_messages_create_through_the_sdk(client):
    wrapped = vas_api.wrap(client)
    msg = wrapped.messages.create(model="smollm2", max_tokens=16, messages=CHAT)
    assert isinstance(msg, anthropic.types.Message)
    assert msg.content[0].text.strip()
    assert msg.usage.input_tokens > 0 and 0 < msg.usage.output_tokens <= 16
    assert msg.vas.api_calls == 1


def test_the_echoed_prefill_is_detected_and_stripped(client):
    prefill = "The hotel I liked best was"
    raw = client.messages.create(
        model="smollm2", max_tokens=8, messages=[*CHAT, {"role": "assistant", "content": prefill}])
    raw_text = "".join(b.text for b in raw.content if b.type == "text")
    assert raw_text.startswith(prefill)  # what llama-server does (DESIGN.md section 9)
    provider = AnthropicProvider(client, "smollm2")
    samples = provider.sample(Prefix(CHAT, prefill + " "), n=3, max_tokens=8)
    assert _LEARNED[(provider._core.base_url, "smollm2")]["echoes_prefill"] is True
    for c in samples.completions:
        assert not c.text.startswith(prefill)  # the continuation alone, as Anthropic returns it
    assert samples.usage.calls == 3


def test_block_style_continuation_grows_the_response(client):
    """What block mode does (the block sampler itself lands with the modes work): continue the
    response from a prefill, block after block, through the provider alone."""
    provider = AnthropicProvider(client, "smollm2")
    response = ""
    for _ in range(3):
        block = provider.sample(Prefix(CHAT, response), n=2, max_tokens=6).completions[0]
        response += block.text
        if block.finish_reason == "stop":
            break
    assert response.strip()
    assert "<|im_start|>" not in response and "<|im_end|>" not in response


def test_block_mode_end_to_end_through_the_anthropic_sdk(client):
    """Steered messages.create on llama-server: auto mode picks block (prefill, no logprobs)."""
    from estimators.baselines import PrefixRewardValue

    wrapped = vas_api.wrap(client, value_model=PrefixRewardValue("vader"), beta=4.0)
    msg = wrapped.messages.create(model="smollm2", max_tokens=24, messages=CHAT, seed=1)
    assert isinstance(msg, anthropic.types.Message) and msg.vas.mode == "block"
    assert msg.content[0].text.strip() and msg.vas.api_calls > 1
    assert msg.usage.output_tokens > 0
    assert "<|im_start|>" not in msg.content[0].text
