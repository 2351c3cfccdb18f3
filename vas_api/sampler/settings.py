"""Per-request VAS settings, validated once when a request is built (never halfway through)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from ..errors import CapabilityError, ConfigError
from ..types import ProviderProfile

__all__ = ["MODES", "SamplerSettings", "resolve_mode"]

MODES = ("auto", "speculative", "token")
IMPLEMENTED = ("speculative", "token")  # block and rerank (DESIGN.md section 5) are not built yet


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

    @property
    def steered(self) -> bool:
        """True when any value model has a non-zero beta (otherwise no value scoring runs)."""
        return any(b != 0 for b in self.betas)


def resolve_mode(mode: str, profile: ProviderProfile, k: int) -> str:
    """The concrete mode ("speculative" or "token") for a request, or a CapabilityError now.

    Args:
        mode: "auto", "speculative" or "token".
        profile: the provider's capability profile.
        k: the requested number of candidates.

    Raises:
        ConfigError: unknown mode.
        CapabilityError: the provider cannot run the mode or return k candidates.
    """
    if mode not in MODES:
        raise ConfigError(f"mode = {mode!r} is not a VAS mode; use one of {', '.join(MODES)}.")
    workable = [m for m in profile.modes() if m in IMPLEMENTED]
    if not workable:
        why = "returns no logprobs" if profile.logprob_shape == "none" else "cannot continue a partial response"
        later = [m for m in profile.modes() if m not in IMPLEMENTED]
        raise CapabilityError(
            f"{profile.name} cannot run token-level VAS: it {why}. It could run the "
            f"{' or '.join(later)} mode, which vas-api does not implement yet; use an endpoint "
            "that returns top-k logprobs and continues partial responses (a completions endpoint, "
            "vLLM, llama.cpp, Together, Fireworks, DeepSeek)."
        )
    if profile.max_top_k is not None and k > profile.max_top_k:
        raise CapabilityError(
            f"k = {k} but {profile.name} returns at most {profile.max_top_k} logprobs per position; "
            f"pass k <= {profile.max_top_k}."
        )
    if mode == "auto":
        return workable[0]
    if mode not in workable:
        raise CapabilityError(f"{profile.name} cannot run mode {mode!r}.", workable_modes=workable)
    return mode


def as_tuple(value: float | Sequence[float] | None) -> tuple[float, ...]:
    """A beta or list of betas as a tuple."""
    if value is None:
        return ()
    if isinstance(value, int | float):
        return (value,)
    return tuple(value)
