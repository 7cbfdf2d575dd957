"""One model call over a paged KV cache: the CacheView the model's forward talks to (PagedBatch) and each layer's.

Flat, as vLLM's and nano-vllm's model runners: the new tokens of every scheduled sequence (decode rows and prompt
chunks alike) go through the model as ONE row of N tokens, token_ids (1, N), no padding; each token carries its
sequence (a block-table row) and its position. Every layer writes its N new keys/values into their pool slots and
attends to each token's own sequence where its blocks sit (kvgpt/paged_attention.py): nothing is gathered, padded
or masked per call. Introduced in notebooks/10_paged_attention.ipynb.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from ..kv_cache import KVCache
from ..paged_attention import paged_attention, store_kv

if TYPE_CHECKING:  # only for the annotation: paged.py imports this module
    from .paged import PagedKVCache


class PagedBatch:
    """What MiniGPTInferenceModel asks of its cache, for the N new tokens of R sequences in one flat call.

    Sequence r adds num_new[r] tokens after its lengths[r] cached ones; its tokens are consecutive in token_ids
    (1, N), in seq_ids order. Shapes: block_tables (R, M), query_row / query_pos / slot_mapping (N,), last_index
    (R,): where each sequence's last new token sits, the rows the LM head reads when last_only (-> logits (R, V)).
    impl picks the attention kernel ("auto": the C++ one where it builds; "gather": the copy-then-SDPA reference).
    Introduced in notebooks/10_paged_attention.ipynb.
    """

    def __init__(self, cache: PagedKVCache, seq_ids: list[int], num_new: list[int], impl: str = "auto") -> None:
        device, bs = cache.k_pools[0].device, cache.block_size
        past = [cache.lengths[s] for s in seq_ids]
        tables = [cache.tables[s] for s in seq_ids]
        self.cache, self.impl, self.batch_size, self.t = cache, impl, 1, sum(num_new)
        self.s = max(p + n for p, n in zip(past, num_new))  # the longest sequence after the call
        self.length = sum(past)  # filled slots of these sequences before the call: what each layer starts from
        self.length_after = self.length + self.t
        width = max(len(t) for t in tables)
        self.block_tables = torch.tensor([t + t[:1] * (width - len(t)) for t in tables], device=device)  # (R, M)
        new = torch.tensor(num_new, device=device)  # (R,)
        self.query_row = torch.repeat_interleave(torch.arange(len(num_new), device=device), new)  # (N,)
        first = torch.cumsum(new, 0) - new  # (R,): the flat index of each sequence's first new token
        self.last_index = first + new - 1  # (R,)
        start = torch.tensor(past, device=device) - first  # (R,): position of flat token i = i + start[its row]
        self.query_pos = torch.arange(self.t, device=device) + start[self.query_row]  # (N,)
        self.slot_mapping = self.block_tables[self.query_row, self.query_pos // bs] * bs + self.query_pos % bs  # (N,)
        self.layers = [PagedLayer(self, i) for i in range(len(cache.k_pools))]

    def get(self, layer_idx: int) -> "PagedLayer":
        return self.layers[layer_idx]

    def check_call(self, model, b: int, t: int) -> None:
        """Raise ValueError unless the model matches the pool (layers, K/V heads, dims) and token_ids is (1, N)."""
        pool, c = self.cache.k_pools[0], model.config
        if (len(self.cache.k_pools), pool.shape[2], pool.shape[3]) != (c.n_layers, c.kv_heads, c.head_dim):
            raise ValueError(f"the paged pool holds {len(self.cache.k_pools)} layers of (H, D) = "
                             f"{tuple(pool.shape[2:])} but the model has {c.n_layers} of {(c.kv_heads, c.head_dim)}")
        if (b, t) != (1, self.t):
            raise ValueError(f"token_ids is (B, T) = {(b, t)} but this paged batch is one flat row of its "
                             f"N = {self.t} new tokens: (1, {self.t}), each sequence's tokens in turn")

    def context_end(self, t: int) -> int:
        """The longest sequence's end, p_r + n_r (the model checks it against block_size)."""
        return self.s

    def position_ids(self, t: int, device=None) -> torch.Tensor:
        """Each new token's position in its own sequence. -> (1, N)."""
        return self.query_pos[None]

    def attention_mask(self, t: int, device=None) -> None:
        """None: each layer attends by position through the block tables (query_pos), no (T, S) mask exists."""
        return None


class PagedLayer(KVCache):
    """One layer's view of a PagedBatch: write the N new keys/values into their slots, then attend in place.

    Introduced in notebooks/10_paged_attention.ipynb.
    """

    def __init__(self, batch: PagedBatch, layer_idx: int) -> None:
        self.batch, self.layer_idx, self.length = batch, layer_idx, batch.length

    def attend(self, q: torch.Tensor, k_new: torch.Tensor, v_new: torch.Tensor, mask, impl: str = "sdpa"):
        """q (1, H, N, D), k_new and v_new (1, Hkv, N, D) -> (1, H, N, D): query i over keys 0 .. query_pos[i] of its
        own sequence, read from the pool where they sit (the mask is None: positions carry causality)."""
        b = self.batch
        if self.length != b.length:
            raise ValueError(f"layer {self.layer_idx}: a PagedBatch serves one model call; this layer already wrote "
                             f"{self.length - b.length} slots")
        k_pool, v_pool = b.cache.k_pools[self.layer_idx], b.cache.v_pools[self.layer_idx]
        store_kv(k_pool, v_pool, b.slot_mapping, k_new, v_new)  # vLLM's reshape_and_cache: the slots are ours
        self.length = b.length_after
        return paged_attention(q, k_pool, v_pool, b.block_tables, b.query_row, b.query_pos, b.impl)
