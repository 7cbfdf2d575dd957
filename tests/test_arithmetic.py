"""Inference arithmetic (kvgpt/benchmark/arithmetic.py) checked against what the code does, not against itself."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import cached_model
from hypothesis import given
from hypothesis import strategies as st
from torch.utils.flop_counter import FlopCounterMode

from kvgpt import KVCacheManager
from kvgpt.benchmark.arithmetic import (
    arithmetic_intensity,
    compute_bound_batch,
    decode_bytes,
    decode_flops,
    parameter_count,
)
from kvgpt.benchmark.memory import kv_formula_bytes, weight_bytes
from kvgpt.benchmark.suite import GPT2_SMALL


def measured_step_flops(model, batch_size: int, past: int) -> int:
    """FLOPs torch counts for one forward_step after a `past`-token prefill (FlopCounterMode sees every matmul)."""
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(model.config.vocab_size, (batch_size, past + 1), generator=gen)
    cache = KVCacheManager(model.config, batch_size, kind="dynamic")
    with torch.inference_mode():
        model.prefill(ids[:, :past], cache, last_only=True)
        with FlopCounterMode(display=False) as counter:
            model.forward_step(ids[:, past], past, cache)
    return counter.get_total_flops()


@given(layers=st.integers(1, 3), heads=st.sampled_from([1, 2, 4]), width=st.sampled_from([8, 16, 32]),
       batch=st.integers(1, 3), past=st.integers(1, 20))
def test_decode_flops_equal_the_counted_flops_of_a_step(layers, heads, width, batch, past):
    # manual attention: its two matmuls are counted exactly (SDPA's CPU kernel is not counted the same way)
    model = cached_model(vocab_size=37, n_layers=layers, n_heads=heads, d_model=width, attn_impl="manual")
    assert measured_step_flops(model, batch, past) == decode_flops(model.config, batch, past + 1)


def test_decode_flops_grow_with_the_visible_positions():
    # a cached step is O(S): the attention term must be there (a formula without it fails the test above too)
    model = cached_model(vocab_size=37, n_layers=2, n_heads=2, d_model=16, attn_impl="manual")
    short, long = measured_step_flops(model, 1, 4), measured_step_flops(model, 1, 36)
    assert long - short == 4 * 2 * 32 * 16  # 4 * L * (S_long - S_short) * C


@pytest.mark.parametrize("kw", [dict(n_layers=2, n_heads=2, d_model=32), dict(n_layers=1, n_heads=4, d_model=16)])
def test_parameter_count_and_bytes_match_the_model(kw):
    model = cached_model(vocab_size=41, **kw)
    assert parameter_count(model.config) == sum(p.numel() for p in model.parameters())
    assert decode_bytes(model.config, 3, 10) == weight_bytes(model) + kv_formula_bytes(model.config, 3, 10)


def test_gpt2_small_numbers():
    assert parameter_count(GPT2_SMALL) == 124_439_808
    per_token_row = kv_formula_bytes(GPT2_SMALL, 1, 1)
    assert per_token_row == 73_728  # 72 KiB per token and row in fp32
    assert 6_750 < parameter_count(GPT2_SMALL) * 4 / per_token_row < 6_752
    assert 0.49 < arithmetic_intensity(GPT2_SMALL, 1, 16) < 0.5  # ~B/2 FLOP per byte in fp32


def test_compute_bound_batch_solves_the_balance():
    ridge = 10.0
    b = compute_bound_batch(GPT2_SMALL, 64, ridge)
    assert math.isfinite(b)
    bytes_at_b = parameter_count(GPT2_SMALL) * 4 + kv_formula_bytes(GPT2_SMALL, 1, 64) * b
    assert math.isclose(decode_flops(GPT2_SMALL, 1, 64) * b, ridge * bytes_at_b, rel_tol=1e-9)
    above, below = (arithmetic_intensity(GPT2_SMALL, n, 64) for n in (math.ceil(b), math.floor(b)))
    assert above >= ridge > below
    assert compute_bound_batch(GPT2_SMALL, 1024, ridge) == math.inf  # per-row KV reads never amortize
