"""The suite's report: targets as measured ratios, run metadata, and the files written to figures/.

Introduced in notebooks/08_benchmarks.ipynb.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from importlib import metadata as importlib_metadata
from pathlib import Path

import pandas as pd
import torch

from .memory import cuda_peak_bytes, peak_rss_bytes

TARGET_ENGINE = "kvgpt static"  # kvgpt's serving path: the one the targets are about
PEER = "hf dynamic"  # transformers' default generate (use_cache=True)


def bench_targets(results: dict) -> pd.DataFrame:
    """Each target as (target, condition, measured, required, met, best_possible, bounded_by); rows only for
    models that ran. best_possible is the ratio this machine allows at most under the named limit (NaN: no
    hard limit), computed from the suite's own measurements (the "limits" table).

    Introduced in notebooks/08_benchmarks.ipynb.
    """
    rows = []
    lim = results.get("limits", pd.DataFrame(columns=["model", "quantity", "value"]))

    def limit(model, quantity):
        v = lim[(lim.model == model) & (lim.quantity == quantity)].value
        return float(v.iloc[0]) if len(v) else float("nan")

    def add(target, condition, measured, required, op, best=float("nan"), why=""):
        met = bool(measured <= required) if op == "<=" else bool(measured >= required)
        rows.append({"target": target, "condition": condition, "measured": float(measured),
                     "required": f"{op} {required}", "met": met, "best_possible": float(best), "bounded_by": why})

    dec = results["decode"]
    for name, required in (("gpt2-small", 1.4), ("shakespeare-char", 4.0)):
        d = dec[dec.model == name].set_index("engine")
        if not len(d):
            continue
        cond, floor = f"{name}, B=1, N={d.new_tokens.iloc[0]}, prompt {d.prompt_len.iloc[0]}", d.floor_ms.iloc[0]
        ops, mm = limit(name, f"ops per decode step, {TARGET_ENGINE}"), limit(name, "matmul ms, decode B=1")
        for peer in (PEER, "hf static"):
            peer_ms, peer_ops = d.decode_ms_per_token[peer], limit(name, f"ops per decode step, {peer}")
            if name == "gpt2-small":  # the step's matmuls stream every weight: they cannot beat the floor
                why = (f"memory bandwidth: the step's matmuls alone take {mm:.2f} ms (floor {floor:.2f} ms) "
                       f"vs {peer} {peer_ms:.2f} ms per whole step")
                best = peer_ms / max(mm, floor)
            else:  # a 3 MB model lives in the CPU caches: framework time per op is the cost, not bytes
                per_op = d.decode_ms_per_token[TARGET_ENGINE] / ops * 1e3
                why = (f"op dispatch: {ops:.0f} ATen ops/step x {per_op:.1f} us vs {peer} {peer_ops:.0f} ops; "
                       f"{required:g}x needs <= {peer_ms * 1e3 / required / per_op:.0f} ops/step")
                best = float("nan")
            add(f"{name}: decode tokens/s, {TARGET_ENGINE} / {peer}", cond,
                d.decode_tokens_per_s[TARGET_ENGINE] / d.decode_tokens_per_s[peer], required, ">=", best, why)
        if name == "gpt2-small":
            add("gpt2-small: decode ms/token / bandwidth floor", cond, d.x_floor[TARGET_ENGINE], 1.25, "<=",
                max(mm, floor) / floor,
                f"memory bandwidth: floor {floor:.2f} ms/token; the step's matmuls alone take {mm:.2f} ms, the "
                f"rest of its {ops:.0f} ATen ops {d.decode_ms_per_token[TARGET_ENGINE] - mm:.2f} ms")
    _gpt2_targets(results, add, limit)
    mem = results["memory"]
    static = mem[mem.kind == "static"]
    add("static cache: allocations of each buffer", "whole generation", static.groupby("model").allocations.max().max(),
        1, "<=")
    add("KV bytes: measured == 2*L*B*H*S*D*bytes", "every step, static and dynamic",
        float((mem.measured_bytes == mem.formula_bytes).all()), 1, ">=")
    return pd.DataFrame(rows)


def _gpt2_targets(results: dict, add, limit) -> None:
    """The GPT-2-small targets on single steps, batches and prefill, each with its matmul or bandwidth bound."""
    steps = results["steps"][results["steps"].model == "gpt2-small"]
    if len(steps):
        p = steps.position.max()
        s = steps[steps.position == p].set_index("engine").ms
        floor = limit("gpt2-small", f"bandwidth floor ms, decode at position {p}")
        add("gpt2-small: one step, no cache / static cache", f"sequence of {p} tokens, B=1",
            s["kvgpt no cache"] / s[TARGET_ENGINE], 50, ">=", s["kvgpt no cache"] / floor,
            f"memory bandwidth: even a cached step at the floor ({floor:.2f} ms) vs the uncached "
            f"{s['kvgpt no cache']:.0f} ms")
    batch = results["batch"][(results["batch"].model == "gpt2-small") & (results["batch"].engine == TARGET_ENGINE)]
    if len(batch):
        big, by = batch.batch_size.max(), batch.set_index("batch_size")
        mm = limit("gpt2-small", f"matmul ms, decode B={big}")
        gflops = limit("gpt2-small", f"matmul GFLOP/s, decode B={big}")
        add(f"gpt2-small: decode tokens/s, batch {big} / batch 1", f"N={batch.new_tokens.iloc[0]}",
            by.speedup_vs_batch_size1[big], 8, ">=", big * by.decode_ms_per_token[1] / mm,
            f"matmul throughput: the batch-{big} step's matrix products alone take {mm:.1f} ms "
            f"({gflops:.0f} GFLOP/s)")
    pre = results["prefill"][results["prefill"].model == "gpt2-small"].set_index("engine")
    if len(pre):
        ours, n = pre.ms["kvgpt prefill (last position)"], pre.prompt_len.iloc[0]
        mm, gflops = limit("gpt2-small", f"matmul ms, prefill {n}"), limit("gpt2-small", f"matmul GFLOP/s, prefill {n}")
        for peer in ("hf forward (all positions)", "hf forward (logits_to_keep=1, as generate)"):
            add(f"gpt2-small: prefill speed, kvgpt / {peer}", f"{n} tokens, B=1", pre.ms[peer] / ours, 1.4, ">=",
                pre.ms[peer] / mm, f"matmul throughput: the prefill's matrix products alone take {mm:.0f} ms "
                f"({gflops:.0f} GFLOP/s)")


def metadata(quick: bool, bandwidth: float, weights: dict, wall_s: float) -> pd.DataFrame:
    """Machine, threads, versions and run facts as a (key, value) table (written as JSON too)."""
    def version(name):
        try:
            return importlib_metadata.version(name)
        except importlib_metadata.PackageNotFoundError:
            return None

    info = {"mode": "quick" if quick else "full", "utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "wall_s": round(wall_s, 1), "platform": platform.platform(), "cpu": cpu_name(),
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch_interop_threads": torch.get_num_interop_threads(),
            "load_average_1m_at_end": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
            "main_memory_read_GBps": round(bandwidth / 1e9, 2), "peak_rss_MB": _mb(peak_rss_bytes()),
            "cuda_peak_MB": _mb(cuda_peak_bytes()), "python": sys.version.split()[0], "dtype": "float32"}
    info.update({f"{k}_version": version(k) for k in ("torch", "transformers", "kvgpt", "numpy", "pandas")})
    info.update({f"weights[{k}]": v for k, v in weights.items()})
    return pd.DataFrame({"key": list(info), "value": [str(v) for v in info.values()]})


def write_results(results: dict, out: Path, prefix: str = "bench_", figures=None) -> list[Path]:
    """Every table as <prefix><name>.csv, the metadata as <prefix>meta.json, the figures as PNG.

    figures(results, out, prefix) -> paths draws them (default: the bench suite's kvgpt.plots.bench_suite.save_figures).
    """
    from ..plots.bench_suite import save_figures

    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for key, df in results.items():
        if key == "meta":
            path = out / f"{prefix}meta.json"
            path.write_text(json.dumps(dict(zip(df.key, df.value)), indent=2) + "\n", encoding="utf-8")
        else:
            path = out / f"{prefix}{key}.csv"
            df.to_csv(path, index=False, float_format="%.6g")
        paths.append(path)
    return paths + (figures or save_figures)(results, out, prefix)


def package_versions(*names: str) -> dict:
    """{distribution name: installed version, or None}: what the peers' and the suite's metadata record."""
    out = {}
    for name in names:
        try:
            out[name] = importlib_metadata.version(name)
        except importlib_metadata.PackageNotFoundError:
            out[name] = None
    return out


def cpu_name() -> str:
    """The CPU model as /proc/cpuinfo names it (what every benchmark figure records beside its numbers)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _mb(n):
    return None if n is None else round(n / 2**20, 1)
