"""Layout rules every kvgpt figure follows, so what a reader sees is readable in the browser and in a PNG.

- A legend goes under the axes (`legend_below`), never on top of the data.
- A log axis is labelled with plain numbers at 1, 2 and 5 per decade (`plain_log_ticks`), never "6x10^2".
tests/test_plots.py checks every chapter figure for legends over data, text cut off at the edge and
overlapping titles. Introduced in notebooks/11_continuous_batching.ipynb.
"""

from __future__ import annotations


def plain_log_ticks(axis) -> None:
    """Log scale labelled with plain numbers at 1, 2 and 5 per decade (0.5, 1, 2, 5, 10, 20, 50, ...).

    Matplotlib's default labels only powers of ten (and then "6x10^0"-style minor labels): an axis
    spanning less than a decade, such as 15 to 85 ms, would show no number at all.
    Introduced in notebooks/08_benchmarks.ipynb.
    """
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    axis.set_minor_formatter(NullFormatter())


def legend_below(fig, handles, labels, ncol: int | None = None, fontsize: int = 8, note: str = "") -> None:
    """One legend for the whole figure, centred under the axes (it can never cover data), then tight_layout
    leaving room for it and for an optional one-line `note` (the machine a measurement ran on) under it.

    Introduced in notebooks/11_continuous_batching.ipynb.
    """
    ncol = ncol or len(labels)
    rows = -(-len(labels) // ncol)
    line = fontsize * 1.7 / 72  # inches per legend row
    bottom = (0.08 + rows * line + (line if note else 0)) / fig.get_figheight()
    if note:
        fig.text(0.01, 0.012, note, fontsize=fontsize - 1, color="#444444")
    fig.legend(handles, labels, loc="lower center", bbox_to_anchor=(0.5, (line if note else 0) / fig.get_figheight()),
               ncol=ncol, fontsize=fontsize, frameon=False)
    fig.tight_layout(rect=(0, bottom, 1, 1))


def bare_figure(ncols: int, width: float = 5.5, height: float = 3.8):
    """A matplotlib Figure of `ncols` axes side by side -> (fig, [axes]). A bare Figure renders with Agg on savefig
    and never touches pyplot's backend; a notebook shows it as a PNG (kvgpt.notebook.setup turns inline on).
    Introduced in notebooks/08_benchmarks.ipynb."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width * ncols, height))
    return fig, list(fig.subplots(1, ncols, squeeze=False)[0])
