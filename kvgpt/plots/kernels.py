"""Pictures of chapter 14: attention kernels' time per call and bytes moved, from figures/attention_kernels.csv.

matplotlib is imported inside the functions: the engine itself never needs it.
"""

from __future__ import annotations

KERNEL_COLORS = {"static": "#4c72b0", "gather": "#c44e52", "blockwise": "#dd8452", "cpp": "#55a868", "flex": "#8172b3"}


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
            _ = ax.plot(part.past, part.us_per_call, "o-", color=KERNEL_COLORS.get(variant), label=variant)
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
    colors = [KERNEL_COLORS.get(v) for v in sel.variant]
    _ = a.bar(sel.variant, sel.bytes_moved / 2**20, color=colors)
    a.set(ylabel="MiB of K/V moved per call", title="bytes (counted)")
    _ = b.bar(sel.variant, sel.us_per_call, color=colors)
    b.set(ylabel="µs per call, 1 thread", title="time (measured)")
    fig.suptitle(f"{model}: {rows} rows x {past} past tokens, {'decode' if chunk == 0 else f'+ {chunk}-token chunk'}",
                 fontsize=10)
    fig.tight_layout()
    return fig


def plot_online_softmax(scores, tile: int):
    """One query's scores in tiles (bars), the running max m after each tile (steps) and the running sum l,
    expressed against the final max so the steps are comparable: it only ever grows to the softmax's denominator.

    scores: a 1-D tensor. Introduced in notebooks/14_attention_kernels.ipynb.
    """
    import matplotlib.pyplot as plt
    import torch

    s = scores.double()
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.2))
    colors = ["#4c72b0" if (i // tile) % 2 == 0 else "#dd8452" for i in range(len(s))]
    _ = a.bar(range(len(s)), s.tolist(), color=colors)
    m, l, ends, ms, ls = float("-inf"), 0.0, [], [], []
    for start in range(0, len(s), tile):
        part = s[start:start + tile]
        m_new = max(m, float(part.max()))
        l = l * float(torch.exp(torch.tensor(m - m_new))) + float(torch.exp(part - m_new).sum())
        m = m_new
        ends.append(start + len(part) - 1)
        ms.append(m)
        ls.append(l * float(torch.exp(torch.tensor(m - float(s.max())))))  # l as if computed with the final max
    _ = a.step(ends, ms, where="post", color="black", label="running max m")
    a.set(xlabel="key", ylabel="score", title=f"scores in tiles of {tile}")
    a.legend(fontsize=8)
    _ = b.plot(ends, ls, "o-", color="#55a868", label="running sum l (rescaled to the final max)")
    _ = b.axhline(float(torch.exp(s - s.max()).sum()), color="grey", ls="--", label="softmax denominator")
    b.set(xlabel="last key folded in", title="the state after each tile")
    b.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_pool_reads(query_row, query_pos, block_tables, block_size: int, num_blocks: int):
    """Which pool slots each query of a flattened call reads: rows = queries, columns = the pool's slots
    (block by block), colour = the query's sequence. Decode rows read a scattered set of blocks; a chunk's
    queries read a growing prefix of the same blocks.

    Introduced in notebooks/14_attention_kernels.ipynb.
    """
    import matplotlib.pyplot as plt
    import numpy as np

    n = len(query_row)
    image = np.full((n, num_blocks * block_size), np.nan)
    for i in range(n):
        row, pos = int(query_row[i]), int(query_pos[i])
        for p in range(pos + 1):
            image[i, int(block_tables[row, p // block_size]) * block_size + p % block_size] = row
    fig, ax = plt.subplots(figsize=(9, 0.25 * n + 1.5))
    _ = ax.imshow(image, aspect="auto", cmap="tab10", vmin=0, vmax=9, interpolation="nearest")
    for b in range(1, num_blocks):
        _ = ax.axvline(b * block_size - 0.5, color="#dddddd", lw=0.5)
    ax.set(xlabel=f"pool slot (block = {block_size} slots)", ylabel="query i (flattened)",
           title="what each query reads, where it sits in the pool")
    ax.set_xticks([b * block_size for b in range(num_blocks)], [str(b) for b in range(num_blocks)], fontsize=7)
    fig.tight_layout()
    return fig
