"""`vas demo`: the README's first command (base vs VAS on the embedded local model)."""

from __future__ import annotations

from typing import Annotated

import typer

from ..cli import app


@app.command("demo")
def demo(
    beta: Annotated[float, typer.Option(help="Strength of the value model.")] = 4.0,
    max_tokens: Annotated[int, typer.Option()] = 48,
    seed: Annotated[int, typer.Option()] = 0,
) -> None:
    """Base model vs VAS side by side on the embedded SmolLM2 model, with rewards, calls and time.
    The first run trains a small sentiment value model (a few minutes) and caches it."""
    from ..demo import run_demo

    run_demo(beta=beta, max_tokens=max_tokens, seed=seed)
