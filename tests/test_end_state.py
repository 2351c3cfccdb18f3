"""End of sequence as its own value state (issue 13, item 1).

The layout of states with and without the end state, the value model's encoding of a finished
text (ids + EOS) on every scoring path, its checkpoint flag, training that tells a finished text
from the same text cut at max_tokens, and the samplers giving END_OF_TEXT only to value
functions that score it. Tiny models from a config, so each test takes seconds.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")

from transformers import AutoTokenizer, LlamaConfig  # noqa: E402

from estimators.baselines import PrefixRewardValue, ResidualValueModel  # noqa: E402
from estimators.data import Sample, write_samples  # noqa: E402
from estimators.evaluate import END, values_at  # noqa: E402
from estimators.states import split_states  # noqa: E402
from estimators.td import last_state_rewards, td_lambda_returns  # noqa: E402
from estimators.train import TrainConfig, train  # noqa: E402
from estimators.value_model import ValueModel  # noqa: E402
from vas_api import END_OF_TEXT  # noqa: E402
from vas_api.errors import ValueModelError  # noqa: E402
from vas_api.providers.fake import EOS, FakeProvider, table_model  # noqa: E402
from vas_api.sampler import SamplerSettings, TokenSampler  # noqa: E402
from vas_api.sampler.rerank import RerankSampler  # noqa: E402
from vas_api.sampler.run import run  # noqa: E402
from vas_api.sampler.speculative import SpeculativeSampler  # noqa: E402
from vas_api.types import Prefix  # noqa: E402
from vas_api.value_binding import bind_values  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TOKENIZER_DIR = Path(__file__).parent / "data" / "tiny_tokenizer"
PROMPT = "<|im_start|>user\nSay something.<|im_end|>\n<|im_start|>assistant\n"


def tiny_model(*, end_state: bool = True, random_head: bool = True, seed: int = 0) -> ValueModel:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=520, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
    )
    model = ValueModel.from_config(config, AutoTokenizer.from_pretrained(str(TOKENIZER_DIR)))
    model.config.end_state = end_state
    if random_head:  # the real head starts at 0; a random one makes comparisons meaningful
        torch.nn.init.normal_(model.head.weight, std=1.0)
        torch.nn.init.normal_(model.head.bias, std=1.0)
    return model


# -- states and TD targets ------------------------------------------------------------------------


def test_end_state_layout_adds_one_eos_state():
    tok = AutoTokenizer.from_pretrained(str(TOKENIZER_DIR))
    plain = split_states(tok, PROMPT, "It was fine.")
    ended = split_states(tok, PROMPT, "It was fine.", end_id=tok.eos_token_id)
    assert not plain.end_state and ended.end_state
    assert ended.input_ids == (*plain.input_ids, tok.eos_token_id)
    assert ended.ends == (*plain.ends, len("It was fine."))
    assert ended.num_states == plain.num_states + 1
    # Fractions count completion tokens only: the end state is none of them.
    for f in (0.0, 0.5, 1.0):
        assert ended.state_at(f) == plain.state_at(f)
    # max_length counts the EOS too.
    n = len(plain.input_ids)
    assert split_states(tok, PROMPT, "It was fine.", max_length=n, end_id=tok.eos_token_id).input_ids[0] \
        == plain.input_ids[1]


def test_reward_sits_on_the_end_state_and_earlier_states_bootstrap_through_it():
    # One row: 3 states, then the end state (column 3).
    mask = torch.tensor([[1, 1, 1, 1]])
    rewards = last_state_rewards(torch.tensor([2.0]), mask)
    assert rewards.tolist() == [[0.0, 0.0, 0.0, 2.0]]
    values = torch.tensor([[0.1, 0.2, 0.3, 0.7]])
    td0 = td_lambda_returns(rewards, values, mask, lam=0.0)
    assert td0[0, 3] == 2.0  # the end state's target is the reward
    assert td0[0, 2] == pytest.approx(0.7)  # the last token's target is V(end state), not R
    mc = td_lambda_returns(rewards, values, mask, lam=1.0)
    assert mc[0].tolist() == pytest.approx([2.0] * 4)


# -- the value model ------------------------------------------------------------------------------


def test_finished_text_is_its_ids_plus_eos_and_the_marker_is_never_tokenized():
    model = tiny_model()
    eos = model.tokenizer.eos_token_id
    text = PROMPT + "It was fine."
    assert model.encode(text + END_OF_TEXT) == [*model.encode(text), eos]
    with pytest.raises(ValueModelError, match="before its end"):
        model.encode(PROMPT + END_OF_TEXT + "more")
    old = tiny_model(end_state=False)
    assert not old.scores_end_of_text and model.scores_end_of_text
    with pytest.raises(ValueModelError, match="no end state"):
        old.values([text + END_OF_TEXT])


def test_eos_candidate_scores_equal_values_of_the_finished_text():
    model = tiny_model()
    prefix = PROMPT + "It was"
    cands = [" fine", END_OF_TEXT, "", " great."]
    expect = model.values([prefix + c for c in cands])
    assert torch.allclose(model.score_candidates(prefix, cands), expect, atol=1e-4)
    # The finished text is a state of its own: not the value of the text as it stands.
    assert not torch.isclose(expect[1], expect[2], atol=1e-4)
    # Again on the warm cache, in a draft (EOS after a drafted path) and in score_many.
    assert torch.allclose(model.score_candidates(prefix, cands), expect, atol=1e-4)
    path = [" fine", "."]
    per_pos = model.score_draft(prefix, path, [[" fine", END_OF_TEXT], ["."], [END_OF_TEXT, " Yes"]])
    want = model.values([prefix + " fine" + "." + END_OF_TEXT, prefix + " fine" + ". Yes"])
    assert torch.allclose(per_pos[2], want, atol=1e-4)
    assert torch.allclose(per_pos[0][1], expect[1], atol=1e-4)
    many = model.score_many([(prefix, [], [cands]), (PROMPT, [], [[END_OF_TEXT]])], keys=["a", "b"])
    assert torch.allclose(many[0][0], expect, atol=1e-4)
    assert torch.allclose(many[1][0], model.values([PROMPT + END_OF_TEXT]), atol=1e-4)


def test_checkpoint_round_trip_and_old_checkpoints_load_without_end_state(tmp_path):
    model = tiny_model()
    model.save(tmp_path / "new")
    loaded = ValueModel.load(tmp_path / "new", device="cpu")
    assert loaded.config.end_state and loaded.scores_end_of_text
    text = PROMPT + "Fine." + END_OF_TEXT
    assert torch.allclose(loaded.values([text]), model.values([text]), atol=1e-5)
    cfg_path = tmp_path / "new" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    del cfg["end_state"]  # as written before the field existed
    cfg_path.write_text(json.dumps(cfg))
    old = ValueModel.load(tmp_path / "new", device="cpu")
    assert old.config.end_state is False and not old.scores_end_of_text


def test_baselines_strip_the_marker_and_residual_follows_its_model():
    reward = PrefixRewardValue("vader")
    text = PROMPT + "I love it."
    assert reward.values([text + END_OF_TEXT]) == reward.values([text])
    assert not getattr(reward, "scores_end_of_text", False)
    for end_state in (True, False):
        residual = ResidualValueModel(tiny_model(end_state=end_state), reward)
        assert residual.scores_end_of_text is end_state


# -- training -------------------------------------------------------------------------------------


@pytest.mark.parametrize("stop_reward, length_reward", [(1.0, -1.0), (-1.0, 1.0)])
def test_training_tells_a_finished_text_from_the_same_text_cut_short(tmp_path, stop_reward, length_reward):
    """Two samples per prompt share one text; the base finished one and max_tokens cut the
    other, with different rewards. Only the end state can tell them apart."""
    rows = []
    for p in range(2):
        prompt = f"Say thing {p}."
        prompt_text = f"<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n"
        rows.append(Sample(prompt, prompt_text, "It was fine.", "stop", "fake", reward=stop_reward))
        rows.append(Sample(prompt, prompt_text, "It was fine.", "length", "fake", reward=length_reward))
    data = tmp_path / "samples.jsonl"
    write_samples(data, rows)
    cfg = TrainConfig(data=str(data), output_dir=str(tmp_path / "out"), reward=None, lr=3e-3,
                      batch_size=4, epochs_per_batch=4, passes=15, warmup_steps=0,
                      heldout_fraction=0.0, save_every=100)
    result = train(cfg, model=tiny_model(random_head=False), progress=False)
    model = result.model
    assert model.scores_end_of_text
    assert ValueModel.load(tmp_path / "out", device="cpu").config.end_state
    texts = [model.render_prompt(r.prompt) + r.completion for r in rows[::2]]
    ended = model.values([t + END_OF_TEXT for t in texts])
    going_on = model.values(texts)
    # V(text + EOS) learns the finished sample's reward; V(text) sits between the two.
    assert bool(((ended - going_on) * np.sign(stop_reward - length_reward) > 0.3).all())
    # The evaluation's end state reads the same values for finished samples.
    at_end = values_at(model, rows[::2], model.tokenizer, END)
    assert np.allclose(at_end, ended.tolist(), atol=1e-4)


# -- the samplers ---------------------------------------------------------------------------------


class Recorder:
    """A value function that records every candidate text it is given (V = 0)."""

    def __init__(self, flag: bool | None) -> None:
        if flag is not None:
            self.scores_end_of_text = flag
        self.seen: list[str] = []

    def values(self, texts):
        self.seen.extend(texts)
        return [0.0] * len(texts)

    def score_candidates(self, prefix_text, candidate_texts):
        self.seen.extend(candidate_texts)
        return [0.0] * len(candidate_texts)


@pytest.mark.parametrize("mode", ["token", "speculative"])
def test_only_value_functions_with_the_flag_see_the_marker(mode):
    fake = FakeProvider(table_model({"a": 0.5, "b": 0.3, EOS: 0.2}), seed=3)
    flagged, old, explicit_false = Recorder(True), Recorder(None), Recorder(False)
    settings = SamplerSettings(betas=(1.0, 1.0, 1.0), k=5, max_tokens=6, seed=1)
    for _ in range(4):
        if mode == "token":
            sampler = TokenSampler(settings, Prefix("x"), "x")
        else:
            sampler = SpeculativeSampler(settings, Prefix("x"), "x", restrict_top_k=True)
        run(sampler, fake, [flagged, old, explicit_false])
    assert END_OF_TEXT in flagged.seen  # every position offers EOS
    for vf in (old, explicit_false):
        assert not any(END_OF_TEXT in t for t in vf.seen)
        assert "" in vf.seen  # EOS as before: the response as it stands
    assert len(flagged.seen) == len(old.seen)
    assert [t.replace(END_OF_TEXT, "") for t in flagged.seen] == old.seen


def test_rerank_marks_finished_responses_only():
    fake = FakeProvider(table_model({"a": 0.7, EOS: 0.3}), seed=5)
    flagged, old = Recorder(True), Recorder(None)
    settings = SamplerSettings(betas=(1.0, 1.0), k=5, max_tokens=3, seed=1, rerank_n=8)
    sampler = RerankSampler(settings, Prefix("x"), "x")
    run(sampler, fake, [flagged, old])
    finished = [f == "stop" for f in sampler.finishes]
    assert any(finished) and not all(finished)  # seeded: both kinds in the pool
    assert [t.endswith(END_OF_TEXT) for t in flagged.seen] == finished
    assert old.seen == sampler.pool


def test_a_per_request_view_keeps_the_flag():
    model = tiny_model()
    (view,) = bind_values([model], [{"role": "user", "content": "hi"}], "base prompt ")
    assert view is not model and view.scores_end_of_text
    assert view.score_candidates("base prompt Hi", [END_OF_TEXT])[0] == pytest.approx(
        float(model.values([model.render_prompt([{"role": "user", "content": "hi"}]) + "Hi" + END_OF_TEXT])[0]),
        abs=1e-4,
    )
