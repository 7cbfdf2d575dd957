"""Grouped-query attention from a multi-head checkpoint: mean-pool each group's K/V heads (Ainslie et al. 2023).

`mean_pool_kv` makes the smaller-cache model (then uptrain it briefly: scripts/train_shakespeare_char.py
--init-from ... --n-kv-heads N); `expand_to_mha` is its exact inverse in function: it copies every K/V
head into each query head of its group, a multi-head model with the same logits.
Introduced in notebooks/12_smaller_caches.ipynb.
"""

from __future__ import annotations

import dataclasses

import torch

from .model import MiniGPTInferenceModel
from .validation import check_positive_int


def _check_heads(model: MiniGPTInferenceModel, n_kv_heads) -> None:
    h, kv = model.config.n_heads, model.config.kv_heads
    check_positive_int("n_kv_heads", n_kv_heads)
    if h % n_kv_heads or kv % n_kv_heads:
        raise ValueError(f"n_kv_heads={n_kv_heads} must divide n_heads={h} and the model's K/V heads={kv}")


def _rebuilt(model: MiniGPTInferenceModel, n_kv_heads: int, kv_rows) -> MiniGPTInferenceModel:
    """A new model with n_kv_heads K/V heads whose qkv rows are kv_rows(rows (Hkv, D, ...)) -> (n_kv_heads, D, ...)."""
    cfg = model.config
    c, d, kv = cfg.d_model, cfg.head_dim, cfg.kv_heads
    new_cfg = dataclasses.replace(cfg, n_kv_heads=None if n_kv_heads == cfg.n_heads else n_kv_heads)
    state = model.state_dict()
    for i in range(cfg.n_layers):
        for p in ("weight", "bias"):
            name = f"blocks.{i}.attn.qkv_proj.{p}"
            q, k, v = state[name].split([c, kv * d, kv * d], dim=0)  # rows: (C, ...), (Hkv * D, ...) x 2
            k, v = (kv_rows(x.reshape(kv, d, *x.shape[1:])).reshape(n_kv_heads * d, *x.shape[1:]) for x in (k, v))
            state[name] = torch.cat([q, k, v], dim=0)  # (C + 2 * n_kv_heads * D, ...)
    p = next(model.parameters())
    new = MiniGPTInferenceModel(new_cfg).to(device=p.device, dtype=p.dtype)
    new.load_state_dict(state)
    return new.eval()


def mean_pool_kv(model: MiniGPTInferenceModel, n_kv_heads: int) -> MiniGPTInferenceModel:
    """A new model with n_kv_heads K/V heads: each is the mean of its group's key (value) projections.

    Shapes: per layer the K and V rows of qkv_proj, (Hkv * D, C) weights and (Hkv * D,) biases, become
    (n_kv_heads * D, C) and (n_kv_heads * D,); query, output and MLP weights are copied unchanged.
    Group g holds the heads g * r .. (g + 1) * r - 1 (r = Hkv // n_kv_heads), the query heads that will
    share K/V head g (see kvgpt.attention.repeat_kv). The input model is not modified.

    Introduced in notebooks/12_smaller_caches.ipynb.
    """
    _check_heads(model, n_kv_heads)
    r = model.config.kv_heads // n_kv_heads
    return _rebuilt(model, n_kv_heads, lambda x: x.reshape(n_kv_heads, r, *x.shape[1:]).mean(dim=1))


def expand_to_mha(model: MiniGPTInferenceModel) -> MiniGPTInferenceModel:
    """The multi-head model that computes the same function: each K/V head copied into its group's query heads.

    Shapes: K and V rows (Hkv * D, C) -> (H * D, C), head j repeated H // Hkv times in place.

    Introduced in notebooks/12_smaller_caches.ipynb.
    """
    h = model.config.n_heads
    r = h // model.config.kv_heads
    return _rebuilt(model, h, lambda x: x.repeat_interleave(r, dim=0))


def kv_bytes_per_token(config, bytes_per_element: float = 2.0) -> float:
    """Cache bytes one position costs in one sequence: 2 (K and V) * L * n_kv_heads * D * bytes per element.

    bytes_per_element: 4 fp32, 2 bf16/fp16, 1 + 4 / D for kvgpt's int8 cache (a float32 scale per D values).

    Introduced in notebooks/12_smaller_caches.ipynb.
    """
    return 2 * config.n_layers * config.kv_heads * config.head_dim * bytes_per_element


def max_context(config, budget_bytes: float, bytes_per_element: float = 2.0, batch_size: int = 1) -> int:
    """Positions per sequence whose cache fits in budget_bytes for batch_size sequences (weights not counted).

    Introduced in notebooks/12_smaller_caches.ipynb.
    """
    return int(budget_bytes // (kv_bytes_per_token(config, bytes_per_element) * batch_size))
