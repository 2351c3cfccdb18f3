"""Checks on what a value model returns: one finite number per candidate.

A broken value model (NaN weights, a custom function with a bug) would otherwise surface as a
raw numpy error deep in the sampler, after API calls were paid for. `checked_scores` runs on
every score call; `probe_value_model` checks a checkpoint's weights once when it is loaded, before any call.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .errors import ValueModelError

__all__ = ["as_scores", "checked_scores", "probe_value_model"]


def as_scores(v: object) -> np.ndarray:
    """A value model's scores (list, numpy array or torch tensor) as a flat float64 array.

    Raises:
        ValueModelError: the output is not numeric.
    """
    if hasattr(v, "detach"):  # a torch tensor
        v = v.detach().float().cpu().numpy()  # type: ignore[union-attr]
    try:
        return np.asarray(v, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError) as exc:
        raise ValueModelError(
            f"the value model returned {type(v).__name__} {v!r:.80}, not numbers; "
            "values() and score_candidates() must return one float per text."
        ) from exc


def checked_scores(
    per_position: Sequence[object], candidates: Sequence[Sequence[str]], value_model: Any
) -> list[np.ndarray]:
    """Scores of every position as arrays, each checked against its candidates.

    Args:
        per_position: what the value model returned, one entry per position.
        candidates: the candidate texts of each position (what was asked).
        value_model: the model, named in the message.

    Raises:
        ValueModelError: a wrong number of positions or scores, or a NaN or infinite score.
    """
    name = _name(value_model)
    if len(per_position) != len(candidates):
        raise ValueModelError(
            f"{name} returned scores for {len(per_position)} positions, asked for {len(candidates)}."
        )
    out = []
    for j, (raw, cands) in enumerate(zip(per_position, candidates, strict=True)):
        arr = as_scores(raw)
        if arr.shape != (len(cands),):
            raise ValueModelError(
                f"{name} returned {arr.size} scores for the {len(cands)} candidates at position {j}; "
                "score_candidates() must return one value per candidate, in order."
            )
        bad = np.flatnonzero(~np.isfinite(arr))
        if bad.size:
            i = int(bad[0])
            raise ValueModelError(
                f"{name} returned {arr[i]} for candidate {cands[i]!r} at position {j}; values must be "
                "finite. A checkpoint with NaN or inf weights does this: retrain it or load another."
            )
        out.append(arr)
    return out


def probe_value_model(value_model: Any, where: str) -> None:
    """Refuse a loaded value model whose weights hold NaN or inf (they load without complaint
    and would score every text NaN). Checks every parameter of a torch module; other value
    functions have no weights to check here (their outputs are checked on every call).

    Raises:
        ValueModelError: a non-finite weight, named.
    """
    parameters = getattr(value_model, "named_parameters", None)
    if parameters is None:
        return
    import torch

    for name, p in parameters():
        if not bool(torch.isfinite(p).all()):
            raise ValueModelError(
                f"the value model at {where} has NaN or inf in its weights ({name}): its weights are "
                "broken, so every score would be NaN. Retrain it or load another checkpoint."
            )


def _name(value_model: Any) -> str:
    return f"value model {type(value_model).__name__}"
