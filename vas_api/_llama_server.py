"""llama-cpp-python's OpenAI-compatible server with exact, lossless completion logprobs.

Run as ``python -m vas_api._llama_server ARGS`` (the same arguments as
``python -m llama_cpp.server``); `vas_api.local.LocalServer` does this by default. It is the stock
server with one change: how /v1/completions (and chat, which is built on it) reports logprobs.
Measured on llama-cpp-python 0.3.36, the stock reporter

- decodes every token with ``errors="ignore"``, so end-of-sequence, other control tokens and
  tokens holding part of a UTF-8 character all become ``""`` and collide in the top_logprobs
  dict, which keeps the value of the *lowest* colliding token: the EOS logprob came back as
  -8.56 instead of -0.52 with k = 100;
- never reports the position where it sampled end-of-sequence;
- sorts the whole 49,152-token vocabulary in Python at every position (about 110 ms a token).

Here the completion is generated with logprobs off, and the logprobs are then rebuilt from the
same raw logits (``Llama.scores``, before any sampler or logit bias): log-softmax in numpy,
argpartition for the top k, each token keyed by its exact bytes. A token that is not valid UTF-8
on its own is spelled ``"bytes:\\xNN..."`` (the OpenAI / tiktoken convention), control tokens by
their own text (``"<|im_end|>"``), and a sampled end-of-generation token gets its position. The
response shape is unchanged, so every OpenAI-compatible client still reads it.

If the installed llama-cpp-python lacks what the patch relies on, the stock server runs and a
warning says so.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Iterator
from typing import Any

__all__ = ["token_key", "exact_logprobs", "patch", "main"]


def token_key(raw: bytes) -> str:
    """The top_logprobs key for a token's bytes: the text, or "bytes:\\xNN..." when the bytes
    are not valid UTF-8 on their own."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return "bytes:" + "".join(f"\\x{b:02x}" for b in raw)


def exact_logprobs(
    llama: Any, prompt_len: int, sampled: list[int], k: int, text_start: int
) -> dict[str, Any]:
    """Legacy-shape logprobs for the tokens `llama` just sampled, from its raw logits.

    Args:
        llama: the ``llama_cpp.Llama`` that generated them (logits_all=True).
        prompt_len: number of prompt tokens given to ``generate``.
        sampled: every token ``generate`` yielded, including a final end-of-generation one.
        k: how many top candidates per position.
        text_start: the text offset of the first generated character (len(prompt)).

    Returns:
        {"tokens", "token_logprobs", "top_logprobs", "text_offset"} with one entry per sampled
        token (the sampled token is added to its dict when outside the top k, as OpenAI does).
    """
    import numpy as np

    n_vocab = llama.n_vocab()
    k = max(1, min(int(k), n_vocab))
    cache: dict[int, str] = {}

    def key(token: int) -> str:
        if token not in cache:
            cache[token] = token_key(llama.detokenize([token], special=True))
        return cache[token]

    tokens, token_lps, tops, offsets = [], [], [], []
    text = b""
    for j, tok in enumerate(sampled):
        row = np.asarray(llama.scores[prompt_len - 1 + j], dtype=np.float64)
        top = row.max()
        logprobs = row - (top + np.log(np.exp(row - top).sum()))
        best = np.argpartition(-logprobs, k - 1)[:k] if k < n_vocab else np.arange(n_vocab)
        best = best[np.argsort(-logprobs[best], kind="stable")]
        entry: dict[str, float] = {}
        for i in best:
            name = key(int(i))
            # Distinct ids with identical bytes are one candidate: add their probabilities.
            entry[name] = float(np.logaddexp(entry[name], logprobs[i])) if name in entry else float(
                logprobs[i]
            )
        name = key(int(tok))
        entry.setdefault(name, float(logprobs[tok]))
        offsets.append(text_start + len(text.decode("utf-8", errors="ignore")))
        text += llama.detokenize([int(tok)])
        tokens.append(name)
        token_lps.append(float(logprobs[tok]))
        tops.append(entry)
    return {
        "tokens": tokens,
        "text_offset": offsets,
        "token_logprobs": token_lps,
        "top_logprobs": tops,
    }


def patch(llama_cls: Any) -> bool:
    """Make ``llama_cls._create_completion`` report exact logprobs (non-streaming, no echo).

    Returns:
        True when patched; False (and nothing changed) when the class lacks what is needed.
    """
    if getattr(llama_cls, "_vas_patched", False):
        return True
    needed = ("_create_completion", "generate", "detokenize", "n_vocab")
    if not all(hasattr(llama_cls, name) for name in needed):
        return False

    original_generate = llama_cls.generate
    original_create = llama_cls._create_completion

    @functools.wraps(original_generate)
    def generate(self: Any, tokens: Any, *args: Any, **kwargs: Any) -> Iterator[int]:
        # Remember every token handed out, including an end-of-generation token the caller
        # stops on (the stock reporter drops that one).
        self._vas_prompt_len = len(tokens)
        self._vas_sampled = record = []
        for token in original_generate(self, tokens, *args, **kwargs):
            record.append(int(token))
            yield token

    @functools.wraps(original_create)
    def create_completion(self: Any, *args: Any, **kwargs: Any) -> Iterator[Any]:
        k = kwargs.get("logprobs")
        if args or k is None or kwargs.get("stream") or kwargs.get("echo"):
            yield from original_create(self, *args, **kwargs)
            return
        kwargs["logprobs"] = None  # skip the stock reporter's full-vocabulary sort
        prompt = kwargs.get("prompt", "")
        for chunk in original_create(self, *args, **kwargs):
            choice = chunk["choices"][0]
            choice["logprobs"] = exact_logprobs(
                self, self._vas_prompt_len, list(self._vas_sampled), int(k),
                len(prompt) if isinstance(prompt, str) else 0,
            )
            yield chunk

    llama_cls.generate = generate
    llama_cls._create_completion = create_completion
    llama_cls._vas_patched = True
    return True


def main() -> None:
    """Patch llama_cpp.Llama, then run llama-cpp-python's own server main()."""
    import llama_cpp
    from llama_cpp.server.__main__ import main as server_main

    if not patch(llama_cpp.Llama):
        print(
            "vas-api: this llama-cpp-python lacks what the exact-logprobs patch needs; "
            "running the stock server (its logprobs drop partial UTF-8 and EOS).",
            file=sys.stderr,
        )
    server_main()


if __name__ == "__main__":
    main()
