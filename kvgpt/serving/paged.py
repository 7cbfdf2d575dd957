"""The paged KV cache: per layer one pool of fixed-size blocks, per sequence a block table.

Pool layout (num_blocks, block_size, H, D), as nano-vllm's: one slot = one token's keys of every head,
contiguous, so writing a token and gathering a sequence are row index ops on a (num_blocks * block_size,
H, D) view. (vLLM's CUDA layout splits D further for vectorised loads; a gather does not need that.)
`PagedKVCache.batch()` gives the object the model's forward already talks to (a KVCacheManager's
questions: batch_size, length, position_ids, attention_mask, get(i).append), so the SAME
MiniGPTInferenceModel.prefill runs over pages. Introduced in notebooks/10_paged_attention.ipynb.
"""

from __future__ import annotations

import torch

from ..config import ModelConfig
from ..kv_cache import KVCache, check_crop_length
from .blocks import BlockAllocator, NoFreeBlocksError, block_hash


class PagedKVCache:
    """Block pools allocated once (K and V per layer) + block tables + the allocator that shares them.

    Shapes: k_pools[l], v_pools[l] (num_blocks, block_size, H, D). lengths[s] = slots sequence s has filled;
    tables[s] = its block ids, block j holding positions j * block_size .. (j + 1) * block_size - 1.
    Introduced in notebooks/10_paged_attention.ipynb.
    """

    def __init__(self, config: ModelConfig, num_blocks: int, block_size: int = 16, device=None,
                 dtype: torch.dtype = torch.float32, enable_prefix_caching: bool = True) -> None:
        self.allocator = BlockAllocator(num_blocks, block_size)
        self.config, self.block_size, self.prefix_caching = config, block_size, bool(enable_prefix_caching)
        heads = config.kv_heads  # grouped-query attention stores fewer heads
        shape = (num_blocks, block_size, heads, config.head_dim)  # (blocks, slots, H, D)
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

    def add_sequence(self, seq_id: int, tokens=None) -> int:
        """Start a block table for seq_id; reuse cached full blocks of `tokens`' prefix. -> tokens reused.

        At least the last token is always left to compute (its logits are needed), as in vLLM.
        """
        if seq_id in self.tables:
            raise ValueError(f"seq_id={seq_id} already has a block table")
        table, hashes, parent, a, bs = [], [], None, self.allocator, self.block_size
        if self.prefix_caching and tokens:
            for start in range(0, len(tokens) - bs, bs):  # full blocks strictly before the last token
                chunk = tokens[start : start + bs]
                h = block_hash(parent, chunk)
                block = a.lookup(h, parent, chunk)
                if block is None:
                    break
                table.append(a.fork(block))
                hashes.append(h)
                parent = h
        self.tables[seq_id], self.hashes[seq_id], self.lengths[seq_id] = table, hashes, len(table) * bs
        return len(table) * bs

    def fork_sequence(self, src: int, dst: int) -> None:
        """dst shares every block of src (refcount + 1), e.g. two continuations of one prompt."""
        if src not in self.tables or dst in self.tables:
            raise ValueError(f"fork_sequence({src}, {dst}): src must exist and dst must not")
        self.tables[dst] = [self.allocator.fork(b) for b in self.tables[src]]
        self.hashes[dst], self.lengths[dst] = list(self.hashes[src]), self.lengths[src]

    def blocks_needed(self, seq_id: int, end: int) -> int:
        """How many new blocks seq_id's table needs to hold `end` slots."""
        return max(-(-end // self.block_size) - len(self.tables[seq_id]), 0)

    def reserve(self, seq_id: int, end: int) -> None:
        """Grow seq_id's table to hold `end` slots; all or nothing (NoFreeBlocksError leaves it unchanged)."""
        need = self.blocks_needed(seq_id, end)
        if need > self.allocator.num_free:
            raise NoFreeBlocksError(f"sequence {seq_id} needs {need} more blocks for {end} slots, "
                                    f"{self.allocator.num_free} free of {self.allocator.num_blocks}")
        self.tables[seq_id].extend(self.allocator.allocate() for _ in range(need))

    def free_sequence(self, seq_id: int) -> None:
        """Return seq_id's blocks, last block first, so LRU eviction takes a prefix's tail before its head."""
        freed = [b for b in self.tables[seq_id] if self.allocator.ref_counts[b] == 0]
        if freed:  # checked first, so a failed free changes nothing
            raise ValueError(f"sequence {seq_id}: block(s) {freed} are not in use (refcount 0): double free")
        for block in reversed(self.tables.pop(seq_id)):
            self.allocator.free(block)
        del self.lengths[seq_id], self.hashes[seq_id]

    def crop(self, seq_id: int, length: int) -> None:
        """Roll seq_id back to its first `length` slots (speculative decoding's rollback): blocks past them are
        released (refcount - 1, so a shared or cached block stays intact for its other holders) and hashes of
        blocks no longer full are dropped; a kept, registered block is copied before its next write.
        Introduced in notebooks/13_speculative_decoding.ipynb.
        """
        if seq_id not in self.tables:
            raise ValueError(f"seq_id={seq_id!r} has no block table")
        check_crop_length(length, self.lengths[seq_id])  # before any change
        table, keep = self.tables[seq_id], -(-length // self.block_size)
        for block in reversed(table[keep:]):
            self.allocator.free(block)
        del table[keep:], self.hashes[seq_id][length // self.block_size :]
        self.lengths[seq_id] = length

    def commit(self, seq_id: int, n: int, tokens) -> None:
        """After a model call wrote n slots of seq_id: count them, register its newly full blocks' hashes.

        `tokens` are the sequence's token ids (at least its filled slots).
        """
        self.lengths[seq_id] += n
        if not self.prefix_caching:
            return
        hashes, bs = self.hashes[seq_id], self.block_size
        for j in range(len(hashes), self.lengths[seq_id] // bs):
            parent, chunk = (hashes[-1] if hashes else None), tokens[j * bs : (j + 1) * bs]
            hashes.append(block_hash(parent, chunk))
            self.allocator.register(self.tables[seq_id][j], hashes[-1], parent, chunk)

    def _make_writable(self, seq_id: int, start: int, end: int) -> None:
        """Copy-on-write: a block about to receive slots start..end-1 that is shared or cached is copied first."""
        table, bs = self.tables[seq_id], self.block_size
        for j in range(start // bs, -(-end // bs)):
            old = table[j]
            if self.allocator.is_shared_or_full(old):
                new = self.allocator.allocate()  # may raise NoFreeBlocksError; nothing was written yet
                for pool in self.k_pools + self.v_pools:
                    pool[new] = pool[old]
                table[j] = new
                self.allocator.free(old)  # the other holders keep the original intact
                if j < len(self.hashes[seq_id]):
                    del self.hashes[seq_id][j:]  # this sequence's copy is no longer the registered one

    def batch(self, seq_ids: list[int], num_new: list[int]) -> "PagedBatch":
        """The manager for ONE model call: row b appends num_new[b] tokens to sequence seq_ids[b]."""
        for s, n in zip(seq_ids, num_new):
            if s not in self.tables or n < 1:
                raise ValueError(f"seq_id={s} (num_new={n}): needs a block table and num_new >= 1")
            end = self.lengths[s] + n
            if end > len(self.tables[s]) * self.block_size:
                raise ValueError(f"sequence {s} has blocks for {len(self.tables[s]) * self.block_size} slots but this "
                                 f"call writes up to {end}; reserve() first (never a silent overwrite)")
            freed = [b for b in self.tables[s] if self.allocator.ref_counts[b] == 0]
            if freed:
                raise ValueError(f"sequence {s} uses block(s) {freed}, which were freed while still in its table")
            self._make_writable(s, self.lengths[s], end)
        return PagedBatch(self, seq_ids, num_new)

    def __repr__(self) -> str:
        return (f"PagedKVCache(sequences={len(self.tables)}, {self.allocator}, "
                f"pool={tuple(self.k_pools[0].shape)} x {2 * len(self.k_pools)}, nbytes={self.nbytes})")


class PagedBatch:
    """What MiniGPTInferenceModel asks of its cache, answered for ragged rows of a paged cache.

    Row b has past p_b slots and n_b new tokens, LEFT-padded to T = max n_b so x[:, -1] is each row's last
    real token. Query j of row b sits at position p_b - (T - n_b) + j (clamped at 0: a padding query then
    sees key 0, never nothing). Keys are gathered per row by position, S = max(p_b + n_b), right-padded;
    the (B, 1, T, S) mask "key position <= query position" hides padding, unfilled slots and other rows.
    Introduced in notebooks/10_paged_attention.ipynb.
    """

    def __init__(self, cache: PagedKVCache, seq_ids: list[int], num_new: list[int]) -> None:
        device, bs = cache.k_pools[0].device, cache.block_size
        lengths = [cache.lengths[s] for s in seq_ids]
        self.cache, self.batch_size, self.t = cache, len(seq_ids), max(num_new)
        self.s = max(p + n for p, n in zip(lengths, num_new))
        self.length = sum(lengths)  # filled slots of these rows before the call: what each layer starts from
        self.length_after = self.length + sum(num_new)
        past, new = torch.tensor(lengths, device=device), torch.tensor(num_new, device=device)  # (B,), (B,)
        ends = past + new  # (B,)
        width = max(len(cache.tables[s]) for s in seq_ids)
        tables = torch.tensor([cache.tables[s] + [0] * (width - len(cache.tables[s])) for s in seq_ids],
                              device=device)  # (B, blocks)
        j = torch.arange(self.t, device=device)
        self._pos = (past[:, None] - (self.t - new)[:, None] + j).clamp(min=0)  # (B, T)
        real = j[None, :] >= (self.t - new)[:, None]  # (B, T): not padding
        key_pos = torch.minimum(torch.arange(self.s, device=device), ends[:, None] - 1)  # (B, S)

        def slot(pos):  # position -> flat slot id through the row's block table
            return tables.gather(1, pos // bs) * bs + pos % bs

        self.src = None if min(num_new) == self.t else real.flatten().nonzero().squeeze(1)  # (N,) rows of (B * T)
        self.dst = slot(self._pos)[real]  # (N,) pool slots the real new tokens go to
        self.gather = slot(key_pos).flatten()  # (B * S,)
        self.layers = [PagedLayer(self, i) for i in range(len(cache.k_pools))]

    def get(self, layer_idx: int) -> "PagedLayer":
        return self.layers[layer_idx]

    def check_call(self, model, b: int, t: int) -> None:
        """Raise ValueError unless the model matches the pool (layers, K/V heads, dims) and (b, t) this batch."""
        pool, c = self.cache.k_pools[0], model.config
        heads = c.kv_heads
        if (len(self.cache.k_pools), pool.shape[2], pool.shape[3]) != (c.n_layers, heads, c.head_dim):
            raise ValueError(f"the paged pool holds {len(self.cache.k_pools)} layers of (H, D) = "
                             f"{tuple(pool.shape[2:])} but the model has {c.n_layers} of {(heads, c.head_dim)}")
        if (b, t) != (self.batch_size, self.t):
            raise ValueError(f"token_ids is (B, T) = {(b, t)} but this paged batch was built for "
                             f"{(self.batch_size, self.t)}")

    def context_end(self, t: int) -> int:
        """The longest row's end, p_b + n_b (the model checks it against block_size)."""
        if t != self.t:
            raise ValueError(f"token_ids has T={t} columns but this paged batch was built for T={self.t}")
        return self.s

    def position_ids(self, t: int, device=None) -> torch.Tensor:
        """Each new token's position in its own sequence. -> (B, T)."""
        return self._pos

    def attention_mask(self, t: int, device=None) -> torch.Tensor:
        """(B, 1, T, S) bool: query j of row b sees key positions 0 .. its own position."""
        return (torch.arange(self.s, device=self._pos.device) <= self._pos[:, :, None]).unsqueeze(1)


class PagedLayer:
    """One layer's view of a PagedBatch: `append` writes the real new keys/values and gathers every visible one.

    Introduced in notebooks/10_paged_attention.ipynb.
    """

    def __init__(self, batch: PagedBatch, layer_idx: int) -> None:
        self.batch, self.layer_idx, self.length = batch, layer_idx, batch.length

    attend = KVCache.attend  # store through `append`, then attend over the gathered keys (the batch's mask)

    def append(self, k_new: torch.Tensor, v_new: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, H, T, D) new keys/values -> (B, H, S, D) every key/value row b may see (padding masked)."""
        batch, cache = self.batch, self.batch.cache
        b, h, t, d = k_new.shape
        if self.length != batch.length or (b, t) != (batch.batch_size, batch.t):
            raise ValueError(f"layer {self.layer_idx}: a PagedBatch serves one model call of (B, T) = "
                             f"{(batch.batch_size, batch.t)}; got {(b, t)} after {self.length - batch.length} slots")
        out = []
        for new, pool in ((k_new, cache.k_pools[self.layer_idx]), (v_new, cache.v_pools[self.layer_idx])):
            if new.dtype != pool.dtype:
                raise ValueError(f"keys/values are {new.dtype} but the pool holds {pool.dtype}")
            flat = pool.view(-1, h, d)  # (num_blocks * block_size, H, D)
            rows = new.transpose(1, 2).reshape(b * t, h, d)  # (B * T, H, D)
            flat.index_copy_(0, batch.dst, rows if batch.src is None else rows.index_select(0, batch.src))
            out.append(flat.index_select(0, batch.gather).view(b, batch.s, h, d).transpose(1, 2))  # (B, H, S, D)
        self.length = batch.length_after
        return out[0], out[1]
