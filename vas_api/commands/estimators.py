"""`vas collect`, `vas train`, `vas eval-value`: data collection, TD(lambda) training and
held-out evaluation of value models. torch/transformers load inside the commands only."""

from __future__ import annotations

import json
import os
from contextlib import ExitStack
from pathlib import Path
from typing import Annotated, Any

import typer

from ..cli import app
from ..errors import ConfigError


def _provider(
    stack: ExitStack, base_url: str | None, model: str | None, api_key_env: str,
    chat_template: str | None,
) -> Any:
    """A sync provider: --base-url with --model, or the embedded local server."""
    from ..providers import connect

    if base_url is None:
        from ..local import LocalServer

        server = stack.enter_context(LocalServer())
        client = server.client()
        return connect(client, server.model, chat_template=chat_template or str(server.gguf_path),
                       profile=server.profile)
    if not model:
        raise ConfigError("--model is required with --base-url.")
    import openai

    key = os.environ.get(api_key_env) or "not-needed"  # local servers accept any key
    return connect(openai.OpenAI(base_url=base_url, api_key=key), model,
                   chat_template=chat_template)


@app.command("collect")
def collect_command(
    prompts: Annotated[Path, typer.Argument(help="Prompt file: one prompt per line.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="JSONL to append to (re-runs resume).")],
    n: Annotated[int, typer.Option("--n", help="Completions per prompt.")] = 16,
    max_tokens: Annotated[int, typer.Option(help="Longest completion, in base-model tokens.")] = 48,
    seed: Annotated[int, typer.Option(help="Base seed (each sample derives its own).")] = 0,
    max_total_tokens: Annotated[int | None, typer.Option(help="Stop before billing more tokens than this.")] = None,
    max_usd: Annotated[float | None, typer.Option(help="Stop before spending more dollars than this.")] = None,
    reward: Annotated[str | None, typer.Option(help="Also score each sample (a reward spec, e.g. vader).")] = None,
    raw: Annotated[bool, typer.Option(help="Send lines as raw completion prompts, not as user messages.")] = False,
    system: Annotated[str | None, typer.Option(help="A system message for chat prompts.")] = None,
    base_url: Annotated[str | None, typer.Option(help="OpenAI-compatible base URL; default: the embedded local server.")] = None,
    model: Annotated[str | None, typer.Option(help="Base model name at the provider.")] = None,
    api_key_env: Annotated[str, typer.Option(help="Environment variable holding the API key.")] = "OPENAI_API_KEY",
    chat_template: Annotated[str | None, typer.Option(help="Chat template for raw-completion servers (.gguf path, HF tokenizer or Jinja).")] = None,
    retry_failed: Annotated[bool, typer.Option(help="Ask again for prompts an earlier run recorded as refused (OUT.failed.jsonl).")] = False,
) -> None:
    """Sample completions of the frozen base at temperature 1 and store them as JSONL.

    A prompt the provider refuses (e.g. longer than the context) is recorded with its line
    number in OUT.failed.jsonl and skipped; the other prompts are still collected.
    """
    from estimators.collect import as_prompt, collect, failed_path, numbered_prompts
    from estimators.rewards import build_reward

    lines, numbers = numbered_prompts(prompts)
    scorer = build_reward(reward) if reward else None
    with ExitStack() as stack:
        provider = _provider(stack, base_url, model, api_key_env, chat_template)
        summary = collect(
            provider, [as_prompt(p, chat=not raw, system=system) for p in lines], out, n=n,
            max_tokens=max_tokens, seed=seed, max_total_tokens=max_total_tokens,
            max_cost_usd=max_usd, reward=scorer, line_numbers=numbers, retry_failed=retry_failed,
        )
    typer.echo(f"{out}: {summary.line()}")
    for failed in summary.failed:
        typer.echo(f"{prompts}:{failed.line}: refused by the provider: {failed.error}", err=True)
    if summary.failed:
        typer.echo(f"recorded in {failed_path(out)}; a re-run skips them (--retry-failed asks again).", err=True)


@app.command("train")
def train_command(
    data: Annotated[Path, typer.Argument(help="JSONL samples from `vas collect`.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Checkpoint directory (resumes if it holds a run).")],
    reward: Annotated[str, typer.Option(help="Reward spec, or 'stored' to use the rewards in the file.")] = "vader",
    backbone: Annotated[str | None, typer.Option(help="HF name/path; default SmolLM2-135M-Instruct from the GGUF.")] = None,
    layers: Annotated[int | None, typer.Option(help="Keep the first N backbone layers (default: the model's default).")] = None,
    residual: Annotated[bool, typer.Option(help="Learn V = reward(prefix) + correction.")] = False,
    prompt_format: Annotated[str, typer.Option(
        help="The model's own prompt rendering: 'chatml' (travels to any base) or 'base' (the samples' prompt_text).",
    )] = "chatml",
    end_state: Annotated[bool, typer.Option(
        help="Give finished samples an end-of-sequence state that holds the reward (V tells 'stop here' from 'keep going').",
    )] = True,
    center_rewards: Annotated[bool, typer.Option(
        help="Subtract each prompt's mean reward (needs several samples per prompt): all the loss goes to the order within a prompt, which is all steering uses.",
    )] = False,
    lam: Annotated[float, typer.Option(help="TD(lambda): 0 = TD(0), 1 = Monte Carlo.")] = 0.95,
    gamma: Annotated[float, typer.Option()] = 1.0,
    lr: Annotated[float, typer.Option()] = 5e-5,
    batch_size: Annotated[int, typer.Option(help="Samples per TD batch.")] = 8,
    grad_accum: Annotated[int, typer.Option(help="Micro-batches per batch.")] = 1,
    epochs_per_batch: Annotated[int, typer.Option(help="Optimizer steps on each batch's targets.")] = 4,
    passes: Annotated[int, typer.Option(help="Passes over the data.")] = 1,
    max_length: Annotated[int, typer.Option(help="Max tokens per text.")] = 256,
    freeze_backbone: Annotated[bool, typer.Option(
        help="Train the value head only (the backbone runs once per sample).")] = False,
    ridge: Annotated[float | None, typer.Option(
        help="With --freeze-backbone: fit the head in closed form (ridge regression of the "
             "Monte Carlo returns, this penalty) instead of TD steps.")] = None,
    lora_r: Annotated[int, typer.Option(help="LoRA rank (0: full fine-tuning).")] = 0,
    heldout_fraction: Annotated[float, typer.Option(help="Fraction of prompts kept for validation.")] = 0.1,
    seed: Annotated[int, typer.Option()] = 0,
    device: Annotated[str | None, typer.Option(help="cpu, cuda, ... (default: cuda if available).")] = None,
    threads: Annotated[int | None, typer.Option(help="torch CPU threads (1 is fastest on a busy small CPU).")] = None,
    config: Annotated[Path | None, typer.Option(help="JSON file of TrainConfig fields; overrides the options.")] = None,
    resume: Annotated[bool, typer.Option(help="Continue a run found in --out.")] = True,
) -> None:
    """Train a value model with TD(lambda) on collected samples."""
    from estimators.train import TrainConfig, config_from_dict, train

    settings = dict(
        data=str(data), output_dir=str(out), reward=None if reward == "stored" else reward,
        backbone=backbone, num_layers=layers, residual=residual, prompt_format=prompt_format, end_state=end_state,
        center_rewards=center_rewards, lam=lam, gamma=gamma, lr=lr,
        batch_size=batch_size, grad_accum=grad_accum, epochs_per_batch=epochs_per_batch,
        passes=passes, max_length=max_length, freeze_backbone=freeze_backbone, ridge=ridge, lora_r=lora_r,
        heldout_fraction=heldout_fraction, seed=seed, device=device, num_threads=threads,
    )
    if config is not None:
        try:
            settings.update(json.loads(config.read_text()))
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfigError(f"cannot read training config {config}: {exc}") from exc
    cfg: TrainConfig = config_from_dict(settings)
    result = train(cfg, resume=resume)
    done = "with the head fitted in closed form" if cfg.ridge is not None else f"after {result.batches} batches"
    typer.echo(f"saved {out} {done} ({result.seconds:.0f} s this run); " + _metrics_line(result.metrics))


def _metrics_line(metrics: dict[str, float]) -> str:
    if not metrics:
        return "no validation split"
    return f"validation: spearman@0.5 {metrics['spearman']:.3f}, mse@0.5 {metrics['mse']:.4f}"


@app.command("eval-value")
def eval_value_command(
    data: Annotated[Path, typer.Argument(help="JSONL samples (held-out prompts).")],
    model: Annotated[list[Path] | None, typer.Option("--model", "-m", help="A value-model checkpoint; repeatable.")] = None,
    baseline: Annotated[list[str] | None, typer.Option(help="A reward spec to apply to the prefix (e.g. vader); repeatable.")] = None,
    reward: Annotated[str, typer.Option(help="Reward of the finished texts: a spec, or 'stored'.")] = "vader",
    tokenizer: Annotated[str | None, typer.Option(help="Backbone whose tokens define the states (default: the first model's, else SmolLM2's).")] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Also write the metrics here.")] = None,
) -> None:
    """Held-out MSE and Spearman (at 0, half and all of each completion) of value functions."""
    from rich.console import Console
    from rich.table import Table

    from estimators.backbone import load_tokenizer
    from estimators.baselines import PrefixRewardValue, load_value_function
    from estimators.data import read_samples
    from estimators.evaluate import evaluate_value, json_safe
    from estimators.train import score_samples

    if not model and not baseline:
        raise ConfigError("give at least one --model checkpoint or --baseline reward spec.")
    read = read_samples(data)
    samples = score_samples(read.samples, None if reward == "stored" else reward)
    named: list[tuple[str, Any]] = [(str(p), load_value_function(p)) for p in model or []]
    named += [(f"prefix:{spec}", PrefixRewardValue(spec)) for spec in baseline or []]
    tok = load_tokenizer(tokenizer) if tokenizer or not model else named[0][1].tokenizer
    results = {name: evaluate_value(fn, samples, tok) for name, fn in named}
    table = Table(title=f"{data} ({read.summary()})")
    for col in ("value function", "spearman@0.5", "mse@0.5", "spearman@0", "spearman@1"):
        table.add_column(col)
    for name, m in results.items():
        table.add_row(name, *(f"{m[k]:.3f}" for k in ("spearman", "mse", "spearman@0", "spearman@1")))
    Console().print(table)
    if json_out is not None:
        json_out.write_text(json.dumps(json_safe(results), indent=1))
