"""Pictures of speculative decoding: draft -> verify -> accept rounds, acceptance and speed against k.

matplotlib is imported inside the functions: the engine itself never needs it.
"""

from __future__ import annotations

COLORS = {"context": "#e6e6e6", "accepted": "#55a868", "rejected": "#c44e52", "unchecked": "#f2f2f2",
          "target": "#4c72b0"}


def expected_tokens_per_pass(alpha: float, k: int) -> float:
    """E[tokens per target pass] = (1 - alpha^(k+1)) / (1 - alpha), alpha = per-token acceptance (Leviathan eq. 1).

    Introduced in notebooks/13_speculative_decoding.ipynb.
    """
    return float(k + 1) if alpha >= 1 else (1 - alpha ** (k + 1)) / (1 - alpha)


def break_even_alpha(k: int, cost: float) -> float:
    """The acceptance rate at which speculation pays exactly: expected_tokens_per_pass(alpha, k) = cost.

    `cost` is one round's time in units of one plain decode step (k draft passes + the verify pass).
    Solved by bisection (the left side grows with alpha); 0 if even alpha = 0 pays, 1 if nothing does.
    Introduced in notebooks/13_speculative_decoding.ipynb.
    """
    if cost <= 1:
        return 0.0
    if cost >= k + 1:
        return 1.0
    lo, hi = 0.0, 1.0
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if expected_tokens_per_pass(mid, k) < cost else (lo, mid)
    return (lo + hi) / 2


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
            ax.add_patch(Rectangle((x, y), 0.92, 0.8, color=COLORS[kind], ec="#555555", lw=0.6))
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
    fig.legend([Patch(color=COLORS[c], ec="#555555") for c in COLORS], names, loc="lower center", ncol=5,
               fontsize=8, frameon=False)
    ax.set_title(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    return fig


def plot_acceptance(df, title: str = "Acceptance and tokens per target pass"):
    """Two panels against k, one line per draft source: acceptance rate, and tokens per target pass with
    the i.i.d. prediction (1 - a^(k+1)) / (1 - a) dashed. df columns: source, k, acceptance, tokens_per_pass.

    Introduced in notebooks/13_speculative_decoding.ipynb.
    """
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    for source, d in df.groupby("source", sort=False):
        d = d.sort_values("k")
        line = left.plot(d.k, d.acceptance, marker="o", label=source)[0]
        _ = right.plot(d.k, d.tokens_per_pass, marker="o", color=line.get_color(), label=f"{source}: measured")
        _ = right.plot(d.k, [expected_tokens_per_pass(a, k) for a, k in zip(d.acceptance, d.k)], ls="--",
                       color=line.get_color(), lw=1)
    left.set(xlabel="k (draft tokens per round)", ylabel="acceptance rate", ylim=(0, 1.05), title="accepted / drafted")
    right.set(xlabel="k (draft tokens per round)", ylabel="new tokens per target pass",
              title="dashed: (1 - a^(k+1)) / (1 - a)")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def plot_speedup(df, note: str = "", title: str = "Wall-clock speedup over plain decoding"):
    """Speedup vs k per draft source (1 = break-even, dotted). df columns: source, k, speedup (wall clock), and
    optionally cpu_speedup (CPU time, dashed), break_even (the acceptance rate needed at that k) and
    acceptance, written beside each point.

    Introduced in notebooks/13_speculative_decoding.ipynb.
    """
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for source, d in df.groupby("source", sort=False):
        d = d.sort_values("k")
        line = ax.plot(d.k, d.speedup, marker="o", label=f"{source}: wall clock")[0]
        if "cpu_speedup" in d:
            _ = ax.plot(d.k, d.cpu_speedup, marker="s", ms=3, ls="--", color=line.get_color(),
                        label=f"{source}: CPU time")
        if "break_even" in d:
            for k, s, a, b in zip(d.k, d.speedup, d.acceptance, d.break_even):
                _ = ax.annotate(f"a={a:.2f}\nneed {b:.2f}", (k, s), fontsize=6, textcoords="offset points",
                                xytext=(0, 6), ha="center")
    ax.axhline(1.0, color="k", ls=":", lw=1)
    ax.set(xlabel="k (draft tokens per round)", ylabel="speedup (plain ms per token / speculative)", title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if note:
        fig.text(0.01, 0.01, note, fontsize=7)
        fig.tight_layout(rect=(0, 0.05, 1, 1))
    else:
        fig.tight_layout()
    return fig
