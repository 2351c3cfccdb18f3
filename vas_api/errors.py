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
    "MalformedResponseError",
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
    """The provider answered with something vas-api cannot use.

    An error that came from the provider's SDK is raised as a class that subclasses both this
    and the SDK's own exception (see `sdk_error`), so ``except openai.RateLimitError`` still
    matches and ``status_code``, ``response``, ``body`` and the headers (Retry-After) stay.

    Attributes:
        partial: what the generation had produced when it failed (a
            `vas_api.sampler.run.PartialOutput`: text and committed tokens per choice, the
            VASReport so far), or None outside a generation.
        usage: tokens billed by the failed call's attempts (a `vas_api.Usage`; attempts whose
            body could not be read count as calls with unknown tokens), or None.
        attempts: how many times the failed call was tried (1 + retries).
        sdk_error: the SDK's original exception, when there was one (also ``__cause__``).
    """

    partial: Any = None
    usage: Any = None
    attempts: int = 1
    sdk_error: BaseException | None = None


class ProviderConnectionError(ProviderError):
    """The provider could not be reached (wrong base URL, server not running, network)."""


class MalformedResponseError(ProviderError):
    """The provider answered 200 with a body that is not the JSON it should be (truncated,
    cut off by a proxy, not JSON at all), on every attempt."""


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


_TWINS: dict[tuple[type, type], type] = {}


def sdk_error(
    exc: BaseException,
    message: str,
    *,
    base: type[ProviderError] = ProviderError,
    **attrs: Any,
) -> ProviderError:
    """`exc` (an openai or anthropic SDK exception) re-raised as a VAS error that is *also* an
    instance of the SDK's class: a class subclassing both `base` and ``type(exc)``.

    Every attribute of the SDK's exception (``status_code``, ``response``, ``body``,
    ``request_id``, ...) is kept; the message becomes `message` (which says what to change).

    Args:
        exc: the SDK's exception.
        message: the new message (must hold no secret: redact URLs before).
        base: the VAS class to mix in (ProviderError or a subclass).
        **attrs: extra attributes (partial, usage, attempts, available, ...).

    Returns:
        The new exception (raise it ``from exc``).
    """
    sdk_cls = type(exc)
    if issubclass(sdk_cls, VASError):  # already one of ours
        err = exc
    else:
        key = (base, sdk_cls)
        cls = _TWINS.get(key)
        if cls is None:
            cls = type(
                sdk_cls.__name__, (base, sdk_cls),
                {"__module__": __name__, "__doc__": f"{sdk_cls.__doc__ or sdk_cls.__name__} (raised by vas-api; also a {base.__name__})"},
            )
            _TWINS[key] = cls
        err = cls.__new__(cls, message)
        err.__dict__.update(getattr(exc, "__dict__", {}))
        err.sdk_error = exc
    Exception.__init__(err, message)
    if hasattr(err, "message"):
        err.message = message
    for name, value in attrs.items():
        setattr(err, name, value)
    return err  # type: ignore[return-value]
