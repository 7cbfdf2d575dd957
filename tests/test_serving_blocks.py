"""BlockAllocator: free list, reference counts, hash-chained prefix blocks, LRU eviction of cached blocks."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kvgpt.serving import BlockAllocator, NoFreeBlocksError, block_hash, prefix_hashes


def _states(a: BlockAllocator) -> dict:
    """Each block's state, read from the allocator's own structures; each block must be in exactly one."""
    used = {b for b in range(a.num_blocks) if a.ref_counts[b] > 0}
    cached, free = set(a.cached), set(a.free_ids)
    assert not (used & cached) and not (used & free) and not (cached & free)
    assert used | cached | free == set(range(a.num_blocks))
    assert len(a.free_ids) == len(free)  # no block twice on the free list
    assert set(a.table.values()) == set(a.hash_of) and all(a.table[h] == b for b, h in a.hash_of.items())
    assert all(b in a.hash_of for b in cached)  # a cached block is findable, a free one is not
    assert not (free & set(a.hash_of))
    return {"used": used, "cached": cached, "free": free}


def test_allocate_until_exhausted_then_clear_error():
    a = BlockAllocator(3, 4)
    blocks = [a.allocate() for _ in range(3)]
    assert sorted(blocks) == [0, 1, 2] and a.num_free == 0 and a.num_used == 3
    with pytest.raises(NoFreeBlocksError, match="all 3 KV blocks are in use"):
        a.allocate()
    a.free(blocks[1])
    assert a.allocate() == blocks[1]


def test_double_free_and_fork_of_free_block_raise():
    a = BlockAllocator(2, 4)
    b = a.allocate()
    a.free(b)
    with pytest.raises(ValueError, match="double free"):
        a.free(b)
    with pytest.raises(ValueError, match="is free"):
        a.fork(b)
    with pytest.raises(ValueError, match="block=5"):
        a.free(5)
    with pytest.raises(ValueError, match="num_blocks=0"):
        BlockAllocator(0, 4)


def test_refcount_keeps_a_shared_block_until_the_last_holder_frees_it():
    a = BlockAllocator(2, 4)
    b = a.allocate()
    a.fork(b)
    a.free(b)
    assert a.ref_counts[b] == 1 and b not in a.free_ids  # still held by the second sequence
    a.free(b)
    assert a.ref_counts[b] == 0 and b in a.free_ids


def test_hash_chain_and_lookup_check_content():
    a = BlockAllocator(4, 2)
    hashes = prefix_hashes([1, 2, 3, 4, 5], 2)  # two full blocks; the partial [5] has no hash
    assert hashes == [block_hash(None, [1, 2]), block_hash(hashes[0], [3, 4])]
    assert prefix_hashes([3, 4], 2) != hashes[1:]  # the same tokens after another prefix hash differently
    b = a.allocate()
    a.register(b, hashes[0], None, [1, 2])
    assert a.lookup(hashes[0], None, [1, 2]) == b
    assert a.lookup(hashes[0], None, [9, 9]) is None  # a (forced) collision is a miss, never a wrong hit
    with pytest.raises(ValueError, match="only full blocks"):
        a.register(a.allocate(), 123, None, [1])


def test_freed_registered_blocks_stay_cached_and_are_evicted_lru():
    a = BlockAllocator(3, 1)
    blocks = [a.allocate() for _ in range(3)]
    for i, b in enumerate(blocks):
        a.register(b, block_hash(None, [i]), None, [i])
    for b in blocks:  # freed in order 0, 1, 2: block 0 is the least recently used
        a.free(b)
    assert a.num_free == 3 and all(a.lookup(block_hash(None, [i]), None, [i]) == b for i, b in enumerate(blocks))
    a.fork(blocks[0])  # a prefix hit revives block 0 ...
    a.free(blocks[0])  # ... and frees it again: now it is the most recently used
    assert a.allocate() == blocks[1]  # evicts the LRU cached block, and forgets its hash
    assert a.lookup(block_hash(None, [1]), None, [1]) is None
    assert a.lookup(block_hash(None, [0]), None, [0]) == blocks[0]


def test_free_blocks_are_used_before_cached_ones():
    a = BlockAllocator(2, 1)
    cached = a.allocate()
    a.register(cached, block_hash(None, [7]), None, [7])
    a.free(cached)
    assert a.allocate() != cached and a.lookup(block_hash(None, [7]), None, [7]) == cached


@given(st.lists(st.tuples(st.sampled_from(["alloc", "free", "fork", "register"]), st.integers(0, 7)),
                max_size=60), st.integers(1, 6))
def test_random_operations_keep_every_block_in_exactly_one_state(ops, n):
    a, held = BlockAllocator(n, 2), []  # held: one entry per reference we own
    for op, k in ops:
        if op == "alloc":
            if a.num_free:
                held.append(a.allocate())
            else:
                with pytest.raises(NoFreeBlocksError):
                    a.allocate()
        elif op == "free" and held:
            a.free(held.pop(k % len(held)))
        elif op == "fork" and held:
            held.append(a.fork(held[k % len(held)]))
        elif op == "register" and held:
            a.register(held[k % len(held)], block_hash(None, [k, k]), None, [k, k])
        states = _states(a)
        assert all(a.ref_counts[b] == held.count(b) for b in range(n))
        assert a.num_free == len(states["cached"]) + len(states["free"])
    for b in list(held):
        a.free(b)
    assert a.num_free == n and a.num_used == 0


def test_hashes_are_the_same_in_every_process():
    import os
    import subprocess
    import sys

    # a fresh interpreter with another hash seed: its str hashes (and None's, before Python 3.12) differ from ours
    code = "from kvgpt.serving.blocks import prefix_hashes; print(prefix_hashes([1, 2, 3, 4, 5, 6], 3))"
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env).stdout.strip()
    assert out == str(prefix_hashes([1, 2, 3, 4, 5, 6], 3))


def test_references_carry_their_holder():
    """Issue 22, family 2: freeing for an owner that holds no reference raises before any change; an untagged free
    takes the latest holder's reference (that holder's next use raises in PagedKVCache, tests/test_serving_paged.py)."""
    a = BlockAllocator(3, 4)
    b = a.allocate(owner=0)
    a.fork(b, owner=1)
    assert a.holds(0, b) and a.holds(1, b) and not a.holds(2, b)
    before = (list(a.ref_counts), {k: list(v) for k, v in a.holders.items()})
    with pytest.raises(ValueError, match="owner=2 holds no reference to block 0"):
        a.free(b, owner=2)
    with pytest.raises(ValueError, match="owner="):
        a.free(b, owner="seq 0")
    assert (list(a.ref_counts), {k: list(v) for k, v in a.holders.items()}) == before
    a.free(b)  # untagged: the latest holder (1) loses its reference
    assert a.holds(0, b) and not a.holds(1, b) and a.ref_counts[b] == 1
    a.free(b, owner=0)
    assert b in a.free_ids and not a.holders
