"""The KV cache: each layer keeps the keys and values it already computed, so a step only projects the new token.

Two kinds behind one interface: DynamicKVCache grows by concatenation (simple, allocates every
step); StaticKVCache writes into full-length buffers allocated once (gpt-fast's and HF StaticCache's
choice: static shapes for torch.compile and CUDA graphs; serving engines page the cache instead).
Introduced in notebooks/04_kv_cache.ipynb.
"""

from __future__ import annotations

import torch

from .attention import CausalSelfAttention, attend, causal_mask
from .batching import padded_attention_mask, padded_position_ids, pad_lengths_from_mask
from .config import ModelConfig
from .validation import (check_choice, check_config, check_device, check_dtype, check_int, check_kv_append,
                         check_positive_int, same_device)


CACHE_KINDS = ("static", "dynamic", "int8")  # int8: kvgpt/quantized_cache.py


def check_crop_length(length, current: int) -> None:
    """Raise ValueError unless `length` is an int in 0 .. current (a crop can only shorten a cache).

    Introduced in notebooks/13_speculative_decoding.ipynb.
    """
    if isinstance(length, bool) or not isinstance(length, int) or not 0 <= length <= current:
        raise ValueError(f"length={length!r}: crop needs an int in 0..{current} (the cache's current length)")


class KVCache:
    """Keys and values of one layer for positions 0 .. length - 1; the interface both kinds share.

    Shapes: keys, values (B, H, S, D) views of the filled part (None while empty).

    Introduced in notebooks/04_kv_cache.ipynb.
    """

    length: int = 0
    capacity: int | None = None  # positions it may hold (None: unbounded)

    def _check_new(self, k_new, v_new, stored: torch.Tensor | None) -> int:
        """T of a valid append (checked before anything is written; see validation.check_kv_append)."""
        return check_kv_append(k_new, v_new, stored, self.length, self.capacity)

    def append(self, k_new: torch.Tensor, v_new: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store T new positions; return every key and value so far. (B, H, T, D) -> (B, H, S, D)."""
        raise NotImplementedError

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask, impl: str) -> torch.Tensor:
        """Store the T new keys and values, then attend the T queries over all S of them.

        Shapes: q (B, H, T, D), k and v (B, Hkv, T, D) (keys already rotated for RoPE), mask None or
        (B or 1, 1, T, S) bool -> (B, H, T, D). None means: T == 1 sees every key; T > 1 is the plain
        triangle (T == S). A cache that reads keys in place or owns their positions overrides this.
        Introduced in notebooks/04_kv_cache.ipynb.
        """
        k_all, v_all = self.append(k, v)  # (B, Hkv, S, D)
        return attend(q, k_all, v_all, mask, impl, causal=mask is None and q.size(-2) > 1)

    def reset(self) -> None:
        """Forget every position (a static cache keeps its buffers for the next sequence)."""
        raise NotImplementedError

    def crop(self, length: int) -> None:
        """Roll back to the first `length` positions (0 <= length <= self.length): later ones are forgotten.

        What speculative decoding does after the target rejects drafted tokens.
        Introduced in notebooks/13_speculative_decoding.ipynb.
        """
        raise NotImplementedError

    @property
    def keys(self) -> torch.Tensor | None:
        raise NotImplementedError

    @property
    def values(self) -> torch.Tensor | None:
        raise NotImplementedError

    @property
    def nbytes(self) -> int:
        """Bytes the cache's keys and values take by their shapes right now.

        Computed from shapes, so it cannot see memory a view keeps alive behind them; the storage check
        (kvgpt.benchmark.memory.measured_kv_bytes, notebooks/04) can.
        """
        raise NotImplementedError

    def __len__(self) -> int:
        return self.length

    def __repr__(self) -> str:
        shape = None if self.keys is None else tuple(self.keys.shape)
        return f"{type(self).__name__}(length={self.length}, keys={shape}, nbytes={self.nbytes})"


class DynamicKVCache(KVCache):
    """Grows by torch.cat every step: a new (B, H, S, D) tensor each time, memory follows length.

    capacity, device and dtype mean what they mean for StaticKVCache (a bound, and what appends must be),
    but nothing is allocated ahead.
    Introduced in notebooks/04_kv_cache.ipynb.
    """

    def __init__(self, capacity: int | None = None, device=None, dtype: torch.dtype | None = None) -> None:
        self.capacity = None if capacity is None else check_positive_int("capacity", capacity)
        self.device, self.dtype = check_device("device", device, allow_meta=True), check_dtype("dtype", dtype)
        self._k: torch.Tensor | None = None
        self._v: torch.Tensor | None = None
        self.length = 0

    def append(self, k_new, v_new):
        self._check_new(k_new, v_new, self._k)
        if self._k is None and (self.dtype not in (None, k_new.dtype) or not same_device(self.device, k_new.device)):
            raise ValueError(f"k_new {k_new.dtype} on {k_new.device}: this cache was built for "
                             f"dtype={self.dtype}, device={self.device}")
        if self._k is not None:
            k_new = torch.cat([self._k, k_new], dim=2)  # (B, H, S - T, D) + (B, H, T, D) -> (B, H, S, D)
            v_new = torch.cat([self._v, v_new], dim=2)
        else:  # own the first chunk: a view would keep the whole fused q|k|v projection alive (1.5x the bytes);
            # clone, not contiguous(): a (1, H, 1, D) view already counts as contiguous and would stay a view
            k_new, v_new = k_new.clone(memory_format=torch.contiguous_format), v_new.clone(memory_format=torch.contiguous_format)
        self._k, self._v, self.length = k_new, v_new, k_new.size(2)
        return self._k, self._v

    def reset(self):
        self._k, self._v, self.length = None, None, 0

    def crop(self, length):
        check_crop_length(length, self.length)
        if length == 0:
            return self.reset()
        if length < self.length:  # own the slice: a view would keep the whole longer tensor alive
            self._k, self._v = self._k[:, :, :length].clone(), self._v[:, :, :length].clone()
        self.length = length

    keys = property(lambda self: self._k)
    values = property(lambda self: self._v)
    nbytes = property(lambda self: 0 if self._k is None else 2 * self._k.nelement() * self._k.element_size())


class StaticKVCache(KVCache):
    """Buffers of shape (B, H, capacity, D) allocated once and written in place; never reallocated.

    Allocation happens at construction when device and dtype are given, else on the first append
    (adopting the model's device and dtype). Writing past capacity raises instead of growing.

    Introduced in notebooks/04_kv_cache.ipynb.
    """

    def __init__(self, batch_size: int, n_heads: int, head_dim: int, capacity: int,
                 device=None, dtype: torch.dtype | None = None) -> None:
        sizes = {"batch_size": batch_size, "n_heads": n_heads, "head_dim": head_dim, "capacity": capacity}
        batch_size, n_heads, head_dim, capacity = (check_positive_int(k, v) for k, v in sizes.items())
        device, dtype = check_device("device", device, allow_meta=True), check_dtype("dtype", dtype)
        self.shape = (batch_size, n_heads, capacity, head_dim)  # (B, H, capacity, D)
        self.capacity, self.length = capacity, 0
        self._k = self._v = None
        if device is not None or dtype is not None:
            self._allocate(device or torch.device("cpu"), dtype or torch.float32)

    def _allocate(self, device: torch.device, dtype: torch.dtype) -> None:
        # normal tensors even when the first append runs under inference_mode: an inference tensor could
        # not be written outside it (under no_grad), so the cache would work in one mode and not the other
        with torch.inference_mode(False):
            self._k = torch.zeros(self.shape, device=device, dtype=dtype)
            self._v = torch.zeros(self.shape, device=device, dtype=dtype)

    def append(self, k_new, v_new):
        b, h, _, d = self.shape
        start, end = self.length, self.length + self._check_new(k_new, v_new, self._k)
        if k_new.shape != (b, h, end - start, d):  # checked before the first append allocates
            raise ValueError(f"k_new {tuple(k_new.shape)} {k_new.dtype} does not fit a cache of "
                             f"(B, H, ·, D) = {(b, h, d)}")
        if self._k is None:
            self._allocate(k_new.device, k_new.dtype)
        self._k[:, :, start:end] = k_new  # in place: no allocation per step
        self._v[:, :, start:end] = v_new
        self.length = end
        return self._k[:, :, :end], self._v[:, :, :end]  # (B, H, S, D) views

    def reset(self):
        self.length = 0  # stale entries beyond length are never read

    def crop(self, length):
        check_crop_length(length, self.length)
        self.length = length  # as reset: the buffers stay, entries beyond length are overwritten later

    keys = property(lambda self: None if self.length == 0 else self._k[:, :, : self.length])
    values = property(lambda self: None if self.length == 0 else self._v[:, :, : self.length])
    nbytes = property(lambda self: 0 if self._k is None else 2 * self._k.nelement() * self._k.element_size())


class KVCacheManager:
    """One cache per layer, plus the left-padding of each row of a batch.

    Shapes: pad_lengths (B,) — how many leading slots of each row are padding (None: no padding).
    Positions are slots: slot s of row b holds the token at position s - pad_lengths[b].

    Introduced in notebooks/04_kv_cache.ipynb.
    """

    def __init__(self, config: ModelConfig, batch_size: int, kind: str = "static",
                 capacity: int | None = None, device=None, dtype: torch.dtype | None = None) -> None:
        check_config("config", config)
        kind = check_choice("kind", kind, CACHE_KINDS)
        batch_size = check_positive_int("batch_size", batch_size)
        capacity = config.block_size if capacity is None else check_int("capacity", capacity, 1, config.block_size)
        device, dtype = check_device("device", device, allow_meta=True), check_dtype("dtype", dtype)
        self.config, self.batch_size, self.kind, self.capacity = config, batch_size, kind, capacity
        sizes = (batch_size, config.kv_heads, config.head_dim, capacity)  # only K/V heads are stored
        if kind == "int8":  # its own module (notebooks/12_smaller_caches.ipynb); imported here to avoid a cycle
            from .quantized_cache import Int8KVCache as static_kind
        else:
            static_kind = StaticKVCache
        self.layer_caches: list[KVCache] = [  # static buffers are (B, Hkv, capacity, D); every kind takes capacity
            DynamicKVCache(capacity, device=device, dtype=dtype) if kind == "dynamic" else
            static_kind(*sizes, device=device, dtype=dtype)
            for _ in range(config.n_layers)
        ]
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
        """Roll every layer back to its first `length` slots; the padding of each row is kept.

        Checked once before any layer changes, so a refused crop leaves every layer as it was.
        Introduced in notebooks/13_speculative_decoding.ipynb.
        """
        check_crop_length(length, self.length)
        for cache in self.layer_caches:
            cache.crop(length)

    @property
    def length(self) -> int:
        """Slots filled so far (the same in every layer after a complete model call)."""
        return self.layer_caches[0].length

    def check_call(self, model, b: int, t: int) -> None:
        """Raise ValueError unless this manager was built for `model` (layers, heads, dims, dtype, device) and
        a call of b rows and t new tokens fits: what the model asks before anything is written."""
        end, c, m = self.length + t, self.config, model.config
        model._check_context(end)
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
        """Mask for the next t queries, built once per model call: (B, 1, T, S) with padding; without, None for
        a step (T == 1 sees everything) or a first chunk (the plain triangle), (T, S) for a later chunk."""
        if self.pad_lengths is not None:
            return padded_attention_mask(self.pad_lengths, self.length, t)
        return None if t == 1 or self.length == 0 else causal_mask(t, self.length + t, device)

    def __repr__(self) -> str:
        return (f"KVCacheManager(kind={self.kind!r}, layers={len(self.layer_caches)}, batch_size={self.batch_size}, "
                f"length={self.length}, capacity={self.capacity}, nbytes={self.nbytes})")


class CachedCausalSelfAttention(CausalSelfAttention):
    """Self-attention that projects only the new tokens and reads the past from this layer's cache.

    Shapes: x (B, T, C) with T = 1 per decode step (T = prompt length at prefill) -> (B, T, C);
    the new keys and values (B, H, T, D) join the cache, queries attend over S = past + T.
    Without a cache it is exactly CausalSelfAttention (same weights).

    Introduced in notebooks/04_kv_cache.ipynb.
    """

    def forward(self, x, kv_cache: KVCache | None = None, position: int = 0, mask=None, rope=None):
        if kv_cache is None:
            return super().forward(x, mask, rope)
        if kv_cache.length != position:  # a cache shared between layers, or a skipped/repeated step
            raise ValueError(f"position={position} but this layer's cache holds {kv_cache.length} slots; "
                             "each layer must write at its own cache's length")
        q, k, v = self.split_heads(x, rope)  # (B, H, T, D), (B, Hkv, T, D): keys rotated before they are stored
        return self.merge_heads(kv_cache.attend(q, k, v, mask, self.impl))  # (B, T, C)
