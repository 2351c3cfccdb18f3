"""`vas generate`: one VAS generation from the command line, printing the text and report."""

from __future__ import annotations

import json
import os
from contextlib import ExitStack
from pathlib import Path
from typing import Annotated

import typer

from ..cli import app
from ..errors import ConfigError


def value_functions(specs: list[str]) -> list:
    """CLI value specs: a checkpoint directory, or `reward:SPEC` for the prefix-reward
    baseline (the reward applied to the response so far, e.g. `reward:vader`)."""
    out = []
    for spec in specs:
        if spec.startswith("reward:"):
            from estimators.baselines import PrefixRewardValue

            out.append(PrefixRewardValue(spec.removeprefix("reward:")))
        else:
            out.append(spec)  # a path: the client loads it (and says so if it is missing)
    return out


def local_options(server) -> dict:
    """wrap() options for the embedded server: its known profile and the GGUF's chat template."""
    from ..local import find_smollm2_gguf

    return {"profile": server.profile, "chat_template": str(server.gguf_path or find_smollm2_gguf())}


def open_client(stack: ExitStack, base_url: str | None, api_key_env: str, is_async: bool = False):
    """(openai client, model or None, wrap options) for --base-url, or for the embedded local
    server when no base URL is given (started inside `stack`, stopped when it closes)."""
    if not base_url:
        from ..local import LocalServer

        server = stack.enter_context(LocalServer())
        client = server.async_client() if is_async else server.client()
        return client, server.model, local_options(server)
    import openai

    key = os.environ.get(api_key_env) or "not-needed"  # local servers accept any key
    cls = openai.AsyncOpenAI if is_async else openai.OpenAI
    return cls(base_url=base_url, api_key=key), None, {}


@app.command("generate")
def generate(
    prompt: Annotated[str | None, typer.Option("--prompt", "-p", help="A raw completion prompt.")] = None,
    message: Annotated[list[str] | None, typer.Option("--message", "-m", help="A user message (chat); repeat for turns: user, assistant, user, ...")] = None,
    messages_json: Annotated[Path | None, typer.Option("--messages", help="A JSON file with OpenAI-style chat messages.")] = None,
    value: Annotated[list[str] | None, typer.Option("--value", "-v", help="Value model: a checkpoint dir, or reward:SPEC for the prefix-reward baseline. Repeat to compose.")] = None,
    beta: Annotated[list[float] | None, typer.Option("--beta", "-b", help="One beta, or one per --value.")] = None,
    base_url: Annotated[str | None, typer.Option(help="OpenAI-compatible base URL; default: start the embedded local server.")] = None,
    model: Annotated[str | None, typer.Option(help="Base model name at the provider.")] = None,
    api_key_env: Annotated[str, typer.Option(help="Environment variable that holds the API key (never printed).")] = "OPENAI_API_KEY",
    mode: Annotated[str, typer.Option(help="auto, speculative, token, block or rerank.")] = "auto",
    k: Annotated[int | None, typer.Option(help="Candidates per position (default: 20, or the endpoint's cap).")] = None,
    max_tokens: Annotated[int, typer.Option()] = 48,
    temperature: Annotated[float, typer.Option()] = 1.0,
    seed: Annotated[int | None, typer.Option()] = None,
    trace: Annotated[bool, typer.Option(help="Print the per-token trace table.")] = True,
) -> None:
    """Generate one response with VAS and print it with its report."""
    from rich.console import Console

    import vas_api

    chat = None
    if messages_json:
        chat = json.loads(messages_json.read_text())
    elif message:
        chat = [{"role": "user" if i % 2 == 0 else "assistant", "content": m} for i, m in enumerate(message)]
    if (prompt is None) == (chat is None):
        raise ConfigError("give exactly one of --prompt, --message or --messages.")
    values = value_functions(value or [])
    betas = list(beta or [1.0])
    with ExitStack() as stack:
        client, local_model, options = open_client(stack, base_url, api_key_env)
        model = model or local_model
        if not model:
            raise ConfigError("--model is required with --base-url.")
        vas = vas_api.wrap(client, **options)
        opts = dict(value_model=values, beta=betas if len(betas) > 1 else betas[0], k=k, mode=mode,
                    max_tokens=max_tokens, temperature=temperature, seed=seed)
        if chat is None:
            resp = vas.completions.create(model=model, prompt=prompt, **opts)
            text = resp.choices[0].text
        else:
            resp = vas.chat.completions.create(model=model, messages=chat, **opts)
            text = resp.choices[0].message.content
    console = Console()
    console.print(text, markup=False, highlight=False)
    console.print(resp.vas.table() if trace else resp.vas.summary())
