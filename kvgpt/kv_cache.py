"""The KV cache: each layer keeps the keys and values it already computed, so a step only projects the new token.

Two kinds behind one interface: DynamicKVCache grows by concatenation (simple, allocates every
step); StaticKVCache writes into full-length buffers allocated once (gpt-fast's and HF StaticCache's
choice: static shapes for torch.compile and CUDA graphs; serving engines page the cache instead).
Introduced in notebooks/04_kv_cache.ipynb.
"""

from __future__ import annotations

import torch

from .attention import CausalSelfAttention, attend
from .validation import check_device, check_dtype, check_kv_append, check_positive_int, same_device


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

    def attend(self, q: torch.Tensor, k_new: torch.Tensor, v_new: torch.Tensor, mask: torch.Tensor | None,
               impl: str = "sdpa") -> torch.Tensor:
        """Store the new keys/values, then attend q over every key so far. -> (B, H, T, D).

        Shapes: q (B, H, T, D), k_new and v_new (B, Hkv, T, D), mask as the call's CacheView built it (None: every
        key for one query, the plain triangle for a prompt into an empty cache). The one place a layer's cache
        meets attention: a cache that reads its keys where they sit (the paged pool) overrides it.
        Introduced in notebooks/04_kv_cache.ipynb.
        """
        k_all, v_all = self.append(k_new, v_new)  # (B, Hkv, S, D)
        return attend(q, k_all, v_all, mask, impl, causal=mask is None and q.size(-2) > 1)

    def reset(self) -> None:
        """Forget every position (a static cache keeps its buffers for the next sequence)."""
        raise NotImplementedError

    def crop(self, length: int) -> None:
        """Roll back to the first `length` positions (0 <= length <= self.length): later ones are forgotten, and
        the cache is then exactly one that was only ever given those positions.

        What speculative decoding does after the target rejects drafted tokens.
        Introduced in notebooks/13_speculative_decoding.ipynb.
        """
        raise NotImplementedError

    def check_crop(self, length) -> None:
        """Raise ValueError unless crop(length) can be done exactly (checked before any layer changes)."""
        check_crop_length(length, self.length)

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


class CachedCausalSelfAttention(CausalSelfAttention):
    """Self-attention that projects only the new tokens and reads the past from this layer's cache.

    Shapes: x (B, T, C) with T = 1 per decode step (T = prompt length at prefill) -> (B, T, C);
    the new keys and values (B, H, T, D) join the cache, queries attend over S = past + T.
    Without a cache it is exactly CausalSelfAttention (same weights). The mask is the call's, built once by
    its CacheView (kvgpt/cache_manager.py).

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
