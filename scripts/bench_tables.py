"""Print the README's benchmark tables (Markdown) from the CSV files `make bench` wrote.

    python scripts/bench_tables.py [figures/]

The README pastes this output, so every number in its benchmark section comes from figures/bench_*.csv.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd

NAMES = {"kvgpt static": "kvgpt static cache", "kvgpt dynamic": "kvgpt dynamic cache", "kvgpt no cache": "kvgpt no cache",
         "hf dynamic": "transformers dynamic cache", "hf static": "transformers static cache",
         "hf no cache": "transformers no cache"}


def decode_table(d: pd.DataFrame) -> str:
    lines = ["| model | engine | ms/token | tokens/s | vs transformers (dynamic cache) | × bandwidth floor |",
             "|---|---|---|---|---|---|"]
    for model, m in d.groupby("model", sort=False):
        first = f"{model} ({m.new_tokens.iloc[0]} new)"
        for _, r in m.sort_values("decode_ms_per_token").iterrows():
            floor = f"{r.x_floor:.2f}" if model == "gpt2-small" else "—"
            lines.append(f"| {first} | {NAMES[r.engine]} | {r.decode_ms_per_token:.3f} | {r.decode_tokens_per_s:.1f} | "
                         f"{r.speedup_vs_hf_dynamic:.2f}× | {floor} |")
            first = ""
    return "\n".join(lines)


def targets_table(t: pd.DataFrame) -> str:
    lines = ["| target | condition | measured | required | met | best this machine allows | bounded by |",
             "|---|---|---|---|---|---|---|"]
    for _, r in t.iterrows():
        best = "—" if pd.isna(r.best_possible) else f"{r.best_possible:.2f}"
        why = "" if pd.isna(r.bounded_by) else r.bounded_by
        lines.append(f"| {r.target} | {r.condition} | {r.measured:.3g} | {r.required} | {'yes' if r.met else '**no**'} | "
                     f"{best} | {why} |")
    return "\n".join(lines)


def limits_table(lim: pd.DataFrame) -> str:
    lines = ["| model | quantity | value |", "|---|---|---|"]
    for _, r in lim.iterrows():
        lines.append(f"| {r.model} | {r.quantity} | {r.value:.4g} {r.unit} |")
    return "\n".join(lines)


def main(folder: str = "figures") -> None:
    out = Path(folder)
    meta = json.loads((out / "bench_meta.json").read_text())
    print(f"<!-- {meta['mode']} run {meta['utc']}, {meta['wall_s']} s, {meta['torch_threads']} threads, torch "
          f"{meta['torch_version']}, transformers {meta['transformers_version']}, main-memory read "
          f"{meta['main_memory_read_GBps']} GB/s, load {meta['load_average_1m_at_end']} -->\n")
    print(decode_table(pd.read_csv(out / "bench_decode.csv")), end="\n\n")
    print(targets_table(pd.read_csv(out / "bench_targets.csv")), end="\n\n")
    print(limits_table(pd.read_csv(out / "bench_limits.csv")))


if __name__ == "__main__":
    main(*sys.argv[1:])
