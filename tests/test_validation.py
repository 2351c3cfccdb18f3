"""Every bad request is refused before any API call, with a message that says what to change;
what the SDK accepts (NOT_GIVEN, omit, content parts, content=None) is accepted. No network:
the fake provider records every call it gets."""

from __future__ import annotations

import math

import numpy as np
import openai
import pytest

import vas_api
from tests.test_client import TABLE, LikesGood
from vas_api.errors import ConfigError, ValueModelError
from vas_api.providers.fake import FakeProvider, table_model
from vas_api.request_checks import flatten_messages
from vas_api.value_checks import checked_scores, probe_value_model

USER = [{"role": "user", "content": "hi"}]


class Broken(LikesGood):
    """A value model whose scores are broken in one of three ways."""

    def __init__(self, how):
        self.how = how

    def values(self, texts):
        return [math.nan] * len(texts) if self.how == "nan" else super().values(texts)

    def score_candidates(self, prefix_text, candidate_texts):
        good = super().score_candidates(prefix_text, candidate_texts)
        if self.how == "nan":
            return [math.nan, *good[1:]]
        if self.how == "inf":
            return np.array([*good[:-1], np.inf])
        return good[:-1]  # one short


def fake():
    return FakeProvider(table_model(TABLE), seed=1)


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"max_tokens": 0}, "max_tokens = 0: use a positive integer"),
        ({"max_tokens": True}, "max_tokens = True"),
        ({"max_tokens": 2.5}, "max_tokens = 2.5"),
        ({"max_completion_tokens": 0}, "max_completion_tokens = 0"),
        ({"max_tokens": 4, "max_completion_tokens": 5}, "give one"),
        ({"n": 0}, "n = 0: use a positive integer"),
        ({"n": "2"}, "n = '2'"),
        ({"seed": "7"}, "seed = '7': use a non-negative integer"),
        ({"seed": -1}, "seed = -1"),
        ({"seed": 1.5}, "seed = 1.5"),
        ({"temperature": "0.7"}, "temperature = '0.7': use a number"),
        ({"temperature": float("nan")}, "temperature = nan"),
        ({"temperature": -1}, "temperature = -1"),
        ({"top_p": 0}, r"top_p = 0: use a number in \(0, 1\]"),
        ({"top_p": "x"}, "top_p = 'x'"),
        ({"stop": [""]}, "non-empty strings"),
        ({"stop": 3}, "stop = 3"),
        ({"user": 5}, "user = 5"),
        ({"stream": "yes"}, "stream = 'yes'"),
        ({"stream_options": {"include_usage": True}}, "only valid with stream=True"),
        ({"stream": True, "stream_options": {"bogus": 1}}, "include_usage"),
        ({"k": "20"}, "k = '20'"),
        ({"draft_max": 0}, "draft_max = 0"),
        ({"restrict_top_k": "yes"}, "restrict_top_k = 'yes'"),
        ({"extra_body": {"top_k": 40}}, "extra_body sets top_k"),
        ({"extra_body": ["x"]}, "extra_body must be a dict"),
        ({"timeout": -1}, "timeout = -1"),
        ({"tools": [{"type": "function"}]}, "tools is not supported"),
        ({"frobnicate": 1}, "unknown argument"),
    ],
)
def test_bad_numbers_and_types_are_refused_before_any_call(kwargs, words):
    provider = fake()
    client = vas_api.wrap(provider, value_model=LikesGood(), beta=1.0, k=4)
    with pytest.raises(ConfigError, match=words):
        client.chat.completions.create(model="f", messages=USER, **kwargs)
    assert provider.history == []


def test_extra_options_on_a_provider_that_cannot_take_them():
    provider = fake()
    client = vas_api.wrap(provider, k=4)
    with pytest.raises(ConfigError, match="takes no extra_headers"):
        client.completions.create(model="f", prompt="x", extra_headers={"X-A": "1"})
    assert provider.history == []


@pytest.mark.parametrize(
    ("messages", "words"),
    [
        ([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://x"}}]}],
         r"messages\[0\].content\[0\] is a 'image_url' part"),
        ([{"role": "user", "content": [{"type": "text"}]}], "'text' part"),
        ([{"role": "user", "content": None}], r"messages\[0\] \(user\) has no content"),
        ([{"role": "user"}], "has no content"),
        ([{"role": "user", "content": 3}], "must be a string or a list of parts"),
        ([{"role": "tool", "content": "42", "tool_call_id": "a"}], "role 'tool'"),
        ([{"role": "assistant", "content": None, "tool_calls": [{"id": "a"}]}], "has tool_calls"),
        ([], "non-empty list"),
        ("hello", "non-empty list"),
        ([{"content": "no role"}], "must be a dict with 'role'"),
    ],
)
def test_bad_messages_are_refused_before_any_call(messages, words):
    provider = fake()
    client = vas_api.wrap(provider, k=4)
    with pytest.raises(ConfigError, match=words):
        client.chat.completions.create(model="f", messages=messages)
    assert provider.history == []


def test_text_parts_and_assistant_none_are_accepted_and_flattened():
    parts = [{"role": "system", "content": [{"type": "text", "text": "Be brief."}, {"type": "text", "text": "Be kind."}]},
             {"role": "assistant", "content": None},
             {"role": "user", "content": [{"type": "text", "text": "hi"}]}]
    flat = flatten_messages(parts)
    assert [m["content"] for m in flat] == ["Be brief.\nBe kind.", "", "hi"]
    outs = []
    for msgs in (parts, flat):
        provider = fake()
        resp = vas_api.wrap(provider, value_model=LikesGood(), beta=1.0, k=4).chat.completions.create(
            model="f", messages=msgs, max_tokens=6, seed=2)
        outs.append((resp.choices[0].message.content, [h["text"] for h in provider.history]))
    assert outs[0] == outs[1]
    assert outs[0][1][0].startswith("<system>Be brief.\nBe kind.\n<assistant>\n<user>hi\n")


def test_messages_may_be_any_iterable_of_dicts():
    resp = vas_api.wrap(fake(), k=4).chat.completions.create(model="f", messages=iter(USER), max_tokens=3)
    assert resp.choices[0].message.content is not None


@pytest.mark.parametrize("where", ["request", "wrap"])
def test_beta_without_a_value_model_is_refused(where):
    provider = fake()
    client = vas_api.wrap(provider, k=4, **({"beta": 2.0} if where == "wrap" else {}))
    extra = {"beta": 2.0} if where == "request" else {}
    with pytest.raises(ConfigError, match="no value model: pass value_model="):
        client.completions.create(model="f", prompt="x", **extra)
    assert provider.history == []


def test_beta_zero_or_default_without_a_value_model_runs_the_base():
    client = vas_api.wrap(fake(), k=4)
    assert client.completions.create(model="f", prompt="x", max_tokens=3).vas.betas == ()
    assert client.completions.create(model="f", prompt="x", max_tokens=3, beta=0.0).vas.betas == ()


def test_sdk_sentinels_mean_not_given():
    kw = dict(model="f", prompt="x", max_tokens=6, seed=4)
    plain = vas_api.wrap(fake(), value_model=LikesGood(), beta=1.0, k=4).completions.create(**kw)
    given = vas_api.wrap(fake(), value_model=LikesGood(), beta=1.0, k=4).completions.create(
        **kw, temperature=openai.NOT_GIVEN, top_p=openai.omit, stop=openai.NOT_GIVEN, n=openai.NOT_GIVEN,
        user=openai.NOT_GIVEN, stream=openai.NOT_GIVEN, stream_options=openai.NOT_GIVEN,
        extra_headers=None, extra_query=None, extra_body=None, timeout=openai.NOT_GIVEN,
        beta=openai.NOT_GIVEN, k=openai.NOT_GIVEN, mode=openai.omit, value_model=openai.NOT_GIVEN,
        max_completion_tokens=openai.NOT_GIVEN,
    )
    assert given.choices[0].text == plain.choices[0].text
    assert given.vas.betas == plain.vas.betas == (1.0,)
    assert vas_api.NOT_GIVEN is openai.NOT_GIVEN


def test_max_tokens_default_is_the_sdk_default():
    resp = vas_api.wrap(FakeProvider(table_model({"a": 1.0}), seed=1), k=2).completions.create(model="f", prompt="x")
    assert resp.vas.tokens == 16 and resp.choices[0].finish_reason == "length"


@pytest.mark.parametrize(("how", "words"), [("nan", "returned nan"), ("inf", "returned inf"), ("short", "3 scores for the 4")])
@pytest.mark.parametrize("mode", ["token", "speculative"])
def test_broken_value_model_outputs_raise_a_value_model_error(how, words, mode):
    client = vas_api.wrap(fake(), value_model=Broken(how), beta=1.0, k=4, mode=mode)
    with pytest.raises(ValueModelError, match=words):
        client.completions.create(model="f", prompt="x", max_tokens=4, seed=0)


def test_checked_scores_counts_positions():
    with pytest.raises(ValueModelError, match="for 1 positions, asked for 2"):
        checked_scores([[0.0]], [("a",), ("b",)], LikesGood())
    (arr,) = checked_scores([np.float32([1, 2])], [("a", "b")], LikesGood())
    assert arr.dtype == np.float64 and arr.tolist() == [1.0, 2.0]


def test_a_value_model_with_broken_weights_is_refused_when_loaded():
    import torch

    module = torch.nn.Linear(2, 1)
    probe_value_model(module, "/ckpt")  # finite weights pass
    probe_value_model(LikesGood(), "/ckpt")  # no weights to check
    with torch.no_grad():
        module.weight[0, 1] = float("inf")
    with pytest.raises(ValueModelError, match=r"inf in its weights \(weight\)"):
        probe_value_model(module, "/ckpt")


def test_a_checkpoint_with_nan_weights_is_refused_before_any_call(tmp_path, one_torch_thread):
    from pathlib import Path

    import torch
    from transformers import AutoTokenizer, LlamaConfig

    from estimators import ValueModel

    tokenizer = AutoTokenizer.from_pretrained(str(Path(__file__).parent / "data" / "tiny_tokenizer"))
    config = LlamaConfig(vocab_size=520, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    model = ValueModel.from_config(config, tokenizer)
    with torch.no_grad():
        model.head.bias.fill_(float("nan"))
    model.save(tmp_path / "ckpt")
    provider = fake()
    client = vas_api.wrap(provider, k=4)
    with pytest.raises(ValueModelError, match="NaN or infinite weights|weights are broken"):
        client.completions.create(model="f", prompt="x", value_model=str(tmp_path / "ckpt"), beta=1.0)
    assert provider.history == []
