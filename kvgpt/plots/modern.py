"""Pictures for modern models: RoPE's rotation per frequency pair, and long-text loss under each context policy.

matplotlib is imported inside the functions: the engine itself never needs it.
"""

from __future__ import annotations

import torch

from ..modern import rope_frequencies


def plot_rope_rotation(head_dim: int = 32, theta: float = 10000.0, pairs=(0, 3, 8, 15), positions: int = 12):
    """One panel per channel pair i: the same 2-D vector rotated to positions 0 .. positions - 1.

    Pair i turns by theta ** (-2i / D) radians per position: pair 0 a full radian (it wraps around the circle
    within 7 positions), the last pairs almost not at all (they tell far positions apart).
    Introduced in notebooks/16_modern_models.ipynb.
    """
    import matplotlib.pyplot as plt

    freqs = rope_frequencies(head_dim, theta)  # (D/2,)
    fig, axes = plt.subplots(1, len(pairs), figsize=(2.7 * len(pairs), 2.9))
    colors = plt.get_cmap("viridis")(torch.linspace(0, 1, positions).tolist())
    for ax, i in zip(axes, pairs):
        angle = freqs[i].item()
        t = torch.linspace(0, 2 * torch.pi, 100)
        _ = ax.plot(t.cos().tolist(), t.sin().tolist(), color="#dddddd", lw=1)
        for p in range(positions):
            a = p * angle
            _ = ax.annotate("", xy=(torch.tensor(a).cos().item(), torch.tensor(a).sin().item()), xytext=(0, 0),
                            arrowprops={"arrowstyle": "->", "color": colors[p], "lw": 1.4})
        ax.set_title(f"pair {i} (channels {i}, {i + head_dim // 2})\n{angle:.3g} rad / position", fontsize=8)
        ax.set(xlim=(-1.2, 1.2), ylim=(-1.2, 1.2), aspect="equal")
        ax.axis("off")
    fig.suptitle(f"RoPE: positions 0..{positions - 1} (dark -> light), head_dim {head_dim}, theta {theta:g}",
                 fontsize=9)
    fig.tight_layout()
    return fig


def plot_stream_losses(curves, width: int, note: str = "", block_size: int | None = None, baseline: str | None = None):
    """Binned loss (nats per token) against position in the text, one line per run; with `baseline` (a label),
    a second panel shows each run minus that run, bin by bin (the text's own difficulty cancels out).

    `curves`: a DataFrame with columns label, bin (0, 1, ...), loss; bins of `width` predictions. A dotted
    line marks block_size, where every policy starts evicting or re-prefilling.
    Introduced in notebooks/16_modern_models.ipynb.
    """
    import matplotlib.pyplot as plt

    panels = 2 if baseline else 1
    fig, axes = plt.subplots(panels, 1, figsize=(8, 3.6 * panels), squeeze=False, sharex=True)
    ref = curves[curves["label"] == baseline].set_index("bin")["loss"] if baseline else None
    for label, rows in curves.groupby("label", sort=False):
        x = ((rows["bin"] + 0.5) * width).tolist()
        _ = axes[0, 0].plot(x, rows["loss"].tolist(), marker="o", ms=3, label=label)
        if baseline:
            _ = axes[1, 0].plot(x, (rows.set_index("bin")["loss"] - ref).tolist(), marker="o", ms=3, label=label)
    for ax in axes[:, 0]:
        if block_size:
            _ = ax.axvline(block_size, color="grey", ls=":", lw=1)
    axes[0, 0].set(ylabel=f"mean loss per {width} tokens (nats)",
                   title="Long text through a fixed-size cache: loss per position" + (f"\n{note}" if note else ""))
    axes[0, 0].title.set_fontsize(9)
    axes[0, 0].legend(fontsize=7)
    if baseline:
        axes[1, 0].set(ylabel=f"minus {baseline.split(')')[0]})")
    axes[-1, 0].set(xlabel="position in the held-out text (characters)")
    fig.tight_layout()
    return fig
