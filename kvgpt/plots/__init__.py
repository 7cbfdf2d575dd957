"""Plots the chapters and the README show, one module per chapter; each function returns a matplotlib Figure.

matplotlib is imported inside the functions: the engine itself never needs it.
"""

from .attention import attention_heatmaps, attention_weights, position_similarity
from .batching import plot_padding_mask
from .benchmark import plot_engine_latency, plot_position_latency, plot_roofline, plot_throughput
from .cache import cache_bytes, kv_cache_fill
from .decoding import plot_step_latency
from .sampling import SAMPLING_SETTINGS, plot_distribution, plot_processors, token_label

__all__ = [
    "SAMPLING_SETTINGS",
    "attention_heatmaps",
    "attention_weights",
    "cache_bytes",
    "kv_cache_fill",
    "plot_distribution",
    "plot_engine_latency",
    "plot_padding_mask",
    "plot_position_latency",
    "plot_processors",
    "plot_roofline",
    "plot_step_latency",
    "plot_throughput",
    "position_similarity",
    "token_label",
]
