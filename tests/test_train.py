"""TD(lambda) training on a tiny random value model: it learns, resumes, and saves cleanly."""

from __future__ import annotations

import math
import random
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")

from estimators.baselines import (  # noqa: E402
    PrefixRewardValue,
    ResidualValueModel,
    load_value_function,
)
from estimators.data import Sample, read_samples, write_samples  # noqa: E402
from estimators.evaluate import evaluate_value, spearman, spearman_within, values_at  # noqa: E402
from estimators.states import split_states  # noqa: E402
from estimators.train import TrainConfig, center_by_prompt, score_samples, split_by_prompt, train  # noqa: E402
from estimators.value_model import ValueModel  # noqa: E402
from vas_api.errors import CheckpointError, ConfigError, DataError  # noqa: E402

TOKENIZER_DIR = Path(__file__).parent / "data" / "tiny_tokenizer"
PHRASES = ["I love this movie.", "It was wonderful!", "I hate this.", "It was terrible.",
           "The dog ran to the park.", "hello world"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_model(seed: int = 0) -> ValueModel:
    from transformers import AutoTokenizer, LlamaConfig

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=520, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
    )
    return ValueModel.from_config(config, AutoTokenizer.from_pretrained(str(TOKENIZER_DIR)))


def chat(prompt: str) -> str:
    return f"<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n"


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    rng = random.Random(0)
    rows = []
    for p in range(6):
        prompt = f"Write story {p}."
        for _ in range(6):
            completion = " ".join(rng.choice(PHRASES) for _ in range(2))
            rows.append(Sample(prompt, chat(prompt), completion, "stop", "fake-model"))
    path = tmp_path_factory.mktemp("data") / "samples.jsonl"
    write_samples(path, rows)
    return path


def _cfg(data: Path, out: Path, **kw) -> TrainConfig:
    base = dict(data=str(data), output_dir=str(out), lr=3e-3, batch_size=6, epochs_per_batch=2,
                warmup_steps=0, heldout_fraction=0.0, save_every=2)
    return TrainConfig(**{**base, **kw})


def _mc_loss(model, samples) -> float:
    """0.5 * MSE of V at every state against the final reward (the Monte Carlo target)."""
    total, count = 0.0, 0
    for s in samples:
        split = split_states(model.tokenizer, s.prompt_text, s.completion)
        ids = torch.tensor([split.input_ids])
        with torch.no_grad():
            v = model(ids, torch.ones_like(ids))[0, split.prompt_state :]
        total += float(((v - s.reward) ** 2).sum())
        count += len(v)
    return 0.5 * total / count


def test_training_lowers_the_loss_and_changes_every_trained_parameter(data, tmp_path):
    model = tiny_model()
    samples = score_samples(read_samples(data).samples, "vader")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    loss_before = _mc_loss(model, samples)
    result = train(_cfg(data, tmp_path / "ck", passes=3), model=model, progress=False)
    assert _mc_loss(result.model, samples) < 0.7 * loss_before
    unchanged = [n for n, p in result.model.named_parameters() if torch.equal(p, before[n])]
    assert unchanged == []
    # The saved checkpoint is a plain ValueModel with the training stats in its metadata.
    loaded = load_value_function(tmp_path / "ck")
    assert isinstance(loaded, ValueModel)
    meta = loaded.config.metadata
    assert meta["reward"] == "vader" and meta["base_model"] == "fake-model"
    assert meta["training"]["batches"] == 18 and meta["training"]["optimizer_steps"] == 36
    texts = [s.text for s in samples[:4]]
    torch.testing.assert_close(loaded.values(texts), result.model.values(texts))


def test_resuming_continues_where_it_stopped(data, tmp_path):
    straight = train(_cfg(data, tmp_path / "a", passes=2), model=tiny_model(), progress=False)
    train(_cfg(data, tmp_path / "b", passes=1), model=tiny_model(), progress=False)
    resumed = train(_cfg(data, tmp_path / "b", passes=2), model=tiny_model(), progress=False)
    assert resumed.batches == straight.batches == 12
    for (name, p), q in zip(straight.model.named_parameters(), resumed.model.parameters(),
                            strict=True):
        torch.testing.assert_close(p, q, msg=name)
    # Same output dir, different settings: refused instead of silently mixing runs.
    with pytest.raises(ConfigError, match="lr"):
        train(_cfg(data, tmp_path / "b", passes=2, lr=1e-2), model=tiny_model(), progress=False)


def test_a_finished_run_is_returned_as_saved(data, tmp_path):
    cfg = _cfg(data, tmp_path / "f", passes=1, heldout_fraction=0.34)
    first = train(cfg, model=tiny_model(), progress=False)
    saved = (tmp_path / "f" / "config.json").read_text()
    weights = (tmp_path / "f" / "model.safetensors").stat().st_mtime_ns
    again = train(cfg, model=tiny_model(seed=1), progress=False)
    # Neither evaluated nor written again: same metadata (training time too), same file.
    assert (tmp_path / "f" / "config.json").read_text() == saved
    assert (tmp_path / "f" / "model.safetensors").stat().st_mtime_ns == weights
    assert again.batches == first.batches and again.metrics == pytest.approx(first.metrics)
    texts = [chat("Write story 0.") + "I love this movie."]
    torch.testing.assert_close(again.model.values(texts), first.model.values(texts))


def test_an_interrupt_keeps_the_finished_batches(data, tmp_path, monkeypatch):
    import estimators.train as train_mod

    calls, real = {"n": 0}, train_mod.value_loss

    def interrupting_loss(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3 * 2 + 1:  # the first epoch of batch 4 (2 epochs per batch)
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(train_mod, "value_loss", interrupting_loss)
    with pytest.raises(KeyboardInterrupt):
        train(_cfg(data, tmp_path, passes=2, save_every=100), model=tiny_model(), progress=False)
    monkeypatch.setattr(train_mod, "value_loss", real)
    resumed = train(_cfg(data, tmp_path, passes=2), model=tiny_model(), progress=False)
    assert resumed.batches == 12
    first = [h["batch"] for h in resumed.history if "loss_first_epoch" in h]
    assert first[:3] == [1, 2, 3]  # the three finished batches came from the saved state


def test_corrupt_resume_state_is_a_clear_error(data, tmp_path):
    train(_cfg(data, tmp_path / "c", passes=1), model=tiny_model(), progress=False)
    (tmp_path / "c" / "train_state" / "optimizer.safetensors").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="cannot resume"):
        train(_cfg(data, tmp_path / "c", passes=2), model=tiny_model(), progress=False)


def test_frozen_backbone_trains_only_the_head(data, tmp_path):
    model = tiny_model()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    train(_cfg(data, tmp_path / "f", freeze_backbone=True), model=model, progress=False)
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed == {"head.weight", "head.bias"}


def _count_backbone_rows(model: ValueModel) -> list[int]:
    rows: list[int] = []
    model.backbone.register_forward_hook(lambda _m, _a, kw, _o: rows.append(kw["input_ids"].shape[0]),
                                         with_kwargs=True)
    return rows


def test_frozen_backbone_runs_once_per_sample_and_trains_the_same_head(data, tmp_path, monkeypatch):
    import estimators.train as train_mod

    cached = tiny_model()
    rows = _count_backbone_rows(cached)
    train(_cfg(data, tmp_path / "cached", freeze_backbone=True, passes=3), model=cached,
          progress=False)
    assert sum(rows) == 36  # 36 samples, 3 passes, 2 epochs a batch: each sample once

    monkeypatch.setattr(train_mod, "FEATURE_CACHE_BYTES", 0)  # too big to keep: once per batch
    per_batch = tiny_model()
    rows = _count_backbone_rows(per_batch)
    train(_cfg(data, tmp_path / "per-batch", freeze_backbone=True, passes=3), model=per_batch,
          progress=False)
    assert sum(rows) == 3 * 36
    for name in ("head.weight", "head.bias"):
        a, b = dict(cached.named_parameters())[name], dict(per_batch.named_parameters())[name]
        assert torch.allclose(a, b, atol=1e-5), name
    assert torch.count_nonzero(cached.head.weight) > 0


def test_ridge_head_is_the_least_squares_fit_of_the_returns(data, tmp_path):
    model = tiny_model()
    before = {n: p.detach().clone() for n, p in model.backbone.named_parameters()}
    result = train(_cfg(data, tmp_path / "r", freeze_backbone=True, ridge=0.01), model=model,
                   progress=False)
    assert all(torch.equal(p, before[n]) for n, p in model.backbone.named_parameters())
    # The same regression written out: every state's features, the final reward as its target.
    feats, targets = [], []
    for s in score_samples(read_samples(data).samples, "vader"):  # the config's reward
        split = split_states(model.tokenizer, model.render_prompt(s.prompt), s.completion,
                             end_id=model.tokenizer.eos_token_id if s.finish_reason == "stop" else None)
        with torch.no_grad():
            h = model.backbone(input_ids=torch.tensor([split.input_ids])).last_hidden_state[0]
        feats.append(h[split.prompt_state: split.prompt_state + split.num_states].double())
        targets += [float(s.reward)] * split.num_states
    X, y = torch.cat(feats), torch.tensor(targets, dtype=torch.float64)
    Xc, n = X - X.mean(0), len(y)
    w = torch.linalg.solve(Xc.T @ Xc + 0.01 * n * torch.eye(X.shape[1], dtype=torch.float64),
                           Xc.T @ (y - y.mean()))
    assert torch.allclose(model.head.weight.double().view(-1), w, atol=1e-4)
    fit = X @ model.head.weight.double().view(-1) + float(model.head.bias)
    recorded = next(h for h in result.history if "ridge" in h)
    assert recorded["train_mse"] == pytest.approx(float(((fit - y) ** 2).mean()), rel=1e-3)
    assert recorded["train_mse"] < float(((y - y.mean()) ** 2).mean())  # it explains something
    assert result.batches == 0  # no TD steps were taken


def test_ridge_needs_a_frozen_backbone(data, tmp_path):
    with pytest.raises(ConfigError, match="ridge needs freeze_backbone"):
        train(_cfg(data, tmp_path / "x", ridge=0.1), model=tiny_model(), progress=False)


def test_ridge_without_a_penalty_on_too_few_states_says_what_to_do(tmp_path):
    path = tmp_path / "one.jsonl"
    write_samples(path, [Sample("Hi.", chat("Hi."), "I love this movie.", "stop", "m", reward=1.0)])
    with pytest.raises(ConfigError, match="use a penalty > 0"):
        train(_cfg(path, tmp_path / "z", reward=None, freeze_backbone=True, ridge=0.0),
              model=tiny_model(), progress=False)


def test_lora_is_merged_into_a_plain_checkpoint(data, tmp_path):
    pytest.importorskip("peft")
    result = train(_cfg(data, tmp_path / "l", lora_r=2, passes=2), model=tiny_model(),
                   progress=False)
    assert not any("lora" in n for n, _ in result.model.named_parameters())
    loaded = ValueModel.load(tmp_path / "l")
    texts = [chat("Write story 0.") + "I love this movie."]
    torch.testing.assert_close(loaded.values(texts), result.model.values(texts))
    assert float(loaded.values(texts)[0]) != 0.0


def test_residual_model_starts_at_the_baseline_and_round_trips(data, tmp_path):
    baseline = PrefixRewardValue("vader")
    texts = [chat("Hi.") + "I love it", chat("Hi.") + "I hate it", chat("Hi.")]
    fresh = ResidualValueModel(tiny_model(), baseline)
    torch.testing.assert_close(fresh.values(texts), torch.tensor(baseline.values(texts)))
    torch.testing.assert_close(
        fresh.score_candidates(chat("Hi.") + "I", [" love", " hate"]),
        torch.tensor(baseline.score_candidates(chat("Hi.") + "I", [" love", " hate"])),
    )
    result = train(_cfg(data, tmp_path / "r", residual=True, passes=2), model=tiny_model(),
                   progress=False)
    loaded = load_value_function(tmp_path / "r")
    assert isinstance(loaded, ResidualValueModel)
    assert loaded.baseline.reward.description == "vader"
    torch.testing.assert_close(loaded.values(texts), result.model.values(texts))
    # A whole draft in one call (speculative mode) equals scoring each position on its own.
    prefix, path = chat("Hi.") + "I", [" really", " love", " it"]
    cands = [[" love", " hate"], [" like", " hate", "!"], [" it", " them"], [".", "!"]]
    drafted = loaded.score_draft(prefix, path, cands)
    for i, got in enumerate(drafted):
        torch.testing.assert_close(
            got, result.model.score_candidates(prefix + "".join(path[:i]), cands[i]),
            atol=1e-4, rtol=0)


def test_validation_split_is_by_prompt_and_metrics_are_reported(data, tmp_path):
    samples = read_samples(data).samples
    train_s, val_s = split_by_prompt(samples, 0.34, seed=0)
    assert not {s.prompt for s in train_s} & {s.prompt for s in val_s}
    assert len({s.prompt for s in val_s}) == 2
    result = train(_cfg(data, tmp_path / "v", heldout_fraction=0.34), model=tiny_model(),
                   progress=False)
    assert {"mse", "spearman", "mse@1", "spearman@0"} <= set(result.metrics)
    assert result.metrics["n"] == 12


def test_prefix_baseline_is_exact_on_finished_texts(data):
    samples = score_samples(read_samples(data).samples, "vader")
    metrics = evaluate_value(PrefixRewardValue("vader"), samples, tiny_model().tokenizer)
    assert metrics["mse@1"] == pytest.approx(0.0) and metrics["spearman@1"] == pytest.approx(1.0)


def test_values_at_reads_the_states_at_a_fraction(data):
    samples = score_samples(read_samples(data).samples, "vader")
    tokenizer, fn = tiny_model().tokenizer, PrefixRewardValue("vader")
    assert values_at(fn, samples, tokenizer, 1.0, batch_size=5) == pytest.approx(
        [s.reward for s in samples])
    assert values_at(fn, samples, tokenizer, 0.0) == pytest.approx(
        fn.values([s.prompt_text for s in samples]))


def test_spearman_matches_scipy_with_ties():
    stats = pytest.importorskip("scipy.stats")
    rng = random.Random(1)
    x = [rng.choice([0.0, 0.5, 1.0, rng.random()]) for _ in range(50)]
    y = [v + rng.gauss(0, 0.5) if i % 3 else 0.0 for i, v in enumerate(x)]
    assert spearman(x, y) == pytest.approx(stats.spearmanr(x, y).statistic)


def test_spearman_within_ignores_the_order_of_groups():
    # Within each group x orders y perfectly, but group b sits below group a on x and above it
    # on y: the pooled correlation is negative, the within-group one is exactly 1.
    x = [10, 11, 12, 0, 1, 2]
    y = [0, 1, 2, 10, 11, 12]
    groups = ["a"] * 3 + ["b"] * 3
    assert spearman(x, y) < 0
    assert spearman_within(x, y, groups) == pytest.approx(1.0)
    # Groups of fewer than 3, or constant on one side, do not count.
    assert math.isnan(spearman_within([1, 2, 5, 5, 5], [2, 1, 1, 2, 3], ["a", "a", "b", "b", "b"]))
    assert spearman_within([3, 2, 1, 7, 8, 9], [1, 2, 3, 4, 4, 4], ["a"] * 3 + ["b"] * 3) == pytest.approx(-1.0)
    with pytest.raises(ValueError, match="equal lengths"):
        spearman_within([1, 2], [1, 2], ["a"])


def test_center_by_prompt_zeroes_each_prompts_mean_and_keeps_its_order():
    rows = [Sample("a", chat("a"), c, "stop", "m", reward=r) for c, r in (("x", 1.0), ("y", 3.0))]
    rows += [Sample("b", chat("b"), c, "stop", "m", reward=r) for c, r in (("x", 10.0), ("y", 10.0), ("z", 13.0))]
    out = center_by_prompt(rows)
    assert [s.reward for s in out] == pytest.approx([-1.0, 1.0, -1.0, -1.0, 2.0])
    assert [s.reward for s in rows] == [1.0, 3.0, 10.0, 10.0, 13.0]  # copies: the input is untouched
    with pytest.raises(DataError, match="every sample scored"):
        center_by_prompt([Sample("a", chat("a"), "x", "stop", "m")])


def test_training_on_centered_rewards_says_so(data, tmp_path):
    result = train(_cfg(data, tmp_path / "c", center_rewards=True, heldout_fraction=0.34),
                   model=tiny_model(), progress=False)
    meta = result.model.config.metadata
    assert meta["reward"].endswith("centered per prompt")
    assert meta["training"]["config"]["center_rewards"] is True
    # A resumed run with the other setting is refused: it would train toward other targets.
    with pytest.raises(ConfigError, match="center_rewards"):
        train(_cfg(data, tmp_path / "c", center_rewards=False, heldout_fraction=0.34, passes=2),
              model=tiny_model(), progress=False)


def test_bad_inputs(data, tmp_path):
    with pytest.raises(ConfigError, match="batch_size"):
        train(_cfg(data, tmp_path / "x", batch_size=5, grad_accum=2), model=tiny_model())
    with pytest.raises(ConfigError, match="residual"):
        train(_cfg(data, tmp_path / "x", residual=True, reward=None), model=tiny_model())
    with pytest.raises(DataError, match="does not exist"):
        train(_cfg(tmp_path / "missing.jsonl", tmp_path / "x"), model=tiny_model())
    with pytest.raises(DataError, match="no stored reward"):
        train(_cfg(data, tmp_path / "x", reward=None), model=tiny_model())
    for where in (tmp_path / "nothing-here", data.parent):
        with pytest.raises(CheckpointError):
            load_value_function(where)
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError):
        load_value_function(tmp_path / "broken")


# -- the CLI ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_backbone_dir(tmp_path_factory) -> Path:
    """A tiny random backbone saved as an HF model directory, loadable as --backbone."""
    model = tiny_model()
    path = tmp_path_factory.mktemp("backbone")
    model.backbone.save_pretrained(path)
    model.tokenizer.save_pretrained(path)
    return path


def _invoke(*args: str):
    from typer.testing import CliRunner

    from vas_api.cli import _register, app

    _register()
    return CliRunner().invoke(app, list(args))


def test_cli_train_then_eval(data, tiny_backbone_dir, tmp_path):
    out = tmp_path / "ck"
    result = _invoke("train", str(data), "--out", str(out), "--backbone", str(tiny_backbone_dir),
                     "--layers", "1", "--lr", "0.003", "--batch-size", "6", "--device", "cpu",
                     "--heldout-fraction", "0.34")
    assert result.exit_code == 0, result.output
    assert "validation: spearman@0.5" in result.output
    assert ValueModel.load(out).config.num_layers == 1
    report = tmp_path / "metrics.json"
    result = _invoke("eval-value", str(data), "--model", str(out), "--baseline", "vader",
                     "--json", str(report))
    assert result.exit_code == 0, result.output
    import json

    metrics = json.loads(report.read_text())
    assert set(metrics) == {str(out), "prefix:vader"}
    assert metrics["prefix:vader"]["spearman@1"] == pytest.approx(1.0)


def test_cli_eval_of_a_missing_or_corrupt_checkpoint_is_a_clear_error(data, tmp_path):
    result = _invoke("eval-value", str(data), "--model", str(tmp_path / "nope"))
    assert isinstance(result.exception, CheckpointError)
    assert "nope" in str(result.exception)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "config.json").write_text("[]")
    result = _invoke("eval-value", str(data), "--model", str(tmp_path / "bad"))
    assert isinstance(result.exception, CheckpointError)


def test_skipped_lines_are_reported(data, tmp_path):
    noisy = tmp_path / "noisy.jsonl"
    noisy.write_text(data.read_text() + "\n{broken\n")
    with pytest.warns(UserWarning, match="2 lines skipped"):
        train(_cfg(noisy, tmp_path / "n", freeze_backbone=True), model=tiny_model(),
              progress=False)
