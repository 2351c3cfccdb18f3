"""Which tokens of a GGUF vocabulary end in the middle of a UTF-8 character.

llama.cpp's server reports no logprob entry for a sampled token whose text ends mid-character
(it waits for the character to complete), so a candidates call that samples one comes back
empty. Its reported logprobs come from the raw logits, before any sampler, so a ``logit_bias``
against these tokens makes every candidates call report its position without changing what it
reports (checked on llama-server with SmolLM2). This module finds those tokens in the GGUF's own
vocabulary (byte-level BPE as in GPT-2, or SentencePiece with <0xNN> byte tokens).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from ..gguf_meta import read_gguf_metadata
from ..sampler.target import decode_step

__all__ = ["token_bytes_of", "incomplete_token_ids"]

_CONTROL = 3  # llama.cpp token_type of control tokens


@lru_cache(maxsize=1)
def _gpt2_byte_decoder() -> dict[str, int]:
    # GPT-2's bytes_to_unicode, inverted: each byte is spelled as one printable character.
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    cs = list(bs)
    extra = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(bs, cs, strict=True)}


def token_bytes_of(piece: str, tokenizer_model: str) -> bytes | None:
    """The bytes of one vocabulary entry, or None when the spelling is not understood.

    Args:
        piece: the entry of ``tokenizer.ggml.tokens``.
        tokenizer_model: ``tokenizer.ggml.model`` ("gpt2" byte-level BPE, "llama" SentencePiece).
    """
    if tokenizer_model == "gpt2":
        dec = _gpt2_byte_decoder()
        return bytes(dec[ch] for ch in piece) if all(ch in dec for ch in piece) else None
    if tokenizer_model == "llama":
        if len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
            return bytes([int(piece[3:5], 16)])
        return piece.replace("\u2581", " ").encode("utf-8")
    return None


@lru_cache(maxsize=4)
def incomplete_token_ids(gguf_path: str) -> frozenset[int]:
    """Ids of the tokens whose bytes end with an incomplete UTF-8 sequence (control tokens and
    entries whose spelling is not understood are left out). Empty when the file has no
    vocabulary this module reads.

    Args:
        gguf_path: the model's .gguf file (the one the server runs).
    """
    if not Path(gguf_path).is_file():
        return frozenset()
    meta = read_gguf_metadata(
        gguf_path, ["tokenizer.ggml.model", "tokenizer.ggml.tokens", "tokenizer.ggml.token_type"]
    )
    model = str(meta.get("tokenizer.ggml.model", ""))
    tokens = meta.get("tokenizer.ggml.tokens") or []
    types = meta.get("tokenizer.ggml.token_type") or []
    out = set()
    for i, piece in enumerate(tokens):
        if i < len(types) and types[i] == _CONTROL:
            continue
        raw = token_bytes_of(str(piece), model)
        if raw and decode_step(b"", raw)[1]:
            out.add(i)
    return frozenset(out)
