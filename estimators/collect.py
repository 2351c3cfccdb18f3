"""Collect training data: n completions per prompt from the frozen base, through a provider.

Sampling is plain temperature-1 sampling (the provider sets neutral server-side samplers), so
the samples follow the base distribution the value model must evaluate. The output JSONL is
resumable: re-running with the same file counts the samples each prompt already has and asks
only for the missing ones. A cap on tokens or dollars stops the run *before* a call whose
worst case would cross it; everything already written stays on disk.

A prompt the provider refuses (longer than the context, a 400/422) does not stop the run: it
is recorded with its line number in ``<out>.failed.jsonl`` and the later prompts are
collected. A re-run skips the prompts recorded there (``retry_failed=True`` asks again), so
it cannot hit the same prompt forever. Transport failures that outlast the retries (the
server is down) do stop the run, keeping what was written.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from vas_api.errors import BudgetExceededError, ConfigError, DataError, ProviderError
from vas_api.redact import redact_text
from vas_api.types import Prefix, Prompt, Provider, Usage

from .data import Sample, SampleWriter, prompt_key, read_samples
from .rewards import Reward, compute_rewards

__all__ = ["CollectSummary", "FailedPrompt", "collect", "as_prompt", "failed_path", "numbered_prompts"]

_REFUSED_STATUS = frozenset({400, 413, 422})
"""Statuses that mean "this prompt cannot be answered" (too long for the context, invalid):
asking again cannot help, so the prompt is recorded as failed and the run goes on."""


@dataclass(slots=True)
class FailedPrompt:
    """A prompt the provider refused.

    Attributes:
        line: its line number in the prompt file (1-based; its position when no file).
        key: its prompt key (see `estimators.data.prompt_key`).
        error: the provider's message.
        status: the HTTP status, when there was one.
    """

    line: int
    key: str
    error: str
    status: int | None = None


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
        failed: prompts the provider refused in this run (recorded in the failed file).
        skipped_failed: prompts not asked for because an earlier run recorded them as failed.
    """

    written: int = 0
    already_present: int = 0
    skipped_lines: int = 0
    usage: Usage = field(default_factory=Usage)
    cost_usd: float = 0.0
    seconds: float = 0.0
    prompts: int = 0
    failed: list[FailedPrompt] = field(default_factory=list)
    skipped_failed: list[FailedPrompt] = field(default_factory=list)

    def line(self) -> str:
        """A one-line human summary."""
        text = (
            f"{self.written} samples written ({self.already_present} already present, "
            f"{self.skipped_lines} bad lines skipped) for {self.prompts} prompts; "
            f"{self.usage.prompt_tokens} prompt + {self.usage.completion_tokens} completion "
            f"tokens in {self.usage.calls} calls, ${self.cost_usd:.4f}, {self.seconds:.1f} s"
        )
        if self.failed:
            text += f"; {len(self.failed)} prompts refused (lines {_lines(self.failed)})"
        if self.skipped_failed:
            text += (
                f"; {len(self.skipped_failed)} prompts skipped that failed before (lines "
                f"{_lines(self.skipped_failed)}; retry_failed / --retry-failed asks again)"
            )
        return text


def _lines(failed: Sequence[FailedPrompt]) -> str:
    shown = ", ".join(str(f.line) for f in failed[:10])
    return shown + (", ..." if len(failed) > 10 else "")


def failed_path(out_path: str | os.PathLike[str]) -> Path:
    """Where `collect` records the prompts the provider refused: ``<out>.failed.jsonl``."""
    p = Path(out_path)
    return p.with_name(p.name + ".failed.jsonl")


def _read_failed(path: Path) -> dict[str, FailedPrompt]:
    if not path.exists():
        return {}
    out: dict[str, FailedPrompt] = {}
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read {path}: {exc}; delete it to ask for every prompt again") from exc
    for raw in lines:
        try:
            row = json.loads(raw)
            out[str(row["key"])] = FailedPrompt(int(row["line"]), str(row["key"]), str(row.get("error", "")), row.get("status"))
        except (ValueError, KeyError, TypeError):
            continue  # a torn last line from an interrupted run
    return out


def _write_failed(path: Path, failed: FailedPrompt) -> None:
    with path.open("a", encoding="utf-8") as f:
        f.write(json.dumps({"line": failed.line, "key": failed.key, "error": failed.error,
                            "status": failed.status}) + "\n")


def _refused(exc: ProviderError) -> bool:
    status = getattr(exc, "status_code", None)
    return isinstance(status, int) and status in _REFUSED_STATUS


def numbered_prompts(path: str | os.PathLike[str]) -> tuple[list[str], list[int]]:
    """The prompts of a prompt file and their 1-based line numbers (blank lines skipped).

    Raises:
        DataError: the file is missing, unreadable, or has no prompt.
    """
    from .data import read_prompts

    prompts = read_prompts(path)
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    numbers = [i for i, line in enumerate(lines, 1) if line.strip()]
    return prompts, numbers


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
    line_numbers: Sequence[int] | None = None,
    retry_failed: bool = False,
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
        line_numbers: the prompt file's line number of each prompt, for the failed record
            (default: 1, 2, ...).
        retry_failed: ask again for the prompts an earlier run recorded as failed.

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
    if line_numbers is not None and len(line_numbers) != len(prompts):
        raise ConfigError(f"{len(line_numbers)} line numbers for {len(prompts)} prompts")
    started = time.perf_counter()
    existing = read_samples(out_path, require=False)
    have = Counter(prompt_key(s.prompt) for s in existing.samples)
    unique: dict[str, Prompt] = {}
    line_of: dict[str, int] = {}
    for i, p in enumerate(prompts):
        key = prompt_key(p)
        unique.setdefault(key, p)
        line_of.setdefault(key, i + 1 if line_numbers is None else int(line_numbers[i]))
    summary = CollectSummary(skipped_lines=len(existing.skipped), prompts=len(unique))
    failed_file = failed_path(out_path)
    failed_before = {} if retry_failed else _read_failed(failed_file)
    for key in list(unique):
        if key in failed_before:
            summary.skipped_failed.append(failed_before[key])
            del unique[key]
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
                    try:
                        samples = provider.sample(
                            Prefix(prompt), n=count, max_tokens=max_tokens, temperature=1.0,
                            stop=stop, seed=None if seed is None else _seed(seed, key, first),
                        )
                    except ProviderError as exc:
                        if exc.usage is not None:
                            summary.usage = summary.usage + exc.usage
                        if not _refused(exc):
                            raise
                        failed = FailedPrompt(
                            line_of[key], key, redact_text(str(exc), _secrets(provider)),
                            getattr(exc, "status_code", None),
                        )
                        _write_failed(failed_file, failed)
                        summary.failed.append(failed)
                        if bar is not None:
                            bar.update(n - first)
                        break  # the same prompt would be refused again: go on with the next
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


def _secrets(provider: Provider) -> list[str]:
    from vas_api.redact import client_secrets

    return client_secrets(getattr(provider, "client", None))


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
