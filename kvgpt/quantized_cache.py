"""An int8 KV cache: keys and values stored as int8 with one scale per token and head, dequantized on read.

Per-token scales for both keys and values (not KIVI's per-channel keys): measured on the embedded model in
notebooks/12_smaller_caches.ipynb, per-channel key scales gain nothing worth a full-precision residual
here (its keys have no strong outlier channels), and per-token scales let every position be quantized the
moment it arrives, so prefill and decode store exactly the same bytes. Optionally the most recent
`window` positions are also kept in full precision and read exactly.
Introduced in notebooks/12_smaller_caches.ipynb.
"""

from __future__ import annotations

import torch

from .cache_manager import CACHE_KINDS, KVCacheManager
from .config import ModelConfig
from .kv_cache import KVCache, check_crop_length
from .validation import check_choice

QMAX = 127  # symmetric int8: -127 .. 127 (dropping -128 keeps the grid symmetric around 0)
SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def quantize_per_token(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 with one float32 scale per vector along the last dim: x ~ q * scale.

    Shapes: x (..., D) -> q (..., D) int8, scale (...) float32 = max |x| / 127 over D.
    Each element is off by at most scale / 2 = max |x| / 254 (round to the nearest step).
    """
    x = x.float()
    scale = x.abs().amax(dim=-1).clamp_min(1e-12) / QMAX  # (...): an all-zero vector gets a tiny scale, not 0 / 0
    q = (x / scale[..., None]).round().clamp(-QMAX, QMAX).to(torch.int8)
    return q, scale


def dequantize(q: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """q * scale in float32, then cast: (..., D) int8, (...) -> (..., D) dtype."""
    return (q.float() * scale[..., None]).to(dtype)


class Int8KVCache(KVCache):
    """Static int8 buffers (B, H, capacity, D) plus float32 scales (B, H, capacity); `window` recent positions exact.

    Bytes held: 2 * B * H * capacity * (D + 4) [+ 2 * B * H * window * D * element size of the model dtype].
    `append` returns every key and value so far, dequantized to the input dtype (a new tensor each call).

    Introduced in notebooks/12_smaller_caches.ipynb.
    """

    def __init__(self, batch_size: int, n_heads: int, head_dim: int, capacity: int,
                 device=None, dtype: torch.dtype | None = None, window: int = 0) -> None:
        if not isinstance(window, int) or isinstance(window, bool) or not 0 <= window <= capacity:
            raise ValueError(f"window={window!r}: must be an int in 0..capacity={capacity}")
        if dtype is not None:
            check_choice("dtype", dtype, SUPPORTED_DTYPES, "what the int8 KV cache quantizes")
        self.shape = (batch_size, n_heads, capacity, head_dim)  # (B, H, capacity, D)
        self.capacity, self.window, self.length, self.dtype = capacity, window, 0, dtype
        self._q = None  # [keys, values] int8 (B, H, capacity, D); scales (B, H, capacity); exact window ring
        if device is not None or dtype is not None:
            self._allocate(torch.device(device or "cpu"), dtype or torch.float32)

    def _allocate(self, device: torch.device, dtype: torch.dtype) -> None:
        b, h, n, d = self.shape
        self.dtype = dtype
        self._q = [torch.zeros(self.shape, dtype=torch.int8, device=device) for _ in range(2)]
        self._scale = [torch.zeros(b, h, n, device=device) for _ in range(2)]
        self._exact = [torch.zeros(b, h, self.window, d, dtype=dtype, device=device) for _ in range(2)]

    def append(self, k_new, v_new):
        start, end = self.length, self.length + k_new.size(2)
        if end > self.capacity:
            raise ValueError(f"KV cache overflow: writing positions {start}..{end - 1} "
                             f"but capacity={self.capacity} (positions 0..{self.capacity - 1})")
        if self._q is None:
            check_choice("dtype", k_new.dtype, SUPPORTED_DTYPES, "what the int8 KV cache quantizes")
            self._allocate(k_new.device, k_new.dtype)
        b, h, _, d = self.shape
        if k_new.shape != (b, h, end - start, d) or k_new.dtype != self.dtype:
            raise ValueError(f"k_new {tuple(k_new.shape)} {k_new.dtype} does not fit an int8 cache of "
                             f"(B, H, ·, D) = {(b, h, d)} dequantizing to {self.dtype}")
        for i, x in enumerate((k_new, v_new)):
            self._q[i][:, :, start:end], self._scale[i][:, :, start:end] = quantize_per_token(x)
            if self.window:  # ring buffer: position p lives in slot p % window
                keep = min(self.window, end - start)
                slots = torch.arange(end - keep, end, device=x.device) % self.window
                self._exact[i][:, :, slots] = x[:, :, -keep:]
        self.length = end
        return self._read(0), self._read(1)  # (B, H, S, D)

    def _read(self, i: int) -> torch.Tensor:
        """Keys (i = 0) or values (1) of positions 0 .. length - 1, dequantized; the window exact."""
        s = self.length
        out = dequantize(self._q[i][:, :, :s], self._scale[i][:, :, :s], self.dtype)  # (B, H, S, D)
        keep = min(self.window, s)
        if keep:
            slots = torch.arange(s - keep, s, device=out.device) % self.window
            out[:, :, s - keep:] = self._exact[i][:, :, slots]
        return out

    def reset(self):
        self.length = 0  # stale entries beyond length are never read

    def check_crop(self, length) -> None:
        """Raise ValueError unless crop(length) is exact: the int8 bytes of each position depend on it alone, but
        the exact window is a ring of the last `window` positions, so a crop that needs positions the ring has
        overwritten since is refused (an int8 copy there would not be what a fresh cache reads)."""
        check_crop_length(length, self.length)
        lost_up_to = self.length - self.window  # positions < this were overwritten in the ring (if >= 0)
        if self.window and length not in (0, self.length) and max(length - self.window, 0) < lost_up_to:
            raise ValueError(f"length={length}: this int8 cache keeps the last window={self.window} positions exact "
                             f"and has overwritten the exact copies of positions < {lost_up_to}: only crop(0) or "
                             f"crop({self.length}) can be exact now (with window=0, any length can)")

    def crop(self, length):
        """Exact: the cache is then one that was only given the first `length` positions (see check_crop)."""
        self.check_crop(length)
        self.length = length  # as reset: the buffers stay, later positions are overwritten by the next append

    def stored_tensors(self) -> list[torch.Tensor]:
        """Every tensor the cache keeps (payloads, scales, exact window): what its memory is made of."""
        return [] if self._q is None else [*self._q, *self._scale, *(self._exact if self.window else [])]

    keys = property(lambda self: None if self.length == 0 else self._read(0))
    values = property(lambda self: None if self.length == 0 else self._read(1))
    nbytes = property(lambda self: sum(t.nelement() * t.element_size() for t in self.stored_tensors()))


def int8_formula_bytes(config: ModelConfig, batch_size: int, capacity: int, window: int = 0,
                       dtype: torch.dtype = torch.float32) -> int:
    """2 * L * B * Hkv * (capacity * (D + 4) + window * D * element size): int8 payload, fp32 scales, exact window.

    Introduced in notebooks/12_smaller_caches.ipynb.
    """
    element = torch.empty(0, dtype=dtype).element_size()
    per_head = capacity * (config.head_dim * 1 + 4) + window * config.head_dim * element
    return 2 * config.n_layers * batch_size * config.kv_heads * per_head


def int8_cache(config: ModelConfig, batch_size: int, capacity: int | None = None, window: int = 0,
               device=None, dtype: torch.dtype | None = None) -> KVCacheManager:
    """A KVCacheManager of Int8KVCache layers keeping `window` recent positions exact (window=0 is kind="int8").

    Introduced in notebooks/12_smaller_caches.ipynb.
    """
    manager = KVCacheManager(config, batch_size, "int8", capacity, device, dtype)
    manager.layer_caches = [Int8KVCache(batch_size, config.kv_heads, config.head_dim, manager.capacity,
                                        device, dtype, window) for _ in range(config.n_layers)]
    return manager


CACHE_KINDS["int8"] = Int8KVCache  # KVCacheManager(kind="int8"): the same factory signature as the static kind
