"""Keep API keys out of messages, reprs and logs.

A key can hide in a base URL (``http://user:KEY@host/v1?api-key=KEY``), so every URL vas-api
prints goes through `redact_url`; `redact_text` removes known secrets from any other text.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

__all__ = ["redact_url", "redact_text", "redact_urls_in", "client_secrets", "install_log_redaction"]

MASK = "***"


def redact_url(url: object) -> str:
    """`url` with its userinfo and every query value masked (the query names stay).

    ``http://user:KEY@host:8000/v1?api-key=KEY&x=1`` -> ``http://***@host:8000/v1?api-key=***&x=***``.
    Text that does not parse as a URL is returned with nothing but its scheme-less form kept.
    """
    text = str(url)
    try:
        parts = urlsplit(text)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return MASK
    netloc = parts.netloc
    if "@" in netloc:
        netloc = f"{MASK}@{host}{'' if port is None else f':{port}'}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode([(k, MASK) for k, _ in pairs], safe="*") if pairs else MASK
    fragment = MASK if parts.fragment else ""
    return urlunsplit((parts.scheme, netloc, parts.path, query, fragment))


def redact_text(text: str, secrets: Iterable[str | None]) -> str:
    """`text` with every secret of at least 4 characters replaced by ``***``."""
    for secret in sorted({s for s in secrets if s and len(s) >= 4}, key=len, reverse=True):
        text = text.replace(secret, MASK)
    return text


def client_secrets(client: object) -> list[str]:
    """The strings of an SDK client that must never be printed: its API key, and the userinfo
    and query values of its base URL."""
    out: list[str] = []
    key = getattr(client, "api_key", None)
    if isinstance(key, str):
        out.append(key)
    url = str(getattr(client, "base_url", "") or "")
    try:
        parts = urlsplit(url)
        out += [p for p in (parts.username, parts.password) if p]
        out += [v for _, v in parse_qsl(parts.query)]
    except ValueError:
        pass
    return out


_URL = re.compile(r"[a-zA-Z][a-zA-Z0-9+.-]*://[^\s\"'<>]+")


def redact_urls_in(text: str) -> str:
    """`text` with every URL in it passed through `redact_url` (URLs without userinfo,
    query or fragment come out unchanged)."""

    def one(match: re.Match[str]) -> str:
        url = match.group(0)
        if "@" not in url and "?" not in url and "#" not in url:
            return url
        return redact_url(url)

    return _URL.sub(one, text)


class _RedactingFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a broken record is not ours to fix
            return True
        clean = redact_urls_in(message)
        if clean != message:
            record.msg, record.args = clean, None
        return True


_HTTP_LOGGERS = ("httpx", "httpx2", "httpcore", "httpcore2", "openai", "openai._base_client",
                 "anthropic", "anthropic._base_client")
_FILTER = _RedactingFilter()


def install_log_redaction() -> None:
    """Mask credentials in the URLs the HTTP stack logs.

    httpx logs every request's full URL at INFO ("HTTP Request: GET http://user:KEY@host/...");
    with a key in the base URL that would print the key. The filter rewrites only the URLs in
    those loggers' own records; it is added once (idempotent).
    """
    for name in _HTTP_LOGGERS:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
