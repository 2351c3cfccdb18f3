"""Parse the two logprob shapes of OpenAI-style APIs into `Position`s (pure functions, no I/O).

Shapes (DESIGN.md section 6):
- legacy (/v1/completions): ``tokens``, ``token_logprobs``, ``top_logprobs`` (one dict per
  position, keyed by token *string*), ``text_offset``;
- chat (/v1/chat/completions): ``content: [{token, bytes, logprob, top_logprobs: [{token, bytes,
  logprob}]}]``; some servers (llama.cpp's llama-server) add an ``id``.

Rules applied to every position:
- sentinel values are dropped: OpenAI pads with -9999 for "not in the top 20"; any logprob
  <= -9999, NaN or +-inf counts as a sentinel;
- candidates whose raw bytes are identical are merged (logsumexp of their probabilities);
- the list is sorted by logprob, highest first, and cut to the top k (a server may add the
  sampled token as a k+1th entry); the sampled token is always kept in `Position.sampled`
  with its own logprob, even when it falls outside the top k;
- raw bytes come from, in order: a ``bytes`` array, a ``"bytes:\\xNN..."`` token string
  (tiktoken / OpenAI legacy style), the token text encoded as UTF-8. A token is never assumed
  to be valid text on its own.

What the llama-cpp-python server does (measured on 0.3.36, written down here because the parser
is shaped around it):
- it decodes every token with ``errors="ignore"``: special tokens (``<|im_end|>``,
  ``<|endoftext|>``) and tokens that hold part of a multi-byte UTF-8 character all become ``""``;
- its top_logprobs dict is keyed by that string, so all of them collide on the ``""`` key, which
  keeps the *position* of the highest-ranked one but the *value* of the lowest-ranked one inside
  the requested k (so the dict has fewer than k entries when a collision happened);
- a sampled end-of-sequence token is never reported: generation stops before the position is
  added (see `vas_api.providers.openai_wire` for how candidates calls still get the top k).
What llama.cpp's own server (llama-server) does (read in its tools/server source, seen on its
output): every entry, on /v1/completions too, has ``id``, ``token`` (the piece cut to its valid
UTF-8 prefix, so a byte fragment is ``""``) and ``bytes`` (the raw piece). But it adds an entry
only when its text is complete UTF-8: the tokens that hold the first bytes of a multi-byte
character get no entry at all, and the entry of the token that completes the character carries
the bytes of the whole character (e.g. b' \xf0\x9f\x9a\xa8', with the leading space), while
its id, logprob and candidates are those of the last token alone (continuation bytes such as
b'\x80', b'\x97'), in a context that holds the unreported tokens. Such a *merged* entry (its
sent bytes are not its own token's: the candidate with its id has other bytes, or its
candidates start mid-character) parses into a Position with no candidates and
``sampled=None``: unknown, so a draft ends cleanly before it and the sampler asks again from
there. Entries after it follow the whole character and are ordinary positions.

Fragments and end-of-sequence, whichever way a server spells them: with a ``bytes`` array a
fragment is its bytes (never text, never EOS) and an empty piece is a control token (EOS);
ids in `eos_token_ids` and strings in `special_tokens` are EOS; a token spelled U+FFFD with no
bytes array has lost its bytes and is dropped from the candidates (neither text nor EOS).

So an empty token string with no bytes array is read as an end-of-sequence candidate (``special=True``), except for
a *sampled* token that is followed by more positions: that one cannot have ended generation, so
it is a partial character whose bytes the server dropped. Its bytes are recovered from the
choice text and ``text_offset`` where possible (the run of partial tokens then carries the whole
character on its last token); when they cannot be recovered, `Position.sampled` is None.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from .types import Candidate, Position

__all__ = [
    "SENTINEL_LOGPROB",
    "DEFAULT_SPECIAL_TOKENS",
    "is_sentinel",
    "token_bytes",
    "merge_candidates",
    "parse_legacy",
    "parse_chat",
    "parse_logprobs",
]

SENTINEL_LOGPROB = -9999.0
"""OpenAI's "very unlikely / not in the top 20" filler value; anything at or below it is dropped."""

DEFAULT_SPECIAL_TOKENS: frozenset[str] = frozenset(
    {
        "<|im_end|>",
        "<|im_start|>",
        "<|endoftext|>",
        "<|start_header_id|>",
        "<start_of_turn>",
        "<|eot_id|>",
        "<|end_of_text|>",
        "<|end|>",
        "<|return|>",
        "<end_of_turn>",
        "</s>",
        "<eos>",
    }
)
"""End-of-turn and turn-start control strings of common chat models, used when a server spells
special tokens out as text (vLLM, llama-server, the exact local server). Either ends the
assistant's response. Providers add the chat template's eos_token and control tokens."""

_BYTES_PREFIX = "bytes:"
_HEX_ESCAPE = re.compile(r"\\x([0-9a-fA-F]{2})")


def is_sentinel(logprob: float | None) -> bool:
    """True when `logprob` carries no information (None, NaN, +-inf or <= -9999)."""
    if logprob is None:
        return True
    try:
        value = float(logprob)
    except (TypeError, ValueError):
        return True
    return not math.isfinite(value) or value <= SENTINEL_LOGPROB


def token_bytes(token: str, byte_values: Sequence[int] | None = None) -> bytes:
    """The raw bytes of one reported token.

    Args:
        token: the token string as the server sent it; ``"bytes:\\xe2\\x80"`` spells raw bytes
            as escapes (tiktoken / OpenAI legacy completions), anything else is UTF-8 text.
        byte_values: the chat shape's ``bytes`` array; when present it wins.

    Returns:
        The bytes, possibly an incomplete UTF-8 sequence. A token string that is U+FFFD with no
        byte array comes back as the replacement character's own bytes: its real bytes are lost.
    """
    if byte_values is not None:
        return bytes(int(b) & 0xFF for b in byte_values)
    if token.startswith(_BYTES_PREFIX):
        return _unescape_bytes(token[len(_BYTES_PREFIX) :])
    return token.encode("utf-8", errors="surrogatepass")


def _unescape_bytes(spelled: str) -> bytes:
    # "\xe2\x80" escapes, possibly mixed with plain characters ("bytes: \xe2" for a leading space).
    out = bytearray()
    pos = 0
    for match in _HEX_ESCAPE.finditer(spelled):
        out += spelled[pos : match.start()].encode("utf-8")
        out.append(int(match.group(1), 16))
        pos = match.end()
    out += spelled[pos:].encode("utf-8")
    return bytes(out)


def _logsumexp(a: float, b: float) -> float:
    hi, lo = (a, b) if a >= b else (b, a)
    return hi + math.log1p(math.exp(lo - hi))


def merge_candidates(entries: Iterable[Candidate], k: int | None = None) -> tuple[Candidate, ...]:
    """Drop sentinels, merge identical bytes (logsumexp), sort descending, keep the top k.

    Args:
        entries: reported candidates, in any order, possibly with duplicates and sentinels.
        k: keep at most this many; None keeps all.

    Returns:
        The merged candidates, highest logprob first (ties keep the server's order). A merged
        candidate is special when any of its parts was, and keeps an id only when all its parts
        had the same one.
    """
    merged: dict[bytes, Candidate] = {}
    for c in entries:
        if is_sentinel(c.logprob):
            continue
        prev = merged.get(c.raw)
        if prev is None:
            merged[c.raw] = c
        else:
            merged[c.raw] = Candidate(
                c.raw, _logsumexp(prev.logprob, c.logprob), prev.special or c.special,
                id=prev.id if prev.id == c.id else None,
            )
    ranked = sorted(merged.values(), key=lambda c: -c.logprob)
    return tuple(ranked if k is None else ranked[:k])


def _candidate(
    token: str,
    logprob: float,
    byte_values: Sequence[int] | None,
    specials: frozenset[str],
    token_id: Any = None,
    eos_ids: frozenset[int] = frozenset(),
) -> Candidate | None:
    """One reported candidate, or None when its bytes are lost (see the module docstring)."""
    tid = int(token_id) if isinstance(token_id, int) and not isinstance(token_id, bool) else None
    if token in specials or (tid is not None and tid in eos_ids):
        return Candidate(token.encode("utf-8"), float(logprob), special=True, id=tid)
    if byte_values is not None:
        raw = token_bytes(token, byte_values)
        # A real byte array: a fragment has at least one byte; an empty piece is a control
        # token printed as nothing.
        return Candidate(raw, float(logprob), special=(raw == b""), id=tid)
    if "\ufffd" in token:
        return None  # decoded alone, a fragment reads as U+FFFD: its bytes are gone
    raw = token_bytes(token, None)
    if raw == b"" and tid is not None and eos_ids:
        return None  # the server says which ids end the response, and this is not one
    # An empty token is either an end-of-sequence token printed as nothing, or a partial
    # character the server dropped; as a candidate only the first reading makes sense (choosing
    # "nothing" would not move the response forward), see the module docstring.
    return Candidate(raw, float(logprob), special=(raw == b""), id=tid)


def _field(obj: Any, name: str, default: Any = None) -> Any:
    """Read `name` from a dict or from an SDK model object (pydantic, extra fields kept)."""
    if isinstance(obj, Mapping):
        return obj.get(name, default)
    value = getattr(obj, name, default)
    if value is default and hasattr(obj, "model_extra"):
        extra = obj.model_extra or {}
        return extra.get(name, default)
    return value


def _sampled_logprob(value: Any) -> float:
    # The sampled token keeps its own logprob; -inf when the server gave none usable.
    return float("-inf") if is_sentinel(value) else float(value)


def parse_legacy(
    logprobs: Any,
    *,
    k: int | None = None,
    text: str | None = None,
    finish_reason: str | None = None,
    special_tokens: Iterable[str] = DEFAULT_SPECIAL_TOKENS,
) -> list[Position]:
    """Parse the completions shape (``tokens``, ``token_logprobs``, ``top_logprobs``, ``text_offset``).

    Args:
        logprobs: ``choice.logprobs`` as a dict or an ``openai.types.completion_choice.Logprobs``.
        k: keep the top k candidates per position (None keeps all the server sent).
        text: ``choice.text``; with ``text_offset`` it recovers the bytes of sampled tokens the
            server printed as ``""`` or U+FFFD.
        finish_reason: ``choice.finish_reason``; an empty *last* sampled token reads as
            end-of-sequence only when it is "stop".
        special_tokens: token strings that are end-of-sequence / control tokens.

    Returns:
        One Position per reported token, in order; [] when the server reported none.
    """
    if logprobs is None:
        return []
    specials = frozenset(special_tokens)
    tokens: list[str] = list(_field(logprobs, "tokens") or [])
    token_lps: list[Any] = list(_field(logprobs, "token_logprobs") or [])
    tops: list[Any] = list(_field(logprobs, "top_logprobs") or [])
    offsets: list[int] = list(_field(logprobs, "text_offset") or [])
    recovered = _recover_sampled_text(tokens, offsets, text)

    positions = []
    n = len(tokens)
    for i, token in enumerate(tokens):
        top = tops[i] if i < len(tops) else None
        found = [
            _candidate(str(t), lp, None, specials)
            for t, lp in (top.items() if isinstance(top, Mapping) else [])
            if not is_sentinel(lp)
        ]
        entries = [c for c in found if c is not None]
        lp = token_lps[i] if i < len(token_lps) else None
        if is_sentinel(lp) and isinstance(top, Mapping) and token in top:
            lp = top[token]
        sampled = _sampled(token, lp, None, specials, i, n, finish_reason, recovered[i])
        positions.append(Position(merge_candidates(entries, k), sampled))
    return positions


def _sampled(
    token: str,
    logprob: Any,
    byte_values: Sequence[int] | None,
    specials: frozenset[str],
    index: int,
    count: int,
    finish_reason: str | None,
    recovered: str | None,
) -> Candidate | None:
    lp = _sampled_logprob(logprob)
    if token in specials:
        return Candidate(token.encode("utf-8"), lp, special=True)
    raw = token_bytes(token, byte_values)
    if raw == b"" and index == count - 1 and finish_reason == "stop":
        # vLLM-style servers report the end-of-sequence token as the last position.
        return Candidate(b"", lp, special=True)
    lossy = raw == b"" or (byte_values is None and "\ufffd" in token)
    if not lossy:
        return Candidate(raw, lp)
    if recovered:
        return Candidate(recovered.encode("utf-8"), lp)
    # Bytes the server dropped and the text cannot give back: say "unknown", not b"".
    return None


def _recover_sampled_text(
    tokens: Sequence[str], offsets: Sequence[int], text: str | None
) -> list[str | None]:
    """Per position, the slice of `text` between its text_offset and the next one.

    Servers that drop partial UTF-8 bytes still put whole characters into the choice text and
    count offsets in characters; the slice for the token that completes a character holds that
    character. Returns None entries when the offsets cannot be trusted.
    """
    none: list[str | None] = [None] * len(tokens)
    if text is None or len(offsets) != len(tokens) or not tokens:
        return none
    base = offsets[0]
    rel = [o - base for o in offsets]
    if any(b < a for a, b in zip(rel, rel[1:], strict=False)) or rel[-1] > len(text):
        return none
    ends = rel[1:] + [len(text)]
    return [text[a:b] for a, b in zip(rel, ends, strict=True)]


def parse_chat(
    content: Sequence[Any] | None,
    *,
    k: int | None = None,
    finish_reason: str | None = None,
    special_tokens: Iterable[str] = DEFAULT_SPECIAL_TOKENS,
    eos_token_ids: Iterable[int] = (),
) -> list[Position]:
    """Parse the chat shape: ``[{id?, token, bytes, logprob, top_logprobs: [{id?, token, bytes,
    logprob}]}]`` (chat completions everywhere; llama-server's /v1/completions too).

    Args:
        content: ``choice.logprobs.content`` (dicts or ``ChatCompletionTokenLogprob`` objects).
        k: keep the top k candidates per position (None keeps all the server sent).
        finish_reason: ``choice.finish_reason`` (an empty last token reads as end-of-sequence
            only when it is "stop").
        special_tokens: token strings that are end-of-sequence / control tokens.
        eos_token_ids: token ids that end the response (llama-server: from /props + /tokenize
            or the GGUF metadata).

    Returns:
        One Position per reported token, in order; [] when there are none. Each position's
        sampled token carries its own token's bytes and id (see the module docstring for
        llama-server's merged characters); None where they cannot be known.
    """
    specials = frozenset(special_tokens)
    eos_ids = frozenset(int(i) for i in eos_token_ids)
    items = list(content or [])
    positions = []
    for i, item in enumerate(items):
        entries = []
        for top in _field(item, "top_logprobs") or []:
            lp = _field(top, "logprob")
            if is_sentinel(lp):
                continue
            cand = _candidate(
                str(_field(top, "token", "")), lp, _field(top, "bytes"), specials,
                _field(top, "id"), eos_ids,
            )
            if cand is not None:
                entries.append(cand)
        token = str(_field(item, "token", ""))
        sent = _field(item, "bytes")
        token_id = _field(item, "id")
        if _merged(sent, token_id, entries):
            positions.append(Position((), None))  # see the module docstring
            continue
        sampled = _sampled(
            token, _field(item, "logprob"), sent, specials, i, len(items), finish_reason, None,
        )
        if sampled is not None and isinstance(token_id, int) and not isinstance(token_id, bool):
            special = sampled.special or token_id in eos_ids
            sampled = Candidate(sampled.raw, sampled.logprob, special, id=token_id)
        positions.append(Position(merge_candidates(entries, k), sampled))
    return positions


def _merged(sent: Sequence[int] | None, token_id: Any, entries: Sequence[Candidate]) -> bool:
    """True for a llama-server entry that carries a whole character completed by its token."""
    if sent is None:
        return False
    raw = bytes(int(b) & 0xFF for b in sent)
    if token_id is not None:
        for c in entries:
            if c.id == token_id and not c.special:
                return c.raw != raw
    # Its own candidate is not listed: merged when it sent a whole multi-byte character while
    # its candidates are continuation bytes (the context is mid-character). A server that
    # reports each token's own bytes sends a fragment there instead, which does not decode.
    try:
        whole = any(b >= 0x80 for b in raw) and bool(raw.decode("utf-8"))
    except UnicodeDecodeError:
        return False
    top = next((c for c in entries if not c.special), None)
    return whole and top is not None and bool(top.raw) and 0x80 <= top.raw[0] < 0xC0


def parse_logprobs(
    logprobs: Any,
    *,
    k: int | None = None,
    text: str | None = None,
    finish_reason: str | None = None,
    special_tokens: Iterable[str] = DEFAULT_SPECIAL_TOKENS,
    eos_token_ids: Iterable[int] = (),
) -> list[Position]:
    """Parse ``choice.logprobs`` of either shape, telling them apart by their fields.

    Args:
        logprobs: a legacy ``Logprobs`` / dict with ``tokens``, or a chat ``ChoiceLogprobs`` /
            dict with ``content``, or None.
        k, text, finish_reason, special_tokens: as in `parse_legacy` / `parse_chat`.
        eos_token_ids: as in `parse_chat` (the legacy shape carries no ids).

    Returns:
        The positions; [] when `logprobs` is None or empty.
    """
    if logprobs is None:
        return []
    if _field(logprobs, "content") is not None:
        return parse_chat(
            _field(logprobs, "content"), k=k, finish_reason=finish_reason,
            special_tokens=special_tokens, eos_token_ids=eos_token_ids,
        )
    return parse_legacy(
        logprobs, k=k, text=text, finish_reason=finish_reason, special_tokens=special_tokens
    )
