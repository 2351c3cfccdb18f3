"""Sample and prompt files: round trips, bad lines counted, append-only writing."""

from __future__ import annotations

import json

import pytest

from estimators.data import (
    Sample,
    SampleWriter,
    read_prompts,
    read_samples,
    write_samples,
)
from vas_api.errors import DataError

MESSAGES = [{"role": "user", "content": "Write a review."}]


def _sample(i: int = 0, reward: float | None = None) -> Sample:
    return Sample(
        prompt=MESSAGES, prompt_text="<user>Write a review.\n<assistant>", completion=f"ok {i}",
        finish_reason="stop", model="m", usage={"prompt_tokens": 5}, reward=reward,
    )


def test_round_trip_keeps_every_field(tmp_path):
    path = tmp_path / "s.jsonl"
    first = _sample(0, reward=0.5)
    first.extra = {"sample_index": 3}
    assert write_samples(path, [first, _sample(1)]) == 2
    got = read_samples(path)
    assert got.skipped == []
    assert got.samples[0] == first and got.samples[1].reward is None
    assert "reward" not in json.loads(path.read_text().splitlines()[1])
    assert got.samples[0].text == "<user>Write a review.\n<assistant>ok 0"


def test_bad_lines_are_counted_not_fatal(tmp_path):
    path = tmp_path / "s.jsonl"
    good = json.dumps(_sample().to_json())
    lines = [
        good, "", "{not json", json.dumps([1, 2]), json.dumps({"prompt": "p"}),
        json.dumps({**_sample().to_json(), "reward": "high"}),
        json.dumps({**_sample().to_json(), "prompt": 7}), good,
    ]
    path.write_text("\n".join(lines) + "\n")
    got = read_samples(path)
    assert len(got.samples) == 2
    assert [n for n, _ in got.skipped] == [2, 3, 4, 5, 6, 7]
    reasons = dict(got.skipped)
    assert "blank" in reasons[2] and "not JSON" in reasons[3] and "missing key" in reasons[5]
    assert "reward" in reasons[6]
    assert "6 lines skipped" in got.summary()


def test_non_finite_reward_in_a_file_is_skipped(tmp_path):
    path = tmp_path / "s.jsonl"
    row = _sample().to_json()
    path.write_text(json.dumps(row) + "\n" + json.dumps(row).replace('"ok 0"', '"x"')[:-1]
                    + ', "reward": NaN}\n')
    got = read_samples(path)
    assert len(got.samples) == 1 and "not finite" in got.skipped[0][1]


def test_missing_or_empty_files(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        read_samples(tmp_path / "nope.jsonl")
    assert read_samples(tmp_path / "nope.jsonl", require=False).samples == []
    (tmp_path / "bad.jsonl").write_text("\n{oops\n")
    with pytest.raises(DataError, match="no valid sample.*2 lines skipped"):
        read_samples(tmp_path / "bad.jsonl")


def test_writer_appends_and_repairs_a_torn_last_line(tmp_path):
    path = tmp_path / "s.jsonl"
    write_samples(path, [_sample(0)])
    with path.open("a") as f:  # a crash in the middle of a line
        f.write('{"prompt": "torn')
    with SampleWriter(path) as writer:
        writer.write(_sample(1))
        # flushed per line: readable before the writer closes
        assert len(read_samples(path).samples) == 2
    got = read_samples(path)
    assert [s.completion for s in got.samples] == ["ok 0", "ok 1"] and len(got.skipped) == 1


def test_prompt_files(tmp_path):
    path = tmp_path / "p.txt"
    path.write_text("First prompt.\n\n  Second prompt.  \n")
    assert read_prompts(path) == ["First prompt.", "Second prompt."]
    path.write_text("\n\n")
    with pytest.raises(DataError, match="no prompt"):
        read_prompts(path)
    with pytest.raises(DataError, match="does not exist"):
        read_prompts(tmp_path / "missing.txt")


def test_shipped_prompt_files():
    from pathlib import Path

    folder = Path(__file__).parents[1] / "estimators" / "data"
    train = read_prompts(folder / "train_prompts.txt")
    heldout = read_prompts(folder / "heldout_prompts.txt")
    assert len(train) >= 64 and len(heldout) == 32
    assert len(set(train)) == len(train) and len(set(heldout)) == len(heldout)
    assert not set(train) & set(heldout)
