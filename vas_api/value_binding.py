"""One request's view of its value functions: each scores its own rendering of the prompt.

The samplers build every text they score as ``prompt_text + response`` with the *base's*
rendered prompt (`provider.prompt_text(prompt)`). A value function that renders prompts itself
(`render_prompt`, see `vas_api.types.ValueFunction`) must see its own rendering instead, and be
told where it ends. `bind_values` wraps such a function for one request: it knows the prompt and
the exact base prompt text the sampler was built with, so it swaps one for the other by length
(no marker is searched for) and passes ``prompt_len(s)=``. Functions without `render_prompt`, or
whose `render_prompt` returns None (checkpoints from before prompt formats), are returned as
they are, so they see exactly what they saw before.

End of text: the samplers mark an end-of-sequence candidate and a finished response with
`vas_api.types.END_OF_TEXT` at the end of its text. `text_for` / `texts_for` are the one rule
for who sees it: a value function with ``scores_end_of_text = True`` gets the text as is, every
other one the text without the marker (V of the response as it stands, as before the marker).
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Sequence
from typing import Any

from .errors import ValueModelError
from .types import END_OF_TEXT, Prompt, ValueFunction

__all__ = ["BoundValue", "bind_values", "shared_lock", "scores_end_of_text", "text_for", "texts_for"]

_LOCKS: weakref.WeakKeyDictionary[Any, threading.RLock] = weakref.WeakKeyDictionary()
_BY_ID: dict[int, threading.RLock] = {}  # value functions that cannot be weakly referenced
_GUARD = threading.Lock()


def scores_end_of_text(vf: Any) -> bool:
    """Whether `vf` is given texts that end with END_OF_TEXT (its `scores_end_of_text` flag;
    False when it has none)."""
    return bool(getattr(vf, "scores_end_of_text", False))


def text_for(vf: Any, text: str) -> str:
    """`text` as `vf` must see it: a trailing END_OF_TEXT is dropped unless `vf` scores it."""
    if text.endswith(END_OF_TEXT) and not scores_end_of_text(vf):
        return text[: -len(END_OF_TEXT)]
    return text


def texts_for(vf: Any, texts: Sequence[str]) -> tuple[str, ...]:
    """`text_for` of each text (the same tuple back when none ends with the marker)."""
    if scores_end_of_text(vf) or not any(t.endswith(END_OF_TEXT) for t in texts):
        return tuple(texts)
    return tuple(text_for(vf, t) for t in texts)


def shared_lock(vf: Any) -> threading.RLock:
    """The one lock of a value model, shared by every request and view of it (a value model
    keeps a KV cache and is not thread-safe). Re-entrant: the drivers hold it around a score
    call, and a `BoundValue` view takes it again inside."""
    vf = getattr(vf, "value_fn", vf)  # a view locks its model
    with _GUARD:
        try:
            return _LOCKS.setdefault(vf, threading.RLock())
        except TypeError:
            return _BY_ID.setdefault(id(vf), threading.RLock())


class BoundValue:
    """`value_fn` for one prompt: texts that start with `base_prompt_text` are scored as
    ``value_fn.render_prompt(prompt) + the rest``, with where that prompt ends.

    Args:
        value_fn: a value function with `render_prompt`.
        prompt: the request's prompt (string or chat messages).
        base_prompt_text: the exact prompt text the sampler puts in front of every text.
        own_prompt_text: `value_fn.render_prompt(prompt)`.

    Attributes:
        value_fn: the wrapped function (also the key for its lock).
    """

    def __init__(self, value_fn: Any, prompt: Prompt, base_prompt_text: str, own_prompt_text: str) -> None:
        self.value_fn = value_fn
        self.prompt = prompt
        self._base = base_prompt_text
        self._own = own_prompt_text
        self._lock = shared_lock(value_fn)

    @property
    def scores_end_of_text(self) -> bool:
        """The wrapped function's flag (see `vas_api.types.END_OF_TEXT`)."""
        return scores_end_of_text(self.value_fn)

    def own_text(self, text: str) -> str:
        """`text` (base prompt text + response) as this value function renders it."""
        if not text.startswith(self._base):
            raise ValueModelError(
                "a text to score does not start with the request's prompt text, so its response "
                "cannot be handed to the value model; this is a bug in the sampler."
            )
        return self._own + text[len(self._base):]

    def values(self, texts: Sequence[str]) -> Any:
        """V of each text (base prompt text + response), shape (B,)."""
        own = [self.own_text(t) for t in texts]
        with self._lock:
            return self.value_fn.values(own, prompt_lens=[len(self._own)] * len(own))

    def score_candidates(self, prefix_text: str, candidate_texts: Sequence[str]) -> Any:
        """V(prefix_text + c) for each candidate, shape (k,)."""
        with self._lock:
            return self.value_fn.score_candidates(
                self.own_text(prefix_text), list(candidate_texts), prompt_len=len(self._own)
            )

    def score_draft(self, prefix_text: str, path: Sequence[str], candidates: Sequence[Sequence[str]]) -> list[Any]:
        """Every position's candidates of a drafted path (the function's batched `score_draft`
        when it has one, else one `score_candidates` per position)."""
        own = self.own_text(prefix_text)
        with self._lock:
            if hasattr(self.value_fn, "score_draft"):
                return self.value_fn.score_draft(own, list(path), [list(c) for c in candidates],
                                                 prompt_len=len(self._own))
            return [
                self.value_fn.score_candidates(own + "".join(path[:j]), list(c), prompt_len=len(self._own))
                for j, c in enumerate(candidates)
            ]

    def __repr__(self) -> str:
        return f"BoundValue({self.value_fn!r})"


def bind_values(value_fns: Sequence[ValueFunction], prompt: Prompt, base_prompt_text: str) -> list[Any]:
    """The value functions as one request with `prompt` must call them (see the module docstring).

    Raises:
        ConfigError: a value function cannot render the prompt (empty or malformed).
    """
    out: list[Any] = []
    for vf in value_fns:
        render = getattr(vf, "render_prompt", None)
        own = render(prompt) if render is not None else None
        out.append(vf if own is None else BoundValue(vf, prompt, base_prompt_text, own))
    return out
