"""Pictures of positions and attention: what chapters 02 and 03 plot.

matplotlib is imported inside the functions: the engine itself never needs it.
"""

from __future__ import annotations

import math

import torch

from ..attention import causal_mask, repeat_kv


def position_similarity(model, n_positions: int | None = None):
    """Heatmap of the cosine similarity between learned position embeddings i and j.

    Shapes: the first n_positions rows (default block_size) of the (block_size, C) table -> an (N, N) image.

    Introduced in notebooks/02_embeddings.ipynb.
    """
    import matplotlib.pyplot as plt

    table = model.position_embedding.pos_embedding.weight.detach().float().cpu()  # (block_size, C)
    n = table.size(0) if n_positions is None else n_positions
    unit = torch.nn.functional.normalize(table[:n], dim=-1)  # (N, C)
    fig, ax = plt.subplots(figsize=(4.6, 4))
    image = ax.imshow((unit @ unit.T).numpy(), cmap="RdBu_r", vmin=-1, vmax=1)  # (N, N)
    ax.set(title="cosine similarity of position embeddings", xlabel="position j", ylabel="position i")
    fig.colorbar(image, ax=ax, shrink=0.8)
    fig.tight_layout()
    return fig


def attention_weights(model, token_ids: torch.Tensor, layer: int) -> torch.Tensor:
    """The softmax attention weights one layer of the model gives a sequence.

    Shapes: token_ids (B, T) -> (B, H, T, T); row i says how much query i reads each key (sums to 1).
    A forward hook captures the input the layer's attention really receives in a full forward; the
    weights are then softmax(q k^T / sqrt(D)) under the causal mask, as attend(..., "manual") computes.

    Introduced in notebooks/03_attention.ipynb.
    """
    if not 0 <= layer < len(model.blocks):
        raise ValueError(f"layer={layer}: the model has layers 0..{len(model.blocks) - 1}")
    attn = model.blocks[layer].attn
    inputs = []
    handle = attn.register_forward_hook(lambda module, args, out: inputs.append(args[0]))
    try:
        with torch.no_grad():
            model(token_ids)
            t = token_ids.size(1)
            rope = model.rotary(torch.arange(t), inputs[0].dtype) if model.config.positions == "rope" else None
            q, k, _ = attn.split_heads(inputs[0], rope)  # (B, H, T, D), keys rotated as the model does
            k = repeat_kv(k, q.size(1) // k.size(1))  # grouped-query attention: each query head's K/V head
            scores = q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))  # (B, H, T, T)
    finally:
        handle.remove()
    scores = scores.masked_fill(~causal_mask(t, t, scores.device), float("-inf"))
    return torch.softmax(scores, dim=-1)  # (B, H, T, T)


def attention_heatmaps(weights: torch.Tensor, labels: list[str], title: str = "", per_head: bool = True):
    """One heatmap per head, queries down, keys across, each with its colorbar.

    Shapes: weights (H, T, T) for one sequence, labels T strings (e.g. its characters).
    per_head=True scales each head's colours to its own 98th percentile of the visible weights (the first
    queries see few keys and hold weights near 1 that would wash out the rest; darker is clipped, the
    colorbar's arrow); per_head=False uses 0..1 for every head.

    Introduced in notebooks/03_attention.ipynb.
    """
    import matplotlib.pyplot as plt

    h = weights.size(0)
    w = weights.detach().float().cpu()  # (H, T, T)
    fig, axes = plt.subplots(1, h, figsize=(3.3 * h, 3.2), squeeze=False)
    shown = [repr(c)[1:-1] if c.strip() else "␣" for c in labels]  # make spaces and newlines visible
    for i, ax in enumerate(axes[0]):
        visible = w[i][torch.ones_like(w[i], dtype=torch.bool).tril()]  # the weights the causal mask allows
        top = float(visible.quantile(0.98)) if per_head else 1.0
        image = ax.imshow(w[i].numpy(), cmap="Blues", vmin=0, vmax=top)
        ax.set_title(f"head {i}" + (f" (0..{top:.2f})" if per_head else ""), fontsize=9)
        ax.set_xticks(range(len(shown)), shown, fontsize=7)
        ax.set_yticks(range(len(shown)), shown, fontsize=7)
        ax.set_xlabel("key", fontsize=8)
        bar = fig.colorbar(image, ax=ax, shrink=0.75, pad=0.02, extend="max" if per_head else "neither")
        bar.ax.tick_params(labelsize=7)
    axes[0][0].set_ylabel("query", fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def attention_shapes(t: int = 4, s: int = 6, d: int = 3):
    """The shapes of one head's attention as blocks: Q (T, D) · Kᵀ (D, S) -> scores (T, S) -> softmax -> · V (S, D).

    Drawn to scale in cells, with the causal mask's hidden scores left white (the last query sees all S keys).

    Introduced in notebooks/03_attention.ipynb.
    """
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    fig, ax = plt.subplots(figsize=(10, 2.9))
    visible = causal_mask(t, s).tolist()  # (T, S) nested lists, True = may attend

    def block(x0, rows, cols, color, label, hidden=None):
        for r in range(rows):
            for c in range(cols):
                face = "white" if hidden is not None and not hidden[r][c] else color
                ax.add_patch(Rectangle((x0 + c, -r - 1), 1, 1, facecolor=face, edgecolor="#555555", lw=0.6))
        ax.text(x0 + cols / 2, 0.5, label, ha="center", va="bottom", fontsize=9)
        return x0 + cols

    x = block(0, t, d, "#dd8452", f"Q (T={t}, D={d})")
    ax.text(x + 0.6, -t / 2, "·", fontsize=18, ha="center", va="center")
    x = block(x + 1.2, d, s, "#4c72b0", f"Kᵀ (D={d}, S={s})")
    ax.text(x + 0.9, -t / 2, "→", fontsize=16, ha="center", va="center")
    x = block(x + 1.8, t, s, "#8172b3", "scores (T, S) / √D", visible)
    ax.text(x + 1.4, -t / 2, "softmax\nper row\n→", fontsize=9, ha="center", va="center")
    x = block(x + 2.8, t, s, "#937860", "weights (T, S)", visible)
    ax.text(x + 0.6, -t / 2, "·", fontsize=18, ha="center", va="center")
    x = block(x + 1.2, s, d, "#55a868", f"V (S={s}, D={d})")
    ax.text(x + 0.9, -t / 2, "→", fontsize=16, ha="center", va="center")
    x = block(x + 1.8, t, d, "#c44e52", f"out (T={t}, D={d})")
    ax.set(xlim=(-0.5, x + 0.5), ylim=(-max(s, t) - 1.2, 2), aspect="equal")
    ax.axis("off")
    ax.set_title("one head: white scores are masked (−∞ before softmax, weight 0 after); "
                 "every one of the B·H heads does the same", fontsize=9)
    fig.tight_layout()
    return fig

