"""The serving benchmark: static vs continuous batching vs vLLM, paged KV memory, prefix caching.

    python -m kvgpt serve-bench [--quick] [--out figures/] [--threads 1] [--vllm figures/serve_vllm.json]

Same weights and requests for every engine (kvgpt.benchmark.workload.serve_workload), greedy, no EOS; every
engine's tokens are compared with static batching's (Part I, itself checked against solo generation in
tests) and a mismatch is reported in the table, never hidden. vLLM's numbers come from peers/vllm/bench.py
(run in .venv-vllm: `make vllm-bench`) and are read back from JSON. Writes figures/serve_*.csv|png|json.
Introduced in notebooks/11_continuous_batching.ipynb.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import pandas as pd
import torch

from .engines import TokenMismatchError, check_identical
from ..linear import recommended_threads, set_linear_backend
from .report import metadata
from .serving import continuous_batching, ragged_tensor, static_batching, summarize
from .serve_online import decode_step_cost, online_sweep
from .serving_report import engine_memory_trace, kv_memory, prefix_workload, step_overhead
from .workload import serve_workload

ENGINE = {"block_size": 16, "max_num_seqs": 16, "max_num_batched_tokens": 256}  # vLLM's names, kvgpt's values
MODELS = ("shakespeare-char", "gpt2-small")
NAMES = ("static batching (Part I)", "continuous batching (kvgpt LLMEngine)", "vLLM")


def make_engine(model, requests, enable_prefix_caching: bool = False):
    """kvgpt's LLMEngine with ENGINE's settings and a pool for max_num_seqs of the workload's longest requests."""
    from ..serving import LLMEngine

    longest = max(len(r.prompt) + r.max_new_tokens for r in requests)
    blocks = ENGINE["max_num_seqs"] * -(-longest // ENGINE["block_size"])
    return LLMEngine(model, num_blocks=blocks, enable_prefix_caching=enable_prefix_caching, **ENGINE)


def same_tokens(ref: list, got: list, context: str) -> tuple[bool, str]:
    """(identical?, check_identical's message) for ragged token lists."""
    try:
        check_identical({"static batching": ragged_tensor(ref), "other": ragged_tensor(got)}, context)
    except TokenMismatchError as e:
        print(f"serve-bench: TOKENS DIFFER: {e}", file=sys.stderr)
        return False, str(e)
    return True, ""


def serve_model(name: str, model, mode: str, peer: dict | None) -> dict:
    """Throughput/latency rows of the three engines, the memory tables and the engine's step overheads."""
    requests = serve_workload(name, model.config, mode)
    static_batching(model, requests[:4], ENGINE["max_num_seqs"])  # warm-up: code paths, allocator
    continuous_batching(make_engine(model, requests), requests[:4])
    runs = {NAMES[0]: static_batching(model, requests, ENGINE["max_num_seqs"]),
            NAMES[1]: continuous_batching(make_engine(model, requests), requests)}
    rows = []
    for engine, tl in runs.items():
        rows.append({"engine": engine, **summarize(tl), **dict(zip(("tokens_identical", "mismatch"),
                                                              same_tokens(runs[NAMES[0]].tokens, tl.tokens, name)))})
    if peer is not None:
        rows.append({"engine": NAMES[2], **peer["summary"], **dict(zip(("tokens_identical", "mismatch"),
                     same_tokens(runs[NAMES[0]].tokens, peer["tokens"], f"{name} vLLM")))})
    table = pd.DataFrame(rows).assign(model=name)
    table["x_static"] = table.tokens_per_s / table.tokens_per_s.iloc[0]
    trace = pd.DataFrame(engine_memory_trace(make_engine(model, requests), requests)).assign(model=name)
    memory = kv_memory(model, requests, ENGINE["block_size"], ENGINE["max_num_seqs"])
    busy = trace[trace.allocated_bytes > 0]
    memory.append({"layout": f"paged, LLMEngine run ({ENGINE['max_num_seqs']} seats, mean per step)",
                   "requests": len(requests),
                   "reserved_bytes": busy.allocated_bytes.mean(), "used_bytes": busy.used_bytes.mean(),
                   "utilization": statistics.fmean(busy.used_bytes / busy.allocated_bytes),
                   "bytes_per_slot": memory[0]["bytes_per_slot"]})
    overhead = {**step_overhead(lambda m: make_engine(m, requests), model, requests), **decode_step_cost(model)}
    online = online_sweep(name, model, requests, mode, lambda: make_engine(model, requests), ENGINE["max_num_seqs"],
                          (peer or {}).get("online"), same_tokens)
    return {"throughput": table, "memory": pd.DataFrame(memory).assign(model=name), "memory_trace": trace,
            "overhead": pd.DataFrame([overhead]).assign(model=name), "online": online, "gantt": runs[NAMES[1]].steps}


def serve_prefix(model, quick: bool, peer: dict | None) -> pd.DataFrame:
    """LLMEngine on the shared-system-prompt workload with and without prefix caching (and vLLM's, if run)."""
    requests = prefix_workload(quick)
    continuous_batching(make_engine(model, requests, True), requests[:2])  # warm-up
    rows, ref = [], None
    for cached in (False, True):
        engine = make_engine(model, requests, cached)
        tl = continuous_batching(engine, requests)
        ref = ref or tl.tokens
        s = engine.stats
        rows.append({"engine": "kvgpt LLMEngine", "prefix_caching": cached, "prefill_token_rows": s.prefill_tokens,
                     "prefix_hit_tokens": s.prefix_hit_tokens, "prompt_tokens": sum(len(r.prompt) for r in requests),
                     "tokens_identical": same_tokens(ref, tl.tokens, "prefix")[0], **summarize(tl)})
    for key, run in (peer or {}).items():
        rows.append({"engine": "vLLM", "prefix_caching": key == "on", "tokens_identical":
                     same_tokens(ref, run["tokens"], "prefix vLLM")[0], **run["summary"]})
    return pd.DataFrame(rows)


def serve_targets(results: dict) -> pd.DataFrame:
    """The issue's goals as measured ratios, each with what bounds it (measured in the same run)."""
    rows, tp, oh = [], results["throughput"], results["overhead"].set_index("model")
    for name in tp.model.unique():
        t = tp[tp.model == name].set_index("engine").tokens_per_s
        o = oh.loc[name]
        why = (f"the model call: {o.model_ms_per_step:.1f} ms/step vs the engine's Python {o.engine_ms_per_step:.2f} "
               f"ms/step; the model computes {o.computed_per_real:.2f}x the real token-rows")
        rows.append({"target": f"{name}: paged decode step / static-cache step ({o.rows:.0f} rows x {o.past:.0f} past)",
                     "measured": o.paged_over_static, "required": "<= 1.15", "met": bool(o.paged_over_static <= 1.15),
                     "bounded_by": f"static {o.static_ms:.2f} ms, paged {o.paged_ms:.2f} ms (the gather it replaced: "
                                   f"{o.gather_ms:.2f} ms)"})
        c = tp[tp.model == name].set_index("engine").tokens_per_cpu_s
        for other in [e for e in (NAMES[0], NAMES[2]) if e in c]:
            rows.append({"target": f"{name}: kvgpt LLMEngine / {other} tokens per CPU-second",
                         "measured": c[NAMES[1]] / c[other], "required": "(context)",
                         "met": bool(c[NAMES[1]] >= c[other]), "bounded_by": "CPU time of the serving processes"})
        rows.append({"target": f"{name}: continuous / static tokens/s", "measured": t[NAMES[1]] / t[NAMES[0]],
                     "required": ">= 1.5", "met": bool(t[NAMES[1]] / t[NAMES[0]] >= 1.5), "bounded_by": why})
        if NAMES[2] in t:
            rows.append({"target": f"{name}: kvgpt LLMEngine / vLLM tokens/s", "measured": t[NAMES[1]] / t[NAMES[2]],
                         "required": ">= 1", "met": bool(t[NAMES[1]] >= t[NAMES[2]]), "bounded_by": why})
            rows.append({"target": f"{name}: best kvgpt engine / vLLM tokens/s",
                         "measured": t[list(NAMES[:2])].max() / t[NAMES[2]], "required": ">= 1",
                         "met": bool(t[list(NAMES[:2])].max() >= t[NAMES[2]]), "bounded_by": ""})
    rows += online_targets(results["online"])
    return pd.DataFrame(rows)


def online_targets(online: pd.DataFrame) -> list[dict]:
    """Where static batching's queue builds (its p99 TTFT at least twice its value at the lowest rate), continuous
    batching's p99 TTFT is lower: one row per such rate and model."""
    rows = []
    for name, d in online.groupby("model", sort=False):
        t = d.pivot(index="rate", columns="engine", values="ttft_p99_ms")
        static, cont = t[NAMES[0]], t[NAMES[1]]
        for rate in [r for r in t.index if static[r] >= 2 * static.iloc[0]]:
            rows.append({"target": f"{name} @ {rate:g} req/s: continuous / static p99 TTFT", "required": "< 1",
                         "measured": cont[rate] / static[rate], "met": bool(cont[rate] < static[rate]),
                         "bounded_by": f"static batching's queue: p99 TTFT {static[rate]:.0f} ms vs {static.iloc[0]:.0f} "
                                       f"ms at {t.index[0]:g} req/s"})
    return rows


def read_peer(path: Path, mode: str) -> dict | None:
    """vLLM's results from peers/vllm/bench.py, or None (with the reason on stderr) if absent or another mode."""
    if not path.is_file():
        print(f"serve-bench: no {path}: vLLM not compared (run `make vllm-bench` first)", file=sys.stderr)
        return None
    data = json.loads(path.read_text(encoding="utf-8"))
    if data.get("mode") != mode:
        print(f"serve-bench: {path} is a {data.get('mode')!r} run, not {mode!r}: vLLM not compared", file=sys.stderr)
        return None
    return data


def run_serve_bench(quick: bool = True, models=MODELS, threads: int | None = 1, vllm_json: Path | None = None,
                    progress=None) -> dict:
    """Every serving table -> {"throughput", "memory", "memory_trace", "overhead", "prefix", "targets", "meta"}.

    threads: torch threads (None: kvgpt.linear.recommended_threads per model: 1 for the embedded model, every core
    for GPT-2-small; vLLM's worker is bound to the same count by peers/vllm/bench.py).
    Introduced in notebooks/11_continuous_batching.ipynb.
    """
    from .suite import build_model

    mode, started, old = ("quick" if quick else "full"), time.perf_counter(), torch.get_num_threads()
    peer = read_peer(vllm_json, mode) if vllm_json is not None else None
    try:
        parts, notes = {}, {}
        for name in models:
            progress and progress(f"serve-bench {time.perf_counter() - started:6.1f}s: {name}")
            model, notes[name] = (models[name], "given") if isinstance(models, dict) else build_model(name)
            torch.set_num_threads(threads or recommended_threads(model))
            # the matrix kernels kvgpt serve picks (kvgpt/serving/server.py): oneDNN where MKL is generic (AMD)
            backend = set_linear_backend(model, "auto", batch_hint=min(ENGINE["max_num_seqs"], 8))
            out = serve_model(name, model, mode, (peer or {}).get("models", {}).get(name))
            out["throughput"]["threads"], out["throughput"]["linear_backend"] = torch.get_num_threads(), backend
            for key in ("throughput", "memory", "memory_trace", "overhead", "online"):
                parts.setdefault(key, []).append(out[key])
            parts.setdefault("gantt", []).append(pd.DataFrame(
                [{"model": name, "step": s, "request": r} for s, rs in enumerate(out["gantt"]) for r in rs]))
        results = {k: pd.concat(v, ignore_index=True) for k, v in parts.items()}
        if not isinstance(models, dict) and "shakespeare-char" in models:
            progress and progress(f"serve-bench {time.perf_counter() - started:6.1f}s: prefix caching")
            torch.set_num_threads(threads or 1)
            results["prefix"] = serve_prefix(build_model("shakespeare-char")[0], quick, (peer or {}).get("prefix"))
        results["targets"] = serve_targets(results)
        results["meta"] = _meta(quick, notes, started, peer)
        return results
    finally:
        torch.set_num_threads(old)


def _meta(quick: bool, notes: dict, started: float, peer: dict | None) -> pd.DataFrame:
    meta = metadata(quick, float("nan"), notes, time.perf_counter() - started)
    extra = {"engine_settings": ENGINE, "vllm": None if peer is None else {
        k: peer.get(k) for k in ("versions", "threads", "engine_args", "VLLM_CPU_OMP_THREADS_BIND", "command")}}
    return pd.concat([meta, pd.DataFrame({"key": list(extra), "value": [json.dumps(v) for v in extra.values()]})],
                     ignore_index=True)


def main(argv: list[str] | None = None) -> int:
    """`python -m kvgpt serve-bench [--quick] [--out DIR] [--threads N] [--vllm JSON]`."""
    from .report import write_results

    parser = argparse.ArgumentParser(
        prog="kvgpt serve-bench",
        description="Serving benchmarks (chapters 10-11): static batching, kvgpt's LLMEngine and vLLM (when its results "
                    "exist) serve the same seeded requests; writes CSV, PNG and meta JSON. A full run takes a few minutes "
                    "on 2 cores, most of it GPT-2-small; --quick well under a minute.",
        epilog="make serve-bench runs `make vllm-bench` first (vLLM in .venv-vllm), then this; on an idle machine.")
    parser.add_argument("--quick", action="store_true", help="small workloads, well under a minute; files named serve_quick_*")
    parser.add_argument("--out", default="figures",
                        help="directory for CSV, PNG and meta JSON, relative to the current directory (default: "
                             "%(default)s: a full run from the repository root rewrites the stored figures/serve_* that "
                             "chapter 11 and docs/benchmarks.md read)")
    parser.add_argument("--threads", default="auto", help="torch threads: an int, or auto (default): 1 for the embedded "
                        "model, every core for GPT-2-small (kvgpt.linear.recommended_threads)")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS, metavar="MODEL",
                        help=f"models to serve, of {', '.join(MODELS)} (default: all; gpt2-small has random weights)")
    parser.add_argument("--vllm", default=None,
                        help="vLLM's results for the same requests, written by `make vllm-bench` (.venv-vllm/bin/python "
                             "peers/vllm/bench.py); default: OUT/serve[_quick]_vllm.json; without it no vLLM rows")
    args = parser.parse_args(argv)
    threads = None if args.threads == "auto" else int(args.threads) if args.threads.isdigit() else 0
    if threads is not None and threads < 1:
        parser.error(f"--threads {args.threads}: must be auto or an int >= 1")
    prefix = "serve_quick_" if args.quick else "serve_"
    peer = Path(args.vllm) if args.vllm else Path(args.out) / f"{prefix}vllm.json"
    results = run_serve_bench(args.quick, tuple(args.models), threads, peer,
                              progress=lambda line: print(line, file=sys.stderr, flush=True))
    with pd.option_context("display.width", 200, "display.max_columns", 30, "display.precision", 3):
        for key in ("throughput", "online", "memory", "overhead", "prefix", "targets"):
            if key in results:
                table = results[key].drop(columns=["mismatch"], errors="ignore")
                print(f"\n== {key} ==\n{table.to_string(index=False)}")
    for path in write_results(results, Path(args.out), prefix, figures=_figures):
        print(f"wrote {path}", file=sys.stderr)
    return 0


def _figures(results: dict, out: Path, prefix: str) -> list[Path]:
    from ..plots.serving import save_serving_figures

    return save_serving_figures(results, out, prefix)
