"""The VAS target distribution over one position's candidates (DESIGN.md section 3), as pure
numpy functions:

    z(a) = l(a) + sum_i beta_i * (V_i(s + a) - mean over C of V_i(s + .))
    pi(a) = softmax(z / temperature), then top_p

Tokens outside the candidate set C cannot be chosen: the API never names them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import NoLogprobsError, ProviderError
from ..types import Candidate, Position

__all__ = ["Options", "options_of", "value_shift", "target_probs"]


@dataclass(frozen=True, slots=True)
class Options:
    """The candidates of one position that VAS can choose from.

    Candidates whose bytes are not complete UTF-8 on their own cannot be continued through a
    text API (the next request is text), so they are left out like tokens outside the top k.
    An end-of-sequence candidate is kept with text "" (the value model scores the response as
    it stands, ending here).
    """

    candidates: tuple[Candidate, ...]  # (n,) the usable ones, provider order
    texts: tuple[str, ...]  # (n,) what each appends to the response
    logprobs: np.ndarray  # (n,) base logprobs
    log_total: float  # logsumexp of ALL reported candidates, usable or not (top-k drafts)

    def index(self, token: Candidate | None) -> int | None:
        """Index of the option with the same bytes and kind as `token`, or None."""
        if token is None:
            return None
        for i, c in enumerate(self.candidates):
            if c.raw == token.raw and c.special == token.special:
                return i
        return None


def options_of(position: Position) -> Options:
    """Usable options of a provider position; raises ProviderError when there are none."""
    if not position.candidates:
        raise NoLogprobsError(
            "The provider returned no logprobs for this position, so token and speculative VAS "
            "cannot run. Check that the endpoint and model return top-k logprobs."
        )
    usable = [c for c in position.candidates if c.special or c.text is not None]
    if not usable:
        raise ProviderError(
            "Every next-token candidate the provider returned is a partial UTF-8 token; VAS can "
            "continue only whole characters through a text API."
        )
    all_lp = np.array([c.logprob for c in position.candidates], dtype=np.float64)
    return Options(
        candidates=tuple(usable),
        texts=tuple("" if c.special else c.text for c in usable),  # type: ignore[misc]
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
