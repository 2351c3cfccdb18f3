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


def open_client(
    stack: ExitStack, base_url: str | None, api_key_env: str, is_async: bool = False,
    chat_template: str | None = None,
):
    """(openai client, model or None, wrap options) for --base-url, or for the embedded local
    server when no base URL is given (started inside `stack`, stopped when it closes).

    With --base-url, chat messages are rendered with `chat_template` when given, else with the
    server's own template where it publishes one (llama.cpp's llama-server: GET /props)."""
    if not base_url:
        from ..local import LocalServer

        server = stack.enter_context(LocalServer())
        client = server.async_client() if is_async else server.client()
        options = local_options(server)
        if chat_template:
            options["chat_template"] = chat_template_of(chat_template)
        return client, server.model, options
    import openai

    key = os.environ.get(api_key_env) or "not-needed"  # local servers accept any key
    cls = openai.AsyncOpenAI if is_async else openai.OpenAI
    template = chat_template_of(chat_template) if chat_template else server_chat_template(base_url)
    return cls(base_url=base_url, api_key=key), None, ({"chat_template": template} if template else {})


def chat_template_of(spec: str):
    """--chat-template: a .gguf file, a Jinja file (any other file), a Jinja string, or a
    Hugging Face tokenizer name or directory.

    Raises:
        ConfigError: the template cannot be loaded (the message says which forms work).
    """
    from ..chat_template import load_chat_template

    path = Path(spec).expanduser()
    if path.is_file() and path.suffix.lower() != ".gguf":
        spec = path.read_text(encoding="utf-8")
        if "{%" not in spec and "{{" not in spec:
            raise ConfigError(f"--chat-template {path} holds no Jinja template ({{% or {{{{ not found).")
    try:
        return load_chat_template(spec)
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"--chat-template {spec[:80]!r} could not be loaded ({exc}). Pass a .gguf file, a Jinja file "
            "or string, or a Hugging Face tokenizer name or directory."
        ) from exc


def server_chat_template(base_url: str, timeout: float = 5.0):
    """The chat template a server publishes (llama.cpp's llama-server: GET /props), or None.

    Other servers (vLLM, llama-cpp-python, hosted APIs) publish none; then chat needs
    --chat-template and the client says so when a chat prompt arrives.
    """
    import httpx

    from ..chat_template import load_chat_template

    root = base_url.rstrip("/").removesuffix("/v1")
    try:
        reply = httpx.get(f"{root}/props", timeout=timeout)
        props = reply.json() if reply.status_code == 200 else {}
    except (httpx.HTTPError, ValueError):
        return None
    source = props.get("chat_template") if isinstance(props, dict) else None
    if not isinstance(source, str) or not source:
        return None
    return load_chat_template(
        source, bos_token=str(props.get("bos_token") or ""), eos_token=str(props.get("eos_token") or "")
    )


@app.command("generate")
def generate(
    prompt: Annotated[str | None, typer.Option("--prompt", "-p", help="A raw completion prompt.")] = None,
    message: Annotated[list[str] | None, typer.Option("--message", "-m", help="A user message (chat); repeat for turns: user, assistant, user, ...")] = None,
    messages_json: Annotated[Path | None, typer.Option("--messages", help="A JSON file with OpenAI-style chat messages.")] = None,
    value: Annotated[list[str] | None, typer.Option("--value", "-v", help="Value model: a checkpoint dir, or reward:SPEC for the prefix-reward baseline. Repeat to compose.")] = None,
    beta: Annotated[list[float] | None, typer.Option("--beta", "-b", help="One beta, or one per --value.")] = None,
    base_url: Annotated[str | None, typer.Option(help="OpenAI-compatible base URL; default: start the embedded local server.")] = None,
    chat_template: Annotated[str | None, typer.Option(help="How --base-url renders chat messages for raw completions: a .gguf file, a Jinja file or string, or a Hugging Face tokenizer. Default: the server's own (llama-server /props), if it publishes one.")] = None,
    model: Annotated[str | None, typer.Option(help="Base model name at the provider.")] = None,
    api_key_env: Annotated[str, typer.Option(help="Environment variable that holds the API key (never printed).")] = "OPENAI_API_KEY",
    mode: Annotated[str, typer.Option(help="auto, speculative, token, block or rerank.")] = "auto",
    k: Annotated[int | None, typer.Option(help="Candidates per position (default: 20, or the endpoint's cap).")] = None,
    max_tokens: Annotated[int, typer.Option()] = 48,
    temperature: Annotated[float, typer.Option()] = 1.0,
    seed: Annotated[int | None, typer.Option()] = None,
    trace: Annotated[bool, typer.Option(help="Print the per-token trace table.")] = True,
    stream: Annotated[bool, typer.Option(help="Print the response as it is generated.")] = False,
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
    betas = list(beta or ([1.0] if values else [0.0]))  # no --value: the base model
    console = Console()
    with ExitStack() as stack:
        client, local_model, options = open_client(stack, base_url, api_key_env, chat_template=chat_template)
        model = model or local_model
        if not model:
            raise ConfigError("--model is required with --base-url.")
        if chat is not None and "chat_template" not in options:
            raise ConfigError(
                f"the server at {base_url} publishes no chat template, so chat messages cannot be turned "
                "into the prompt the base model continues: pass --chat-template (the model's .gguf file, "
                "a Jinja file, or its Hugging Face tokenizer name), or use --prompt."
            )
        vas = vas_api.wrap(client, **options)
        opts = dict(value_model=values, beta=betas if len(betas) > 1 else betas[0], k=k, mode=mode,
                    max_tokens=max_tokens, temperature=temperature, seed=seed, stream=stream)
        if chat is None:
            resp = vas.completions.create(model=model, prompt=prompt, **opts)
        else:
            resp = vas.chat.completions.create(model=model, messages=chat, **opts)
        if stream:
            with resp:
                for chunk in resp:
                    for choice in chunk.choices:
                        delta = choice.text if chat is None else choice.delta.content
                        console.print(delta or "", end="", markup=False, highlight=False, soft_wrap=True)
            console.print()
            report = resp.vas
        else:
            report = resp.vas
            text = resp.choices[0].text if chat is None else resp.choices[0].message.content
            console.print(text, markup=False, highlight=False)
    console.print(report.table() if trace else report.summary())
