"""The cache contract: what the model's one forward asks of a cache, and the manager that answers it per layer.

`CacheView` is the whole contract, written as a typing.Protocol. Three objects implement it: KVCacheManager (one
layer cache per layer, left padding per row), NoCache (a full forward: positions and padding, nothing stored)
and the paged batch of kvgpt/serving/paged.py. The model never asks which one it has.
Introduced in notebooks/04_kv_cache.ipynb.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch

from .attention import causal_mask
from .batching import pad_lengths_from_mask, padded_attention_mask, padded_position_ids
from .config import ModelConfig, check_config
from .kv_cache import DynamicKVCache, KVCache, StaticKVCache
from .validation import check_choice, check_device, check_dtype, check_int, check_positive_int

# kind -> factory(batch_size, kv_heads, head_dim, capacity, device, dtype) of one layer's cache. The one table of
# cache kinds: "int8" joins it from kvgpt/quantized_cache.py (imported by kvgpt/__init__), which builds on this module.
CACHE_KINDS = {
    "static": StaticKVCache,
    "dynamic": lambda b, h, d, capacity, device, dtype: DynamicKVCache(capacity, device=device, dtype=dtype),
}


@runtime_checkable
class CacheView(Protocol):
    """What MiniGPTInferenceModel asks of its cache for ONE call of B rows and T new tokens each.

    length: slots filled before the call (what each layer must hold when it is reached); get(i): layer i's cache
    (None: store nothing); check_call(model, B, T): every check before anything is written; context_end(T): the
    largest position + 1 reached (checked against block_size); position_ids(T): (T,) or (B, T) positions of the new
    tokens; attention_mask(T): the mask of the call, built once, or None — meaning "every key" for T == 1 and "the
    plain causal triangle" (T == S) for T > 1. A view may also have `last_index` (R,): the token columns whose
    logits last_only returns, one per sequence of a flat call (kvgpt/serving/paged_batch.py); without it, the last.
    Introduced in notebooks/04_kv_cache.ipynb.
    """

    length: int

    def get(self, layer_idx: int) -> KVCache | None: ...

    def check_call(self, model, b: int, t: int) -> None: ...

    def context_end(self, t: int) -> int: ...

    def position_ids(self, t: int, device=None) -> torch.Tensor: ...

    def attention_mask(self, t: int, device=None) -> torch.Tensor | None: ...


class KVCacheManager:
    """One cache per layer, plus the left-padding of each row of a batch.

    Shapes: pad_lengths (B,) — how many leading slots of each row are padding (None: no padding).
    Positions are slots: slot s of row b holds the token at position s - pad_lengths[b].

    Introduced in notebooks/04_kv_cache.ipynb.
    """

    def __init__(self, config: ModelConfig, batch_size: int, kind: str = "static",
                 capacity: int | None = None, device=None, dtype: torch.dtype | None = None) -> None:
        check_config("config", config)
        kind = check_choice("kind", kind, tuple(CACHE_KINDS))
        batch_size = check_positive_int("batch_size", batch_size)
        capacity = config.block_size if capacity is None else check_int("capacity", capacity, 1, config.block_size)
        device, dtype = check_device("device", device, allow_meta=True), check_dtype("dtype", dtype)
        self.config, self.batch_size, self.kind, self.capacity = config, batch_size, kind, capacity
        make = CACHE_KINDS[kind]  # only K/V heads are stored: (B, Hkv, capacity, D) per layer
        self.layer_caches: list[KVCache] = [make(batch_size, config.kv_heads, config.head_dim, capacity, device, dtype)
                                            for _ in range(config.n_layers)]
        self.pad_lengths: torch.Tensor | None = None
        self._slots: torch.Tensor | None = None  # 0 .. block_size - 1, made on first use

    def get(self, layer_idx: int) -> KVCache:
        """The cache of layer `layer_idx`; each layer must use only its own."""
        if type(layer_idx) is not int or not 0 <= layer_idx < len(self.layer_caches):  # -1 would be the last
            check_int("layer_idx", layer_idx, 0, len(self.layer_caches) - 1)
        return self.layer_caches[layer_idx]

    def reset_all(self) -> None:
        """Empty every layer and forget the padding, ready for a new batch of sequences."""
        for cache in self.layer_caches:
            cache.reset()
        self.pad_lengths = None

    def crop(self, length: int) -> None:
        """Roll every layer back to its first `length` slots; the padding of each row is kept, cut to `length`.

        A row whose first `length` slots are all padding keeps no token: its padding becomes `length` slots, so its
        next token sits at position 0 with nothing before it, exactly as if it had been given no prompt (a left
        padding longer than the cache would put later tokens at position 0 and hide them from each other).
        Every layer is checked before any changes, so a refused crop leaves every layer as it was.
        Introduced in notebooks/13_speculative_decoding.ipynb.
        """
        for cache in self.layer_caches:
            cache.check_crop(length)
        for cache in self.layer_caches:
            cache.crop(length)
        if self.pad_lengths is not None:
            self.pad_lengths = self.pad_lengths.clamp(max=length)

    @property
    def length(self) -> int:
        """Slots filled so far (the same in every layer after a complete model call)."""
        return self.layer_caches[0].length

    def check_call(self, model, b: int, t: int) -> None:
        """Raise ValueError unless this manager was built for `model` (layers, heads, dims, dtype, device) and
        a call of b rows and t new tokens fits: what the model asks before anything is written."""
        end, c, m = self.length + t, self.config, model.config
        built = (c.n_layers, c.n_heads, c.head_dim, c.kv_heads, len(self.layer_caches))
        if built != (m.n_layers, m.n_heads, m.head_dim, m.kv_heads, m.n_layers):
            raise ValueError(f"cache was built for (n_layers, n_heads, head_dim, n_kv_heads) = {built[:4]} but the "
                             f"model has {(m.n_layers, m.n_heads, m.head_dim, m.kv_heads)}")
        if self.batch_size != b:
            raise ValueError(f"token_ids has batch {b} but the cache was built for batch_size={self.batch_size}")
        if end > self.capacity:
            raise ValueError(f"KV cache overflow: writing positions {self.length}..{end - 1} "
                             f"but capacity={self.capacity} (positions 0..{self.capacity - 1})")
        stored, weight = getattr(self.layer_caches[0], "_k", None), model.token_embedding.embedding.weight
        if stored is not None and (stored.dtype, stored.device) != (weight.dtype, weight.device):
            raise ValueError(f"cache holds {stored.dtype} on {stored.device} but the model computes "
                             f"{weight.dtype} on {weight.device}")

    def context_end(self, t: int) -> int:
        """The last position + 1 that t new tokens per row reach: what the model checks against block_size.

        One length for every row here; a paged batch (kvgpt/serving/paged.py) has one per row and reports the
        largest. Introduced in notebooks/10_paged_attention.ipynb.
        """
        return self.length + t

    @property
    def nbytes(self) -> int:
        """Bytes held by all layers: 2 * L * B * Hkv * S * D * element size (S = capacity if static)."""
        return sum(cache.nbytes for cache in self.layer_caches)

    def set_padding(self, attention_mask: torch.Tensor) -> None:
        """Record left padding from the (B, T) 0/1 mask of a prompt's first chunk (0 = pad)."""
        if self.length:
            raise ValueError(f"set_padding: the cache already holds {self.length} slots; padding is set before "
                             "the first chunk of a prompt (reset_all() starts a new batch)")
        self.pad_lengths = pad_lengths_from_mask(attention_mask, self.batch_size)  # (B,)

    def position_ids(self, t: int, device=None) -> torch.Tensor:
        """Positions of the next t slots: (T,) without padding, (B, T) with it."""
        if self.pad_lengths is None:  # a view into one arange made once: this runs at every decode step
            if self._slots is None:  # up to block_size, not capacity: an overflow must reach the cache's error
                self._slots = torch.arange(self.config.block_size, device=device)
            return self._slots[self.length : self.length + t]  # (T,)
        return padded_position_ids(self.pad_lengths, self.length, t)  # (B, T)

    def attention_mask(self, t: int, device=None) -> torch.Tensor | None:
        """The mask of the next t queries, built once per call: None when nothing needs hiding (a step, or a
        prompt into an empty cache: the plain triangle), (T, S) for a later chunk, (B, 1, T, S) with padding."""
        if self.pad_lengths is not None:
            return padded_attention_mask(self.pad_lengths, self.length, t)  # (B, 1, T, S)
        if t == 1 or self.length == 0:
            return None
        return causal_mask(t, self.length + t, device)  # (T, S): a later chunk sees the whole past

    def __repr__(self) -> str:
        return (f"KVCacheManager(kind={self.kind!r}, layers={len(self.layer_caches)}, batch_size={self.batch_size}, "
                f"length={self.length}, capacity={self.capacity}, nbytes={self.nbytes})")


class NoCache(KVCacheManager):
    """The cache view of a full forward (cache=None): positions and padding as for an empty cache, nothing stored.

    Introduced in notebooks/04_kv_cache.ipynb.
    """

    def __init__(self, config: ModelConfig, batch_size: int):  # no layer caches: nothing is allocated or checked
        self.config, self.batch_size, self.kind, self.capacity = config, batch_size, "none", config.block_size
        self.layer_caches, self.pad_lengths, self._slots = [], None, None

    length = 0

    def get(self, layer_idx):
        return None

    def check_call(self, model, b: int, t: int) -> None:
        """Nothing is stored, so nothing can overflow; the model checks its context itself."""
