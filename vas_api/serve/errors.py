"""Errors in the OpenAI error format, with the status an OpenAI client expects.

    {"error": {"message": str, "type": str, "param": str | null, "code": str | null}}

Every message goes through the app's redaction (the upstream key and the proxy keys are masked,
credentials in URLs too) before it leaves the server.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..errors import (
    BudgetExceededError,
    CapabilityError,
    ConfigError,
    ModelNotFoundError,
    ProviderConnectionError,
    ProviderError,
    VASError,
)

__all__ = ["APIError", "error_body", "from_exception"]


@dataclass
class APIError(Exception):
    """An error the server answers with: HTTP status plus the OpenAI error fields."""

    status: int
    message: str
    type: str = "invalid_request_error"
    param: str | None = None
    code: str | None = None

    def __str__(self) -> str:
        return self.message

    def body(self, redact: Callable[[str], str] = lambda s: s) -> dict[str, Any]:
        """The JSON body, message redacted."""
        return error_body(redact(self.message), self.type, self.param, self.code)


def error_body(message: str, type_: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    """``{"error": {...}}`` as OpenAI sends it."""
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def from_exception(exc: BaseException) -> APIError:
    """The API error for an exception raised while serving a request.

    Budget caps -> 429 insufficient_quota; bad options -> 400; an upstream that cannot be
    reached -> 502; an upstream HTTP error keeps its status, except that the upstream refusing
    the *server's* key (401/403) and upstream 5xx are 502 (the client's request is not at fault).
    """
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, BudgetExceededError):
        return APIError(429, str(exc), "insufficient_quota", None, "insufficient_quota")
    if isinstance(exc, ModelNotFoundError):
        return APIError(404, str(exc), "invalid_request_error", "model", "model_not_found")
    if isinstance(exc, ProviderConnectionError):
        return APIError(502, f"the upstream could not be reached: {exc}", "upstream_error", None, "upstream_unreachable")
    if isinstance(exc, ProviderError):
        status = getattr(exc, "status_code", None)
        if isinstance(status, int) and 400 <= status < 500 and status not in (401, 403):
            return APIError(status, f"the upstream refused the request: {exc}", "upstream_error", None, None)
        return APIError(502, f"the upstream failed: {exc}", "upstream_error", None, "upstream_error")
    if isinstance(exc, ConfigError | CapabilityError):
        return APIError(400, str(exc), "invalid_request_error")
    if isinstance(exc, VASError):
        return APIError(500, str(exc), "server_error")
    status = getattr(exc, "status_code", None)  # an SDK error that was not translated
    if isinstance(status, int):
        return from_exception(ProviderError(str(exc))) if status >= 500 or status in (401, 403) else \
            APIError(status, f"the upstream refused the request: {exc}", "upstream_error")
    name = type(exc).__name__
    if name in ("APIConnectionError", "APITimeoutError", "ConnectError", "ConnectTimeout"):
        return APIError(502, f"the upstream could not be reached ({name}).", "upstream_error", None, "upstream_unreachable")
    return APIError(500, f"internal error ({name}); see the server log.", "server_error")
