"""Value-model checkpoints: a directory with a JSON config, safetensors weights and a tokenizer.

    checkpoint/
        config.json         format, format_version, the ValueModelConfig fields (backbone,
                            num_layers, prompt_format: the model's own rendering of prompts,
                            metadata: reward description, base model id, training stats, ...)
                            and the backbone's Hugging Face config (hf_config)
        model.safetensors   every tensor of the value model (backbone.* and head.*)
        tokenizer/          the tokenizer, so a checkpoint loads offline without the GGUF

Loading never unpickles anything: a .bin/.pt/.pkl file is refused, not read (torch.load on a
file from elsewhere can run arbitrary code); weights holding NaN or infinity are refused too
(a value model with them scores every candidate NaN).

Format versions: 1 had no prompt_format (such checkpoints score the base's rendered prompt
text); 2 records it. Both load.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoTokenizer, PretrainedConfig, PreTrainedTokenizerBase
from transformers.models.auto.configuration_auto import CONFIG_MAPPING

from vas_api.errors import CheckpointError

__all__ = [
    "CONFIG_NAME",
    "FORMAT",
    "FORMAT_VERSION",
    "LoadedCheckpoint",
    "TOKENIZER_DIR",
    "WEIGHTS_NAME",
    "load_checkpoint",
    "load_state_dict_checked",
    "save_checkpoint",
]

FORMAT = "vas-api-value-model"
FORMAT_VERSION = 2
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
TOKENIZER_DIR = "tokenizer"
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")


@dataclass
class LoadedCheckpoint:
    """The validated parts of a checkpoint directory.

    Attributes:
        config: the ValueModelConfig fields as saved (backbone, num_layers, metadata, ...).
        hf_config: the backbone's Hugging Face config.
        state_dict: all tensors, on the CPU.
        tokenizer: the saved tokenizer.
        format_version: the checkpoint format version.
    """

    config: dict[str, Any]
    hf_config: PretrainedConfig
    state_dict: dict[str, torch.Tensor]
    tokenizer: PreTrainedTokenizerBase
    format_version: int


def save_checkpoint(
    directory: str | Path,
    *,
    config: dict[str, Any],
    hf_config: dict[str, Any],
    state_dict: dict[str, torch.Tensor],
    tokenizer: PreTrainedTokenizerBase,
) -> None:
    """Write a checkpoint directory (created if needed; files are replaced atomically).

    Args:
        directory: where to write.
        config: ValueModelConfig fields; `metadata` must be JSON-serialisable.
        hf_config: the backbone's `config.to_dict()`.
        state_dict: the value model's tensors.
        tokenizer: saved under tokenizer/.

    Raises:
        CheckpointError: the config is not JSON-serialisable or the directory is not writable.
    """
    d = Path(directory)
    try:
        text = json.dumps(
            {"format": FORMAT, "format_version": FORMAT_VERSION, **config, "hf_config": hf_config},
            indent=2,
            sort_keys=True,
        )
    except (TypeError, ValueError) as e:
        raise CheckpointError(
            f"The value model's config/metadata cannot be saved as JSON ({e}); keep metadata "
            "to strings, numbers, lists and dicts."
        ) from e
    # safetensors refuses tensors that share memory; private contiguous CPU copies never do.
    tensors = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in state_dict.items()}
    try:
        d.mkdir(parents=True, exist_ok=True)
        tmp = d / f".{WEIGHTS_NAME}.tmp"
        save_file(tensors, str(tmp), metadata={"format": "pt"})
        os.replace(tmp, d / WEIGHTS_NAME)
        tmp = d / f".{CONFIG_NAME}.tmp"
        tmp.write_text(text + "\n", encoding="utf-8")
        os.replace(tmp, d / CONFIG_NAME)
        tokenizer.save_pretrained(str(d / TOKENIZER_DIR))
    except OSError as e:
        raise CheckpointError(f"Could not write the checkpoint to {d}: {e}") from e


def _refuse_pickles(paths: list[Path], where: Path) -> None:
    pickles = [p.name for p in paths if p.suffix.lower() in _PICKLE_SUFFIXES]
    if pickles:
        raise CheckpointError(
            f"{where} holds pickle-format weights ({', '.join(sorted(pickles))}) and no "
            f"{WEIGHTS_NAME}. vas-api never loads pickles (they can run code); convert them: "
            "load the state dict yourself where you trust it and save it with "
            "safetensors.torch.save_file."
        )


def _read_config(d: Path) -> dict[str, Any]:
    path = d / CONFIG_NAME
    if not path.is_file():
        raise CheckpointError(
            f"{d} has no {CONFIG_NAME}: it is not a vas-api value-model checkpoint "
            "(save one with ValueModel.save)."
        )
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path} is not valid JSON ({e}); the checkpoint is corrupt.") from e
    if not isinstance(cfg, dict) or cfg.get("format") != FORMAT:
        raise CheckpointError(
            f'{path} is not a vas-api value-model config (expected "format": "{FORMAT}").'
        )
    version = cfg.get("format_version")
    if not isinstance(version, int) or not 1 <= version <= FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has format_version {version!r}; this vas-api reads 1..{FORMAT_VERSION}. "
            "Upgrade vas-api to load newer checkpoints."
        )
    hf = cfg.get("hf_config")
    if not isinstance(hf, dict) or hf.get("model_type") not in CONFIG_MAPPING:
        raise CheckpointError(
            f"{path} lacks a usable hf_config (a Hugging Face config dict with a known model_type)."
        )
    if not isinstance(cfg.get("backbone"), str):
        raise CheckpointError(f"{path} lacks the backbone name.")
    if cfg.get("prompt_format") is not None:
        from estimators.prompt_format import PromptFormat

        PromptFormat.from_json(cfg["prompt_format"], path)  # raises CheckpointError
    return cfg


def _refuse_non_finite(state_dict: dict[str, torch.Tensor], weights: Path) -> None:
    bad = [k for k, t in state_dict.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:
        raise CheckpointError(
            f"{weights} holds NaN or infinite weights in {len(bad)} tensor(s) "
            f"({', '.join(sorted(bad)[:5])}{' ...' if len(bad) > 5 else ''}): training diverged or "
            "the file is corrupt. Retrain (a lower learning rate) or use an earlier checkpoint."
        )


def load_checkpoint(directory: str | Path) -> LoadedCheckpoint:
    """Read and validate a checkpoint directory.

    Args:
        directory: a directory written by `save_checkpoint` / `ValueModel.save`.

    Returns:
        The parsed parts.

    Raises:
        CheckpointError: the directory is missing or is a file; config.json is missing,
            invalid or of another format/version; the weights are missing, pickled or not
            valid safetensors; the tokenizer is missing or unreadable.
    """
    d = Path(directory)
    if not d.exists():
        raise CheckpointError(f"No value-model checkpoint at {d}: the path does not exist.")
    if not d.is_dir():
        _refuse_pickles([d], d.parent)
        raise CheckpointError(
            f"{d} is a file; a value-model checkpoint is a directory with {CONFIG_NAME}, "
            f"{WEIGHTS_NAME} and {TOKENIZER_DIR}/ (written by ValueModel.save)."
        )
    cfg = _read_config(d)
    weights = d / WEIGHTS_NAME
    if not weights.is_file():
        _refuse_pickles(list(d.iterdir()), d)
        raise CheckpointError(f"{d} has no {WEIGHTS_NAME}: the checkpoint is incomplete.")
    try:
        state_dict = load_file(str(weights), device="cpu")
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(
            f"{weights} is not a valid safetensors file ({e}); the checkpoint is corrupt."
        ) from e
    _refuse_non_finite(state_dict, weights)
    hf = dict(cfg.pop("hf_config"))
    try:
        hf_config = CONFIG_MAPPING[hf["model_type"]].from_dict(hf)
    except Exception as e:
        raise CheckpointError(f"{d / CONFIG_NAME}: its hf_config cannot be loaded ({e}).") from e
    tok_dir = d / TOKENIZER_DIR
    if not tok_dir.is_dir():
        raise CheckpointError(
            f"{d} has no {TOKENIZER_DIR}/ directory: the checkpoint is incomplete."
        )
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(tok_dir), local_files_only=True)
    except Exception as e:
        raise CheckpointError(f"The tokenizer in {tok_dir} cannot be loaded ({e}).") from e
    version = cfg.pop("format_version")
    cfg.pop("format")
    return LoadedCheckpoint(cfg, hf_config, state_dict, tokenizer, version)


def load_state_dict_checked(
    module: nn.Module, state_dict: dict[str, torch.Tensor], directory: str | Path
) -> None:
    """Load `state_dict` into `module`, refusing any missing, extra or mis-shaped tensor.

    Raises:
        CheckpointError: names or shapes differ from what the saved config builds.
    """
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    extra = sorted(set(state_dict) - set(expected))
    shapes = [
        f"{k}: saved {tuple(state_dict[k].shape)}, model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state_dict and state_dict[k].shape != v.shape
    ]
    problems = []
    if missing:
        problems.append(f"missing tensors {missing[:5]}" + (" ..." if len(missing) > 5 else ""))
    if extra:
        problems.append(f"unexpected tensors {extra[:5]}" + (" ..." if len(extra) > 5 else ""))
    if shapes:
        problems.append("shape mismatches " + "; ".join(shapes[:5]))
    if problems:
        raise CheckpointError(
            f"The weights in {directory} do not fit its config: {', '.join(problems)}. "
            "The checkpoint is corrupt or its files come from different models."
        )
    module.load_state_dict(state_dict, strict=True)
