"""Streaming: the SDK's chunk types, joined chunks equal to the non-streamed response for the
same seed and the same provider answers, usage and the report on the last chunk, stop strings
held back, and a closed stream makes no more calls. Unit tests on the fake provider, then the
same claims on the real local server (sync and async, chat and completions)."""

from __future__ import annotations

import asyncio
import gc

import pytest
from openai.types import Completion
from openai.types.chat import ChatCompletionChunk

import vas_api
from tests.test_client import TABLE, LikesGood
from tests.test_vas_integration import _Recorder
from vas_api.providers.fake import AsyncFakeProvider, FakeProvider, table_model
from vas_api.report import VASReport
from vas_api.streaming import AsyncVASStream, VASStream, held_back

USER = [{"role": "user", "content": "hi"}]


def joined(chunks, n=1):
    """The text of each choice, joined from its deltas."""
    out = [""] * n
    for c in chunks:
        for ch in c.choices:
            out[ch.index] += (ch.delta.content or "") if isinstance(c, ChatCompletionChunk) else ch.text
    return out


def finish_reasons(chunks, n=1):
    out = [None] * n
    for c in chunks:
        for ch in c.choices:
            if ch.finish_reason is not None:
                assert out[ch.index] is None  # once per choice
                out[ch.index] = ch.finish_reason
    return out


def texts_of(resp):
    return [c.text if hasattr(c, "text") else c.message.content for c in resp.choices]


# -- the pure part ------------------------------------------------------------------------


def test_held_back_is_the_longest_suffix_that_starts_a_stop_string():
    assert held_back("Hello <", ["</s>"]) == 1
    assert held_back("Hello </", ["</s>", "<|end|>"]) == 2
    assert held_back("Hello </s", ["</s>"]) == 3
    assert held_back("Hello", ["</s>"]) == 0
    assert held_back("ab", ["b!", "ab?"]) == 2
    assert held_back("anything", []) == 0


# -- against the fake provider (no network) ----------------------------------------------


@pytest.mark.parametrize("mode", ["token", "speculative"])
@pytest.mark.parametrize("kind", ["chat", "completion"])
@pytest.mark.parametrize("n", [1, 3])
def test_sync_stream_joins_to_the_non_streamed_response(mode, kind, n):
    for seed in range(5):
        results = []
        for stream in (False, True):
            client = vas_api.wrap(FakeProvider(table_model(TABLE), seed=1), value_model=LikesGood(), beta=1.5, k=4, mode=mode)
            create = client.chat.completions.create if kind == "chat" else client.completions.create
            prompt = {"messages": USER} if kind == "chat" else {"prompt": "Say:"}
            results.append(create(model="f", max_tokens=10, seed=seed, n=n, stream=stream, **prompt))
        resp, stream = results
        assert isinstance(stream, VASStream)
        chunks = list(stream)
        kind_type = ChatCompletionChunk if kind == "chat" else Completion
        assert all(isinstance(c, kind_type) for c in chunks)
        assert joined(chunks, n) == texts_of(resp)
        assert finish_reasons(chunks, n) == [c.finish_reason for c in resp.choices]
        last = chunks[-1]
        assert last.choices == [] and isinstance(last.vas, VASReport) and stream.vas is last.vas
        assert last.usage.prompt_tokens == resp.usage.prompt_tokens > 0
        assert last.usage.completion_tokens == resp.usage.completion_tokens
        assert last.vas.api_calls == resp.vas.api_calls and last.vas.tokens == resp.vas.tokens
        assert len({c.id for c in chunks}) == 1


def test_chat_stream_starts_each_choice_with_the_assistant_role():
    client = vas_api.wrap(FakeProvider(table_model(TABLE), seed=1), k=4)
    chunks = list(client.chat.completions.create(model="f", messages=USER, max_tokens=5, n=2, seed=0, stream=True))
    firsts = {}
    for c in chunks:
        for ch in c.choices:
            firsts.setdefault(ch.index, ch.delta)
    assert all(d.role == "assistant" and d.content == "" for d in firsts.values()) and len(firsts) == 2


def test_one_chunk_per_committed_token_in_token_mode():
    client = vas_api.wrap(FakeProvider(table_model({"a": 0.5, "b": 0.5}), seed=1), k=2, mode="token")
    chunks = list(client.completions.create(model="f", prompt="x", max_tokens=7, seed=0, stream=True))
    deltas = [c.choices[0].text for c in chunks if c.choices and c.choices[0].finish_reason is None]
    assert len(deltas) == 7 and all(len(d) == 1 for d in deltas)


def test_stop_strings_are_held_back_until_they_cannot_match():
    # Tokens that spell the stop string over several steps, often.
    def model(text):
        after = {"<": {"/": 0.7, "a": 0.3}, "/": {"s": 0.7, "a": 0.3}, "s": {">": 0.5, "a": 0.5}}
        return after.get(text[-1:], {"a": 0.5, "<": 0.3, "</": 0.2})

    seen_stop = 0
    for seed in range(40):
        results = []
        for stream in (False, True):
            client = vas_api.wrap(FakeProvider(model, seed=seed), k=5, mode="token")
            results.append(client.completions.create(model="f", prompt="x", max_tokens=40, seed=seed, stop=["</s>"], stream=stream))
        resp, stream = results
        emitted = ""
        for c in stream:
            if c.choices:
                emitted += c.choices[0].text
                assert "</s>" not in emitted
                assert resp.choices[0].text.startswith(emitted)  # nothing streamed is taken back
        assert emitted == resp.choices[0].text
        seen_stop += resp.choices[0].finish_reason == "stop"
    assert seen_stop > 0  # the stop string did occur in some of the 40 runs


def test_include_usage_false_ends_without_a_usage_chunk():
    client = vas_api.wrap(FakeProvider(table_model(TABLE), seed=1), k=4)
    stream = client.completions.create(model="f", prompt="x", max_tokens=5, seed=0, stream=True,
                                       stream_options={"include_usage": False})
    chunks = list(stream)
    assert all(c.choices for c in chunks) and stream.vas is not None and stream.vas.tokens >= 1


def test_closing_a_sync_stream_stops_the_calls():
    provider = FakeProvider(table_model({"a": 0.5, "b": 0.5}), seed=1)
    client = vas_api.wrap(provider, k=2, mode="token")
    with client.completions.create(model="f", prompt="x", max_tokens=30, seed=0, stream=True) as stream:
        for i, _ in enumerate(stream):
            if i == 2:
                break
    calls = len(provider.history)
    assert calls == 3  # one call per committed token in token mode, nothing read ahead
    assert list(stream) == [] and len(provider.history) == calls

    stream = client.completions.create(model="f", prompt="x", max_tokens=30, seed=0, stream=True)
    next(stream)
    stream.close()
    assert len(provider.history) == calls + 1

    for _ in client.completions.create(model="f", prompt="x", max_tokens=30, seed=0, stream=True):
        break  # the stream is dropped here
    gc.collect()
    assert len(provider.history) == calls + 2


def test_async_stream_joins_to_the_non_streamed_response():
    async def main(stream, n):
        fake = AsyncFakeProvider(FakeProvider(table_model(TABLE), seed=1))
        client = vas_api.wrap(fake, value_model=LikesGood(), beta=1.0, k=4)
        out = await client.chat.completions.create(model="f", messages=USER, max_tokens=8, seed=3, n=n, stream=stream)
        if not stream:
            return out
        assert isinstance(out, AsyncVASStream)
        async with out:
            return [c async for c in out]

    for n in (1, 3):
        resp = asyncio.run(main(False, n))
        chunks = asyncio.run(main(True, n))
        assert joined(chunks, n) == texts_of(resp)
        assert chunks[-1].usage.total_tokens == resp.usage.total_tokens
        assert chunks[-1].vas.api_calls == resp.vas.api_calls


def test_closing_an_async_stream_cancels_every_choice():
    async def main():
        fake = AsyncFakeProvider(FakeProvider(table_model({"a": 0.5, "b": 0.5}), seed=1))
        client = vas_api.wrap(fake, k=2, mode="token")
        stream = await client.completions.create(model="f", prompt="x", max_tokens=50, n=3, seed=0, stream=True)
        got = [await stream.__anext__() for _ in range(3)]
        await stream.aclose()
        calls = len(fake.history)
        for _ in range(20):
            await asyncio.sleep(0)  # give cancelled tasks every chance to run on
        assert all(t.done() for t in stream._tasks)
        assert len(fake.history) == calls < 3 * 50
        return got

    assert len(asyncio.run(main())) == 3


def test_an_error_in_a_choice_reaches_the_reader():
    class Fails(LikesGood):
        def score_candidates(self, prefix_text, candidate_texts):
            return [float("nan")] * len(candidate_texts)

    async def main():
        fake = AsyncFakeProvider(FakeProvider(table_model(TABLE), seed=1))
        client = vas_api.wrap(fake, value_model=Fails(), beta=1.0, k=4, mode="token")
        stream = await client.completions.create(model="f", prompt="x", max_tokens=5, n=2, stream=True)
        return [c async for c in stream]

    with pytest.raises(vas_api.ValueModelError):
        asyncio.run(main())


# -- against the real local server ----------------------------------------------------------


class _AsyncRecorder(_Recorder):
    """The recorder of tests/test_vas_integration.py around an async provider (recording only)."""

    async def _aanswer(self, call, *args, **kwargs):
        out = await getattr(self.inner, call)(*args, **kwargs)
        self.answers.append(out)
        return out

    async def candidates(self, prefix, *, k):
        return await self._aanswer("candidates", prefix, k=k)

    async def draft(self, prefix, *, m, k, restrict_top_k=False):
        return await self._aanswer("draft", prefix, m=m, k=k, restrict_top_k=restrict_top_k)


SEA = [{"role": "user", "content": "Write one sentence about the sea."}]


def _prompt(provider, kind):
    # A raw prompt that holds the chat template's assistant marker, so the prefix-reward value
    # can tell the response from the prompt.
    return {"messages": SEA} if kind == "chat" else {"prompt": provider.prompt_text(SEA) + "The sea"}


def _create(client, kind):
    return client.chat.completions.create if kind == "chat" else client.completions.create


@pytest.fixture(scope="module")
def value():
    from estimators.baselines import PrefixRewardValue

    return PrefixRewardValue("vader")


@pytest.mark.integration
@pytest.mark.parametrize(("kind", "mode"), [("chat", "speculative"), ("chat", "token"), ("completion", "speculative")])
def test_sync_stream_on_the_local_server_equals_the_replayed_response(provider, value, kind, mode):
    kw = dict(model=provider.model, max_tokens=10, seed=5, stop=["\n\n"], **_prompt(provider, kind))
    live = _Recorder(provider)
    client = vas_api.wrap(live, value_model=value, beta=2.0, k=10, mode=mode)
    chunks = list(_create(client, kind)(stream=True, **kw))
    replay = _Recorder(provider, replay=live.answers)
    resp = _create(vas_api.wrap(replay, value_model=value, beta=2.0, k=10, mode=mode), kind)(**kw)
    assert replay._replay == []  # the same calls, all answered from the record
    assert joined(chunks) == texts_of(resp) and texts_of(resp)[0]
    assert finish_reasons(chunks) == [resp.choices[0].finish_reason]
    last = chunks[-1]
    assert last.usage.prompt_tokens == resp.usage.prompt_tokens > 0
    assert last.usage.completion_tokens == resp.usage.completion_tokens
    assert last.vas.mode == mode and last.vas.api_calls == len(live.answers) == resp.vas.api_calls


@pytest.mark.integration
@pytest.mark.parametrize("kind", ["chat", "completion"])
def test_async_stream_on_the_local_server_equals_the_replayed_response(local_server, provider, value, kind):
    from vas_api.providers import connect

    async def streamed():
        aclient = local_server.async_client(max_retries=0, timeout=120)
        try:
            live = _AsyncRecorder(connect(aclient, local_server.model, chat_template=str(local_server.gguf_path),
                                          profile=local_server.profile))
            client = vas_api.wrap(live, value_model=value, beta=2.0, k=10)
            assert isinstance(client, vas_api.AsyncVASClient)
            stream = await _create(client, kind)(model=local_server.model, max_tokens=10, seed=2, stream=True,
                                                 **_prompt(provider, kind))
            async with stream:
                return live, [c async for c in stream]
        finally:
            await aclient.close()

    live, chunks = asyncio.run(streamed())
    replay = _Recorder(live, replay=live.answers)
    resp = _create(vas_api.wrap(replay, value_model=value, beta=2.0, k=10), kind)(
        model=local_server.model, max_tokens=10, seed=2, **_prompt(provider, kind))
    assert replay._replay == []
    assert joined(chunks) == texts_of(resp) and texts_of(resp)[0]
    assert chunks[-1].usage.total_tokens == resp.usage.total_tokens > 0
    assert chunks[-1].vas.api_calls == resp.vas.api_calls


@pytest.mark.integration
def test_closing_a_stream_on_the_local_server_stops_the_calls(provider, value):
    live = _Recorder(provider)
    client = vas_api.wrap(live, value_model=value, beta=1.0, k=10, mode="token")
    stream = client.chat.completions.create(model=provider.model, max_tokens=40, seed=1, stream=True, messages=SEA)
    for i, _ in enumerate(stream):
        if i == 3:  # the role chunk and three tokens
            break
    stream.close()
    calls = len(live.answers)
    # Token mode: one call per committed token, and nothing read ahead of the 4 chunks taken.
    assert calls == len(stream._samplers[0].steps) < 10
    assert list(stream) == [] and len(live.answers) == calls


@pytest.mark.integration
def test_closing_an_async_stream_on_the_local_server_stops_the_calls(local_server, value):
    from vas_api.providers import connect

    async def main():
        aclient = local_server.async_client(max_retries=0, timeout=120)
        try:
            live = _AsyncRecorder(connect(aclient, local_server.model, chat_template=str(local_server.gguf_path),
                                          profile=local_server.profile))
            client = vas_api.wrap(live, value_model=value, beta=1.0, k=10, mode="token")
            stream = await client.chat.completions.create(model=local_server.model, max_tokens=40, n=2, seed=1,
                                                          stream=True, messages=SEA)
            async with stream:
                async for _ in stream:
                    if len(live.answers) >= 4:
                        break
            calls = len(live.answers)
            for _ in range(20):
                await asyncio.sleep(0)
            assert all(t.done() for t in stream._tasks)
            return calls, len(live.answers)
        finally:
            await aclient.close()

    at_close, after = asyncio.run(main())
    assert after == at_close < 2 * 40


def test_an_async_stream_dropped_after_break_cancels_its_choices():
    async def main():
        fake = AsyncFakeProvider(FakeProvider(table_model({"a": 0.5, "b": 0.5}), seed=1))
        client = vas_api.wrap(fake, k=2, mode="token")
        stream = await client.completions.create(model="f", prompt="x", max_tokens=50, n=2, seed=0, stream=True)
        async for _ in stream:
            break
        tasks = list(stream._tasks)
        del stream
        gc.collect()
        for _ in range(20):
            await asyncio.sleep(0)
        calls = len(fake.history)
        for _ in range(20):
            await asyncio.sleep(0)
        return [t.cancelled() for t in tasks], calls, len(fake.history)  # inside the loop's life

    cancelled, calls, later = asyncio.run(main())
    assert cancelled == [True, True]
    assert later == calls < 2 * 50


def test_a_sync_stream_resumes_after_a_break_like_the_sdks():
    def make_client():
        return vas_api.wrap(FakeProvider(table_model({"a": 0.5, "b": 0.5}), seed=1), k=2, mode="token")

    whole = list(make_client().completions.create(model="f", prompt="x", max_tokens=6, seed=0, stream=True))
    stream = make_client().completions.create(model="f", prompt="x", max_tokens=6, seed=0, stream=True)
    head = []
    for chunk in stream:
        head.append(chunk)
        if len(head) == 2:
            break
    rest = list(stream)
    assert joined(head + rest) == joined(whole) and len(head + rest) == len(whole)
