"""Keep API keys out of messages, reprs and logs.

A key can hide in a base URL (``http://user:KEY@host/v1?api-key=KEY``), so every URL vas-api
prints goes through `redact_url`; `redact_text` removes known secrets from any other text.
"""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

__all__ = ["redact_url", "redact_text", "client_secrets"]

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
