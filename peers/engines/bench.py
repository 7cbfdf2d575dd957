"""kvgpt against the CPU engines a user would pick instead, side by side in one process, on identical weights.

    .venv-peers/bin/python peers/engines/bench.py [--quick] [--threads 1 2] [--out figures]

Engines: kvgpt's static cache (eager, MKL and oneDNN linears), kvgpt compiled (kvgpt/compiled.py), transformers'
generate, ONNX Runtime, CTranslate2, llama.cpp and LLMs-from-scratch (peers/engines/*_engine.py; one that does not
import here is listed with its reason). Every engine makes the same greedy tokens from the same prompt; a mismatch
with kvgpt static is recorded (tokens_equal, first_mismatch), never hidden. Decode ms per token is the median of
`repeats` runs taken round-robin over the engines, so a busy moment of the machine hits all of them. Each shape's
bandwidth floor (weights + cache / measured read rate) is measured in the same run at the same thread count.
Writes figures/peers.csv and peers_meta.json (peers_quick_* with --quick); chapter 08 and the README read them.
"""

from __future__ import annotations

import argparse
import copy
import importlib
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pandas as pd  # noqa: E402
import torch  # noqa: E402

from kvgpt.benchmark.engines import kvgpt_engine, random_prompts  # noqa: E402
from kvgpt.benchmark.memory import decode_floor_ms, kv_formula_bytes, measure_bandwidth, weight_bytes  # noqa: E402
from kvgpt.benchmark.peers import hf_engine, hf_model  # noqa: E402
from kvgpt.benchmark.report import cpu_name  # noqa: E402
from kvgpt.benchmark.suite import build_model  # noqa: E402
from kvgpt.linear import mkl_generic_path, set_linear_backend  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
PEERS = ("onnxruntime_engine", "ctranslate2_engine", "llamacpp_engine", "llms_from_scratch_engine")
PROMPT_LEN = 16
PAUSE_S = 0.2  # ORT's spinning pool slowed a torch run right after it ~2x (measured): every engine starts rested
# (model, new tokens, batch sizes, repeats) per mode
PLANS = {"full": (("shakespeare-char", 128, (1, 8), 5), ("gpt2-small", 32, (1, 8), 5)),
         "quick": (("shakespeare-char", 48, (1,), 3),)}


def peer_modules() -> tuple[dict, dict]:
    """-> ({name: module} that run here, {name: reason} for those that do not)."""
    sys.path.insert(0, str(Path(__file__).parent))
    ok, missing = {}, {}
    for mod_name in PEERS:
        module = importlib.import_module(mod_name)
        reason = module.available()
        (missing.__setitem__(module.NAME, reason) if reason else ok.__setitem__(module.NAME, module))
    return ok, missing


def onednn_engine(model, batch_hint: int):
    """kvgpt static on a copy of the model whose linears run on oneDNN packed weights (kvgpt/linear.py)."""
    twin = copy.deepcopy(model)
    set_linear_backend(twin, "onednn", batch_hint)
    return kvgpt_engine(twin)


def engines_for(model, workdir: Path, threads: int, peers: dict, only=None) -> tuple[dict, dict, dict]:
    """-> ({name: engine}, {name: build seconds}, {name: reason it cannot run this shape}); `only`: a subset."""
    keep = (lambda name: only is None or name in only)
    peers = {k: v for k, v in peers.items() if keep(k)}
    engines = {"kvgpt static": kvgpt_engine(model),
               "kvgpt static, oneDNN": onednn_engine(model, 8),  # packed for 8 rows: as fast at 1 (measured)
               "kvgpt compiled": kvgpt_engine(model, compile=True),
               "kvgpt compiled (AOT)": kvgpt_engine(model, compile="aot"),
               "transformers": hf_engine(hf_model(model))}
    engines = {k: v for k, v in engines.items() if keep(k)}
    build_s, skipped = {}, {}
    for name, module in peers.items():
        start = time.perf_counter()
        (workdir / name).mkdir(parents=True, exist_ok=True)
        try:
            engines[name] = module.build(model, workdir / name, threads)
        except Exception as e:  # a peer that cannot take this model: recorded with its reason
            skipped[name] = f"build failed: {type(e).__name__}: {e}"
        build_s[name] = time.perf_counter() - start
    return engines, build_s, skipped


def measure(name: str, model, threads: int, batch: int, new_tokens: int, repeats: int, built: tuple) -> list[dict]:
    """One shape at one thread count: parity, then `repeats` round-robin timings of every engine.

    built = engines_for(...) for this model and thread count (builds are shared by the batch sizes)."""
    prompt = random_prompts(model.config.vocab_size, batch, PROMPT_LEN, seed=0)  # (B, T)
    working_set = weight_bytes(model) + kv_formula_bytes(model.config, batch, model.config.block_size)
    floor = decode_floor_ms(model, PROMPT_LEN + new_tokens / 2, measure_bandwidth(working_set, repeats=10), batch)
    rows, (engines, build_s, skipped) = [], (dict(built[0]), dict(built[1]), dict(built[2]))
    ref, runs, warm = None, {}, {}
    for engine_name, engine in list(engines.items()):
        start = time.perf_counter()
        try:
            warm[engine_name] = engine(prompt, new_tokens)  # warm-up (the compiled engine compiles here)
        except ValueError as e:  # e.g. a peer that runs one sequence at a time
            skipped[engine_name] = str(e)
            del engines[engine_name]
            continue
        build_s.setdefault(engine_name, time.perf_counter() - start)
        ref = warm[engine_name].tokens if ref is None else ref
    for _ in range(repeats):
        for engine_name, engine in engines.items():
            time.sleep(PAUSE_S)  # let the previous engine's spinning threads (ORT, OpenMP) park first
            runs.setdefault(engine_name, []).append(engine(prompt, new_tokens))
    for engine_name, rs in runs.items():
        ms = statistics.median(r.decode_ms / (new_tokens - 1) for r in rs)
        equal = torch.equal(warm[engine_name].tokens, ref) and all(torch.equal(r.tokens, ref) for r in rs)
        rows.append({"model": name, "threads": threads, "batch": batch, "engine": engine_name, "decode_ms": ms,
                     "x_floor": ms / floor, "floor_ms": floor, "tokens_equal": equal,
                     "first_mismatch": "" if equal else _first_diff(warm[engine_name].tokens, ref),
                     "prefill_ms": statistics.median(r.prefill_ms for r in rs),
                     "build_or_compile_s": build_s.get(engine_name, float("nan")), "skipped": ""})
    rows += [{"model": name, "threads": threads, "batch": batch, "engine": k, "skipped": v} for k, v in skipped.items()]
    return rows


def bounds(name: str, model, threads: int, batches) -> list[dict]:
    """What bounds kvgpt's step at this thread count: its matmuls alone (MKL, F.linear) per batch size, and the
    top-level ATen ops one decode step launches, eager and compiled (a compiled graph's fused kernels are not
    ATen ops: what is left are the matmuls it calls out to)."""
    from kvgpt.benchmark.bounds import matmul_time_ms, ops_per_step

    rows = [{"model": name, "threads": threads, "batch": b, "quantity": "matmul ms (MKL)",
             "value": matmul_time_ms(model, b, b)[0]} for b in batches]
    for engine_name, engine in (("kvgpt static", kvgpt_engine(model)), ("kvgpt compiled", kvgpt_engine(model, compile=True))):
        rows.append({"model": name, "threads": threads, "batch": 1, "quantity": f"ATen ops per step, {engine_name}",
                     "value": ops_per_step(engine, model.config.vocab_size)})
    return rows


def _first_diff(tokens: torch.Tensor, ref: torch.Tensor) -> str:
    if tokens.shape != ref.shape:
        return f"shape {tuple(tokens.shape)} vs {tuple(ref.shape)}"
    row, step = (tokens != ref).nonzero()[0].tolist()
    return f"row {row}, step {step}: {tokens[row, step].item()} vs kvgpt {ref[row, step].item()}"


def meta(mode: str, wall_s: float, peers: dict, missing: dict) -> dict:
    versions = {name: getattr(m, "versions", dict)() for name, m in peers.items()}
    return {"mode": mode, "utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "cpu": cpu_name(),
            "cpu_count": os.cpu_count(), "mkl_generic_path": mkl_generic_path(),
            "MKL_CBWR": os.environ.get("MKL_CBWR", ""), "torch": torch.__version__, "wall_s": round(wall_s, 1),
            "load_average_1m_at_end": round(os.getloadavg()[0], 2), "peer_versions": versions,
            "not_run": missing}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the embedded model, batch 1, fewer tokens")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--out", default=str(ROOT / "figures"))
    parser.add_argument("--prefix", default=None, help="file prefix (default peers_ or peers_quick_)")
    parser.add_argument("--kvgpt-only", action="store_true", help="only kvgpt's engines and transformers")
    parser.add_argument("--models", nargs="+", default=None, choices=["shakespeare-char", "gpt2-small"])
    parser.add_argument("--engines", nargs="+", default=None, help="only these engines (names as in the table)")
    parser.add_argument("--bounds-only", action="store_true", help="only kvgpt's matmul times and op counts")
    args = parser.parse_args(argv)
    if any(t < 1 for t in args.threads):
        parser.error(f"--threads {args.threads}: each must be >= 1")
    started, mode = time.perf_counter(), "quick" if args.quick else "full"
    peers, missing = ({}, {}) if args.kvgpt_only else peer_modules()
    for name, reason in missing.items():
        print(f"[peers] {name}: not run: {reason}", file=sys.stderr)
    rows, limits = [], []
    for name, new_tokens, batches, repeats in PLANS[mode]:
        if args.models and name not in args.models:
            continue
        model, _ = build_model(name)
        for threads in args.threads:
            torch.set_num_threads(threads)
            limits += bounds(name, model, threads, batches)
            if args.bounds_only:
                continue
            with tempfile.TemporaryDirectory(prefix="kvgpt-peers-") as tmp:
                built = engines_for(model, Path(tmp), threads, peers, args.engines)
                for batch in batches:
                    print(f"[peers {time.perf_counter() - started:6.0f}s] {name} threads={threads} B={batch}",
                          file=sys.stderr, flush=True)
                    rows += measure(name, model, threads, batch, new_tokens, repeats, built)
                del built
    out, prefix = Path(args.out), args.prefix or f"peers_{'quick_' if args.quick else ''}"
    out.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(limits).to_csv(out / f"{prefix}bounds.csv", index=False, float_format="%.5g")
    if args.bounds_only:
        print(pd.DataFrame(limits).to_string(index=False))
        return 0
    df = pd.DataFrame(rows)
    df.to_csv(out / f"{prefix}results.csv", index=False, float_format="%.5g")
    info = meta(mode, time.perf_counter() - started, peers, missing)
    (out / f"{prefix}meta.json").write_text(json.dumps(info, indent=1) + "\n", encoding="utf-8")
    with pd.option_context("display.width", 200, "display.max_columns", 20, "display.precision", 3):
        print(df.drop(columns=["first_mismatch"]).to_string(index=False))
    print(f"wrote {out / (prefix + 'results.csv')} and {prefix}meta.json ({info['cpu']})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
