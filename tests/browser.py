"""Helpers for the real-browser playground test: an ASGI app on a thread, and Debian's chromium.

No browser build can be downloaded here, so playwright drives the system chromium
(`apt-get install chromium`, which `make test` runs when it is missing).
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = Path("/usr/bin/chromium")


@contextlib.contextmanager
def serve_in_thread(app: object) -> Iterator[str]:
    """Run an ASGI app under uvicorn on a thread, on a free 127.0.0.1 port.

    Args:
        app: the ASGI application (a FastAPI app).

    Yields:
        The base URL, e.g. ``http://127.0.0.1:40123``. The socket is bound and listening before
        this yields, so a client may connect at once: the kernel queues the connection until
        uvicorn's loop accepts it (no polling for readiness).
    """
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


class Recorder:
    """ASGI middleware that keeps the request and response bodies of one path, as sent.

    Chromium keeps no body of a streamed (text/event-stream) response for playwright to read,
    so the test reads what the server sent here, on the wire side, without changing it.

    Attributes:
        exchanges: (request body, response body) per finished request, in finishing order.
    """

    def __init__(self, app: object, path: str) -> None:
        self.app, self.path = app, path
        self.exchanges: list[tuple[bytes, bytes]] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] != self.path:
            await self.app(scope, receive, send)
            return
        request, response = bytearray(), bytearray()

        async def recv() -> dict[str, Any]:
            message = await receive()
            if message["type"] == "http.request":
                request.extend(message.get("body", b""))
            return message

        async def snd(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.body":
                response.extend(message.get("body", b""))
            await send(message)

        await self.app(scope, recv, snd)
        self.exchanges.append((bytes(request), bytes(response)))


def chromium_path() -> str:
    """The system chromium, or a failure that says how to get it (tests run for real, no skip).

    Returns:
        The executable's path.
    """
    if CHROMIUM.exists():
        return str(CHROMIUM)
    found = shutil.which("chromium")
    if found:
        return found
    pytest.fail("the playground test needs Debian's chromium: run `make test`, which installs it "
                "(apt-get install -y chromium chromium-driver), or install it yourself")


@contextlib.contextmanager
def launch_browser() -> Iterator[object]:
    """A headless playwright Browser on the system chromium.

    Yields:
        ``playwright.sync_api.Browser``.
    """
    from playwright.sync_api import sync_playwright

    path = chromium_path()
    with sync_playwright() as pw:
        # --no-sandbox: tests may run as root (containers, CI), where chromium's sandbox refuses.
        browser = pw.chromium.launch(executable_path=path, args=["--no-sandbox", "--headless=new"])
        try:
            yield browser
        finally:
            browser.close()
