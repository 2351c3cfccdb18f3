"""The Anthropic client end to end: the real anthropic SDK against llama.cpp's llama-server, which
serves an Anthropic-compatible /v1/messages with SmolLM2-135M-Instruct.

llama-server honours an assistant prefill but puts the prefill text in front of the
continuation (Anthropic's own API returns only the continuation): the provider must detect the
echo and return the continuation alone. The binary comes from `make llama-server` (its path in
/work/wt/briefs/llama_server_path.txt, or $VAS_LLAMA_SERVER); without it these tests skip.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path

import pytest

anthropic = pytest.importorskip("anthropic")

import vas_api  # noqa: E402
from vas_api.providers import AnthropicProvider  # noqa: E402
from vas_api.providers.anthropic import _LEARNED, forget_learned  # noqa: E402
from vas_api.types import Prefix  # noqa: E402

pytestmark = pytest.mark.integration
PATH_FILE = Path("/work/wt/briefs/llama_server_path.txt")
CHAT = [{"role": "user", "content": "Write one sentence about a hotel you liked."}]


def _binary() -> Path | None:
    text = os.environ.get("VAS_LLAMA_SERVER") or (PATH_FILE.read_text().strip() if PATH_FILE.exists() else "")
    path = Path(text) if text else None
    return path if path is not None and path.is_file() else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def messages_server(tmp_path_factory):
    """llama-server on SmolLM2 (one thread), its base URL for the anthropic SDK."""
    binary = _binary()
    if binary is None:
        pytest.skip("llama-server is not built (make llama-server writes its path to " f"{PATH_FILE})")
    from vas_api.local import find_smollm2_gguf

    port = _free_port()
    log = (tmp_path_factory.mktemp("llama-server") / "server.log").open("wb")
    env = {**os.environ, "LD_LIBRARY_PATH": f"{binary.parent}:{os.environ.get('LD_LIBRARY_PATH', '')}"}
    proc = subprocess.Popen([str(binary), "-m", str(find_smollm2_gguf()), "--host", "127.0.0.1",
                             "--port", str(port), "-t", "1", "-c", "2048"], stdout=log, stderr=log, env=env)
    base = f"http://127.0.0.1:{port}"
    import httpx

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"llama-server exited with {proc.returncode}; see {log.name}")
        try:
            if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    else:
        proc.kill()
        pytest.fail("llama-server did not become healthy in 120 s")
    yield base
    proc.terminate()
    proc.wait(timeout=10)
    log.close()


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
    pytest.importorskip("vas_api.sampler.block")  # the block sampler comes with the modes work
    from estimators.baselines import PrefixRewardValue

    wrapped = vas_api.wrap(client, value_model=PrefixRewardValue("vader"), beta=4.0)
    msg = wrapped.messages.create(model="smollm2", max_tokens=24, messages=CHAT, seed=1)
    assert isinstance(msg, anthropic.types.Message) and msg.vas.mode == "block"
    assert msg.content[0].text.strip() and msg.vas.api_calls > 1
    assert msg.usage.output_tokens > 0
    assert "<|im_start|>" not in msg.content[0].text
