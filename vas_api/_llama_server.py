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
legacy fields are unchanged, so every OpenAI-compatible client still reads them; next to them a
``content`` list in the chat shape (``{id, token, bytes, logprob, top_logprobs: [{id, token,
bytes, logprob}]}``, one entry per token id, as llama.cpp's own server reports) carries the token
ids, which vas-api reads for token-id continuation.

A second change: /v1/completions takes ``prompt`` as a list of token ids (llama-server, vLLM and
OpenAI's legacy API do; the stock llama-cpp-python server accepts only strings although its
``Llama`` takes ids), so a partial response can be continued with the ids the model produced.

If the installed llama-cpp-python lacks what the patch relies on, the stock server runs and a
warning says so.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Iterator
from typing import Any

__all__ = ["token_key", "exact_logprobs", "patch", "accept_id_prompts", "report_content", "main"]


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
        token (the sampled token is added to its dict when outside the top k, as OpenAI does),
        and "content": the same positions in the chat shape with each token's id and bytes
        (top k ids, unmerged).
    """
    import numpy as np

    n_vocab = llama.n_vocab()
    k = max(1, min(int(k), n_vocab))
    cache: dict[int, tuple[str, bytes]] = {}

    def piece(token: int) -> tuple[str, bytes]:
        if token not in cache:
            raw = llama.detokenize([token], special=True)
            cache[token] = (token_key(raw), raw)
        return cache[token]

    def key(token: int) -> str:
        return piece(token)[0]

    def chat_entry(token: int, logprob: float) -> dict[str, Any]:
        name, raw = piece(token)
        return {"id": token, "token": name, "bytes": list(raw), "logprob": logprob}

    tokens, token_lps, tops, offsets, content = [], [], [], [], []
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
        content.append({
            **chat_entry(int(tok), float(logprobs[tok])),
            "top_logprobs": [chat_entry(int(i), float(logprobs[i])) for i in best],
        })
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
        "content": content,
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
        if isinstance(prompt, tuple):  # token ids (see accept_id_prompts): Llama takes a list
            kwargs["prompt"] = prompt = list(prompt)
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


def accept_id_prompts(request_cls: Any) -> bool:
    """Let the server's CreateCompletionRequest take ``prompt`` as a list of token ids.

    The ids are validated into a tuple of ints, which the server's endpoint passes through
    untouched (it unpacks only lists) and `patch`'s completion turns into the list ``Llama``
    takes. Must run before ``llama_cpp.server.app`` is imported (FastAPI reads the model when
    the routes are declared). Returns False (nothing changed) when the class is not the
    expected pydantic model.
    """
    from typing import List, Tuple, Union  # noqa: UP035 - the server's own annotation style

    fields = getattr(request_cls, "model_fields", None)
    if not isinstance(fields, dict) or "prompt" not in fields:
        return False
    annotation = Union[str, List[str], Tuple[int, ...]]  # noqa: UP006, UP007
    fields["prompt"].annotation = annotation
    request_cls.__annotations__["prompt"] = annotation
    request_cls.model_rebuild(force=True)
    return True


def report_content(logprobs_cls: Any) -> bool:
    """Let the server's response model keep the ``content`` list `exact_logprobs` adds (FastAPI
    serializes a completion through the ``CompletionLogprobs`` TypedDict, which drops unknown
    keys). Must run before ``llama_cpp.server.app`` is imported. Returns False when the class
    is not the expected TypedDict."""
    from typing import Dict, List, NotRequired  # noqa: UP035

    if not isinstance(getattr(logprobs_cls, "__annotations__", None), dict) or not hasattr(
        logprobs_cls, "__optional_keys__"
    ):
        return False
    logprobs_cls.__annotations__["content"] = NotRequired[List[Dict[str, Any]]]  # noqa: UP006
    logprobs_cls.__optional_keys__ = frozenset(logprobs_cls.__optional_keys__ | {"content"})
    return True


def main() -> None:
    """Patch llama_cpp.Llama and the request type, then run llama-cpp-python's server main()."""
    import llama_cpp
    import llama_cpp.llama_types as llama_types
    import llama_cpp.server.types as server_types

    if "llama_cpp.server.app" in sys.modules or not accept_id_prompts(
        server_types.CreateCompletionRequest
    ):
        print("vas-api: this llama-cpp-python server keeps text-only prompts.", file=sys.stderr)
    if "llama_cpp.server.app" in sys.modules or not report_content(llama_types.CompletionLogprobs):
        print("vas-api: this llama-cpp-python server cannot report token ids.", file=sys.stderr)
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
