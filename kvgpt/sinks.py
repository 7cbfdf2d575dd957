"""Attention sinks (StreamingLLM, Xiao et al. 2023): keep the first s tokens and the last W, evict the middle.

A RoPE model's cached keys carry their position as a rotation, and attention only sees position differences,
so a full cache can drop a middle token and move on without a re-prefill: every kept window key moves down
by the number evicted, which is one more rotation, by -n positions (the rotation of a sum is the product of
the rotations). Keys stay cached AFTER rotation, as in every other cache kind; the kept window is re-rotated
once per eviction (executorch's RopeWithAttentionSink does the same). Positions are then exactly what a fresh
forward over the kept tokens would assign: sinks 0 .. s - 1, the window s .. s + W - 1.
A learned-position model cannot do this: its keys were computed from the table row of their old position.
Introduced in notebooks/16_modern_models.ipynb.
"""

from __future__ import annotations

import torch

from .cache_manager import KVCacheManager
from .modern import apply_rope, rope_cos_sin, rope_frequencies
from .validation import check_int


def check_sinks_model(config) -> None:
    """ValueError unless the model's positions can move (RoPE): the sinks policy's one requirement."""
    if config.positions != "rope":
        raise ValueError(f"context_policy='sinks' needs a RoPE model (config.positions='rope'), got "
                         f"positions={config.positions!r}: a learned-position model's cached keys were computed from "
                         "their absolute position's embedding and cannot be moved down after an eviction; "
                         "use context_policy='slide' (re-prefill the window) instead")


def check_sinks_cache_kind(kind: str) -> None:
    """ValueError for the int8 cache: the sinks policy re-rotates kept keys, which would re-quantize them each time."""
    if kind == "int8":
        raise ValueError("cache_kind='int8' with context_policy='sinks': every eviction re-rotates the kept keys, "
                         "which would re-quantize them each time; use 'static' or 'dynamic'")


class SinkCacheManager(KVCacheManager):
    """A KVCacheManager whose `make_room(t)` evicts the oldest non-sink tokens of each row before a call.

    Row b keeps its first `sinks` tokens and its newest tokens so that, after the t new ones are appended,
    at most sinks + window real tokens remain. Rows of a left-padded batch hold different numbers of real
    tokens, so they evict different numbers n_b; the freed slots become left padding (pad_lengths grows),
    which keeps one slot count for every row. Shapes: each layer's keys/values (B, Hkv, S, D).
    Introduced in notebooks/16_modern_models.ipynb.
    """

    def __init__(self, config, batch_size: int, kind: str = "static", sinks: int = 4, window: int = 64,
                 capacity: int | None = None, device=None, dtype=None) -> None:
        check_sinks_model(config)
        check_sinks_cache_kind(kind)
        self.sinks = check_int("sinks", sinks, 0, config.block_size - 1)
        self.window = check_int("window", window, 1, config.block_size - self.sinks)
        super().__init__(config, batch_size, kind, capacity, device, dtype)
        self.evicted = 0  # tokens evicted from the longest row so far
        self._inv_freq = rope_frequencies(config.head_dim, config.rope_theta)  # (D/2,)

    def real_lengths(self) -> torch.Tensor:
        """Tokens each row holds (its slots minus its padding). -> (B,) long."""
        pads = self.pad_lengths if self.pad_lengths is not None else torch.zeros(self.batch_size, dtype=torch.long)
        return self.length - pads.cpu()

    def make_room(self, t: int) -> int:
        """Evict so that t new tokens per row leave at most sinks + window real tokens. -> slots freed (0: none)."""
        keep = self.sinks + self.window
        if self.pad_lengths is None:  # every row holds `length` tokens: one n for all, moved in place
            n = self.length + t - keep
            if n <= 0:
                return 0
            if n > self.length - self.sinks:
                raise ValueError(f"{t} new tokens do not fit beside {self.sinks} sinks in a window of {self.window}")
            end = self.length  # read once: `length` is layer 0's, which the loop shortens
            for cache in self.layer_caches:
                self._shift_window(cache, n, end)
            self.evicted += n
            return n
        real = self.real_lengths()  # (B,)
        evict = (real + t - keep).clamp(min=0)  # (B,) n_b
        if not bool(evict.any()):
            return 0
        if bool(((evict > 0) & (evict > real - self.sinks)).any()):  # more than the window holds
            raise ValueError(f"{t} new tokens do not fit beside {self.sinks} sinks in a window of {self.window}")
        n = int(evict.max())  # slots every row gives up: the fullest row evicts exactly that many
        pads = self.length - real  # (B,)
        new_pads = pads - n + evict  # (B,) the rows that evicted fewer keep (some of) their padding
        slot = torch.arange(self.length - n)  # (S',) new slot ids
        # new slot j of row b reads old slot j + n inside the padding and the sinks' stretch shifted, else
        # j + n + ... : in old-slot terms, sinks stay at pads + i, window tokens come from n_b further on
        first_window = new_pads + self.sinks  # (B,) new slot of each row's first kept window token
        source = slot[None, :] + n - evict[:, None] * (slot[None, :] < first_window[:, None])  # (B, S')
        source = torch.where(slot[None, :] < new_pads[:, None], 0, source)  # padding: any slot, masked anyway
        shift = torch.where(slot[None, :] >= first_window[:, None], -evict[:, None], 0)  # (B, S') positions moved
        for cache in self.layer_caches:
            self._gather_rows(cache, source, shift)
        self.pad_lengths = None if self.pad_lengths is None and not bool(new_pads.any()) else new_pads.to(
            self.layer_caches[0].keys.device)
        self.evicted += n
        return n

    def _shift_window(self, cache, n: int, end: int) -> None:
        """Drop the n oldest window slots of one layer: the rest of the window moves down n slots, and n
        positions, so its keys turn by -n * theta_i (one rotation of the kept window per eviction)."""
        k, v = cache.keys, cache.values  # (B, Hkv, S, D) views of the filled slots
        s = self.sinks
        cos, sin = rope_cos_sin(torch.tensor([-n], device=k.device), self._inv_freq, k.dtype)  # (1, 1, 1, D)
        k[:, :, s:end - n] = apply_rope(k[:, :, s + n:end], cos, sin)
        v[:, :, s:end - n] = v[:, :, s + n:end].clone()  # overlapping ranges: copy out first
        cache.crop(end - n)

    def _gather_rows(self, cache, source: torch.Tensor, shift: torch.Tensor) -> None:
        """Left-padded rows evict different numbers n_b: gather each row's kept slots in order and rotate the
        moved window keys by their -n_b positions."""
        k, v = cache.keys, cache.values  # (B, Hkv, S, D)
        b, h, _, d = k.shape
        index = source.to(k.device)[:, None, :, None].expand(b, h, -1, d)  # (B, Hkv, S', D)
        k, v = k.gather(2, index), v.gather(2, index)  # new tensors: the buffers can be overwritten below
        cos, sin = rope_cos_sin(shift.to(k.device), self._inv_freq, k.dtype)  # (B, 1, S', D)
        k = apply_rope(k, cos, sin)  # shift 0: cos 1, sin 0, unchanged
        cache.reset()
        cache.append(k, v)


class SinkWindow:
    """Feeds the model past its context under the sinks policy: prompt() runs the prompt, token(next_ids) one more.

    The prompt is at most block_size tokens (positions 0 .. P - 1). Every token() first evicts what exceeds
    sinks + window (SinkCacheManager.make_room), then decodes one token per row from the same cache: no re-prefill,
    unlike context.SlidingWindow. job.slides counts the steps that evicted. Shapes: logits (B, V).
    Introduced in notebooks/16_modern_models.ipynb.
    """

    def __init__(self, model, job, sinks: int, window: int, step=None) -> None:
        self.model, self.job, self.step = model, job, step or model.forward_step
        capacity = max(job.ids.size(1), sinks + window)  # the prompt, then never more than sinks + window
        self.cache = SinkCacheManager(model.config, job.ids.size(0), job.cache_kind, sinks, window, capacity)

    def prompt(self) -> torch.Tensor:
        return self.model.prefill(self.job.ids, self.cache, self.job.mask, last_only=True)

    def token(self, next_ids: torch.Tensor) -> torch.Tensor:
        if self.cache.make_room(1):
            self.job.slides += 1
        return self.step(next_ids, self.cache.length, self.cache)
