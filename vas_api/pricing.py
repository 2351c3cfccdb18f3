"""What API calls cost: per-million-token prices for hosted models, user overrides, local = 0.

The shipped table is `vas_api/data/prices.json` (input, cached input and output prices in USD
per million tokens, each with its source and date). Entries are looked up by model name (exact,
then case-insensitive, then without a provider prefix such as ``openai/`` or a date suffix such
as ``-2024-07-18``). The user can add or override entries with

- ``prices=`` (a mapping ``{model: Price | (input, cached_input, output) | {"input": ...}}``),
- a JSON file named by ``$VAS_API_PRICES`` (the same ``{"models": {...}}`` shape as the shipped
  table, or a bare ``{model: {...}}`` mapping),
- ``vas batch --price MODEL=INPUT,CACHED,OUTPUT``.

A server on a loopback address costs 0. A hosted model with no known price has no price:
`resolve_price` then raises a `ConfigError` unless a token cap guards the spend.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .errors import ConfigError
from .types import Usage

__all__ = [
    "Price",
    "LOCAL_PRICE",
    "PriceTable",
    "default_prices",
    "parse_price",
    "is_local_url",
    "resolve_price",
    "base_url_of",
]

_LOOPBACK = {"localhost", "127.0.0.1", "::1", "0.0.0.0", "[::1]"}
_DATE_SUFFIX = re.compile(r"-(\d{4}-\d{2}-\d{2}|\d{8})$")


@dataclass(frozen=True, slots=True)
class Price:
    """USD per million tokens.

    Attributes:
        input: prompt tokens not served from the provider's prompt cache.
        cached_input: prompt tokens the provider reports as cached; None bills them as input.
        output: completion tokens.
        source: where the numbers came from (for the report).
    """

    input: float
    cached_input: float | None
    output: float
    source: str = ""

    def __post_init__(self) -> None:
        for name in ("input", "cached_input", "output"):
            v = getattr(self, name)
            if v is None and name == "cached_input":
                continue
            if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or v < 0:
                raise ConfigError(
                    f"price {name} = {v!r}: give a finite number >= 0 (USD per million tokens)."
                )

    def cost(self, prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0) -> float:
        """USD billed for one call's (or many calls') token counts."""
        cached = min(max(cached_tokens, 0), prompt_tokens)
        cached_rate = self.input if self.cached_input is None else self.cached_input
        return (
            (prompt_tokens - cached) * self.input + cached * cached_rate + completion_tokens * self.output
        ) / 1e6

    def cost_of(self, usage: Usage) -> float:
        """USD billed for a `Usage`."""
        return self.cost(usage.prompt_tokens, usage.completion_tokens, usage.cached_tokens)

    def worst_case(self, prompt_tokens: int, completion_tokens: int) -> float:
        """The most a call of this size can cost (no prompt tokens cached)."""
        return self.cost(prompt_tokens, completion_tokens, 0)

    @property
    def free(self) -> bool:
        return self.input == 0 and self.output == 0 and not self.cached_input


LOCAL_PRICE = Price(0.0, 0.0, 0.0, "local server")


def _price_of(model: str, spec: Any) -> Price:
    if isinstance(spec, Price):
        return spec
    if isinstance(spec, list | tuple) and len(spec) in (2, 3):
        inp, *rest = spec
        cached, out = (None, rest[0]) if len(rest) == 1 else rest
        return Price(inp, cached, out, "user")
    if isinstance(spec, Mapping):
        try:
            return Price(
                spec["input"], spec.get("cached_input"), spec["output"],
                str(spec.get("source", "user")),
            )
        except KeyError as e:
            raise ConfigError(
                f"price for {model!r} has no {e.args[0]!r}; give input, output "
                "(and optionally cached_input) in USD per million tokens."
            ) from None
    raise ConfigError(
        f"price for {model!r} is {spec!r}; give (input, cached_input, output), "
        "{'input': ..., 'output': ...} or a vas_api.pricing.Price."
    )


def _normal(model: str) -> str:
    name = model.strip().lower()
    return _DATE_SUFFIX.sub("", name)


class PriceTable:
    """Prices by model name. Later entries (user overrides) win over earlier ones."""

    def __init__(self, entries: Mapping[str, Any] | None = None) -> None:
        self._exact: dict[str, Price] = {}
        self._loose: dict[str, Price] = {}
        for model, spec in (entries or {}).items():
            self.add(model, spec)

    def add(self, model: str, spec: Any) -> None:
        """Add or replace the price of `model`."""
        if not isinstance(model, str) or not model.strip():
            raise ConfigError(f"price entry has model name {model!r}; give the model's name.")
        price = _price_of(model, spec)
        self._exact[model] = price
        self._loose[_normal(model)] = price
        self._loose[_normal(model.rsplit("/", 1)[-1])] = price

    def merged(self, other: Mapping[str, Any] | PriceTable | None) -> PriceTable:
        """A new table: this one with `other`'s entries on top."""
        out = PriceTable()
        out._exact, out._loose = dict(self._exact), dict(self._loose)
        if isinstance(other, PriceTable):
            out._exact.update(other._exact)
            out._loose.update(other._loose)
        else:
            for model, spec in (other or {}).items():
                out.add(model, spec)
        return out

    def lookup(self, model: str) -> Price | None:
        """The price of `model`, or None when it is not in the table."""
        if model in self._exact:
            return self._exact[model]
        for key in (_normal(model), _normal(model.rsplit("/", 1)[-1])):
            if key in self._loose:
                return self._loose[key]
        return None

    def __contains__(self, model: str) -> bool:
        return self.lookup(model) is not None

    def __len__(self) -> int:
        return len(self._exact)


def _load_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"prices file {str(path)!r} does not exist; fix $VAS_API_PRICES or --price.") from None
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"prices file {str(path)!r} is not valid JSON ({e}).") from None
    models = data.get("models", data) if isinstance(data, dict) else None
    if not isinstance(models, dict):
        raise ConfigError(f"prices file {str(path)!r} must hold {{'models': {{name: {{input, output}}}}}}.")
    return {k: v for k, v in models.items() if not k.startswith("_")}


@lru_cache(maxsize=1)
def _shipped() -> PriceTable:
    text = resources.files("vas_api").joinpath("data/prices.json").read_text(encoding="utf-8")
    return PriceTable(json.loads(text)["models"])


def default_prices() -> PriceTable:
    """The shipped table with $VAS_API_PRICES (a JSON file) on top, when it is set."""
    table = _shipped()
    env = os.environ.get("VAS_API_PRICES")
    return table.merged(_load_json(Path(env).expanduser())) if env else table


def parse_price(text: str) -> tuple[str, Price]:
    """``MODEL=INPUT,CACHED,OUTPUT`` (or ``MODEL=INPUT,OUTPUT``), USD per million tokens.

    Raises:
        ConfigError: the text does not have that shape.
    """
    model, sep, nums = text.partition("=")
    parts = [p.strip() for p in nums.split(",")]
    try:
        values = [float(p) for p in parts]
    except ValueError:
        values = []
    if not sep or not model.strip() or len(values) not in (2, 3):
        raise ConfigError(
            f"--price {text!r}: write MODEL=INPUT,CACHED,OUTPUT or MODEL=INPUT,OUTPUT "
            "(USD per million tokens), e.g. gpt-4o-mini=0.15,0.075,0.6."
        )
    return model.strip(), _price_of(model, tuple(values))


def is_local_url(base_url: str | None) -> bool:
    """True for a server on a loopback address (it costs nothing per token)."""
    if not base_url:
        return False
    host = (urlsplit(str(base_url)).hostname or "").lower()
    return host in _LOOPBACK or host.startswith("127.")


def base_url_of(provider: Any) -> str | None:
    """The base URL behind a provider adapter (None for in-process fakes)."""
    client = getattr(provider, "client", None)
    url = getattr(client, "base_url", None)
    return str(url) if url is not None else None


def resolve_price(
    model: str,
    base_url: str | None,
    prices: Mapping[str, Any] | PriceTable | None = None,
    *,
    token_capped: bool = False,
) -> Price | None:
    """The price to account `model` at.

    Order: a user price for the model; a loopback server (0); the shipped table (with
    $VAS_API_PRICES); none. No base URL (an in-process provider) without a user price costs 0.

    Args:
        model: the model name sent to the provider.
        base_url: the provider's base URL, or None.
        prices: user prices, on top of the shipped table.
        token_capped: a token cap guards the spend, so an unknown price is allowed (spend is
            then reported as unknown: None).

    Returns:
        The Price, or None for a hosted model with no known price under a token cap.

    Raises:
        ConfigError: a hosted model with no known price and no token cap.
    """
    user = prices if isinstance(prices, PriceTable) else PriceTable(prices) if prices else None
    if user is not None and (p := user.lookup(model)) is not None:
        return p
    if base_url is None or is_local_url(base_url):
        return LOCAL_PRICE
    p = default_prices().lookup(model)
    if p is not None:
        return p
    if token_capped:
        return None
    raise ConfigError(
        f"no price is known for model {model!r} at {base_url}, so a spend cap cannot be kept. "
        f"Give its price (prices={{{model!r}: (input, cached_input, output)}} in USD per million "
        "tokens, a $VAS_API_PRICES file, or vas batch --price MODEL=IN,CACHED,OUT), or cap the "
        "request in tokens (max_total_tokens=...)."
    )
