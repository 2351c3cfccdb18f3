"""No API key in anything vas-api writes or prints.

One run with a fake key in the environment (OPENAI_API_KEY), in the client, and inside the base
URL (userinfo and a query value): a probed generation, a failed generation, a collection, a
training run and a batch job; then every file written (profile cache, samples, failed-prompt record,
checkpoints), every repr/str of the results and errors (tracebacks included) and every log
record are searched for the key.
"""

from __future__ import annotations

import logging
import secrets
import traceback
from pathlib import Path

import openai
import pytest

import vas_api
from estimators.baselines import PrefixRewardValue
from estimators.collect import as_prompt, collect
from vas_api.providers import connect

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

KEY = "sk-vas-test-" + secrets.token_hex(12)


def _files(*roots: Path) -> list[Path]:
    return [p for root in roots if root.exists() for p in root.rglob("*") if p.is_file()]


def _keyed_url(base_url: str) -> str:
    # http://127.0.0.1:PORT/v1 -> http://user:KEY@127.0.0.1:PORT/v1 (the SDK appends paths
    # after a query, so a working base URL cannot hold one; the failing client below does)
    scheme, rest = base_url.split("://", 1)
    return f"{scheme}://user:{KEY}@{rest}"


def test_no_key_in_files_reprs_errors_or_logs(local_server, tmp_path, monkeypatch, caplog, one_torch_thread):
    from estimators.train import train
    from tests.test_train import _cfg, tiny_model
    from vas_api.profiles import clear_memory_cache

    cache = tmp_path / "cache"
    monkeypatch.setenv("VAS_API_CACHE_DIR", str(cache))
    clear_memory_cache()  # so the profile is probed (and cached on disk) in this test
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    caplog.set_level(logging.DEBUG)
    texts: list[str] = []

    def look(*objects: object) -> None:
        for o in objects:
            texts.extend([repr(o), str(o)])
            if isinstance(o, BaseException):
                texts.append("".join(traceback.format_exception(o)))

    # 1. a generation, the profile probed through a base URL that holds the key (and cached)
    client = openai.OpenAI(base_url=_keyed_url(local_server.base_url), max_retries=0, timeout=120)
    assert client.api_key == KEY  # taken from the environment, as the SDK does
    vas = vas_api.wrap(client, chat_template=str(local_server.gguf_path))
    resp = vas.chat.completions.create(
        model=local_server.model, messages=[{"role": "user", "content": "Say hi."}], max_tokens=4,
        value_model=PrefixRewardValue("vader"), beta=1.0, k=5, mode="token",
    )
    provider = vas.provider(local_server.model)
    look(resp, resp.vas, resp.vas.summary(), resp.vas._repr_html_(), vas, provider, provider.profile)
    assert list(cache.rglob("*")), "the probe should have cached a profile"

    # 2. a failed generation (nothing listens there), its partial output and its traceback
    dead = openai.OpenAI(base_url=f"http://user:{KEY}@127.0.0.1:9/v1?api-key={KEY}", api_key=KEY,
                         max_retries=0, timeout=5)
    broken = vas_api.wrap(dead, profile=local_server.profile, chat_template=str(local_server.gguf_path))
    with pytest.raises(openai.APIConnectionError) as info:
        broken.completions.create(model=local_server.model, prompt="Hello", max_tokens=3, k=5, beta=0.0)
    look(info.value, info.value.partial, info.value.partial.report)

    # 3. a collection, with a prompt the server refuses (longer than the context)
    samples = tmp_path / "out" / "samples.jsonl"
    samples.parent.mkdir()
    keyed = connect(client, local_server.model, chat_template=str(local_server.gguf_path),
                    profile=local_server.profile)
    summary = collect(keyed, [as_prompt("Write a word."), as_prompt("word " * 3000)], samples,
                      n=2, max_tokens=4, progress=False)
    assert summary.written == 2 and len(summary.failed) == 1
    look(summary, summary.line(), *summary.failed)

    # 4. a training run on those samples (tiny model from a config) and its checkpoint
    ckpt = tmp_path / "ckpt"
    result = train(_cfg(samples, ckpt, reward="vader", batch_size=2, passes=1), model=tiny_model(),
                   progress=False)
    look(result)

    # 5. a batch job through an async client with the key in its base URL, and its summary
    batch_in, batch_out = tmp_path / "batch" / "in.jsonl", tmp_path / "batch" / "out.jsonl"
    batch_in.parent.mkdir()
    batch_in.write_text('{"id": "a", "prompt": "Say hi."}\n{"id": "b", "messages": [{"role": "user", "content": "Hi"}]}\n')
    aclient = openai.AsyncOpenAI(base_url=_keyed_url(local_server.base_url), max_retries=0, timeout=120)
    avas = vas_api.wrap(aclient, profile=local_server.profile, chat_template=str(local_server.gguf_path))
    batch = vas_api.run_batch(avas, batch_in, batch_out, model=local_server.model, max_tokens=4, k=5,
                              beta=0.0, progress=False)
    assert batch.done == 2
    look(batch, avas)

    written = _files(cache, samples.parent, ckpt, batch_in.parent)
    assert any(p.suffix == ".safetensors" for p in written) and samples.exists()
    for path in written:
        assert KEY.encode() not in path.read_bytes(), f"the API key was written to {path}"
    for text in texts:
        assert KEY not in text, f"the API key is printed in: {text[:300]}"
    for record in caplog.records:
        assert KEY not in record.getMessage(), f"the API key was logged by {record.name}"
