"""What bounds each result: this machine's matmul throughput and op-dispatch cost, measured beside the timings.

Three limits explain the suite. Memory bandwidth (memory.py) bounds batch-1 decode of a model larger
than the CPU caches. Matmul throughput bounds prefill and big batches: a step cannot beat the time of
its matrix products. Op dispatch bounds small models: every ATen op costs microseconds of framework
time whatever its size, so a step costs about (ops per step) x (time per op).
Introduced in notebooks/08_benchmarks.ipynb.
"""

from __future__ import annotations

import contextlib
import os
import sys

import pandas as pd
import torch
from torch import nn
from torch.nn import functional as F

from .engines import random_prompts
from .memory import decode_floor_ms
from .timing import repeat_ms


def matmul_time_ms(model, rows: int, head_rows: int, repeats: int = 3, seed: int = 0) -> tuple[float, float]:
    """Fastest time of every block matrix applied to `rows` rows plus the LM head to `head_rows` -> (ms, GFLOP/s).

    These products are part of any step over that many tokens (same weights, same kernels: F.linear),
    so the time is a lower bound on the step. GFLOP/s = 2 * rows * sum(in * out) / time.
    """
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    gen = torch.Generator().manual_seed(seed)
    inputs = {m: torch.randn(head_rows if m is model.lm_head else rows, m.in_features, generator=gen)
              for m in linears}
    flops = sum(2 * x.size(0) * m.in_features * m.out_features for m, x in inputs.items())
    with torch.inference_mode():  # one extra pass: the first is a warm-up, and min ignores it
        best = repeat_ms(lambda: [F.linear(x, m.weight, m.bias) for m, x in inputs.items()], repeats + 1, min)
    return best, flops / (best / 1e3) / 1e9


def ops_per_step(engine, vocab_size: int, prompt_len: int = 16, short: int = 9, long: int = 25) -> float:
    """Top-level ATen ops one decode step of `engine` launches (profiled; framework glue included).

    Two greedy runs of `short` and `long` new tokens; the difference in op count over the difference in
    steps leaves the prefill and the set-up out.
    """
    from torch.profiler import ProfilerActivity, profile

    ids = random_prompts(vocab_size, 1, prompt_len)
    engine(ids, short)  # warm-up

    def count(n: int) -> int:
        with _quiet_stderr(), profile(activities=[ProfilerActivity.CPU]) as prof:
            engine(ids, n)
        return sum(1 for e in prof.events() if e.cpu_parent is None and e.name.startswith("aten::"))

    return (count(long) - count(short)) / (long - short)


@contextlib.contextmanager
def _quiet_stderr():
    """Silence file descriptor 2: some torch builds' profiler prints tracer start/stop lines straight to it."""
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def model_limits(model, engines: dict, plan: dict, working_set: int, bandwidth: float) -> pd.DataFrame:
    """This model's limits on this machine as rows (quantity, value, unit).

    The read bandwidth of the step's working set and the floor it sets for a step at the plan's last
    position; matmuls of a batch-1 step, a batch-B step (B = the plan's largest batch) and a prefill of
    prefill_len tokens (LM head on its last position only); ATen ops per decode step of each engine.

    Introduced in notebooks/08_benchmarks.ipynb.
    """
    p = max(plan["positions"])
    rows = [(f"read bandwidth GB/s, {working_set / 1e6:.1f} MB working set", bandwidth / 1e9, "GB/s"),
            (f"bandwidth floor ms, decode at position {p}", decode_floor_ms(model, p, bandwidth), "ms")]
    big = max(plan["batches"])
    for what, r, head in (("decode B=1", 1, 1), (f"decode B={big}", big, big),
                          (f"prefill {plan['prefill_len']}", plan["prefill_len"], 1)):
        ms, gflops = matmul_time_ms(model, r, head)
        rows += [(f"matmul ms, {what}", ms, "ms"), (f"matmul GFLOP/s, {what}", gflops, "GFLOP/s")]
    for engine in ("kvgpt static", "hf dynamic", "hf static"):
        if engine in engines:
            rows.append((f"ops per decode step, {engine}", ops_per_step(engines[engine], model.config.vocab_size),
                         "ATen ops"))
    return pd.DataFrame(rows, columns=["quantity", "value", "unit"])
