"""Causal self-attention without a cache: the full-sequence reference every cached path must match.

Introduced in notebooks/03_attention.ipynb.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig, check_config
from .linear import Linear
from .modern import apply_rope

# SDPA repeats K/V heads for grouped-query attention itself from torch 2.5 on; older torch gets them repeated here
SDPA_GQA = tuple(int(p) for p in torch.__version__.split("+")[0].split(".")[:2]) >= (2, 5)


def repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    """Give each query head its group's K/V head: kv head j serves query heads j * n_rep .. (j + 1) * n_rep - 1.

    Shapes: (B, Hkv, S, D) -> (B, Hkv * n_rep, S, D), each head repeated n_rep times in place
    (repeat_interleave: h0 h0 h1 h1, not h0 h1 h0 h1). Introduced in notebooks/12_smaller_caches.ipynb.
    """
    return x.repeat_interleave(n_rep, dim=1)


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
           impl: str = "sdpa", causal: bool = False) -> torch.Tensor:
    """softmax(q k^T / sqrt(D) + mask) v, explicitly ("manual") or with torch's fused kernel ("sdpa").

    Shapes: q (B, H, T, D), k and v (B, Hkv, S, D), mask (B or 1, 1, T, S) bool, True = may attend,
    or None = every query sees every key (with causal=True: the plain triangle). Returns (B, H, T, D).
    Hkv < H is grouped-query attention: query head h reads K/V head h // (H // Hkv) (see repeat_kv).
    Every query row of `mask` must allow at least one key, or softmax divides 0 by 0 (NaN).
    causal=True says the mask is the plain lower triangle (T == S, no past, no padding) and `mask` may be
    None: "sdpa" then skips the blocks above the diagonal instead of reading a mask (same numbers, less
    work); "manual" builds causal_mask(T, S) for this call (no (block_size, block_size) buffer is kept).

    Introduced in notebooks/03_attention.ipynb.
    """
    groups = q.shape[1] // k.shape[1]  # 1 for multi-head attention: nothing below runs
    if groups > 1 and not (impl == "sdpa" and SDPA_GQA):
        k, v = repeat_kv(k, groups), repeat_kv(v, groups)  # (B, H, S, D)
    if impl == "sdpa":
        gqa = {"enable_gqa": True} if groups > 1 and SDPA_GQA else {}
        if causal:
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, **gqa)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, **gqa)
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

    Shapes: x (B, T, C) -> (B, T, C); internally q (B, H, T, D), k and v (B, Hkv, T, D) with
    Hkv = config.kv_heads (= H unless grouped-query attention).

    Introduced in notebooks/03_attention.ipynb.
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        check_config("config", config)
        self.n_heads, self.head_dim = config.n_heads, config.head_dim
        self.n_kv_heads = config.kv_heads
        self.impl = config.attn_impl
        kv_width = self.n_kv_heads * self.head_dim  # = C for multi-head attention: GPT-2's 3C outputs
        # GPT-2's c_attn (q | k | v) and c_proj; Llama's q/k/v_proj fused the same way, o_proj (no biases)
        self.qkv_proj = Linear(config.d_model, config.d_model + 2 * kv_width, bias=config.bias)
        self.out_proj = Linear(config.d_model, config.d_model, bias=config.bias)
        # no (block_size, block_size) mask buffer: SDPA's is_causal needs none, other cases build (T, S) per call

    def split_heads(self, x: torch.Tensor, rope=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Project x to queries, keys and values, one slice of D channels per head; with `rope` = (cos, sin)
        (each (B or 1, 1, T, D), kvgpt/modern.py) rotate q and k by their positions: the keys a cache stores
        are the rotated ones.

        Shapes: x (B, T, C) -> q (B, H, T, D), k and v (B, Hkv, T, D).
        """
        q, k, v = self._project(x)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)  # (B, H, T, D), (B, Hkv, T, D)
        return q, k, v

    def _project(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        b, t, c = x.shape
        if self.n_kv_heads == self.n_heads:
            qkv = self.qkv_proj(x).view(b, t, 3, self.n_heads, self.head_dim)  # (B, T, 3, H, D)
            q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, H, T, D)
            return q, k, v
        kv_width = self.n_kv_heads * self.head_dim
        q, k, v = self.qkv_proj(x).split([c, kv_width, kv_width], dim=-1)  # (B, T, C), (B, T, Hkv * D) x 2
        q = q.view(b, t, self.n_heads, self.head_dim).transpose(1, 2)  # (B, H, T, D)
        k = k.view(b, t, self.n_kv_heads, self.head_dim).transpose(1, 2)  # (B, Hkv, T, D)
        v = v.view(b, t, self.n_kv_heads, self.head_dim).transpose(1, 2)  # (B, Hkv, T, D)
        return q, k, v

    def merge_heads(self, y: torch.Tensor) -> torch.Tensor:
        """Concatenate the heads and mix them: (B, H, T, D) -> (B, T, C)."""
        b, h, t, d = y.shape
        return self.out_proj(y.transpose(1, 2).reshape(b, t, h * d))  # (B, T, C)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, rope=None) -> torch.Tensor:
        """Attend over all T positions of x; `mask` (B or 1, 1, T, T) overrides the causal one; `rope`: split_heads."""
        q, k, v = self.split_heads(x, rope)  # (B, H, T, D)
        return self.merge_heads(attend(q, k, v, mask, self.impl, causal=mask is None))  # (B, T, C)
