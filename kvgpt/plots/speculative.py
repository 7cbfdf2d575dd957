"""Pictures of speculative decoding: draft -> verify -> accept rounds, acceptance and speed against k.

matplotlib is imported inside the functions: the engine itself never needs it.
"""

from __future__ import annotations

from ..speculative import expected_tokens_per_pass

ROUND_COLORS = {"context": "#e6e6e6", "accepted": "#55a868", "rejected": "#c44e52", "unchecked": "#f2f2f2",
          "target": "#4c72b0"}


def plot_rounds(rounds: list[dict], title: str = "Draft -> verify -> accept"):
    """One row per round: context (grey), drafts kept (green), the first rejected (red), drafts never
    reached (pale), then the target's own token (blue: a correction, or the bonus after k accepts).

    rounds[i] = {"context": str, "drafts": [str], "accepted": int, "target": str, "cache": (before, after)}:
    labels already printable; "cache" (optional) is the target cache length after the verify pass and
    after the crop, written at the end of the row.
    Introduced in notebooks/13_speculative_decoding.ipynb.
    """
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch, Rectangle

    width = max(len(r["drafts"]) for r in rounds) + 2
    fig, ax = plt.subplots(figsize=(1.0 + 0.62 * width + 2.2, 0.55 * len(rounds) + 1.2))
    for row, r in enumerate(rounds):
        y = len(rounds) - 1 - row
        cells = [(r["context"], "context")]
        for i, d in enumerate(r["drafts"]):
            kind = "accepted" if i < r["accepted"] else "rejected" if i == r["accepted"] else "unchecked"
            cells.append((d, kind))
        cells.append((r["target"], "target"))
        for x, (text, kind) in enumerate(cells):
            ax.add_patch(Rectangle((x, y), 0.92, 0.8, color=ROUND_COLORS[kind], ec="#555555", lw=0.6))
            _ = ax.text(x + 0.46, y + 0.4, text, ha="center", va="center", fontsize=8, family="monospace",
                        color="white" if kind in ("accepted", "rejected", "target") else "black")
        if "cache" in r:
            before, after = r["cache"]
            _ = ax.text(width + 0.1, y + 0.4, f"cache {before} -> crop {after}", va="center", fontsize=8)
    ax.set_xlim(-0.1, width + 2.3)
    ax.set_ylim(-0.2, len(rounds))
    rows = range(len(rounds))
    ax.set_yticks([len(rounds) - 1 - i + 0.4 for i in rows], [f"round {i + 1}" for i in rows])
    ax.set_xticks([])
    for side in ("top", "right", "bottom", "left"):
        ax.spines[side].set_visible(False)
    names = ("context", "draft kept", "draft rejected", "not checked", "target's token")
    fig.legend([Patch(color=ROUND_COLORS[c], ec="#555555") for c in ROUND_COLORS], names, loc="lower center", ncol=5,
               fontsize=8, frameon=False)
    ax.set_title(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    return fig


def plot_acceptance(df, positions=None, title: str = "Acceptance and tokens per target pass", min_examined: int = 10):
    """Left: acceptance per draft position (accepted / examined) at the largest k, one line per source;
    right: measured tokens per target pass against k, with the i.i.d. formula (1 - a^(k+1)) / (1 - a) at the
    per-position acceptance (dashed) and at accepted / drafted (dotted). Legends sit under the axes.

    df: speculative_sweep rows (source, k, tokens_per_pass, acceptance, accepted_per_drafted); positions: its
    per-position rows (source, k, position, examined, acceptance); positions examined fewer than min_examined
    times are left out. Without positions the left panel shows acceptance against k. Introduced in notebooks/13_speculative_decoding.ipynb.
    """
    import matplotlib.pyplot as plt

    from .style import legend_below

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4.2))
    handles, labels = [], []
    for source, d in df.groupby("source", sort=False):
        d = d.sort_values("k")
        if positions is not None:
            p = positions[(positions.source == source) & (positions.k == d.k.max())]
            p = p[p.examined >= min_examined]  # a rate from a handful of rounds is noise
            line = left.plot(p.position, p.acceptance, marker="o")[0]
        else:
            line = left.plot(d.k, d.acceptance, marker="o")[0]
        color = line.get_color()
        _ = right.plot(d.k, d.tokens_per_pass, marker="o", color=color)
        _ = right.plot(d.k, [expected_tokens_per_pass(a, k) for a, k in zip(d.acceptance, d.k)], ls="--", color=color,
                       lw=1)
        if "accepted_per_drafted" in d:
            _ = right.plot(d.k, [expected_tokens_per_pass(a, k) for a, k in zip(d.accepted_per_drafted, d.k)], ls=":",
                           color=color, lw=1)
        handles.append(line)
        labels.append(source)
    k_max = int(df.k.max())
    left.set(xlabel=f"draft position i (k = {k_max}; i examined >= {min_examined} times)" if positions is not None
             else "k (draft tokens per round)",
             ylabel="acceptance", ylim=(0, 1.05),
             title="accepted at i / rounds that reached i" if positions is not None else "acceptance")
    right.set(xlabel="k (draft tokens per round)", ylabel="new tokens per target pass",
              title="solid: measured, dashed / dotted: i.i.d. formula")
    for ax in (left, right):
        ax.grid(alpha=0.3)
    style = [plt.Line2D([], [], color="k", marker="o"), plt.Line2D([], [], color="k", ls="--", lw=1),
             plt.Line2D([], [], color="k", ls=":", lw=1)]
    fig.suptitle(title, fontsize=10)
    legend_below(fig, handles + style, labels + ["measured", "i.i.d., per-position a", "i.i.d., accepted / drafted"],
                 ncol=min(4, len(labels) + 3))
    return fig


def plot_speedup(df, note: str = "", title: str = "Wall-clock speedup over plain decoding"):
    """Measured speedup vs k per draft source (solid), and the cost model's tokens_per_pass / (k c + v_k)
    (dashed, open markers) when df has predicted_speedup; 1 = break-even (dotted). `note` names the machine.

    Introduced in notebooks/13_speculative_decoding.ipynb.
    """
    import matplotlib.pyplot as plt

    from .style import legend_below

    fig, ax = plt.subplots(figsize=(7, 4.4))
    handles, labels = [], []
    for source, d in df.groupby("source", sort=False):
        d = d.sort_values("k")
        line = ax.plot(d.k, d.speedup, marker="o")[0]
        handles.append(line)
        labels.append(f"{source}: measured")
        if "predicted_speedup" in d:
            handles.append(ax.plot(d.k, d.predicted_speedup, marker="o", mfc="none", ls="--", lw=1,
                                   color=line.get_color())[0])
            labels.append(f"{source}: cost model")
    ax.axhline(1.0, color="k", ls=":", lw=1)
    ax.set(xlabel="k (draft tokens per round)", ylabel="speedup (plain ms per token / speculative)", title=title)
    ax.grid(alpha=0.3)
    legend_below(fig, handles, labels, ncol=2, note=note)
    return fig
