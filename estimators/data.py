"""Sample files (JSONL) and prompt files (one prompt per line).

A sample is one completion of the frozen base model:
    {"prompt": str | [messages], "prompt_text": str, "completion": str,
     "finish_reason": str | null, "model": str, "usage": {...}, "reward": float (optional)}
`prompt_text` is the exact text the base continued (`provider.prompt_text(prompt)`), so
`prompt_text + completion` is the text a value model trains on.

Reading never crashes on a bad line and never drops one silently: blank and malformed lines
are counted and reported in `ReadResult.skipped`. Writing appends one line at a time and
flushes it, so a crash loses at most the line being written.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

from vas_api.errors import DataError
from vas_api.types import Prompt

__all__ = [
    "Sample",
    "ReadResult",
    "SampleWriter",
    "read_samples",
    "write_samples",
    "read_prompts",
    "prompt_key",
    "iter_groups",
]


@dataclass(slots=True)
class Sample:
    """One completion of the base model for one prompt.

    Attributes:
        prompt: the prompt as sent (raw text or chat messages).
        prompt_text: the text the base continued (chat rendered by the provider).
        completion: the sampled continuation.
        finish_reason: "stop", "length", ... as the provider reported it.
        model: the base model id.
        usage: billed tokens of the call(s), as a plain dict.
        reward: the reward of the completion, when scored.
        extra: any other keys found in the file (kept on rewrite).
    """

    prompt: Prompt
    prompt_text: str
    completion: str
    finish_reason: str | None = None
    model: str = ""
    usage: dict[str, Any] = field(default_factory=dict)
    reward: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def text(self) -> str:
        """The full text a value model scores: prompt_text + completion."""
        return self.prompt_text + self.completion

    def to_json(self) -> dict[str, Any]:
        """The JSON object of this sample (extra keys first, known keys win)."""
        row = dict(self.extra)
        row.update({k: v for k, v in asdict(self).items() if k != "extra"})
        if row["reward"] is None:
            del row["reward"]
        return row

    @classmethod
    def from_json(cls, row: Any) -> Sample:
        """Build a sample from one parsed JSON line.

        Raises:
            DataError: a required key is missing or has the wrong type.
        """
        if not isinstance(row, dict):
            raise DataError(f"expected a JSON object, got {type(row).__name__}")
        missing = [k for k in ("prompt", "prompt_text", "completion") if k not in row]
        if missing:
            raise DataError(f"missing key(s) {', '.join(missing)}")
        prompt = row["prompt"]
        if not (isinstance(prompt, str) or _is_messages(prompt)):
            raise DataError("'prompt' must be a string or a list of {role, content} messages")
        for key in ("prompt_text", "completion"):
            if not isinstance(row[key], str):
                raise DataError(f"'{key}' must be a string")
        reward = row.get("reward")
        if reward is not None:
            if isinstance(reward, bool) or not isinstance(reward, int | float):
                raise DataError("'reward' must be a number")
            if not math.isfinite(reward):
                raise DataError("'reward' is not finite")
            reward = float(reward)
        usage = row.get("usage") or {}
        if not isinstance(usage, dict):
            raise DataError("'usage' must be an object")
        known = {"prompt", "prompt_text", "completion", "finish_reason", "model", "usage", "reward"}
        return cls(
            prompt=prompt,
            prompt_text=row["prompt_text"],
            completion=row["completion"],
            finish_reason=row.get("finish_reason"),
            model=str(row.get("model") or ""),
            usage=usage,
            reward=reward,
            extra={k: v for k, v in row.items() if k not in known},
        )


def _is_messages(value: Any) -> bool:
    return isinstance(value, list) and all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and "content" in m for m in value
    )


def prompt_key(prompt: Prompt) -> str:
    """A stable string key for a prompt (raw text or messages), for grouping and resuming."""
    if isinstance(prompt, str):
        return prompt
    return json.dumps(prompt, sort_keys=True, ensure_ascii=False)


@dataclass(slots=True)
class ReadResult:
    """What `read_samples` found.

    Attributes:
        samples: the valid samples, in file order.
        skipped: (line number, reason) for every blank or malformed line.
    """

    samples: list[Sample]
    skipped: list[tuple[int, str]]

    def summary(self) -> str:
        """One line: how many samples were read and how many lines were skipped, and why."""
        text = f"{len(self.samples)} samples"
        if self.skipped:
            head = "; ".join(f"line {n}: {why}" for n, why in self.skipped[:3])
            more = f" (+{len(self.skipped) - 3} more)" if len(self.skipped) > 3 else ""
            text += f", {len(self.skipped)} lines skipped ({head}{more})"
        return text


def read_samples(path: str | os.PathLike[str], *, require: bool = True) -> ReadResult:
    """Read a JSONL sample file, skipping (and counting) blank and malformed lines.

    Args:
        path: the JSONL file.
        require: raise when the file is missing or holds no valid sample.

    Returns:
        The valid samples and the skipped lines.

    Raises:
        DataError: (with require) the file is missing, unreadable, or has no valid sample.
    """
    p = Path(path)
    if not p.exists():
        if require:
            raise DataError(f"sample file {p} does not exist; run `vas collect` to create it")
        return ReadResult([], [])
    samples: list[Sample] = []
    skipped: list[tuple[int, str]] = []
    try:
        with p.open("r", encoding="utf-8", errors="replace") as f:
            for number, line in enumerate(f, start=1):
                if not line.strip():
                    skipped.append((number, "blank line"))
                    continue
                try:
                    samples.append(Sample.from_json(json.loads(line)))
                except json.JSONDecodeError as exc:
                    skipped.append((number, f"not JSON ({exc.msg})"))
                except DataError as exc:
                    skipped.append((number, str(exc)))
    except OSError as exc:
        raise DataError(f"cannot read sample file {p}: {exc}") from exc
    if require and not samples:
        raise DataError(f"sample file {p} has no valid sample ({len(skipped)} lines skipped)")
    return ReadResult(samples, skipped)


class SampleWriter:
    """Append samples to a JSONL file, one flushed line each (a crash loses at most one line).

    Use as a context manager. When the file ends in a partial line (a crash mid-write), a
    newline is added first so the next row is not glued onto it; the partial line is then
    skipped, and counted, by `read_samples`.
    """

    def __init__(self, path: str | os.PathLike[str], *, fsync: bool = False) -> None:
        """Args:
        path: the JSONL file; created (with parent folders) when missing.
        fsync: also fsync after each line (survives power loss, slower).
        """
        self.path = Path(path)
        self.fsync = fsync
        self.written = 0
        self._file: IO[str] | None = None

    def __enter__(self) -> SampleWriter:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        needs_newline = False
        if self.path.exists() and self.path.stat().st_size > 0:
            with self.path.open("rb") as f:
                f.seek(-1, os.SEEK_END)
                needs_newline = f.read(1) != b"\n"
        self._file = self.path.open("a", encoding="utf-8")
        if needs_newline:
            self._file.write("\n")
            self._file.flush()
        return self

    def write(self, sample: Sample) -> None:
        """Append one sample as one line and flush it."""
        if self._file is None:
            raise DataError("SampleWriter.write called outside its `with` block")
        self._file.write(json.dumps(sample.to_json(), ensure_ascii=False) + "\n")
        self._file.flush()
        if self.fsync:
            os.fsync(self._file.fileno())
        self.written += 1

    def __exit__(self, *exc: object) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def write_samples(path: str | os.PathLike[str], samples: Iterable[Sample]) -> int:
    """Append samples to `path`; returns how many were written."""
    with SampleWriter(path) as writer:
        for s in samples:
            writer.write(s)
        return writer.written


def read_prompts(path: str | os.PathLike[str]) -> list[str]:
    """Read a prompt file: one prompt per line; blank lines are ignored.

    Raises:
        DataError: the file is missing, unreadable, or has no prompt.
    """
    p = Path(path)
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise DataError(f"prompt file {p} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read prompt file {p}: {exc}") from exc
    prompts = [line.strip() for line in lines if line.strip()]
    if not prompts:
        raise DataError(f"prompt file {p} has no prompt (one prompt per line)")
    return prompts


def iter_groups(samples: Iterable[Sample]) -> Iterator[tuple[str, list[Sample]]]:
    """Group samples by prompt (first-seen order): (prompt key, samples of that prompt)."""
    groups: dict[str, list[Sample]] = {}
    for s in samples:
        groups.setdefault(prompt_key(s.prompt), []).append(s)
    yield from groups.items()
