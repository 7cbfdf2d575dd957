"""The pieces of a Llama-style decoder: rotary position embeddings (RoPE), RMSNorm and the SwiGLU MLP.

model.py picks them by config (positions="rope", norm="rms", mlp="swiglu"); everything else (blocks,
caches, generation) is the GPT-2 engine unchanged. Introduced in notebooks/16_modern_models.ipynb.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig
from .linear import Linear


def rope_frequencies(head_dim: int, theta: float) -> torch.Tensor:
    """The rotation speed of each channel pair: theta ** (-2i / D) radians per position, i = 0 .. D/2 - 1.

    Shapes: -> (D/2,) float32. Pair 0 turns one radian per position, the last pair almost not at all.
    Introduced in notebooks/16_modern_models.ipynb.
    """
    return 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))  # (D/2,)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """(x1, x2) -> (-x2, x1) on the two halves of the last dim: HF's layout, channel i pairs with i + D/2.

    Shapes: (..., D) -> (..., D). Introduced in notebooks/16_modern_models.ipynb.
    """
    x1, x2 = x.chunk(2, dim=-1)  # (..., D/2) each
    return torch.cat((-x2, x1), dim=-1)


def rotate_interleaved(x: torch.Tensor) -> torch.Tensor:
    """(x0, x1, x2, x3, ...) -> (-x1, x0, -x3, x2, ...): the other layout, channel 2i pairs with 2i + 1 (Meta's
    original Llama code, GPT-J, vLLM's is_neox_style=False). Its cos/sin repeat each angle twice in a row.

    Shapes: (..., D) -> (..., D). Introduced in notebooks/16_modern_models.ipynb.
    """
    x1, x2 = x[..., 0::2], x[..., 1::2]  # (..., D/2) each
    return torch.stack((-x2, x1), dim=-1).flatten(-2)


def rope_cos_sin(position_ids: torch.Tensor, inv_freq: torch.Tensor, dtype: torch.dtype = torch.float32):
    """cos and sin of every (position, channel pair) angle, angles in fp32 (as HF), laid out for rotate_half.

    Shapes: position_ids (T,) or (B, T) -> cos, sin each (1 or B, 1, T, D). Positions may be negative: a
    rotation by -n moves a cached key n positions down (kvgpt/sinks.py). Introduced in notebooks/16_modern_models.ipynb.
    """
    pos = position_ids if position_ids.dim() == 2 else position_ids[None]  # (B or 1, T)
    angles = pos[..., None].float() * inv_freq.to(pos.device).float()  # (B, T, D/2)
    emb = torch.cat((angles, angles), dim=-1)[:, None]  # (B, 1, T, D): pair i is channels i and i + D/2
    return emb.cos().to(dtype), emb.sin().to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate every channel pair (i, i + D/2) of x by its angle position * frequency_i.

    Shapes: x (B, H, T, D), cos and sin (B or 1, 1, T, D) -> (B, H, T, D).
    Introduced in notebooks/16_modern_models.ipynb.
    """
    return x * cos + rotate_half(x) * sin


class RotaryEmbedding(nn.Module):
    """cos and sin of every (position, channel pair) angle, computed ONCE per model call from the positions.

    Shapes: position_ids (T,) or (B, T) ints -> cos, sin each (1 or B, 1, T, D) in `dtype`, ready to
    broadcast over the heads. The frequencies are a non-persistent buffer: nothing about RoPE is stored
    in a checkpoint. Introduced in notebooks/16_modern_models.ipynb.
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.register_buffer("inv_freq", rope_frequencies(config.head_dim, config.rope_theta), persistent=False)

    def forward(self, position_ids: torch.Tensor, dtype: torch.dtype = torch.float32):
        return rope_cos_sin(position_ids, self.inv_freq, dtype)


class RMSNorm(nn.Module):
    """x / sqrt(mean(x^2) + eps) * weight: LayerNorm without the mean subtraction and the bias.

    Shapes: (..., C) -> (..., C). Computed in fp32 and cast back, as HF's LlamaRMSNorm.
    Introduced in notebooks/16_modern_models.ipynb.
    """

    def __init__(self, width: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)  # (..., C), unit root mean square
        return self.weight * h.to(x.dtype)


class SwiGLU(nn.Module):
    """proj(silu(gate(x)) * up(x)), gate and up fused in one Linear `fc` (C -> 2 * hidden, gate first), as
    vLLM's gate_up_proj: one matmul reads x once.

    Shapes: (B, T, C) -> (B, T, C). Introduced in notebooks/16_modern_models.ipynb.
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.fc = Linear(config.d_model, 2 * config.hidden, bias=config.bias)
        self.proj = Linear(config.hidden, config.d_model, bias=config.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.fc(x).chunk(2, dim=-1)  # (B, T, hidden) each
        return self.proj(F.silu(gate) * up)  # (B, T, C)
