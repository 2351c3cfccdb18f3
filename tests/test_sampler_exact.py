"""Exactness: the empirical distribution of whole responses matches the analytic VAS target.

The fake provider has known next-token distributions (they depend on the text so far, and two
of the six tokens fall outside the top k = 4), and the value functions are fixed formulas. The
analytic target is computed here from the definition, independently of vas_api.sampler.target:
    P(response) = prod_t  base(a_t | s_t) * exp(sum_i beta_i V_i(s_t + a_t)) / Z_t   over top-k
For every mode and setting, 20,000 responses of up to 3 tokens are drawn and compared with a
chi-square test (p > 0.001).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

import numpy as np
import pytest
from scipy.stats import chisquare

from vas_api.providers.fake import EOS, FakeProvider
from vas_api.sampler import SamplerSettings, SpeculativeSampler, TokenSampler, run
from vas_api.types import Prefix

K = 4
MAX_TOKENS = 3
DRAWS = 20_000
PROMPT = "q:"
VOCAB = ["a", "b", "c", "d", "e", EOS]


def next_token(text: str) -> dict[str, float]:
    """Known base distribution: rotates with the last character, so positions differ."""
    base = [0.30, 0.22, 0.18, 0.12, 0.10, 0.08]
    shift = ord(text[-1]) % len(VOCAB)
    return {tok: base[(i + shift) % len(base)] for i, tok in enumerate(VOCAB)}


class FormulaValue:
    """A fixed value function of the text; counts calls so tests can see it was used."""

    def __init__(self, weights: dict[str, float], bonus_len: float = 0.0) -> None:
        self.weights, self.bonus_len, self.calls = weights, bonus_len, 0

    def v(self, text: str) -> float:
        return sum(w * text.count(ch) for ch, w in self.weights.items()) + self.bonus_len * len(text)

    def values(self, texts: Sequence[str]) -> list[float]:
        return [self.v(t) for t in texts]

    def score_candidates(self, prefix_text: str, candidate_texts: Sequence[str]) -> list[float]:
        self.calls += 1
        return [self.v(prefix_text + c) for c in candidate_texts]


V1 = FormulaValue({"a": 0.8, "c": -0.5, "e": 1.5})
V2 = FormulaValue({"b": 1.0, "d": -1.0}, bonus_len=0.3)


def analytic(values: Sequence[FormulaValue], betas: Sequence[float]) -> dict[tuple[str, ...], float]:
    """Probability of every response (tuple of tokens, EOS included) under the target."""
    out: dict[tuple[str, ...], float] = {}

    def walk(tokens: tuple[str, ...], text: str, prob: float) -> None:
        if (tokens and tokens[-1] == EOS) or len(tokens) == MAX_TOKENS:
            out[tokens] = out.get(tokens, 0.0) + prob
            return
        dist = next_token(PROMPT + text)
        top = sorted(dist, key=lambda t: (-dist[t], t))[:K]
        weights = {}
        for t in top:
            ext = PROMPT + text + ("" if t == EOS else t)
            weights[t] = dist[t] * math.exp(sum(b * vf.v(ext) for vf, b in zip(values, betas, strict=False)))
        z = sum(weights.values())
        for t, w in weights.items():
            walk(tokens + (t,), text + ("" if t == EOS else t), prob * w / z)

    walk((), "", 1.0)
    return out


def draw(mode: str, values: Sequence[FormulaValue], betas: Sequence[float], restrict: bool = False) -> Counter:
    provider = FakeProvider(next_token, seed=12345)
    counts: Counter = Counter()
    for i in range(DRAWS):
        settings = SamplerSettings(betas=tuple(betas), k=K, max_tokens=MAX_TOKENS, seed=i, draft_min=1, draft_max=3)
        prefix = Prefix(PROMPT)
        if mode == "token":
            sampler = TokenSampler(settings, prefix, PROMPT)
        else:
            sampler = SpeculativeSampler(settings, prefix, PROMPT, restrict_top_k=restrict)
        run(sampler, provider, list(values))
        counts[tuple(EOS if s.special else s.text for s in sampler.steps)] += 1
    return counts


def chi_square_p(counts: Counter, expected: dict[tuple[str, ...], float]) -> float:
    unexpected = set(counts) - set(expected)
    assert not unexpected, f"responses the target gives probability 0: {sorted(unexpected)[:5]}"
    # Pool the rare outcomes so every cell expects at least 5 draws.
    keys = sorted(expected, key=lambda k: -expected[k])
    obs, exp, pool_o, pool_e = [], [], 0, 0.0
    for key in keys:
        e = expected[key] * DRAWS
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


CASES = [
    # (mode, restrict_top_k, value models, betas)
    ("token", False, [V1], [0.0]),
    ("token", False, [V1], [1.0]),
    ("token", False, [V1, V2], [1.5, 0.7]),
    ("speculative", False, [V1], [0.0]),
    ("speculative", False, [V1], [1.0]),
    ("speculative", False, [V1], [4.0]),
    ("speculative", False, [V1, V2], [1.5, 0.7]),
    ("speculative", True, [V1], [0.0]),
    ("speculative", True, [V1], [1.0]),
    ("speculative", True, [V1], [4.0]),
    ("speculative", True, [V1, V2], [1.5, 0.7]),
]


@pytest.mark.slow
@pytest.mark.parametrize(("mode", "restrict", "values", "betas"), CASES)
def test_matches_analytic_target(mode, restrict, values, betas):
    expected = analytic(values, betas)
    assert math.isclose(sum(expected.values()), 1.0, rel_tol=1e-9)
    counts = draw(mode, values, betas, restrict)
    p = chi_square_p(counts, expected)
    assert p > 0.001, f"{mode} restrict={restrict} betas={betas}: chi-square p = {p:.2e}"


def test_the_test_can_fail():
    """Guard against a vacuous test: token-mode draws at beta 1 are far from the beta-0 target."""
    counts = draw("token", [V1], [1.0])
    assert chi_square_p(counts, analytic([V1], [0.0])) < 1e-6


def test_beta_zero_scores_nothing():
    vf = FormulaValue({"a": 1.0})
    draw_one = TokenSampler(SamplerSettings(betas=(0.0,), k=K, max_tokens=3, seed=0), Prefix(PROMPT), PROMPT)
    run(draw_one, FakeProvider(next_token), [vf])
    assert vf.calls == 0
