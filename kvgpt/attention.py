"""Causal self-attention without a cache: the full-sequence reference every cached path must match.

Introduced in notebooks/03_attention.ipynb.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig
from .validation import check_config


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
           impl: str = "sdpa", causal: bool = False) -> torch.Tensor:
    """softmax(q k^T / sqrt(D) + mask) v, explicitly ("manual") or with torch's fused kernel ("sdpa").

    Shapes: q (B, H, T, D), k and v (B, H, S, D), mask (B or 1, 1, T, S) bool, True = may attend,
    or None = every query sees every key (with causal=True: the plain triangle). Returns (B, H, T, D).
    Every query row of `mask` must allow at least one key, or softmax divides 0 by 0 (NaN).
    causal=True says the mask is the plain lower triangle (T == S, no past, no padding) and `mask` may be
    None: "sdpa" then skips the blocks above the diagonal instead of reading a mask (same numbers, less
    work); "manual" builds causal_mask(T, S) for this call (no (block_size, block_size) buffer is kept).

    Introduced in notebooks/03_attention.ipynb.
    """
    if impl == "sdpa":
        if causal:
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    if causal and mask is None:
        mask = causal_mask(q.size(-2), k.size(-2), q.device)  # (T, S)
    scores = (q @ k.transpose(-2, -1)) / math.sqrt(q.size(-1))  # (B, H, T, D) @ (B, H, D, S) -> (B, H, T, S)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    weights = torch.softmax(scores, dim=-1)  # (B, H, T, S), each row sums to 1
    return weights @ v  # (B, H, T, S) @ (B, H, S, D) -> (B, H, T, D)


def causal_mask(t: int, s: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Query i (the (s - t + i)-th position overall) may see keys 0 .. s - t + i.

    Shapes: -> (T, S) bool. With no past (t == s) it is the lower triangle; with a cache of
    s - t past positions every query also sees the whole past.

    Introduced in notebooks/03_attention.ipynb.
    """
    query_pos = torch.arange(s - t, s, device=device)  # (T,)
    return torch.arange(s, device=device)[None, :] <= query_pos[:, None]  # (T, S)


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention over a whole sequence, recomputing every key and value.

    Shapes: x (B, T, C) -> (B, T, C); internally q, k, v are (B, H, T, D).

    Introduced in notebooks/03_attention.ipynb.
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        check_config("config", config)
        self.n_heads, self.head_dim = config.n_heads, config.head_dim
        self.impl = config.attn_impl
        self.qkv_proj = nn.Linear(config.d_model, 3 * config.d_model)  # GPT-2's c_attn
        self.out_proj = nn.Linear(config.d_model, config.d_model)  # GPT-2's c_proj
        # no (block_size, block_size) mask buffer: SDPA's is_causal needs none, other cases build (T, S) per call

    def split_heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Project x to queries, keys and values, one slice of D channels per head.

        Shapes: x (B, T, C) -> q, k, v each (B, H, T, D).
        """
        b, t, c = x.shape
        qkv = self.qkv_proj(x).view(b, t, 3, self.n_heads, self.head_dim)  # (B, T, 3, H, D)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, H, T, D)
        return q, k, v

    def merge_heads(self, y: torch.Tensor) -> torch.Tensor:
        """Concatenate the heads and mix them: (B, H, T, D) -> (B, T, C)."""
        b, h, t, d = y.shape
        return self.out_proj(y.transpose(1, 2).reshape(b, t, h * d))  # (B, T, C)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Attend over all T positions of x; `mask` (B or 1, 1, T, T) overrides the causal one."""
        q, k, v = self.split_heads(x)  # (B, H, T, D)
        return self.merge_heads(attend(q, k, v, mask, self.impl, causal=mask is None))  # (B, T, C)
