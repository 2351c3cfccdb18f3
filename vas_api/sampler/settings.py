"""Per-request VAS settings, validated once when a request is built (never halfway through)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from ..errors import CapabilityError, ConfigError
from ..types import ProviderProfile

__all__ = [
    "MODES",
    "RERANK_PICKS",
    "SEQUENCE_KEYS",
    "DEFAULT_K",
    "ModeChoice",
    "SamplerSettings",
    "choose_mode",
    "default_k",
    "resolve_mode",
]

MODES = ("auto", "speculative", "token", "block", "rerank")
RERANK_PICKS = ("sample", "argmax")
DEFAULT_K = 20
"""Candidates per position when the request does not say (the paper's authors use 20); capped
at what the endpoint returns (5 on OpenAI legacy completions)."""

# Block and rerank defaults. block_len / block_n were chosen on the TRAINING prompts
# (benchmarks/modes_tune.py -> benchmarks/results/modes_tune.json), never the held-out ones.
# rerank_n = 8 is not tuned: it matches the Best-of-8 bar the benchmarks compare against.
DEFAULT_BLOCK_LEN = 8
DEFAULT_BLOCK_N = 8
DEFAULT_RERANK_N = 8
SEQUENCE_KEYS = ("block_len", "block_n", "rerank_n", "rerank")
"""Request options of block and rerank mode (SamplerSettings fields of the same names)."""


@dataclass(frozen=True)
class SamplerSettings:
    """What one VAS generation does.

    Attributes:
        betas: one weight per value model; all zero means plain base sampling over the top k.
        k: candidates per position (the paper's authors use 20).
        temperature: applied to the VAS target (never to speculative drafts); 0 is greedy.
        top_p: nucleus cut on the VAS target.
        max_tokens: generated tokens, counted in the provider's tokens.
        stop: strings that end the response (not included in it).
        seed: seeds the sampler's own random draws (same seed + same provider answers = same
            output).
        draft_min, draft_max: bounds on the speculative draft length m.
        restrict_top_k: draft with the server's top_k = k (every drafted token is then a
            candidate). None = whenever the provider accepts a top_k parameter.
        block_len: block mode: tokens per block (L).
        block_n: block mode: candidate blocks sampled per step (n).
        rerank_n: rerank mode: whole responses sampled per choice (N).
        rerank: rerank mode: "sample" draws in proportion to exp(sum_i beta_i V_i) (importance
            resampling), "argmax" keeps the highest-valued response.
    """

    betas: tuple[float, ...] = ()
    k: int = 20
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int = 64
    stop: tuple[str, ...] = ()
    seed: int | None = None
    draft_min: int = 2
    draft_max: int = 64
    restrict_top_k: bool | None = None
    block_len: int = DEFAULT_BLOCK_LEN
    block_n: int = DEFAULT_BLOCK_N
    rerank_n: int = DEFAULT_RERANK_N
    rerank: str = "sample"

    def __post_init__(self) -> None:
        for i, b in enumerate(self.betas):
            if isinstance(b, bool) or not isinstance(b, int | float) or not math.isfinite(b):
                raise ConfigError(f"beta[{i}] = {b!r}: each beta must be a finite number (0 = base model).")
        if not isinstance(self.k, int) or self.k < 1:
            raise ConfigError(f"k = {self.k!r}: k must be a positive integer (20 is typical).")
        if not math.isfinite(self.temperature) or self.temperature < 0:
            raise ConfigError(f"temperature = {self.temperature!r}: use a finite number >= 0.")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"top_p = {self.top_p!r}: use a number in (0, 1].")
        if not isinstance(self.max_tokens, int) or self.max_tokens < 1:
            raise ConfigError(f"max_tokens = {self.max_tokens!r}: use a positive integer.")
        if any(not isinstance(s, str) or not s for s in self.stop):
            raise ConfigError(f"stop = {self.stop!r}: stop sequences must be non-empty strings.")
        if not 1 <= self.draft_min <= self.draft_max:
            raise ConfigError(
                f"draft_min = {self.draft_min}, draft_max = {self.draft_max}: need 1 <= min <= max."
            )
        for name in ("block_len", "block_n", "rerank_n"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"{name} = {v!r}: use a positive integer.")
        if self.rerank not in RERANK_PICKS:
            raise ConfigError(f"rerank = {self.rerank!r}: use one of {', '.join(RERANK_PICKS)}.")

    @property
    def steered(self) -> bool:
        """True when any value model has a non-zero beta (otherwise no value scoring runs)."""
        return any(b != 0 for b in self.betas)


@dataclass(frozen=True)
class ModeChoice:
    """The mode a request runs in, and why (the report carries both).

    Attributes:
        mode: "speculative", "token", "block" or "rerank".
        reason: one sentence: what the endpoint allows and what was asked.
        k: candidates per position (token and speculative modes; the endpoint's cap applied
            when the request did not set k).
    """

    mode: str
    reason: str
    k: int


_WHY = {
    "speculative": "it returns top-k logprobs and continues a partial response",
    "token": "it returns top-k logprobs and continues a partial response",
    "block": "it continues a partial response but returns no logprobs",
    "rerank": "it cannot continue a partial response",
}


def default_k(profile: ProviderProfile) -> int:
    """DEFAULT_K, or the endpoint's maximum top-k when that is smaller."""
    return DEFAULT_K if profile.max_top_k is None else max(1, min(DEFAULT_K, profile.max_top_k))


def choose_mode(mode: str, profile: ProviderProfile, k: int | None = None) -> ModeChoice:
    """The concrete mode for a request, or a CapabilityError now (before any call).

    `auto` takes the best mode the endpoint allows: speculative (token-level VAS, exact) over
    block over rerank (`ProviderProfile.modes()` lists them best first).

    Args:
        mode: "auto", "speculative", "token", "block" or "rerank".
        profile: the provider's capability profile.
        k: candidates per position the user asked for; None = the endpoint's default
            (`default_k`).

    Raises:
        ConfigError: unknown mode, or k not a positive integer.
        CapabilityError: the endpoint cannot run the mode (the message names the modes that
            would work), or cannot return the k the user asked for.
    """
    if mode not in MODES:
        raise ConfigError(f"mode = {mode!r} is not a VAS mode; use one of {', '.join(MODES)}.")
    if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 1):
        raise ConfigError(f"k = {k!r}: k must be a positive integer (20 is typical).")
    workable = profile.modes()
    if mode == "auto":
        chosen = workable[0]
        reason = f"auto: {chosen}, the best mode {profile.name} allows: {_WHY[chosen]}"
    elif mode not in workable:
        raise CapabilityError(
            f"{profile.name} cannot run mode {mode!r}: {_cannot(mode, profile)}.",
            workable_modes=workable,
        )
    else:
        chosen, reason = mode, f"{mode}: asked for by the request"
    token_level = chosen in ("speculative", "token")
    if k is None:
        k = default_k(profile)
    elif token_level and profile.max_top_k is not None and k > profile.max_top_k:
        raise CapabilityError(
            f"k = {k} but {profile.name} returns at most {profile.max_top_k} logprobs per position; "
            f"pass k <= {profile.max_top_k} (or leave k unset to use the endpoint's maximum)."
        )
    return ModeChoice(chosen, reason, k)


def _cannot(mode: str, profile: ProviderProfile) -> str:
    if mode == "speculative" and profile.continuation != "none" and profile.logprob_shape != "none":
        return ("speculative drafts must follow the reported logprobs, and this server ignores "
                "the sampler options that make them (neutral_sampling=False); token mode works")
    if mode in ("speculative", "token"):
        if profile.continuation == "none":
            return "token-level VAS needs continuing a partial response, which it cannot do"
        return "token-level VAS needs top-k logprobs, which it does not return"
    return "block mode needs continuing a partial response, which it cannot do"


def resolve_mode(mode: str, profile: ProviderProfile, k: int | None = None) -> str:
    """The concrete mode name for a request (see `choose_mode`, which also gives the reason).

    Raises:
        ConfigError, CapabilityError: as `choose_mode`.
    """
    return choose_mode(mode, profile, k).mode


def as_tuple(value: float | Sequence[float] | None) -> tuple[float, ...]:
    """A beta or list of betas as a tuple."""
    if value is None:
        return ()
    if isinstance(value, int | float):
        return (value,)
    return tuple(value)
