"""Exactness: the empirical distribution of whole responses matches the analytic VAS target.

The fake provider is a token-level model (vas_api.providers.fake with a vocab): its next-token
distribution depends on the last token's bytes, some candidates fall outside the top k, two
tokens with identical bytes (the text "é" and the bytes b"\\xc3\\xa9") are merged into one
candidate, and "é" can also come as two byte fragments b"\\xc3" + b"\\xa9" (b"\\xc3" followed by
anything else decodes as U+FFFD). The value functions depend on the context (the last two
characters of the text), so scoring a candidate after the wrong prefix changes its shift:
unlike a value additive in the text, V(s + a) - V(s' + a) is not the same for every a.

The analytic target is computed here from its definition (vas_api.sampler.target's module
docstring), independently of vas_api.sampler:
    P(response) = prod_t  softmax_topp( (log base(a_t | s_t) + sum_i beta_i (V_i(s_t + a_t) - mean)) / T )
over the top-k options, where s_t + a_t is the prompt text plus the decoded text after a_t.
Each case draws DRAWS responses of up to MAX_TOKENS tokens and compares them with a chi-square
test at false-alarm rate 0.001 (p > 0.001 passes). Each guard test runs the nearest wrong rule
and shows the same statistic rejects it (p < 1e-6), so the tests have power against it.
"""

from __future__ import annotations

import importlib
import math
import zlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import pytest
from scipy.stats import chisquare

from vas_api.providers.fake import EOS, FakeProvider
from vas_api.sampler import SamplerSettings, SpeculativeSampler, TokenSampler, run
from vas_api.types import Draft, Prefix, ProviderProfile

run_module = importlib.import_module("vas_api.sampler.run")  # the module, not the function

K = 5
MAX_TOKENS = 3
DRAWS = 10_000
PROMPT = "q:"
VOCAB: tuple[str | bytes, ...] = ("q:", "a", "b", "ab", "é", b"\xc3", b"\xa9", b"\xc3\xa9")
TOKENS = VOCAB[1:] + (EOS,)  # what the model can generate


def _raw(t: str | bytes) -> bytes:
    return t if isinstance(t, bytes) else t.encode()


def next_token(context: tuple[str | bytes, ...]) -> dict[str | bytes, float]:
    """Known base model: a fixed pseudo-random table per last token's bytes (no ties)."""
    last = _raw(context[-1]) if context else b""
    seed = zlib.crc32(last)
    w = {t: 0.15 + (math.sin(seed * 1e-3 + 1.7 * i) + 1.0) ** 2 for i, t in enumerate(TOKENS)}
    if last == b"\xc3":  # mostly completes the character
        w[b"\xa9"] *= 6.0
    w[EOS] *= 0.4
    return w


def complete_text(raw: bytes) -> str:
    """Decoded text of committed bytes: a trailing lone lead byte b"\\xc3" is still pending
    (the only multi-byte lead in VOCAB), every other invalid byte reads as U+FFFD."""
    if raw.endswith(b"\xc3"):
        raw = raw[:-1]
    return raw.decode("utf-8", errors="replace")


def _is_text(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


class PairValue:
    """V(text) = a fixed pseudo-random function of the last two characters of the text."""

    def __init__(self, salt: float) -> None:
        self.salt, self.calls = salt, 0

    def v(self, text: str) -> float:
        a, b = (text[-2:].rjust(2))[0], text[-1:] or " "
        return 1.5 * math.sin(ord(a) * 12.9898 + ord(b) * 78.233 + self.salt)

    def values(self, texts: Sequence[str]) -> list[float]:
        return [self.v(t) for t in texts]

    def score_candidates(self, prefix_text: str, candidate_texts: Sequence[str]) -> list[float]:
        self.calls += 1
        return [self.v(prefix_text + c) for c in candidate_texts]


V1, V2 = PairValue(0.3), PairValue(2.1)

IDS_PROFILE = ProviderProfile(
    name="fake ids", max_top_k=None, logprob_shape="chat", continuation="completions",
    top_k_param=True, n_param=True, token_id_prompts=True,
)
TEXT_PROFILE = replace(IDS_PROFILE, name="fake text", token_id_prompts=False)


def provider(by_ids: bool, seed: int = 12345, model=next_token) -> FakeProvider:
    return FakeProvider(model, profile=IDS_PROFILE if by_ids else TEXT_PROFILE, seed=seed, vocab=VOCAB)


_TOKENIZER = provider(False)


def analytic(
    values: Sequence[PairValue], betas: Sequence[float], *, by_ids: bool = True,
    temperature: float = 1.0, top_p: float = 1.0, stop: str | None = None, model=next_token,
) -> dict[tuple, float]:
    """Probability of every outcome (per-step (bytes, end) pairs, response, finish reason)."""
    out: dict[tuple, float] = {}
    prompt_tokens = _TOKENIZER.tokenize(PROMPT)

    def walk(tokens: tuple, raw: bytes, steps: tuple, prob: float) -> None:
        text = complete_text(raw)
        context = prompt_tokens + tokens if by_ids else _TOKENIZER.tokenize(PROMPT + text)
        weights = model(context)
        total = sum(weights.values())
        merged: dict[tuple[bytes, bool], tuple[float, str | bytes]] = {}
        for t, w in sorted(weights.items(), key=lambda kv: -kv[1]):
            key = (b"", True) if t == EOS else (_raw(t), False)
            p0, rep = merged.get(key, (0.0, t))
            merged[key] = (p0 + w / total, rep)
        top = sorted(merged.items(), key=lambda kv: -kv[1][0])[:K]
        if not by_ids:  # text continuation: a fragment cannot be sent as text
            top = [(key, v) for key, v in top if key[1] or _is_text(key[0])]
        after = [PROMPT + (text if special else complete_text(raw + b)) for (b, special), _ in top]
        z = np.array([math.log(p) for _, (p, _) in top])
        for vf, beta in zip(values, betas, strict=True):
            v = np.array([vf.v(x) for x in after])
            z = z + beta * (v - v.mean())
        z = z / temperature
        p = np.exp(z - z.max())
        p /= p.sum()
        if top_p < 1:
            order = np.argsort(-p)
            keep = order[: int(np.searchsorted(np.cumsum(p[order]), top_p) + 1)]
            cut = np.zeros_like(p)
            cut[keep] = p[keep]
            p = cut / cut.sum()
        for ((b, special), (_, rep)), q in zip(top, p, strict=True):
            if q == 0:
                continue
            step = steps + ((b, special),)
            if special:
                key = (step, text, "stop")
                out[key] = out.get(key, 0.0) + prob * q
                continue
            new_raw = raw + b
            new_text = complete_text(new_raw)
            if stop is not None and stop in new_text:
                key = (step, new_text[: new_text.index(stop)], "stop")
                out[key] = out.get(key, 0.0) + prob * q
            elif len(step) == MAX_TOKENS:
                key = (step, new_text, "length")
                out[key] = out.get(key, 0.0) + prob * q
            else:
                walk(tokens + (rep,), new_raw, step, prob * q)

    walk((), b"", (), 1.0)
    return out


def draw(
    mode: str, values: Sequence[PairValue], betas: Sequence[float], *, by_ids: bool = True,
    restrict: bool = False, temperature: float = 1.0, top_p: float = 1.0,
    stop: str | None = None, draws: int = DRAWS, fake: FakeProvider | None = None, model=next_token,
    draft_min: int = 1,
) -> Counter:
    """Outcomes of `draws` generations through the real samplers and `run`."""
    fake = fake or provider(by_ids, model=model)
    counts: Counter = Counter()
    for i in range(draws):
        settings = SamplerSettings(
            betas=tuple(betas), k=K, max_tokens=MAX_TOKENS, seed=i, draft_min=draft_min, draft_max=3,
            temperature=temperature, top_p=top_p, stop=(stop,) if stop else (),
        )
        if mode == "token":
            sampler = TokenSampler(settings, Prefix(PROMPT), PROMPT, by_ids=by_ids)
        else:
            sampler = SpeculativeSampler(settings, Prefix(PROMPT), PROMPT, restrict_top_k=restrict, by_ids=by_ids)
        run(sampler, fake, list(values))
        assert sampler.continuation == ("token_ids" if by_ids else "text")
        steps = tuple((s.raw if not s.special else b"", s.special) for s in sampler.steps)
        counts[(steps, sampler.response, sampler.finish_reason)] += 1
    return counts


def chi_square_p(counts: Counter, expected: dict[tuple, float]) -> float:
    """Chi-square p-value of `counts` against `expected`; 0 when an impossible outcome occurs."""
    if set(counts) - set(expected):
        return 0.0
    n = sum(counts.values())
    keys = sorted(expected, key=lambda k: -expected[k])
    obs, exp, pool_o, pool_e = [], [], 0, 0.0
    for key in keys:  # pool the rare outcomes so every cell expects at least 5 draws
        e = expected[key] * n
        if e >= 5:
            obs.append(counts.get(key, 0))
            exp.append(e)
        else:
            pool_o += counts.get(key, 0)
            pool_e += e
    if pool_e > 0:
        obs.append(pool_o)
        exp.append(pool_e)
    exp_arr = np.array(exp) * (sum(obs) / sum(exp))
    return float(chisquare(obs, exp_arr).pvalue)


# (mode, restrict_top_k, value models, betas, temperature, top_p, stop)
CASES = [
    ("token", False, [V1], [0.0], 1.0, 1.0, None),
    ("token", False, [V1], [2.0], 1.0, 1.0, None),
    ("token", False, [V1, V2], [1.5, -0.7], 0.7, 0.9, None),
    ("speculative", False, [V1], [0.0], 1.0, 1.0, None),
    ("speculative", False, [V1], [2.0], 1.0, 1.0, None),
    ("speculative", False, [V1, V2], [1.5, -0.7], 1.0, 1.0, None),
    ("speculative", True, [V1], [0.0], 1.0, 1.0, None),
    ("speculative", True, [V1], [4.0], 1.0, 1.0, None),
    ("speculative", True, [V1], [2.0], 0.7, 0.9, None),
    ("speculative", False, [V1], [2.0], 1.6, 0.8, None),
    ("speculative", True, [V1], [2.0], 1.0, 1.0, "b"),
]


@pytest.mark.slow
@pytest.mark.parametrize(("mode", "restrict", "values", "betas", "temperature", "top_p", "stop"), CASES)
def test_matches_analytic_target_with_token_ids(mode, restrict, values, betas, temperature, top_p, stop):
    """Token-id continuation, fragments, merged candidates, temperature, top_p and a stop
    string inside a draft (stop "b" can end a 3-token draft at any position).

    Power: the nearest wrong rules (scoring after path[:j+1], dropping fragments, temperature
    left out) are rejected at p < 1e-6 with these draws (see the guard tests below)."""
    expected = analytic(values, betas, temperature=temperature, top_p=top_p, stop=stop)
    assert math.isclose(sum(expected.values()), 1.0, rel_tol=1e-9)
    counts = draw(mode, values, betas, restrict=restrict, temperature=temperature, top_p=top_p, stop=stop)
    p = chi_square_p(counts, expected)
    assert p > 0.001, f"{mode} restrict={restrict} betas={betas} T={temperature} top_p={top_p}: p = {p:.2e}"


def splits_ab(context: tuple[str | bytes, ...]) -> dict[str | bytes, float]:
    """A model for which the split matters: "a" is mostly followed by "b"; after the token
    "ab" the response mostly ends, after the token "b" it mostly goes on with "a"."""
    last = context[-1]
    if last == "a":
        return {"b": 8.0, "a": 1.0, EOS: 1.0}
    if last == "ab":
        return {EOS: 8.0, "a": 1.0, "b": 1.0}
    if last == "b":
        return {"a": 8.0, "b": 1.0, EOS: 1.0}
    return {"a": 6.0, "b": 1.0, "ab": 1.0, EOS: 1.0}


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["token", "speculative"])
def test_text_continuation_token_mode_target(mode):
    """Text continuation: fragments are not options and the server re-tokenizes the text
    ("a" + "b" comes back as the token "ab"). Token mode follows the re-tokenized target
    exactly; speculative mode conditions its drafts on the server's own ids instead, so it does
    NOT (the reason for token-id continuation): its outcomes are rejected at p < 1e-6."""
    expected = analytic([V1], [0.5], by_ids=False, model=splits_ab)
    p = chi_square_p(draw(mode, [V1], [0.5], by_ids=False, model=splits_ab, draft_min=3), expected)
    if mode == "token":
        assert p > 0.001, f"token mode, text continuation: p = {p:.2e}"
    else:
        assert p < 1e-6, f"speculative under text continuation should differ: p = {p:.2e}"


def test_guard_wrong_prefix_is_rejected(monkeypatch):
    """The nearest wrong scoring rule: candidates of drafted position j scored after
    path[:j+1] (one drafted token too many). With a value of the last two characters it
    moves the shifts and the chi-square rejects it (p < 1e-6)."""

    def wrong_score(call, value_fns, betas):
        return [
            [np.asarray(vf.score_candidates(call.prefix_text + "".join(call.path[: j + 1]), list(c)), dtype=float)
             for j, c in enumerate(call.candidates)]
            for vf in value_fns
        ]

    monkeypatch.setattr(run_module, "score", wrong_score)
    p = chi_square_p(draw("speculative", [V1], [4.0], restrict=True), analytic([V1], [4.0]))
    assert p < 1e-6


def test_guard_fragments_matter():
    """Dropping fragments under token ids (the text-continuation rule) is a different target:
    the id-continuation draws reject it (p < 1e-6)."""
    counts = draw("speculative", [V1], [2.0], restrict=True)
    assert chi_square_p(counts, analytic([V1], [2.0], by_ids=False)) < 1e-6


def test_guard_temperature_and_top_p_matter():
    """Temperature 0.7 and top_p 0.9 applied to the target: draws reject the T=1 target."""
    counts = draw("speculative", [V1], [2.0], restrict=True, temperature=0.7, top_p=0.9)
    assert chi_square_p(counts, analytic([V1], [2.0])) < 1e-6


@pytest.mark.slow
def test_split_model_exact_with_ids():
    """The same split-sensitive model under token-id continuation: speculative mode is exact
    (the guard above shows the text-continuation process is rejected at p < 1e-6)."""
    expected = analytic([V1], [0.5], model=splits_ab)
    p = chi_square_p(draw("speculative", [V1], [0.5], restrict=True, model=splits_ab, draft_min=3), expected)
    assert p > 0.001, f"speculative with ids on the split model: p = {p:.2e}"


def test_guard_beta_matters():
    """Guard against a vacuous test: beta-2 draws are far from the beta-0 target."""
    assert chi_square_p(draw("token", [V1], [2.0]), analytic([V1], [0.0])) < 1e-6


class DropsSampledEOS(FakeProvider):
    """Like llama-cpp-python's stock server: a drafted end-of-sequence position is not reported
    (a draft that samples it at once comes back empty, finish "stop")."""

    def draft(self, prefix, *, m, k, restrict_top_k=False):
        d = super().draft(prefix, m=m, k=k, restrict_top_k=restrict_top_k)
        if d.positions and d.positions[-1].sampled is not None and d.positions[-1].sampled.special:
            return Draft(d.positions[:-1], "stop", d.usage)
        return d


@pytest.mark.slow
def test_empty_draft_fallback_is_exact():
    """Drafts whose sampled end-of-sequence position is missing (empty drafts fall back to a
    candidates call): same target. Power: the guard for beta shows p < 1e-6 for this model."""
    fake = DropsSampledEOS(next_token, profile=IDS_PROFILE, seed=7, vocab=VOCAB)
    counts = draw("speculative", [V1], [2.0], restrict=True, fake=fake)
    assert any(h["call"] == "candidates" for h in fake.history)  # the fallback ran
    p = chi_square_p(counts, analytic([V1], [2.0]))
    assert p > 0.001, f"empty-draft fallback: p = {p:.2e}"


def test_ids_are_committed_and_sent():
    """Relations: every call after the first continues with ids; the committed ids decode to
    the response; a response built from fragments is continued with its own ids (the greedy
    tokenizer would turn b"\\xc3" + b"\\xa9" into "é", another id)."""
    fake = provider(True, seed=3)
    seen_fragments = False
    for seed in range(40):
        s = SpeculativeSampler(SamplerSettings(betas=(1.0,), k=K, max_tokens=6, seed=seed), Prefix(PROMPT), PROMPT,
                               restrict_top_k=True, by_ids=True)
        run(s, fake, [V1])
        ids = s.response_ids
        assert ids is not None and s.continuation == "token_ids"
        raw = b"".join(_raw(VOCAB[i]) for i in ids if i < len(VOCAB))
        assert complete_text(raw) == s.response or s.finish_reason == "stop"
        seen_fragments |= any(VOCAB[i] in (b"\xc3", b"\xa9") for i in ids if i < len(VOCAB))
    assert seen_fragments
    assert all(h["by_ids"] for h in fake.history)


def test_all_fragment_position_under_text_continuation_never_errors():
    """Text continuation at a prefix where every top-k candidate is a byte fragment: no error;
    the base's own character is committed ("base" step), then generation goes on."""

    def fragments_first(context):
        if context[-1] == "q:":
            return {b"\xc3": 1.0}
        if context[-1] == b"\xc3":
            return {b"\xa9": 1.0}
        return {"a": 1.0, "b": 1.0, EOS: 0.5}

    for mode in ("token", "speculative"):
        fake = FakeProvider(fragments_first, profile=TEXT_PROFILE, seed=1, vocab=VOCAB)
        for seed in range(10):
            st = SamplerSettings(betas=(1.0,), k=2, max_tokens=4, seed=seed)
            s = (TokenSampler(st, Prefix(PROMPT), PROMPT) if mode == "token"
                 else SpeculativeSampler(st, Prefix(PROMPT), PROMPT, restrict_top_k=True))
            run(s, fake, [V1])
            assert s.steps[0].source == "base" and s.steps[0].text == "é" and s.steps[0].tokens == 2
            assert s.response.startswith(s.steps[0].text)


def test_beta_zero_scores_nothing():
    vf = PairValue(0.0)
    draw_one = TokenSampler(SamplerSettings(betas=(0.0,), k=K, max_tokens=3, seed=0), Prefix(PROMPT), PROMPT)
    run(draw_one, provider(False), [vf])
    assert vf.calls == 0


class HidesFragments(FakeProvider):
    """Like llama.cpp's server: a drafted token that ends mid-character gets no position, and the
    next position's sampled entry carries the hidden bytes in front of its own (its id and
    candidates are its own token's)."""

    def draft(self, prefix, *, m, k, restrict_top_k=False):
        d = super().draft(prefix, m=m, k=k, restrict_top_k=restrict_top_k)
        out, hidden = [], b""
        for pos in d.positions:
            tok = pos.sampled
            if tok is not None and not tok.special and complete_text(hidden + tok.raw) != (hidden + tok.raw).decode("utf-8", "replace"):
                hidden += tok.raw  # ends mid-character: not reported
                continue
            if hidden and tok is not None:
                pos = replace(pos, sampled=replace(tok, raw=hidden + tok.raw))
                hidden = b""
            out.append(pos)
        return Draft(out, d.finish_reason, d.usage, d.excluded)


@pytest.mark.slow
def test_hidden_fragment_positions_are_exact():
    """llama-server's hidden positions (HidesFragments) with the provider's remedy: top-k drafts
    may not sample the tokens that end mid-character (b"\xc3", id 5), q is the top k minus
    those, and fragments still come from the residual. Exactly the id-continuation target
    (power: the guards above, same model and draws)."""
    fake = HidesFragments(next_token, profile=IDS_PROFILE, seed=11, vocab=VOCAB, draft_exclude=frozenset({5}))
    counts = draw("speculative", [V1], [2.0], restrict=True, fake=fake)
    p = chi_square_p(counts, analytic([V1], [2.0]))
    assert p > 0.001, f"hidden fragment positions: p = {p:.2e}"


def test_guard_hidden_positions_without_the_remedy_are_biased():
    """Without the exclusion, a draft cut where a hidden token was drafted depends on that
    token itself, which biases the output: rejected at p < 1e-6."""
    fake = HidesFragments(next_token, profile=IDS_PROFILE, seed=11, vocab=VOCAB)
    assert chi_square_p(draw("speculative", [V1], [2.0], restrict=True, fake=fake), analytic([V1], [2.0])) < 1e-6
