#!/usr/bin/env python
"""Chapter 16's measurements: long-text loss per context policy (StreamingLLM's figure) and decode speed.

Over --chars held-out characters (data/shakespeare_char/val.txt, from scripts/prepare_shakespeare.py), teacher-
forced one token at a time through a cache of block_size (256) slots:
  (a) shakespeare-char (GPT-2, learned positions), slide-and-re-prefill of the last 128 (chapter 13)
  (b) shakespeare-char-llama (RoPE), plain window: the last 256, no sinks
  (c) shakespeare-char-llama, attention sinks: the first 4 + the last 252
  (d) shakespeare-char-llama, slide-and-re-prefill of the last 128
and (b), (c) again with a 64-slot cache. Plus batch-1 greedy decode tokens/s of both models, round-robin.
Writes figures/modern_losses.csv (binned curves), modern_policies.csv (one row per run: losses and cost),
modern_speed.csv, modern_losses.png and modern_meta.json (CPU, threads, torch, load average). Timing is measured,
never asserted; run it on an idle machine.

    PYTHONPATH=. python scripts/bench_modern.py [--chars 12288] [--start 20000] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import pandas as pd
import torch

from kvgpt import load_pretrained
from kvgpt.benchmark.report import cpu_name
from kvgpt.benchmark.streaming import binned, decode_speed, stream_losses
from kvgpt.plots.modern import plot_stream_losses

ROOT = Path(__file__).resolve().parents[1]
RUNS = [  # label, model, policy, window, sinks
    ("(a) GPT-2, slide + re-prefill 128", "shakespeare-char", "slide", 128, 0),
    ("(b) RoPE, window 256, no sinks", "shakespeare-char-llama", "window", 256, 0),
    ("(c) RoPE, 4 sinks + window 252", "shakespeare-char-llama", "sinks", 252, 4),
    ("(d) RoPE, slide + re-prefill 128", "shakespeare-char-llama", "slide", 128, 0),
    ("(b64) RoPE, window 64, no sinks", "shakespeare-char-llama", "window", 64, 0),
    ("(c64) RoPE, 4 sinks + window 60", "shakespeare-char-llama", "sinks", 60, 4),
]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--chars", type=int, default=12288, help="held-out characters (>= 10,000 for the issue)")
    ap.add_argument("--start", type=int, default=20000, help="offset into val.txt (past Macbeth's front matter)")
    ap.add_argument("--bin", type=int, default=512, help="predictions per point of the curves")
    ap.add_argument("--repeats", type=int, default=5, help="decode-speed runs per model (median)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out-dir", type=Path, default=ROOT / "figures")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    text = (ROOT / "data" / "shakespeare_char" / "val.txt").read_text()[a.start:a.start + a.chars]
    models = {name: load_pretrained(name) for name in ("shakespeare-char", "shakespeare-char-llama")}
    tok = models["shakespeare-char"][1]
    assert list(tok.chars) == list(models["shakespeare-char-llama"][1].chars)  # one vocabulary: one text
    ids = torch.tensor(tok.encode(text))
    t0, curves, rows = time.time(), [], []
    block = models["shakespeare-char"][0].config.block_size
    for label, name, policy, window, sinks in RUNS:
        r = stream_losses(models[name][0], ids, policy, window, sinks)
        losses, n = r["losses"], len(r["losses"])
        curves += [{"label": label, "bin": i, "loss": round(v, 4)} for i, v in enumerate(binned(losses, a.bin))]
        rows.append({"run": label, "model": name, "policy": policy, "sinks": sinks, "window": window,
                     "predictions": n, "loss": round(losses.mean().item(), 4),
                     "loss_after_block": round(losses[block:].mean().item(), 4),
                     "model_rows": r["rows"], "rows_per_token": round(r["rows"] / n, 3), "slides": r["slides"],
                     "ms_per_token": round(1e3 * r["seconds"] / n, 3)})
        print(rows[-1], flush=True)
    prompt = tok.encode("ROMEO:\n")
    speed = decode_speed({k: m for k, (m, _) in models.items()}, prompt, block - len(prompt), a.repeats)
    speed_df = pd.DataFrame([{"model": k, "decode_tokens_per_s": round(v, 1),
                              "parameters": sum(p.numel() for p in models[k][0].parameters()),
                              "kv_heads": models[k][0].config.kv_heads} for k, v in speed.items()])
    print(speed_df.to_string(index=False))
    a.out_dir.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(curves).to_csv(a.out_dir / "modern_losses.csv", index=False)
    pd.DataFrame(rows).to_csv(a.out_dir / "modern_policies.csv", index=False)
    speed_df.to_csv(a.out_dir / "modern_speed.csv", index=False)
    cpu = cpu_name()
    meta = {"cpu": cpu, "threads": a.threads, "torch": torch.__version__, "python": platform.python_version(),
            "text": f"val.txt[{a.start}:{a.start + a.chars}] (held-out plays)", "chars": len(text), "bin": a.bin,
            "decode": f"greedy, batch 1, static cache, prompt 'ROMEO:\\n' + {block - len(prompt)} tokens, "
                      f"median of {a.repeats}", "wall_s": round(time.time() - t0, 1),
            "load_average_end": [round(x, 2) for x in os.getloadavg()]}
    (a.out_dir / "modern_meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    note = f"{len(text):,} held-out chars; {cpu}, {a.threads} thread(s); load average {meta['load_average_end'][0]}"
    fig = plot_stream_losses(pd.DataFrame(curves), a.bin, note, block, baseline=RUNS[3][0])
    fig.savefig(a.out_dir / "modern_losses.png", dpi=100, metadata={"Software": None})
    print(f"wrote {a.out_dir}/modern_losses.csv|png, modern_policies.csv, modern_speed.csv, modern_meta.json "
          f"({meta['wall_s']} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
