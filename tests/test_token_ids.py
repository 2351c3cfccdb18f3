"""Token-id continuation on the real servers (the embedded llama-cpp-python one, and llama.cpp's
llama-server where the `llama_server` fixture exists), through the real openai SDK.

Nothing here pins a float or a sampled token: the checks are relations (ids reach the server,
the ids path and the text path see the same prompt) and a two-sample frequency test.
"""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
from scipy.stats import chi2_contingency

from vas_api.providers import connect
from vas_api.providers.openai_compat import tokenize_request
from vas_api.sampler import SamplerSettings, SpeculativeSampler, TokenSampler, run
from vas_api.sampler.target import decode_step
from vas_api.types import Prefix

pytestmark = pytest.mark.integration

SERVERS = ["local_server", "llama_server"]
CHAT = [{"role": "user", "content": "Reply with three emoji about the sea."}]


@pytest.fixture(params=SERVERS)
def server(request):
    try:
        return request.getfixturevalue(request.param)
    except pytest.FixtureLookupError:
        pytest.skip(f"no {request.param} fixture in this checkout")


@pytest.fixture
def ids_provider(server):
    client = server.client(max_retries=0, timeout=120)
    provider = connect(client, server.model, profile=server.profile, chat_template=str(server.gguf_path))
    yield provider
    client.close()


def _tokenize(provider, text: str) -> tuple[int, ...]:
    url, body = tokenize_request(provider.profile, str(provider.client.base_url), provider.model, text)
    return tuple(provider.client.post(url, body=body, cast_to=object)["tokens"])


class LastTwoChars:
    """A value of the last two characters of the text (context-dependent, deterministic)."""

    def v(self, text: str) -> float:
        a, b = (text[-2:].rjust(2))[0], text[-1:] or " "
        return 1.5 * math.sin(ord(a) * 12.9898 + ord(b) * 78.233)

    def values(self, texts):
        return [self.v(t) for t in texts]

    def score_candidates(self, prefix_text, candidate_texts):
        return [self.v(prefix_text + c) for c in candidate_texts]


def test_the_server_continues_with_ids(ids_provider):
    assert ids_provider.continues_with_ids(CHAT)
    with_ids = ids_provider.candidates(Prefix(CHAT, "", ()), k=5)
    as_text = ids_provider.candidates(Prefix(CHAT), k=5)
    prompt_ids = _tokenize(ids_provider, ids_provider.prompt_text(CHAT))
    # The server's tokenizer gives the prompt it would build from the text itself.
    assert with_ids.usage.prompt_tokens == as_text.usage.prompt_tokens == len(prompt_ids)
    a = {c.raw: c.logprob for c in with_ids.positions[0].candidates}
    b = {c.raw: c.logprob for c in as_text.positions[0].candidates}
    shared = set(a) & set(b)
    assert len(shared) >= 3  # the same distribution, up to llama.cpp's cache-state jitter
    assert all(abs(a[t] - b[t]) < 0.3 for t in shared)
    assert all(c.id is not None for c in with_ids.positions[0].candidates)


def test_a_response_that_retokenizes_differently_keeps_its_own_ids(ids_provider):
    """DESIGN.md section 7: " command" + "ers" re-tokenizes as other ids than the two pieces.
    Sent with its own ids, the server sees exactly those (the billed prompt says so)."""
    prompt = "The general spoke to his"
    pieces = _tokenize(ids_provider, " command") + _tokenize(ids_provider, "ers")
    whole = _tokenize(ids_provider, prompt + " commanders")
    prompt_ids = _tokenize(ids_provider, prompt)
    if prompt_ids + pieces == whole:
        pytest.skip("this tokenizer re-tokenizes the pieces to the same ids")
    by_ids = ids_provider.draft(Prefix(prompt, " commanders", pieces), m=1, k=3)
    by_text = ids_provider.draft(Prefix(prompt, " commanders"), m=1, k=3)
    assert by_ids.usage.prompt_tokens == len(prompt_ids) + len(pieces)
    assert by_text.usage.prompt_tokens == len(whole)


def _outcomes(provider, mode: str, n: int) -> Counter:
    counts: Counter = Counter()
    for i in range(n):
        s = SamplerSettings(betas=(3.0,), k=5, max_tokens=2, seed=i, draft_min=2, draft_max=2)
        if mode == "token":
            sampler = TokenSampler(s, Prefix(CHAT), provider.prompt_text(CHAT), by_ids=True)
        else:
            sampler = SpeculativeSampler(s, Prefix(CHAT), provider.prompt_text(CHAT), restrict_top_k=True, by_ids=True)
        run(sampler, provider, [LastTwoChars()])
        assert sampler.continuation == "token_ids"
        counts[tuple((st.raw, st.special) for st in sampler.steps)] += 1
    return counts


@pytest.mark.slow
def test_token_and_speculative_modes_agree_under_token_ids(ids_provider):
    """Two-sample chi-square (false-alarm rate 0.001) of 2-token continuations at beta 3 with a
    value of the last two characters: token mode and speculative mode (top-k drafts) condition
    on the same ids, so their outcome distributions agree. Power: with 200 draws each, a shift
    of about 0.15 in total variation between the two is detected; a smaller one is not."""
    n = 200
    tok, spec = _outcomes(ids_provider, "token", n), _outcomes(ids_provider, "speculative", n)
    keys = sorted(set(tok) | set(spec), key=lambda k: -(tok[k] + spec[k]))
    table, rest = [], [0, 0]
    for key in keys:  # pool the categories too rare for the chi-square approximation
        if tok[key] + spec[key] >= 10:
            table.append([tok[key], spec[key]])
        else:
            rest[0] += tok[key]
            rest[1] += spec[key]
    if sum(rest):
        table.append(rest)
    if len(table) < 2:
        pytest.skip("the continuation was (almost) deterministic: nothing to compare")
    p = chi2_contingency(np.array(table).T).pvalue
    assert p > 0.001, f"token vs speculative under token ids: p = {p:.2e}, table {table}"


MULTILINGUAL = [
    "Écris une phrase joyeuse sur la mer, avec des emoji.",
    "Напиши короткое доброе пожелание другу.",
    "用中文写一句关于春天的话。",
    "日本語で猫についての短い文を書いてください。",
    "Reply only with emoji that describe a party 🎉",
    "Schreibe einen fröhlichen Satz über den Winter mit Emoji.",
]


def test_emoji_and_non_english_generations_never_fail(ids_provider):
    """Speculative VAS at beta 4 across emoji and non-English prompts: no error, every call
    continued with ids (one per committed token), and the committed tokens' bytes decode to the
    response (fragments included)."""
    for i, prompt in enumerate(MULTILINGUAL):
        chat = [{"role": "user", "content": prompt}]
        s = SpeculativeSampler(SamplerSettings(betas=(4.0,), k=10, max_tokens=24, seed=i), Prefix(chat),
                               ids_provider.prompt_text(chat), restrict_top_k=True, by_ids=True)
        run(s, ids_provider, [LastTwoChars()])
        assert s.continuation == "token_ids" and s.steps
        assert len(s.response_ids) == sum(st.tokens for st in s.steps)
        joined = b"".join(st.raw for st in s.steps if not st.special)
        assert decode_step(b"", joined)[0] == s.response
