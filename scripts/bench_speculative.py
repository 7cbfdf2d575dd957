#!/usr/bin/env python
"""Speculative decoding on the embedded model: speedup and acceptance vs k for both draft sources.

Writes figures/spec_speedup.csv (one row per mode, source, k: acceptance, tokens per pass, speedup, the cost
model's c, v_k and prediction with its residual), figures/spec_positions.csv (acceptance per draft position),
figures/spec_speedup.png, figures/spec_acceptance.png and figures/spec_meta.json (CPU model, threads, torch,
load average before and after). Every repeat runs plain decoding and then speculative decoding back to back,
so a busy machine slows both; timing is measured, never asserted. About 2-3 minutes.

    PYTHONPATH=. python scripts/bench_speculative.py [--repeats 3] [--max-new-tokens 190]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch

from kvgpt import Sampler, load_pretrained
from kvgpt.benchmark.report import cpu_name
from kvgpt.benchmark.speculative import speculative_sweep
from kvgpt.plots.speculative import plot_acceptance, plot_speedup

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "ROMEO:\nBut soft, what light through yonder window breaks?\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--max-new-tokens", type=int, default=190)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out-dir", type=Path, default=ROOT / "figures")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    target, tok = load_pretrained("shakespeare-char")
    draft, _ = load_pretrained("shakespeare-char-draft")
    prompt = tok.encode(PROMPT)
    drafts = {"draft model (1 layer)": draft, "n-gram lookup": "ngram"}
    t0, load_start = time.time(), [round(x, 2) for x in os.getloadavg()]
    frames, position_frames = [], []
    for mode, sampler in (("greedy", None), ("sampled t=0.8 top-k 40", Sampler(temperature=0.8, top_k=40, seed=0))):
        df, positions = speculative_sweep(target, drafts, prompt, a.max_new_tokens, sampler=sampler, repeats=a.repeats)
        df.insert(0, "mode", mode)
        positions.insert(0, "mode", mode)
        frames.append(df)
        position_frames.append(positions)
        print(df.round(3).to_string(index=False), flush=True)
    import pandas as pd

    df, positions = pd.concat(frames, ignore_index=True), pd.concat(position_frames, ignore_index=True)
    a.out_dir.mkdir(parents=True, exist_ok=True)
    df.round(4).to_csv(a.out_dir / "spec_speedup.csv", index=False)
    positions.round(4).to_csv(a.out_dir / "spec_positions.csv", index=False)
    cpu = cpu_name()
    meta = {"cpu": cpu, "threads": a.threads, "torch": torch.__version__, "python": platform.python_version(),
            "prompt": PROMPT, "max_new_tokens": a.max_new_tokens, "repeats": a.repeats,
            "wall_s": round(time.time() - t0, 1), "load_average_start": load_start,
            "load_average_end": [round(x, 2) for x in os.getloadavg()], "cpu_count": os.cpu_count(),
            "target": "shakespeare-char (4 layers)", "draft": "shakespeare-char-draft (1 layer)"}
    (a.out_dir / "spec_meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    note = (f"{cpu}, {a.threads} thread(s), torch {torch.__version__}; "
            f"load average {meta['load_average_start'][0]} -> {meta['load_average_end'][0]}")
    greedy = df[df["mode"] == "greedy"]
    plot_speedup(greedy, note=note, title="Greedy speculative decoding: speedup vs k").savefig(
        a.out_dir / "spec_speedup.png", dpi=100, metadata={"Software": None})
    label = lambda d: d.assign(source=d["mode"] + ", " + d["source"])  # noqa: E731
    plot_acceptance(label(df), label(positions)).savefig(a.out_dir / "spec_acceptance.png", dpi=100,
                                                         metadata={"Software": None})
    print(f"wrote {a.out_dir}/spec_speedup.csv|png, spec_positions.csv, spec_acceptance.png, spec_meta.json "
          f"({meta['wall_s']} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
