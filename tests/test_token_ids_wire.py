"""Token-id continuation on the wire, without a server: what goes out, and when text is used.

The real openai SDK does the HTTP; respx answers in the servers' own formats (llama-server's
chat-shape logprobs with ids and its POST /tokenize, llama-cpp-python's /extras/tokenize).
"""

from __future__ import annotations

import json
from dataclasses import replace

import httpx
import openai
import pytest
import respx

from vas_api.errors import ProviderError
from vas_api.profiles import LLAMA_CPP_PYTHON, OPENAI_COMPLETIONS
from vas_api.providers import OpenAICompatProvider
from vas_api.providers.openai_compat import tokenize_request
from vas_api.providers.openai_wire import prefix_target, takes_id_prompts
from vas_api.sampler import SamplerSettings, SpeculativeSampler, run
from vas_api.types import Prefix

BASE = "http://mock.test/v1"
ROOT = "http://mock.test"
LLAMA_SERVER = replace(
    LLAMA_CPP_PYTHON, name="llama.cpp server", token_id_prompts=True,
    family="llama.cpp", min_tokens_for_eos=False,
)
EXACT_LOCAL = replace(LLAMA_CPP_PYTHON, exact_logprobs=True, token_id_prompts=True)
TEXT_ONLY = replace(LLAMA_CPP_PYTHON, exact_logprobs=False, token_id_prompts=False)
TEMPLATE = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}<assistant>"


def client() -> openai.OpenAI:
    return openai.OpenAI(base_url=BASE, api_key="sk-test", max_retries=0, http_client=httpx.Client())


def chat_shape(entries: list[tuple[int, bytes, float]], tops: list[list[tuple[int, bytes, float]]], finish="length") -> dict:
    """A llama-server /v1/completions body: chat-shape logprobs with id, token, bytes."""
    def entry(i, raw, lp):
        return {"id": i, "token": raw.decode("utf-8", "ignore"), "bytes": list(raw), "logprob": lp}

    content = [{**entry(*e), "top_logprobs": [entry(*t) for t in top]} for e, top in zip(entries, tops, strict=True)]
    text = b"".join(raw for _, raw, _ in entries).decode("utf-8", "replace")
    return {
        "id": "c", "object": "text_completion", "created": 1, "model": "m",
        "choices": [{"index": 0, "text": text, "finish_reason": finish, "logprobs": {"content": content}}],
        "usage": {"prompt_tokens": 5, "completion_tokens": len(entries), "total_tokens": 5 + len(entries)},
    }


def test_prefix_target_sends_ids_only_when_all_are_known():
    render = lambda p: "R:" + p[0]["content"]  # noqa: E731
    chat = [{"role": "user", "content": "hi"}]
    t = prefix_target(LLAMA_SERVER, Prefix(chat, "ab", (7, 8)), render, prompt_ids=(1, 2))
    assert t.kind == "completions" and t.ids == (1, 2, 7, 8) and t.prompt == "R:hiab"
    assert t.continuation == "token_ids"
    # No response ids, no prompt ids, or an endpoint without id prompts: text.
    assert prefix_target(LLAMA_SERVER, Prefix(chat, "ab"), render, prompt_ids=(1, 2)).ids is None
    assert prefix_target(LLAMA_SERVER, Prefix(chat, "ab", (7, 8)), render).ids is None
    assert prefix_target(TEXT_ONLY, Prefix(chat, "ab", (7, 8)), render, prompt_ids=(1,)).ids is None
    assert takes_id_prompts(EXACT_LOCAL) and not takes_id_prompts(TEXT_ONLY)


def test_tokenize_endpoint_per_family():
    url, body = tokenize_request(LLAMA_SERVER, BASE, "m", "héllo")
    assert url == ROOT + "/tokenize" and body == {"content": "héllo", "add_special": True, "parse_special": True}
    url, body = tokenize_request(EXACT_LOCAL, BASE + "/", "m", "x")
    assert url == ROOT + "/extras/tokenize" and body["input"] == "x"
    assert tokenize_request(TEXT_ONLY, BASE, "m", "x") is None  # no id prompts: text only
    assert tokenize_request(OPENAI_COMPLETIONS, BASE, "m", "x") is None


@respx.mock(base_url=ROOT)
def test_speculative_run_sends_prompt_ids_then_response_ids(respx_mock):
    """The prompt is tokenized once (cached), every call sends prompt ids + the ids committed so
    far, and a fragment run (b"\\xc3" + b"\\xa9" = "é") is committed by its own ids."""
    tok = respx_mock.post("/tokenize").respond(200, json={"tokens": [1, 2, 3]})
    first = chat_shape(
        [(50, b"\xc3", -0.1), (51, b"\xa9", -0.1)],
        [[(50, b"\xc3", -0.1), (60, b"e", -2.5)], [(51, b"\xa9", -0.1), (61, b"x", -2.5)]],
    )
    second = chat_shape([(2, b"<|im_end|>", -0.1)], [[(2, b"<|im_end|>", -0.1), (62, b"!", -2.5)]], finish="stop")
    comp = respx_mock.post("/v1/completions")
    comp.side_effect = [httpx.Response(200, json=first), httpx.Response(200, json=second)]
    p = OpenAICompatProvider(client(), "m", profile=LLAMA_SERVER, chat_template=TEMPLATE)
    chat = [{"role": "user", "content": "hi"}]
    assert p.continues_with_ids(chat)
    s = SpeculativeSampler(SamplerSettings(betas=(), k=2, max_tokens=8, seed=0, draft_min=2, draft_max=2),
                           Prefix(chat), p.prompt_text(chat), restrict_top_k=True, by_ids=True)
    run(s, p, [])
    sent = [json.loads(c.request.content)["prompt"] for c in comp.calls]
    assert sent == [[1, 2, 3], [1, 2, 3, 50, 51]]
    assert tok.call_count == 1
    assert json.loads(tok.calls.last.request.content)["content"] == "<user>hi\n<assistant>"
    assert s.response == "é" and s.continuation == "token_ids" and s.finish_reason == "stop"
    assert [st.text for st in s.steps] == ["", "é", ""]


@respx.mock(base_url=ROOT)
def test_a_failing_tokenizer_is_a_clear_error(respx_mock):
    respx_mock.post("/tokenize").respond(404, json={"error": "not found"})
    p = OpenAICompatProvider(client(), "m", profile=LLAMA_SERVER, chat_template=TEMPLATE)
    with pytest.raises(ProviderError, match="token_id_prompts=False"):
        p.candidates(Prefix("hi", "", ()), k=2)


# -- the target's options (pure) ------------------------------------------------------------------


def test_fragments_are_options_only_by_ids_and_never_end():
    from vas_api.sampler.target import decode_step, options_of
    from vas_api.types import Candidate, Position

    frag, whole, eos = Candidate(b"\xf0\x9f", -0.5, id=5), Candidate(b" a", -1.0, id=6), Candidate(b"", -2.0, True, 0)
    pos = Position((frag, whole, eos))
    by_ids = options_of(pos, by_ids=True)
    assert [c.id for c in by_ids.candidates] == [5, 6, 0]
    assert by_ids.texts == ("", " a", "") and by_ids.tails[0] == b"\xf0\x9f"
    assert not by_ids.candidates[0].special
    as_text = options_of(pos)
    assert [c.id for c in as_text.candidates] == [6, 0]
    assert len(options_of(Position((frag,)))) == 0  # all fragments, text: no option, no error
    # Completing a character: the fragment adds the whole character to the decoded text.
    done = options_of(Position((Candidate(b"\x9a\xa8", -0.1, id=7),)), b"\xf0\x9f", by_ids=True)
    assert done.texts == ("🚨",) and done.tails == (b"",)
    assert decode_step(b"\xf0", b"a") == ("\ufffda", b"")  # can never complete: U+FFFD
