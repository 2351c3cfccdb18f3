"""VAS end to end on the real local server through the real openai SDK (sync and async).

The value function is the prefix-reward baseline (VADER of the response so far): it needs no
training, so these tests check the wiring, not the quality of a learned value.
"""

from __future__ import annotations

import asyncio

import pytest

import vas_api
from estimators.baselines import PrefixRewardValue

pytestmark = pytest.mark.integration

MESSAGES = [{"role": "user", "content": "Write one sentence about the weather today."}]


@pytest.fixture(scope="module")
def options(local_server):
    from vas_api.commands.generate import local_options

    return local_options(local_server)


@pytest.fixture(scope="module")
def value():
    return PrefixRewardValue("vader")


@pytest.mark.parametrize("mode", ["token", "speculative"])
def test_sync_chat_in_each_mode(local_server, openai_client, options, value, mode):
    client = vas_api.wrap(openai_client, value_model=value, beta=2.0, k=10, mode=mode, **options)
    resp = client.chat.completions.create(model=local_server.model, messages=MESSAGES, max_tokens=12, seed=1)
    report = resp.vas
    assert resp.choices[0].message.content
    assert report.mode == mode and report.tokens >= 1
    assert report.continuation == "token_ids"  # the exact local server takes id prompts
    assert resp.usage.prompt_tokens == report.usage.prompt_tokens > 0
    if mode == "token":
        assert report.api_calls == report.tokens
    else:
        assert report.api_calls < report.tokens or report.tokens == 1
        assert report.drafted >= report.accepted


def test_speculative_is_the_default_here(local_server, openai_client, options):
    client = vas_api.wrap(openai_client, **options)
    resp = client.completions.create(model=local_server.model, prompt="The capital of France is", max_tokens=8, seed=0)
    assert resp.vas.mode == "speculative" and resp.choices[0].text


class _Recorder:
    """Wraps a provider: records every answer, or replays recorded answers in order."""

    def __init__(self, inner, replay=None):
        self.inner, self.model, self.profile = inner, inner.model, inner.profile
        self.answers, self._replay = [], list(replay) if replay is not None else None

    def prompt_text(self, prompt):
        return self.inner.prompt_text(prompt)

    def _answer(self, call, *args, **kwargs):
        if self._replay is not None:
            return self._replay.pop(0)
        out = getattr(self.inner, call)(*args, **kwargs)
        self.answers.append(out)
        return out

    def candidates(self, prefix, *, k):
        return self._answer("candidates", prefix, k=k)

    def draft(self, prefix, *, m, k, restrict_top_k=False):
        return self._answer("draft", prefix, m=m, k=k, restrict_top_k=restrict_top_k)


@pytest.mark.parametrize("mode", ["token", "speculative"])
def test_same_seed_and_same_server_answers_give_the_same_output(provider, value, mode):
    # llama.cpp's logits for one prefix move by up to ~0.1 nats with its prompt-cache state
    # (measured), so a live server need not answer twice alike; replaying its answers must.
    first = _Recorder(provider)
    kw = dict(model=provider.model, messages=MESSAGES, max_tokens=10, seed=5)
    a = vas_api.wrap(first, value_model=value, beta=1.0, k=10, mode=mode).chat.completions.create(**kw)
    replay = _Recorder(provider, replay=first.answers)
    b = vas_api.wrap(replay, value_model=value, beta=1.0, k=10, mode=mode).chat.completions.create(**kw)
    assert a.choices[0].message.content == b.choices[0].message.content
    assert replay._replay == []  # the same number of calls, all answered from the record


def test_async_client_several_in_flight(local_server, options, value):
    async def main():
        aclient = local_server.async_client(max_retries=0, timeout=120)
        try:
            client = vas_api.wrap(aclient, value_model=value, beta=2.0, k=10, **options)
            assert isinstance(client, vas_api.AsyncVASClient)
            return await asyncio.gather(*(
                client.chat.completions.create(
                    model=local_server.model, max_tokens=10, seed=i,
                    messages=[{"role": "user", "content": f"Say something about the number {i}."}])
                for i in range(4)
            ))
        finally:
            await aclient.close()

    results = asyncio.run(main())
    assert len(results) == 4
    assert all(r.choices[0].message.content and r.vas.api_calls >= 1 for r in results)
