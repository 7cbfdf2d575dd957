"""One model call over a paged KV cache: the manager the model's forward talks to (PagedBatch) and each layer's view.

`PagedKVCache.batch()` builds it: ragged rows, per-row positions, a (B, 1, T, S) mask, keys/values written to and
gathered from the pools through the block tables (kvgpt/serving/paged.py), in pure PyTorch.
Introduced in notebooks/10_paged_attention.ipynb.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from ..batching import padded_attention_mask, padded_position_ids
from ..kv_cache import KVCache

if TYPE_CHECKING:  # only for the annotation: paged.py imports this module
    from .paged import PagedKVCache


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
        starts = past - (self.t - new)  # (B,): the slot of each row's first query (below 0: left padding)
        self._starts, self._none = starts, torch.zeros_like(past)  # positions = slots here: no padding slots
        self._pos = padded_position_ids(self._none, starts, self.t)  # (B, T), padding queries clamped to 0
        real = torch.arange(self.t, device=device)[None, :] >= (self.t - new)[:, None]  # (B, T): not padding
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
        return padded_attention_mask(self._none, self._starts, self.t, self.s)  # kvgpt/batching.py's ragged math


class PagedLayer(KVCache):
    """One layer's view of a PagedBatch: `append` writes the real new keys/values and gathers every visible one
    (KVCache.attend then attends over them).

    Introduced in notebooks/10_paged_attention.ipynb.
    """

    def __init__(self, batch: PagedBatch, layer_idx: int) -> None:
        self.batch, self.layer_idx, self.length = batch, layer_idx, batch.length

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
