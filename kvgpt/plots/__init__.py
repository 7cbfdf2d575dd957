"""Plots the chapters and the README show, one module per chapter; each function returns a matplotlib Figure.

matplotlib is imported inside the functions: the engine itself never needs it.
"""

from .attention import attention_heatmaps, attention_shapes, attention_weights, position_similarity
from .batching import plot_padding_mask
from .benchmark import plot_engine_latency, plot_position_latency, plot_roofline, plot_throughput
from .cache import cache_bytes, cached_vs_uncached, kv_cache_fill
from .decoding import plot_step_latency
from .loading import plot_logit_gap, scaled_logit_gap
from .model import architecture_diagram
from .paging import plot_block_tables, plot_flat_call, plot_hash_chain
from .pool import plot_memory_trace, plot_pool_concurrency
from .sampling import SAMPLING_SETTINGS, plot_distribution, plot_processors, token_label
from .smaller_caches import plot_head_sharing, plot_kv_spread

__all__ = [
    "SAMPLING_SETTINGS",
    "architecture_diagram",
    "attention_heatmaps",
    "attention_shapes",
    "attention_weights",
    "plot_block_tables",
    "plot_flat_call",
    "plot_hash_chain",
    "plot_memory_trace",
    "plot_pool_concurrency",
    "cache_bytes",
    "cached_vs_uncached",
    "kv_cache_fill",
    "plot_distribution",
    "plot_engine_latency",
    "plot_head_sharing",
    "plot_kv_spread",
    "plot_logit_gap",
    "plot_padding_mask",
    "plot_position_latency",
    "plot_processors",
    "plot_roofline",
    "plot_step_latency",
    "plot_throughput",
    "position_similarity",
    "scaled_logit_gap",
    "token_label",
]
