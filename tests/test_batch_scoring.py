"""Value scoring batched across concurrent requests: per-request KV caches (score_many with
keys) give the same values as a full recompute, and the ScoreBatcher really batches, isolates a
failing request, and releases a request's cache when it ends."""

from __future__ import annotations

import asyncio
import gc
import random

import numpy as np
import pytest

import vas_api
from tests.test_value_model import CANDS, PROMPT, tiny_model
from vas_api.providers.fake import EOS, AsyncFakeProvider, FakeProvider, table_model
from vas_api.sampler.core import ScoreCall
from vas_api.sampler.run import ScoreBatcher, score

pytestmark = pytest.mark.usefixtures("one_torch_thread")
ATOL = 1e-4


def test_score_many_with_keys_keeps_one_cache_per_request_and_matches_values(monkeypatch):
    model = tiny_model(seed=1, cache_slots=1)
    batched: list[int] = []
    real = model._run_batched
    monkeypatch.setattr(model, "_run_batched", lambda jobs: batched.append(len(jobs)) or real(jobs))
    rng = random.Random(0)
    prefixes = {i: PROMPT + f"Story {i}:" for i in range(6)}
    for step in range(5):
        if step == 3:  # a request joins late: an empty cache batched with full ones
            prefixes[6] = PROMPT + "A late one:"
        order = list(prefixes)
        rng.shuffle(order)
        reqs = []
        for i in order:
            path = [rng.choice(CANDS[:7]) for _ in range(2)]
            cands = [[rng.choice(CANDS) for _ in range(3)] for _ in range(3)]
            reqs.append((prefixes[i], path, cands))
        got = model.score_many(reqs, keys=order)
        for (prefix, path, cands), per_pos in zip(reqs, got, strict=True):
            for j, cs in enumerate(cands):
                want = model.values([prefix + "".join(path[:j]) + c for c in cs])
                assert np.allclose(per_pos[j].numpy(), want.numpy(), atol=ATOL)
        for i, (_, path, _) in zip(order, reqs, strict=True):
            prefixes[i] += path[0]
    # One forward per step for all the requests (not one per request).
    assert batched == [6, 6, 6, 7, 7]
    # Seven requests with one shared slot allowed, yet each kept its own cache.
    assert len(model._cache.keyed) == 7 and all(s.kv_ids for s in model._cache.keyed.values())
    model.release(order[0])
    assert len(model._cache.keyed) == 6
    with pytest.raises(vas_api.ValueModelError, match="keys"):
        model.score_many(reqs, keys=[1])


class Recorder:
    """A value function that records how it was called; raises on a poisoned prefix."""

    def __init__(self, poison: str | None = None):
        self.poison, self.many_sizes, self.released = poison, [], []

    def values(self, texts):
        return [float(len(t) % 7) for t in texts]

    def score_candidates(self, prefix_text, candidate_texts):
        if self.poison and self.poison in prefix_text:
            raise vas_api.ValueModelError("poisoned")
        return self.values([prefix_text + c for c in candidate_texts])

    def score_many(self, requests, keys=None):
        self.many_sizes.append(len(requests))
        return [[self.score_candidates(p + "".join(path[:j]), c) for j, c in enumerate(cands)]
                for p, path, cands in requests]

    def release(self, key):
        self.released.append(key)


def _call(i: int) -> ScoreCall:
    return ScoreCall(f"prefix {i} ", ("a", "b"), (("x", "yy"), ("z",), ("w", "vvv", "u")))


def test_batcher_batches_concurrent_calls_and_matches_score():
    vf = Recorder()
    batcher = ScoreBatcher(vf)

    async def main():
        return await asyncio.gather(*(batcher.score(_call(i)) for i in range(20)))

    got = asyncio.run(main())
    assert sum(vf.many_sizes) == 20 and len(vf.many_sizes) < 20  # batched
    for i, per_pos in enumerate(got):
        want = score(_call(i), [vf], [1.0])[0]
        assert all(np.array_equal(a, b) for a, b in zip(per_pos, want, strict=True))


def test_batcher_isolates_a_failing_request():
    vf = Recorder(poison="prefix 3 ")
    batcher = ScoreBatcher(vf)

    async def main():
        return await asyncio.gather(*(batcher.score(_call(i)) for i in range(6)), return_exceptions=True)

    got = asyncio.run(main())
    assert isinstance(got[3], vas_api.ValueModelError)
    assert all(isinstance(g, list) for i, g in enumerate(got) if i != 3)


def test_async_client_batches_value_calls_and_releases_caches():
    """Many concurrent requests through the async client: value calls are batched, the output
    is the same as one request at a time (same seeds, same fake server), and each request's
    cache is released when its sampler is gone."""
    table = {" good": 0.3, " bad": 0.3, " fine": 0.2, " ok": 0.1, EOS: 0.1}

    def run_all(concurrent: bool):
        vf = Recorder()
        client = vas_api.wrap(AsyncFakeProvider(FakeProvider(table_model(table), seed=0)), k=4,
                              value_model=vf, beta=2.0, mode="token")

        async def one(i):
            r = await client.completions.create(model="fake", prompt=f"P{i}:", max_tokens=6, seed=i)
            return r.choices[0].text

        async def main():
            if concurrent:
                return await asyncio.gather(*(one(i) for i in range(12)))
            return [await one(i) for i in range(12)]

        texts = asyncio.run(main())
        gc.collect()
        return texts, vf

    together, vf = run_all(True)
    alone, vf_alone = run_all(False)
    assert together == alone  # token mode on a fake server: seeds fix every draw
    assert max(vf.many_sizes) > 1 and max(vf_alone.many_sizes) == 1
    assert len(vf.released) == 12


def test_residual_score_many_adds_the_prefix_reward_to_batched_corrections():
    from estimators.baselines import PrefixRewardValue, ResidualValueModel

    res = ResidualValueModel(tiny_model(seed=2), PrefixRewardValue("vader"))
    reqs = [(PROMPT + "A great day", [" and", " a"], [[" good", " sad"], [" bad"], [" fine", "!"]]),
            (PROMPT + "It rained", [" all"], [[" day", " night"], [" long"]])]
    got = res.score_many(reqs, keys=["a", "b"])
    for (prefix, path, cands), per_pos in zip(reqs, got, strict=True):
        for j, cs in enumerate(cands):
            want = res.values([prefix + "".join(path[:j]) + c for c in cs])
            assert np.allclose(per_pos[j].numpy(), want.numpy(), atol=ATOL)
    res.release("a")
    assert set(res.model._cache.keyed) == {"b"}


def test_per_request_views_of_one_model_batch_together():
    """Each request wraps a prompt-aware value model in its own view (vas_api.value_binding);
    their score calls must still meet in the model's one batcher, scored on the view's text."""
    from vas_api.sampler.run import ascore
    from vas_api.value_binding import BoundValue

    model = tiny_model(seed=2)
    forwards: list[int] = []
    real = model._run_batched
    model._run_batched = lambda jobs: forwards.append(len(jobs)) or real(jobs)
    base = "BASE PROMPT:"
    views = [BoundValue(model, f"p{i}", base, PROMPT + f"Story {i}:") for i in range(3)]
    calls = [ScoreCall(base, ("a",), (tuple(CANDS[:3]), tuple(CANDS[3:6]))) for _ in views]

    async def main():
        return await asyncio.gather(*(ascore(c, [v], [1.0], key=v) for c, v in zip(calls, views, strict=True)))

    got = asyncio.run(main())
    assert forwards and max(forwards) == 3  # the three requests went through one forward
    for view, (per_model,) in zip(views, got, strict=True):
        own = view.own_text(base)
        want = model.values([own + c for c in CANDS[:3]])
        assert np.allclose(per_model[0], want.numpy(), atol=ATOL)
