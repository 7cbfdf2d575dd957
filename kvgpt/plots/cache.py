"""Pictures of the KV cache filling up and of its bytes: what chapter 04 plots.

matplotlib is imported inside the functions: the engine itself never needs it.
"""

from __future__ import annotations

import torch


def kv_cache_fill(history: list[list[int]], slots: int, labels: list[str] | None = None):
    """Which cache slots are filled after each model call: one panel when every layer agrees, else one per layer.

    `history[c][l]` is layer l's cache length after call c (prefill, then one-token steps); slots
    written by call c are orange, older ones blue, empty ones grey. `slots` columns are drawn.

    Introduced in notebooks/04_kv_cache.ipynb.
    """
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    n_calls, n_layers = len(history), len(history[0])
    same = all(len(set(lengths)) == 1 for lengths in history)  # the invariant: every layer holds the same slots
    panels = [0] if same else list(range(n_layers))
    width = 5.2 if same else 2.6 * n_layers
    fig, axes = plt.subplots(1, len(panels), figsize=(width, 0.32 * n_calls + 1.3), squeeze=False)
    cmap = ListedColormap(["#e6e6e6", "#4c72b0", "#dd8452"])  # empty, filled earlier, written by this call
    for layer, ax in zip(panels, axes[0]):
        grid = torch.zeros(n_calls, slots)  # (calls, slots)
        for c in range(n_calls):
            before = history[c - 1][layer] if c else 0
            grid[c, : min(before, slots)] = 1
            grid[c, min(before, slots) : min(history[c][layer], slots)] = 2
        ax.imshow(grid.numpy(), cmap=cmap, vmin=0, vmax=2, aspect="auto")
        ax.set_title(f"the cache of each of the {n_layers} layers (all identical)" if same else f"layer {layer} cache",
                     fontsize=9)
        ax.set_xlabel("slot (position)", fontsize=8)
        ax.set_yticks(range(n_calls), labels or [f"call {c}" for c in range(n_calls)], fontsize=7)
        if layer:
            ax.set_yticklabels([])
    names = ("empty", "filled earlier", "written by this call")
    fig.legend([Patch(color=c) for c in cmap.colors], names, loc="lower center", ncol=3, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    return fig


NEW, SAME, CACHED, MASKED = "#4c72b0", "#d9d9d9", "#dd8452", "white"  # the colours of cached_vs_uncached


def _cells(ax, x0: float, y0: float, colors: list[list[str]]) -> None:
    """Draw a grid of unit squares whose top-left corner is (x0, y0); colors[r][c] fills row r, column c."""
    from matplotlib.patches import Rectangle

    for r, row in enumerate(colors):
        for c, color in enumerate(row):
            ax.add_patch(Rectangle((x0 + c, y0 - r - 1), 1, 1, facecolor=color, edgecolor="#666666", lw=0.6))


def cached_vs_uncached(labels: list[str]):
    """One decode step drawn twice: without a cache (T x T scores) beside with one (a 1 x S row).

    labels: the S tokens in the context, the last one being fed now. Left: the whole prefix goes through
    again; every row but the last is recomputed "same as last step" (grey). Right: only the new token's
    q, k, v are computed (blue); the other S - 1 keys and values are read from the cache (orange).
    Q is not cached: an old query's row was needed only for the token it predicted.

    Introduced in notebooks/04_kv_cache.ipynb.
    """
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    s = len(labels)
    shown = [repr(c)[1:-1] if c.strip() else "␣" for c in labels]
    fig, axes = plt.subplots(1, 2, figsize=(10, 0.42 * s + 2.6), gridspec_kw={"width_ratios": [1, 1]})
    old_new = [SAME] * (s - 1) + [NEW]
    rows = {  # panel -> (query colours, key/value colours, score rows)
        f"no cache: T = S = {s}, {s} x {s} scores": (
            old_new, old_new, [[(NEW if i == s - 1 else SAME) if j <= i else MASKED for j in range(s)] for i in range(s)]),
        f"KV cache: T = 1, S = {s}, a 1 x {s} row": (
            [NEW], [CACHED] * (s - 1) + [NEW], [[NEW] * s]),
    }
    for ax, (title, (q, kv, scores)) in zip(axes, rows.items()):
        t = len(q)
        _cells(ax, 0, 0, [kv])  # the keys (and values: same colours) across the top
        _cells(ax, -2, -1.5 - (s - t), [[c] for c in q])  # one query per score row, on the left
        _cells(ax, 0, -1.5 - (s - t), scores)
        ax.text(s / 2, 0.3, "K, V (one column per position)", ha="center", va="bottom", fontsize=8)
        ax.text(-2.3, -1.5 - (s - t) - t / 2, "Q", ha="right", va="center", fontsize=9)
        for j, name in enumerate(shown):
            ax.text(j + 0.5, -1.15, name, ha="center", va="center", fontsize=7)
        ax.text((s - 3) / 2, 1.5, title, ha="center", va="bottom", fontsize=10)
        ax.set(xlim=(-3.2, s + 0.3), ylim=(-s - 2.0, 2.4), aspect="equal")
        ax.axis("off")
    legend = [Patch(color=NEW, label="computed this step"), Patch(color=SAME, label="recomputed, same as last step"),
              Patch(color=CACHED, label="read from the cache"),
              Patch(facecolor=MASKED, edgecolor="#666666", label="masked (future)")]
    fig.legend(handles=legend, loc="lower center", ncol=4, fontsize=8, frameon=False)
    fig.text(0.5, 0.075, "Q is not cached: each old query was used once, for the token it predicted; "
             "only the newest query is needed now.", ha="center", fontsize=8)
    fig.tight_layout(rect=(0, 0.11, 1, 1))
    return fig


def cache_bytes(lengths: list[int], bytes_by_kind: dict[str, list[int]], title: str = ""):
    """Memory a cache holds as generation proceeds: one line per cache kind.

    `bytes_by_kind[name][i]` is the cache's nbytes once it holds lengths[i] positions.

    Introduced in notebooks/04_kv_cache.ipynb.
    """
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.2, 3.2))
    for name, values in bytes_by_kind.items():
        _ = ax.plot(lengths, [v / 2**10 for v in values], marker=".", label=name)
    ax.set(xlabel="positions in the cache (S)", ylabel="KiB held", title=title, ylim=(0, None))
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig
