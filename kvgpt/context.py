"""Generating past the context window: the "refuse" policy (the default), "slide" or "sinks" (RoPE models).

The embedded model has learned absolute positions 0 .. block_size - 1, so a full cache cannot simply
drop its oldest slot: every kept key was computed at its old position. Sliding therefore means: when a
new token finds the cache full, keep the last W tokens of the sequence (the new one included), empty
the cache and re-prefill them at positions 0 .. W - 1. Then block_size - W one-token steps fill the
cache again, so a re-prefill of W tokens comes once every block_size - W + 1 new tokens (W = block_size
is nanoGPT's crop-every-step). "sinks" (kvgpt/sinks.py, notebooks/16_modern_models.ipynb) keeps the first
`sinks` tokens and the last W and never re-prefills: a RoPE model's kept keys can move down instead.
Introduced in notebooks/13_speculative_decoding.ipynb.
"""

from __future__ import annotations

from numbers import Integral

import torch

from .cache_manager import KVCacheManager
from .validation import check_int

POLICIES = ("refuse", "slide", "sinks")
DEFAULT_SINKS = 4  # StreamingLLM's choice: four initial tokens are enough to hold the attention mass


def check_context_policy(policy: str, window, block_size: int, sinks=None):
    """Validate a policy and its window -> the window W (None for "refuse"; "slide" defaults to block_size // 2,
    "sinks" to block_size - sinks). `sinks` (only for "sinks", default 4) is checked by check_sinks.

    Introduced in notebooks/13_speculative_decoding.ipynb.
    """
    if policy not in POLICIES:
        raise ValueError(f"context_policy={policy!r}: must be one of {POLICIES}")
    if sinks is not None and policy != "sinks":
        raise ValueError(f"sinks={sinks!r}: only the 'sinks' policy takes a number of sink tokens")
    if policy == "refuse":
        if window is not None:
            raise ValueError(f"window={window!r}: only the 'slide' policy (and 'sinks') takes a window")
        return None
    if policy == "sinks":
        room = block_size - check_sinks(sinks, block_size)
        window = room if window is None else window
        if isinstance(window, bool) or not isinstance(window, Integral) or not 1 <= window <= room:
            raise ValueError(f"window={window!r}: must be an int in 1..{room} (block_size={block_size} minus the "
                             "sinks: every kept token needs a position)")
        return int(window)
    window = block_size // 2 if window is None else window
    if isinstance(window, bool) or not isinstance(window, Integral) or not 1 <= window <= block_size:
        raise ValueError(f"window={window!r}: must be an int in 1..block_size={block_size} (tokens kept by a slide)")
    return int(window)


def check_sinks(sinks, block_size: int) -> int:
    """The number of sink tokens: None -> 4, else an int in 0 .. block_size - 1. Introduced in notebooks/16."""
    return DEFAULT_SINKS if sinks is None else check_int("sinks", sinks, 0, block_size - 1)


def check_context_length(window, prompt_length: int, max_new_tokens: int, block_size: int) -> None:
    """Refuse what the policy cannot do: any overflow under "refuse" (window None), a too long prompt always.

    Introduced in notebooks/13_speculative_decoding.ipynb.
    """
    if window is None and prompt_length + max_new_tokens > block_size:
        raise ValueError(f"prompt length {prompt_length} + max_new_tokens={max_new_tokens} = "
                         f"{prompt_length + max_new_tokens} exceeds the model's context block_size={block_size} "
                         "(context_policy='slide' generates past it)")
    if prompt_length > block_size:
        raise ValueError(f"prompt length {prompt_length} exceeds the model's context block_size={block_size}")


class SlidingWindow:
    """Feeds the model past its context: when a new token finds no position left, keep the last `window` tokens.

    prompt() runs the prompt; token(next_ids) appends one token per row. With job.use_cache it decodes from a KV
    cache and, when the cache is full, empties it and re-prefills the window at positions 0 .. W - 1; without,
    it recomputes the window every step (the baseline, same tokens). Each slide adds 1 to job.slides.
    Shapes: the window's ids and 0/1 mask are (B, S), S <= block_size; rows stay left-padded; logits (B, V).
    Introduced in notebooks/13_speculative_decoding.ipynb.
    """

    def __init__(self, model, job, window: int, step=None) -> None:
        self.model, self.job, self.window, self.step = model, job, window, step or model.forward_step
        self.cache = KVCacheManager(model.config, job.ids.size(0), job.cache_kind) if job.use_cache else None
        self.ids, self.mask = job.ids, job.mask  # the visible window: (B, S) ids, (B, S) mask or None (no padding)

    def prompt(self) -> torch.Tensor:
        if self.cache is None:
            return self.model(self.ids, attention_mask=self.mask, last_only=True)
        return self.model.prefill(self.ids, self.cache, self.mask, last_only=True)

    def token(self, next_ids: torch.Tensor) -> torch.Tensor:
        self.ids = torch.cat([self.ids, next_ids[:, None]], dim=1)
        self.mask = None if self.mask is None else torch.cat([self.mask, self.mask[:, -1:]], dim=1)
        if self.ids.size(1) > self.model.config.block_size:  # the new token has no position left: slide
            self.ids, self.job.slides = self.ids[:, -self.window:], self.job.slides + 1
            keep = None if self.mask is None else self.mask[:, -self.window:]
            self.mask = None if keep is None or bool(keep.all()) else keep
            if self.cache is not None:
                self.cache.reset_all()  # a static cache keeps its buffers: the re-prefill writes in place
            return self.prompt()  # positions 0 .. W - 1
        if self.cache is None:
            return self.model(self.ids, attention_mask=self.mask, last_only=True)
        return self.step(next_ids, self.cache.length, self.cache)
