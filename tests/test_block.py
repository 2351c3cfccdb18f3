"""Block mode: the sans-IO sampler against the fake provider: its exact distribution over two
steps (sequential importance resampling, enumerated), stop strings across a block join, EOS,
max_tokens accounting, and the report. Chi-square tests at a false-alarm rate of 0.001.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy.stats import chisquare

import vas_api
from vas_api.providers.fake import EOS, FakeProvider, table_model
from vas_api.sampler import BlockSampler, SampleCall, SamplerSettings, ScoreCall, run
from vas_api.types import Completion, Prefix, ProviderProfile, Samples, Usage

ALPHA = 1e-3
NO_LOGPROBS = ProviderProfile(
    name="prefill, no logprobs", max_top_k=None, logprob_shape="none", continuation="prefill", n_param=True
)


def model(text: str) -> dict[str, float]:
    """A base whose next token depends on the last one (so the steps are not independent)."""
    if text.endswith("a"):
        return {"a": 0.2, "b": 0.6, EOS: 0.2}
    return {"a": 0.6, "b": 0.3, EOS: 0.1}


def value_of(response: str) -> float:
    return 1.0 * response.count("a") - 0.5 * response.count("b")


class ResponseValue:
    def values(self, texts):
        return [value_of(t[1:]) for t in texts]  # the prompt is "x"

    def score_candidates(self, prefix_text, candidate_texts):
        return self.values([prefix_text + c for c in candidate_texts])


def step_exact(prefix: str, n: int, beta: float) -> dict[str, float]:
    """P(next block = t) for one-token blocks: resample one of n iid base draws by exp(beta V)."""
    base = model("x" + prefix)
    out = dict.fromkeys(base, 0.0)
    for pool in itertools.product(base, repeat=n):
        p = math.prod(base[t] for t in pool)
        w = [math.exp(beta * value_of(prefix + ("" if t == EOS else t))) for t in pool]
        for t, wt in zip(pool, w, strict=True):
            out[t] += p * wt / sum(w)
    return out


def exact_two_steps(n: int, beta: float) -> dict[str, float]:
    out: dict[str, float] = {}
    for t1, p1 in step_exact("", n, beta).items():
        if t1 == EOS:
            out[""] = out.get("", 0.0) + p1
            continue
        for t2, p2 in step_exact(t1, n, beta).items():
            key = t1 + ("" if t2 == EOS else t2)
            out[key] = out.get(key, 0.0) + p1 * p2
    return out


@pytest.mark.slow
def test_two_steps_follow_sequential_importance_resampling():
    n, beta, draws = 2, 1.5, 3000
    exact = exact_two_steps(n, beta)
    fake = FakeProvider(model, profile=NO_LOGPROBS, seed=None)
    counts = dict.fromkeys(exact, 0)
    for i in range(draws):
        s = SamplerSettings(betas=(beta,), max_tokens=2, block_len=1, block_n=n, seed=i)
        sampler = BlockSampler(s, Prefix("x"), "x")
        run(sampler, fake, [ResponseValue()])
        counts[sampler.response] += 1
    keys = [k for k in exact if exact[k] * draws >= 5]
    rest = [k for k in exact if k not in keys]
    obs = [counts[k] for k in keys] + ([sum(counts[k] for k in rest)] if rest else [])
    exp = [exact[k] * draws for k in keys] + ([sum(exact[k] for k in rest) * draws] if rest else [])
    assert chisquare(obs, exp).pvalue > ALPHA
    base = exact_two_steps(n, 0.0)
    assert counts["aa"] / draws > base["aa"] + 0.05  # the value model (likes "a") moved it


def test_beta_zero_two_steps_are_the_base_distribution():
    draws = 2000
    base = exact_two_steps(3, 0.0)
    fake = FakeProvider(model, profile=NO_LOGPROBS, seed=None)
    counts = dict.fromkeys(base, 0)
    for i in range(draws):
        sampler = BlockSampler(SamplerSettings(betas=(0.0,), max_tokens=2, block_len=1, block_n=3, seed=i),
                               Prefix("x"), "x")
        run(sampler, fake, [ResponseValue()])
        counts[sampler.response] += 1
    assert chisquare([counts[k] for k in base], [base[k] * draws for k in base]).pvalue > ALPHA


def test_calls_ask_for_l_tokens_and_the_remainder():
    fake = FakeProvider(table_model({"z": 1.0}), profile=NO_LOGPROBS, seed=1)
    s = SamplerSettings(betas=(1.0,), max_tokens=7, block_len=3, block_n=2, seed=0)
    sampler = BlockSampler(s, Prefix("x"), "x")
    run(sampler, fake, [ResponseValue()])
    assert [h["max_tokens"] for h in fake.history] == [3, 3, 1]
    assert [h["text"] for h in fake.history] == ["x", "xzzz", "xzzzzzz"]  # each step continues the prefix
    assert sampler.response == "z" * 7 and sampler.finish_reason == "length"
    assert sampler.blocks == 3 and len(sampler.ess) == 3 and [st.source for st in sampler.steps] == ["block"] * 3


def test_a_stop_string_across_a_block_join_ends_the_response():
    fake = FakeProvider(table_model({"ab": 1.0}), profile=NO_LOGPROBS, seed=1)
    s = SamplerSettings(betas=(1.0,), max_tokens=10, block_len=1, block_n=2, stop=("ba",))
    sampler = BlockSampler(s, Prefix("x"), "x")
    run(sampler, fake, [ResponseValue()])
    assert sampler.response == "a" and sampler.finish_reason == "stop"
    assert len(fake.history) == 2  # the server never saw "ba" inside one block


def test_a_block_that_stopped_ends_the_response():
    s = SamplerSettings(betas=(1.0,), max_tokens=40, block_len=4, block_n=2, seed=0)
    sampler = BlockSampler(s, Prefix("x"), "x")
    call = sampler.next_request()
    assert isinstance(call, SampleCall) and (call.n, call.max_tokens) == (2, 4)
    sampler.feed(Samples([Completion("ab", "stop"), Completion("ab", "stop")], Usage(1, 4, 0, 1)))
    assert isinstance(sampler.next_request(), ScoreCall)
    sampler.feed([[np.array([0.0, 0.0])]])
    assert sampler.done and sampler.response == "ab" and sampler.finish_reason == "stop"


def test_an_empty_block_that_claims_length_does_not_loop():
    s = SamplerSettings(betas=(), max_tokens=40, block_len=4, block_n=1, seed=0)
    sampler = BlockSampler(s, Prefix("x"), "x")
    sampler.next_request()
    sampler.feed(Samples([Completion("", "length")], Usage(1, 0, 0, 1)))
    assert sampler.done and sampler.response == ""


def test_client_block_mode_report_and_sdk_response():
    fake = FakeProvider(model, profile=NO_LOGPROBS, seed=2)
    client = vas_api.wrap(fake, value_model=ResponseValue(), beta=1.0)
    resp = client.completions.create(model="m", prompt="x", max_tokens=6, block_len=2, block_n=3, seed=1)
    report = resp.vas
    assert report.mode == "block" and "no logprobs" in report.mode_reason
    assert report.pool_size == 3 and report.block_len == 2 and 1 <= report.blocks <= 3
    assert all(h["n"] == 3 and h["max_tokens"] == 2 for h in fake.history)
    assert report.api_calls == len(fake.history) == report.blocks
    assert resp.choices[0].text == "".join(s.text for s in report.traces[0])
    assert "blocks of L=2" in report.summary()
