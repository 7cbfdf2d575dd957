"""Inference arithmetic: FLOPs, bytes and arithmetic intensity of one decode step, from the config alone.

A decode step of B rows at S key/value positions multiplies B vectors by every weight matrix and
attends over S cached positions per row. It reads every weight once (shared by the B rows) and each
row's own S cached keys and values (shared by nobody). FLOPs / bytes is the step's arithmetic
intensity; the machine's ridge point (matmul FLOP/s / read bandwidth) says which one bounds it.
Biases, layer norms, GELU and softmax are left out: O(B * C) work next to O(B * C^2).
Introduced in notebooks/08_benchmarks.ipynb.
"""

from __future__ import annotations

import math

import torch

from .memory import kv_formula_bytes


def parameter_count(config) -> int:
    """Every parameter of a GPT-2-style model, the tied embedding / LM head counted once.

    V*C token + block*C position embeddings, L * (12*C^2 + 13*C) per block, 2*C for the final norm.
    """
    c = config.d_model
    return config.vocab_size * c + config.block_size * c + config.n_layers * (12 * c * c + 13 * c) + 2 * c


def decode_flops(config, batch_size: int, positions: int) -> int:
    """Multiply-add FLOPs (2 per multiply-add) of one decode step: B rows, S = `positions` visible keys.

    Weights: 2 * B * (L * 12 * C^2 + V * C) (qkv 3C^2, output C^2, MLP 8C^2, LM head V*C).
    Attention: 4 * B * L * S * C (scores q.K over S keys, then weights . V; H * D = C).
    """
    c, layers = config.d_model, config.n_layers
    weights = 2 * batch_size * (layers * 12 * c * c + config.vocab_size * c)
    attention = 4 * batch_size * layers * positions * c
    return weights + attention


def decode_bytes(config, batch_size: int, positions: int, dtype: torch.dtype = torch.float32) -> int:
    """Bytes one decode step must read at least: every weight once, plus B rows' KV cache of S positions."""
    element = torch.empty(0, dtype=dtype).element_size()
    return parameter_count(config) * element + kv_formula_bytes(config, batch_size, positions, dtype)


def arithmetic_intensity(config, batch_size: int, positions: int, dtype: torch.dtype = torch.float32) -> float:
    """FLOPs per byte read of one decode step (decode_flops / decode_bytes)."""
    return decode_flops(config, batch_size, positions) / decode_bytes(config, batch_size, positions, dtype)


def compute_bound_batch(config, positions: int, ridge: float, dtype: torch.dtype = torch.float32) -> float:
    """The smallest batch B at which a decode step at S = `positions` reaches `ridge` FLOPs per byte.

    Solves decode_flops(B) = ridge * decode_bytes(B): both are linear in B. math.inf when the
    per-row FLOPs per per-row KV byte stay below the ridge: then no batch makes decode compute-bound.
    """
    per_row_flops = decode_flops(config, 1, positions) - decode_flops(config, 0, positions)
    fixed_bytes = decode_bytes(config, 0, positions, dtype)  # the weights, read once per step
    per_row_bytes = kv_formula_bytes(config, 1, positions, dtype)
    spare = per_row_flops - ridge * per_row_bytes
    return ridge * fixed_bytes / spare if spare > 0 else math.inf
