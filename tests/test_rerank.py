"""Rerank mode: the sans-IO sampler against the fake provider, its exact finite-N distribution,
argmax, the effective sample size, pools for the user's n, and concurrency in the async driver.

Distribution claims are chi-square tests against the exact distribution of self-normalized
importance resampling with N draws (enumerated), each at a false-alarm rate of 0.001.
"""

from __future__ import annotations

import asyncio
import itertools
import math

import numpy as np
import pytest
from scipy.stats import chisquare

import vas_api
from vas_api.errors import ConfigError, ProviderError
from vas_api.providers.fake import EOS, AsyncFakeProvider, FakeProvider, table_model
from vas_api.sampler import (
    RerankSampler,
    SampleCall,
    SamplerSettings,
    ScoreCall,
    arun,
    effective_sample_size,
    resampling_probs,
    run,
)
from vas_api.types import END_OF_TEXT, Completion, Prefix, ProviderProfile, Samples, Usage

ALPHA = 1e-3
BASE = {"a": 0.5, "b": 0.3, EOS: 0.2}  # one-token responses "a", "b" or "" (EOS)
VALUE = {"a": 0.0, "b": 1.5, "": 0.5}
NO_CONTINUATION = ProviderProfile(
    name="hosted chat", max_top_k=20, logprob_shape="chat", continuation="none", n_param=True
)


class TableValue:
    """V(text) from the response after the prompt "x" (a fixed table)."""

    def values(self, texts):
        return [VALUE[t[1:]] for t in texts]

    def score_candidates(self, prefix_text, candidate_texts):
        return self.values([prefix_text + c for c in candidate_texts])


def sir_exact(base: dict[str, float], weight: dict[str, float], n: int) -> dict[str, float]:
    """P(output = y) for importance resampling of one item from n iid base draws."""
    out = dict.fromkeys(base, 0.0)
    for pool in itertools.product(base, repeat=n):
        p = math.prod(base[y] for y in pool)
        total = sum(weight[y] for y in pool)
        for y in pool:
            out[y] += p * weight[y] / total
    return out


def draw(beta: float, n_pool: int, draws: int, pick: str = "sample") -> dict[str, int]:
    fake = FakeProvider(table_model(BASE), profile=NO_CONTINUATION, seed=None)
    counts = {"a": 0, "b": 0, "": 0}
    for i in range(draws):
        s = SamplerSettings(betas=(beta,), max_tokens=1, seed=i, rerank_n=n_pool, rerank=pick)
        sampler = RerankSampler(s, Prefix("x"), "x")
        run(sampler, fake, [TableValue()])
        counts[sampler.response] += 1
    return counts


def pvalue(counts: dict[str, int], probs: dict[str, float]) -> float:
    keys = list(counts)
    n = sum(counts.values())
    return float(chisquare([counts[k] for k in keys], [probs[k] * n for k in keys]).pvalue)


@pytest.mark.slow
def test_output_follows_exact_importance_resampling_distribution():
    beta, n_pool = 1.0, 3
    weight = {"a" if t == "a" else "b" if t == "b" else EOS: math.exp(beta * v) for t, v in VALUE.items()}
    exact = sir_exact(BASE, weight, n_pool)
    probs = {"a": exact["a"], "b": exact["b"], "": exact[EOS]}
    counts = draw(beta, n_pool, 3000)
    assert pvalue(counts, probs) > ALPHA
    # and the tilt is real: "b" (highest value) is drawn more often than under the base
    assert counts["b"] / 3000 > BASE["b"] + 0.1


def test_beta_zero_is_the_base_distribution():
    counts = draw(0.0, 4, 2000)
    assert pvalue(counts, {"a": BASE["a"], "b": BASE["b"], "": BASE[EOS]}) > ALPHA


def test_argmax_keeps_the_highest_valued_response():
    fake = FakeProvider(table_model(BASE), profile=NO_CONTINUATION, seed=5)
    for i in range(40):
        s = SamplerSettings(betas=(1.0,), max_tokens=1, seed=i, rerank_n=6, rerank="argmax")
        sampler = RerankSampler(s, Prefix("x"), "x")
        run(sampler, fake, [TableValue()])
        best = max(VALUE[t] for t in sampler.pool)
        assert VALUE[sampler.response] == best
        assert sampler.probs is not None and sampler.probs.max() == 1.0


def test_state_machine_calls_and_report_fields():
    s = SamplerSettings(betas=(2.0,), max_tokens=5, seed=1, rerank_n=3, stop=("!",))
    sampler = RerankSampler(s, Prefix("x"), "x")
    call = sampler.next_request()
    assert isinstance(call, SampleCall)
    assert (call.n, call.max_tokens, call.stop, call.seed) == (3, 5, ("!",), 1)
    pool = Samples([Completion("a", "stop"), Completion("b", "length"), Completion("", "stop")], Usage(7, 3, 0, 1))
    sampler.feed(pool)
    call = sampler.next_request()
    # Finished responses ("stop") are scored with the end-of-text marker; a cut one is not.
    assert isinstance(call, ScoreCall) and call.prefix_text == "x"
    assert call.candidates == (("a" + END_OF_TEXT, "b", END_OF_TEXT),)
    sampler.feed([[np.array([0.0, 1.5, 0.5])]])
    assert sampler.done and sampler.next_request() is None
    assert sampler.response in ("a", "b", "")
    assert sampler.usage.prompt_tokens == 7 and sampler.usage.completion_tokens == 3
    assert 1.0 <= sampler.ess <= 3.0
    (step,) = sampler.steps
    assert step.source == "reranked" and step.text == sampler.response


def test_fed_the_wrong_answer_or_nothing():
    s = SamplerSettings(betas=(1.0,), max_tokens=4)
    with pytest.raises(vas_api.VASError, match="expected Samples"):
        RerankSampler(s, Prefix("x"), "x").feed([[np.zeros(2)]])
    with pytest.raises(ProviderError, match="no completions"):
        RerankSampler(s, Prefix("x"), "x").feed(Samples([], Usage()))


def test_resampling_probs_and_ess():
    p = resampling_probs([np.array([0.0, 0.0, 0.0, 0.0])], [3.0])
    assert np.allclose(p, 0.25) and math.isclose(effective_sample_size(p), 4.0)
    p = resampling_probs([np.array([0.0, 1.0]), np.array([1.0, 0.0])], [1.0, 1.0])
    assert np.allclose(p, 0.5)  # two value models that cancel
    p = resampling_probs([np.array([0.0, 50.0, 0.0])], [1.0])
    assert effective_sample_size(p) < 1.0001
    assert resampling_probs([np.array([0.2, 0.9, 0.9])], [1.0], "argmax").tolist() == [0.0, 1.0, 0.0]


def test_client_rerank_n_pools_and_report():
    fake = FakeProvider(table_model({"good": 0.3, " bad": 0.6, EOS: 0.1}), profile=NO_CONTINUATION)

    class LikesGood:
        def values(self, texts):
            return [t.count("good") for t in texts]

        def score_candidates(self, prefix_text, candidate_texts):
            return self.values([prefix_text + c for c in candidate_texts])

    client = vas_api.wrap(fake, value_model=LikesGood(), beta=2.0)
    resp = client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "hi"}], max_tokens=6, n=3, seed=4, rerank_n=5
    )
    report = resp.vas
    assert report.mode == "rerank" and "cannot continue" in report.mode_reason
    assert report.pool_size == 5 and len(report.ess) == 3 and all(1 <= e <= 5 for e in report.ess)
    assert [h["n"] for h in fake.history] == [5, 5, 5]  # one pool of N per choice
    assert report.api_calls == 3 and report.usage.calls == 3
    assert resp.usage.completion_tokens == report.usage.completion_tokens == report.tokens
    assert len(resp.choices) == 3 and "N=5" in report.summary()


def test_rerank_options_are_validated_before_any_call():
    fake = FakeProvider(table_model(BASE), profile=NO_CONTINUATION)
    client = vas_api.wrap(fake)
    for bad, words in [({"rerank_n": 0}, "rerank_n"), ({"rerank": "best"}, "argmax"), ({"top_p": 0.5}, "top_p")]:
        with pytest.raises(ConfigError, match=words):
            client.completions.create(model="m", prompt="x", max_tokens=3, **bad)
    assert fake.history == []


def test_async_driver_makes_n_concurrent_calls_without_n_param():
    profile = ProviderProfile(name="one per call", max_top_k=None, logprob_shape="none", continuation="none", n_param=False)
    sync = FakeProvider(table_model(BASE), profile=profile)
    provider = AsyncFakeProvider(sync)
    in_flight, peak = 0, 0
    inner = provider.sample

    async def counting_sample(prefix, **kw):
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0)
        try:
            return await inner(prefix, **kw)
        finally:
            in_flight -= 1

    provider.sample = counting_sample
    sampler = RerankSampler(SamplerSettings(betas=(1.0,), max_tokens=1, seed=3, rerank_n=4), Prefix("x"), "x")
    timings = asyncio.run(arun(sampler, provider, [TableValue()]))
    assert [h["n"] for h in sync.history] == [1, 1, 1, 1]
    assert peak == 4 and timings.api_calls == 4 and len(sampler.pool) == 4
    assert sampler.usage.calls == 4
