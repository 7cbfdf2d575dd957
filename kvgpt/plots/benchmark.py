"""Benchmark tables as pictures: what chapter 08 plots (the data comes from kvgpt.benchmark).

matplotlib is imported inside the functions: the engine itself never needs it.
"""

from __future__ import annotations


def _engine_lines(ax, df, x: str, y: str) -> None:
    """One line per engine of a benchmark table, in kvgpt.benchmark's engine colours."""
    from matplotlib.ticker import NullLocator

    from ..benchmark.plots import COLORS

    for engine, d in df.groupby("engine", sort=False):
        _ = ax.plot(d[x], d[y], marker="o", label=engine, color=COLORS.get(engine))
    ticks = sorted(df[x].unique())
    ax.set(xscale="log", yscale="log", xticks=ticks, xticklabels=[str(t) for t in ticks])
    ax.xaxis.set_minor_locator(NullLocator())  # only the measured x values are labelled
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)


def plot_throughput(df, reference: str | None = None):
    """Decode tokens/s (all rows together) against the batch size, one line per engine, log-log.

    df: ThroughputBenchmark.run() rows (engine, batch_size, decode_tokens_per_s). The dotted line is
    perfect scaling of the `reference` engine (default: the first): its smallest batch's rate per row times B.

    Introduced in notebooks/08_benchmarks.ipynb.
    """
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.8))
    reference = df.engine.iloc[0] if reference is None else reference
    ref = df[df.engine == reference].sort_values("batch_size")
    per_row = ref.decode_tokens_per_s.iloc[0] / ref.batch_size.iloc[0]
    _ = ax.plot(ref.batch_size, per_row * ref.batch_size, ls=":", color="k", lw=1, label=f"{reference} x B (perfect scaling)")
    _engine_lines(ax, df, "batch_size", "decode_tokens_per_s")
    ax.set(xlabel="batch size B", ylabel="decode tokens/s (all rows)", title="Throughput grows with the batch")
    fig.tight_layout()
    return fig


def plot_position_latency(df):
    """Milliseconds of one decode step against the sequence length, cached vs recomputing everything.

    df: step_latency() rows (position, engine, ms).

    Introduced in notebooks/08_benchmarks.ipynb.
    """
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.8))
    _engine_lines(ax, df, "position", "ms")
    ax.set(xlabel="sequence length after the step", ylabel="ms for that one step",
           title="One decode step: cached vs no cache")
    fig.tight_layout()
    return fig


def plot_engine_latency(df, floor_ms: float | None = None):
    """Decode ms per token of each engine as bars from zero, with the memory-bandwidth floor if given.

    df: LatencyBenchmark.run() rows (engine, decode_ms_per_token).

    Introduced in notebooks/08_benchmarks.ipynb.
    """
    import matplotlib.pyplot as plt

    from ..benchmark.plots import COLORS

    fig, ax = plt.subplots(figsize=(6, 0.45 * len(df) + 1.4))
    _ = ax.barh(df.engine, df.decode_ms_per_token, color=[COLORS.get(e, "gray") for e in df.engine])
    if floor_ms is not None:
        _ = ax.axvline(floor_ms, color="k", ls="--", lw=1, label=f"bandwidth floor {floor_ms:.3f} ms")
        ax.legend(fontsize=8, loc="lower right")
    ax.set(xlim=(0, None), xlabel="ms per generated token (lower is better)", title="Decode latency, batch 1")
    ax.invert_yaxis()
    fig.tight_layout()
    return fig
