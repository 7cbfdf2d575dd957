"""The attention mask of a left-padded batch: what chapter 07 plots.

matplotlib is imported inside the functions: the engine itself never needs it.
"""

from __future__ import annotations

import torch


def plot_padding_mask(mask: torch.Tensor, positions: torch.Tensor | None = None, labels: list | None = None,
                      pad_lengths: torch.Tensor | None = None):
    """Each row's attention mask in a left-padded batch: which key slots every query slot may read.

    Shapes: mask (B, 1, T, S) or (B, T, S) bool (True = may attend); positions (B, T), the position each
    query slot is embedded at, shown on the y axis; labels, B panel titles; pad_lengths (B,), when
    given, draws the pad queries (their output is never read) in orange.

    Introduced in notebooks/07_batching.ipynb.
    """
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    mask = mask[:, 0] if mask.dim() == 4 else mask  # (B, T, S)
    b, t, s = mask.shape
    colors = ["#e6e6e6", "#4c72b0", "#dd8452"]  # hidden, visible, a pad query seeing itself
    fig, axes = plt.subplots(1, b, figsize=(2.5 * b + 0.8, 0.28 * t + 1.9), squeeze=False)
    for row, ax in enumerate(axes[0]):
        grid = mask[row].cpu().long()  # (T, S)
        queries = range(s - t, s)  # the slots of the T queries
        if pad_lengths is not None:
            pad_query = torch.tensor([q < int(pad_lengths[row]) for q in queries])  # (T,)
            grid[pad_query] *= 2
        ax.imshow(grid.numpy(), cmap=ListedColormap(colors), vmin=0, vmax=2)
        ax.set_xticks(range(s), [str(i) for i in range(s)], fontsize=7)
        ax.set_yticks(range(t), [f"{q}" if positions is None else f"{q} (pos {int(positions[row, q - (s - t)])})"
                                 for q in queries], fontsize=7)
        ax.set_xticks([x - 0.5 for x in range(1, s)], minor=True)
        ax.set_yticks([y - 0.5 for y in range(1, t)], minor=True)
        ax.grid(which="minor", color="white", lw=1)
        ax.tick_params(which="minor", length=0)
        ax.set(xlabel="key slot", title=labels[row] if labels else f"row {row}")
    axes[0][0].set_ylabel("query slot")
    legend = [Patch(color=colors[1], label="may attend"), Patch(color=colors[0], label="masked")]
    if pad_lengths is not None:
        legend.append(Patch(color=colors[2], label="pad query sees itself (output unused)"))
    fig.legend(handles=legend, loc="lower center", ncol=len(legend), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    return fig
