"""What `vas serve` runs with: the upstream, the value models by name, the proxy keys and their
budgets, and the limits. Parsed and checked before anything starts (bad specs are ConfigErrors).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ..budget import Budget
from ..errors import ConfigError
from ..redact import redact_urls_in

__all__ = ["ServeConfig", "ValueSpec", "KeySpec", "parse_value_spec", "load_keys_file"]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


@dataclass(frozen=True)
class ValueSpec:
    """One value model a request may ask for by name.

    Attributes:
        name: what requests call it (``"vas": {"beta": {"sentiment": 4}}``).
        source: a checkpoint directory, ``reward:SPEC`` (the prefix-reward baseline, e.g.
            ``reward:vader``), or an already loaded value function (tests, embedding code).
        default_beta: the beta a request gets when it names no beta for this model (0: the
            model is only used when a request asks for it).
        description: shown by ``GET /vas/info`` (default: from the source's kind; never its path).
    """

    name: str
    source: Any
    default_beta: float = 0.0
    description: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME.match(self.name):
            raise ConfigError(
                f"value model name {self.name!r}: use 1-64 letters, digits, '_', '.' or '-' "
                "(starting with a letter or digit)."
            )
        if isinstance(self.default_beta, bool) or not isinstance(self.default_beta, int | float) \
                or not math.isfinite(self.default_beta):
            raise ConfigError(f"default beta {self.default_beta!r} of {self.name!r}: give a finite number.")


@dataclass(frozen=True)
class KeySpec:
    """A proxy API key and the budget of everything sent with it.

    Attributes:
        key: the bearer token clients send (``Authorization: Bearer KEY``).
        max_tokens: billed tokens (prompt + completion, every upstream call) this key may spend
            in the server's lifetime; None: no cap.
        max_usd: money cap at the upstream's price (0 for a local server); None: no cap.
    """

    key: str
    max_tokens: int | None = None
    max_usd: float | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.key, str) or len(self.key) < 8 or any(c.isspace() for c in self.key):
            raise ConfigError("a proxy API key must be at least 8 characters without spaces.")

    def __repr__(self) -> str:  # never show the key
        return f"KeySpec(key=***, max_tokens={self.max_tokens}, max_usd={self.max_usd})"


@dataclass
class ServeConfig:
    """Settings of one `vas serve` app (`vas_api.serve.create_app`).

    Attributes:
        upstream: OpenAI-compatible base URL of the base model; None starts the embedded
            local model (SmolLM2-135M-Instruct on llama-cpp-python) with the app.
        model: the base model's id at the upstream (None with the embedded model: its alias).
        values: the value models requests can name.
        keys: proxy keys; empty means no key is asked for (loopback use).
        anonymous_max_tokens, anonymous_max_usd: the budget shared by all requests when there
            are no keys.
        upstream_key_env: environment variable holding the upstream's API key (read once, never
            sent to clients or logged).
        chat_template: how chat messages become the upstream's prompt (a .gguf file, Jinja, or
            a tokenizer name); None: the upstream's own (llama-server), or the GGUF's when embedded.
        profile: a known capability profile of the upstream (skips probing); None: probe.
        prices: user prices on top of the shipped table (see vas_api.pricing).
        max_concurrency: requests generating at once; more wait in a queue.
        queue_timeout_s: how long a request waits for a slot before a 429.
        default_k, default_max_tokens: what a request gets when it does not say.
        max_tokens_limit: the most tokens one request may ask for.
    """

    upstream: str | None = None
    model: str | None = None
    values: list[ValueSpec] = field(default_factory=list)
    keys: list[KeySpec] = field(default_factory=list)
    anonymous_max_tokens: int | None = None
    anonymous_max_usd: float | None = None
    upstream_key_env: str = "OPENAI_API_KEY"
    chat_template: str | None = None
    profile: Any = None
    prices: Any = None
    max_concurrency: int = 8
    queue_timeout_s: float = 30.0
    default_k: int = 20
    default_max_tokens: int = 64
    max_tokens_limit: int = 1024

    def __post_init__(self) -> None:
        names = [v.name for v in self.values]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ConfigError(f"value model name(s) {dup} given twice; each --value needs its own name.")
        keys = [k.key for k in self.keys]
        if len(set(keys)) != len(keys):
            raise ConfigError("a proxy API key is given twice.")
        for name in ("max_concurrency", "default_k", "default_max_tokens", "max_tokens_limit"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"{name} = {v!r}: give a whole number >= 1.")
        if not (isinstance(self.queue_timeout_s, int | float) and self.queue_timeout_s >= 0):
            raise ConfigError(f"queue_timeout_s = {self.queue_timeout_s!r}: give seconds >= 0.")
        if self.upstream is not None:
            parts = urlsplit(self.upstream)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                # else the server starts and every request fails as a 502 (issue 14 review)
                raise ConfigError(f"--upstream {redact_urls_in(self.upstream)!r}: give an http(s) base URL, "
                                  "e.g. http://127.0.0.1:8080/v1.")
        if self.upstream is not None and not self.model:
            raise ConfigError("--model is required with --upstream (the base model's id there).")


def parse_value_spec(spec: str) -> ValueSpec:
    """``NAME=SOURCE`` or ``NAME=SOURCE:BETA`` (SOURCE a checkpoint directory or
    ``reward:SPEC``; BETA the default beta, else 0).

    Raises:
        ConfigError: no ``=``, a bad name, or a checkpoint directory that does not exist.
    """
    name, sep, source = spec.partition("=")
    if not sep or not name or not source:
        raise ConfigError(
            f"--value {spec!r}: write NAME=CKPT or NAME=CKPT:BETA (e.g. sentiment=./ckpt:2, "
            "or sentiment=reward:vader)."
        )
    beta = 0.0
    head, colon, tail = source.rpartition(":")
    if colon and head:
        try:
            beta = float(tail)
            source = head
        except ValueError:
            pass  # "reward:vader": the colon is the source's own
    if not math.isfinite(beta):
        raise ConfigError(f"--value {spec!r}: the default beta must be a finite number.")
    if not source.startswith("reward:") and not Path(source).expanduser().is_dir():
        raise ConfigError(
            f"--value {spec!r}: {source!r} is not a directory. Give a checkpoint directory "
            "`vas train` saved, or reward:SPEC (e.g. reward:vader)."
        )
    return ValueSpec(name.strip(), source, beta)


def load_keys_file(path: str | Path) -> list[KeySpec]:
    """A JSON file of proxy keys: ``{"KEY": {"max_tokens": 20000, "max_usd": 1.5}, ...}``
    (an empty object ``{}`` for a key without caps).

    Raises:
        ConfigError: the file is missing, not JSON, or holds bad entries.
    """
    p = Path(path).expanduser()
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"--keys-file {p}: cannot read it ({exc.strerror}).") from None
    except ValueError as exc:
        raise ConfigError(f"--keys-file {p}: not JSON ({exc}).") from None
    if not isinstance(data, dict):
        raise ConfigError(f"--keys-file {p}: give an object {{KEY: {{max_tokens, max_usd}}}}.")
    out = []
    for i, (key, caps) in enumerate(data.items()):
        if not isinstance(caps, dict) or set(caps) - {"max_tokens", "max_usd"}:
            raise ConfigError(f"--keys-file {p}: entry {i + 1} must be an object with max_tokens and/or max_usd.")
        try:  # a bad cap is found here, naming the entry, not later in a Budget with no context
            spec = KeySpec(key, caps.get("max_tokens"), caps.get("max_usd"))
            Budget(max_tokens=spec.max_tokens, max_usd=spec.max_usd)
        except ConfigError as exc:
            raise ConfigError(f"--keys-file {p}: entry {i + 1}: {exc}") from None
        out.append(spec)
    return out
