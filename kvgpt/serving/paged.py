"""The paged KV cache: per layer one pool of fixed-size blocks, per sequence a block table.

Pool layout (num_blocks, block_size, H, D), as nano-vllm's: one slot = one token's keys of every head,
contiguous, so writing a token is a row index op on a (num_blocks * block_size, H, D) view and attention reads a
block's slots in order. `PagedKVCache.batch()` gives the CacheView of one flat model call
(kvgpt/serving/paged_batch.py), so the SAME MiniGPTInferenceModel.prefill runs over pages.
Introduced in notebooks/10_paged_attention.ipynb.
"""

from __future__ import annotations

from collections import Counter

import torch

from ..config import ModelConfig, check_config
from ..kv_cache import check_crop_length
from ..paged_attention import IMPLS
from ..validation import (check_allocation, check_bool, check_choice, check_device, check_dtype, check_id_list,
                          check_int, check_positive_int, fail_type, is_int, show)
from .blocks import BlockAllocator, NoFreeBlocksError, block_hash
from .paged_batch import PagedBatch, PagedLayer

__all__ = ["PagedKVCache", "PagedBatch", "PagedLayer"]


class PagedKVCache:
    """Block pools allocated once (K and V per layer) + block tables + the allocator that shares them.

    Shapes: k_pools[l], v_pools[l] (num_blocks, block_size, H, D). lengths[s] = slots sequence s has filled;
    tables[s] = its block ids, block j holding positions j * block_size .. (j + 1) * block_size - 1.
    Introduced in notebooks/10_paged_attention.ipynb.
    """

    def __init__(self, config: ModelConfig, num_blocks: int, block_size: int = 16, device=None,
                 dtype: torch.dtype = torch.float32, enable_prefix_caching: bool = True) -> None:
        check_config("config", config)
        num_blocks, block_size = check_positive_int("num_blocks", num_blocks), check_positive_int("block_size", block_size)
        device = check_device("device", device, allow_meta=True)
        dtype = check_dtype("dtype", dtype) or torch.float32
        self.prefix_caching = check_bool("enable_prefix_caching", enable_prefix_caching)
        heads = config.kv_heads  # grouped-query attention stores fewer heads
        shape = (num_blocks, block_size, heads, config.head_dim)  # (blocks, slots, H, D)
        nbytes = 2 * config.n_layers * num_blocks * block_size * heads * config.head_dim * dtype.itemsize
        check_allocation(f"PagedKVCache(num_blocks={num_blocks}, block_size={block_size})", nbytes, device)
        self.allocator = BlockAllocator(num_blocks, block_size)
        self.config, self.block_size = config, block_size
        self.k_pools = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layers)]
        self.v_pools = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layers)]
        self.tables: dict[int, list[int]] = {}
        self.lengths: dict[int, int] = {}
        self.hashes: dict[int, list[int]] = {}  # chained hashes of each sequence's registered full blocks

    @property
    def nbytes(self) -> int:
        """Bytes the pools hold, read from their storage (reserved once, whatever is in use)."""
        return sum(p.untyped_storage().nbytes() for p in self.k_pools + self.v_pools)

    @property
    def bytes_per_slot(self) -> int:
        """K and V of one token in every layer: 2 * L * H * D * element size."""
        return self.nbytes // (self.allocator.num_blocks * self.block_size)

    def slots_used(self) -> int:
        """Distinct slots holding a live key/value (a shared prefix block counts once)."""
        fill: dict[int, int] = {}
        for s, table in self.tables.items():
            for j, block in enumerate(table):
                fill[block] = max(fill.get(block, 0), min(self.block_size, max(self.lengths[s] - j * self.block_size, 0)))
        return sum(fill.values())

    def _table(self, name: str, seq_id, held: bool = True) -> list[int]:
        """seq_id's block table; held: also check it holds every block in it (none freed behind its back), before
        anything reads, writes, registers, shares or frees them."""
        if not is_int(seq_id) or seq_id not in self.tables:
            raise ValueError(f"{name}={show(seq_id)}: no such sequence (add_sequence() starts one; a freed one is gone)")
        table = self.tables[seq_id]
        lost = self._lost(seq_id) if held else []
        if lost:
            raise ValueError(f"sequence {seq_id} uses block(s) {lost}, which were freed while still in its table")
        return table

    def _lost(self, seq_id) -> list[int]:
        """Blocks of seq_id's table it holds no reference for (freed behind its back; one may even have come back
        to it, then it appears twice in its table but is held once)."""
        if seq_id not in self.allocator.revoked:  # nothing was ever taken from it: no loop over its blocks per step
            return []
        table, holders = self.tables[seq_id], self.allocator.holders
        if all(seq_id in holders.get(b, ()) for b in table) and len(set(table)) == len(table):
            return []
        return [b for b, n in Counter(table).items() if holders.get(b, []).count(seq_id) < n]

    def _end(self, end) -> int:
        return check_int("end", end, 0)  # past the pool: NoFreeBlocksError; past the context: the model refuses

    def add_sequence(self, seq_id: int, tokens=None) -> int:
        """Start a block table for seq_id; reuse cached full blocks of `tokens`' prefix. -> tokens reused.

        At least the last token is always left to compute (its logits are needed), as in vLLM.
        """
        check_int("seq_id", seq_id)
        if seq_id in self.tables:
            raise ValueError(f"seq_id={seq_id} already has a block table")
        if tokens is not None and not isinstance(tokens, (list, tuple)):
            fail_type("tokens", tokens, "None or a list of the sequence's token ids")
        check_id_list("tokens", tokens or [], self.config.vocab_size)
        table, hashes, parent, a, bs = [], [], None, self.allocator, self.block_size
        if self.prefix_caching and tokens:
            for start in range(0, len(tokens) - bs, bs):  # full blocks strictly before the last token
                chunk = list(tokens[start : start + bs])
                h = block_hash(parent, chunk)
                block = a.lookup(h, parent, chunk)
                if block is None:
                    break
                table.append(a.fork(block, seq_id))
                hashes.append(h)
                parent = h
        self.tables[seq_id], self.hashes[seq_id], self.lengths[seq_id] = table, hashes, len(table) * bs
        return len(table) * bs

    def fork_sequence(self, src: int, dst: int) -> None:
        """dst shares every block of src (refcount + 1), e.g. two continuations of one prompt."""
        table = self._table("src", src)
        check_int("dst", dst)
        if dst in self.tables:
            raise ValueError(f"dst={dst}: already has a block table (fork into a new sequence id)")
        self.tables[dst] = [self.allocator.fork(b, dst) for b in table]
        self.hashes[dst], self.lengths[dst] = list(self.hashes[src]), self.lengths[src]

    def blocks_needed(self, seq_id: int, end: int) -> int:
        """How many new blocks seq_id's table needs to hold `end` slots."""
        table = self._table("seq_id", seq_id, held=False)  # counting touches no block
        return max(-(-self._end(end) // self.block_size) - len(table), 0)

    def reserve(self, seq_id: int, end: int) -> None:
        """Grow seq_id's table to hold `end` slots; all or nothing (NoFreeBlocksError leaves it unchanged)."""
        need = self.blocks_needed(seq_id, end)
        if need > self.allocator.num_free:
            raise NoFreeBlocksError(f"sequence {seq_id} needs {need} more blocks for {end} slots, "
                                    f"{self.allocator.num_free} free of {self.allocator.num_blocks}")
        self.tables[seq_id].extend(self.allocator.allocate(seq_id) for _ in range(need))

    def free_sequence(self, seq_id: int) -> None:
        """Return seq_id's blocks, last block first, so LRU eviction takes a prefix's tail before its head."""
        if not is_int(seq_id) or seq_id not in self.tables:
            raise ValueError(f"seq_id={show(seq_id)}: no such sequence (never added, or freed already: double free)")
        freed = self._lost(seq_id)
        if freed:  # checked first, so a failed free changes nothing
            raise ValueError(f"sequence {seq_id}: block(s) {freed} are not in use (refcount 0): double free"
                             if all(self.allocator.ref_counts[b] == 0 for b in freed) else
                             f"sequence {seq_id}: block(s) {freed} were freed while in its table and now belong "
                             "to another holder")
        for block in reversed(self.tables.pop(seq_id)):
            self.allocator.free(block, seq_id)
        del self.lengths[seq_id], self.hashes[seq_id]
        self.allocator.revoked.discard(seq_id)  # a later sequence of this id starts with nothing taken

    def release(self, seq_id) -> None:
        """Forget seq_id's table (if any), returning only the references it still holds: the cleanup after a failed
        call, which must not fail again (free_sequence refuses a table with a block freed behind its back)."""
        for block in reversed(self.tables.pop(seq_id, [])):
            if self.allocator.holds(seq_id, block):
                self.allocator.free(block, seq_id)
        self.lengths.pop(seq_id, None), self.hashes.pop(seq_id, None)
        self.allocator.revoked.discard(seq_id)

    def crop(self, seq_id: int, length: int) -> None:
        """Roll seq_id back to its first `length` slots (speculative decoding's rollback): blocks past them are
        released (refcount - 1, so a shared or cached block stays intact for its other holders) and hashes of
        blocks no longer full are dropped; a kept, registered block is copied before its next write.
        Introduced in notebooks/13_speculative_decoding.ipynb.
        """
        table = self._table("seq_id", seq_id)
        check_crop_length(length, self.lengths[seq_id])  # before any change
        keep = -(-length // self.block_size)
        for block in reversed(table[keep:]):
            self.allocator.free(block, seq_id)
        del table[keep:], self.hashes[seq_id][length // self.block_size :]
        self.lengths[seq_id] = length

    def commit(self, seq_id: int, n: int, tokens) -> None:
        """After a model call wrote n slots of seq_id: count them, register its newly full blocks' hashes.

        `tokens` are the sequence's token ids (at least its filled slots).
        """
        table, length = self._table("seq_id", seq_id), self.lengths[seq_id]
        n = check_int("n", n, 1, len(table) * self.block_size - length,
                      f"an int in 1..{len(table) * self.block_size - length} (slots reserved and not yet filled)")
        if not isinstance(tokens, (list, tuple)) or len(tokens) < length + n:
            fail_type("tokens", tokens, f"a list of at least the {length + n} token ids of the filled slots")
        self.lengths[seq_id] += n
        if not self.prefix_caching:
            return
        hashes, bs = self.hashes[seq_id], self.block_size
        for j in range(len(hashes), self.lengths[seq_id] // bs):
            parent, chunk = (hashes[-1] if hashes else None), list(tokens[j * bs : (j + 1) * bs])
            hashes.append(block_hash(parent, chunk))
            self.allocator.register(table[j], hashes[-1], parent, chunk)

    def _make_writable(self, seq_id: int, start: int, end: int) -> None:
        """Copy-on-write: a block about to receive slots start..end-1 that is shared or cached is copied first."""
        table, bs = self.tables[seq_id], self.block_size
        for j in range(start // bs, -(-end // bs)):
            old = table[j]
            if self.allocator.is_shared_or_full(old):
                new = self.allocator.allocate(seq_id)  # may raise NoFreeBlocksError; nothing was written yet
                for pool in self.k_pools + self.v_pools:
                    pool[new] = pool[old]
                table[j] = new
                self.allocator.free(old, seq_id)  # the other holders keep the original intact
                if j < len(self.hashes[seq_id]):
                    del self.hashes[seq_id][j:]  # this sequence's copy is no longer the registered one

    def batch(self, seq_ids: list[int], num_new: list[int], impl: str = "auto") -> PagedBatch:
        """The CacheView of ONE flat model call: sequence seq_ids[r] appends num_new[r] tokens, and the call's
        token_ids are (1, sum(num_new)): each sequence's new tokens in turn. impl: the attention kernel
        (kvgpt/paged_attention.py). Every sequence is checked before any block is copied (copy-on-write), so a
        refused call changes nothing.
        """
        check_choice("impl", impl, IMPLS)
        for name, value in (("seq_ids", seq_ids), ("num_new", num_new)):
            if not isinstance(value, (list, tuple)) or not value:
                fail_type(name, value, "a non-empty list, one entry per row")
        tables = [self._table("seq_ids", s) for s in seq_ids]
        if len(seq_ids) != len(num_new) or len(set(seq_ids)) != len(seq_ids):
            raise ValueError(f"seq_ids={show(seq_ids)}, num_new={show(num_new)}: one num_new per row and each "
                             "sequence in one row only (two rows of one sequence would write the same slots)")
        for s, n, table in zip(seq_ids, num_new, tables):
            room = len(table) * self.block_size - self.lengths[s]
            check_int("num_new", n, 1)
            if n > room:
                raise ValueError(f"sequence {s} has blocks for {len(table) * self.block_size} slots but this "
                                 f"call writes up to {self.lengths[s] + n}; reserve() first (never a silent overwrite)")
        for s, n in zip(seq_ids, num_new):
            self._make_writable(s, self.lengths[s], self.lengths[s] + n)
        return PagedBatch(self, list(seq_ids), [int(n) for n in num_new], impl)

    def __repr__(self) -> str:
        return (f"PagedKVCache(sequences={len(self.tables)}, {self.allocator}, "
                f"pool={tuple(self.k_pools[0].shape)} x {2 * len(self.k_pools)}, nbytes={self.nbytes})")
