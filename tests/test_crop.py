"""crop(length): rolling a cache back to a prefix, on each cache kind and on the manager (all layers)."""

import pytest
import torch
from helpers import assert_close_logits, cached_model, snapshot
from hypothesis import given
from hypothesis import strategies as st

from kvgpt import DynamicKVCache, KVCacheManager, StaticKVCache

B, H, D = 2, 2, 8


def filled(kind, lengths=(3, 1, 4)):
    cache = StaticKVCache(B, H, D, capacity=12) if kind == "static" else DynamicKVCache()
    g = torch.Generator().manual_seed(0)
    chunks = [torch.randn(B, H, t, D, generator=g) for t in lengths]
    for c in chunks:
        cache.append(c, -c)
    return cache, torch.cat(chunks, dim=2)


@pytest.mark.parametrize("kind", ["static", "dynamic"])
@pytest.mark.parametrize("length", [0, 1, 5, 8])
def test_crop_keeps_exactly_the_prefix(kind, length):
    cache, everything = filled(kind)
    cache.crop(length)
    assert cache.length == len(cache) == length
    if length == 0:
        assert cache.keys is None and cache.values is None
    else:
        kept = everything[:, :, :length]
        assert torch.equal(cache.keys, kept) and torch.equal(cache.values, -kept)
    new = torch.full((B, H, 2, D), 7.0)
    k_all, _ = cache.append(new, new)  # continues right after the kept prefix
    assert torch.equal(k_all, torch.cat([everything[:, :, :length], new], dim=2))


@pytest.mark.parametrize("kind", ["static", "dynamic"])
@pytest.mark.parametrize("bad", [-1, 9, 2.0, True, None, "3"])
def test_crop_refuses_lengths_outside_0_to_current_before_any_change(kind, bad):
    cache, everything = filled(kind)
    with pytest.raises(ValueError, match=r"length=.*crop needs an int in 0\.\.8"):
        cache.crop(bad)
    assert cache.length == 8 and torch.equal(cache.keys, everything)


def test_dynamic_crop_owns_its_slice():
    cache, _ = filled("dynamic")
    cache.crop(2)
    expected = 2 * B * H * 2 * D * 4  # keys + values of 2 positions, fp32
    assert cache.nbytes == expected
    held = cache.keys.untyped_storage().nbytes() + cache.values.untyped_storage().nbytes()
    assert held == expected, f"the cropped cache keeps {held} bytes of storage alive, not {expected}"


def test_static_crop_keeps_its_buffers():
    cache, _ = filled("static")
    address, nbytes = cache.keys.data_ptr(), cache.nbytes
    cache.crop(3)
    k_all, _ = cache.append(torch.ones(B, H, 4, D), torch.ones(B, H, 4, D))
    assert k_all.data_ptr() == address and cache.nbytes == nbytes  # same storage, nothing reallocated


@pytest.mark.parametrize("kind", ["static", "dynamic"])
def test_manager_crop_all_layers_or_none(kind):
    model = cached_model()
    mgr = KVCacheManager(model.config, 1, kind)
    with torch.no_grad():
        model.prefill(torch.arange(10)[None], mgr)
    before = [c.keys.clone() for c in mgr.layer_caches]
    with pytest.raises(ValueError, match=r"crop needs an int in 0\.\.10"):
        mgr.crop(11)
    assert all(c.length == 10 and torch.equal(c.keys, k) for c, k in zip(mgr.layer_caches, before))
    mgr.crop(4)
    assert mgr.length == 4 and all(c.length == 4 and torch.equal(c.keys, k[:, :, :4])
                                   for c, k in zip(mgr.layer_caches, before))


@torch.no_grad()
@pytest.mark.parametrize("kind", ["static", "dynamic"])
@given(data=st.data())
def test_cropped_then_continued_equals_a_fresh_prefill_of_the_kept_prefix(kind, data):
    model = cached_model()
    v, block = model.config.vocab_size, model.config.block_size
    ids = data.draw(st.lists(st.integers(0, v - 1), min_size=2, max_size=block - 8))
    keep = data.draw(st.integers(0, len(ids)))
    more = data.draw(st.lists(st.integers(0, v - 1), min_size=1, max_size=8))
    mgr = KVCacheManager(model.config, 1, kind)
    model.prefill(torch.tensor([ids]), mgr)
    mgr.crop(keep)
    got = model.prefill(torch.tensor([more]), mgr)  # (1, T, V) continues at position `keep`
    want = model(torch.tensor([ids[:keep] + more]))[:, keep:]
    assert_close_logits(got, want, "crop: continued vs fresh logits")


@torch.no_grad()
def test_manager_crop_keeps_the_padding_of_each_row():
    model = cached_model()
    rows = [[5, 6, 7, 8, 9, 10], [1, 2, 3]]  # row 1 is left-padded by 3
    ids = torch.tensor([[5, 6, 7, 8, 9, 10], [0, 0, 0, 1, 2, 3]])
    mask = torch.tensor([[1] * 6, [0, 0, 0, 1, 1, 1]])
    mgr = KVCacheManager(model.config, 2, "static")
    model.prefill(ids, mgr, mask)
    mgr.crop(5)  # drop the last slot of both rows
    assert mgr.pad_lengths.tolist() == [0, 3]
    got = model.prefill(torch.tensor([[11], [12]]), mgr)[:, 0]  # (B, V)
    for b, (row, nxt) in enumerate(zip(rows, (11, 12))):
        want = model(torch.tensor([row[:-1] + [nxt]]))[0, -1]  # the row alone, without its last token
        assert_close_logits(got[b], want)


@torch.no_grad()
@given(st.integers(0, 6), st.lists(st.integers(1, 5), min_size=1, max_size=4), st.data())
def test_int8_crop_is_exact_or_refused_naming_length(window, chunks, data):
    """Issue 22, family 6: the int8 cache's crop leaves exactly a cache that was only given the kept positions (its
    reads, and those after more appends, are bit-identical), or is refused before any change when the exact window
    would need positions its ring has overwritten."""
    from kvgpt.quantized_cache import Int8KVCache

    g = torch.Generator().manual_seed(len(chunks))
    xs = [torch.randn(B, H, t, D, generator=g) for t in chunks]
    total = sum(chunks)
    cache = Int8KVCache(B, H, D, capacity=total + 8, window=window)
    for x in xs:
        cache.append(x, -x)
    keep = data.draw(st.integers(0, total))
    before = snapshot(cache)
    try:
        cache.crop(keep)
    except ValueError as e:
        assert "length=" in str(e) and snapshot(cache) == before
        assert window and 0 < keep < total and total > window  # only a wrapped exact window refuses
        return
    fresh = Int8KVCache(B, H, D, capacity=total + 8, window=window)
    everything = torch.cat(xs, 2)
    if keep:
        fresh.append(everything[:, :, :keep], -everything[:, :, :keep])
    assert cache.length == fresh.length == keep
    more = torch.randn(B, H, 3, D, generator=g)
    for a, b in zip(cache.append(more, -more), fresh.append(more, -more)):
        assert torch.equal(a, b)


@torch.no_grad()
@pytest.mark.parametrize("kind", ["static", "dynamic", "int8"])
@given(keep=st.integers(0, 6), more=st.lists(st.integers(0, 66), min_size=1, max_size=3))
def test_manager_crop_into_a_rows_padding_is_exact(kind, keep, more):
    """Issue 22, family 6: a crop that leaves a row only padding (or part of it) makes that row an empty sequence:
    its next tokens get the logits of a fresh prefill of the kept tokens (none) plus the new ones."""
    model = cached_model()
    rows = [[5, 6, 7, 8, 9, 10], [1, 2]]  # row 1 is left-padded by 4
    ids = torch.tensor([rows[0], [0, 0, 0, 0, 1, 2]])
    mask = torch.tensor([[1] * 6, [0, 0, 0, 0, 1, 1]])
    mgr = KVCacheManager(model.config, 2, kind)
    model.prefill(ids, mgr, mask)
    mgr.crop(keep)
    got = model.prefill(torch.tensor([more, more]), mgr)  # (B, T, V)
    for b, row in enumerate(rows):
        kept = row[: max(keep - (6 - len(row)), 0)]  # the real tokens among the first `keep` slots
        alone = KVCacheManager(model.config, 1, kind)  # int8: the same quantized cache, the row alone
        want = model.prefill(torch.tensor([kept + more]), alone)[0, len(kept):]
        assert_close_logits(got[b], want, "crop into padding vs the row alone")
