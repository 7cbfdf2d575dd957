"""Shared test helpers: random GPT-2-shaped models with realistic logit spread, a record of the largest diffs."""

from __future__ import annotations

import functools

import torch

from kvgpt import MiniGPTInferenceModel, ModelConfig

LARGEST_DIFF: dict[str, float] = {}


def record_diff(name: str, diff: float) -> float:
    """Remember the largest |difference| a test saw under `name`; printed at the end of the run."""
    LARGEST_DIFF[name] = max(LARGEST_DIFF.get(name, 0.0), float(diff))
    return float(diff)


def random_model(config: ModelConfig, seed: int = 0, std: float = 0.2, dtype=torch.float32) -> MiniGPTInferenceModel:
    """A model whose every parameter is N(0, std): std 0.2 gives logits of realistic spread (|logit| ~ 5-10)."""
    torch.manual_seed(seed)
    model = MiniGPTInferenceModel(config)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, std)
    return model.to(dtype).eval()


@functools.lru_cache(maxsize=64)
def cached_model(vocab_size=67, n_layers=2, n_heads=2, d_model=32, block_size=64, attn_impl="sdpa", seed=0,
                 n_kv_heads=None, arch="gpt2"):
    """random_model for a config given as plain values, built once per test session. arch="llama": RoPE, RMSNorm,
    SwiGLU, no biases (notebooks/16_modern_models.ipynb)."""
    llama = dict(positions="rope", norm="rms", mlp="swiglu", bias=False) if arch == "llama" else {}
    cfg = ModelConfig(vocab_size=vocab_size, n_layers=n_layers, n_heads=n_heads, d_model=d_model,
                      block_size=block_size, attn_impl=attn_impl, n_kv_heads=n_kv_heads, **llama)
    return random_model(cfg, seed)


def gen(**config):
    """An AutoregressiveGenerator over cached_model(**config)."""
    from kvgpt import AutoregressiveGenerator

    return AutoregressiveGenerator(cached_model(**config))


def _tensor_state(t):
    """A tensor's storage address, shape, dtype and exact bytes (None stays None)."""
    if t is None:
        return None
    raw = None if t.is_meta else t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
    return (t.data_ptr(), tuple(t.shape), str(t.dtype), raw)


def snapshot(*objs):
    """Everything a refused call must leave unchanged, as comparable values: a KVCacheManager's length, padding
    and every layer's length, capacity and buffers (address and bytes, stale slots included); a cache's the same;
    a torch.Generator's state; a Sampler's knobs, seed and own generators; an AutoregressiveGenerator's last_stats."""
    from kvgpt import AutoregressiveGenerator, KVCache, KVCacheManager, Sampler

    out = []
    for o in objs:
        if isinstance(o, KVCacheManager):
            out.append(("manager", o.length, o.batch_size, o.kind, o.capacity, _tensor_state(o.pad_lengths),
                        snapshot(*o.layer_caches)))
        elif isinstance(o, KVCache):
            out.append((type(o).__name__, o.length, o.capacity, _tensor_state(o._k), _tensor_state(o._v)))
        elif isinstance(o, torch.Generator):
            out.append(("generator", o.get_state().numpy().tobytes()))
        elif isinstance(o, Sampler):
            out.append(("sampler", dict(o.knobs), o.seed, snapshot(*o._own)))
        elif isinstance(o, AutoregressiveGenerator):
            out.append(("autoregressive", o.last_stats))
        else:
            raise TypeError(f"snapshot: no rule for {type(o).__name__}")
    return tuple(out)
