"""Helpers the chapters use: deterministic setup and showing package source (never copying it).

Introduced in notebooks/01_config.ipynb.
"""

from __future__ import annotations

import inspect

import torch

NOTEBOOK_THREADS = 2  # the thread count the stored outputs were produced with; float sums depend on it


def setup(seed: int = 0, threads: int = NOTEBOOK_THREADS) -> torch.device:
    """Seed torch, fix threads and print precision; return the device to use (CUDA when there is one).

    Checked cells run on the CPU with explicit generators, so stored outputs are reproducible.

    Introduced in notebooks/01_config.ipynb.
    """
    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    torch.set_printoptions(precision=4, sci_mode=False)
    try:
        import pandas as pd

        pd.set_option("display.width", 100, "display.max_columns", 20, "display.precision", 4)
    except ImportError:  # pandas is only needed from the benchmarks chapter on
        pass
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def show_source(obj) -> None:
    """Display the source of a kvgpt function, class or method as Markdown, straight from the package.

    The stored output is the package's text, so nbval fails when the package changes and the
    chapter was not re-executed: the chapter can never show stale code.

    Introduced in notebooks/01_config.ipynb.
    """
    from IPython.display import Markdown, display

    display(Markdown(f"```python\n{inspect.getsource(obj)}```"))
