"""examples/value_models.ipynb: it matches the .py it is built from, and it runs.

The run executes every cell with nbclient in a kernel of this interpreter (a kernelspec written
into tmp_path, so a fresh venv with no registered kernel works), against the real local server
the notebook starts itself, at VAS_NOTEBOOK_SCALE=ci, with its figures written to tmp_path.
"""

from __future__ import annotations

import importlib.util
import os
import struct
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT / "examples" / "value_models.py"
NOTEBOOK = ROOT / "examples" / "value_models.ipynb"
FIGURES = ("reward_vs_beta", "composition", "reward_vs_tokens", "shaded_tokens")
CELL_TIMEOUT_S = 600  # a hang guard for the slowest cell (training on a busy 2-core CPU)


def _builder():
    spec = importlib.util.spec_from_file_location("_py_to_notebook", ROOT / "tools" / "py_to_notebook.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_notebook_is_built_from_its_source():
    nbformat = pytest.importorskip("nbformat")
    committed = nbformat.read(NOTEBOOK, as_version=4)
    built = _builder().notebook_of(SOURCE.read_text(encoding="utf-8"))
    assert [(c.cell_type, c.source) for c in committed.cells] == [
        (c.cell_type, c.source) for c in built.cells
    ], "examples/value_models.ipynb is stale: run python tools/py_to_notebook.py examples/value_models.py"
    assert all(not c.get("outputs") for c in committed.cells if c.cell_type == "code")


def test_cells_of_splits_percent_markers():
    cells = _builder().cells_of("header\n# %% [markdown]\n# # Title\n# text\n\n# %%\nx = 1\n\n# %%\n\n")
    assert cells == [("markdown", "# Title\ntext"), ("code", "x = 1")]


def _png_size(path: Path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n", f"{path.name} is not a PNG"
    return struct.unpack(">II", head[16:24])


@pytest.mark.integration
def test_notebook_runs_against_the_local_server(tmp_path, monkeypatch):
    nbclient = pytest.importorskip("nbclient")
    nbformat = pytest.importorskip("nbformat")
    kernelspec = pytest.importorskip("ipykernel.kernelspec")
    if importlib.util.find_spec("llama_cpp") is None:
        pytest.skip("llama-cpp-python is not installed: the local server cannot start")
    prefix = tmp_path / "jupyter"
    kernelspec.install(kernel_name="vas-notebook-test", prefix=str(prefix))
    figures, work = tmp_path / "figures", tmp_path / "work"
    monkeypatch.setenv("JUPYTER_PATH", str(prefix / "share" / "jupyter"))
    # The kernel imports this checkout, whatever is installed (an editable install may point elsewhere).
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    monkeypatch.setenv("VAS_NOTEBOOK_SCALE", "ci")
    monkeypatch.setenv("VAS_NOTEBOOK_SAVE", "1")
    monkeypatch.setenv("VAS_NOTEBOOK_FIGURES", str(figures))
    monkeypatch.setenv("VAS_NOTEBOOK_WORKDIR", str(work))

    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(
        nb, kernel_name="vas-notebook-test", timeout=CELL_TIMEOUT_S,
        resources={"metadata": {"path": str(ROOT / "examples")}},
    )
    client.execute()  # raises CellExecutionError, with the cell and traceback, on any error

    errors = [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
    shown = sum("image/png" in o.get("data", {}) for c in nb.cells for o in c.get("outputs", []))
    assert shown >= len(FIGURES)  # each figure is displayed inline as well as saved
    assert (
        "<span" in "".join(str(o.get("data", {}).get("text/html", "")) for c in nb.cells
                           for o in c.get("outputs", []))
    )  # resp.vas rendered as shaded HTML
    for name in FIGURES:
        path = figures / f"{name}.png"
        assert path.is_file(), f"the notebook did not save {name}.png"
        width, height = _png_size(path)
        assert width >= 300 and height >= 100 and path.stat().st_size > 5_000, (name, width, height)
    assert not list((ROOT / "examples").glob("*.png"))  # nothing written next to the notebook
