"""Benchmarks: kvgpt against transformers on identical weights (latency, throughput, memory).

LatencyBenchmark and ThroughputBenchmark are the spec's §10.9 utilities; run_suite runs everything
and returns pandas DataFrames; `python -m kvgpt bench` also writes CSV, PNG and metadata to figures/.
Introduced in notebooks/08_benchmarks.ipynb.
"""

from .engines import Run, TokenMismatchError, check_identical, kvgpt_engine, kvgpt_engines, random_prompts
from .latency import LatencyBenchmark, prefill_latency, step_latency
from .memory import (
    decode_floor_ms,
    kv_formula_bytes,
    kv_memory_profile,
    measure_bandwidth,
    measured_kv_bytes,
    peak_rss_bytes,
    weight_bytes,
)
from .throughput import ThroughputBenchmark, new_tokens_sweep


def run_suite(*args, **kwargs):
    """kvgpt.benchmark.suite.run_suite (imported lazily: it pulls in transformers)."""
    from .suite import run_suite as run

    return run(*args, **kwargs)


__all__ = [
    "LatencyBenchmark",
    "Run",
    "ThroughputBenchmark",
    "TokenMismatchError",
    "check_identical",
    "decode_floor_ms",
    "kv_formula_bytes",
    "kv_memory_profile",
    "kvgpt_engine",
    "kvgpt_engines",
    "measure_bandwidth",
    "measured_kv_bytes",
    "new_tokens_sweep",
    "peak_rss_bytes",
    "prefill_latency",
    "random_prompts",
    "run_suite",
    "step_latency",
    "weight_bytes",
]
