"""Pictures for smaller caches: query heads sharing K/V heads, and how keys and values spread per channel/token.

matplotlib is imported inside the functions: the engine itself never needs it.
"""

from __future__ import annotations

import torch


def plot_head_sharing(n_heads: int = 8, kv_heads: tuple[int, ...] = (8, 2, 1)):
    """One panel per n_kv_heads: H query heads (top row) wired to the K/V head they read (bottom row).

    Query head h reads K/V head h // (n_heads // n_kv_heads), the repeat_interleave order; only the
    bottom row is cached. Introduced in notebooks/12_smaller_caches.ipynb.
    """
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    fig, axes = plt.subplots(1, len(kv_heads), figsize=(3.3 * len(kv_heads), 2.6), squeeze=False)
    colors = plt.get_cmap("tab10").colors
    for ax, kv in zip(axes[0], kv_heads):
        group = n_heads // kv
        for h in range(n_heads):
            j = h // group  # the K/V head of query head h
            ax.add_patch(Rectangle((h - 0.4, 1.6), 0.8, 0.6, color=colors[j % 10], alpha=0.45))
            ax.text(h, 1.9, f"q{h}", ha="center", va="center", fontsize=7)
            kv_x = (j + 0.5) * n_heads / kv - 0.5  # K/V heads spread under their groups
            _ = ax.plot([h, kv_x], [1.6, 0.8], color=colors[j % 10], lw=1)
        for j in range(kv):
            kv_x = (j + 0.5) * n_heads / kv - 0.5
            ax.add_patch(Rectangle((kv_x - 0.4, 0.2), 0.8, 0.6, color=colors[j % 10]))
            ax.text(kv_x, 0.5, f"kv{j}", ha="center", va="center", fontsize=7, color="white")
        name = "MHA" if kv == n_heads else "MQA" if kv == 1 else "GQA"
        ax.set_title(f"{name}: n_kv_heads={kv}\ncache x {kv}/{n_heads}", fontsize=9)
        ax.set(xlim=(-0.7, n_heads - 0.3), ylim=(0, 2.4))
        ax.axis("off")
    fig.tight_layout()
    return fig


def plot_kv_spread(keys: torch.Tensor, values: torch.Tensor, title: str = ""):
    """Max |x| per channel and per token for keys and values of one layer: where the outliers sit.

    Shapes: keys, values (B, H, S, D). Top row: max over positions of each of the H * D channels
    (an outlier channel is a tall bar, which per-token scales must cover for every token);
    bottom row: max over channels of each position (what a per-token scale is).

    Introduced in notebooks/12_smaller_caches.ipynb.
    """
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(9, 4.6))
    for col, (name, x) in enumerate((("keys", keys), ("values", values))):
        b, h, s, d = x.shape
        chans = x.abs().permute(1, 3, 0, 2).reshape(h * d, b * s)  # (H * D, B * S)
        per_channel = chans.amax(dim=1)  # (H * D,)
        _ = axes[0, col].bar(range(h * d), per_channel.tolist(), width=1.0, color="#4c72b0")
        axes[0, col].set(title=f"{name}: max |x| per channel", xlabel="channel (head * D + d)", ylabel="max |x|")
        per_token = x.abs().amax(dim=-1).reshape(-1)  # (B * H * S,)
        _ = axes[1, col].hist(per_token.tolist(), bins=40, color="#dd8452")
        axes[1, col].set(title=f"{name}: max |x| per (token, head)", xlabel="max |x| (= its int8 scale x 127)",
                         ylabel="count")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig
