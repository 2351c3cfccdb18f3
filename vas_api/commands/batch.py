"""`vas batch IN.jsonl -o OUT.jsonl`: a cost-capped, resumable batch job (vas_api.batch)."""

from __future__ import annotations

import json
from contextlib import ExitStack
from pathlib import Path
from typing import Annotated

import typer

from ..cli import app
from ..errors import ConfigError


@app.command("batch")
def batch(
    input_path: Annotated[Path, typer.Argument(help="JSONL input: {id, prompt | messages, ...options} a line.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="JSONL output (appended; a rerun resumes it).")],
    base_url: Annotated[str | None, typer.Option(help="OpenAI-compatible base URL; default: start the embedded local server.")] = None,
    model: Annotated[str | None, typer.Option(help="Base model for items that name none.")] = None,
    api_key_env: Annotated[str, typer.Option(help="Environment variable that holds the API key (never printed).")] = "OPENAI_API_KEY",
    chat_template: Annotated[str | None, typer.Option(help="Chat template for raw-completion servers (a .gguf path, a tokenizer name, or Jinja).")] = None,
    value: Annotated[list[str] | None, typer.Option("--value", "-v", help="Value model: a checkpoint dir, or reward:SPEC. Repeat to compose.")] = None,
    beta: Annotated[list[float] | None, typer.Option("--beta", "-b", help="One beta, or one per --value.")] = None,
    mode: Annotated[str, typer.Option(help="auto, speculative or token.")] = "auto",
    k: Annotated[int, typer.Option(help="Candidates per position.")] = 20,
    max_tokens: Annotated[int, typer.Option(help="Default max_tokens of an item.")] = 48,
    concurrency: Annotated[int, typer.Option("--concurrency", "-c", help="Items in flight at once.")] = 8,
    max_usd: Annotated[float | None, typer.Option(help="Cap on the whole job's spend (USD).")] = None,
    max_total_tokens: Annotated[int | None, typer.Option(help="Cap on the whole job's billed tokens (prompt + completion).")] = None,
    item_max_usd: Annotated[float | None, typer.Option(help="Cap on each item's spend (USD).")] = None,
    item_max_tokens: Annotated[int | None, typer.Option(help="Cap on each item's billed tokens.")] = None,
    price: Annotated[list[str] | None, typer.Option(help="MODEL=INPUT,CACHED,OUTPUT in USD per million tokens; repeat.")] = None,
    progress: Annotated[bool, typer.Option(help="Live progress bar on stderr.")] = True,
    summary_json: Annotated[Path | None, typer.Option(help="Also write the summary as JSON here.")] = None,
) -> None:
    """Run every item of IN.jsonl through VAS into OUT.jsonl, under hard caps; rerun to resume."""
    import vas_api
    from vas_api.batch import run_batch
    from vas_api.pricing import parse_price

    from .generate import open_client, value_functions

    prices = dict(parse_price(p) for p in price or [])
    values = value_functions(value or [])
    # No --value: the base model (beta 0); with value models, beta 1 unless given.
    betas = list(beta or ([1.0] if values else [0.0]))
    with ExitStack() as stack:
        client, local_model, options = open_client(stack, base_url, api_key_env, is_async=True)
        if chat_template:
            options["chat_template"] = chat_template
        model = model or local_model
        if not model:
            raise ConfigError("--model is required with --base-url (or give each item a model).")
        vas = vas_api.wrap(client, prices=prices or None, **options)
        summary = run_batch(
            vas, input_path, output, model=model, concurrency=concurrency, max_usd=max_usd,
            max_total_tokens=max_total_tokens, item_max_usd=item_max_usd, item_max_tokens=item_max_tokens,
            progress=progress, value_model=values or None, beta=betas if len(betas) > 1 else betas[0],
            k=k, mode=mode, max_tokens=max_tokens,
        )
    typer.echo(str(summary))
    if summary_json:
        summary_json.write_text(json.dumps(summary.as_dict(), indent=2))
