"""Re-execute the chapters headless, in order, and store their outputs (what nbval checks against).

Usage: python scripts/execute_notebooks.py [notebooks/NN_name.ipynb ...]   (default: every chapter, then the
solutions notebooks notebooks/solutions_*.ipynb)
Runs each notebook with nbclient in this interpreter's kernel, from the notebooks/ folder, then strips
what breaks GitHub's renderer or varies between machines (widget state, Colab and timing metadata,
and numbers cell ids stably. language_info keeps exactly what the kernel reports (version, codemirror mode,
mimetype, lexer, ...): JupyterLab writes the kernel's language_info into the notebook when it connects, so a
stored {"name": "python"} -- or a version cut to "3.11" -- made every chapter open "dirty" (unsaved changes;
tests/test_browser.py checks it). The price: re-executing with another Python patch version changes that line.
Prints each notebook's wall time and the total.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
KERNELSPEC = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}
CELL_METADATA_DROP = ("execution", "ExecuteTime", "collapsed", "scrolled", "colab", "outputId", "id")


def clean(nb) -> None:
    for key in ("widgets", "colab", "accelerator", "gpuClass"):
        nb.metadata.pop(key, None)
    nb.metadata["kernelspec"] = dict(KERNELSPEC)
    nb.metadata.setdefault("language_info", {"name": "python"})  # as the kernel reported it (see above)
    for i, cell in enumerate(nb.cells):
        cell["id"] = f"cell-{i:03d}"
        for key in CELL_METADATA_DROP:
            cell.metadata.pop(key, None)


def execute(path: Path) -> float:
    nb = nbformat.read(path, as_version=4)
    start = time.perf_counter()
    NotebookClient(nb, kernel_name="python3", timeout=900, resources={"metadata": {"path": str(path.parent)}}).execute()
    seconds = time.perf_counter() - start
    clean(nb)
    nbformat.write(nb, path)
    return seconds


def main(argv: list[str]) -> int:
    folder = ROOT / "notebooks"
    paths = [Path(a).resolve() for a in argv] or (sorted(folder.glob("[0-9][0-9]*_*.ipynb"))
                                                  + sorted(folder.glob("solutions_*.ipynb")))
    total = 0.0
    for path in paths:
        seconds = execute(path)
        total += seconds
        print(f"{path.name}: {seconds:.1f} s", flush=True)
    print(f"total: {total:.1f} s for {len(paths)} notebooks")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
