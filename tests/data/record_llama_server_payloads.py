"""Record llama.cpp llama-server payloads under tests/data/ (the chat logprob shape it uses on
/v1/completions) from the real server, with the neutral sampler chain and fixed seeds.

Run from the repository root (the binary comes from tools/llama_server.py):
    .venv/bin/python tests/data/record_llama_server_payloads.py
The server's raw JSON is stored unchanged, with the request and the server's /props eos_token
and its id, so the parser tests read exactly what the server sent. The tests check relations
on these files (bytes that join to the text, fragments that are never text or EOS), never the
sampled tokens or floats themselves, which differ between CPUs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx

from vas_api.chat_template import ChatTemplate
from vas_api.local import LlamaServer
from vas_api.providers.openai_wire import neutral_sampler_params

HERE = Path(__file__).parent

CASES: dict[str, dict[str, Any]] = {
    # Drafts that cross multi-byte characters (emoji: 4-byte characters split over tokens).
    "llama_server_draft_emoji.json": {
        "user": "Reply with a row of ten different emoji and nothing else.", "assistant": "",
        "max_tokens": 16, "until": "merged",
    },
    "llama_server_draft_cjk.json": {
        "user": "Say good morning in Chinese and in Japanese.", "assistant": "",
        "max_tokens": 16, "until": "merged",
    },
    # End of an answer: the end-of-turn token is among the top candidates.
    "llama_server_candidates_eos_in_topk.json": {
        "user": "Say hi", "assistant": "Hi! How can I help you today?", "max_tokens": 1,
        "until": "eos_in_topk",
    },
    # A draft whose sampled last token is the end-of-turn token.
    "llama_server_draft_eos_sampled.json": {
        "user": "Say hi", "assistant": "Hi! How can I help you today", "max_tokens": 8,
        "until": "stop",
    },
}


def _found(case: dict[str, Any], choice: dict[str, Any], eos_id: int) -> bool:
    content = choice["logprobs"]["content"]
    if case["until"] == "merged":  # an entry whose candidates are continuation bytes
        return any(any(x["bytes"] and 0x80 <= x["bytes"][0] < 0xC0 for x in t["top_logprobs"])
                   for t in content)
    if case["until"] == "eos_in_topk":
        return any(t["id"] == eos_id for t in content[0]["top_logprobs"])
    return choice["finish_reason"] == "stop" and bool(content) and content[-1]["id"] == eos_id


def main() -> None:
    """Start llama-server, record every case (trying seeds until it shows what it is for)."""
    with LlamaServer() as server:
        template = ChatTemplate.from_gguf(server.gguf_path)
        root = server.root_url
        props = httpx.get(f"{root}/props", timeout=30).json()
        eos = props["eos_token"]
        eos_id = httpx.post(f"{root}/tokenize", json={"content": eos, "parse_special": True},
                            timeout=30).json()["tokens"][0]
        standard, extra = neutral_sampler_params(server.profile)
        for name, case in CASES.items():
            messages = [{"role": "user", "content": case["user"]}]
            prompt = template.render(messages, add_generation_prompt=True) + case["assistant"]
            for seed in range(50):
                request = {"model": server.model, "prompt": prompt, "seed": seed,
                           "max_tokens": case["max_tokens"], "logprobs": 20,
                           **standard, **extra}
                response = httpx.post(f"{server.base_url}/completions", json=request,
                                      timeout=120).json()
                if _found(case, response["choices"][0], eos_id):
                    break
            else:
                raise SystemExit(f"{name}: no seed in 0..49 showed {case['until']!r}")
            record = {"request": request, "eos_token": eos, "eos_token_id": eos_id,
                      "response": response}
            (HERE / name).write_text(json.dumps(record, indent=1, ensure_ascii=False) + "\n")
            print(f"wrote {name} (seed {seed})")


if __name__ == "__main__":
    main()
