"""Reading the peer benchmark (peers/engines/bench.py): tables of ms/token, x floor, ratios, and one figure.

The peers themselves (ONNX Runtime, CTranslate2, llama.cpp, LLMs-from-scratch) run in .venv-peers and never in
kvgpt; this module only reads the CSV they wrote, so the chapter and the README work without them.
Introduced in notebooks/08b_engines_and_kernels.ipynb.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

REFERENCE = "kvgpt static"
SHAPES = ["model", "threads", "batch"]


def load_peers(path: str | Path) -> pd.DataFrame:
    """The measured rows of a peers CSV (skipped engines dropped; see `skipped_engines`)."""
    df = pd.read_csv(path, keep_default_na=False, na_values=[""])
    return df[df.skipped.isna()].drop(columns=["skipped"]).reset_index(drop=True)


def skipped_engines(path: str | Path) -> pd.DataFrame:
    """(model, threads, batch, engine, skipped): each engine that did not run a shape, with its reason."""
    df = pd.read_csv(path, keep_default_na=False, na_values=[""])
    return df[df.skipped.notna()][SHAPES + ["engine", "skipped"]].reset_index(drop=True)


def peer_table(df: pd.DataFrame, value: str = "decode_ms") -> pd.DataFrame:
    """One row per (model, threads, batch), one column per engine: `value` (decode ms/token, x_floor, ...)."""
    table = df.pivot_table(index=SHAPES, columns="engine", values=value, aggfunc="first")
    order = [e for e in df.engine.drop_duplicates() if e in table.columns]
    return table[order]


def peer_ratios(df: pd.DataFrame, engine: str = REFERENCE) -> pd.DataFrame:
    """Each engine's decode ms/token divided by `engine`'s on the same shape: < 1 = faster than it."""
    table = peer_table(df)
    return table.div(table[engine], axis=0)


def fastest(df: pd.DataFrame) -> pd.DataFrame:
    """Per shape: the fastest engine, its ms/token, kvgpt static's and the floor, and kvgpt static / fastest."""
    rows = []
    for key, g in df.groupby(SHAPES, sort=False):
        best = g.loc[g.decode_ms.idxmin()]
        ours = g[g.engine == REFERENCE].decode_ms
        kv = float(ours.iloc[0]) if len(ours) else float("nan")
        rows.append(dict(zip(SHAPES, key), fastest=best.engine, fastest_ms=best.decode_ms,
                         kvgpt_static_ms=kv, floor_ms=g.floor_ms.iloc[0], kvgpt_over_fastest=kv / best.decode_ms))
    return pd.DataFrame(rows)


def plot_peers(df: pd.DataFrame, cpu: str):
    """Decode ms/token of every engine, one panel per model, bars per (threads, batch), the floor dashed."""
    import matplotlib.pyplot as plt

    from ..plots.style import legend_below

    models = list(df.model.drop_duplicates())
    fig, axes = plt.subplots(1, len(models), figsize=(6.5 * len(models), 4.8), squeeze=False)
    for ax, model in zip(axes[0], models):
        table = peer_table(df[df.model == model])
        table.index = [f"{t} thr, B={b}" for _, t, b in table.index]
        table.plot.bar(ax=ax, rot=0, width=0.85, logy=True)
        floors = df[df.model == model].groupby(["threads", "batch"], sort=False).floor_ms.first().to_numpy()
        for i, floor in enumerate(floors):
            ax.hlines(floor, i - 0.45, i + 0.45, colors="black", linestyles="dashed", linewidth=1)
        ax.set_title(f"{model}: decode ms/token (dashed: bandwidth floor)", fontsize=10)
        ax.set_ylabel("ms per token (log)")
        handles, labels = ax.get_legend_handles_labels()
        ax.get_legend().remove()  # one legend for both panels, under them: never over the bars
    fig.suptitle(f"kvgpt and peer engines, fp32, greedy, identical weights — {cpu}", fontsize=10)
    legend_below(fig, handles, labels, ncol=5, fontsize=7)
    return fig
