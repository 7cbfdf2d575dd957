"""Pictures of chapter 14: attention kernels' time per call and bytes moved, from figures/attention_kernels.csv.

matplotlib is imported inside the functions: the engine itself never needs it.
"""

from __future__ import annotations

COLORS = {"static": "#4c72b0", "gather": "#c44e52", "blockwise": "#dd8452", "cpp": "#55a868", "flex": "#8172b3"}


def plot_kernel_times(df, rows: int = 16, threads: int = 1, chunk: int = 0, cpu: str = ""):
    """Microseconds per attention call against the past length, one panel per model, one line per variant.

    df: the rows of figures/attention_kernels.csv (non-ragged cases are plotted).
    Introduced in notebooks/14_attention_kernels.ipynb.
    """
    import matplotlib.pyplot as plt

    sel = df[(df.rows == rows) & (df.threads == threads) & (df.chunk == chunk) & ~df.ragged]
    models = list(dict.fromkeys(sel.model))
    fig, axes = plt.subplots(1, len(models), figsize=(4.2 * len(models), 3.6), squeeze=False)
    for ax, model in zip(axes[0], models):
        for variant, part in sel[sel.model == model].groupby("variant", sort=False):
            part = part.sort_values("past")
            _ = ax.plot(part.past, part.us_per_call, "o-", color=COLORS.get(variant), label=variant)
        ax.set(xscale="log", yscale="log", xlabel="past tokens per row", title=model)
        ax.grid(alpha=0.3, which="both")
    axes[0][0].set_ylabel("µs per attention call")
    axes[0][-1].legend(fontsize=8)
    what = "decode" if chunk == 0 else f"{rows - 1} decode rows + a {chunk}-token chunk"
    fig.suptitle(f"{rows} rows, {what}, {threads} thread(s){' - ' + cpu if cpu else ''}", fontsize=10)
    fig.tight_layout()
    return fig


def plot_bytes_moved(df, model: str, rows: int, past: int, chunk: int = 0):
    """Bars: K/V bytes each variant reads and writes for one call (counted), beside its time (measured).

    Introduced in notebooks/14_attention_kernels.ipynb.
    """
    import matplotlib.pyplot as plt

    sel = df[(df.model == model) & (df.rows == rows) & (df.past == past) & (df.chunk == chunk) & ~df.ragged
             & (df.threads == 1)]
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.2))
    colors = [COLORS.get(v) for v in sel.variant]
    _ = a.bar(sel.variant, sel.bytes_moved / 2**20, color=colors)
    a.set(ylabel="MiB of K/V moved per call", title="bytes (counted)")
    _ = b.bar(sel.variant, sel.us_per_call, color=colors)
    b.set(ylabel="µs per call, 1 thread", title="time (measured)")
    fig.suptitle(f"{model}: {rows} rows x {past} past tokens, {'decode' if chunk == 0 else f'+ {chunk}-token chunk'}",
                 fontsize=10)
    fig.tight_layout()
    return fig
