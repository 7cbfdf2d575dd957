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

from .kv_cache import KVCacheManager
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


def sliding_forward(model, job, window: int, step=None):
    """-> forward(next_ids): logits (B, V) of the last position, sliding the window when the context is full.

    The first call (None) runs the prompt. With job.use_cache it decodes from a KV cache and re-prefills
    the last `window` tokens when a token arrives at a full cache; without, it recomputes the window every
    step (the baseline, same tokens). Each slide adds 1 to job.slides.
    Shapes: the window's ids and 0/1 mask are (B, S), S <= block_size; rows stay left-padded.
    Introduced in notebooks/13_speculative_decoding.ipynb.
    """
    block, step = model.config.block_size, step or model.forward_step
    cache = KVCacheManager(model.config, job.ids.size(0), job.cache_kind) if job.use_cache else None
    seq = [job.ids, job.mask]  # the visible window: ids (B, S), mask (B, S) or None (no padding)

    def forward(next_ids):
        if next_ids is None:
            return model.prefill(seq[0], cache, seq[1], last_only=True)
        seq[0] = torch.cat([seq[0], next_ids[:, None]], dim=1)
        seq[1] = None if seq[1] is None else torch.cat([seq[1], seq[1][:, -1:]], dim=1)
        if seq[0].size(1) > block:  # the new token has no position left: slide
            seq[0], job.slides = seq[0][:, -window:], job.slides + 1
            seq[1] = None if seq[1] is None or bool(seq[1][:, -window:].all()) else seq[1][:, -window:]
            if cache is not None:
                cache.reset_all()  # a static cache keeps its buffers: the re-prefill writes in place
                return model.prefill(seq[0], cache, seq[1], last_only=True)  # positions 0 .. W - 1
        if cache is None:
            return model(seq[0], attention_mask=seq[1], last_only=True)
        return step(next_ids, cache.length, cache)

    return forward
