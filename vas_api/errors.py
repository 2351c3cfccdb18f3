"""One error tree for everything vas-api raises on purpose.

Every message says what went wrong *and* what to change. Callers can catch `VASError` for all
of them, or a subclass for one kind.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "VASError",
    "ConfigError",
    "CapabilityError",
    "ProviderError",
    "ProviderConnectionError",
    "ModelNotFoundError",
    "NoLogprobsError",
    "BudgetExceededError",
    "ValueModelError",
    "CheckpointError",
    "DataError",
    "RewardError",
    "LocalServerError",
]


class VASError(Exception):
    """Base class of every error vas-api raises on purpose."""


class ConfigError(VASError, ValueError):
    """A setting or argument is invalid (beta not finite, unknown mode, empty prompt, ...)."""


class CapabilityError(VASError):
    """The provider cannot do what the request asks (a mode, a k, continuation).

    Attributes:
        workable_modes: the VAS modes this provider *can* run, best first.
    """

    def __init__(self, message: str, *, workable_modes: list[str] | None = None) -> None:
        self.workable_modes = list(workable_modes or [])
        if self.workable_modes:
            message = f"{message} Modes this provider supports: {', '.join(self.workable_modes)}."
        super().__init__(message)


class ProviderError(VASError):
    """The provider answered with something vas-api cannot use."""


class ProviderConnectionError(ProviderError):
    """The provider could not be reached (wrong base URL, server not running, network)."""


class ModelNotFoundError(ProviderError):
    """The server does not serve the model that was asked for."""

    def __init__(self, message: str, *, available: list[str] | None = None) -> None:
        self.available = list(available or [])
        if self.available:
            message = f"{message} Models this server has: {', '.join(self.available)}."
        super().__init__(message)


class NoLogprobsError(ProviderError, CapabilityError):
    """The provider returned no logprobs, so token and speculative modes cannot run."""


class BudgetExceededError(VASError):
    """A cost cap was reached. Nothing already produced is lost: see `partial`.

    Attributes:
        spent: money (or tokens, see `unit`) spent when the cap was hit.
        limit: the cap.
        unit: "usd" or "tokens".
        partial: whatever output was produced before the cap (text, rows written, ...).
    """

    def __init__(
        self, message: str, *, spent: float, limit: float, unit: str = "usd", partial: Any = None
    ) -> None:
        self.spent, self.limit, self.unit, self.partial = spent, limit, unit, partial
        super().__init__(message)


class ValueModelError(VASError):
    """A value model could not be built, loaded or run."""


class CheckpointError(ValueModelError):
    """A value-model checkpoint is missing, corrupt, or not in the safetensors format."""


class DataError(VASError):
    """A data file (JSONL of samples, prompt list) is missing or unusable."""


class RewardError(VASError):
    """A reward function failed or returned something that is not a finite number."""


class LocalServerError(VASError):
    """The embedded llama.cpp server could not be installed, started or reached."""
