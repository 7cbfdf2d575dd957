"""Shared by the peer modules' `__main__` (run with .venv-peers' python): parity with kvgpt and interleaved timing.

A peer module gives NAME, available(), build(model, workdir, threads) and versions(); `main(module)` builds it for
both benchmark shapes at 1 and 2 threads, checks its greedy tokens against kvgpt's static-cache engine
(check_identical; a mismatch is reported, never hidden) and prints one JSON object per run, with kvgpt static's
decode ms/token measured in the same process, alternating peer and kvgpt, median of the repetitions.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from kvgpt.benchmark.engines import TokenMismatchError, check_identical, kvgpt_engine, random_prompts
from kvgpt.benchmark.suite import build_model

# (model, new tokens, batch sizes) per mode; the prompt is 16 random ids (random_prompts(V, B, 16, seed=0))
PLANS = {"full": (("shakespeare-char", 64, (1, 8)), ("gpt2-small", 32, (1, 8))),
         "quick": (("shakespeare-char", 24, (1, 8)),)}
PROMPT_LEN = 16


def ms_per_token(run) -> float:
    """Decode ms per step (N - 1 decode steps follow the first token)."""
    steps = run.tokens.size(1) - 1
    return run.decode_ms / steps if steps > 0 else float("nan")


def first_mismatch(peer: torch.Tensor, ref: torch.Tensor) -> dict | None:
    """None when equal, else {row, step, peer, kvgpt} of the first differing token (rows in order, then steps)."""
    if peer.shape != ref.shape:
        return {"shape": list(peer.shape), "kvgpt_shape": list(ref.shape)}
    diff = (peer != ref).nonzero()
    if not len(diff):
        return None
    row, step = diff[0].tolist()
    return {"row": row, "step": step, "peer": int(peer[row, step]), "kvgpt": int(ref[row, step])}


def compare(module, model, engine, name: str, threads: int, batch: int, new_tokens: int, build_s: float,
            repeats: int) -> dict:
    """One JSON record: tokens checked against kvgpt static, then peer and kvgpt timed alternately."""
    prompt = random_prompts(model.config.vocab_size, batch, PROMPT_LEN, seed=0)  # (B, T)
    ours = kvgpt_engine(model)
    old = torch.get_num_threads()
    torch.set_num_threads(threads)  # kvgpt at the same thread count as the peer
    try:
        ref, theirs = ours(prompt, new_tokens), engine(prompt, new_tokens)  # warm-up and parity
        mismatch, equal = first_mismatch(theirs.tokens, ref.tokens), True
        try:
            check_identical({"kvgpt static": ref.tokens, module.NAME: theirs.tokens}, f"{name} B={batch}")
        except TokenMismatchError as e:
            equal = False
            print(f"TOKEN MISMATCH: {e}", file=sys.stderr)
        peer_runs, kvgpt_runs = [], []
        for _ in range(repeats):  # interleaved, so a busy moment of the machine hits both
            peer_runs.append(engine(prompt, new_tokens))
            kvgpt_runs.append(ours(prompt, new_tokens))
    finally:
        torch.set_num_threads(old)
    return {"engine": module.NAME, "model": name, "threads": threads, "batch": batch, "new_tokens": new_tokens,
            "tokens_equal": equal, "first_mismatch": mismatch,
            "decode_ms_per_token": round(statistics.median(ms_per_token(r) for r in peer_runs), 4),
            "prefill_ms": round(statistics.median(r.prefill_ms for r in peer_runs), 3),
            "build_s": round(build_s, 2),
            "kvgpt_static_decode_ms_per_token": round(statistics.median(ms_per_token(r) for r in kvgpt_runs), 4),
            "versions": module.versions()}


def main(module, argv: list[str] | None = None, extra=None) -> int:
    """Run the plan for `module`; `extra(model, engine, name, threads)` may add fields to each record."""
    parser = argparse.ArgumentParser(description=f"{module.NAME} against kvgpt static on identical weights")
    parser.add_argument("--quick", action="store_true", help="embedded char model only, fewer tokens")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--models", nargs="+", default=None, help="subset of shakespeare-char gpt2-small")
    args = parser.parse_args(argv)
    reason = module.available()
    if reason is not None:
        print(json.dumps({"engine": module.NAME, "available": False, "reason": reason}))
        return 0
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    for name, new_tokens, batches in PLANS["quick" if args.quick else "full"]:
        if args.models and name not in args.models:
            continue
        model, _ = build_model(name)
        for threads in args.threads:
            with tempfile.TemporaryDirectory(prefix=f"kvgpt-{module.NAME}-") as tmp:
                start = time.perf_counter()
                engine = module.build(model, Path(tmp), threads)
                build_s = time.perf_counter() - start
                for batch in batches:
                    try:
                        record = compare(module, model, engine, name, threads, batch, new_tokens, build_s,
                                         2 if args.quick else args.repeats)
                    except ValueError as e:  # a peer that runs one sequence at a time says so
                        record = {"engine": module.NAME, "model": name, "threads": threads, "batch": batch,
                                  "skipped": str(e)}
                    if extra is not None and "skipped" not in record:
                        record.update(extra(model, engine, name, threads, batch))
                    print(json.dumps(record), flush=True)
    return 0
