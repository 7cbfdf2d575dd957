"""Throughput: generated tokens per second as the batch grows, and as generations get longer.

Batching amortises the weight reads: at batch 1 a CPU decode step is bound by reading every
weight once; B rows share that read, so tokens/s grows almost B-fold until compute catches up.
Introduced in notebooks/08_benchmarks.ipynb.
"""

from __future__ import annotations

import pandas as pd

from .engines import Engine, random_prompts
from .latency import LatencyBenchmark


class ThroughputBenchmark:
    """Decode tokens/s (all rows together) across batch sizes, same engines on the same prompts.

    Each batch size gets fresh random prompts of `prompt_len` tokens (no padding); tokens are checked
    identical across engines. run() -> LatencyBenchmark rows for every batch size plus
    `speedup_vs_batch1`: an engine's decode tokens/s over its own at batch 1.

    Introduced in notebooks/08_benchmarks.ipynb.
    """

    def __init__(self, engines: dict[str, Engine], vocab_size: int, prompt_len: int = 16, new_tokens: int = 64,
                 warmup: int = 1, repeats: int = 3, seed: int = 0, progress=None):
        self.latency = LatencyBenchmark(engines, warmup, repeats, progress)
        self.vocab_size, self.prompt_len, self.new_tokens, self.seed = vocab_size, prompt_len, new_tokens, seed

    def run(self, batch_sizes=(1, 2, 4, 8, 16), label: str = "") -> pd.DataFrame:
        """One LatencyBenchmark per batch size, concatenated."""
        if not batch_sizes or any(b < 1 for b in batch_sizes):
            raise ValueError(f"batch_sizes={batch_sizes!r}: need at least one batch size, each >= 1")
        frames = [self.latency.run(random_prompts(self.vocab_size, b, self.prompt_len, self.seed), self.new_tokens,
                                   label) for b in batch_sizes]
        return with_speedup(pd.concat(frames, ignore_index=True), "batch_size", 1)


def new_tokens_sweep(engines: dict[str, Engine], vocab_size: int, new_tokens=(64, 128, 256, 512, 1024),
                     prompt_len: int = 16, batch_size: int = 1, limits: dict | None = None, warmup: int = 1,
                     repeats: int = 3, seed: int = 0, progress=None, label: str = "") -> pd.DataFrame:
    """Prefill, decode and total time as the number of new tokens grows, same prompt for every engine.

    `limits` caps slow engines: {engine name: largest N to run it at} (the uncached baselines grow
    quadratically). -> LatencyBenchmark rows for every N, plus `total_tokens_per_s` (B * N / total time).

    Introduced in notebooks/08_benchmarks.ipynb.
    """
    limits, prompt = limits or {}, random_prompts(vocab_size, batch_size, prompt_len, seed)
    frames = []
    for n in new_tokens:
        chosen = {name: e for name, e in engines.items() if n <= limits.get(name, n)}
        frames.append(LatencyBenchmark(chosen, warmup, repeats, progress).run(prompt, n, label))
    df = pd.concat(frames, ignore_index=True)
    return df.assign(total_tokens_per_s=df.batch_size * df.new_tokens * 1e3 / df.total_ms)


def with_speedup(df: pd.DataFrame, column: str, base) -> pd.DataFrame:
    """Add speedup_vs_<column><base>: decode tokens/s over the same model and engine's at column == base."""
    key = ["model", "engine"]
    ref = df[df[column] == base].set_index(key)["decode_tokens_per_s"]
    base_tps = pd.Series([ref.get(tuple(k), float("nan")) for k in df[key].values], index=df.index)
    ratio = df.decode_tokens_per_s / base_tps
    return df.assign(**{f"speedup_vs_{column}{base}": ratio})
