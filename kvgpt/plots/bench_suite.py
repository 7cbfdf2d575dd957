"""Figures of the benchmark tables (matplotlib, Agg), saved byte-stable: same numbers, same PNG bytes.

Introduced in notebooks/08_benchmarks.ipynb.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from .style import bare_figure, plain_log_ticks

BENCH_COLORS = {"kvgpt no cache": "#bbbbbb", "kvgpt dynamic": "#6baed6", "kvgpt static": "#08519c",
          "hf no cache": "#fdd0a2", "hf dynamic": "#fd8d3c", "hf static": "#a63603"}


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=100, metadata={"Software": None})  # no version stamp: bytes depend on the data only
    return path


def plot_decode(decode: pd.DataFrame):
    """Batch-1 decode ms/token of each engine (log scale), with the memory-bandwidth floor."""
    models = list(dict.fromkeys(decode.model))
    fig, axes = bare_figure(len(models))
    for ax, name in zip(axes, models):
        d = decode[decode.model == name]
        ax.barh(d.engine, d.decode_ms_per_token, color=[BENCH_COLORS.get(e, "gray") for e in d.engine])
        ax.axvline(d.floor_ms.iloc[0], color="k", ls="--", lw=1)  # labelled in the title: a legend would cover bars
        ax.set(xscale="log", xlabel="ms per generated token (lower is better)")
        ax.set_title(f"{name}: batch 1, {d.new_tokens.iloc[0]} new tokens\n"
                     f"dashed: bandwidth floor {d.floor_ms.iloc[0]:.2f} ms", fontsize=10)
        plain_log_ticks(ax.xaxis)
        ax.invert_yaxis()
    return fig


def plot_lines(df: pd.DataFrame, x: str, y: str, xlabel: str, ylabel: str, title: str, logy: bool = True):
    """One panel per model, one line per engine: y against x."""
    from matplotlib.ticker import FuncFormatter, NullFormatter

    models = list(dict.fromkeys(df.model))
    fig, axes = bare_figure(len(models))
    for ax, name in zip(axes, models):
        for engine, d in df[df.model == name].groupby("engine", sort=False):
            ax.plot(d[x], d[y], marker="o", label=engine, color=BENCH_COLORS.get(engine))
        ax.set(xscale="log", yscale="log" if logy else "linear", xlabel=xlabel, ylabel=ylabel, title=f"{name}: {title}")
        ax.set_xticks(sorted(set(df[df.model == name][x])))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))  # the measured x values
        ax.xaxis.set_minor_formatter(NullFormatter())
        if logy:
            plain_log_ticks(ax.yaxis)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    return fig


def plot_memory(memory: pd.DataFrame):
    """KV-cache bytes as the sequence grows: static (allocated once) vs dynamic (grows), with the formula."""
    models = list(dict.fromkeys(memory.model))
    fig, axes = bare_figure(len(models))
    for ax, name in zip(axes, models):
        for kind, d in memory[memory.model == name].groupby("kind", sort=False):
            color = BENCH_COLORS[f"kvgpt {kind}"]
            ax.plot(d.slots, d.measured_bytes / 2**10, marker="o", ms=3, color=color, label=f"{kind}: measured")
            ax.plot(d.slots, d.formula_bytes / 2**10, ls="--", color="k", lw=0.8)
        ax.set(xlabel="positions in the cache", ylabel="KiB", title=f"{name}: KV cache, B={d.batch_size.iloc[0]}")
        ax.legend(fontsize=8, title="dashed: 2·L·B·H·S·D·bytes", title_fontsize=8)
    return fig


def save_figures(results: dict, out: Path, prefix: str = "bench_") -> list[Path]:
    """Write bench_decode/new_tokens/batch/steps/memory PNGs; returns their paths."""
    figures = {
        "decode": plot_decode(results["decode"]),
        "new_tokens": plot_lines(results["new_tokens"], "new_tokens", "total_ms", "new tokens (batch 1)",
                                 "total generation time, ms", "generation time"),
        "batch": plot_lines(results["batch"], "batch_size", "decode_tokens_per_s", "batch size",
                            "decode tokens/s (all rows)", "throughput"),
        "steps": plot_lines(results["steps"], "position", "ms", "sequence length after the step",
                            "ms for that one step", "one decode step"),
        "memory": plot_memory(results["memory"]),
    }
    return [_save(fig, out / f"{prefix}{name}.png") for name, fig in figures.items()]
