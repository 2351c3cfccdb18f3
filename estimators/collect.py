"""Collect training data: n completions per prompt from the frozen base, through a provider.

Sampling is plain temperature-1 sampling (the provider sets neutral server-side samplers), so
the samples follow the base distribution the value model must evaluate. The output JSONL is
resumable: re-running with the same file counts the samples each prompt already has and asks
only for the missing ones. A cap on tokens or dollars stops the run *before* a call whose
worst case would cross it; everything already written stays on disk.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from vas_api.errors import BudgetExceededError, ConfigError
from vas_api.types import Prefix, Prompt, Provider, Usage

from .data import Sample, SampleWriter, prompt_key, read_samples
from .rewards import Reward, compute_rewards

__all__ = ["CollectSummary", "collect", "as_prompt"]


@dataclass(slots=True)
class CollectSummary:
    """What one `collect` run did.

    Attributes:
        written: samples written by this run.
        already_present: samples found in the file and not requested again.
        skipped_lines: blank/malformed lines found in the existing file.
        usage: tokens billed by this run.
        cost_usd: dollars billed by this run (0 for a local server).
        seconds: wall time of this run.
        prompts: distinct prompts asked for.
    """

    written: int = 0
    already_present: int = 0
    skipped_lines: int = 0
    usage: Usage = field(default_factory=Usage)
    cost_usd: float = 0.0
    seconds: float = 0.0
    prompts: int = 0

    def line(self) -> str:
        """A one-line human summary."""
        return (
            f"{self.written} samples written ({self.already_present} already present, "
            f"{self.skipped_lines} bad lines skipped) for {self.prompts} prompts; "
            f"{self.usage.prompt_tokens} prompt + {self.usage.completion_tokens} completion "
            f"tokens in {self.usage.calls} calls, ${self.cost_usd:.4f}, {self.seconds:.1f} s"
        )


def as_prompt(line: str, *, chat: bool = True, system: str | None = None) -> Prompt:
    """Turn one line of a prompt file into a provider prompt.

    Args:
        line: the instruction.
        chat: wrap it as a user message (for instruct models); False sends it as raw text.
        system: an optional system message (chat only).
    """
    if not chat:
        return line
    messages = [{"role": "system", "content": system}] if system else []
    return [*messages, {"role": "user", "content": line}]


def _seed(base: int, key: str, index: int) -> int:
    # A per-(prompt, sample index) seed: a resumed run asks for the same draws it would have.
    digest = hashlib.sha256(f"{base}\x00{key}\x00{index}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def collect(
    provider: Provider,
    prompts: Sequence[Prompt],
    out_path: str | os.PathLike[str],
    *,
    n: int = 16,
    max_tokens: int = 48,
    seed: int | None = 0,
    max_total_tokens: int | None = None,
    max_cost_usd: float | None = None,
    reward: Reward | None = None,
    stop: Sequence[str] | None = None,
    progress: bool = True,
) -> CollectSummary:
    """Sample `n` completions per prompt at temperature 1 and append them to `out_path`.

    Args:
        provider: the frozen base model's endpoint.
        prompts: raw prompts or chat message lists; duplicates are asked for once.
        out_path: JSONL file; samples already in it count toward each prompt's `n`.
        n: completions wanted per prompt.
        max_tokens: the longest completion, in the provider's tokens.
        seed: base seed; each (prompt, sample index) gets its own derived seed (None: unseeded).
        max_total_tokens: cap on prompt + completion tokens billed by this run.
        max_cost_usd: cap on dollars billed by this run (at `provider.profile` prices).
        reward: when given, each sample is scored and stored with its `reward`.
        stop: stop strings passed to the provider.
        progress: show a tqdm progress bar.

    Returns:
        A `CollectSummary`.

    Raises:
        ConfigError: n or max_tokens is not positive, or there is no prompt.
        BudgetExceededError: the next call could cross a cap; `partial` is the summary so far,
            and every sample it counts is already on disk.
        RewardError: the reward failed on a sample (samples before it are kept).
    """
    if n < 1 or max_tokens < 1:
        raise ConfigError(f"n and max_tokens must be at least 1; got n={n}, max_tokens={max_tokens}")
    if not prompts:
        raise ConfigError("no prompts to collect for")
    started = time.perf_counter()
    existing = read_samples(out_path, require=False)
    have = Counter(prompt_key(s.prompt) for s in existing.samples)
    unique: dict[str, Prompt] = {}
    for p in prompts:
        unique.setdefault(prompt_key(p), p)
    summary = CollectSummary(skipped_lines=len(existing.skipped), prompts=len(unique))
    todo = {k: max(0, n - have[k]) for k in unique}
    summary.already_present = sum(min(n, have[k]) for k in unique)
    total_needed = sum(todo.values())
    bar = _progress(total_needed, progress)
    # Calls with n > 1 bill the prompt once; otherwise one call per sample keeps each sample
    # on disk as soon as it exists, and gives each its own seed.
    batched = bool(provider.profile.n_param)
    try:
        with SampleWriter(out_path) as writer:
            for key, prompt in unique.items():
                missing = todo[key]
                if not missing:
                    continue
                prompt_text = provider.prompt_text(prompt)
                start = n - missing
                chunks = [(start, missing)] if batched else [(start + i, 1) for i in range(missing)]
                for first, count in chunks:
                    _check_budget(provider, summary, prompt_text, count, max_tokens,
                                  max_total_tokens, max_cost_usd)
                    samples = provider.sample(
                        Prefix(prompt), n=count, max_tokens=max_tokens, temperature=1.0,
                        stop=stop, seed=None if seed is None else _seed(seed, key, first),
                    )
                    summary.usage = summary.usage + samples.usage
                    summary.cost_usd = provider.profile.cost(summary.usage)
                    rows = [
                        Sample(
                            prompt=prompt, prompt_text=prompt_text, completion=c.text,
                            finish_reason=c.finish_reason, model=provider.model,
                            usage=_usage_share(samples.usage, len(samples.completions)),
                            extra={"sample_index": first + i},
                        )
                        for i, c in enumerate(samples.completions)
                    ]
                    if reward is not None and rows:
                        scores = compute_rewards(
                            reward, [r.prompt_text for r in rows], [r.completion for r in rows]
                        )
                        for row, score in zip(rows, scores, strict=True):
                            row.reward = score
                    for row in rows:
                        writer.write(row)
                        summary.written += 1
                    if bar is not None:
                        bar.update(len(rows))
    finally:
        summary.seconds = time.perf_counter() - started
        if bar is not None:
            bar.close()
    return summary


def _usage_share(usage: Usage, count: int) -> dict[str, float]:
    # One call may return several samples; each row records its share of the call's usage.
    count = max(count, 1)
    return {
        "prompt_tokens": usage.prompt_tokens / count,
        "completion_tokens": usage.completion_tokens / count,
        "calls": usage.calls / count,
    }


def _check_budget(
    provider: Provider,
    summary: CollectSummary,
    prompt_text: str,
    count: int,
    max_tokens: int,
    max_total_tokens: int | None,
    max_cost_usd: float | None,
) -> None:
    """Refuse the next call when its worst case could cross a cap.

    The worst case bills the prompt once per sample (providers without `n` loop) at one token
    per character (no tokenizer is that fine-grained), plus max_tokens per sample.
    """
    if max_total_tokens is None and max_cost_usd is None:
        return
    worst = Usage(prompt_tokens=len(prompt_text) * count, completion_tokens=max_tokens * count)
    spent_tokens = summary.usage.total_tokens
    if max_total_tokens is not None and spent_tokens + worst.total_tokens > max_total_tokens:
        raise BudgetExceededError(
            f"token cap reached: {spent_tokens} tokens spent, the next call could take up to "
            f"{worst.total_tokens} more (cap {max_total_tokens}). {summary.written} samples "
            "were written and kept; raise the cap and re-run to resume.",
            spent=spent_tokens, limit=max_total_tokens, unit="tokens", partial=summary,
        )
    if max_cost_usd is not None:
        spent = provider.profile.cost(summary.usage)
        if spent + provider.profile.cost(worst) > max_cost_usd:
            raise BudgetExceededError(
                f"cost cap reached: ${spent:.4f} spent, the next call could cost up to "
                f"${provider.profile.cost(worst):.4f} more (cap ${max_cost_usd:.4f}). "
                f"{summary.written} samples were written and kept; raise the cap and re-run "
                "to resume.",
                spent=spent, limit=max_cost_usd, unit="usd", partial=summary,
            )


def _progress(total: int, enabled: bool):  # -> tqdm | None
    if not enabled or total == 0:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:  # tqdm is a dependency; a bare environment still collects
        return None
    return tqdm(total=total, unit="sample", desc="collect", dynamic_ncols=True)


def default_out_path(prompts_path: str | os.PathLike[str], model: str) -> Path:
    """A default JSONL path next to the prompt file: <prompts>.<model>.jsonl."""
    p = Path(prompts_path)
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in model)
    return p.with_name(f"{p.stem}.{safe}.jsonl")
