"""The benchmark suite: kvgpt against transformers on identical weights, as tables, CSVs and figures.

    python -m kvgpt bench [--quick] [--out figures/] [--threads N]

Two model shapes (the embedded Shakespeare character model and GPT-2-small with random weights),
greedy, same prompts; tokens must be identical across every engine or the suite raises.
`run_suite(quick=True)` returns the same tables as DataFrames (the chapter calls it).
Introduced in notebooks/08_benchmarks.ipynb.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import pandas as pd
import torch

from ..config import ModelConfig
from ..model import MiniGPTInferenceModel
from .bounds import model_limits
from .engines import kvgpt_engines
from .latency import prefill_latency, step_latency
from .memory import decode_floor_ms, kv_formula_bytes, kv_memory_profile, measure_bandwidth, weight_bytes
from .peers import hf_engines, hf_model
from .report import bench_targets, metadata, write_results
from .throughput import ThroughputBenchmark, new_tokens_sweep

GPT2_SMALL = ModelConfig(vocab_size=50257, n_layers=12, n_heads=12, d_model=768, block_size=1024)
CHAR_FALLBACK = ModelConfig(vocab_size=84, n_layers=4, n_heads=4, d_model=128, block_size=256)
UNCACHED = ("kvgpt no cache", "hf no cache")

# What each mode runs, per model. new_tokens is clipped to block_size - prompt_len; uncached engines
# (quadratic) only run up to uncached_max new tokens; positions are sequence lengths for single steps.
PLANS = {
    "quick": {"repeats": 2, "prompt_len": 16, "bandwidth_bytes": 256 * 2**20, "memory_new_tokens": 8,
              "shakespeare-char": {"new_tokens": (64,), "batch_new_tokens": 32, "batches": (1, 4), "uncached_max": 64,
                                   "positions": (64, 256), "prefill_len": 256},
              "gpt2-small": {"new_tokens": (16,), "batch_new_tokens": 8, "batches": (1, 4), "uncached_max": 16,
                             "positions": (128,), "prefill_len": 128}},
    "full": {"repeats": 3, "prompt_len": 16, "bandwidth_bytes": 1024 * 2**20, "memory_new_tokens": 24,
             "shakespeare-char": {"new_tokens": (64, 128, 256), "batch_new_tokens": 128, "batches": (1, 2, 4, 8, 16),
                                  "uncached_max": 256, "positions": (16, 64, 128, 256), "prefill_len": 256},
             "gpt2-small": {"new_tokens": (64, 128, 256, 512, 1024), "batch_new_tokens": 64,
                            "batches": (1, 2, 4, 8, 16), "uncached_max": 128, "positions": (64, 256, 512, 1024),
                            "prefill_len": 1024}},
}


def build_model(name: str, seed: int = 0) -> tuple[MiniGPTInferenceModel, str]:
    """The model for a benchmark shape -> (model in eval mode, where its weights came from)."""
    if name == "gpt2-small":
        torch.manual_seed(seed)
        return MiniGPTInferenceModel(GPT2_SMALL).eval(), "random, GPT-2 init (std 0.02)"
    if name == "shakespeare-char":
        from ..pretrained import embedded_names, load_pretrained

        if name in embedded_names():
            return load_pretrained(name)[0], "embedded trained weights"
        torch.manual_seed(seed)
        return MiniGPTInferenceModel(CHAR_FALLBACK).eval(), "random, GPT-2 init (embedded model missing)"
    raise ValueError(f"model={name!r}: must be 'shakespeare-char' or 'gpt2-small'")


def run_suite(quick: bool = True, models=("shakespeare-char", "gpt2-small"), threads: int | None = None,
              progress=None, plan: dict | None = None) -> dict[str, pd.DataFrame]:
    """Run every benchmark -> {"decode", "new_tokens", "batch", "steps", "prefill", "memory", "limits", "targets",
    "meta"}.

    models: shape names, or a dict {name: model} to benchmark your own (then give a `plan` with an
    entry per name, shaped like PLANS["quick"]). threads: torch.set_num_threads for the run (default:
    the current count), restored afterwards. progress: a callable taking one line of text, or None.

    Introduced in notebooks/08_benchmarks.ipynb.
    """
    plan = plan or PLANS["quick" if quick else "full"]
    old_threads, started = torch.get_num_threads(), time.perf_counter()
    torch.set_num_threads(threads or old_threads)
    say = _Progress(progress, started, phases=1 + _PHASES_PER_MODEL * len(models)) if progress else None
    try:
        say and say.phase("measuring memory bandwidth")
        bandwidth = measure_bandwidth(plan["bandwidth_bytes"])  # main memory: a tensor beyond every cache
        parts: dict[str, list] = {k: [] for k in ("decode", "new_tokens", "batch", "steps", "prefill", "memory",
                                                  "limits")}
        notes = {}
        for name in models:
            model, notes[name] = (models[name], "given") if isinstance(models, dict) else build_model(name)
            for key, df in _run_model(name, model, plan, say).items():
                parts[key].append(df.assign(model=name))
            del model
        results = {k: pd.concat(v, ignore_index=True) for k, v in parts.items()}
        results["targets"] = bench_targets(results)
        results["meta"] = metadata(quick, bandwidth, notes, time.perf_counter() - started)
        return results
    finally:
        torch.set_num_threads(old_threads)


_PHASES_PER_MODEL = 6  # export + new-tokens sweep, batch sweep, single steps, prefill, KV memory, limits


class _Progress:
    """Progress lines for stderr: `[bench  312.5s ####------ 7/13] what runs now` (phases of the plan begun)."""

    def __init__(self, out, started: float, phases: int, width: int = 10):
        self.out, self.started, self.phases, self.width, self.begun = out, started, phases, width, 0

    def phase(self, text: str) -> None:
        self.begun = min(self.begun + 1, self.phases)
        self(text)

    def __call__(self, text: str) -> None:
        filled = round(self.width * self.begun / self.phases)
        bar = "#" * filled + "-" * (self.width - filled)
        self.out(f"[bench {time.perf_counter() - self.started:6.1f}s {bar} {self.begun}/{self.phases}] {text}")


def _run_model(name: str, model, plan: dict, say) -> dict[str, pd.DataFrame]:
    mp, reps, t = plan[name], plan["repeats"], plan["prompt_len"]
    # The floor's bandwidth: read as many bytes as a step reads (weights + a full cache), again and again, as
    # decoding does; a model that fits in the CPU caches is read from them, in decoding and here alike.
    working_set = weight_bytes(model) + kv_formula_bytes(model.config, 1, model.config.block_size)
    bandwidth = measure_bandwidth(working_set, repeats=10)
    cap = model.config.block_size - t
    say and say.phase(f"{name}: exporting the weights to transformers")
    hf = hf_model(model)
    engines = {**kvgpt_engines(model), **hf_engines(hf)}
    cached = {k: e for k, e in engines.items() if k not in UNCACHED}
    new_tokens = tuple(min(n, cap) for n in mp["new_tokens"])
    limits = {k: mp["uncached_max"] for k in UNCACHED}
    out = {"new_tokens": new_tokens_sweep(engines, model.config.vocab_size, new_tokens, t, limits=limits,
                                          repeats=reps, progress=say, label=name)}
    out["decode"] = _decode_table(model, out["new_tokens"], t, bandwidth)
    say and say.phase(f"{name}: throughput across batch sizes {mp['batches']}")
    out["batch"] = ThroughputBenchmark(cached, model.config.vocab_size, t, mp["batch_new_tokens"], repeats=reps,
                                       progress=say).run(mp["batches"], label=name)
    say and say.phase(f"{name}: single steps at positions {mp['positions']}")
    out["steps"] = step_latency(model, mp["positions"], repeats=reps)
    say and say.phase(f"{name}: prefill of {mp['prefill_len']} tokens")
    out["prefill"] = prefill_latency(model, hf, mp["prefill_len"], repeats=reps)
    say and say.phase(f"{name}: KV-cache memory")
    n = plan["memory_new_tokens"]
    out["memory"] = pd.concat([kv_memory_profile(model, kind, 2, t, n) for kind in ("static", "dynamic")],
                              ignore_index=True)
    say and say.phase(f"{name}: matmul throughput and ops per decode step")
    out["limits"] = model_limits(model, engines, mp, working_set, bandwidth)
    del hf
    return out


def _decode_table(model, sweep: pd.DataFrame, prompt_len: int, bandwidth: float) -> pd.DataFrame:
    """Batch-1 decode of every engine at the longest N that all engines ran, against the bandwidth floor."""
    counts = sweep.groupby("new_tokens").engine.nunique()
    n = counts[counts == counts.max()].index.max()
    df = sweep[sweep.new_tokens == n]
    floor = decode_floor_ms(model, prompt_len + n / 2, bandwidth)  # cache length halfway through the decode
    hf_tps = df.set_index("engine").decode_tokens_per_s.get("hf dynamic", float("nan"))
    return df.assign(weight_bytes=weight_bytes(model), floor_ms=floor, x_floor=df.decode_ms_per_token / floor,
                     speedup_vs_hf_dynamic=df.decode_tokens_per_s / hf_tps)


def main(argv: list[str] | None = None) -> int:
    """`python -m kvgpt bench [--quick] [--out DIR] [--threads N]`: run, print the tables, write CSV/PNG/JSON."""
    parser = argparse.ArgumentParser(prog="kvgpt bench", description="Benchmark kvgpt against transformers.")
    parser.add_argument("--quick", action="store_true", help="small sweeps, about a minute (CI, chapter 08)")
    parser.add_argument("--out", default="figures", help="directory for CSV, PNG and meta JSON (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's current count)")
    parser.add_argument("--models", nargs="+", default=["shakespeare-char", "gpt2-small"],
                        choices=["shakespeare-char", "gpt2-small"], help="which shapes to run")
    args = parser.parse_args(argv)
    if args.threads is not None and args.threads < 1:
        parser.error(f"--threads {args.threads}: must be >= 1")
    results = run_suite(args.quick, tuple(args.models), args.threads,
                        progress=lambda line: print(line, file=sys.stderr, flush=True))
    with pd.option_context("display.width", 160, "display.max_columns", 30, "display.precision", 3):
        for key in ("decode", "prefill", "steps", "batch", "limits", "targets"):
            print(f"\n== {key} ==\n{results[key].to_string(index=False)}")
    prefix = "bench_quick_" if args.quick else "bench_"
    for path in write_results(results, Path(args.out), prefix):
        print(f"wrote {path}", file=sys.stderr)
    return 0
