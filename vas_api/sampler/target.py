"""The VAS target distribution over one position's candidates (DESIGN.md section 3), as pure
numpy functions:

    z(a) = l(a) + sum_i beta_i * (V_i(s + a) - mean over C of V_i(s + .))
    pi(a) = softmax(z / temperature), then top_p

Tokens outside the candidate set C cannot be chosen: the API never names them.

Byte fragments (a candidate whose bytes are not complete UTF-8 on its own, `Candidate.text` is
None) are defined precisely here, because both samplers must use the same target:

- The response is kept as bytes: the text the value models see is the longest complete UTF-8
  prefix of the committed bytes ("decoded text"); incomplete trailing bytes wait in `pending`.
  An option's text is what it adds to the decoded text: a whole token adds its text, a fragment
  that completes a character adds that character, a fragment that completes none adds "".
  So V(s + a) is V(prompt text + decoded text after a), for every kind of option.
- A fragment is never text on its own and never end-of-sequence: only `special` candidates end.
- With token-id continuation (`by_ids`: the next request sends the committed token ids) every
  candidate that carries an id is an option, fragments included: a run of fragments that
  completes a character is then a sequence of ordinary choices, each conditioned on the ids
  before it, exactly the base model's token-level process.
- With text continuation the next request is text, which cannot hold half a character, so a
  fragment is not an option (probability 0, like a token outside the top k), and a candidate
  without an id can only be committed while nothing is pending.
- A position with no option at all (every candidate a fragment under text continuation) is
  returned as an empty `Options`; the samplers then end a draft before it, and at the head of
  a request take the base model's own next character (`base_character`), unsteered. That is
  the one place where the target is the base's, and it is the same in both modes.
"""

from __future__ import annotations

import codecs
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import NoLogprobsError
from ..types import Candidate, Position

__all__ = ["Options", "options_of", "decode_step", "value_shift", "target_probs"]


def decode_step(pending: bytes, raw: bytes) -> tuple[str, bytes]:
    """Append `raw` to the undecoded bytes `pending`: (text completed, bytes still pending).

    Bytes that can never become valid UTF-8 decode as U+FFFD (as an incremental decoder does);
    a proper prefix of a multi-byte character stays pending.
    """
    dec = codecs.getincrementaldecoder("utf-8")(errors="replace")
    text = dec.decode(pending + raw, final=False)
    return text, dec.getstate()[0]


@dataclass(frozen=True, slots=True)
class Options:
    """The candidates of one position that VAS can choose from (see the module docstring).

    An end-of-sequence candidate is kept with text "" (the value model scores the response as
    it stands, ending here). Empty (no candidates) when the position offers no option.
    """

    candidates: tuple[Candidate, ...]  # (n,) the usable ones, provider order
    texts: tuple[str, ...]  # (n,) what each appends to the decoded response
    tails: tuple[bytes, ...]  # (n,) the undecoded bytes left pending after each
    logprobs: np.ndarray  # (n,) base logprobs
    log_total: float  # logsumexp of ALL reported candidates, usable or not (top-k drafts)

    def __len__(self) -> int:
        return len(self.candidates)

    def index(self, token: Candidate | None) -> int | None:
        """Index of the option that is `token`: the same id when both carry one, else the same
        bytes and kind; None when `token` is not an option."""
        if token is None:
            return None
        if token.id is not None:
            for i, c in enumerate(self.candidates):
                if c.id == token.id:
                    return i
        for i, c in enumerate(self.candidates):
            if c.raw == token.raw and c.special == token.special:
                return i
        return None


def _usable(c: Candidate, pending: bytes, by_ids: bool) -> bool:
    if by_ids and c.id is not None:
        return True
    return c.special or (c.text is not None and not pending)


def options_of(position: Position, pending: bytes = b"", *, by_ids: bool = False) -> Options:
    """The options of a provider position (module docstring); may be empty, never an error for
    fragments.

    Args:
        position: the provider's candidates.
        pending: undecoded bytes committed before this position.
        by_ids: the continuation is sent as token ids, so fragments with ids are options.

    Raises:
        NoLogprobsError: the provider reported no candidates at all.
    """
    if not position.candidates:
        raise NoLogprobsError(
            "The provider returned no logprobs for this position, so token and speculative VAS "
            "cannot run. Check that the endpoint and model return top-k logprobs."
        )
    usable = [c for c in position.candidates if _usable(c, pending, by_ids)]
    texts, tails = [], []
    for c in usable:
        text, tail = ("", pending) if c.special else decode_step(pending, c.raw)
        texts.append(text)
        tails.append(tail)
    all_lp = np.array([c.logprob for c in position.candidates], dtype=np.float64)
    return Options(
        candidates=tuple(usable),
        texts=tuple(texts),
        tails=tuple(tails),
        logprobs=np.array([c.logprob for c in usable], dtype=np.float64),
        log_total=float(np.logaddexp.reduce(all_lp)),
    )


def value_shift(scores: Sequence[Sequence[float]], betas: Sequence[float]) -> np.ndarray:
    """sum_i beta_i * (V_i - mean V_i) over one position's candidates.

    Args:
        scores: one (n,) array of values per value model.
        betas: one weight per value model.

    Returns:
        (n,) the shift added to the base logprobs.
    """
    n = len(scores[0]) if scores else 0
    shift = np.zeros(n, dtype=np.float64)
    for v, beta in zip(scores, betas, strict=True):
        v = np.asarray(v, dtype=np.float64)
        shift += beta * (v - v.mean())
    return shift


def target_probs(
    logprobs: np.ndarray, shift: np.ndarray, temperature: float = 1.0, top_p: float = 1.0
) -> np.ndarray:
    """The VAS sampling distribution over the options.

    Args:
        logprobs: (n,) base logprobs of the options.
        shift: (n,) value shift from `value_shift` (zeros for plain base sampling).
        temperature: 0 means greedy (all mass on the best option).
        top_p: nucleus cut applied to the target, after temperature.

    Returns:
        (n,) probabilities that sum to 1.
    """
    z = np.asarray(logprobs, dtype=np.float64) + shift
    if temperature == 0:
        p = np.zeros_like(z)
        p[int(np.argmax(z))] = 1.0
        return p
    z = z / temperature
    p = np.exp(z - z.max())
    p /= p.sum()
    if top_p < 1.0:
        order = np.argsort(-p, kind="stable")
        cum = np.cumsum(p[order])
        keep = order[: int(np.searchsorted(cum, top_p) + 1)]  # smallest set with mass >= top_p
        cut = np.zeros_like(p)
        cut[keep] = p[keep]
        p = cut / cut.sum()
    return p
