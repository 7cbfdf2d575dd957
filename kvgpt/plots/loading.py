"""How far a loaded model's logits sit from a reference's, position by position: what chapter 09 plots.

matplotlib is imported inside the functions: the engine itself never needs it.
"""

from __future__ import annotations

import torch

FLOOR = 1e-9  # identical logits would be log(0): drawn at this floor instead


def scaled_logit_gap(logits: torch.Tensor, reference: torch.Tensor) -> list[float]:
    """Per position, max over the vocabulary of |logits - reference| / max(1, max |reference|).

    Shapes: logits, reference (1, T, V) or (T, V) -> T floats. The scale is the one every chapter's
    tolerance uses (1e-5 of the largest logit for fp32). Introduced in notebooks/09_gpt2.ipynb.
    """
    if logits.shape != reference.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and reference {tuple(reference.shape)} differ in shape")
    scale = max(1.0, reference.abs().max().item())
    gap = (logits - reference).abs().reshape(-1, logits.size(-1)).amax(-1) / scale  # (T,)
    return gap.tolist()


def plot_logit_gap(gaps: dict, tolerance: float = 1e-5, title: str = "Logits against the reference"):
    """One line per loader: scaled_logit_gap against the position (log scale), the tolerance dashed.

    gaps: {label: [gap at position 0, 1, ...]}. A gap of exactly 0 is drawn at FLOOR.
    Introduced in notebooks/09_gpt2.ipynb.
    """
    import matplotlib.pyplot as plt

    from .style import legend_below

    fig, ax = plt.subplots(figsize=(7, 3.9))
    for label, values in gaps.items():
        exact = " (identical: drawn at the floor)" if max(values) == 0 else ""
        _ = ax.plot(range(len(values)), [max(v, FLOOR) for v in values], marker="o", ms=3, label=label + exact)
    _ = ax.axhline(tolerance, color="k", ls="--", lw=1, label=f"tolerance {tolerance:g} x max|logit|")
    ax.set(yscale="log", xlabel="position in the prompt", ylabel="max |z - z_ref| / max |z_ref|", title=title)
    ax.set_ylim(FLOOR / 2, 10)
    ax.grid(alpha=0.3, which="major")
    legend_below(fig, *ax.get_legend_handles_labels(), ncol=2)
    return fig
