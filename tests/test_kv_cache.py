"""KVCache kinds and KVCacheManager: contents, lengths, bytes, capacity, in-place writes."""

import pytest
import torch
from helpers import cached_model

from kvgpt import DynamicKVCache, KVCacheManager, ModelConfig, StaticKVCache

CFG = ModelConfig(vocab_size=50, n_layers=3, n_heads=2, d_model=16, block_size=32)


def make(kind, capacity=10):
    return StaticKVCache(2, 2, 8, capacity) if kind == "static" else DynamicKVCache()


@pytest.mark.parametrize("kind", ["static", "dynamic"])
def test_append_returns_everything_so_far(kind):
    cache, g = make(kind), torch.Generator().manual_seed(0)
    chunks = [torch.randn(2, 2, t, 8, generator=g) for t in (3, 1, 1, 4)]
    for i, c in enumerate(chunks):
        k_all, v_all = cache.append(c, -c)
        expected = torch.cat(chunks[: i + 1], dim=2)
        assert torch.equal(k_all, expected) and torch.equal(v_all, -expected)
        assert cache.length == len(cache) == expected.size(2) == cache.keys.size(2) == cache.values.size(2)


@pytest.mark.parametrize("kind", ["static", "dynamic"])
def test_reset_empties(kind):
    cache = make(kind)
    cache.append(torch.ones(2, 2, 3, 8), torch.ones(2, 2, 3, 8))
    cache.reset()
    assert cache.length == 0 and cache.keys is None and cache.values is None
    k, _ = cache.append(torch.zeros(2, 2, 1, 8), torch.zeros(2, 2, 1, 8))
    assert k.shape == (2, 2, 1, 8) and torch.equal(k, torch.zeros(2, 2, 1, 8))


def test_static_overflow_names_capacity_and_position():
    cache = StaticKVCache(1, 2, 8, capacity=4)
    cache.append(torch.zeros(1, 2, 3, 8), torch.zeros(1, 2, 3, 8))
    with pytest.raises(ValueError, match=r"positions 3\.\.4 but capacity=4"):
        cache.append(torch.zeros(1, 2, 2, 8), torch.zeros(1, 2, 2, 8))
    assert cache.length == 3  # the failed write changed nothing


@torch.no_grad()
def test_model_steps_past_a_small_static_capacity_raise_the_overflow():
    model = cached_model(vocab_size=50, n_layers=3, n_heads=2, d_model=16, block_size=32)
    cache = KVCacheManager(model.config, 1, "static", capacity=5)  # smaller than block_size
    model.prefill(torch.arange(4)[None], cache)
    model.forward_step(torch.tensor([1]), 4, cache)
    with pytest.raises(ValueError, match=r"KV cache overflow: writing positions 5\.\.5 but capacity=5"):
        model.forward_step(torch.tensor([1]), 5, cache)  # positions must not run out before the cache does
    with pytest.raises(ValueError, match="overflow"):
        model.prefill(torch.arange(3)[None], KVCacheManager(model.config, 1, "static", capacity=2))


def test_static_rejects_wrong_shape_and_dtype():
    cache = StaticKVCache(1, 2, 8, capacity=4, dtype=torch.float32)
    with pytest.raises(ValueError, match="does not fit"):
        cache.append(torch.zeros(2, 2, 1, 8), torch.zeros(2, 2, 1, 8))
    with pytest.raises(ValueError, match="does not fit"):
        cache.append(torch.zeros(1, 2, 1, 8, dtype=torch.float64), torch.zeros(1, 2, 1, 8, dtype=torch.float64))


def test_static_lazy_allocation_adopts_dtype():
    cache = StaticKVCache(1, 2, 8, capacity=4)
    assert cache.nbytes == 0
    cache.append(torch.zeros(1, 2, 1, 8, dtype=torch.bfloat16), torch.zeros(1, 2, 1, 8, dtype=torch.bfloat16))
    assert cache.keys.dtype == torch.bfloat16 and cache.nbytes == 2 * 1 * 2 * 4 * 8 * 2


@pytest.mark.parametrize("kind", ["static", "dynamic"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_manager_bytes_match_formula(kind, dtype):
    model = cached_model(vocab_size=50, n_layers=3, n_heads=2, d_model=16, block_size=32).to(dtype)
    try:
        b, t = 2, 7
        mgr = KVCacheManager(model.config, batch_size=b, kind=kind, capacity=20)
        with torch.no_grad():
            model.prefill(torch.zeros(b, t, dtype=torch.long), mgr)
        s = 20 if kind == "static" else t  # a static cache holds its whole capacity from the start
        L, H, D = 3, 2, 8
        assert mgr.nbytes == 2 * L * b * H * s * D * torch.finfo(dtype).bits // 8
    finally:
        model.float()


def test_manager_one_distinct_cache_per_layer():
    mgr = KVCacheManager(CFG, batch_size=1)
    caches = [mgr.get(i) for i in range(CFG.n_layers)]
    assert len({id(c) for c in caches}) == CFG.n_layers


@pytest.mark.parametrize("kwargs, message", [
    (dict(kind="paged"), "kind='paged'"),
    (dict(batch_size=0), "batch_size=0"),
    (dict(capacity=33), "capacity=33"),
    (dict(capacity=0), "capacity=0"),
])
def test_manager_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        KVCacheManager(CFG, **{"batch_size": 1, **kwargs})


def test_static_storage_not_reallocated_while_decoding():
    model = cached_model()
    mgr = KVCacheManager(model.config, batch_size=2, kind="static")
    with torch.no_grad():
        model.prefill(torch.zeros(2, 5, dtype=torch.long), mgr)
        ptrs = [(c._k.data_ptr(), c._v.data_ptr()) for c in mgr.layer_caches]
        for pos in range(5, 30):
            model.forward_step(torch.ones(2, dtype=torch.long), pos, mgr)
            assert [(c._k.data_ptr(), c._v.data_ptr()) for c in mgr.layer_caches] == ptrs
            assert [c.keys.data_ptr() for c in mgr.layer_caches] == [p for p, _ in ptrs]  # views, not copies


def test_reset_all_clears_lengths_and_padding():
    model = cached_model()
    mgr = KVCacheManager(model.config, batch_size=2)
    with torch.no_grad():
        model.prefill(torch.ones(2, 4, dtype=torch.long), mgr, attention_mask=torch.tensor([[0, 1, 1, 1], [1, 1, 1, 1]]))
    assert mgr.pad_lengths.tolist() == [1, 0]
    mgr.reset_all()
    assert mgr.length == 0 and mgr.pad_lengths is None and all(c.length == 0 for c in mgr.layer_caches)


def test_repr_has_no_memory_address():
    mgr = KVCacheManager(CFG, batch_size=1, kind="dynamic")
    assert "0x" not in repr(mgr) and "0x" not in repr(mgr.get(0))
    assert repr(mgr.get(0)) == "DynamicKVCache(length=0, keys=None, nbytes=0)"
