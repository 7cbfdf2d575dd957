"""How each sampling processor reshapes the next-token distribution: what chapter 06 plots.

matplotlib is imported inside the functions: the engine itself never needs it.
"""

from __future__ import annotations

import torch


SAMPLING_SETTINGS = {  # one panel each in plot_processors: name -> Sampler keyword arguments
    "repetition_penalty=1.5": {"repetition_penalty": 1.5},
    "temperature=0.7": {"temperature": 0.7},
    "top_k=5": {"top_k": 5},
    "top_p=0.9": {"top_p": 0.9},
}


def token_label(tokenizer, token_id: int) -> str:
    """A readable tick label for one token: spaces as '␣', newlines as '\\n'."""
    return tokenizer.decode([token_id]).replace(" ", "␣").replace("\n", "\\n")


def plot_distribution(probs_before: torch.Tensor, probs_after: torch.Tensor, tokenizer, top: int = 20,
                      labels=("before", "after"), title: str | None = None, ax=None):
    """Bars of two next-token distributions side by side, over the `top` most likely tokens of either.

    Shapes: probs (V,) or (1, V). Tokens are ordered by the `before` probability. Draws into `ax` when
    given; the default title counts the tokens the `after` distribution keeps (probability > 0).
    Introduced in notebooks/06_sampling.ipynb.
    """
    import matplotlib.pyplot as plt

    before, after = probs_before.detach().float().reshape(-1).cpu(), probs_after.detach().float().reshape(-1).cpu()
    if before.shape != after.shape:
        raise ValueError(f"probs_before {tuple(before.shape)} and probs_after {tuple(after.shape)} differ in size")
    ids = torch.maximum(before, after).topk(min(top, before.numel())).indices  # (top,)
    ids = ids[before[ids].argsort(descending=True, stable=True)]
    fig, ax = plt.subplots(figsize=(8, 3)) if ax is None else (ax.figure, ax)
    x = torch.arange(len(ids)).numpy()
    _ = ax.bar(x - 0.2, before[ids].numpy(), width=0.4, color="0.7", label=labels[0])
    _ = ax.bar(x + 0.2, after[ids].numpy(), width=0.4, color="C0", label=labels[1])
    _ = ax.set_xticks(x, [token_label(tokenizer, int(i)) for i in ids])
    _ = ax.set_ylabel("probability")
    kept = int((after > 0).sum())
    _ = ax.set_title(title if title is not None else f"kept {kept} of {after.numel()} tokens", fontsize=10)
    _ = ax.legend(frameon=False, fontsize=8)
    return fig


def plot_processors(logits: torch.Tensor, tokenizer, history=None, settings: dict | None = None, top: int = 15):
    """One plot_distribution panel per sampler setting: softmax(logits) before, Sampler(...).probs after.

    Shapes: logits (V,) raw next-token logits; history: the ids seen so far (for the repetition penalty).
    `settings`: panel title -> Sampler keyword arguments (default SAMPLING_SETTINGS).
    Introduced in notebooks/06_sampling.ipynb.
    """
    import matplotlib.pyplot as plt

    from ..sampling import Sampler

    settings = SAMPLING_SETTINGS if settings is None else settings
    rows = (len(settings) + 1) // 2
    fig, axes = plt.subplots(rows, 2, figsize=(11, 2.8 * rows), squeeze=False)
    before = logits.detach().float().reshape(-1).softmax(-1)  # (V,)
    for ax, (name, knobs) in zip(axes.flat, settings.items()):
        after = Sampler(**knobs).probs(logits.detach().reshape(-1), history)
        kept = int((after > 0).sum())
        plot_distribution(before, after, tokenizer, top, ("softmax(logits)", name), f"{name}: kept {kept}", ax)
    for ax in list(axes.flat)[len(settings):]:
        ax.set_visible(False)
    fig.tight_layout()
    return fig
