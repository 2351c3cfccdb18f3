"""The `vas serve` app: an OpenAI-compatible HTTP front for one VAS client.

    app = create_app(ServeConfig(upstream="http://127.0.0.1:8080/v1", model="m",
                                 values=[ValueSpec("sentiment", "./ckpt", 2.0)]))
    uvicorn.run(app, host="127.0.0.1", port=8000)

One `vas_api.wrap(AsyncOpenAI(...))` client serves every request; value models are loaded
once when the app is built and shared (their scoring batches across requests in the client).
Each request is checked (proxy key, body, value model names) before it takes one of
`max_concurrency` slots; it then calls the client's `create` with the key's `Budget`, which
reserves the worst case of every upstream call before making it, so a key's spend never goes
past its cap however many requests run at once. The upstream key is read from the environment
once and masked in every message and log line the server writes.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from sse_starlette import EventSourceResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..budget import Budget
from ..errors import ConfigError
from ..redact import client_secrets, install_log_redaction, redact_text, redact_urls_in
from ..sampler.settings import MODES
from .config import ServeConfig, ValueSpec
from .errors import APIError, from_exception
from .translate import Named, report_json, request_kwargs, step_json

__all__ = ["create_app", "load_values"]

log = logging.getLogger("vas_api.serve")
STATIC = Path(__file__).with_name("static")
# Loggers whose records could carry a request's text or an upstream's message.
_LOGGERS = ("vas_api", "vas_api.serve", "uvicorn", "uvicorn.error", "uvicorn.access", "httpx",
            "httpcore", "openai", "openai._base_client")


def load_values(specs: list[ValueSpec]) -> dict[str, tuple[Any, float, str]]:
    """Load every value model once: name -> (value function, default beta, description).

    Raises:
        CheckpointError: a checkpoint is missing or invalid; ConfigError: a bad reward spec or
            a source that is not a value function.
    """
    out: dict[str, tuple[Any, float, str]] = {}
    for spec in specs:
        src = spec.source
        if isinstance(src, str) and src.startswith("reward:"):
            from estimators.baselines import PrefixRewardValue

            vf = PrefixRewardValue(src.removeprefix("reward:"))
            desc = spec.description or f"prefix reward {src.removeprefix('reward:')} (no training)"
        elif isinstance(src, str | Path):
            from estimators.baselines import load_value_function

            from ..value_checks import probe_value_model

            vf = load_value_function(Path(src).expanduser())
            probe_value_model(vf, str(src))  # NaN weights load without complaint: refuse them now
            desc = spec.description or _checkpoint_description(vf)
        elif hasattr(src, "score_candidates") and hasattr(src, "values"):
            vf, desc = src, spec.description or type(src).__name__
        else:
            raise ConfigError(f"value model {spec.name!r}: {src!r} is not a checkpoint, reward:SPEC or value function.")
        out[spec.name] = (vf, float(spec.default_beta), desc)
    return out


def _checkpoint_description(vf: Any) -> str:
    """What a checkpoint says it was trained for (its reward), without its path."""
    config = getattr(vf, "config", None)
    meta = getattr(config, "metadata", None) or {}
    reward = meta.get("reward") if isinstance(meta, dict) else None
    return f"value model trained on {reward}" if reward else "value model checkpoint"


class _SecretFilter(logging.Filter):
    """Masks the server's secrets (and credentials in URLs) in every record it sees."""

    def __init__(self, secrets: list[str]) -> None:
        super().__init__()
        self.secrets = secrets

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a broken record is not ours to fix
            return True
        clean = redact_urls_in(redact_text(message, self.secrets))
        if clean != message:
            record.msg, record.args = clean, None
        return True


class _State:
    """Everything the routes share: the client, value models, keys and their budgets, slots."""

    def __init__(self, config: ServeConfig, client: Any, values: dict[str, tuple[Any, float, str]]) -> None:
        self.config = config
        self.client = client
        self.model = config.model
        self.values = values
        self.named = Named({n: (vf, b) for n, (vf, b, _) in values.items()})
        self.budgets: dict[str, Budget] = {
            k.key: Budget(max_tokens=k.max_tokens, max_usd=k.max_usd, name=f"key #{i + 1} budget")
            for i, k in enumerate(config.keys)
        }
        self.key_ids = {k.key: f"key#{i + 1}" for i, k in enumerate(config.keys)}
        self.anonymous = Budget(max_tokens=config.anonymous_max_tokens, max_usd=config.anonymous_max_usd,
                                name="server budget")
        self.secrets = [k.key for k in config.keys]
        upstream_key = os.environ.get(config.upstream_key_env)
        if upstream_key:
            self.secrets.append(upstream_key)
        if client is not None:
            self.secrets += client_secrets(getattr(client, "client", None))
        self.slots = asyncio.Semaphore(config.max_concurrency)
        self.server = None  # the embedded LocalServer, when one runs
        self.filter = _SecretFilter(self.secrets)

    def redact(self, text: str) -> str:
        return redact_urls_in(redact_text(text, self.secrets))

    # -- start and stop ---------------------------------------------------------------------
    async def open(self) -> None:
        """Build the VAS client: over the upstream, or over the embedded model it starts."""
        import openai

        import vas_api

        from ..commands.generate import chat_template_of, local_options, server_chat_template

        cfg = self.config
        if self.client is None and cfg.upstream is None:
            from ..local import LocalServer

            server = LocalServer()
            await asyncio.to_thread(server.start)  # blocking: the child process loads the GGUF
            self.server = server
            options = local_options(server)
            if cfg.chat_template:
                options["chat_template"] = chat_template_of(cfg.chat_template)
            self.model = server.model
            self.client = vas_api.wrap(server.async_client(), prices=cfg.prices, **options)
        elif self.client is None:
            key = os.environ.get(cfg.upstream_key_env) or "not-needed"  # local servers take any key
            if cfg.chat_template:
                template = chat_template_of(cfg.chat_template)
            else:
                template = await asyncio.to_thread(server_chat_template, cfg.upstream)
            options = {"chat_template": template} if template else {}
            if cfg.profile is not None:
                options["profile"] = cfg.profile
            self.client = vas_api.wrap(openai.AsyncOpenAI(base_url=cfg.upstream, api_key=key),
                                       prices=cfg.prices, **options)
        self.secrets += [s for s in client_secrets(getattr(self.client, "client", None)) if s not in self.secrets]
        self.model = self.model or getattr(self.client, "model", None)
        if not self.model:
            raise ConfigError("the served model is unknown: give --model.")

    async def close(self) -> None:
        sdk = getattr(self.client, "client", None)
        if sdk is not None and hasattr(sdk, "close"):
            with contextlib.suppress(Exception):
                await sdk.close()
        if self.server is not None:
            await asyncio.to_thread(self.server.stop)
            self.server = None

    # -- per request ------------------------------------------------------------------------
    def authorize(self, request: Request) -> tuple[str, Budget]:
        """(key id for the log, the key's budget) of a request.

        Raises:
            APIError: 401 when the server has keys and the request brings none of them.
        """
        if not self.config.keys:
            return "anonymous", self.anonymous
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        token = token.strip()
        if scheme.lower() == "bearer" and token:
            for key in self.budgets:  # constant time per key: no timing hint at a key's prefix
                if hmac.compare_digest(key.encode(), token.encode()):
                    return self.key_ids[key], self.budgets[key]
        missing = not token
        raise APIError(
            401,
            "no API key given: send Authorization: Bearer KEY (the proxy's key, not the upstream's)."
            if missing else "incorrect API key provided for this vas serve proxy.",
            "invalid_request_error", None, "invalid_api_key",
        )

    async def take_slot(self) -> None:
        """Wait for one of the generation slots.

        Raises:
            APIError: 429 rate_limit_exceeded when none frees up within queue_timeout_s.
        """
        if not self.slots.locked():
            await self.slots.acquire()  # free: returns without yielding, so nothing can race it
            return
        try:
            await asyncio.wait_for(self.slots.acquire(), self.config.queue_timeout_s or 1e-9)
        except TimeoutError:
            raise APIError(
                429, f"all {self.config.max_concurrency} generation slots stayed busy for "
                f"{self.config.queue_timeout_s:g} s; retry later.",
                "rate_limit_exceeded", None, "rate_limit_exceeded",
            ) from None


def create_app(config: ServeConfig, *, client: Any = None) -> FastAPI:
    """The FastAPI app of `vas serve`.

    Args:
        config: what to serve (see `ServeConfig`).
        client: an `AsyncVASClient` to serve instead of building one from `config.upstream`
            (tests use one over the fake provider); `config.model` names its model.

    Returns:
        The app; run it with uvicorn. The embedded model (no upstream, no client) starts when
        the app starts and stops with it.

    Raises:
        ConfigError, CheckpointError: bad settings or value models (before anything runs).
    """
    if client is not None and not config.model:
        raise ConfigError("config.model is required with a client.")
    values = load_values(config.values)
    state = _State(config, client, values)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        install_log_redaction()
        for name in _LOGGERS:
            logger = logging.getLogger(name)
            if state.filter not in logger.filters:
                logger.addFilter(state.filter)
        await state.open()
        log.info("vas serve: model %s, value models %s, %d key(s), %d slots", state.model,
                 list(values) or "none", len(config.keys), config.max_concurrency)
        try:
            yield
        finally:
            await state.close()
            for name in _LOGGERS:
                logging.getLogger(name).removeFilter(state.filter)

    app = FastAPI(title="vas serve", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.vas = state

    def error_response(exc: BaseException, key_id: str = "-", path: str = "-") -> JSONResponse:
        err = from_exception(exc)
        if err.status >= 500:
            log.warning("%s %s -> %d %s: %s", key_id, path, err.status, type(exc).__name__, state.redact(str(exc)))
        return JSONResponse(err.body(state.redact), status_code=err.status)

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        return error_response(exc, path=request.url.path)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = f"unknown route {request.method} {request.url.path}." if exc.status_code == 404 else str(exc.detail)
        code = "unknown_url" if exc.status_code == 404 else None
        return JSONResponse(APIError(exc.status_code, message, "invalid_request_error", None, code).body(state.redact),
                            status_code=exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(APIError(400, f"invalid request: {exc.errors()}").body(state.redact), status_code=400)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def playground() -> HTMLResponse:
        page = STATIC / "playground.html"
        if page.is_file():
            return HTMLResponse(page.read_text(encoding="utf-8"))
        return HTMLResponse("<!doctype html><title>vas serve</title><p>vas serve is running: "
                            "POST /v1/chat/completions, GET /v1/models, GET /vas/info.</p>")

    @app.get("/static/{name}", include_in_schema=False)
    async def static(name: str):
        from fastapi.responses import FileResponse

        path = STATIC / name
        if "/" in name or name.startswith(".") or not path.is_file():
            raise APIError(404, f"no static file {name!r}.", code="unknown_url")
        return FileResponse(path)

    @app.get("/v1/models")
    async def models(request: Request) -> dict[str, Any]:
        state.authorize(request)
        return {"object": "list", "data": [_model_entry(state.model)]}

    @app.get("/v1/models/{model_id:path}")
    async def model(request: Request, model_id: str) -> dict[str, Any]:
        state.authorize(request)
        if model_id != state.model:
            raise _unknown_model(model_id, state.model)
        return _model_entry(state.model)

    @app.get("/vas/info")
    async def info() -> dict[str, Any]:
        # No key needed: it names what the server offers (no paths, no keys), and the
        # playground reads `auth` to know whether to ask for a key.
        return {
            "model": state.model,
            "value_models": [{"name": n, "default_beta": b, "description": d} for n, (_, b, d) in values.items()],
            "modes": list(MODES),
            "defaults": {"k": config.default_k, "max_tokens": config.default_max_tokens},
            "auth": bool(config.keys),
        }

    @app.get("/vas/usage")
    async def usage(request: Request) -> dict[str, Any]:
        # The caller's own key: what it has spent against its caps (never other keys').
        key_id, budget = state.authorize(request)
        return {"key": key_id, **budget.summary(), "reserved_tokens": budget.reserved_tokens}

    async def generate(request: Request, kind: str):
        start = time.perf_counter()
        path = request.url.path
        key_id, budget = state.authorize(request)
        try:
            body = await request.json()
        except (ValueError, UnicodeDecodeError):
            raise APIError(400, "the request body is not valid JSON.") from None
        kwargs, names = request_kwargs(body, kind, state.named, default_k=config.default_k,
                                       default_max_tokens=config.default_max_tokens,
                                       max_tokens_limit=config.max_tokens_limit)
        model_id = body.get("model")
        if not isinstance(model_id, str) or not model_id:
            raise APIError(400, "'model' is required.", param="model")
        if model_id != state.model:
            raise _unknown_model(model_id, state.model)
        await state.take_slot()
        create = state.client.chat.completions.create if kind == "chat" else state.client.completions.create
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                state.slots.release()

        first = None
        result = None
        try:
            result = await create(model=model_id, budget=budget, **kwargs)
            if kwargs.get("stream"):
                # The first chunk makes the first upstream call: a key with no budget left, or
                # an upstream that is down, is then answered with its status, not a 200 stream.
                first = await anext(result, None)
        except Exception as exc:  # noqa: BLE001 - every failure becomes an OpenAI error body
            release()
            if result is not None and kwargs.get("stream"):
                await result.close()
            response = error_response(exc, key_id, path)
            log.info("%s %s %d %.2fs", key_id, path, response.status_code, time.perf_counter() - start)
            return response
        except BaseException:  # cancelled (client gone, shutdown): the slot must still come back
            release()
            raise
        if not kwargs.get("stream"):
            release()
            out = result.model_dump(mode="json", exclude={"vas"}, warnings=False)
            out["vas"] = report_json(result.vas, names)
            log.info("%s %s 200 %.2fs %d tokens billed", key_id, path, time.perf_counter() - start,
                     result.vas.usage.prompt_tokens + result.vas.usage.completion_tokens)
            return JSONResponse(out)
        return _ReleasingEvents(
            _events(result, first, names, state, key_id, path, start), release, sep="\n", ping=15,
        )

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        return await generate(request, "chat")

    @app.post("/v1/completions")
    async def completions(request: Request):
        return await generate(request, "completion")

    return app


class _ReleasingEvents(EventSourceResponse):
    """An SSE response that gives its generation slot back however it ends (done, error, or
    the client going away before the first event, when the generator never even starts)."""

    def __init__(self, content: Any, release: Any, **kwargs: Any) -> None:
        super().__init__(content, **kwargs)
        self._release = release

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._release()


async def _chunks(first: Any, stream: Any):
    if first is not None:
        yield first
        async for chunk in stream:
            yield chunk


async def _events(stream: Any, first: Any, names: list[str], state: _State, key_id: str, path: str,
                  start: float):
    """The SSE data lines of one streamed request (its first chunk already read): chunk JSON
    with `vas_tokens`, the usage chunk with `vas`, then [DONE]; an error (a budget cap
    mid-stream) as a last error event."""
    sent: dict[int, int] = {}
    try:
        async for chunk in _chunks(first, stream):
            out = chunk.model_dump(mode="json", exclude={"vas"}, exclude_unset=True, warnings=False)
            for choice in chunk.choices:
                i = choice.index
                steps = stream.steps(i)
                new, sent[i] = steps[sent.get(i, 0):], len(steps)
                if new or _has_text(choice):
                    out["vas_tokens"] = [step_json(s, full=False) for s in new]
            report = getattr(chunk, "vas", None)
            if report is not None:
                out["vas"] = report_json(report, names)
            yield json.dumps(out)
        yield "[DONE]"
        log.info("%s %s 200 stream %.2fs", key_id, path, time.perf_counter() - start)
    except Exception as exc:  # noqa: BLE001 - told to the client as the stream's last event
        err = from_exception(exc)
        log.info("%s %s stream ended by %d %s", key_id, path, err.status, err.type)
        yield json.dumps(err.body(state.redact))
    finally:
        await stream.close()


def _has_text(choice: Any) -> bool:
    delta = getattr(choice, "delta", None)
    text = getattr(delta, "content", None) if delta is not None else getattr(choice, "text", None)
    return bool(text)


_STARTED = int(time.time())


def _model_entry(model: str | None) -> dict[str, Any]:
    return {"id": model, "object": "model", "created": _STARTED, "owned_by": "vas-api"}


def _unknown_model(asked: str, served: str | None) -> APIError:
    return APIError(404, f"the model {asked!r} does not exist here; this server serves {served!r}.",
                    "invalid_request_error", "model", "model_not_found")
