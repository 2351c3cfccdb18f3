"""The `vas` report that rides along with every response: calls, billed tokens, time, and a
per-token trace of what the value model did. Renders as one line, a terminal table, or HTML
with tokens shaded by how much the value model moved them (notebooks)."""

from __future__ import annotations

import html
import math
import statistics
from dataclasses import dataclass, field
from typing import Any

from .budget import UsageRecord
from .pricing import Price
from .sampler.core import Step
from .types import Usage

__all__ = ["VASReport"]


@dataclass
class VASReport:
    """What one VAS request cost and did.

    Attributes:
        mode: "speculative", "token", "block" or "rerank".
        mode_reason: why that mode ran (what the endpoint allows, or that it was asked for).
        model: the base model.
        k: candidates per position.
        betas: one per value model.
        api_calls: calls to the provider.
        usage: billed tokens summed over every call (rejected drafts included).
        cost_usd: the spend, summed from `usage_records` at `price` (0 for a local server;
            None when the price is unknown and only a token cap applied).
        usage_records: the raw usage of every API call, in order (vas_api.budget.UsageRecord),
            including calls whose output was thrown away and failed calls that may have been
            billed (`estimated`); `recomputed_cost_usd()` re-derives the spend from them.
        price: the price the spend was computed at (vas_api.pricing.Price).
        stopped_by_budget: the message of the cap that stopped the request, or None.
        traces: one list of committed tokens per choice.
        drafted, tested, accepted, resampled: speculative counters (drafted tokens, drafted
            positions that went through the accept test, kept drafted tokens, tokens drawn
            from the residual after a rejection). Drafted tokens after a rejection are never
            tested: they are the wasted ones.
        time_api_s, time_value_s, time_total_s: wall time waiting for the API, in the value
            models, and in all.
        retries: calls asked again after a transport failure or a degraded answer (see
            `vas_api.retry`); their billed tokens are in `usage`.
        short_positions: positions whose answer held fewer than k candidates (VAS sampled
            over the ones reported).
        continuation: "token_ids" when every call continued the response with the token ids
            the base produced, "text" when (some of) it was sent as text for the server to
            re-tokenize (DESIGN.md section 7).
        pool_size: block / rerank: candidates drawn per choice (N for rerank, n per step for
            block); None in token-level modes.
        block_len: block mode's tokens per block (L).
        ess: block / rerank: effective sample size (sum w)^2 / sum w^2 of the weights, one per
            choice (block mode: the mean over its steps). N means the value model did not
            discriminate; 1 means one candidate took all the weight.
        blocks: block mode: blocks committed over all choices.

    In block and rerank modes a trace entry is a whole block or response (base logprob NaN),
    and `tokens` counts the billed completion tokens of every sampled candidate.
    """

    mode: str
    model: str
    k: int
    betas: tuple[float, ...]
    api_calls: int = 0
    usage: Usage = field(default_factory=Usage)
    cost_usd: float | None = 0.0
    usage_records: list[UsageRecord] = field(default_factory=list)
    price: Price | None = None
    stopped_by_budget: str | None = None
    traces: list[list[Step]] = field(default_factory=list)
    drafted: int = 0
    tested: int = 0
    accepted: int = 0
    resampled: int = 0
    time_api_s: float = 0.0
    time_value_s: float = 0.0
    time_total_s: float = 0.0
    retries: int = 0
    short_positions: int = 0
    continuation: str = "text"
    mode_reason: str = ""
    pool_size: int | None = None
    block_len: int | None = None
    ess: list[float] = field(default_factory=list)
    blocks: int = 0

    @property
    def tokens(self) -> int:
        """Generated tokens over all choices (block / rerank: billed completion tokens)."""
        if self.mode in ("block", "rerank"):
            return self.usage.completion_tokens
        return sum(len(t) for t in self.traces)

    def add_pool(self, sampler: Any) -> None:
        """Record a block or rerank sampler's pool size and effective sample size."""
        self.pool_size = sampler.pool_size
        ess = sampler.ess
        self.ess.append(float(statistics.fmean(ess)) if isinstance(ess, list) else float(ess))
        if getattr(sampler, "blocks", 0):
            self.blocks += sampler.blocks
            self.block_len = sampler.settings.block_len

    @property
    def wasted(self) -> int:
        """Drafted tokens that were thrown away."""
        return self.drafted - self.accepted

    @property
    def calls_per_token(self) -> float:
        return self.api_calls / self.tokens if self.tokens else math.nan

    @property
    def acceptance(self) -> float:
        """Accepted share of the drafted positions that were tested (speculative mode): the
        per-position acceptance rate alpha of speculative sampling."""
        return self.accepted / self.tested if self.tested else math.nan

    def recomputed_cost_usd(self) -> float | None:
        """The spend recomputed from the raw usage records at `price` (None: price unknown)."""
        if self.price is None:
            return None
        total = 0.0
        for r in self.usage_records:
            if r.estimated:
                total += self.price.worst_case(r.prompt_tokens, r.completion_tokens)
            else:
                total += self.price.cost(r.prompt_tokens, r.completion_tokens, r.cached_tokens)
        return total

    def summary(self) -> str:
        """One line: mode, tokens, calls, billed tokens, cost, time split."""
        parts = [
            f"{self.mode}{'' if self.pool_size else f' k={self.k}'} betas={list(self.betas)} continuation={self.continuation}",
            f"{self.tokens} tokens",
            f"{self.api_calls} API calls ({self.calls_per_token:.2f}/token)",
            f"billed {self.usage.prompt_tokens}+{self.usage.completion_tokens} tokens",
        ]
        if self.cost_usd:
            parts.append(f"${self.cost_usd:.6f}")
        if self.pool_size:
            ess = ", ".join(f"{e:.1f}" for e in self.ess)
            size = f"n={self.pool_size} blocks of L={self.block_len}, {self.blocks} kept" if self.blocks else f"N={self.pool_size}"
            parts.append(f"{size}, ESS {ess}")
        if self.stopped_by_budget:
            parts.append("stopped by budget")
        if self.drafted:
            parts.append(
                f"drafted {self.drafted}, accepted {self.accepted} of {self.tested} tested "
                f"({self.acceptance:.2f}), wasted {self.wasted}"
            )
        if self.retries:
            parts.append(f"{self.retries} retries")
        if self.short_positions:
            parts.append(f"{self.short_positions} positions with fewer than k={self.k} candidates")
        parts.append(
            f"{self.time_total_s:.2f}s (API {self.time_api_s:.2f}s, value {self.time_value_s:.2f}s)"
        )
        return "VASReport(" + "; ".join(parts) + ")"

    __repr__ = summary

    def table(self, choice: int = 0):  # -> rich.table.Table
        """The per-token trace of one choice as a rich Table (print it with rich)."""
        from rich.table import Table

        t = Table(title=self.summary(), title_justify="left")
        for col in ("#", "token", "base logprob", "value shift", "VAS prob", "source"):
            t.add_column(col, justify="right" if col not in ("token", "source") else "left")
        for i, s in enumerate(self.traces[choice] if self.traces else []):
            shade = "green" if s.shift > 0.5 else "red" if s.shift < -0.5 else ""
            token = "<end>" if s.special else repr(s.text)[1:-1]
            t.add_row(
                str(i), f"[{shade}]{token}[/]" if shade else token,
                f"{s.base_logprob:.2f}", f"{s.shift:+.2f}", f"{s.prob:.2f}", s.source,
            )
        return t

    def _repr_html_(self) -> str:
        """Tokens shaded by their value shift: green pushed up, red pushed down."""
        rows = []
        for trace in self.traces:
            spans = []
            for s in trace:
                alpha = min(1.0, abs(s.shift) / 2.0)
                rgb = "40,160,60" if s.shift >= 0 else "210,50,50"
                tip = f"base logprob {s.base_logprob:.2f}, shift {s.shift:+.2f}, prob {s.prob:.2f}, {s.source}"
                text = "&lt;end&gt;" if s.special else html.escape(s.text).replace("\n", "&#8629;<br>")
                spans.append(
                    f'<span title="{tip}" style="background:rgba({rgb},{alpha:.2f});'
                    f'border-radius:3px">{text}</span>'
                )
            rows.append(f'<div style="font-family:monospace;line-height:1.7">{"".join(spans)}</div>')
        return f"<div><b>{html.escape(self.summary())}</b>{''.join(rows)}</div>"
