"""Tokenizing text for the value model, and re-tokenizing only the end of a growing prefix.

The value model scores text, so every path (full recompute, cached candidates, drafts, training)
must turn a text into exactly the same ids: `TextEncoder.encode`. Tokens merge across a join
("hel" + "lo" is one token), so the ids of prefix + candidate are not ids(prefix) + ids(candidate).
`PrefixTokens` keeps the ids of a prefix up to a *split point* s, a place where
ids(text) == ids(text[:s]) + ids(text[s:]) for text and every extension of it, and re-tokenizes
only text[s:] (a word or two) together with each candidate.

Split points are single spaces between two non-space characters: byte-level BPE pre-tokenizers
(GPT-2, Llama-3, SmolLM2, Qwen) never let a pre-token cross such a space from the left, and BPE
never merges across pre-tokens, so appending text cannot change the ids before it. Starts of
special (added) tokens are split points too, as the tokenizer cuts them out first. Every new
split point is also checked on the text at hand (tokenizers that add a prefix space, such as
the old Llama SentencePiece ones, fail the check and simply keep a longer tail: slower, exact).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from transformers import PreTrainedTokenizerBase

from vas_api.errors import ValueModelError
from vas_api.types import END_OF_TEXT

__all__ = ["TextEncoder", "PrefixTokens", "common_prefix_len"]

# Re-tokenize at most about this many characters with every candidate before moving the split.
_MAX_TAIL_CHARS = 48
# Candidate split points tried (latest first) when moving it; more only cost time.
_MAX_SPLIT_TRIES = 4


def common_prefix_len(a: Sequence, b: Sequence) -> int:
    """Length of the longest common prefix of two strings or lists (C-speed slice compares)."""
    n = min(len(a), len(b))
    if a[:n] == b[:n]:
        return n
    lo, hi = 0, n  # a[:lo] == b[:lo], a[:hi] != b[:hi]
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if a[lo:mid] == b[lo:mid]:
            lo = mid
        else:
            hi = mid
    return lo


class TextEncoder:
    """The one text -> ids mapping of a value model.

    ids(text) = the special tokens the tokenizer puts in front of every text (e.g. a BOS; none
    for SmolLM2), then the text's own tokens. Trailing specials (an EOS some tokenizers append)
    are left out: V scores an unfinished prefix.

    A text that ends with `vas_api.types.END_OF_TEXT` (a finished response) is the text's ids
    followed by the end id (`end_id()`, the tokenizer's EOS for a model with an end state); the
    marker itself is never tokenized. The marker anywhere else, or with no end id, is refused.

    Args:
        tokenizer: the fast tokenizer.
        end_id: returns the id that ends a finished text, or None (no end state); asked only
            when a text carries the marker.
    """

    def __init__(
        self, tokenizer: PreTrainedTokenizerBase, end_id: Callable[[], int | None] | None = None
    ) -> None:
        self.tokenizer = tokenizer
        self._end_id = end_id
        self.lead: list[int] = _leading_special_ids(tokenizer)
        specials = set(getattr(tokenizer, "all_special_tokens", []) or [])
        specials.update(
            str(t) for t in (getattr(tokenizer, "added_tokens_decoder", {}) or {}).values()
        )
        self._specials = sorted(s for s in specials if s)

    def raw(self, texts: Sequence[str]) -> list[list[int]]:
        """Ids of each text without any added special tokens."""
        if not texts:
            return []
        ended = [self._ends(t) for t in texts]
        plain = [t[: -len(END_OF_TEXT)] if e else t for t, e in zip(texts, ended, strict=True)]
        ids = list(self.tokenizer(plain, add_special_tokens=False)["input_ids"])
        if not any(ended):
            return ids
        end = self._end()
        return [list(i) + [end] if e else i for i, e in zip(ids, ended, strict=True)]

    def _ends(self, text: str) -> bool:
        """Whether `text` is a finished one (ends with the marker, which occurs nowhere else)."""
        at = text.find(END_OF_TEXT)
        if at < 0:
            return False
        if at != len(text) - len(END_OF_TEXT):
            raise ValueModelError(
                "a text holds the end-of-text marker (vas_api.END_OF_TEXT) before its end; "
                "the marker may only end a finished text."
            )
        return True

    def _end(self) -> int:
        end = self._end_id() if self._end_id is not None else None
        if end is None:
            raise ValueModelError(
                "a text ends with the end-of-text marker (vas_api.END_OF_TEXT) but this value "
                "model has no end state (trained without end_state); score the text without it."
            )
        return int(end)

    def encode(self, text: str) -> list[int]:
        """ids(text): lead specials + the text's tokens."""
        return self.lead + self.raw([text])[0]

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """ids(text) for each text."""
        return [self.lead + ids for ids in self.raw(texts)]

    def split_points(self, text: str, lo: int, hi: int) -> list[tuple[int, int]]:
        """Candidate split points in (lo, hi), latest first, at most _MAX_SPLIT_TRIES.

        Returns:
            (s, guard) pairs: the split at s holds for any text that keeps text[:s + guard]
            (the space and the character after it, or the whole special token).
        """
        found: dict[int, int] = {}
        s = hi
        while len(found) < _MAX_SPLIT_TRIES:
            s = text.rfind(" ", lo + 1, s)
            if s <= lo:
                break
            nxt = text[s + 1 : s + 2]
            if nxt and not nxt.isspace() and not text[s - 1].isspace():
                found[s] = 2
        for tok in self._specials:
            s = text.rfind(tok, lo + 1, hi)
            if s > lo:
                found[s] = max(found.get(s, 0), len(tok))
        return sorted(found.items(), reverse=True)[:_MAX_SPLIT_TRIES]


def _leading_special_ids(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """The special ids the tokenizer adds in front of any text (found by comparing encodings)."""
    probe = "a b"
    with_sp = list(tokenizer(probe, add_special_tokens=True)["input_ids"])
    without = list(tokenizer(probe, add_special_tokens=False)["input_ids"])
    for i in range(len(with_sp) - len(without) + 1):
        if with_sp[i : i + len(without)] == without:
            return with_sp[:i]
    return []


class PrefixTokens:
    """The ids of a growing prefix, kept up to a verified split point.

    `update(text)` returns (head_ids, tail): ids(text + x) == head_ids + raw(tail + x) for every
    string x. Unrelated texts roll back to the latest split point they share (or the start).
    """

    def __init__(self, encoder: TextEncoder) -> None:
        self.encoder = encoder
        self.text = ""
        # (char position s, guard, number of ids of text[:s] including lead), increasing in s;
        # the split stays valid while text[:s + guard] is unchanged. The start never moves.
        self._splits: list[tuple[int, int, int]] = [(0, 0, len(encoder.lead))]
        self.head_ids: list[int] = list(encoder.lead)

    @property
    def head_end(self) -> int:
        """The current split point: text[:head_end] is tokenized as head_ids."""
        return self._splits[-1][0]

    @property
    def fixed_end(self) -> int:
        """A new text reuses head_ids only if it keeps text[:fixed_end] (split + its guard)."""
        return sum(self._splits[-1][:2])

    def update(self, text: str) -> tuple[list[int], str]:
        """Make `text` the prefix; return (head_ids, tail) with ids(text) = head_ids + raw(tail).

        Args:
            text: the new prefix.

        Returns:
            head_ids (do not mutate) and the tail string text[head_end:].
        """
        common = common_prefix_len(self.text, text)
        if self.fixed_end > common:
            # The text changed at or before the split: fall back to the latest split whose
            # guarded text it still shares.
            while self.fixed_end > common:
                self._splits.pop()
            del self.head_ids[self._splits[-1][2] :]
        self.text = text
        if len(text) - self.head_end > _MAX_TAIL_CHARS:
            self._advance()
        return self.head_ids, text[self.head_end :]

    def _advance(self) -> None:
        """Move the split point close to the end of self.text, checking it on the text."""
        start, text = self.head_end, self.text
        points = self.encoder.split_points(text, start, len(text))
        if not points:
            return
        tail = text[start:]
        whole = self.encoder.raw([tail])[0]
        for s, guard in points:
            left, right = self.encoder.raw([text[start:s], text[s:]])
            if left + right == whole:
                self.head_ids.extend(left)
                self._splits.append((s, guard, len(self.head_ids)))
                return
