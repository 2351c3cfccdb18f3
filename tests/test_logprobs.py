"""Unit tests of the logprob parser on recorded (llama.cpp) and hand-written (chat) payloads."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from openai.types import Completion
from openai.types.chat import ChatCompletion

from vas_api.logprobs import (
    is_sentinel,
    merge_candidates,
    parse_chat,
    parse_legacy,
    parse_logprobs,
    token_bytes,
)
from vas_api.types import Candidate, Position

DATA = Path(__file__).parent / "data"


def load(name: str) -> dict:
    return json.loads((DATA / name).read_text())


def legacy_choice(name: str) -> dict:
    return load(name)["response"]["choices"][0]


def parse_recorded(name: str, k: int | None = None):
    c = legacy_choice(name)
    return parse_legacy(c["logprobs"], k=k, text=c["text"], finish_reason=c["finish_reason"])


# -- small pieces ----------------------------------------------------------------------------


def test_sentinels():
    assert is_sentinel(-9999.0) and is_sentinel(-1e5) and is_sentinel(None)
    assert is_sentinel(float("nan")) and is_sentinel(float("-inf")) and is_sentinel(float("inf"))
    assert not is_sentinel(-9998.9) and not is_sentinel(0.0)


def test_token_bytes_spellings():
    assert token_bytes("bytes:\\xe2\\x80") == b"\xe2\x80"
    assert token_bytes("bytes: \\xe2") == b" \xe2"  # a leading space before the escape
    assert token_bytes("whatever", [195]) == b"\xc3"  # the byte array wins
    assert token_bytes("é") == "é".encode()
    assert token_bytes("") == b""


def test_merge_identical_bytes_logsumexp_sorted_and_cut():
    merged = merge_candidates(
        [
            Candidate(b"a", math.log(0.1)),
            Candidate(b"b", math.log(0.3)),
            Candidate(b"a", math.log(0.25)),
            Candidate(b"c", -9999.0),
            Candidate(b"d", math.log(0.05)),
        ],
        k=2,
    )
    assert [c.raw for c in merged] == [b"a", b"b"]
    assert merged[0].prob == pytest.approx(0.35)


@given(
    st.lists(
        st.tuples(st.sampled_from([b"x", b"y", b"z", b"\xc3", b""]), st.floats(-30, 0)),
        max_size=12,
    ),
    st.integers(1, 6),
)
def test_merge_properties(entries, k):
    cands = [Candidate(raw, lp, special=raw == b"") for raw, lp in entries]
    merged = merge_candidates(cands, k)
    assert len(merged) <= k
    assert len({c.raw for c in merged}) == len(merged)
    assert all(a.logprob >= b.logprob for a, b in zip(merged, merged[1:], strict=False))
    # Merging keeps the total mass of the kept raw values.
    for c in merged:
        total = sum(math.exp(lp) for raw, lp in entries if raw == c.raw)
        assert c.prob == pytest.approx(total, rel=1e-9)


# -- legacy shape, recorded from llama-cpp-python ---------------------------------------------


def test_legacy_eos_in_topk_is_special_candidate():
    (pos,) = parse_recorded("llama_candidates_eos_in_topk.json", k=20)
    assert len(pos.candidates) == 20
    top = pos.candidates[0]
    assert top.special and top.raw == b""  # llama-cpp-python prints <|im_end|> as ""
    assert top.logprob == pytest.approx(-0.5194, abs=1e-3)
    assert sum(c.prob for c in pos.candidates) <= 1.0
    assert pos.sampled is not None and not pos.sampled.special
    assert pos.find(pos.sampled.raw) is not None


def test_legacy_eos_sampled_reports_no_position():
    c = legacy_choice("llama_candidates_eos_sampled.json")
    assert c["finish_reason"] == "stop"
    assert parse_legacy(c["logprobs"], k=20, text=c["text"], finish_reason="stop") == []


def test_legacy_k100_collision_is_visible():
    # The server's dict keeps "" at its first rank but with the value of the last colliding
    # entry: documented here so a server fix (or regression) shows up.
    c = legacy_choice("llama_candidates_k100_collision.json")
    top = c["logprobs"]["top_logprobs"][0]
    assert len(top) < 100
    (pos,) = parse_recorded("llama_candidates_k100_collision.json", k=100)
    eos = next(x for x in pos.candidates if x.special)
    assert eos.logprob < -5  # the real EOS logprob at this prefix is about -0.52


def test_legacy_partial_utf8_split_across_two_positions():
    positions = parse_recorded("llama_draft_partial_utf8.json", k=5)
    c = legacy_choice("llama_draft_partial_utf8.json")
    assert len(positions) == len(c["logprobs"]["tokens"]) == 12
    # " è" = b" \xc3" + b"\xa8": the server printed them as " " and "".
    assert c["logprobs"]["tokens"][2:4] == [" ", ""]
    assert positions[2].sampled.raw == b" "
    assert positions[3].sampled is not None
    assert positions[3].sampled.raw == "è".encode() and not positions[3].sampled.special
    # Every sampled token is known here, and together they give back the server's text.
    assert b"".join(p.sampled.raw for p in positions).decode() == c["text"]


def test_legacy_emoji_runs_recover_whole_characters():
    positions = parse_recorded("llama_draft_emoji.json", k=5)
    c = legacy_choice("llama_draft_emoji.json")
    # Each emoji came as three tokens printed "": the first two are unknown (None), the third
    # carries the whole character, so the draft's bytes still join up to the text.
    assert [p.sampled is None for p in positions[:6]] == [True, True, False, True, True, False]
    assert positions[2].sampled.raw.decode() == "😅"
    assert positions[5].sampled.raw.decode() == "😆"
    joined = b"".join(p.sampled.raw for p in positions if p.sampled is not None)
    assert joined.decode() == c["text"]
    # The partial-byte candidates show up as the (ambiguous) "" special candidate.
    assert positions[1].candidates[0].special


def test_legacy_sampled_outside_topk_kept_and_cut_to_k():
    positions = parse_recorded("llama_draft_partial_utf8.json", k=5)
    # Position 8: "Our" was sampled at -9.12, outside the top 5; the server added it as a 6th.
    pos = positions[8]
    assert len(pos.candidates) == 5
    assert pos.find(b"Our") is None
    assert pos.sampled.raw == b"Our" and pos.sampled.logprob == pytest.approx(-9.12, abs=0.01)
    assert all(a.logprob >= b.logprob for a, b in zip(pos.candidates, pos.candidates[1:], strict=False))


def test_legacy_draft_16_positions():
    positions = parse_recorded("llama_draft_16.json", k=20)
    assert len(positions) == 16
    assert all(1 <= len(p.candidates) <= 20 for p in positions)
    assert all(p.sampled is not None for p in positions)


def test_legacy_via_openai_sdk_model():
    # The same payload through the SDK's own response type parses the same way.
    resp = Completion.model_validate(load("llama_draft_partial_utf8.json")["response"])
    ch = resp.choices[0]
    sdk = parse_logprobs(ch.logprobs, k=5, text=ch.text, finish_reason=ch.finish_reason)
    assert sdk == parse_recorded("llama_draft_partial_utf8.json", k=5)


def test_legacy_openai_bytes_tokens_and_sentinels():
    # OpenAI legacy completions spell partial bytes as "bytes:\\xNN"; "bytes:\\x20" and " "
    # are the same bytes and merge.
    lp = {
        "tokens": ["bytes:\\xe2\\x80", "bytes:\\x99"],
        "token_logprobs": [-0.1, -0.01],
        "top_logprobs": [
            {"bytes:\\xe2\\x80": -0.1, "bytes:\\x20": -3.0, " ": -3.0, "x": -9999.0},
            {"bytes:\\x99": -0.01},
        ],
        "text_offset": [0, 0],
    }
    positions = parse_legacy(lp, k=5, text="\u2019", finish_reason="length")
    assert positions[0].sampled.raw == b"\xe2\x80"
    assert [c.raw for c in positions[0].candidates] == [b"\xe2\x80", b" "]
    assert positions[0].candidates[1].prob == pytest.approx(2 * math.exp(-3.0))
    assert positions[0].candidates[0].text is None  # not valid UTF-8 on its own
    assert (positions[0].sampled.raw + positions[1].sampled.raw).decode() == "\u2019"


def test_legacy_echo_style_nulls():
    lp = {"tokens": ["a"], "token_logprobs": [None], "top_logprobs": [None], "text_offset": [0]}
    (pos,) = parse_legacy(lp)
    assert pos.candidates == () and pos.sampled.raw == b"a" and pos.sampled.logprob == -math.inf


# -- chat shape, hand-written ---------------------------------------------------------------


def test_chat_openai_shape():
    resp = ChatCompletion.model_validate(load("openai_chat_logprobs.json"))
    ch = resp.choices[0]
    positions = parse_logprobs(ch.logprobs, k=3, finish_reason=ch.finish_reason)
    assert len(positions) == 4
    p0 = positions[0]
    assert [c.raw for c in p0.candidates] == [b"The", b"A", b"Hello"]  # sentinel gone, cut to 3
    assert p0.sampled.raw == b"Caf" and p0.sampled.logprob == -4.5  # outside the top 3
    # é split across two positions: raw bytes from the byte arrays, not valid text alone.
    assert positions[1].sampled.raw == b"\xc3" and positions[1].sampled.text is None
    assert positions[2].sampled.raw == b"\xa9"
    assert positions[1].candidates[0].raw == b"\xc3" and not positions[1].candidates[0].special
    joined = b"".join(p.sampled.raw for p in positions)
    assert joined.decode() == ch.message.content
    # Two entries with the same bytes (different ids) merge by logsumexp.
    the = positions[3].find(b" the")
    assert the.logprob == pytest.approx(-1.2 + math.log(2))
    assert positions[3].candidates[0] == the


def test_chat_vllm_eos_last_position_is_special():
    raw = load("vllm_chat_continue.json")
    ch = raw["choices"][0]
    positions = parse_chat(ch["logprobs"]["content"], k=5, finish_reason="stop")
    assert positions[-1].sampled.special
    assert positions[0].find(b"").special  # EOS as a candidate
    # Same shape with finish_reason "length" would not be end-of-sequence for the sampled one.
    other = parse_chat(ch["logprobs"]["content"], k=5, finish_reason="length")
    assert other[-1].sampled is None or not other[-1].sampled.special


def test_chat_llama_server_special_text():
    positions = parse_logprobs(load("llama_server_chat_logprobs.json"), k=3)
    eos = positions[0].find(b"<|im_end|>")
    assert eos is not None and eos.special
    assert not positions[0].find(b".").special


def test_none_and_empty():
    assert parse_logprobs(None) == []
    assert parse_logprobs({"content": []}) == []
    assert parse_legacy({"tokens": [], "token_logprobs": [], "top_logprobs": []}) == []


# -- fragments, ids and llama-server's merged characters ---------------------------------------


def test_fragment_spellings_are_never_text_or_eos():
    # One position listing a fragment in every spelling servers use, an EOS printed as
    # nothing, and an ordinary token.
    content = [{
        "id": 30, "token": "a", "bytes": [97], "logprob": -0.5, "top_logprobs": [
            {"id": 30, "token": "a", "bytes": [97], "logprob": -0.5},
            {"id": 41, "token": "", "bytes": [0x9A], "logprob": -1.0},  # llama-server
            {"id": 42, "token": "\ufffd", "logprob": -1.5},  # decoded alone, bytes lost
            {"id": 43, "token": "", "logprob": -2.0},  # no bytes, not an EOS id
            {"id": 2, "token": "", "bytes": [], "logprob": -2.5},  # control token, no text
        ],
    }]
    (pos,) = parse_chat(content, eos_token_ids=[2])
    by_id = {c.id: c for c in pos.candidates}
    assert set(by_id) == {30, 41, 2}  # the two whose bytes are unknown are dropped
    assert by_id[41].raw == b"\x9a" and by_id[41].text is None and not by_id[41].special
    assert by_id[2].special and not by_id[30].special
    assert all(c.raw != "\ufffd".encode() for c in pos.candidates)
    # The legacy "bytes:" spelling is a fragment, not EOS.
    (leg,) = parse_legacy({
        "tokens": ["a"], "token_logprobs": [-0.1], "text_offset": [0],
        "top_logprobs": [{"a": -0.1, "bytes:\\x9a": -2.0}],
    })
    frag = leg.find(b"\x9a")
    assert frag is not None and not frag.special and frag.text is None


def test_sampled_id_marks_eos_and_ids_are_kept():
    content = [{"id": 2, "token": "<|im_end|>", "bytes": list(b"<|im_end|>"), "logprob": -0.3,
                "top_logprobs": [{"id": 2, "token": "<|im_end|>", "bytes": list(b"<|im_end|>"),
                                  "logprob": -0.3}]}]
    (pos,) = parse_chat(content, eos_token_ids=[2], finish_reason="stop")
    assert pos.sampled.special and pos.sampled.id == 2 and pos.candidates[0].id == 2


def _entry(tid, sent, lp, tops):
    return {"id": tid, "token": sent.decode("utf-8", "ignore"), "bytes": list(sent),
            "logprob": lp, "top_logprobs": [
                {"id": i, "token": b.decode("utf-8", "ignore"), "bytes": list(b), "logprob": v}
                for i, b, v in tops]}


def test_llama_server_merged_character_is_an_unknown_position():
    # " 🚨" = b" \xf0\x9f" + b"\x9a" + b"\xa8" as three tokens: llama-server reports no entry
    # for the first two and, for the third, the whole character with the third token's id,
    # logprob and candidates (continuation bytes, in a context holding the unreported tokens).
    content = [
        _entry(10, b" Hi", -1.0, [(10, b" Hi", -1.0), (11, b" the", -1.2)]),
        _entry(30, b" \xf0\x9f\x9a\xa8", -0.7, [(31, b"\x80", -0.6), (30, b"\xa8", -0.7)]),
        _entry(40, b"!", -0.2, [(40, b"!", -0.2)]),
        # The same, with its own candidate not among the top k: still told by the candidates.
        _entry(50, b"\xe3\x81\x82", -0.5, [(51, b"\x81", -0.3), (52, b"\x82", -1.0)]),
        _entry(60, b"\xe3\x81\x82", -0.1, [(60, b"\xe3\x81\x82", -0.1)]),  # one token
    ]
    positions = parse_chat(content)
    assert len(positions) == len(content)
    assert positions[1] == Position((), None) and positions[3] == Position((), None)
    assert positions[0].sampled.raw == b" Hi" and positions[2].sampled.raw == b"!"
    assert positions[4].sampled.raw == "\u3042".encode() and positions[4].sampled.id == 60
    # The usable draft ends before the merged entry; nothing there reads as text or EOS.
    usable = []
    for p in positions:
        if p.sampled is None:
            break
        usable.append(p.sampled.raw)
    assert usable == [b" Hi"]


# -- recorded from the real llama-server (tests/data/record_llama_server_payloads.py) -----------

RECORDED_LS = {
    "llama_server_draft_emoji.json": "merged",
    "llama_server_draft_cjk.json": "merged",
    "llama_server_candidates_eos_in_topk.json": "eos_in_topk",
    "llama_server_draft_eos_sampled.json": "stop",
}


@pytest.mark.parametrize("name", sorted(RECORDED_LS))
def test_recorded_llama_server_payloads(name):
    record = load(name)
    eos_id = record["eos_token_id"]
    choice = record["response"]["choices"][0]
    content = choice["logprobs"]["content"]
    positions = parse_logprobs(
        choice["logprobs"], finish_reason=choice["finish_reason"], eos_token_ids=[eos_id]
    )
    assert len(positions) == len(content)
    # Each known position's bytes are what the server sent for it; the unknown ones are the
    # merged characters (their sent bytes are a whole character, their candidates fragments).
    for p, t in zip(positions, content, strict=True):
        if p.sampled is None:
            assert p.candidates == () and bytes(t["bytes"]).decode()  # a whole character
            assert any(0x80 <= x["bytes"][0] < 0xC0 for x in t["top_logprobs"] if x["bytes"])
        elif not p.sampled.special:
            assert p.sampled.raw == bytes(t["bytes"]) and p.sampled.id == t["id"]
    for p in positions:
        for c in p.candidates:
            assert c.id is not None
            if c.id == eos_id:
                assert c.special  # EOS by the server's own id
            if c.text is None:
                assert not c.special  # a fragment is never end-of-sequence
    kind = RECORDED_LS[name]
    if kind == "merged":
        assert any(p.sampled is None for p in positions)
    elif kind == "eos_in_topk":
        assert any(c.special and c.id == eos_id for c in positions[0].candidates)
    else:
        assert choice["finish_reason"] == "stop" and positions[-1].sampled.special
