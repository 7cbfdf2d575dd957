"""Milliseconds per decode step as a generation goes on: what chapter 05 plots.

matplotlib is imported inside the functions: the engine itself never needs it.
"""

from __future__ import annotations

import torch


def _running_median(values: list[float], window: int) -> list[float]:
    """Median over `window` neighbours: a trend line that ignores the odd slow step."""
    half = window // 2
    return [float(torch.tensor(values[max(0, i - half) : i + half + 1]).median()) for i in range(len(values))]


def plot_step_latency(series: dict, ylabel: str = "milliseconds per decode step", title: str | None = None,
                      first_step: int = 1, smooth: int = 9, log: bool = False):
    """One line per series of per-step costs (measured ms, or counted FLOPs) against the decode step.

    series: {name: [cost of step first_step, first_step + 1, ...]}. Raw values are faint dots and the
    line is a running median over `smooth` steps; smooth=1 draws the exact values (e.g. FLOP counts).
    The y axis fits the lines, so a few slow outlier steps (another process) do not squash them;
    log=True draws it logarithmic, so a line 100x below another stays readable instead of lying on zero.

    Introduced in notebooks/05_decoding.ipynb.
    """
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    top = 0.0
    for name, values in series.items():
        values = [float(v) for v in values]
        steps = list(range(first_step, first_step + len(values)))
        trend = _running_median(values, smooth) if smooth > 1 else values
        line = ax.plot(steps, trend, label=name, lw=2)[0]
        top = max([top, *trend])
        if smooth > 1:
            _ = ax.scatter(steps, values, s=6, alpha=0.25, color=line.get_color())
    ax.set(xlabel="decode step (new tokens so far)", ylabel=ylabel, title=title or "Cost of one decode step")
    if log:
        ax.set_yscale("log")
    else:
        ax.set_ylim(0, 1.3 * top if top > 0 else None)
    ax.grid(alpha=0.3, which="both" if log else "major")
    ax.legend()
    fig.tight_layout()
    return fig
