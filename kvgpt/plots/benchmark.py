"""Benchmark tables as pictures: what chapter 08 plots (the data comes from kvgpt.benchmark).

matplotlib is imported inside the functions: the engine itself never needs it.
"""

from __future__ import annotations

from .style import plain_log_ticks


def _engine_lines(ax, df, x: str, y: str) -> None:
    """One line per engine of a benchmark table, in kvgpt.benchmark's engine colours."""
    from matplotlib.ticker import NullLocator

    from .bench_suite import BENCH_COLORS

    for engine, d in df.groupby("engine", sort=False):
        _ = ax.plot(d[x], d[y], marker="o", label=engine, color=BENCH_COLORS.get(engine))

    ticks = sorted(df[x].unique())
    ax.set(xscale="log", yscale="log", xticks=ticks, xticklabels=[str(t) for t in ticks])
    ax.xaxis.set_minor_locator(NullLocator())  # only the measured x values are labelled
    plain_log_ticks(ax.yaxis)  # 0.5, 1, 2, 5 ... instead of "6x10^0"
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

    from .bench_suite import BENCH_COLORS

    fig, ax = plt.subplots(figsize=(6, 0.45 * len(df) + 1.4))
    _ = ax.barh(df.engine, df.decode_ms_per_token, color=[BENCH_COLORS.get(e, "gray") for e in df.engine])
    if floor_ms is not None:
        _ = ax.axvline(floor_ms, color="k", ls="--", lw=1, label=f"bandwidth floor {floor_ms:.3f} ms")
        ax.legend(fontsize=8, loc="lower right")
    ax.set(xlim=(0, None), xlabel="ms per generated token (lower is better)", title="Decode latency, batch 1")
    ax.invert_yaxis()
    fig.tight_layout()
    return fig


def plot_roofline(points, peak_gflops: float, bandwidth_gbs: float, title: str = "Roofline"):
    """A roofline: attainable GFLOP/s = min(peak, intensity x bandwidth), log-log, with measured points.

    points: rows (label, intensity FLOP/byte, gflops achieved); one marker and annotation each.
    The ridge (peak / bandwidth) separates memory-bound steps (left) from compute-bound ones (right).

    Introduced in notebooks/08_benchmarks.ipynb.
    """
    import matplotlib.pyplot as plt
    import numpy as np


    ridge = peak_gflops / bandwidth_gbs
    lo = min(0.1, float(points.intensity.min()) / 2)
    hi = max(10 * ridge, float(points.intensity.max()) * 2)
    x = np.geomspace(lo, hi, 200)
    fig, ax = plt.subplots(figsize=(7, 4.2))
    _ = ax.plot(x, np.minimum(peak_gflops, x * bandwidth_gbs), color="k", lw=1.5,
                label=f"roof: min({peak_gflops:.0f} GFLOP/s, intensity x {bandwidth_gbs:.0f} GB/s)")
    _ = ax.axvline(ridge, color="0.5", ls=":", lw=1)
    _ = ax.annotate(f"ridge {ridge:.1f} FLOP/B", (ridge, peak_gflops), textcoords="offset points", xytext=(4, -14),
                    fontsize=8, color="0.3")
    for i, (label, d) in enumerate(points.groupby("series", sort=False)):
        _ = ax.plot(d.intensity, d.gflops, marker="o", ls="-", lw=0.8, color=f"C{i}", label=label)
        stack, last = 0, None
        for _, row in d.iterrows():
            near = last is not None and abs(np.log(row.intensity / last)) < 0.15  # same spot: stack the labels
            stack, last = (stack + 1 if near else 0), row.intensity
            _ = ax.annotate(row.label, (row.intensity, row.gflops), textcoords="offset points",
                            xytext=(6, -12 - 9 * stack) if i else (4, 4), fontsize=7, color=f"C{i}")
    ax.set(xscale="log", yscale="log", xlabel="arithmetic intensity (FLOPs per byte read)",
           ylabel="GFLOP/s achieved", title=title, xlim=(lo, hi))
    plain_log_ticks(ax.xaxis)
    plain_log_ticks(ax.yaxis)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return fig
