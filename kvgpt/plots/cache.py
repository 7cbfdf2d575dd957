"""Pictures of the KV cache filling up and of its bytes: what chapter 04 plots.

matplotlib is imported inside the functions: the engine itself never needs it.
"""

from __future__ import annotations

import torch


def kv_cache_fill(history: list[list[int]], slots: int, labels: list[str] | None = None):
    """Which cache slots each layer holds after each model call: one panel per layer.

    `history[c][l]` is layer l's cache length after call c (prefill, then one-token steps); slots
    written by call c are orange, older ones blue, empty ones grey. `slots` columns are drawn.

    Introduced in notebooks/04_kv_cache.ipynb.
    """
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    n_calls, n_layers = len(history), len(history[0])
    fig, axes = plt.subplots(1, n_layers, figsize=(2.6 * n_layers, 0.32 * n_calls + 1.3), squeeze=False)
    cmap = ListedColormap(["#e6e6e6", "#4c72b0", "#dd8452"])  # empty, filled earlier, written by this call
    for layer, ax in enumerate(axes[0]):
        grid = torch.zeros(n_calls, slots)  # (calls, slots)
        for c in range(n_calls):
            before = history[c - 1][layer] if c else 0
            grid[c, : min(before, slots)] = 1
            grid[c, min(before, slots) : min(history[c][layer], slots)] = 2
        ax.imshow(grid.numpy(), cmap=cmap, vmin=0, vmax=2, aspect="auto")
        ax.set_title(f"layer {layer} cache", fontsize=9)
        ax.set_xlabel("slot (position)", fontsize=8)
        ax.set_yticks(range(n_calls), labels or [f"call {c}" for c in range(n_calls)], fontsize=7)
        if layer:
            ax.set_yticklabels([])
    names = ("empty", "filled earlier", "written by this call")
    fig.legend([Patch(color=c) for c in cmap.colors], names, loc="lower center", ncol=3, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
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
