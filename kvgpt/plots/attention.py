"""Pictures of positions and attention: what chapters 02 and 03 plot.

matplotlib is imported inside the functions: the engine itself never needs it.
"""

from __future__ import annotations

import math

import torch

from ..attention import causal_mask


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
            q, k, _ = attn.split_heads(inputs[0])  # (B, H, T, D)
            scores = q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))  # (B, H, T, T)
    finally:
        handle.remove()
    t = token_ids.size(1)
    scores = scores.masked_fill(~causal_mask(t, t, scores.device), float("-inf"))
    return torch.softmax(scores, dim=-1)  # (B, H, T, T)


def attention_heatmaps(weights: torch.Tensor, labels: list[str], title: str = ""):
    """One heatmap per head: query positions down, key positions across.

    Shapes: weights (H, T, T) for one sequence, labels T strings (e.g. its characters).

    Introduced in notebooks/03_attention.ipynb.
    """
    import matplotlib.pyplot as plt

    h = weights.size(0)
    fig, axes = plt.subplots(1, h, figsize=(2.9 * h, 3.2), squeeze=False)
    shown = [repr(c)[1:-1] if c.strip() else "␣" for c in labels]  # make spaces and newlines visible
    for i, ax in enumerate(axes[0]):
        ax.imshow(weights[i].detach().float().cpu().numpy(), cmap="Blues", vmin=0, vmax=1)
        ax.set_title(f"head {i}", fontsize=9)
        ax.set_xticks(range(len(shown)), shown, fontsize=7)
        ax.set_yticks(range(len(shown)), shown, fontsize=7)
        ax.set_xlabel("key", fontsize=8)
    axes[0][0].set_ylabel("query", fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig
