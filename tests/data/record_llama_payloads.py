"""Record the legacy-shape payloads under tests/data/ from the real local llama.cpp server.

Run from the repository root: .venv/bin/python tests/data/record_llama_payloads.py
The requests use neutral samplers and fixed seeds; the server's raw JSON is stored unchanged
(plus the request, for reference), so the parser tests read exactly what the server sent.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx

from vas_api.local import LocalServer

HERE = Path(__file__).parent
SYSTEM = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
NEUTRAL = {
    "temperature": 1.0, "top_p": 1.0, "top_k": 0, "min_p": 0.0, "typical_p": 1.0,
    "repeat_penalty": 1.0, "presence_penalty": 0.0, "frequency_penalty": 0.0,
}


def chat(user: str, assistant: str = "") -> str:
    return f"{SYSTEM}<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n{assistant}"


CASES = {
    # End of an answer: EOS is the most likely next token. min_tokens=1 keeps the sampler off
    # EOS so the position (and its top 20, EOS included as "") is reported.
    "llama_candidates_eos_in_topk.json": dict(
        prompt=chat("Say hi", "Hi! How can I help you today?"), max_tokens=1, logprobs=20,
        min_tokens=1, seed=0, **NEUTRAL,
    ),
    # The same request without min_tokens at temperature 0: EOS is sampled and the server
    # reports no position at all.
    "llama_candidates_eos_sampled.json": dict(
        prompt=chat("Say hi", "Hi! How can I help you today?"), max_tokens=1, logprobs=20,
        temperature=0.0,
    ),
    # Same prefix, k=100: "" collides (EOS, <|endoftext|>, partial bytes) and keeps the value
    # of the LAST colliding entry, not of EOS.
    "llama_candidates_k100_collision.json": dict(
        prompt=chat("Say hi", "Hi! How can I help you today?"), max_tokens=1, logprobs=100,
        min_tokens=1, seed=0, **NEUTRAL,
    ),
    # " è" split across two tokens: b" \xc3" (printed " ") and b"\xa8" (printed "").
    "llama_draft_partial_utf8.json": dict(
        prompt=chat("Écris une phrase en français avec des accents: é, è, à."), max_tokens=12,
        logprobs=5, seed=4, **NEUTRAL,
    ),
    # Two emoji, each split into three tokens that all print as "".
    "llama_draft_emoji.json": dict(
        prompt=chat("Reply with one emoji: 😀"), max_tokens=12, logprobs=5, seed=0, **NEUTRAL,
    ),
    # A plain 16-token English draft.
    "llama_draft_16.json": dict(
        prompt=chat("Write one sentence about the sea."), max_tokens=16, logprobs=20, seed=1,
        **NEUTRAL,
    ),
}


def main() -> None:
    with LocalServer() as server:
        for name, body in CASES.items():
            body = {"model": server.model, **body}
            response = httpx.post(f"{server.base_url}/completions", json=body, timeout=120)
            response.raise_for_status()
            out = {"request": body, "response": response.json()}
            (HERE / name).write_text(json.dumps(out, indent=1, ensure_ascii=False) + "\n")
            choice = out["response"]["choices"][0]
            print(name, repr(choice["text"][:60]), choice["finish_reason"])


if __name__ == "__main__":
    main()
