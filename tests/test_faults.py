"""Faults: the retry arithmetic (pure), the SDK's exception types, and a fault matrix through a
loopback proxy (tests/fault_proxy.py) between the real openai SDK and the real local server.

Matrix: every fault x token / speculative mode x sync / async client, twice: the fault once
(recovered: the same kind of output, the retry in the report, the billed tokens equal to the
upstream's raw usage) and the fault on every attempt after one good call (failed with the
SDK's own exception type, the committed tokens in ``partial``). pytest-timeout guards hangs.
"""

from __future__ import annotations

import asyncio
import json

import httpx
import openai
import pytest

import vas_api
from vas_api.errors import MalformedResponseError, NoLogprobsError, ProviderError, sdk_error
from vas_api.providers import openai_wire as wire
from vas_api.redact import redact_url
from vas_api.retry import (
    RetryPolicy,
    backoff_delay,
    retry_after_seconds,
    retry_reason,
    use_retry_policy,
)

from .fault_proxy import _GENERATION_PATHS, FaultProxy

# -- pure: backoff, Retry-After, what is retried --------------------------------------------------


def test_backoff_doubles_from_half_a_second_to_eight_with_jitter_below():
    p = RetryPolicy()
    assert [backoff_delay(a, p, u=0.0) for a in range(6)] == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0]
    for a in range(6):
        top = backoff_delay(a, p, u=0.0)
        low = backoff_delay(a, p, u=0.999999)
        assert top * 0.75 <= low < top  # at most 25% shorter, never longer


def test_retry_after_is_honoured_and_a_long_one_is_not_waited_for():
    p = RetryPolicy()
    assert backoff_delay(0, p, retry_after=3.0) == 3.0
    assert backoff_delay(3, p, retry_after=0.2, u=0.5) == 0.2
    assert backoff_delay(0, p, retry_after=61.0) is None
    assert backoff_delay(1, p, retry_after=0.0, u=0.0) == 1.0  # 0: fall back to the backoff


def test_retry_after_headers():
    assert retry_after_seconds({"Retry-After": "2"}) == 2.0
    assert retry_after_seconds({"retry-after-ms": "250", "retry-after": "9"}) == 0.25
    assert retry_after_seconds({"retry-after": "Wed, 21 Oct 2015 07:28:10 GMT"}, now=1445412480.0) == 10.0
    assert retry_after_seconds({"retry-after": "soon"}) is None
    assert retry_after_seconds({}) is None and retry_after_seconds(None) is None


def _status_error(status: int, headers: dict[str, str] | None = None) -> openai.APIStatusError:
    request = httpx.Request("POST", "http://127.0.0.1:1/v1/completions")
    response = httpx.Response(status, headers=headers or {}, json={"error": {"message": "x"}}, request=request)
    client = openai.OpenAI(api_key="sk-test", base_url="http://127.0.0.1:1/v1")
    return client._make_status_error_from_response(response)


@pytest.mark.parametrize("status,reason", [(429, "429"), (500, "500"), (502, "502"), (503, "503"),
                                           (408, "408"), (400, None), (401, None), (404, None)])
def test_which_statuses_are_retried(status, reason):
    assert retry_reason(_status_error(status)) == reason


def test_connection_and_malformed_bodies_are_retried():
    request = httpx.Request("POST", "http://x/v1")
    assert retry_reason(openai.APITimeoutError(request=request)) == "timeout"
    assert retry_reason(openai.APIConnectionError(request=request)) == "connection"
    assert retry_reason(json.JSONDecodeError("x", "{", 1)) == "malformed body"
    assert retry_reason(ProviderError("ours")) is None
    assert retry_reason(_status_error(503, {"x-should-retry": "false"})) is None


# -- the SDK's exceptions stay catchable ---------------------------------------------------------


def test_a_rate_limit_is_still_an_openai_rate_limit_error_with_its_data():
    exc = _status_error(429, {"Retry-After": "7", "x-request-id": "req-1"})
    err = wire.translate_error(exc, base_url="http://u:sk-SECRET@host/v1?api-key=sk-SECRET", model="m")
    assert isinstance(err, openai.RateLimitError) and isinstance(err, ProviderError)
    assert isinstance(err, vas_api.VASError)
    assert err.status_code == 429 and err.response is exc.response and err.body == exc.body
    assert err.request_id == "req-1" and err.response.headers["retry-after"] == "7"
    assert "sk-SECRET" not in str(err) and "sk-SECRET" not in repr(err)
    assert "429" in str(err) and "retry" in str(err).lower()
    # the same mixed class every time (so it can be caught by identity too)
    assert type(wire.translate_error(exc, base_url="x", model="m")) is type(err)


@pytest.mark.parametrize("status,cls", [(500, openai.InternalServerError), (400, openai.BadRequestError),
                                        (401, openai.AuthenticationError), (404, openai.NotFoundError)])
def test_every_status_keeps_its_sdk_class(status, cls):
    err = wire.translate_error(_status_error(status), base_url="http://h/v1", model="m", available=["a"])
    assert isinstance(err, cls) and isinstance(err, ProviderError) and err.status_code == status


def test_a_malformed_body_is_a_vas_error_and_still_the_json_error_the_sdk_raises():
    exc = json.JSONDecodeError("Expecting ','", '{"a": 1', 7)
    err = wire.translate_error(exc, base_url="http://h/v1", model="m", attempts=3)
    assert isinstance(err, MalformedResponseError) and isinstance(err, json.JSONDecodeError)
    assert err.pos == 7 and "3 attempts" in str(err)


def test_sdk_error_wraps_any_sdk_exception():
    import anthropic

    request = httpx.Request("POST", "http://h/v1/messages")
    exc = anthropic.APIConnectionError(request=request)
    err = sdk_error(exc, "could not reach it", partial="p")
    assert isinstance(err, anthropic.APIConnectionError) and isinstance(err, ProviderError)
    assert err.request is request and err.partial == "p" and str(err) == "could not reach it"


def test_redact_url_masks_userinfo_and_query_values():
    url = "http://user:sk-KEY1@host:8000/v1?api-key=sk-KEY2&x=1#frag"
    out = redact_url(url)
    assert "sk-KEY1" not in out and "sk-KEY2" not in out and "user" not in out
    assert out.startswith("http://***@host:8000/v1?api-key=***&x=***")
    assert redact_url("http://127.0.0.1:8000/v1") == "http://127.0.0.1:8000/v1"


def test_connection_error_message_redacts_the_base_url():
    request = httpx.Request("POST", "http://h/v1")
    err = wire.translate_error(openai.APIConnectionError(request=request),
                               base_url="http://me:sk-KEY@h/v1?key=sk-KEY", model="m")
    assert isinstance(err, openai.APIConnectionError) and "sk-KEY" not in str(err)


# -- the drivers' retries, offline (respx answers, the real SDK does the HTTP) ----------------------

BASE = "http://mock.test/v1"
FAST = RetryPolicy(initial_delay=0.001, max_delay=0.002)


def _body(tokens=(" a",), logprobs=True, usage=(10, 1)) -> dict:
    choice = {"index": 0, "text": "".join(tokens), "finish_reason": "length", "logprobs": None}
    if logprobs:
        choice["logprobs"] = {"tokens": list(tokens), "text_offset": [0] * len(tokens),
                              "token_logprobs": [-0.5] * len(tokens),
                              "top_logprobs": [{t: -0.5, " z": -1.5} for t in tokens]}
    return {"id": "c", "object": "text_completion", "created": 1, "model": "m", "choices": [choice],
            "usage": {"prompt_tokens": usage[0], "completion_tokens": usage[1],
                      "total_tokens": sum(usage)}}


def _offline_provider(max_retries: int = 2, is_async: bool = False):
    from vas_api.profiles import LLAMA_CPP_PYTHON
    from vas_api.providers import connect

    cls, http = (openai.AsyncOpenAI, httpx.AsyncClient) if is_async else (openai.OpenAI, httpx.Client)
    client = use_retry_policy(cls(base_url=BASE, api_key="sk-test", max_retries=max_retries,
                                  http_client=http()), FAST)
    return connect(client, "m", profile=LLAMA_CPP_PYTHON)


def test_a_429_then_an_answer_is_one_retry_and_no_sdk_retry(respx_mock):
    from vas_api.retry import RetryLog, reset_retry_log, set_retry_log
    from vas_api.types import Prefix

    route = respx_mock.post(f"{BASE}/completions").mock(side_effect=[
        httpx.Response(429, headers={"retry-after-ms": "1"}, json={"error": {"message": "slow down"}}),
        httpx.Response(200, json=_body()),
    ])
    log = RetryLog()
    token = set_retry_log(log)
    try:
        draft = _offline_provider().draft(Prefix("Hi"), m=1, k=2)
    finally:
        reset_retry_log(token)
    assert route.call_count == 2 and log.reasons == ["429"]
    assert draft.usage.calls == 1 and draft.usage.prompt_tokens == 10  # a 429 is not billed


def test_retries_stop_at_the_clients_max_retries_with_the_sdk_type(respx_mock):
    from vas_api.types import Prefix

    route = respx_mock.post(f"{BASE}/completions").mock(
        return_value=httpx.Response(503, json={"error": {"message": "down"}}))
    with pytest.raises(openai.InternalServerError) as info:
        _offline_provider(max_retries=3).draft(Prefix("Hi"), m=1, k=2)
    assert route.call_count == 4 and info.value.attempts == 4  # 1 + max_retries, not (1+3)^2
    assert info.value.status_code == 503 and isinstance(info.value, ProviderError)


def test_a_truncated_body_is_retried_and_its_billed_attempt_counted(respx_mock):
    from vas_api.types import Prefix

    good = json.dumps(_body()).encode()
    respx_mock.post(f"{BASE}/completions").mock(side_effect=[
        httpx.Response(200, content=good[: len(good) // 2], headers={"content-type": "application/json"}),
        httpx.Response(200, json=_body()),
    ])
    draft = _offline_provider().draft(Prefix("Hi"), m=1, k=2)
    assert draft.usage.calls == 2 and draft.usage.prompt_tokens == 10  # tokens of the cut one unknown


async def test_a_body_without_logprobs_is_asked_again_then_fails_honestly(respx_mock):
    from vas_api.types import Prefix

    route = respx_mock.post(f"{BASE}/completions").mock(
        return_value=httpx.Response(200, json=_body(logprobs=False)))
    with pytest.raises(NoLogprobsError) as info:
        await _offline_provider(max_retries=1, is_async=True).draft(Prefix("Hi"), m=1, k=2)
    err = info.value
    assert route.call_count == 2 and err.attempts == 2
    assert err.usage.calls == 2 and err.usage.prompt_tokens == 20  # both were billed
    assert "does not support" not in str(err)


def test_a_bad_request_is_not_retried(respx_mock):
    from vas_api.types import Prefix

    route = respx_mock.post(f"{BASE}/completions").mock(
        return_value=httpx.Response(400, json={"error": {"message": "prompt too long"}}))
    with pytest.raises(openai.BadRequestError) as info:
        _offline_provider().draft(Prefix("Hi"), m=1, k=2)
    assert route.call_count == 1 and "prompt too long" in str(info.value)


# -- the matrix: a proxy between the real SDK and the real server -----------------------------------

FAULTS = ("429", "429-retry", "500", "502", "503", "reset", "stall", "truncated", "no-logprobs", "few",
          "short-draft")
DEGRADED_OK = ("few", "short-draft")  # used as they are, never retried and never fatal
MODES = ("token", "speculative")
TIMEOUT_S = 2.0  # the client's timeout; a stall lasts longer
POLICY = RetryPolicy(max_retries=1, initial_delay=0.01, max_delay=0.05)  # 2 attempts, short waits
PROMPT = "Once upon a time, in a small village by the sea,"

# What a call that fails on every attempt raises: the SDK's own type (mixed with a VAS one).
EXPECTED = {
    "429": openai.RateLimitError, "429-retry": openai.RateLimitError,
    "500": openai.InternalServerError, "502": openai.InternalServerError,
    "503": openai.InternalServerError, "reset": openai.APIConnectionError,
    "stall": openai.APITimeoutError, "truncated": json.JSONDecodeError,
    "no-logprobs": NoLogprobsError,
}


@pytest.fixture(scope="module")
def proxy(local_server):
    with FaultProxy(local_server.base_url, stall_s=TIMEOUT_S + 2.0) as p:
        yield p


@pytest.fixture(scope="module")
def sync_vas(local_server, proxy):
    client = use_retry_policy(
        openai.OpenAI(base_url=proxy.base_url, api_key="sk-test", timeout=TIMEOUT_S, max_retries=1), POLICY)
    yield vas_api.wrap(client, profile=local_server.profile, chat_template=str(local_server.gguf_path))
    client.close()


def _async_vas(local_server, proxy):
    client = use_retry_policy(
        openai.AsyncOpenAI(base_url=proxy.base_url, api_key="sk-test", timeout=TIMEOUT_S, max_retries=1), POLICY)
    return client, vas_api.wrap(client, profile=local_server.profile, chat_template=str(local_server.gguf_path))


def _generate(local_server, proxy, sync_vas, is_async: bool, mode: str, max_tokens: int):
    kw = dict(model=local_server.model, prompt=PROMPT, max_tokens=max_tokens, mode=mode, k=5, beta=0.0,
              seed=3, draft_min=1, draft_max=2)
    if not is_async:
        return sync_vas.completions.create(**kw)

    async def main():
        client, vas = _async_vas(local_server, proxy)
        try:
            return await vas.completions.create(**kw)
        finally:
            await client.close()

    return asyncio.run(main())


def _readable_usage(records) -> tuple[int, int]:
    """Billed tokens the client could read: every upstream answer but the truncated ones."""
    ok = [r for r in records if r.usage is not None and r.fault != "truncated"]
    return sum(r.usage["prompt_tokens"] for r in ok), sum(r.usage["completion_tokens"] for r in ok)


def _check_text(text: str, steps) -> None:
    # never corrupted: the text is exactly the committed tokens, whole characters only
    assert text == "".join(s.text for s in steps if not s.special)
    assert "\ufffd" not in text


@pytest.mark.integration
@pytest.mark.timeout(120)
@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("fault", FAULTS)
def test_one_fault_is_recovered(local_server, proxy, sync_vas, fault, mode, is_async):
    start = len(proxy.records)
    proxy.schedule(fault)
    resp = _generate(local_server, proxy, sync_vas, is_async, mode, max_tokens=4)
    assert proxy.pending() == 0
    report = resp.vas
    assert report.mode == mode and 1 <= report.tokens <= 4
    assert resp.choices[0].finish_reason in ("stop", "length")
    _check_text(resp.choices[0].text, report.traces[0])
    if fault == "few":
        assert report.short_positions >= 1 and report.retries == 0
    elif fault == "short-draft":
        assert report.retries == 0
    else:
        assert report.retries >= 1
    records = proxy.records[start:]
    prompt, completion = _readable_usage(records)
    assert (report.usage.prompt_tokens, report.usage.completion_tokens) == (prompt, completion)
    assert report.usage.calls == sum(1 for r in records if r.status == 200 and r.path.endswith(_GENERATION_PATHS))  # every billed attempt
    assert resp.usage.prompt_tokens == report.usage.prompt_tokens


@pytest.mark.integration
@pytest.mark.timeout(120)
@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("fault", [f for f in FAULTS if f not in DEGRADED_OK])
def test_a_fault_on_every_attempt_fails_with_the_sdk_type_and_the_partial_output(
    local_server, proxy, sync_vas, fault, mode, is_async
):
    start = len(proxy.records)
    proxy.schedule("ok", fault, fault)  # one good call, then both attempts of the next fail
    with pytest.raises(EXPECTED[fault]) as info:
        _generate(local_server, proxy, sync_vas, is_async, mode, max_tokens=12)
    err = info.value
    assert isinstance(err, ProviderError) and proxy.pending() == 0
    if fault == "no-logprobs":
        assert "does not support" not in str(err) and "rerank" in str(err)
    assert err.attempts == 2
    partial = err.partial
    assert partial is not None and len(partial.steps[0]) >= 1 and not partial.finished[0]
    _check_text(partial.text, partial.steps[0])
    assert partial.report.tokens == len(partial.steps[0])
    prompt, completion = _readable_usage(proxy.records[start:])
    assert (partial.usage.prompt_tokens, partial.usage.completion_tokens) == (prompt, completion)
    assert partial.usage.calls == sum(1 for r in proxy.records[start:] if r.status == 200 and r.path.endswith(_GENERATION_PATHS))


@pytest.mark.integration
@pytest.mark.timeout(120)
def test_a_failing_choice_cancels_its_siblings(local_server, proxy):
    """Async n=3: when one choice fails for good, its siblings are already cancelled."""

    async def main():
        client, vas = _async_vas(local_server, proxy)
        try:
            proxy.schedule("ok", "ok", "ok", *["500"] * 8)
            try:
                await vas.completions.create(
                    model=local_server.model, prompt=PROMPT, max_tokens=40, n=3, mode="token", k=5, beta=0.0)
            except openai.InternalServerError as exc:
                others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
                return exc, others
            raise AssertionError("the request should have failed")
        finally:
            await client.close()

    start = len(proxy.records)
    err, others = asyncio.run(main())
    calls = sum(1 for r in proxy.records[start:] if r.path.endswith(_GENERATION_PATHS))
    proxy.clear()
    assert others == []  # no sibling left running, so no call after the error
    assert calls <= 3 + 2 * 3  # at most the good calls and two attempts per choice
    assert len(err.partial.texts) == 3 and not any(err.partial.finished)
    assert err.partial.usage.calls == 3


# -- vas collect goes past a prompt the provider refuses ---------------------------------------------


def _refusing_fake(bad: str):
    """A FakeProvider that answers 400 (as llama.cpp does for a prompt past the context) for
    prompts containing `bad`."""
    from vas_api.providers.fake import EOS, FakeProvider, table_model
    from vas_api.types import ProviderProfile

    profile = ProviderProfile(name="fake", max_top_k=None, logprob_shape="legacy", continuation="completions")

    class Refusing(FakeProvider):
        def sample(self, prefix, **kw):
            if bad in self.prompt_text(prefix.prompt):
                raise wire.translate_error(_status_error(400), base_url="http://h/v1", model="m")
            return super().sample(prefix, **kw)

    return Refusing(table_model({" good": 1, " ok": 1, EOS: 0.5}), profile=profile)


def test_collect_records_a_refused_prompt_with_its_line_and_goes_on(tmp_path):
    from estimators.collect import as_prompt, collect, failed_path, numbered_prompts
    from estimators.data import read_samples

    prompts_file = tmp_path / "prompts.txt"
    prompts_file.write_text("Say hi.\n\nTOO LONG prompt\nSay bye.\n")
    lines, numbers = numbered_prompts(prompts_file)
    assert numbers == [1, 3, 4]
    out = tmp_path / "s.jsonl"
    provider = _refusing_fake("TOO LONG")
    summary = collect(provider, [as_prompt(x) for x in lines], out, n=2, max_tokens=3,
                      progress=False, line_numbers=numbers)
    assert [f.line for f in summary.failed] == [3] and summary.failed[0].status == 400
    assert summary.written == 4  # both other prompts, the one after the refused one too
    assert "lines 3" in summary.line()
    assert failed_path(out).exists()
    # a re-run does not ask for it again (and has nothing else to do)
    calls = len(provider.history)
    again = collect(provider, [as_prompt(x) for x in lines], out, n=2, max_tokens=3,
                    progress=False, line_numbers=numbers)
    assert again.written == 0 and again.failed == [] and [f.line for f in again.skipped_failed] == [3]
    assert len(provider.history) == calls
    # unless asked to
    retried = collect(provider, [as_prompt(x) for x in lines], out, n=2, max_tokens=3,
                      progress=False, line_numbers=numbers, retry_failed=True)
    assert [f.line for f in retried.failed] == [3]
    assert len(read_samples(out).samples) == 4


def test_collect_stops_on_a_server_error_and_keeps_what_was_written(tmp_path):
    from estimators.collect import as_prompt, collect
    from estimators.data import read_samples
    from vas_api.providers.fake import EOS, FakeProvider, table_model
    from vas_api.types import ProviderProfile

    profile = ProviderProfile(name="fake", max_top_k=None, logprob_shape="legacy", continuation="completions")

    class Down(FakeProvider):
        def sample(self, prefix, **kw):
            if "second" in self.prompt_text(prefix.prompt):
                raise wire.translate_error(_status_error(503), base_url="http://h/v1", model="m")
            return super().sample(prefix, **kw)

    out = tmp_path / "s.jsonl"
    with pytest.raises(openai.InternalServerError):
        collect(Down(table_model({" a": 1, EOS: 1}), profile=profile),
                [as_prompt("first"), as_prompt("second")], out, n=2, max_tokens=3, progress=False)
    assert len(read_samples(out).samples) == 2


@pytest.mark.integration
@pytest.mark.timeout(300)
def test_vas_collect_goes_past_a_prompt_longer_than_the_context(local_server, tmp_path):
    from typer.testing import CliRunner

    import vas_api.commands.estimators  # noqa: F401 - registers `vas collect`
    from estimators.data import read_samples
    from vas_api.cli import app

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("Say hello.\n" + "word " * 3000 + "\nSay goodbye.\n")
    out = tmp_path / "s.jsonl"
    args = ["collect", str(prompts), "--out", str(out), "--n", "1", "--max-tokens", "4",
            "--base-url", local_server.base_url, "--model", local_server.model,
            "--chat-template", str(local_server.gguf_path)]
    first = CliRunner().invoke(app, args)
    assert first.exit_code == 0, first.output
    assert ":2: refused by the provider" in first.output and "context" in first.output
    rows = read_samples(out).samples
    assert sorted(r.prompt[0]["content"] for r in rows) == ["Say goodbye.", "Say hello."]
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0 and "skipped that failed before (lines 2" in again.output
    assert "refused by the provider" not in again.output


def test_http_logs_mask_credentials_in_urls(caplog):
    import logging

    from vas_api.redact import install_log_redaction, redact_urls_in

    assert redact_urls_in('GET http://u:sk-K@h:1/v1/models "200"') == 'GET http://***@h:1/v1/models "200"'
    assert redact_urls_in("see http://h/v1 now") == "see http://h/v1 now"
    install_log_redaction()
    with caplog.at_level(logging.INFO, logger="httpx"):
        logging.getLogger("httpx").info("HTTP Request: %s %s", "GET", "http://u:sk-K@h/v1?key=sk-K")
    assert "sk-K" not in caplog.text and "HTTP Request: GET http://***@h/v1?key=***" in caplog.text


def test_errors_raised_through_a_driver_never_show_the_clients_secrets():
    key = "sk-drv-" + "7" * 20
    client = openai.OpenAI(base_url=f"http://user:{key}@h.test/v1", api_key=key, max_retries=0)

    def probe_like_flow():
        raise ProviderError(f"could not probe {client.base_url} with key {key}")
        yield  # a generator

    with pytest.raises(ProviderError) as info:
        wire.drive_sync(client, probe_like_flow(), model="m")
    assert key not in str(info.value) and "could not probe http://***@h.test/v1" in str(info.value)
