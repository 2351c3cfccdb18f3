"""`vas generate --base-url` with chat messages (--chat-template, or the server's own template
from llama-server's /props), and `LocalServer.wrap`, the public way to a client for the
embedded server."""

from __future__ import annotations

import asyncio

import httpx
import pytest
import respx
from typer.testing import CliRunner

import vas_api
from vas_api.cli import _register, app
from vas_api.commands.generate import chat_template_of, server_chat_template
from vas_api.errors import ConfigError

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
MSGS = [{"role": "user", "content": "hi"}]


def _generate(*args):
    _register()
    return CliRunner().invoke(app, ["generate", *args])


@respx.mock
def test_server_chat_template_comes_from_llama_server_props():
    respx.get("http://mock.test/props").respond(200, json={"chat_template": CHATML, "bos_token": "<s>"})
    template = server_chat_template("http://mock.test/v1")
    assert template.render(MSGS) == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert template.bos_token == "<s>"


@respx.mock
def test_no_template_when_the_server_publishes_none():
    respx.get("http://none.test/props").respond(404)
    respx.get("http://down.test/props").mock(side_effect=httpx.ConnectError("refused"))
    respx.get("http://odd.test/props").respond(200, text="not json")
    assert server_chat_template("http://none.test/v1") is None
    assert server_chat_template("http://down.test/v1/") is None
    assert server_chat_template("http://odd.test/v1") is None


def test_chat_template_from_a_jinja_file(tmp_path):
    path = tmp_path / "chatml.jinja"
    path.write_text(CHATML)
    assert chat_template_of(str(path)).render(MSGS).endswith("<|im_start|>assistant\n")
    (tmp_path / "empty.txt").write_text("plain text")
    with pytest.raises(ConfigError, match="holds no Jinja template"):
        chat_template_of(str(tmp_path / "empty.txt"))


@pytest.mark.integration
def test_generate_sends_chat_to_a_base_url_with_a_chat_template(local_server):
    args = ["--base-url", local_server.base_url, "--model", local_server.model, "--message", "Say hello.",
            "--value", "reward:vader", "--beta", "2", "--max-tokens", "4", "--seed", "1", "--no-trace"]
    result = _generate(*args, "--chat-template", str(local_server.gguf_path))
    assert result.exit_code == 0, result.output
    words = " ".join(result.output.split())  # the console wraps long lines at its width
    assert "VASReport(" in words and "API calls" in words

    streamed = _generate(*args, "--chat-template", str(local_server.gguf_path), "--stream")
    assert streamed.exit_code == 0, streamed.output
    assert "VASReport(" in streamed.output


@pytest.mark.integration
def test_generate_without_a_template_says_to_pass_one(local_server):
    # llama-cpp-python's server publishes no template (no /props): the command says what to pass.
    result = _generate("--base-url", local_server.base_url, "--model", local_server.model,
                       "--message", "Say hello.", "--max-tokens", "2")
    assert isinstance(result.exception, ConfigError) and "--chat-template" in str(result.exception)


@pytest.mark.integration
def test_local_server_wrap_gives_a_working_client(local_server):
    client = local_server.wrap(k=10, client_options={"max_retries": 0})
    assert isinstance(client, vas_api.VASClient) and client.client.max_retries == 0
    resp = client.chat.completions.create(model=local_server.model, messages=MSGS, max_tokens=3, seed=0)
    assert resp.vas.tokens >= 1 and resp.usage.prompt_tokens > 0
    aclient = local_server.wrap(asynchronous=True)
    assert isinstance(aclient, vas_api.AsyncVASClient)
    asyncio.run(aclient.client.close())
