"""`vas serve`: an OpenAI-compatible VAS proxy over HTTP (vas_api.serve)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from ..cli import app
from ..errors import ConfigError


@app.command("serve")
def serve(
    upstream: Annotated[str | None, typer.Option(help="OpenAI-compatible base URL of the base model; default: start the embedded local model.")] = None,
    model: Annotated[str | None, typer.Option(help="The base model's id at the upstream (required with --upstream).")] = None,
    value: Annotated[list[str] | None, typer.Option("--value", "-v", help="NAME=CKPT or NAME=CKPT:BETA (default beta, else 0); CKPT a checkpoint dir or reward:SPEC. Repeat for more.")] = None,
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port (0: a free one, printed at start).")] = 8000,
    api_key: Annotated[str | None, typer.Option(help="The proxy's own key clients must send (default: $VAS_SERVE_API_KEY; none: no key asked).", envvar="VAS_SERVE_API_KEY", show_envvar=True)] = None,
    keys_file: Annotated[Path | None, typer.Option(help='JSON {"KEY": {"max_tokens": N, "max_usd": X}} for many proxy keys with their own budgets.')] = None,
    key_max_tokens: Annotated[int | None, typer.Option(help="Billed-token budget of --api-key (or of all requests when no key is set).")] = None,
    key_max_usd: Annotated[float | None, typer.Option(help="Money budget of --api-key (or of all requests when no key is set).")] = None,
    upstream_key_env: Annotated[str, typer.Option(help="Environment variable holding the upstream's API key (never sent to clients or logged).")] = "OPENAI_API_KEY",
    chat_template: Annotated[str | None, typer.Option(help="How chat messages become the upstream's prompt: a .gguf, a Jinja file or string, or a tokenizer name.")] = None,
    max_concurrency: Annotated[int, typer.Option(help="Requests generating at once; more wait.")] = 8,
    queue_timeout: Annotated[float, typer.Option(help="Seconds a request waits for a slot before a 429.")] = 30.0,
    max_tokens_limit: Annotated[int, typer.Option(help="The most tokens one request may ask for.")] = 1024,
) -> None:
    """Serve /v1/chat/completions, /v1/completions and /v1/models with VAS (OpenAI SDKs pass
    the VAS options with extra_body={"vas": {...}})."""
    from ..serve import KeySpec, ServeConfig, create_app, load_keys_file, parse_value_spec

    values = [parse_value_spec(v) for v in value or []]  # bad specs fail before anything starts
    keys = load_keys_file(keys_file) if keys_file else []
    if api_key:
        keys.append(KeySpec(api_key, key_max_tokens, key_max_usd))
    elif keys_file and (key_max_tokens is not None or key_max_usd is not None):
        raise ConfigError("--key-max-tokens / --key-max-usd apply to --api-key; give budgets in --keys-file.")
    if host not in ("127.0.0.1", "localhost", "::1") and not keys:
        raise ConfigError(f"--host {host} serves beyond this machine: set --api-key (or $VAS_SERVE_API_KEY) too.")
    config = ServeConfig(
        upstream=upstream, model=model, values=values, keys=keys,
        anonymous_max_tokens=None if keys else key_max_tokens,
        anonymous_max_usd=None if keys else key_max_usd,
        upstream_key_env=upstream_key_env, chat_template=chat_template,
        max_concurrency=max_concurrency, queue_timeout_s=queue_timeout, max_tokens_limit=max_tokens_limit,
    )
    if upstream and not os.environ.get(upstream_key_env):
        typer.secho(f"note: ${upstream_key_env} is not set; the upstream gets a dummy key.", err=True)
    import uvicorn

    web = create_app(config)
    uvicorn.run(web, host=host, port=port, log_level="info")
