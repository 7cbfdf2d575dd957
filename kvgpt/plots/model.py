"""The model as one picture, in the shape legend's letters: what chapter 01 draws (and 04 recalls).

matplotlib is imported inside the functions: the engine itself never needs it.
"""

from __future__ import annotations


def architecture_diagram(config=None):
    """Embeddings -> L x [LN -> attention (+ its own KV cache) -> + -> LN -> MLP -> +] -> LN -> tied LM head.

    Every arrow carries its tensor's shape in B, T, S, C, H, D, V, L; the right column is one KV cache per
    layer, each (B, H, S, D) for keys and the same for values. With a ModelConfig the sizes are filled in.

    Introduced in notebooks/01_config.ipynb.
    """
    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

    fig, ax = plt.subplots(figsize=(9, 8.4))
    n_layers = 4 if config is None else config.n_layers
    sizes = "" if config is None else (f"   (C={config.d_model}, H={config.n_heads}, D={config.head_dim}, "
                                       f"V={config.vocab_size}, L={config.n_layers})")

    def box(y, text, color, x=0.0, w=5.0, h=0.62):
        ax.add_patch(FancyBboxPatch((x - w / 2, y - h / 2), w, h, boxstyle="round,pad=0.05",
                                    facecolor=color, edgecolor="#444444", lw=0.8))
        ax.text(x, y, text, ha="center", va="center", fontsize=8.5)

    def arrow(y0, y1, label="", x=0.0):
        ax.add_patch(FancyArrowPatch((x, y0), (x, y1), arrowstyle="-|>", mutation_scale=10, color="#444444", lw=0.8))
        if label:
            ax.text(x + 0.15, y0 - 0.08, label, ha="left", va="top", fontsize=7.5, color="#333333")

    ys = {"ids": 11.2, "emb": 10.0, "ln1": 8.5, "attn": 7.4, "add1": 6.3, "ln2": 5.2, "mlp": 4.1, "add2": 3.0,
          "lnf": 1.6, "head": 0.5, "out": -0.6}
    box(ys["ids"], "token ids", "#f2f2f2", w=2.4)
    box(ys["emb"], "token embedding  W_tok (V, C)   +   position embedding  W_pos (block_size, C)", "#e8d5b7", w=6.6)
    ax.add_patch(FancyBboxPatch((-3.4, 2.45), 6.8, 6.7, boxstyle="round,pad=0.1", facecolor="none",
                                edgecolor="#4c72b0", lw=1.2, ls="--"))
    ax.text(-3.4, 9.4, f"block l, repeated L = {n_layers} times", fontsize=9, color="#4c72b0", va="bottom")
    box(ys["ln1"], "LayerNorm", "#eeeeee", w=2.4)
    box(ys["attn"], "causal self-attention: q, k, v (B, H, T, D); scores (B, H, T, S)", "#c6d4ec", w=6.0)
    box(ys["add1"], "+  (residual)", "#ffffff", w=2.4, h=0.5)
    box(ys["ln2"], "LayerNorm", "#eeeeee", w=2.4)
    box(ys["mlp"], "MLP: Linear C -> 4C, GELU, Linear 4C -> C", "#d5e8d4", w=5.0)
    box(ys["add2"], "+  (residual)", "#ffffff", w=2.4, h=0.5)
    box(ys["lnf"], "final LayerNorm", "#eeeeee", w=2.4)
    box(ys["head"], "LM head = W_tok transposed (tied weights)", "#e8d5b7", w=4.6)
    box(ys["out"], "logits", "#f2f2f2", w=2.4)
    arrow(ys["ids"] - 0.33, ys["emb"] + 0.33, "(B, T)")
    arrow(ys["emb"] - 0.33, ys["ln1"] + 0.33, "x (B, T, C)")
    for a, b in (("ln1", "attn"), ("attn", "add1"), ("add1", "ln2"), ("ln2", "mlp"), ("mlp", "add2")):
        arrow(ys[a] - 0.33, ys[b] + 0.3, "(B, T, C)" if a in ("attn", "mlp") else "")
    arrow(ys["add2"] - 0.28, ys["lnf"] + 0.33, "x (B, T, C)")
    arrow(ys["lnf"] - 0.33, ys["head"] + 0.33)
    arrow(ys["head"] - 0.33, ys["out"] + 0.33, "(B, T, V), or (B, V): last position only")
    for start, end in ((9.0, ys["add1"]), (ys["add1"] - 0.3, ys["add2"])):  # the residual paths skip each sublayer
        ax.add_patch(FancyArrowPatch((-1.3, start), (-1.3, end), connectionstyle="arc3,rad=0.5", arrowstyle="-|>",
                                     mutation_scale=9, color="#999999", lw=0.8))
    for i in range(n_layers):  # one cache per layer: block l reads and writes only cache l
        y = 8.6 - i * 0.95 * 4 / max(n_layers, 4)
        box(y, f"KV cache, layer {i}\nK, V each (B, H, S, D)", "#f6d5b8", x=5.6, w=2.5, h=0.75)
    ax.add_patch(FancyArrowPatch((3.05, ys["attn"] + 0.1), (4.3, ys["attn"] + 0.1), arrowstyle="-|>",
                                 mutation_scale=10, color="#dd8452", lw=1.2))
    ax.add_patch(FancyArrowPatch((4.3, ys["attn"] - 0.2), (3.05, ys["attn"] - 0.2), arrowstyle="-|>",
                                 mutation_scale=10, color="#dd8452", lw=1.2))
    ax.text(5.6, 5.25, "attention appends the new k, v\n(B, H, T, D) to its layer's cache and\n"
            "reads back all K, V (B, H, S, D);\nblock l uses cache l only", ha="center", va="top", fontsize=7.5,
            color="#a0522d")
    ax.set(xlim=(-3.8, 7.1), ylim=(-1.1, 11.8))
    ax.axis("off")
    ax.set_title("GPT-2 for inference, in the shape legend" + sizes + "\nB batch, T new tokens, "
                 "S positions visible (past + T); caches from chapter 04", fontsize=9)
    fig.tight_layout()
    return fig
