"""Memory: KV-cache bytes measured against the formula, process peak RSS, and the bandwidth floor of decoding.

The KV cache of L layers holds keys and values for B rows, H heads, S positions of D dims
(S: key/value positions held, past + new; the shape legend keeps T for the new tokens of one call):
2 * L * B * H * S * D * bytes per element. At batch 1 a decode step must read every weight and
the whole cache once, so (those bytes) / (read bandwidth for that many bytes) is a floor no engine beats.
Introduced in notebooks/08_benchmarks.ipynb.
"""

from __future__ import annotations

import sys

import pandas as pd
import torch

from ..cache_manager import KVCacheManager
from .engines import random_prompts
from .timing import repeat_ms


def kv_formula_bytes(config, batch_size: int, positions: int, dtype: torch.dtype = torch.float32) -> int:
    """2 * L * B * Hkv * S * D * element size, S = `positions`: keys and values of every layer, K/V head and position.

    Introduced in notebooks/08_benchmarks.ipynb.
    """
    element = torch.empty(0, dtype=dtype).element_size()
    return 2 * config.n_layers * batch_size * config.kv_heads * positions * config.head_dim * element


def measured_kv_bytes(cache: KVCacheManager) -> int:
    """Bytes of the storages behind every layer's keys and values, each storage counted once.

    Measured from the tensors' actual storages (a static cache's views reach the whole buffer),
    not computed from shapes, so it can disagree with the formula if the cache over-allocates.
    """
    storages = {}
    for layer in cache.layer_caches:  # an int8 cache's keys are dequantized copies: ask what it stores
        stored = layer.stored_tensors() if hasattr(layer, "stored_tensors") else (layer.keys, layer.values)
        for tensor in stored:
            if tensor is not None:
                storage = tensor.untyped_storage()
                storages[storage.data_ptr()] = storage.nbytes()
    return sum(storages.values())


def kv_memory_profile(model, kind: str, batch_size: int = 1, prompt_len: int = 8, new_tokens: int = 32,
                      seed: int = 0) -> pd.DataFrame:
    """Measured vs formula KV bytes after the prefill and after every decode step, and how often layer 0's
    key buffer was (re)allocated so far. Formula S = capacity for a static cache, filled slots for a dynamic one.

    -> rows (kind, slots, measured_bytes, formula_bytes, allocations).

    Introduced in notebooks/08_benchmarks.ipynb.
    """
    cfg = model.config
    ids = random_prompts(cfg.vocab_size, batch_size, prompt_len + new_tokens, seed)  # (B, T + N)
    cache = KVCacheManager(cfg, batch_size, kind, capacity=prompt_len + new_tokens)
    rows, last_ptr, allocations = [], None, 0
    with torch.inference_mode():
        for slot in range(prompt_len - 1, prompt_len + new_tokens):
            if slot == prompt_len - 1:
                model.prefill(ids[:, :prompt_len], cache, last_only=True)
            else:
                model.forward_step(ids[:, slot], slot, cache)
            ptr = cache.get(0).keys.untyped_storage().data_ptr()
            allocations, last_ptr = allocations + (ptr != last_ptr), ptr
            s = cache.capacity if kind == "static" else cache.length  # S: positions the storage holds
            rows.append({"kind": kind, "slots": cache.length, "measured_bytes": measured_kv_bytes(cache),
                         "formula_bytes": kv_formula_bytes(cfg, batch_size, s, next(model.parameters()).dtype),
                         "allocations": allocations})
    return pd.DataFrame(rows).assign(batch_size=batch_size)


def weight_bytes(model) -> int:
    """Bytes of the model's parameters, a tied tensor (embedding = LM head) counted once."""
    storages = {p.untyped_storage().data_ptr(): p.untyped_storage().nbytes() for p in model.parameters()}
    return sum(storages.values())


def measure_bandwidth(nbytes: int = 512 * 2**20, repeats: int = 5) -> float:
    """Read bandwidth in bytes/s for a working set of `nbytes`: bytes / fastest read of one tensor that big.

    A decode step reads weights and cache and writes almost nothing, so reading is what the floor needs
    (a copy also writes, and writes cost more than reads: it understates the read rate). Three ways to read
    every byte once (a sum, and a vector times the tensor viewed as a matrix either way round, the kernels
    a decode step uses); the fastest wins, since a floor is the best the machine does and noise only slows.
    Give nbytes = what a step reads, and the repeats see the caches a decode loop sees (a 3 MB model stays
    in them; far beyond them it is main memory).
    """
    width = 1024
    data = torch.ones(max(nbytes // 4 // width, 1) * width)  # written once here: every page resident
    rows, cols, vec = data.view(-1, width), data.view(width, -1), torch.ones(width)
    with torch.inference_mode():
        best = min(repeat_ms(read, repeats, min) for read in (data.sum, lambda: torch.mv(rows, vec), lambda: vec @ cols))
    return data.nbytes / (best / 1e3)


def decode_floor_ms(model, position: float, bandwidth: float, batch_size: int = 1) -> float:
    """The physical floor of one decode step: (all weights + the KV cache at `position`) / bandwidth, in ms."""
    dtype = next(model.parameters()).dtype
    kv = kv_formula_bytes(model.config, batch_size, 1, dtype) * position
    return (weight_bytes(model) + kv) / bandwidth * 1e3


def peak_rss_bytes() -> int | None:
    """Peak resident memory of this process so far (None where the OS does not say)."""
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # macOS reports bytes, Linux KiB


def cuda_peak_bytes() -> int | None:
    """torch.cuda.max_memory_allocated() on a CUDA machine, else None."""
    return torch.cuda.max_memory_allocated() if torch.cuda.is_available() else None
