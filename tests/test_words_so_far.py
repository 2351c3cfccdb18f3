"""The words-so-far baseline: E[final reward | n words so far] from training samples."""

from __future__ import annotations

import pytest

from estimators.baselines import CHATML_ASSISTANT
from estimators.rewards import EndingReward
from estimators.words_so_far import WordsSoFarValue
from vas_api.errors import DataError, ValueModelError

PROMPT = "<|im_start|>user\nHi<|im_end|>\n" + CHATML_ASSISTANT


def test_the_table_is_the_mean_reward_of_the_responses_that_got_that_far():
    completions = ["a b", "a b c d", "a b c d e f"]
    v = WordsSoFarValue.fit(completions, [1.0, 0.0, 0.5], min_count=1)
    # 0..2 words: all three reached; 3..4: the last two; 5..6: only the last.
    assert v.table == pytest.approx([0.5, 0.5, 0.5, 0.25, 0.25, 0.5, 0.5])
    assert v.value_of("x y y y") == pytest.approx(0.25) and v.value_of("w " * 50) == pytest.approx(0.5)


def test_min_count_cuts_the_noisy_tail():
    v = WordsSoFarValue.fit(["a", "a b", "a b c d e"], [0.0, 1.0, 3.0], min_count=2)
    assert len(v.table) == 3  # 3 words are reached by one response only
    assert v.value_of("a b c d e f") == v.table[-1]


def test_it_looks_ahead_where_the_prefix_reward_cannot():
    reward = EndingReward(min_words=6, max_words=8)
    completions = ["one two three four five six seven."] * 5 + ["one two three four five six seven eight nine ten eleven"] * 5
    v = WordsSoFarValue.fit(completions, reward([""] * 10, completions))
    prefix = "one two three"
    assert v.value_of(prefix) > reward.score(prefix)  # short so far is promising, not bad


def test_values_take_prompt_lengths_or_the_chatml_split():
    v = WordsSoFarValue([0.0, 1.0, 2.0])
    texts = [PROMPT + "a", PROMPT + "a b c d"]
    assert v.values(texts) == [1.0, 2.0]
    assert v.values(texts, prompt_lens=[len(PROMPT)] * 2) == [1.0, 2.0]
    assert v.score_candidates(PROMPT + "a", [" b", "b"], prompt_len=len(PROMPT)) == [2.0, 1.0]
    with pytest.raises(ValueModelError, match="prompt marker"):
        v.values(["no marker here"])
    with pytest.raises(ValueModelError, match="prompt_lens"):
        v.values(texts, prompt_lens=[1])


@pytest.mark.parametrize(
    "completions, rewards, match",
    [([], [], "at least one"), (["a"], [1.0, 2.0], "1 completions for 2"), (["a"], [float("nan")], "finite")],
)
def test_bad_training_data_is_refused(completions, rewards, match):
    with pytest.raises(DataError, match=match):
        WordsSoFarValue.fit(completions, rewards)
