"""Notebook maintenance: `python scripts/nbtool.py strip notebooks/*.ipynb` removes outputs and counts.

`build(path, cells)` writes a notebook from (kind, source) pairs; the first code cell is tagged
`parameters` for papermill. Used when authoring notebooks; the committed .ipynb files are the source.
"""
from __future__ import annotations

import sys

import nbformat


def build(path: str, cells: list[tuple[str, str]]) -> None:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    first_code = True
    for kind, src in cells:
        src = src.strip("\n")
        if kind == "md":
            nb.cells.append(nbformat.v4.new_markdown_cell(src))
        else:
            cell = nbformat.v4.new_code_cell(src)
            if first_code:
                cell.metadata["tags"] = ["parameters"]
                first_code = False
            nb.cells.append(cell)
    nbformat.write(nb, path)
    strip(path)


def strip(path: str) -> None:
    nb = nbformat.read(path, as_version=4)
    for c in nb.cells:
        if c.cell_type == "code":
            c.outputs = []
            c.execution_count = None
        c.metadata.pop("execution", None)
        c.metadata.pop("papermill", None)
    nb.metadata.pop("papermill", None)
    nbformat.write(nb, path)


if __name__ == "__main__":
    if len(sys.argv) < 3 or sys.argv[1] != "strip":
        print(__doc__)
        sys.exit(1)
    for p in sys.argv[2:]:
        strip(p)
        print("stripped", p)
