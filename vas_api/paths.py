"""Where vas-api keeps its caches (converted backbones, trained models, probed profiles)."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["cache_dir"]


def cache_dir() -> Path:
    """The root of every vas-api cache: $VAS_API_CACHE_DIR, else $XDG_CACHE_HOME/vas-api, else
    ~/.cache/vas-api. Nothing secret is ever stored there (no API keys)."""
    root = os.environ.get("VAS_API_CACHE_DIR")
    if root:
        return Path(root).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "vas-api"
