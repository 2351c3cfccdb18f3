"""Build a Jupyter notebook from a Python file with percent-format cell markers.

    python tools/py_to_notebook.py examples/value_models.py   # writes examples/value_models.ipynb

A line ``# %%`` starts a code cell and ``# %% [markdown]`` a markdown cell whose lines drop
their leading ``# ``: the jupytext "percent" format, so the .py stays the file to edit and
review, and the .ipynb (committed without outputs) is rebuilt from it. tests/test_notebook.py
checks that the two agree.
"""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat

__all__ = ["cells_of", "notebook_of"]


def cells_of(source: str) -> list[tuple[str, str]]:
    """Split percent-format source into (kind, text) cells, kind "code" or "markdown".

    Text before the first marker is dropped (a file header); blank lines around a cell go.
    """
    cells: list[tuple[str, list[str]]] = []
    for line in source.splitlines():
        if line.startswith("# %%"):
            cells.append(("markdown" if "[markdown]" in line else "code", []))
        elif cells:
            cells[-1][1].append(line)
    out = []
    for kind, lines in cells:
        if kind == "markdown":
            lines = [ln[2:] if ln.startswith("# ") else ln.lstrip("#") for ln in lines]
        text = "\n".join(lines).strip("\n")
        if text:
            out.append((kind, text))
    return out


def notebook_of(source: str) -> nbformat.NotebookNode:
    """A version-4 notebook without outputs, with a Python 3 kernelspec."""
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    for i, (kind, text) in enumerate(cells_of(source)):
        make = nbformat.v4.new_markdown_cell if kind == "markdown" else nbformat.v4.new_code_cell
        cell = make(text)
        cell["id"] = f"cell-{i}"  # stable ids: rebuilding an unchanged file gives the same bytes
        nb.cells.append(cell)
    return nb


def main(argv: list[str]) -> int:
    if len(argv) != 1 or not argv[0].endswith(".py"):
        print(__doc__, file=sys.stderr)
        return 2
    src = Path(argv[0])
    out = src.with_suffix(".ipynb")
    nbformat.write(notebook_of(src.read_text(encoding="utf-8")), out)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
