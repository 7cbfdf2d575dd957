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


LOGIT_RTOL = 1e-5  # fp32


def assert_close_logits(got, want, name: str | None = None, rtol: float = LOGIT_RTOL) -> float:
    """The project's one equality rule for logits: max |got - want| <= rtol * max(1, max |want|), rtol = 1e-5 in fp32.

    Relative to the logit scale because a kernel choice (SDPA's fused path, oneDNN, a different reduction order)
    moves an fp32 logit by a few ulps of its own size: 1.4e-5 on logits up to 13.9 is 1e-6 relative, a correct
    result; an absolute 1e-5 would fail it on real GPT-2 logits (|logit| ~ 100) and pass a real bug on tiny ones.
    The floor of 1 keeps near-zero logits from demanding a zero difference. Records the difference under `name`.
    Returns the difference.
    """
    got, want = torch.as_tensor(got).float(), torch.as_tensor(want).float()
    assert got.shape == want.shape, f"shapes differ: {tuple(got.shape)} vs {tuple(want.shape)}"
    diff = (got - want).abs().max().item() if got.numel() else 0.0
    scale = max(1.0, want.abs().max().item() if want.numel() else 0.0)
    if name is not None:
        record_diff(name, diff)
    assert diff <= rtol * scale, f"logits differ by {diff:.3g} > {rtol:g} x {scale:.3g} (the logit scale)"
    return diff


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


def _picker_state(picker):
    """A RowSampler's state: its seen tokens, its generators' states, which rows finished."""
    if picker is None:
        return None
    return (_tensor_state(picker.seen), snapshot(*(picker.generators or [])), list(picker.active))


def snapshot(*objs):
    """Everything a refused call must leave unchanged, as comparable values: a KVCacheManager's length, padding
    and every layer's length, capacity and buffers (address and bytes, stale slots included); a cache's the same
    (an int8 cache's payloads, scales and exact window); a torch.Generator's state; a Sampler's knobs, seed and
    own generators; an AutoregressiveGenerator's last_stats; a PagedKVCache's tables, lengths, hashes, pools and
    allocator; a BlockAllocator's every table; an LLMEngine's requests, queues, undelivered outputs, stats and cache;
    a SpeculativeGenerator's last_stats and draft source."""
    from kvgpt import AutoregressiveGenerator, KVCache, KVCacheManager, Sampler
    from kvgpt.quantized_cache import Int8KVCache
    from kvgpt.serving import BlockAllocator, LLMEngine, PagedKVCache
    from kvgpt.speculative import SpeculativeGenerator

    out = []
    for o in objs:
        if isinstance(o, KVCacheManager):
            out.append(("manager", o.length, o.batch_size, o.kind, o.capacity, _tensor_state(o.pad_lengths),
                        snapshot(*o.layer_caches)))
        elif isinstance(o, Int8KVCache):
            out.append(("int8", o.length, o.capacity, o.window, o.dtype,
                        [_tensor_state(t) for t in o.stored_tensors()]))
        elif isinstance(o, KVCache):
            out.append((type(o).__name__, o.length, o.capacity, _tensor_state(o._k), _tensor_state(o._v)))
        elif isinstance(o, torch.Generator):
            out.append(("generator", o.get_state().numpy().tobytes()))
        elif isinstance(o, Sampler):
            out.append(("sampler", dict(o.knobs), o.seed, snapshot(*o._own)))
        elif isinstance(o, AutoregressiveGenerator):
            out.append(("autoregressive", o.last_stats))
        elif isinstance(o, BlockAllocator):
            out.append(("allocator", list(o.ref_counts), {b: list(h) for b, h in o.holders.items()}, list(o.free_ids),
                        list(o.cached), dict(o.hash_of), dict(o.table), dict(o.content)))
        elif isinstance(o, PagedKVCache):
            out.append(("paged", {s: list(t) for s, t in o.tables.items()}, dict(o.lengths),
                        {s: list(h) for s, h in o.hashes.items()}, o.prefix_caching, snapshot(o.allocator),
                        [_tensor_state(p) for p in o.k_pools + o.v_pools]))
        elif isinstance(o, LLMEngine):
            seqs = {rid: (list(q.tokens), q.num_computed, q.finish_reason, _picker_state(q.picker))
                    for rid, q in o.requests.items()}
            out.append(("engine", o._next_id, seqs, [q.request_id for q in o.scheduler.waiting],
                        [q.request_id for q in o.scheduler.running], {b: list(q) for b, q in o.outbox.boxes.items()},
                        dict(o.outbox.owner), dict(o.outbox.open_requests), vars(o.stats).copy(), snapshot(o.cache)))
        elif isinstance(o, SpeculativeGenerator):
            cache = getattr(o.draft, "cache", None)
            out.append(("speculative", o.last_stats, type(o.draft).__name__, getattr(o.draft, "cached", None),
                        None if cache is None else snapshot(cache)))
        else:
            raise TypeError(f"snapshot: no rule for {type(o).__name__}")
    return tuple(out)
