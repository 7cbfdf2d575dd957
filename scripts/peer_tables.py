"""Print the README's peer tables (Markdown) from what `make peers-bench` wrote, and draw figures/peers.png.

    python scripts/peer_tables.py [figures/]

Every number in the README's "Against the engines people deploy" section comes from figures/peers_results.csv
(and peers_mkl_generic_results.csv for MKL's vendor-neutral path); the machine is named from peers_meta.json.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd

from kvgpt.benchmark.peer_report import fastest, load_peers, peer_table, plot_peers

PEERS = ("onnxruntime", "ctranslate2", "llama.cpp", "llms-from-scratch", "transformers")
OURS = ("kvgpt static", "kvgpt static, oneDNN", "kvgpt compiled", "kvgpt compiled (AOT)")


def ms_table(df: pd.DataFrame) -> str:
    table = peer_table(df)
    cols = [c for c in OURS + PEERS if c in table.columns]
    lines = ["| model | threads | B | floor | " + " | ".join(cols) + " |", "|---" * (4 + len(cols)) + "|"]
    floors = df.groupby(["model", "threads", "batch"], sort=False).floor_ms.first()
    for key, row in table[cols].iterrows():
        best = row.min()
        cells = [("**%.3g**" if v == best else "%.3g") % v if pd.notna(v) else "–" for v in row]
        lines.append(f"| {key[0]} | {key[1]} | {key[2]} | {floors[key]:.3g} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def ratio_table(df: pd.DataFrame) -> str:
    """kvgpt's fastest engine per shape against each peer: peer ms / kvgpt ms (> 1: kvgpt faster)."""
    table = peer_table(df)
    ours = [c for c in OURS if c in table.columns]
    peers = [c for c in PEERS if c in table.columns]
    lines = ["| model | threads | B | kvgpt's best (ms, × floor) | " + " | ".join(f"vs {p}" for p in peers) + " |",
             "|---" * (4 + len(peers)) + "|"]
    floors = df.groupby(["model", "threads", "batch"], sort=False).floor_ms.first()
    for key, row in table.iterrows():
        best = row[ours].idxmin()
        ms = row[best]
        cells = ["%.2f×" % (row[p] / ms) if pd.notna(row[p]) else "–" for p in peers]
        lines.append(f"| {key[0]} | {key[1]} | {key[2]} | {best}: {ms:.3g} ({ms / floors[key]:.2f}×) | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines)


def generic_table(generic: pd.DataFrame, native: pd.DataFrame) -> str:
    lines = ["| threads | B | MKL, Intel path (main run) | MKL, generic path | oneDNN, generic path | floor (generic run) |",
             "|---" * 6 + "|"]
    for (threads, batch), g in generic.groupby(["threads", "batch"]):
        n = native[(native.model == "gpt2-small") & (native.threads == threads) & (native.batch == batch)]
        e, nat = g.set_index("engine").decode_ms, n.set_index("engine").decode_ms
        floor, nat_floor = g.floor_ms.iloc[0], n.floor_ms.iloc[0]  # each run's own floor, measured beside it
        lines.append(f"| {threads} | {batch} | {nat.get('kvgpt static', float('nan')):.1f} "
                     f"({nat.get('kvgpt static', float('nan')) / nat_floor:.2f}×) | {e['kvgpt static']:.1f} "
                     f"({e['kvgpt static'] / floor:.2f}×) | {e['kvgpt static, oneDNN']:.1f} "
                     f"({e['kvgpt static, oneDNN'] / floor:.2f}×) | {floor:.1f} |")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    figures = Path(argv[0] if argv else "figures")
    meta = json.loads((figures / "peers_meta.json").read_text())
    df = load_peers(figures / "peers_results.csv")
    print(f"<!-- peers run {meta['utc']}, {meta['wall_s']} s, {meta['cpu']}, torch {meta['torch']}, "
          f"load {meta['load_average_1m_at_end']} -->\n")
    print(ms_table(df), "\n")
    print(ratio_table(df), "\n")
    print(fastest(df).round(3).to_string(index=False), "\n")
    generic_path = figures / "peers_mkl_generic_results.csv"
    if generic_path.is_file():
        print(generic_table(load_peers(generic_path), df), "\n")
    print("mismatches:", df[~df.tokens_equal.astype(bool)][["model", "threads", "batch", "engine", "first_mismatch"]]
          .to_string(index=False) if (~df.tokens_equal.astype(bool)).any() else "none")
    fig = plot_peers(df, meta["cpu"])
    fig.savefig(figures / "peers.png", dpi=100, metadata={"Software": None})
    print(f"wrote {figures / 'peers.png'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
