#!/usr/bin/env python
"""Paged-attention kernels side by side (chapter 14): time per call and bytes moved, against a static-cache SDPA.

Writes figures/attention_kernels.csv (one row per case, thread count and variant), figures/attention_kernels.png
and figures/attention_kernels_meta.json (CPU model, torch, the kernel in use, load average at start and end).
Variants alternate inside every repeat and the minimum is kept, but timings on a shared machine are still noisy:
run it on an idle machine for published figures. Compiled FlexAttention compiles once per shape (tens of
seconds, measured cold: inductor's cache starts in a fresh directory), so by default it runs on a few cases
only (--flex all: every case; --flex none: never).

    PYTHONPATH=. python scripts/bench_attention_kernels.py [--quick] [--threads 1 2] [--repeats 5] [--flex some]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

if "--warm-inductor-cache" not in sys.argv:  # compile times are measured cold: inductor's on-disk cache starts empty
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="kvgpt-kernels-inductor-")

import torch  # noqa: E402 -- after the cache directory is chosen

from kvgpt.benchmark.attention_kernels import VARIANTS, case_grid, measure_case  # noqa: E402
from kvgpt.benchmark.report import cpu_name  # noqa: E402
from kvgpt.flex_paged import flex_unsupported_reason  # noqa: E402
from kvgpt.paged_kernel import build_flag_sets, kernel_error, kernel_in_use  # noqa: E402
from kvgpt.plots.kernels import plot_kernel_times  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def flex_wanted(case, mode: str) -> bool:
    """--flex some: the decode cases of 16 rows over 128 and 1000 past tokens, and one mixed case per model."""
    if mode != "some":
        return mode == "all"
    return not case.ragged and case.rows == 16 and (case.past in (128, 1000) and case.chunk == 0
                                                    or case.past == 128 and case.chunk > 0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="a small grid (1 and 16 rows, 128 and 1000 past)")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--min-s", type=float, default=0.02, help="seconds of calls per timing")
    ap.add_argument("--flex", choices=["some", "all", "none"], default="some")
    ap.add_argument("--out-dir", type=Path, default=ROOT / "figures")
    ap.add_argument("--warm-inductor-cache", action="store_true",
                    help="reuse inductor's on-disk cache (flex's first calls then no longer measure compiling)")
    a = ap.parse_args()
    import pandas as pd

    t0, load_start = time.time(), os.getloadavg()
    print("kernel in use:", kernel_in_use(), "| flex:", flex_unsupported_reason() or "available", flush=True)
    rows = []
    for case in case_grid(a.quick):
        variants = [v for v in VARIANTS if v != "flex" or flex_wanted(case, a.flex)]
        for threads in a.threads:
            found = measure_case(case, threads, variants, a.repeats, a.min_s)
            rows += found
            print(case, threads, {r["variant"]: round(r["us_per_call"]) if not r["error"] else r["error"]
                                  for r in found}, flush=True)
    df = pd.DataFrame(rows)
    a.out_dir.mkdir(parents=True, exist_ok=True)
    df.round({"us_per_call": 1, "x_static": 3, "first_call_s": 3, "mask_us": 1}).to_csv(a.out_dir / "attention_kernels.csv",
                                                                          index=False)
    cpu = cpu_name()
    fig = plot_kernel_times(df, rows=16, threads=1, cpu=cpu)
    fig.savefig(a.out_dir / "attention_kernels.png", dpi=110)
    meta = {"cpu": cpu, "cpu_count": os.cpu_count(), "torch": torch.__version__, "python": platform.python_version(),
            "platform": platform.platform(), "kernel_in_use": kernel_in_use(), "kernel_error": kernel_error(),
            "cpp_flags": build_flag_sets()[0], "flex": flex_unsupported_reason() or f"compiled, cases: {a.flex}",
            "inductor_cache": "warm" if a.warm_inductor_cache else "cold (a fresh directory)",
            "threads": a.threads, "repeats": a.repeats, "min_s": a.min_s, "quick": a.quick,
            "wall_s": round(time.time() - t0, 1), "load_average_start": [round(x, 2) for x in load_start],
            "load_average_end": [round(x, 2) for x in os.getloadavg()]}
    (a.out_dir / "attention_kernels_meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    print(f"wrote {a.out_dir}/attention_kernels.csv, .png, _meta.json in {meta['wall_s']} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
