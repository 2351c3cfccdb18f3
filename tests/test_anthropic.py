"""The Anthropic provider and `client.messages.create`, through the real anthropic SDK.

The hosted API cannot be reached from here, so every reply comes from an httpx2 MockTransport
(the transport the anthropic SDK uses) serving bodies and headers in the Messages API's wire
format, written from its documented schema: a normal answer, a continuation of a prefill, an
error, a rate limit (429 with retry-after), and a model that rejects prefill (400 with the
API's own message). The API key is a placeholder made in the test, never a fixture file, and is
checked not to leak into error messages.
"""

from __future__ import annotations

import json
import threading
from typing import Any

import anthropic
import httpx2
import pytest

import vas_api
from vas_api.errors import CapabilityError, ConfigError, NoLogprobsError, ProviderError
from vas_api.providers import AnthropicProvider, AsyncAnthropicProvider, connect
from vas_api.providers import anthropic_wire as wire
from vas_api.providers.anthropic import forget_learned
from vas_api.providers.anthropic_messages import message_from
from vas_api.types import Prefix

KEY = "placeholder-" + "0" * 8  # not a key; checked never to appear in an error
HOSTED = "https://api.anthropic.com"


def message_body(text: str, *, model: str = "claude-sonnet-4-5-20250929", stop_reason: str = "end_turn",
                 input_tokens: int = 21, output_tokens: int = 9, cache_write: int = 0, cache_read: int = 0) -> dict:
    """A Messages API response body (POST /v1/messages, 200)."""
    return {
        "id": "msg_01XFDUDYJgAACzvnptvVoYEL", "type": "message", "role": "assistant", "model": model,
        "content": [{"type": "text", "text": text}], "stop_reason": stop_reason, "stop_sequence": None,
        "usage": {"input_tokens": input_tokens, "cache_creation_input_tokens": cache_write,
                  "cache_read_input_tokens": cache_read, "output_tokens": output_tokens,
                  "service_tier": "standard"},
    }


def error_body(kind: str, message: str) -> dict:
    """A Messages API error body."""
    return {"type": "error", "error": {"type": kind, "message": message}, "request_id": "req_011CSHoEeqs5C35K2UUqR7Fy"}


class Server:
    """A scripted Anthropic endpoint: answers the queued responses in order, keeps every request."""

    def __init__(self, *responses: httpx2.Response) -> None:
        self.queue = list(responses)
        self.requests: list[dict[str, Any]] = []
        self.headers: list[httpx2.Headers] = []
        self.lock = threading.Lock()

    def __call__(self, request: httpx2.Request) -> httpx2.Response:
        assert request.url.path == "/v1/messages"
        with self.lock:  # a sync sample() makes its calls from several threads
            self.requests.append(json.loads(request.content))
            self.headers.append(request.headers)
            return self.queue.pop(0)

    def client(self, *, max_retries: int = 0, base_url: str = HOSTED) -> anthropic.Anthropic:
        return anthropic.Anthropic(api_key=KEY, base_url=base_url, max_retries=max_retries,
                                   http_client=httpx2.Client(transport=httpx2.MockTransport(self)))

    def async_client(self, *, base_url: str = HOSTED) -> anthropic.AsyncAnthropic:
        return anthropic.AsyncAnthropic(api_key=KEY, base_url=base_url, max_retries=0,
                                        http_client=httpx2.AsyncClient(transport=httpx2.MockTransport(self)))


def ok(text: str, **kw: Any) -> httpx2.Response:
    return httpx2.Response(200, json=message_body(text, **kw), headers={"request-id": "req_1"})


@pytest.fixture(autouse=True)
def _fresh_memory():
    forget_learned()
    yield
    forget_learned()


CHAT = [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Review my hotel."}]


# -- pure parts -------------------------------------------------------------------------------


@pytest.mark.parametrize(("model", "prefill"), [
    ("claude-sonnet-4-5-20250929", True), ("claude-opus-4-5", True), ("claude-3-5-haiku-latest", True),
    ("claude-3-7-sonnet-20250219", True), ("claude-opus-4-6", False), ("claude-sonnet-4-6", False),
    ("claude-opus-5", False), ("claude-opus-4-1-20250805", True), ("smollm2", True),
])
def test_profile_knows_which_models_take_prefill(model, prefill):
    p = wire.profile_for(model, base_url=HOSTED)
    assert p.logprob_shape == "none" and not p.n_param
    assert p.continuation == ("prefill" if prefill else "none")
    assert p.modes() == (["block", "rerank"] if prefill else ["rerank"])


def test_request_lifts_system_caches_the_prompt_and_strips_the_prefill():
    kw = wire.request_kwargs("m", Prefix(CHAT, "The room was "), max_tokens=8, stop=["END"])
    assert kw["system"] == [{"type": "text", "text": "Be kind."}]
    user, assistant = kw["messages"]
    assert user["role"] == "user" and user["content"][-1]["cache_control"] == {"type": "ephemeral"}
    # The API refuses a final assistant turn that ends in whitespace.
    assert assistant == {"role": "assistant", "content": [{"type": "text", "text": "The room was"}]}
    assert kw["stop_sequences"] == ["END"] and kw["max_tokens"] == 8
    no_cache = wire.request_kwargs("m", Prefix("hi"), max_tokens=8, cache_prompt=False)
    assert "cache_control" not in json.dumps(no_cache) and "system" not in no_cache


@pytest.mark.parametrize("bad", [
    [{"role": "assistant", "content": "hi"}],
    [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "there"}],
    [{"role": "tool", "content": "x"}],
    [{"role": "user", "content": [{"type": "image", "source": {}}]}],
    [],
])
def test_bad_conversations_fail_before_any_call(bad):
    server = Server()
    provider = AnthropicProvider(server.client(), "claude-sonnet-4-5")
    with pytest.raises(ConfigError):
        provider.sample(Prefix(bad), n=1, max_tokens=4)
    assert server.requests == []


def test_continuation_whitespace_round_trip():
    # The prefill went out as "The room was"; the model writes " clean." after it.
    c, _ = wire.completion_of(anthropic.types.Message.model_validate(message_body(" clean.")),
                              Prefix("p", "The room was "), False)
    assert ("The room was " + c.text) == "The room was clean."
    c, _ = wire.completion_of(anthropic.types.Message.model_validate(message_body("clean.")),
                              Prefix("p", "The room was "), False)
    assert ("The room was " + c.text) == "The room was clean."


@pytest.mark.parametrize(("text", "sent", "known", "out", "learned"), [
    ("The room was lovely", "The room was", None, " lovely", True),      # llama-server style echo
    (" lovely", "The room was", None, " lovely", False),                  # Anthropic style
    ("The room was lovely", "The room was", False, "The room was lovely", False),  # known: no echo
    ("Hi there", "Hi", None, " there", None),                             # too short to decide
    ("abc", "", None, "abc", None),
])
def test_strip_prefill_echo(text, sent, known, out, learned):
    assert wire.strip_prefill_echo(text, sent, known) == (out, learned)


# -- through the SDK ----------------------------------------------------------------------------


def test_plain_messages_create_returns_the_sdks_message_with_usage_and_report():
    server = Server(ok("A lovely stay.", input_tokens=5, cache_write=1200, output_tokens=4))
    client = vas_api.wrap(server.client())
    msg = client.messages.create(model="claude-sonnet-4-5", max_tokens=16, system="Be kind.",
                                 messages=[{"role": "user", "content": "Review my hotel."}])
    assert isinstance(msg, anthropic.types.Message)
    assert msg.content[0].text == "A lovely stay." and msg.stop_reason == "end_turn"
    assert (msg.usage.input_tokens, msg.usage.cache_creation_input_tokens,
            msg.usage.cache_read_input_tokens, msg.usage.output_tokens) == (5, 1200, 0, 4)
    assert msg.vas.api_calls == 1 and msg.vas.usage.prompt_tokens == 1205
    sent = server.requests[0]
    assert sent["system"] == [{"type": "text", "text": "Be kind."}]
    assert sent["messages"][-1]["content"][-1]["cache_control"] == {"type": "ephemeral"}


def test_sample_sums_usage_over_every_call_including_cache_reads():
    server = Server(ok(" first", cache_write=1500, input_tokens=3),
                    ok(" second", cache_read=1500, input_tokens=3),
                    ok(" third", cache_read=1500, input_tokens=3, stop_reason="max_tokens"))
    provider = AnthropicProvider(server.client(), "claude-sonnet-4-5")
    samples = provider.sample(Prefix(CHAT, "It was"), n=3, max_tokens=8)
    # The first call runs alone (it writes the cache); the other two run concurrently.
    assert samples.completions[0].text == " first"
    assert sorted((c.text, c.finish_reason) for c in samples.completions[1:]) == [
        (" second", "stop"), (" third", "length")]
    u = samples.usage
    assert (u.calls, u.prompt_tokens, u.cached_tokens, u.cache_write_tokens, u.completion_tokens) == (
        3, 3 * 3 + 1500 * 3, 3000, 1500, 27)
    assert all(r["messages"][-1] == {"role": "assistant", "content": [{"type": "text", "text": "It was"}]}
               for r in server.requests)


def test_no_logprobs_calls_name_the_modes_that_work():
    provider = AnthropicProvider(Server().client(), "claude-sonnet-4-5")
    with pytest.raises(NoLogprobsError) as e:
        provider.candidates(Prefix("hi"), k=5)
    assert e.value.workable_modes == ["block", "rerank"]
    with pytest.raises(NoLogprobsError):
        provider.draft(Prefix("hi"), m=4, k=5)


def test_a_model_that_rejects_prefill_is_detected_and_remembered():
    msg = "This model does not support assistant message prefill. The conversation must end with a user message."
    server = Server(httpx2.Response(400, json=error_body("invalid_request_error", msg)), ok("fine"))
    provider = AnthropicProvider(server.client(), "claude-frontier")  # an id the table does not know
    assert provider.profile.continuation == "prefill"
    with pytest.raises(wire.PrefillRejectedError) as e:
        provider.sample(Prefix(CHAT, "The room"), n=1, max_tokens=4)
    assert e.value.workable_modes == ["rerank"] and KEY not in str(e.value)
    assert provider.profile.continuation == "none" and provider.profile.modes() == ["rerank"]
    # A new provider for the same model knows it without asking, and refuses before any call.
    again = AnthropicProvider(server.client(), "claude-frontier")
    assert again.profile.continuation == "none"
    with pytest.raises(CapabilityError):
        again.sample(Prefix(CHAT, "The room"), n=1, max_tokens=4)
    assert len(server.requests) == 1
    # Whole responses (rerank's calls) still work.
    assert again.sample(Prefix(CHAT), n=1, max_tokens=4).completions[0].text == "fine"


def test_an_error_carries_the_apis_message():
    server = Server(httpx2.Response(400, json=error_body("invalid_request_error", "max_tokens: must be at most 64000")))
    with pytest.raises(ProviderError, match="must be at most 64000") as e:
        AnthropicProvider(server.client(), "claude-sonnet-4-5").sample(Prefix("hi"), n=1, max_tokens=8)
    assert not isinstance(e.value, CapabilityError) and KEY not in str(e.value)


def test_rate_limit_after_the_sdks_retries_says_when_to_retry():
    limited = httpx2.Response(429, headers={"retry-after": "7"}, json=error_body(
        "rate_limit_error", "Number of request tokens has exceeded your per-minute rate limit"))
    server = Server(limited)
    with pytest.raises(ProviderError, match="retry after 7 s") as e:
        AnthropicProvider(server.client(max_retries=0), "claude-sonnet-4-5").sample(Prefix("hi"), n=1, max_tokens=8)
    assert "429" in str(e.value) and KEY not in str(e.value)


def test_rate_limit_is_retried_once_by_the_sdk_only():
    limited = httpx2.Response(429, headers={"retry-after": "1"}, json=error_body("rate_limit_error", "slow down"))
    server = Server(limited, ok("after the wait", input_tokens=4, output_tokens=3))
    provider = AnthropicProvider(server.client(max_retries=1), "claude-sonnet-4-5")
    samples = provider.sample(Prefix("hi"), n=1, max_tokens=8)
    assert samples.completions[0].text == "after the wait"
    assert len(server.requests) == 2 and samples.usage.calls == 1  # the 429 is not billed


def test_unsupported_arguments_fail_before_any_call():
    server = Server()
    client = vas_api.wrap(server.client())
    for bad in ({"stream": True}, {"tools": [{"name": "x"}]}, {"frobnicate": 1}):
        with pytest.raises(ConfigError):
            client.messages.create(model="claude-sonnet-4-5", max_tokens=8,
                                   messages=[{"role": "user", "content": "hi"}], **bad)
    with pytest.raises(ConfigError):
        connect(server.client(), "claude-sonnet-4-5", chat_template="{{ x }}")
    assert server.requests == []


async def test_async_provider_runs_the_n_calls_and_sums_usage():
    server = Server(ok(" a", input_tokens=2), ok(" b", input_tokens=2))
    provider = connect(server.async_client(), "claude-sonnet-4-5")
    assert isinstance(provider, AsyncAnthropicProvider)
    samples = await provider.sample(Prefix("Say something"), n=2, max_tokens=4)
    assert sorted(c.text for c in samples.completions) == [" a", " b"]
    assert samples.usage.calls == 2 and samples.usage.prompt_tokens == 4


async def test_async_messages_create():
    server = Server(ok("Hello."))
    client = vas_api.wrap(server.async_client())
    assert isinstance(client, vas_api.AsyncVASClient)
    msg = await client.messages.create(model="claude-sonnet-4-5", max_tokens=8,
                                       messages=[{"role": "user", "content": "hi"}])
    assert isinstance(msg, anthropic.types.Message) and msg.content[0].text == "Hello."


def test_compatible_servers_get_neutral_samplers_the_hosted_api_none():
    server = Server(ok(" x"), ok(" y"))
    local = AnthropicProvider(server.client(base_url="http://127.0.0.1:9"), "smollm2")
    local.sample(Prefix("hi"), n=1, max_tokens=4, temperature=0.5)
    assert server.requests[0]["temperature"] == 0.5 and server.requests[0]["top_k"] == 0
    hosted = AnthropicProvider(server.client(), "claude-sonnet-4-5")
    hosted.sample(Prefix("hi"), n=1, max_tokens=4)
    assert not {"temperature", "top_k", "top_p"} & set(server.requests[1])
    with pytest.raises(ConfigError, match="takes no temperature"):
        hosted.sample(Prefix("hi"), n=1, max_tokens=4, temperature=0.7)
    assert len(server.requests) == 2


def test_auto_mode_asks_again_once_a_model_rejects_prefill(monkeypatch):
    """The retry decision of `messages.create` (the block and rerank samplers it drives are
    tested with the modes work): a PrefillRejectedError in auto mode is followed by one more
    attempt (the provider then profiles the model as rerank-only), and what the first attempt
    billed before the rejection is counted in the answer; an explicit mode is not retried."""
    server = Server(ok(" first try", input_tokens=7, output_tokens=3), ok("Final answer.", input_tokens=5, output_tokens=2),
                    ok(" again"))
    client = vas_api.wrap(server.client(), value_model=PrefixValue(), beta=2.0)
    provider = AnthropicProvider(server.client(), "claude-frontier")
    attempts = []

    def fake_create(kind, model, prompt, args, vas):
        attempts.append(vas["mode"])
        samples = provider.sample(Prefix(prompt), n=1, max_tokens=4)  # a real, billed call
        if len(attempts) == 1:
            raise wire.PrefillRejectedError("no prefill", workable_modes=["rerank"])
        report = vas_api.VASReport(mode="rerank", model=model, k=0, betas=(2.0,), usage=samples.usage, api_calls=1)
        return message_from(model, samples.completions[0].text, "stop", samples.usage, report)

    monkeypatch.setattr(client, "_create", fake_create)
    kw = dict(model="claude-frontier", max_tokens=8, messages=[{"role": "user", "content": "hi"}])
    msg = client.messages.create(**kw)
    assert len(attempts) == 2 and msg.content[0].text == "Final answer."
    assert (msg.usage.input_tokens, msg.usage.output_tokens, msg.vas.api_calls) == (12, 5, 2)
    attempts.clear()
    with pytest.raises(wire.PrefillRejectedError):
        client.messages.create(mode="block", **kw)
    assert len(attempts) == 1


class PrefixValue:
    """A value function on the response's length (the retry test never calls it)."""

    def values(self, texts):
        return [float(len(t)) for t in texts]

    def score_candidates(self, prefix_text, cands):
        return self.values([prefix_text + c for c in cands])


def test_steered_request_on_a_model_that_rejects_prefill_ends_in_rerank_and_counts_every_call():
    """End to end through the client's block and rerank samplers (they come with the modes work;
    skipped without them): block mode's first step samples whole blocks, its second sends a
    prefill and is refused, auto mode asks again in rerank, and the answer counts every billed call."""
    pytest.importorskip("vas_api.sampler.block")
    from estimators.baselines import PrefixRewardValue

    msg = "This model does not support assistant message prefill. The conversation must end with a user message."
    seen = []

    def handler(request):
        body = json.loads(request.content)
        seen.append(body)
        if body["messages"][-1]["role"] == "assistant":
            return httpx2.Response(400, json=error_body("invalid_request_error", msg))
        return ok(f"Lovely stay number {len(seen)}!", input_tokens=10, output_tokens=5, stop_reason="max_tokens")

    sdk = anthropic.Anthropic(api_key=KEY, max_retries=0, http_client=httpx2.Client(transport=httpx2.MockTransport(handler)))
    client = vas_api.wrap(sdk, value_model=PrefixRewardValue("vader"), beta=4.0,
                          prices={"claude-frontier": (3.0, 0.3, 15.0)})  # a model the price table lacks
    kw = dict(model="claude-frontier", max_tokens=16, messages=[{"role": "user", "content": "Review my hotel."}])
    first = client.messages.create(**kw)
    rejected = [b for b in seen if b["messages"][-1]["role"] == "assistant"]
    assert first.vas.mode == "rerank" and len(rejected) == 1
    billed = len(seen) - len(rejected)
    assert first.vas.api_calls == billed and first.usage.input_tokens == 10 * billed
    again = client.messages.create(**kw)
    assert again.vas.mode == "rerank"
    assert sum(b["messages"][-1]["role"] == "assistant" for b in seen) == 1  # remembered: no new prefill


def test_a_plain_request_is_priced_from_the_table():
    # No value model: one call, priced at the shipped table's price for a known Claude model.
    from vas_api.pricing import default_prices

    model = "claude-haiku-4-5"  # listed in vas_api/data/prices.json

    def handler(request):
        return ok("Hello there.", input_tokens=1000, output_tokens=100)

    sdk = anthropic.Anthropic(api_key=KEY, max_retries=0, http_client=httpx2.Client(transport=httpx2.MockTransport(handler)))
    msg = vas_api.wrap(sdk).messages.create(model=model, max_tokens=8, messages=[{"role": "user", "content": "hi"}])
    price = default_prices().lookup(model)
    assert msg.vas.cost_usd == pytest.approx(price.cost_of(msg.vas.usage)) and msg.vas.cost_usd > 0
