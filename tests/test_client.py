"""The OpenAI-shaped client over the fake provider: SDK types, report, seeds, async, errors."""

from __future__ import annotations

import asyncio

import pytest
from openai.types import Completion
from openai.types.chat import ChatCompletion

import vas_api
from vas_api.errors import CapabilityError, CheckpointError, ConfigError
from vas_api.providers.fake import EOS, AsyncFakeProvider, FakeProvider, table_model
from vas_api.types import ProviderProfile

TABLE = {"good": 0.3, " bad": 0.3, " fine": 0.2, " ok": 0.1, "!": 0.05, EOS: 0.05}


class LikesGood:
    """Value = number of times "good" appears: beta > 0 pushes towards it."""

    def values(self, texts):
        return [t.count("good") for t in texts]

    def score_candidates(self, prefix_text, candidate_texts):
        return [(prefix_text + c).count("good") for c in candidate_texts]


def make(**kw):
    return vas_api.wrap(FakeProvider(table_model(TABLE), seed=1), **kw)


def test_completion_returns_sdk_type_with_report():
    client = make(value_model=LikesGood(), beta=2.0, k=4)
    resp = client.completions.create(model="fake", prompt="Say:", max_tokens=12, seed=3)
    assert isinstance(resp, Completion)
    report = resp.vas
    assert report.mode == "speculative"
    assert report.tokens == len(report.traces[0]) >= 1
    assert resp.usage.completion_tokens == report.usage.completion_tokens
    assert resp.usage.prompt_tokens == report.usage.prompt_tokens > 0
    assert report.api_calls >= 1 and report.drafted >= report.accepted
    assert "VASReport(" in repr(report) and "<span" in report._repr_html_()
    assert "".join(s.text for s in report.traces[0]) .startswith(resp.choices[0].text)


def test_chat_returns_chat_completion():
    client = make(value_model=LikesGood(), beta=1.0, k=4, mode="token")
    resp = client.chat.completions.create(model="fake", messages=[{"role": "user", "content": "hi"}], max_tokens=5)
    assert isinstance(resp, ChatCompletion)
    assert resp.choices[0].message.role == "assistant"
    assert resp.vas.mode == "token" and resp.vas.api_calls == resp.vas.tokens


def test_beta_steers_towards_value():
    client = make(value_model=LikesGood(), k=4)
    base = [client.completions.create(model="f", prompt="x", max_tokens=8, beta=0.0, seed=s).choices[0].text for s in range(60)]
    steer = [client.completions.create(model="f", prompt="x", max_tokens=8, beta=3.0, seed=s).choices[0].text for s in range(60)]
    assert sum(t.count("good") for t in steer) > 1.5 * sum(t.count("good") for t in base)


def test_same_seed_same_output_for_same_provider_answers():
    texts = []
    for _ in range(2):
        client = make(value_model=LikesGood(), beta=1.0, k=4)  # a fresh provider: same answers
        texts.append([client.completions.create(model="f", prompt="x", max_tokens=10, seed=7).choices[0].text for _ in range(3)])
    assert texts[0] == texts[1]


def test_n_choices_and_stop():
    client = make(k=4)
    resp = client.completions.create(model="f", prompt="x", max_tokens=20, n=3, seed=0, stop=["!"])
    assert len(resp.choices) == 3 and len(resp.vas.traces) == 3
    assert all("!" not in c.text for c in resp.choices)


def test_async_client_many_in_flight():
    fake = AsyncFakeProvider(FakeProvider(table_model(TABLE), seed=1))
    client = vas_api.wrap(fake, value_model=LikesGood(), beta=1.0, k=4)
    assert isinstance(client, vas_api.AsyncVASClient)

    async def main():
        return await asyncio.gather(*(
            client.completions.create(model="f", prompt=f"p{i}", max_tokens=6, seed=i) for i in range(8)
        ))

    results = asyncio.run(main())
    assert len(results) == 8 and all(isinstance(r, Completion) for r in results)
    # Calls of different requests interleave: they were in flight at once.
    texts = [h["text"][:2] for h in fake.history]
    assert texts != sorted(texts)


@pytest.mark.parametrize(
    ("kwargs", "error", "words"),
    [
        ({"beta": float("nan")}, ConfigError, "finite"),
        ({"beta": "high"}, ConfigError, "finite"),
        ({"mode": "magic"}, ConfigError, "speculative"),
        ({"value_model": "/no/such/dir"}, CheckpointError, "does not exist"),
        ({"k": 0}, ConfigError, "positive"),
        ({"stream": True}, ConfigError, "not supported"),
        ({"beta": [1.0, 2.0]}, ConfigError, "one beta per value model"),
    ],
)
def test_bad_input_is_refused_before_any_call(kwargs, error, words):
    provider = FakeProvider(table_model(TABLE))
    client = vas_api.wrap(provider, value_model=LikesGood())
    with pytest.raises(error, match=words):
        client.completions.create(model="f", prompt="x", max_tokens=4, **kwargs)
    assert provider.history == []


def test_k_above_provider_max_and_no_continuation():
    capped = ProviderProfile(name="capped", max_top_k=5, logprob_shape="chat", continuation="completions")
    client = vas_api.wrap(FakeProvider(table_model(TABLE), profile=capped))
    with pytest.raises(CapabilityError, match="at most 5"):
        client.completions.create(model="f", prompt="x", k=20)
    # Token-level modes asked for explicitly fail at once, naming the modes that work
    # (mode="auto" runs rerank / block there: tests/test_modes.py).
    hosted = ProviderProfile(name="OpenAI chat", max_top_k=20, logprob_shape="chat", continuation="none")
    client = vas_api.wrap(FakeProvider(table_model(TABLE), profile=hosted))
    with pytest.raises(CapabilityError, match="cannot do.*supports: rerank"):
        client.chat.completions.create(model="f", messages=[{"role": "user", "content": "x"}], k=5, mode="token")
    nolog = ProviderProfile(name="no-logprobs", max_top_k=None, logprob_shape="none", continuation="completions")
    client = vas_api.wrap(FakeProvider(table_model(TABLE), profile=nolog))
    with pytest.raises(CapabilityError, match="needs top-k logprobs.*supports: block, rerank"):
        client.completions.create(model="f", prompt="x", mode="speculative")


def test_empty_prompt():
    with pytest.raises(ConfigError, match="empty"):
        make().completions.create(model="f", prompt="")


def test_provider_that_returns_no_logprobs():
    from vas_api.errors import NoLogprobsError
    from vas_api.types import Draft, Position, Usage

    class Silent(FakeProvider):
        def candidates(self, prefix, *, k):
            return Draft([Position(())], "length", Usage(calls=1))

        def draft(self, prefix, *, m, k, restrict_top_k=False):
            return Draft([Position(())], "length", Usage(calls=1))

    client = vas_api.wrap(Silent(table_model(TABLE)))
    with pytest.raises(NoLogprobsError, match="no logprobs"):
        client.completions.create(model="f", prompt="x")
