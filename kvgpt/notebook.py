"""Helpers the chapters use: deterministic setup and showing package source (never copying it).

Introduced in notebooks/01_config.ipynb.
"""

from __future__ import annotations

import inspect

import torch

from .validation import fail_type

NOTEBOOK_THREADS = 2  # the thread count the stored outputs were produced with; float sums depend on it


def setup(seed: int = 0, threads: int = NOTEBOOK_THREADS) -> torch.device:
    """Seed torch, fix threads and print precision; return the device to use (CUDA when there is one).

    Checked cells run on the CPU with explicit generators, so stored outputs are reproducible. In a Jupyter
    kernel it also turns on inline figures (see `inline_figures`).

    Introduced in notebooks/01_config.ipynb.
    """
    inline_figures()
    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    torch.set_printoptions(precision=4, sci_mode=False)
    try:
        import pandas as pd

        pd.set_option("display.width", 100, "display.max_columns", 20, "display.precision", 4)
    except ImportError:  # pandas is only needed from the benchmarks chapter on
        pass
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def inline_figures() -> bool:
    """In a Jupyter kernel, run `%matplotlib inline`: every matplotlib figure a cell shows is stored as a PNG.

    Without it, a cell that returns a bare `matplotlib.figure.Figure` (one pyplot never saw, as the serving
    and benchmark plots build to stay off pyplot's global state) stores only the text "<Figure size ...>":
    no PNG formatter is registered until pyplot's inline backend is first activated. -> True if activated.

    Introduced in notebooks/01_config.ipynb.
    """
    try:
        from IPython import get_ipython
    except ImportError:  # plain Python: nothing to display into
        return False
    shell = get_ipython()
    if shell is None or getattr(shell, "kernel", None) is None:  # a script, or a terminal IPython
        return False
    shell.run_line_magic("matplotlib", "inline")
    return True


def show_source(obj) -> None:
    """Display the source of a kvgpt function, class or method as Markdown, straight from the package.

    The stored output is the package's text, so nbval fails when the package changes and the
    chapter was not re-executed: the chapter can never show stale code.

    Introduced in notebooks/01_config.ipynb.
    """
    from IPython.display import Markdown, display

    display(Markdown(f"```python\n{inspect.getsource(obj)}```"))


def as_table(df, digits: int | None = None, missing: str = "—"):
    """A DataFrame ready to display as a cell's last line: Jupyter renders it as an HTML table (a wide
    print(df.to_string()) wraps mid-word in a notebook column), floats rounded to `digits`, and NaN, which in
    these tables means "not applicable" or "not measured", shown as `missing`.

    Introduced in notebooks/12_smaller_caches.ipynb.
    """
    import pandas as pd

    if not isinstance(df, (pd.DataFrame, pd.Series)):
        fail_type("df", df, "a pandas DataFrame or Series")
    out = df.to_frame() if isinstance(df, pd.Series) else df.copy()
    if digits is not None:
        out = out.round(digits)
    return out.astype(object).where(out.notna(), missing)
