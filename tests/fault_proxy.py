"""A loopback HTTP proxy that injects faults between an SDK client and a real server.

    with FaultProxy(local_server.base_url) as proxy:
        proxy.schedule("500", "truncated")          # the next two generation calls fail so
        client = openai.OpenAI(base_url=proxy.base_url, api_key="sk-test")
        ...
        proxy.records                                # what every request got, with raw usage

Only generation calls (``/completions``, ``/chat/completions``) are faulted; ``/models`` and
the rest pass through. Faults come from the schedule (in order), or at random with
``rate`` (seeded) for soak runs. Every forwarded upstream answer is recorded with the usage
the upstream billed, and whether the client received it intact (so a test can recompute the
billed tokens from raw usage and compare them with what the library reported).

Faults:
    ok            no fault (a placeholder in a schedule)
    429           status 429, no Retry-After
    429-retry     status 429 with ``Retry-After: 1``
    500, 502, 503 that status
    reset         the connection is reset (TCP RST) after the request is read, no response
    stall         nothing is sent for ``stall_s`` seconds (past the client's timeout), then
                  the connection is closed
    truncated     the upstream's 200 body cut in half (a valid Content-Length for the cut)
    no-logprobs   the upstream's body with every choice's ``logprobs`` set to null
    few           the upstream's body with each position's top logprobs cut to ``few_k``
    short-draft   the upstream's body cut to its first generated token (a draft shorter than
                  asked, finish_reason "length"; a one-token answer is unchanged)
"""

from __future__ import annotations

import json
import random
import socket
import struct
import threading
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx

FAULTS = ("429", "429-retry", "500", "502", "503", "reset", "stall", "truncated", "no-logprobs", "few",
          "short-draft")
BODY_FAULTS = frozenset({"truncated", "no-logprobs", "few", "short-draft"})  # the upstream is called (billed)
_GENERATION_PATHS = ("/completions", "/chat/completions")


@dataclass
class Record:
    """One request through the proxy.

    Attributes:
        path: the request path.
        fault: the fault applied, or None.
        status: the status the client got (None: reset or stall).
        usage: the upstream's usage object when the upstream was called, else None.
        intact: the client was sent the upstream's body unchanged.
        delivered: the answer was written to the client (False when the client had already
            gone, e.g. after its timeout: the upstream billed a call the client never saw).
    """

    path: str
    fault: str | None
    status: int | None
    usage: dict[str, Any] | None = None
    intact: bool = False
    delivered: bool = False


@dataclass
class FaultProxy:
    """The proxy (a ThreadingHTTPServer on 127.0.0.1, one thread per connection).

    Args:
        upstream: the real server's base URL (``http://127.0.0.1:PORT/v1``).
        rate: probability that a generation call gets a random fault (0: schedule only).
        seed: seed of the random faults.
        faults: the faults drawn from at random.
        stall_s: how long a stall lasts.
        few_k: top logprobs kept by the "few" fault.
    """

    upstream: str
    rate: float = 0.0
    seed: int = 0
    faults: tuple[str, ...] = FAULTS
    stall_s: float = 4.0
    few_k: int = 3
    records: list[Record] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._queue: deque[str] = deque()
        self._lock = threading.Lock()
        self._rng = random.Random(self.seed)
        self._stop = threading.Event()
        # a fresh upstream connection per request: a kept-alive one the server has closed
        # would look like an injected fault
        self._http = httpx.Client(timeout=120.0, limits=httpx.Limits(max_keepalive_connections=0))
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._upstream_root = self.upstream.rstrip("/").removesuffix("/v1")

    # -- control ------------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        assert self._server is not None, "start() the proxy first"
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def schedule(self, *faults: str) -> None:
        """Apply these faults to the next generation calls, in order."""
        unknown = set(faults) - set(FAULTS) - {"ok"}
        assert not unknown, f"unknown faults {unknown}"
        with self._lock:
            self._queue.extend(faults)

    def clear(self) -> None:
        """Drop the faults not yet applied."""
        with self._lock:
            self._queue.clear()

    def pending(self) -> int:
        """Scheduled faults not yet applied."""
        with self._lock:
            return len(self._queue)

    def start(self) -> FaultProxy:
        proxy = self

        class Handler(_Handler):
            owner = proxy

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        self._http.close()

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- internals ------------------------------------------------------------------------
    def _next_fault(self, path: str) -> str | None:
        if not path.endswith(_GENERATION_PATHS):
            return None
        with self._lock:
            if self._queue:
                fault = self._queue.popleft()
                return None if fault == "ok" else fault
            if self.rate and self._rng.random() < self.rate:
                return self._rng.choice(self.faults)
        return None

    def _record(self, record: Record) -> None:
        with self._lock:
            self.records.append(record)


class _Handler(BaseHTTPRequestHandler):
    owner: FaultProxy
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def do_GET(self) -> None:  # noqa: N802
        self._handle(b"")

    def do_POST(self) -> None:  # noqa: N802
        length = int(self.headers.get("Content-Length") or 0)
        self._handle(self.rfile.read(length))

    def _handle(self, body: bytes) -> None:
        owner = self.owner
        path = self.path.split("?")[0]
        fault = owner._next_fault(path)
        if fault == "reset":
            owner._record(Record(path, fault, None))
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.close_connection = True
            self.connection.close()
            return
        if fault == "stall":
            owner._record(Record(path, fault, None))
            owner._stop.wait(owner.stall_s)
            self.close_connection = True
            return
        if fault in ("429", "429-retry", "500", "502", "503"):
            status = int(fault[:3])
            headers = {"Retry-After": "1"} if fault == "429-retry" else {}
            message = {"error": {"message": f"injected {fault}", "type": "injected", "code": status}}
            record = Record(path, fault, status)
            record.delivered = self._send(status, json.dumps(message).encode(), headers)
            owner._record(record)
            return
        headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length", "connection", "accept-encoding")}
        try:
            upstream = owner._http.request(self.command, owner._upstream_root + self.path, content=body, headers=headers)
        except httpx.HTTPError as exc:  # the real server failed: say so, as a gateway would
            record = Record(path, fault, 502)
            record.delivered = self._send(502, json.dumps({"error": {"message": f"upstream: {exc}"}}).encode(), {})
            owner._record(record)
            return
        data = upstream.content
        usage = _usage_of(data)
        intact = True
        if upstream.status_code == 200 and fault in BODY_FAULTS:
            data, intact = _spoil(data, fault, owner.few_k), False
        record = Record(path, fault, upstream.status_code, usage, intact)
        record.delivered = self._send(
            upstream.status_code, data, {"Content-Type": upstream.headers.get("content-type", "application/json")}
        )
        owner._record(record)

    def _send(self, status: int, data: bytes, headers: dict[str, str]) -> bool:
        """Write one answer; False when the client has gone."""
        try:
            self.send_response(status)
            for k, v in headers.items():
                self.send_header(k, v)
            if "Content-Type" not in headers:
                self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            self.wfile.flush()
        except OSError:  # BrokenPipe / ConnectionReset: the client timed out or closed
            self.close_connection = True
            return False
        return True


def _usage_of(data: bytes) -> dict[str, Any] | None:
    try:
        usage = json.loads(data).get("usage")
    except (ValueError, AttributeError):
        return None
    return usage if isinstance(usage, dict) else None


def _spoil(data: bytes, fault: str, few_k: int) -> bytes:
    if fault == "truncated":
        return data[: len(data) // 2]
    body = json.loads(data)
    for choice in body.get("choices", []):
        if fault == "short-draft":
            lp = choice.get("logprobs") or {}
            if isinstance(lp.get("tokens"), list) and len(lp["tokens"]) > 1:
                for name in ("tokens", "token_logprobs", "top_logprobs", "text_offset"):
                    if isinstance(lp.get(name), list):
                        lp[name] = lp[name][:1]
                choice["text"], choice["finish_reason"] = lp["tokens"][0], "length"
            continue
        if fault == "no-logprobs":
            choice["logprobs"] = None
            continue
        lp = choice.get("logprobs") or {}
        if isinstance(lp.get("top_logprobs"), list):  # legacy shape: dicts keyed by token
            lp["top_logprobs"] = [
                dict(sorted(d.items(), key=lambda kv: -kv[1])[:few_k]) if isinstance(d, dict) else d
                for d in lp["top_logprobs"]
            ]
        for pos in lp.get("content") or []:  # chat shape
            pos["top_logprobs"] = (pos.get("top_logprobs") or [])[:few_k]
    return json.dumps(body).encode()
