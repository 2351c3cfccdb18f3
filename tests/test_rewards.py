"""Rewards: built-ins, the spec registry, composition, and refusing non-finite values."""

from __future__ import annotations

import math

import pytest

from estimators.rewards import (
    EndingReward,
    HFReward,
    LengthReward,
    VaderReward,
    build_reward,
    compute_rewards,
    ends_on_sentence,
)
from vas_api.errors import ConfigError, RewardError

P = ["<|im_start|>user\nSay something.<|im_end|>\n<|im_start|>assistant\n"] * 3


def test_vader_scores_the_completion_sentiment():
    good, bad, flat = compute_rewards(
        VaderReward(), P, ["I love this, it is wonderful!", "Awful, I hate it.", "It is a table."]
    )
    assert 0.5 < good <= 1.0 and -1.0 <= bad < -0.5 and flat == 0.0


def test_vader_ignores_the_prompt():
    r = VaderReward()
    assert r(["I hate everything"], ["ok"]) == r(["I love everything"], ["ok"])


def test_length_reward_peaks_at_the_target():
    r = LengthReward(target=4)
    assert compute_rewards(r, P, ["a b c d", "a b", "a " * 20]) == [0.0, -0.5, -1.0]
    assert LengthReward(target=3, unit="chars")(["p"], ["abc"]) == [0.0]


def test_keyword_and_regex_rewards():
    kw = build_reward("keyword:words=great|love")
    assert kw(P, ["A GREAT day", "greatness", "nothing"]) == [1.0, 0.0, 0.0]
    rx = build_reward('regex:pattern="a+b,c",mode=count')
    assert rx(["p"], ["aab,c ab,c"]) == [2.0]


def test_weighted_composition_is_the_weighted_sum():
    texts = ["I love it", "one two three four five"]
    combo = build_reward("0.7*vader+0.3*length:target=5")
    vader, length = VaderReward()(P[:2], texts), LengthReward(5)(P[:2], texts)
    expected = [0.7 * v + 0.3 * n for v, n in zip(vader, length, strict=True)]
    assert combo(P[:2], texts) == pytest.approx(expected)


def words(n: int, end: str = ".") -> str:
    return " ".join(["word"] * n) + end


def test_ending_reward_hand_cases():
    r = EndingReward(min_words=25, max_words=35, slack=10, unfinished=0.5)
    inside = [words(25), words(30, "!"), words(35, "?"), words(30, '."'), words(30, ".**"), words(30, "...")]
    assert r(P[:1] * len(inside), inside) == [1.0] * len(inside)
    assert r.score(words(30, "")) == 0.5 and r.score(words(30, ",")) == 0.5  # mid-sentence
    assert r.score(words(45)) == pytest.approx(math.exp(-1))  # 10 words over
    assert r.score(words(20)) == pytest.approx(math.exp(-0.5))  # 5 words under
    assert r.score(words(20, "")) == pytest.approx(0.5 * math.exp(-0.5))
    assert r.score("") == pytest.approx(0.5 * math.exp(-2.5))
    assert EndingReward(25, 35, unfinished=0).score(words(30, " and")) == 0.0


def test_ending_reward_falls_with_each_word_outside_the_window():
    r = EndingReward(min_words=10, max_words=12)
    scores = [r.score(words(n)) for n in range(1, 40)]
    assert scores[9:12] == [1.0, 1.0, 1.0]
    assert all(a < b for a, b in zip(scores[:9], scores[1:10], strict=True))
    assert all(a > b for a, b in zip(scores[11:-1], scores[12:], strict=True))
    # finished beats unfinished at every length
    assert all(r.score(words(n)) > r.score(words(n, "")) for n in range(1, 40))


def test_what_counts_as_a_finished_sentence():
    assert all(ends_on_sentence(t) for t in ["Done.", "Really?  \n", "Wow!)", "He said \u201cyes.\u201d", "Hm\u2026"])
    assert not any(ends_on_sentence(t) for t in ["", "   ", "and then", "Best regards,", "Note:", "(see"])


@pytest.mark.parametrize(
    "spec",
    ["vader", "length:target=40", "length:40", "0.7*vader+0.3*length:target=40,unit=chars",
     "regex:pattern=\"x,y+z\",ignore_case=true", "keyword:great|fine", "-1*vader",
     "ending:min_words=25,max_words=35", "ending:min_words=3,max_words=3,slack=2.5,unfinished=0",
     "0.5*vader+0.5*ending:min_words=1,max_words=4"],
)
def test_descriptions_rebuild_the_same_reward(spec):
    reward = build_reward(spec)
    again = build_reward(reward.description)
    assert again.description == reward.description
    texts = ["x,y+z is great", "I hate this"]
    assert again(P[:2], texts) == reward(P[:2], texts)


@pytest.mark.parametrize(
    "spec, match",
    [("sentiment", "unknown reward"), ("length:target=abc", "target"), ("length:size=3", "no parameter"),
     ("regex:pattern=\"(\"", "bad pattern"), ("vader+", "empty part"), ("regex:'abc", "unclosed"),
     ("", "empty"), ("length:target=-3", "positive"), ("ending:min_words=9,max_words=5", "exceed"),
     ("ending:min_words=0", "positive"), ("ending:slack=0", "slack"), ("ending:unfinished=2", r"\[0, 1\]")],
)
def test_bad_specs_say_what_is_wrong(spec, match):
    with pytest.raises(ConfigError, match=match):
        build_reward(spec)


class _Broken:
    description = "broken"

    def __init__(self, value: float) -> None:
        self.value = value

    def __call__(self, prompts, completions):
        return [0.0] * (len(completions) - 1) + [self.value]


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_finite_rewards_name_the_reward_and_index(value):
    with pytest.raises(RewardError, match=r"'broken'.*item 2"):
        compute_rewards(_Broken(value), P, ["a", "b", "c"])


def test_a_broken_part_of_a_composition_is_named():
    from estimators.rewards import WeightedReward

    combo = WeightedReward([(0.5, VaderReward()), (0.5, _Broken(math.nan))])
    with pytest.raises(RewardError, match="'broken'"):
        compute_rewards(combo, P, ["a", "b", "c"])


def test_wrong_count_and_exceptions_become_reward_errors():
    class Short:
        description = "short"

        def __call__(self, prompts, completions):
            return [1.0]

    class Raises:
        description = "raises"

        def __call__(self, prompts, completions):
            raise KeyError("boom")

    with pytest.raises(RewardError, match="returned 1 values for 3"):
        compute_rewards(Short(), P, ["a", "b", "c"])
    with pytest.raises(RewardError, match="'raises' failed: KeyError"):
        compute_rewards(Raises(), P, ["a", "b", "c"])


def test_python_factory_reward():
    r = build_reward("py:estimators.rewards.LengthReward,target=2")
    assert r(["p"], ["a b"]) == [0.0]


@pytest.fixture(scope="module")
def tiny_reward_model(tmp_path_factory):
    """A randomly initialised DeBERTa-v2 classifier with a word-level tokenizer, saved locally."""
    transformers = pytest.importorskip("transformers")
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "say", "something", "i", "love", "it", "hate"]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]",
        special_tokens=[("[CLS]", 2), ("[SEP]", 3)],
    )
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]",
        sep_token="[SEP]",
    )
    config = transformers.DebertaV2Config(
        vocab_size=len(words), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=32, max_position_embeddings=64, num_labels=1, pad_token_id=0,
    )
    model = transformers.DebertaV2ForSequenceClassification(config)
    path = tmp_path_factory.mktemp("reward-model")
    model.save_pretrained(path)
    fast.save_pretrained(path)
    return path


def test_hf_reward_model_from_a_local_path(tiny_reward_model):
    reward = build_reward(f'hf:"{tiny_reward_model}"')
    assert isinstance(reward, HFReward)
    scores = compute_rewards(reward, P[:2], ["i love it", "i hate it"])
    assert len(scores) == 2 and scores[0] != scores[1]
    # batching and padding do not change a score
    assert HFReward(str(tiny_reward_model), batch_size=1)(P[:2], ["i love it", "i hate it"]) == (
        pytest.approx(scores, abs=1e-5)
    )


def test_hf_reward_missing_model_is_a_clear_error(tmp_path):
    with pytest.raises(RewardError, match="cannot load the reward model"):
        HFReward(str(tmp_path / "nope"))
