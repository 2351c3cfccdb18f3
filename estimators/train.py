"""TD(lambda) training of a value model on samples of the frozen base (`vas train`).

The loop, as in the VAS authors' code: for each batch of samples, compute V of every state in
one no-grad pass, turn it into fixed TD(lambda) targets (reward on the last state), then take
`epochs_per_batch` optimizer steps of 0.5 * MSE toward those targets. A sample's states are
the prefix ending the prompt and the prefix after each completion token (`estimators.states`).
With `end_state` (the default), a sample the base finished (finish_reason "stop") has one more
state, its text + EOS, which holds the reward: V(text + EOS) learns the terminal reward and the
earlier states bootstrap through it, so V(text) learns the value of going on and the model
tells "stop here" from "keep going". A sample cut at max_tokens ("length") has no end state
(its reward sits on its last token, as before).

Validation uses a held-out fraction of the training *prompts* (never of samples, so no prompt
is on both sides); the held-out prompt files of the benchmark are never seen here. Resumable:
every `save_every` batches the trainable weights, optimizer state and position are saved under
`<output_dir>/train_state/` (safetensors + JSON, no pickles); running again with the same
config continues from there.

With `freeze_backbone`, the backbone's output for each sample is computed once and kept (up to
FEATURE_CACHE_BYTES), so every later target and optimizer step runs the value head only: a
frozen deep backbone costs one forward pass over the data however many passes train the head.
"""

from __future__ import annotations

import json
import math
import random
import shutil
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from vas_api.errors import CheckpointError, ConfigError, DataError

from .baselines import PrefixRewardValue, ResidualValueModel, load_value_function
from .data import Sample, prompt_key, read_samples
from .evaluate import evaluate_value, json_safe
from .prompt_format import DEFAULT_FORMAT
from .rewards import build_reward, compute_rewards
from .states import StateSplit, split_states
from .td import last_state_rewards, td_lambda_returns, value_loss

__all__ = ["TrainConfig", "TrainResult", "RidgeStats", "train", "split_by_prompt", "center_by_prompt", "score_samples"]


@dataclass
class TrainConfig:
    """Everything one training run needs; saved with its checkpoints.

    Fields without a comment mean what their name says.
    """

    data: str  # JSONL samples written by `vas collect`
    output_dir: str  # the final checkpoint goes here; resumable state in output_dir/train_state
    reward: str | None = "vader"  # reward spec (see estimators.rewards); None: use stored rewards
    backbone: str | None = None  # HF name/path; None: SmolLM2-135M-Instruct from the GGUF
    num_layers: int | None = None  # keep the first N backbone layers; None: the model default
    residual: bool = False  # learn V = reward(prefix) + correction instead of V directly
    prompt_marker: str = "<|im_start|>assistant\n"  # residual only: fallback split for bare texts
    # The value model's own prompt rendering, saved in its checkpoint: "chatml" (canonical, so
    # the model steers any base, template or raw prompt), or "base" (the samples' prompt_text,
    # the base's own template: the model then only fits that base, as before formats existed).
    prompt_format: str = "chatml"
    # Finished samples ("stop") get an end state (text + EOS) that holds the reward; the saved
    # model then has end_state=True and scores EOS candidates as text + END_OF_TEXT.
    end_state: bool = True
    # Subtract from each reward the mean reward of its prompt's samples (train and validation
    # splits apart). Steering compares continuations of one prefix and rerank responses to one
    # prompt, so an offset per prompt changes nothing VAS does; without it most of the loss goes
    # to telling prompts apart (63% of the judge reward's variance is between prompts) and little
    # to the order within a prompt. The saved values are then relative to their prompt's mean:
    # rank them within a prompt, not across prompts. Needs several samples per prompt.
    center_rewards: bool = False
    lam: float = 0.95  # TD(lambda); 0 = TD(0), 1 = Monte Carlo
    gamma: float = 1.0
    lr: float = 5e-5
    weight_decay: float = 0.0
    warmup_steps: int = 10  # optimizer steps of linear warm-up, then constant
    max_grad_norm: float = 1.0
    batch_size: int = 8  # samples per batch; TD targets are computed once per batch
    grad_accum: int = 1  # split each batch into this many micro-batches (memory)
    epochs_per_batch: int = 4  # optimizer steps on each batch's fixed targets
    passes: int = 1  # passes over the training samples
    max_length: int = 256  # tokens; longer texts lose prompt tokens from the left
    freeze_backbone: bool = False  # train the value head only (backbone run once per sample)
    # With freeze_backbone: fit the head in closed form instead of by TD steps, a ridge regression
    # of every state's Monte Carlo return (TD(lambda=1)) on the frozen features, with this penalty
    # per state on the weights. One pass over the data and no learning rate to pick.
    ridge: float | None = None
    lora_r: int = 0  # > 0: train LoRA adapters of this rank (merged before saving) + the head
    lora_alpha: int = 16
    lora_targets: str = "q_proj,k_proj,v_proj,o_proj"
    heldout_fraction: float = 0.1  # fraction of prompts kept out for validation
    seed: int = 0
    # batches between validations besides the end of each pass; -1: only at the end of training
    eval_every: int = 0
    save_every: int = 50  # batches between resumable checkpoints
    device: str | None = None  # None: cuda when available, else cpu
    num_threads: int | None = None  # torch CPU threads; 1 is much faster on a busy small CPU
    base_model: str | None = None  # recorded in metadata; None: the samples' `model` field

    def check(self) -> None:
        """Raise ConfigError for settings that cannot work."""
        problems = []
        if not (0 <= self.lam <= 1 and 0 <= self.gamma <= 1):
            problems.append("lam and gamma must lie in [0, 1]")
        if self.batch_size < 1 or self.grad_accum < 1 or self.batch_size % self.grad_accum:
            problems.append("batch_size must be a positive multiple of grad_accum")
        if self.epochs_per_batch < 1 or self.passes < 1:
            problems.append("epochs_per_batch and passes must be at least 1")
        if not (0 <= self.heldout_fraction < 1):
            problems.append("heldout_fraction must lie in [0, 1)")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            problems.append("lr must be a positive number")
        if self.freeze_backbone and self.lora_r > 0:
            problems.append("choose freeze_backbone or lora_r > 0, not both")
        if self.residual and not self.reward:
            problems.append("a residual model needs a reward spec (its baseline)")
        if self.ridge is not None and not (self.freeze_backbone and self.ridge >= 0):
            problems.append("ridge needs freeze_backbone=True and a penalty >= 0")
        if self.eval_every < -1:
            problems.append("eval_every must be -1 (only at the end), 0 (every pass) or positive")
        if self.max_length < 2:
            problems.append("max_length must be at least 2")
        if self.prompt_format not in ("chatml", "base"):
            problems.append('prompt_format must be "chatml" or "base"')
        if problems:
            raise ConfigError("bad training config: " + "; ".join(problems))


# What a field meant in a saved run from before it existed.
_LEGACY_DEFAULTS = {"prompt_format": "base", "end_state": False, "center_rewards": False}

# Fields that may change when a run is resumed (they do not change what was already done).
_RESUMABLE_CHANGES = {
    "passes", "eval_every", "save_every", "device", "num_threads", "output_dir", "data",
}


@dataclass
class TrainResult:
    """What `train` returns.

    Attributes:
        model: the trained value function (ValueModel, or ResidualValueModel).
        metrics: validation metrics of the final model (empty without a validation split).
        history: one dict per logged batch / validation.
        seconds: wall time of this call (a resumed run counts only its own part).
        batches: batches done in total (including resumed ones).
    """

    model: Any
    metrics: dict[str, float]
    history: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    batches: int = 0


@dataclass
class _Item:
    """A training sample, tokenized, with its states located."""

    split: StateSplit
    reward: float
    base: list[float] | None  # residual: reward of each state's prefix


def score_samples(samples: list[Sample], spec: str | None, *, chunk: int = 512) -> list[Sample]:
    """Set each sample's `reward` from a reward spec (or check stored rewards when None).

    Raises:
        DataError: spec is None and some samples have no stored reward.
        RewardError / ConfigError: the reward fails or the spec is bad.
    """
    if spec is None:
        missing = sum(s.reward is None for s in samples)
        if missing:
            raise DataError(
                f"{missing} of {len(samples)} samples have no stored reward; pass a reward spec"
            )
        return samples
    reward = build_reward(spec)
    for i in range(0, len(samples), chunk):
        part = samples[i : i + chunk]
        scores = compute_rewards(reward, [s.prompt_text for s in part], [s.completion for s in part])
        for s, r in zip(part, scores, strict=True):
            s.reward = r
    return samples


def center_by_prompt(samples: list[Sample]) -> list[Sample]:
    """Copies of `samples` with each reward minus the mean reward of its prompt's samples.

    Raises:
        DataError: a sample has no reward.
    """
    if any(s.reward is None for s in samples):
        raise DataError("centering rewards needs every sample scored")
    groups: dict[str, list[float]] = {}
    for s in samples:
        groups.setdefault(prompt_key(s.prompt), []).append(float(s.reward))  # type: ignore[arg-type]
    means = {k: sum(v) / len(v) for k, v in groups.items()}
    return [replace(s, reward=float(s.reward) - means[prompt_key(s.prompt)]) for s in samples]  # type: ignore[arg-type]


def split_by_prompt(
    samples: list[Sample], fraction: float, seed: int
) -> tuple[list[Sample], list[Sample]]:
    """Split samples into (train, validation) by prompt, with a seeded shuffle of the prompts.

    With fraction > 0 at least one prompt (and at most all but one) goes to validation.
    """
    keys = sorted({prompt_key(s.prompt) for s in samples})
    if fraction <= 0 or len(keys) < 2:
        return list(samples), []
    random.Random(seed).shuffle(keys)
    n_val = min(len(keys) - 1, max(1, round(fraction * len(keys))))
    val_keys = set(keys[:n_val])
    train = [s for s in samples if prompt_key(s.prompt) not in val_keys]
    val = [s for s in samples if prompt_key(s.prompt) in val_keys]
    return train, val


def prompt_text_of(model: Any, sample: Sample) -> str:
    """The prompt text a value model trains on for `sample`: its own rendering of the sample's
    prompt, or the base's `prompt_text` for a model without a prompt format."""
    render = getattr(model, "render_prompt", None)
    own = render(sample.prompt) if render is not None else None
    return sample.prompt_text if own is None else own


def _end_id(model: Any, cfg: TrainConfig) -> int | None:
    """The EOS id that ends a finished sample's end state (None: no end states)."""
    if not cfg.end_state:
        return None
    eos = getattr(model.tokenizer, "eos_token_id", None)
    if eos is None:
        raise ConfigError("end_state needs a tokenizer with an eos token; set end_state=False")
    return int(eos)


def _encode(
    samples: list[Sample], model: Any, cfg: TrainConfig, baseline: PrefixRewardValue | None
) -> tuple[list[_Item], int]:
    items, too_long = [], 0
    eos = _end_id(model, cfg)
    for s in samples:
        prompt_text = prompt_text_of(model, s)
        end_id = eos if s.finish_reason == "stop" else None
        split = split_states(model.tokenizer, prompt_text, s.completion, max_length=cfg.max_length,
                             end_id=end_id)
        if split is None:
            too_long += 1
            continue
        base = None
        if baseline is not None:
            # The baseline sees exactly the text of each state, as it would at generation time,
            # and is told where the prompt ends. The end state's base is the prefix reward of
            # the whole text, the same as its last token's (one reward call, not two).
            ends = split.ends[:-1] if split.end_state else split.ends
            texts = [prompt_text + s.completion[:e] for e in ends]
            base = baseline.values(texts, prompt_lens=[len(prompt_text)] * len(texts))
            if split.end_state:
                base = [*base, base[-1]]
        items.append(_Item(split, float(s.reward), base))  # type: ignore[arg-type]
    return items, too_long


# Most bytes of frozen-backbone features kept across passes (fp32, tokens x hidden size);
# beyond it features are computed once per batch (for its targets and all its epochs).
FEATURE_CACHE_BYTES = 2 << 30


class _FrozenFeatures:
    """The frozen backbone's last hidden state of each training item, computed once.

    `_values` then runs only the value head on them: identical values to the full forward,
    since a frozen backbone's output never changes during training.
    """

    def __init__(self, model: Any, items: list[_Item], *, keep: bool = True) -> None:
        """keep=False: never store (one pass over the data needs each feature once)."""
        self.backbone, self.head = model.backbone, model.head
        hidden = int(self.head.in_features)
        size = sum(len(it.split.input_ids) for it in items) * hidden * 4
        self.keep = keep and size <= FEATURE_CACHE_BYTES
        self.store: dict[int, torch.Tensor] = {}

    @torch.no_grad()
    def batch(self, indices: list[int], part: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, T, hidden) features of the items `indices`, laid out as `part` (right padding)."""
        lengths = part["attention_mask"].sum(dim=1).tolist()
        missing = [b for b, i in enumerate(indices) if i not in self.store]
        fresh: dict[int, torch.Tensor] = {}
        if missing:
            out = self.backbone(input_ids=part["input_ids"][missing],
                                attention_mask=part["attention_mask"][missing], use_cache=False)
            for row, b in enumerate(missing):
                fresh[indices[b]] = out.last_hidden_state[row, : int(lengths[b])].float()
            if self.keep:
                self.store.update(fresh)
        B, T = part["input_ids"].shape
        feats = torch.zeros((B, T, self.head.in_features), device=part["input_ids"].device)
        for b, i in enumerate(indices):
            f = fresh[i] if i in fresh else self.store[i]
            feats[b, : f.shape[0]] = f
        return feats


class RidgeStats:
    """Sufficient statistics of a ridge regression y ~ X w + b, added batch by batch (float64),
    so the memory is one batch's rows whatever the data size; `solve` for any penalty."""

    def __init__(self, dim: int, device: torch.device | str = "cpu") -> None:
        self.xtx = torch.zeros((dim, dim), dtype=torch.float64, device=device)
        self.xty = torch.zeros(dim, dtype=torch.float64, device=device)
        self.sx = torch.zeros(dim, dtype=torch.float64, device=device)
        self.sy, self.syy, self.n = 0.0, 0.0, 0

    def add(self, X: torch.Tensor, y: torch.Tensor) -> None:
        """Rows X (n, dim) with targets y (n,)."""
        X, y = X.double(), y.double()
        self.xtx += X.T @ X
        self.xty += X.T @ y
        self.sx += X.sum(0)
        self.sy, self.syy, self.n = self.sy + float(y.sum()), self.syy + float((y * y).sum()), self.n + len(y)

    def solve(self, penalty: float) -> tuple[torch.Tensor, float, float]:
        """(w, b, training MSE) minimising mean (y - Xw - b)^2 + penalty * |w|^2 (b unpenalised).

        Raises:
            ConfigError: the system is singular (penalty 0 with no more rows than columns, ...).
        """
        n, dim = self.n, self.xtx.shape[0]
        singular = ConfigError(f"the ridge system is singular ({n} states, {dim} features, penalty "
                               f"{penalty:g}); use a penalty > 0, e.g. ridge=0.1")
        if n == 0 or (penalty == 0 and n <= dim):
            raise singular
        mx, my = self.sx / n, self.sy / n
        cov = self.xtx - n * torch.outer(mx, mx)
        eye = torch.eye(dim, dtype=torch.float64, device=self.xtx.device)
        try:
            w = torch.linalg.solve(cov + penalty * n * eye, self.xty - n * mx * my)
        except torch.linalg.LinAlgError:
            raise singular from None
        if not bool(torch.isfinite(w).all()):
            raise singular
        b = my - float(mx @ w)
        # mean of (y - Xw - b)^2, expanded in the statistics
        mse = (self.syy - 2 * float(w @ self.xty) - 2 * b * self.sy + float(w @ self.xtx @ w)
               + 2 * b * float(w @ self.sx) + n * b * b) / n
        return w, b, mse


@torch.no_grad()
def _fit_ridge(model: Any, items: list[_Item], frozen: _FrozenFeatures, cfg: TrainConfig,
               pad_id: int, device: torch.device) -> dict[str, Any]:
    """Set the value head to the ridge regression of each state's Monte Carlo return (minus the
    residual baseline, if any) on the frozen features."""
    stats = RidgeStats(int(model.head.in_features), device)
    for start in range(0, len(items), cfg.batch_size):
        idx = list(range(start, min(start + cfg.batch_size, len(items))))
        part = _collate([items[i] for i in idx], pad_id, device)
        returns = td_lambda_returns(part["rewards"], torch.zeros_like(part["base"]), part["states"],
                                    cfg.gamma, 1.0)
        mask = part["states"]
        stats.add(frozen.batch(idx, part)[mask], (returns - part["base"])[mask])
    w, b, mse = stats.solve(float(cfg.ridge))
    model.head.weight.copy_(w.to(model.head.weight.dtype).view_as(model.head.weight))
    model.head.bias.fill_(b)
    return {"ridge": cfg.ridge, "states": stats.n, "train_mse": mse}


def _collate(items: list[_Item], pad_id: int, device: torch.device) -> dict[str, torch.Tensor]:
    T = max(len(it.split.input_ids) for it in items)
    B = len(items)
    input_ids = torch.full((B, T), pad_id, dtype=torch.long)
    attention = torch.zeros((B, T), dtype=torch.long)
    states = torch.zeros((B, T), dtype=torch.bool)
    base = torch.zeros((B, T), dtype=torch.float32)
    for b, it in enumerate(items):
        n, p = len(it.split.input_ids), it.split.prompt_state
        input_ids[b, :n] = torch.tensor(it.split.input_ids)
        attention[b, :n] = 1
        states[b, p : p + it.split.num_states] = True
        if it.base is not None:
            base[b, p : p + it.split.num_states] = torch.tensor(it.base)
    rewards = torch.tensor([it.reward for it in items], dtype=torch.float32)
    out = {"input_ids": input_ids, "attention_mask": attention, "states": states,
           "base": base, "rewards": last_state_rewards(rewards, states)}
    return {k: v.to(device) for k, v in out.items()}


def _values(model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    if "features" in batch:  # a frozen backbone's stored output: only the head runs
        v = model.head(batch["features"].to(model.head.weight.dtype)).squeeze(-1).float()
    else:
        v = model(batch["input_ids"], batch["attention_mask"]).float()  # (B, T)
    return v + batch["base"]  # base is 0 unless residual


def _get_lr(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up over `warmup_steps` optimizer steps, then constant."""
    if cfg.warmup_steps > 0 and step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    return cfg.lr


def _build_model(cfg: TrainConfig, model: Any | None) -> Any:
    if model is None:
        from .value_model import ValueModel

        kwargs: dict[str, Any] = {"device": cfg.device}
        if cfg.num_layers is not None:
            kwargs["num_layers"] = cfg.num_layers
        model = ValueModel.from_backbone(cfg.backbone, **kwargs)
    elif cfg.device is not None:
        model.to(cfg.device)
    if hasattr(model, "config") and hasattr(model.config, "prompt_format"):
        model.config.prompt_format = DEFAULT_FORMAT.to_json() if cfg.prompt_format == "chatml" else None
    if hasattr(model, "config") and hasattr(model.config, "end_state"):
        _end_id(model, cfg)  # refuse end states for a tokenizer without EOS before any work
        model.config.end_state = cfg.end_state
    if cfg.freeze_backbone:
        for p in _backbone(model).parameters():
            p.requires_grad_(False)
    elif cfg.lora_r > 0:
        _add_lora(model, cfg)
    return model


def _backbone(model: Any) -> torch.nn.Module:
    backbone = getattr(model, "backbone", None)
    if not isinstance(backbone, torch.nn.Module):
        raise ConfigError("this value model exposes no `backbone` module to freeze or adapt")
    return backbone


def _add_lora(model: Any, cfg: TrainConfig) -> None:
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError as exc:
        raise ConfigError("lora_r > 0 needs peft: pip install 'vas-api[lora]'") from exc
    targets = [t.strip() for t in cfg.lora_targets.split(",") if t.strip()]
    lora = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=0.0,
                      target_modules=targets)
    try:
        model.backbone = get_peft_model(_backbone(model), lora)
    except ValueError as exc:  # peft: target modules not found
        raise ConfigError(f"cannot add LoRA to this backbone: {exc}") from exc


def _merge_lora(model: Any) -> None:
    backbone = getattr(model, "backbone", None)
    if hasattr(backbone, "merge_and_unload"):
        model.backbone = backbone.merge_and_unload()


# -- resumable state ------------------------------------------------------------------------------


def _trainable(model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def _save_state(
    directory: Path, model: Any, optimizer: torch.optim.Optimizer, info: dict[str, Any]
) -> None:
    """Write the resumable state atomically (a crash mid-write keeps the previous one)."""
    tmp = directory.with_name(directory.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    weights = {n: p.detach().contiguous().cpu() for n, p in _trainable(model).items()}
    save_file(weights, str(tmp / "trainable.safetensors"))
    opt = optimizer.state_dict()
    tensors = {}
    for idx, state in opt["state"].items():
        for key, value in state.items():
            t = value if torch.is_tensor(value) else torch.tensor(value)
            tensors[f"{idx}.{key}"] = t.detach().contiguous().cpu()
    save_file(tensors, str(tmp / "optimizer.safetensors"))
    (tmp / "state.json").write_text(
        json.dumps({**info, "param_groups": opt["param_groups"]}, indent=1)
    )
    old = directory.with_name(directory.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if directory.exists():
        directory.rename(old)
    tmp.rename(directory)
    shutil.rmtree(old, ignore_errors=True)


def _load_state(
    directory: Path, model: Any, optimizer: torch.optim.Optimizer, cfg: TrainConfig
) -> dict[str, Any]:
    try:
        info = json.loads((directory / "state.json").read_text())
        weights = load_file(str(directory / "trainable.safetensors"))
        opt_tensors = load_file(str(directory / "optimizer.safetensors"))
    except (OSError, ValueError, SafetensorError) as exc:  # JSONDecodeError is a ValueError
        raise CheckpointError(
            f"cannot resume from {directory}: {exc}; delete it or pass resume=False"
        ) from exc
    saved = info.get("config", {})
    changed = [
        f.name for f in fields(TrainConfig)
        if f.name not in _RESUMABLE_CHANGES
        and saved.get(f.name, _LEGACY_DEFAULTS.get(f.name)) != getattr(cfg, f.name)
    ]
    if changed:
        raise ConfigError(
            f"{directory} holds a run with different settings ({', '.join(changed)}); use "
            "another output dir, or resume=False (--no-resume) to start over"
        )
    params = _trainable(model)
    if set(weights) != set(params):
        raise CheckpointError(f"{directory} does not match this model's trainable parameters")
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(weights[name].to(p.device, p.dtype))
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, t in opt_tensors.items():
        idx, _, name = key.partition(".")
        state.setdefault(int(idx), {})[name] = t
    optimizer.load_state_dict({"state": state, "param_groups": info["param_groups"]})
    return info


# -- the loop -------------------------------------------------------------------------------------


def train(
    cfg: TrainConfig, *, model: Any | None = None, resume: bool = True, progress: bool = True
) -> TrainResult:
    """Train a value model with TD(lambda) and save it to `cfg.output_dir`.

    Args:
        cfg: the run's settings.
        model: a ValueModel to train (tests pass a tiny one); None builds it from cfg.
        resume: continue from `output_dir/train_state` when it exists.
        progress: show a tqdm progress bar.

    Returns:
        A TrainResult with the trained model (already saved) and its validation metrics.

    Raises:
        ConfigError: bad settings, or a resumable state from different settings.
        DataError: unreadable data, or no trainable sample.
        RewardError: the reward failed on a sample.
        CheckpointError: a corrupt resumable state.
    """
    cfg.check()
    started = time.perf_counter()
    torch.manual_seed(cfg.seed)
    old_threads = torch.get_num_threads()
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    try:
        return _train(cfg, model, resume, progress, started)
    finally:
        torch.set_num_threads(old_threads)


def _train(cfg: TrainConfig, model: Any, resume: bool, progress: bool, started: float
           ) -> TrainResult:
    read = read_samples(cfg.data)
    if read.skipped:
        warnings.warn(f"{cfg.data}: {read.summary()}", stacklevel=2)
    samples = score_samples(read.samples, cfg.reward)
    train_samples, val_samples = split_by_prompt(samples, cfg.heldout_fraction, cfg.seed)
    if not train_samples:
        raise DataError(f"no training samples in {cfg.data}")
    if cfg.center_rewards:
        train_samples, val_samples = center_by_prompt(train_samples), center_by_prompt(val_samples)

    model = _build_model(cfg, model)
    device = next(model.parameters()).device
    tokenizer = model.tokenizer
    baseline = PrefixRewardValue(cfg.reward, cfg.prompt_marker) if cfg.residual else None
    items, too_long = _encode(train_samples, model, cfg, baseline)
    if not items:
        raise DataError(f"no sample fits in max_length={cfg.max_length} tokens")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    params = list(_trainable(model).values())
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    out = Path(cfg.output_dir)
    state_dir = out / "train_state"
    done_batches, history, prior_seconds = 0, [], 0.0
    if resume and (state_dir / "state.json").exists():
        info = _load_state(state_dir, model, optimizer, cfg)
        done_batches, history = int(info["batches"]), list(info.get("history", []))
        prior_seconds = float(info.get("seconds", 0.0))

    batches_per_pass = math.ceil(len(items) / cfg.batch_size)
    total = batches_per_pass * cfg.passes
    if done_batches >= total:
        finished = _finished_checkpoint(out, device)
        if finished is not None:  # nothing to do: neither evaluate nor write the checkpoint again
            val = finished.config.metadata["training"].get("val") or {}
            metrics = {k: math.nan if v is None else v for k, v in val.items()}
            return TrainResult(finished, metrics, history, time.perf_counter() - started,
                               done_batches)
    micro = cfg.batch_size // cfg.grad_accum
    frozen = (_FrozenFeatures(model, items, keep=cfg.ridge is None) if cfg.freeze_backbone
              and isinstance(getattr(model, "head", None), torch.nn.Linear) else None)
    if cfg.ridge is not None:
        if frozen is None:
            raise ConfigError("ridge needs a value model with a linear `head` on a `backbone`")
        history.append(_fit_ridge(model, items, frozen, cfg, pad_id, device))
        total = done_batches  # the head is fitted: no TD batches to run
    value_fn = ResidualValueModel(model, baseline) if baseline is not None else model
    bar = _progress(total, done_batches, progress and total > done_batches)
    model.eval()  # dropout off, as in the authors' code; gradients still flow
    metrics: dict[str, float] = {}
    batch_index = done_batches

    def save() -> None:
        """The resumable state after `batch_index` finished batches."""
        _save_state(state_dir, model, optimizer,
                    {"batches": batch_index, "config": asdict(cfg), "history": history,
                     "seconds": prior_seconds + time.perf_counter() - started})

    try:
        while batch_index < total:
            pass_no, in_pass = divmod(batch_index, batches_per_pass)
            order = list(range(len(items)))
            random.Random(cfg.seed * 1000 + pass_no).shuffle(order)
            chunk = order[in_pass * cfg.batch_size : (in_pass + 1) * cfg.batch_size]
            parts = []
            for j in range(0, len(chunk), micro):
                part = _collate([items[i] for i in chunk[j : j + micro]], pad_id, device)
                if frozen is not None:
                    part["features"] = frozen.batch(chunk[j : j + micro], part)
                parts.append(part)
            with torch.no_grad():
                for part in parts:
                    part["returns"] = td_lambda_returns(
                        part["rewards"], _values(model, part), part["states"], cfg.gamma, cfg.lam
                    )
            losses = []
            for epoch in range(cfg.epochs_per_batch):
                step = batch_index * cfg.epochs_per_batch + epoch
                for group in optimizer.param_groups:
                    group["lr"] = _get_lr(step, cfg)
                total_loss = 0.0
                for part in parts:
                    # Weight micro-batches by their share of states so the sum is the batch mean.
                    share = part["states"].sum() / sum(p["states"].sum() for p in parts)
                    loss = value_loss(_values(model, part), part["returns"], part["states"])
                    (loss * share).backward()
                    total_loss += float(loss.detach()) * float(share)
                torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                losses.append(total_loss)
            batch_index += 1
            history.append({"batch": batch_index, "loss_first_epoch": losses[0],
                            "loss_last_epoch": losses[-1]})
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{losses[0]:.4f}")
            end_of_pass = batch_index % batches_per_pass == 0
            if val_samples and (batch_index == total
                                or (end_of_pass and cfg.eval_every >= 0)
                                or (cfg.eval_every > 0 and batch_index % cfg.eval_every == 0)):
                metrics = evaluate_value(value_fn, val_samples, tokenizer)
                history.append({"batch": batch_index, "val": metrics})
                if bar is not None:
                    bar.write(f"batch {batch_index}: val spearman@0.5 {metrics['spearman']:.3f}, "
                              f"mse@0.5 {metrics['mse']:.4f}")
            if batch_index % max(1, cfg.save_every) == 0 or batch_index == total:
                save()
    except KeyboardInterrupt:
        # Keep what was done: the next run resumes at the last finished batch. A batch cut
        # off halfway is redone from weights that already took part of its epochs.
        if batch_index > done_batches:
            save()
            print(f"\ninterrupted: saved {batch_index}/{total} batches to {state_dir}; "
                  "run the same command again to resume", file=sys.stderr)
        raise
    finally:
        if bar is not None:
            bar.close()
    if val_samples and not metrics:
        metrics = evaluate_value(value_fn, val_samples, tokenizer)
    seconds = time.perf_counter() - started

    _merge_lora(model)
    base_models = sorted({s.model for s in samples if s.model})
    model.config.metadata.update({
        "reward": (cfg.reward if cfg.reward is not None else "stored rewards")
        + (", centered per prompt" if cfg.center_rewards else ""),
        "base_model": cfg.base_model or ", ".join(base_models),
        "training": {
            "algorithm": f"TD(lambda={cfg.lam}), gamma={cfg.gamma}",
            "config": asdict(cfg),
            "batches": batch_index,
            "optimizer_steps": batch_index * cfg.epochs_per_batch,
            "train_samples": len(items),
            "train_prompts": len({prompt_key(s.prompt) for s in train_samples}),
            "val_samples": len(val_samples),
            "val_prompts": len({prompt_key(s.prompt) for s in val_samples}),
            "skipped_lines": len(read.skipped),
            "too_long": too_long,
            "seconds_this_run": round(seconds, 1),
            "seconds_total": round(prior_seconds + seconds, 1),  # across resumed runs
            "final_loss": history[-1].get("loss_first_epoch") if history else None,
            "val": json_safe(metrics),
        },
    })
    out.mkdir(parents=True, exist_ok=True)
    value_fn = ResidualValueModel(model, baseline) if baseline is not None else model
    value_fn.save(out)
    return TrainResult(value_fn, metrics, history, seconds, batch_index)


def _finished_checkpoint(out: Path, device: torch.device) -> Any:
    """The final checkpoint a finished run already wrote to `out`, or None when it is missing or
    unreadable (then the run writes it again)."""
    if not (out / "config.json").exists():
        return None
    try:
        return load_value_function(out, device=device)
    except CheckpointError:
        return None


def _progress(total: int, initial: int, enabled: bool):  # -> tqdm | None
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, unit="batch", desc="train", dynamic_ncols=True)


def config_from_dict(values: dict[str, Any]) -> TrainConfig:
    """A TrainConfig from a dict (e.g. a JSON file), refusing unknown keys."""
    known = {f.name for f in fields(TrainConfig)}
    unknown = set(values) - known
    if unknown:
        raise ConfigError(f"unknown training setting(s): {', '.join(sorted(unknown))}")
    return TrainConfig(**values)
