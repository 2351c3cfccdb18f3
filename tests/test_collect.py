"""Collection through a provider: resumable, capped, scored; with the fake provider."""

from __future__ import annotations

import pytest

from estimators.collect import as_prompt, collect
from estimators.data import read_samples
from estimators.rewards import build_reward
from vas_api.errors import BudgetExceededError, ConfigError
from vas_api.providers.fake import EOS, FakeProvider, table_model
from vas_api.types import ProviderProfile

PROMPTS = [as_prompt(p) for p in ("Review a hotel.", "Reply to a friend.", "Start a story.")]


def _provider(n_param: bool = True, price: float = 0.0) -> FakeProvider:
    profile = ProviderProfile(
        name="fake", max_top_k=None, logprob_shape="legacy", continuation="completions",
        n_param=n_param, price_prompt=price, price_completion=price,
    )
    return FakeProvider(table_model({" good": 1, " bad": 1, " ok": 1, EOS: 0.5}), profile=profile)


@pytest.mark.parametrize("n_param", [True, False])
def test_collects_n_per_prompt_and_resumes(tmp_path, n_param):
    out = tmp_path / "samples.jsonl"
    provider = _provider(n_param)
    first = collect(provider, PROMPTS[:2], out, n=3, max_tokens=5, progress=False)
    assert first.written == 6 and first.already_present == 0
    rows = read_samples(out).samples
    assert all(r.prompt_text == provider.prompt_text(r.prompt) for r in rows)
    assert all(r.model == "fake-model" and r.finish_reason in ("stop", "length") for r in rows)
    calls = len(provider.history)
    # Same file again, one more prompt and a larger n: only the missing samples are asked for.
    again = collect(provider, PROMPTS, out, n=4, max_tokens=5, progress=False)
    assert again.already_present == 6 and again.written == 2 * 1 + 4
    rows = read_samples(out).samples
    assert len(rows) == 12
    by_prompt = {}
    for r in rows:
        by_prompt.setdefault(r.prompt[0]["content"], []).append(r.extra["sample_index"])
    assert all(sorted(v) == [0, 1, 2, 3] for v in by_prompt.values())
    # Nothing left to do: no call at all.
    calls = len(provider.history)
    assert collect(provider, PROMPTS, out, n=4, max_tokens=5, progress=False).written == 0
    assert len(provider.history) == calls


def test_seeded_collection_is_reproducible(tmp_path):
    a = collect(_provider(False), PROMPTS, tmp_path / "a.jsonl", n=2, max_tokens=6, progress=False)
    b = collect(_provider(False), PROMPTS, tmp_path / "b.jsonl", n=2, max_tokens=6, progress=False)
    assert a.written == b.written == 6
    texts = lambda p: [s.completion for s in read_samples(p).samples]  # noqa: E731
    assert texts(tmp_path / "a.jsonl") == texts(tmp_path / "b.jsonl")


def test_token_cap_stops_before_crossing_and_keeps_what_was_written(tmp_path):
    out = tmp_path / "samples.jsonl"
    provider = _provider(n_param=False)
    with pytest.raises(BudgetExceededError) as info:
        collect(provider, PROMPTS, out, n=4, max_tokens=5, max_total_tokens=200, progress=False)
    err = info.value
    assert err.unit == "tokens" and err.spent <= err.limit == 200
    written = err.partial.written
    assert 0 < written < 12 and len(read_samples(out).samples) == written
    # raising the cap resumes where it stopped
    done = collect(provider, PROMPTS, out, n=4, max_tokens=5, progress=False)
    assert done.already_present == written and len(read_samples(out).samples) == 12


def test_cost_cap_in_dollars(tmp_path):
    provider = _provider(n_param=True, price=1000.0)  # $1000 per million tokens
    with pytest.raises(BudgetExceededError) as info:
        collect(provider, PROMPTS, tmp_path / "s.jsonl", n=2, max_tokens=5, max_cost_usd=0.1,
                progress=False)
    assert info.value.unit == "usd" and info.value.spent <= 0.1
    assert "re-run to resume" in str(info.value)


def test_rewards_are_stored_when_asked(tmp_path):
    out = tmp_path / "s.jsonl"
    collect(_provider(), PROMPTS[:1], out, n=4, max_tokens=4, reward=build_reward("vader"),
            progress=False)
    rows = read_samples(out).samples
    assert all(r.reward is not None and -1 <= r.reward <= 1 for r in rows)


def test_bad_arguments(tmp_path):
    with pytest.raises(ConfigError):
        collect(_provider(), PROMPTS, tmp_path / "s.jsonl", n=0, progress=False)
    with pytest.raises(ConfigError):
        collect(_provider(), [], tmp_path / "s.jsonl", progress=False)


def test_bad_lines_in_an_existing_file_are_counted(tmp_path):
    out = tmp_path / "s.jsonl"
    out.write_text("{broken\n\n")
    summary = collect(_provider(), PROMPTS[:1], out, n=1, max_tokens=3, progress=False)
    assert summary.skipped_lines == 2 and summary.written == 1
    assert "2 bad lines skipped" in summary.line()


@pytest.mark.integration
def test_collect_from_the_local_server_resumes(provider, tmp_path):
    out = tmp_path / "real.jsonl"
    prompts = [as_prompt("Write a short review of a toaster."), as_prompt("Say hello.")]
    first = collect(provider, prompts, out, n=2, max_tokens=8, progress=False)
    assert first.written == 4 and first.usage.completion_tokens > 0
    rows = read_samples(out).samples
    assert all(r.prompt_text.endswith("<|im_start|>assistant\n") for r in rows)
    assert all(r.completion and r.model == provider.model for r in rows)
    again = collect(provider, prompts, out, n=3, max_tokens=8, progress=False)
    assert again.already_present == 4 and again.written == 2
