"""Integration tests against llama.cpp's own server (llama-server) with the SmolLM2 GGUF.

The `llama_server` fixture builds the binary once per machine when it is missing (never a skip).
Nothing here pins a float or a sampled token: the checks are relations (the probe against the
launcher's profile, greedy = argmax, ids that detokenize to their bytes, bytes that join to the
text) and frequency tests with a stated false-alarm rate.
"""

from __future__ import annotations

import httpx
import pytest

from vas_api.profiles import probe_profile
from vas_api.providers import connect
from vas_api.types import Prefix

from .test_local_integration import _chi_square_p

pytestmark = pytest.mark.integration

CITY = Prefix("The best thing about living in a big city is")
EMOJI = Prefix([{"role": "user", "content": "Reply with five emoji and a Japanese greeting."}])


@pytest.fixture(scope="module")
def ls_provider(llama_server, llama_server_client):
    return connect(
        llama_server_client, llama_server.model, chat_template=str(llama_server.gguf_path),
        profile=llama_server.profile,
    )


def test_models_and_probe(llama_server, llama_server_client):
    ids = [m.id for m in llama_server_client.models.list().data]
    assert llama_server.model in ids
    profile = probe_profile(llama_server_client, llama_server.model, refresh=True, cache=False)
    static = llama_server.profile
    assert profile.family == static.family == "llama.cpp"
    assert profile.logprob_shape == static.logprob_shape == "chat"  # on /v1/completions
    assert profile.continuation == "completions" and profile.completions
    assert profile.top_k_param  # the powered check decided (false-alarm rate 1e-3)
    assert profile.n_param == static.n_param
    assert profile.token_id_prompts and profile.tokenize and profile.apply_template
    assert profile.eos_token_ids and set(profile.eos_token_ids) <= set(static.eos_token_ids)
    assert profile.max_top_k is None or profile.max_top_k >= 20
    assert profile.anchor_token_id == static.anchor_token_id is not None


def test_candidates_are_the_models_own_distribution(ls_provider, llama_server):
    draft = ls_provider.candidates(CITY, k=20)
    (pos,) = draft.positions
    assert len(pos.candidates) == 20 and draft.usage.calls == 1
    assert sum(c.prob for c in pos.candidates) <= 1.0 + 1e-6
    lps = [c.logprob for c in pos.candidates]
    assert lps == sorted(lps, reverse=True)
    assert all(c.id is not None for c in pos.candidates)
    # Greedy decoding picks the top candidate.
    greedy = httpx.post(f"{llama_server.base_url}/completions", json={
        "model": llama_server.model, "prompt": CITY.prompt, "max_tokens": 1,
        "temperature": 0.0, "logprobs": 1,
    }, timeout=60).json()["choices"][0]["logprobs"]["content"][0]
    assert greedy["id"] == pos.candidates[0].id
    # Every candidate's id detokenizes to exactly its bytes (complete-UTF-8 ones compare as text).
    for c in pos.candidates[:8]:
        text = httpx.post(f"{llama_server.root_url}/detokenize", json={"tokens": [c.id]},
                          timeout=30).json()["content"]
        if c.text is not None:
            assert text == c.text


def test_candidates_where_the_model_starts_a_multibyte_character(ls_provider, llama_server):
    # Where the model most likely starts an emoji, an unanchored max_tokens=1 call that samples a
    # byte fragment comes back with no logprobs at all; the provider's (anchored) candidates
    # call always gets the position, with the same distribution as an unanchored call that
    # happened to sample a whole token.
    from vas_api.providers.openai_wire import neutral_sampler_params

    pos = ls_provider.candidates(EMOJI, k=10).positions[0]
    assert len(pos.candidates) == 10 and pos.sampled is None
    assert any(c.text is None and not c.special for c in pos.candidates)  # a fragment, kept
    standard, extra = neutral_sampler_params(ls_provider.profile)
    body = {"model": llama_server.model, "prompt": ls_provider.prompt_text(EMOJI.prompt),
            "max_tokens": 1, "logprobs": 10, **standard, **extra}
    reported = 0
    # Seeds until one call samples a whole token; a false failure has probability
    # (1 - P(whole token here))^64, below 1e-3 whenever that P is at least 0.1.
    for seed in range(64):
        if reported:
            break
        lp = httpx.post(f"{llama_server.base_url}/completions", json={**body, "seed": seed},
                        timeout=60).json()["choices"][0]["logprobs"]
        if not lp or not lp.get("content"):
            continue  # it sampled a fragment: no position reported
        reported += 1
        # llama.cpp's logits move by up to ~0.1 nats with its prompt-cache state (README), so
        # the relation allows that: the same tokens (near-ties may swap at the edge), the same
        # logprobs within 0.15.
        tops = {t["id"]: t["logprob"] for t in lp["content"][0]["top_logprobs"]}
        ours = {c.id: c.logprob for c in pos.candidates}
        assert len(tops.keys() & ours.keys()) >= 8
        assert all(abs(tops[i] - ours[i]) < 0.15 for i in tops.keys() & ours.keys())
    assert reported >= 1


def test_drafts_follow_reported_logprobs(ls_provider):
    """Pearson chi-square of 300 one-token drafts (neutral sampler chain) against the reported
    candidate probabilities, false-alarm rate 1e-3. Power: llama-server's default chain
    (top_k 40, top_p 0.95, min_p 0.05, temperature 0.8) removes or reweights several % of the
    mass at this prefix, which 300 draws detect; a wrong neutral table would fail here."""
    (pos,) = ls_provider.candidates(CITY, k=20).positions
    probs = {c.raw: c.prob for c in pos.candidates if not c.special}
    drafted = [ls_provider.draft(CITY, m=1, k=20).positions[0].sampled for _ in range(300)]
    assert _chi_square_p([d.raw for d in drafted], probs) > 1e-3
    # restrict_top_k: every drafted token is among the top k.
    restricted = [
        ls_provider.draft(CITY, m=1, k=5, restrict_top_k=True).positions[0].sampled.raw
        for _ in range(40)
    ]
    top5 = {c.raw for c in pos.candidates[:5]}
    assert set(restricted) <= top5


def test_default_sampler_chain_does_not_follow_reported_logprobs(ls_provider, llama_server):
    """The power behind the test above: llama-server's own defaults (top_k 40, top_p 0.95,
    min_p 0.05, temperature 0.8) sample from another distribution, and 300 draws show it."""
    (pos,) = ls_provider.candidates(CITY, k=20).positions
    probs = {c.raw: c.prob for c in pos.candidates if not c.special}
    draws = []
    for seed in range(300):
        body = {"model": llama_server.model, "prompt": CITY.prompt, "max_tokens": 1,
                "logprobs": 1, "seed": seed}
        entry = httpx.post(f"{llama_server.base_url}/completions", json=body,
                           timeout=60).json()["choices"][0]["logprobs"]["content"][0]
        draws.append(bytes(entry["bytes"]))
    assert _chi_square_p(draws, probs) < 1e-3


def test_emoji_drafts_give_consistent_positions(ls_provider, llama_server):
    # Drafts that cross multi-byte characters. llama-server reports no entry for the tokens
    # that start a character and one merged entry (whole character, the last token's
    # candidates) for the token that completes it: that entry parses as unknown, every other
    # position keeps its own bytes and id, and the usable draft (up to the first unknown) is a
    # prefix of the server's text.
    from vas_api.logprobs import DEFAULT_SPECIAL_TOKENS, parse_logprobs
    from vas_api.providers.openai_wire import neutral_sampler_params

    standard, extra = neutral_sampler_params(ls_provider.profile)
    merged = 0
    for seed in range(32):  # until one draft crosses a multi-byte character (usually the first)
        if merged:
            break
        body = {"model": llama_server.model, "prompt": ls_provider.prompt_text(EMOJI.prompt),
                "max_tokens": 16, "logprobs": 5, "seed": seed, **standard, **extra}
        choice = httpx.post(f"{llama_server.base_url}/completions", json=body,
                            timeout=60).json()["choices"][0]
        content = choice["logprobs"]["content"]
        positions = parse_logprobs(
            choice["logprobs"], finish_reason=choice["finish_reason"],
            special_tokens=DEFAULT_SPECIAL_TOKENS | set(ls_provider.profile.special_tokens),
            eos_token_ids=ls_provider.profile.eos_token_ids,
        )
        assert len(positions) == len(content)
        usable = b""
        for p, entry in zip(positions, content, strict=True):
            if p.sampled is None:
                merged += 1
                assert p.candidates == ()
                break
            if not p.sampled.special:
                assert p.sampled.raw == bytes(entry["bytes"]) and p.sampled.id == entry["id"]
                usable += p.sampled.raw
            for c in p.candidates:  # fragments are never text and never end-of-sequence
                assert not (c.text is None and c.special)
        assert choice["text"].encode().startswith(usable)
    assert merged >= 1  # the prompt did produce multi-byte characters over several tokens


def test_missing_binary_says_how_to_build(tmp_path, monkeypatch):
    from vas_api.errors import LocalServerError
    from vas_api.local import LlamaServer, find_llama_server

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setenv("VAS_API_LLAMA_SERVER", str(tmp_path / "nope"))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(LocalServerError, match="tools/llama_server.py"):
        find_llama_server()
    with pytest.raises(LocalServerError, match="does not exist"):
        LlamaServer(binary=tmp_path / "missing").start()


def test_llama_server_exits_during_startup_shows_its_log(tmp_path, llama_server):
    from vas_api.errors import LocalServerError
    from vas_api.local import LlamaServer

    bogus = tmp_path / "bogus.gguf"
    bogus.write_bytes(b"not a gguf")
    with pytest.raises(LocalServerError, match="exited during startup"):
        LlamaServer(bogus, binary=llama_server.binary, startup_timeout=60).start()
