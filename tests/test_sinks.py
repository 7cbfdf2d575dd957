"""Attention sinks (kvgpt/sinks.py): exact positions after every eviction, boundaries, batches, refusals.

The reference is an independent implementation of the same policy that stores keys BEFORE rotation and
rotates every kept key at read time at the position the policy assigns (kept index 0 .. S - 1): no
re-rotation ever happens there, so it also bounds the error kvgpt's re-rotate-on-shift accumulates.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings, strategies as st

from helpers import random_model, record_diff
from kvgpt import AutoregressiveGenerator, ModelConfig
from kvgpt.attention import attend
from kvgpt.modern import apply_rope
from kvgpt.sinks import SinkCacheManager


def rope_config(n_layers=2, n_heads=4, n_kv_heads=2, d_model=32, block_size=48, vocab_size=61, attn_impl="sdpa"):
    return ModelConfig(vocab_size=vocab_size, n_layers=n_layers, n_heads=n_heads, d_model=d_model,
                       block_size=block_size, n_kv_heads=n_kv_heads, positions="rope", norm="rms", mlp="swiglu",
                       bias=False, attn_impl=attn_impl)


@torch.no_grad()
def reference_logits(model, tokens, prompt_length, sinks, window):
    """Logits after each token (from the prompt's last on), the policy replayed one token at a time with
    UNROTATED keys: before each generated token, drop the oldest non-sink tokens beyond sinks + window - 1."""
    raw_k = [[] for _ in model.blocks]  # per layer, per kept token: (1, Hkv, 1, D) before rotation
    vals = [[] for _ in model.blocks]
    kept, out = [], []
    for i, tok in enumerate(tokens):
        while i >= prompt_length and len(kept) + 1 > sinks + window:  # the prompt itself is never evicted
            drop = sinks  # the oldest token after the sinks
            del kept[drop]
            for layer in range(len(model.blocks)):
                del raw_k[layer][drop], vals[layer][drop]
        kept.append(i)
        cos, sin = model.rotary(torch.arange(len(kept)))  # (1, 1, S, D): kept index = position
        x = model.token_embedding(torch.tensor([[tok]]))  # (1, 1, C)
        for layer, block in enumerate(model.blocks):
            q, k, v = block.attn._project(block.ln_1(x))  # unrotated (1, H, 1, D), (1, Hkv, 1, D)
            raw_k[layer].append(k)
            vals[layer].append(v)
            keys = apply_rope(torch.cat(raw_k[layer], 2), cos, sin)  # (1, Hkv, S, D) at today's positions
            q = apply_rope(q, cos[..., -1:, :], sin[..., -1:, :])
            y = attend(q, keys, torch.cat(vals[layer], 2), None, "manual")  # one query sees every kept key
            x = x + block.attn.merge_heads(y)
            x = x + block.ffn(block.ln_2(x))
        if i >= prompt_length - 1:
            out.append(model._logits(x, last_only=True)[0])
    return torch.stack(out)  # (N + 1, V)


def run_sinks(model, prompt, n_new, sinks, window, kind="static"):
    gen = AutoregressiveGenerator(model, context_policy="sinks", sinks=sinks, window=window)
    tokens, logits = gen.generate(prompt, n_new, cache_kind=kind, return_logits=True)
    return tokens, logits, gen.last_stats


def check_against_reference(model, prompt, n_new, sinks, window, kind="static", name="sinks vs reference"):
    tokens, logits, stats = run_sinks(model, prompt, n_new, sinks, window, kind)
    ref = reference_logits(model, tokens[:-1], len(prompt), sinks, window)  # the last token is never fed back
    diff = record_diff(name, ((logits - ref).abs().max() / ref.abs().max()).item())
    assert diff <= 1e-5, f"sinks={sinks} window={window} prompt={len(prompt)}: relative logit error {diff:.2e}"
    return tokens, stats


@settings(max_examples=25)
@given(n_layers=st.integers(1, 3), heads=st.sampled_from([(4, 4), (4, 2), (4, 1), (2, 2)]),
       sinks=st.integers(0, 5), window=st.integers(1, 12), prompt_length=st.integers(1, 24),
       n_new=st.integers(1, 30), seed=st.integers(0, 2**16), kind=st.sampled_from(["static", "dynamic"]))
def test_every_step_matches_the_unrotated_reference(n_layers, heads, sinks, window, prompt_length, n_new, seed, kind):
    model = random_model(rope_config(n_layers, *heads), seed=seed % 7)
    prompt = torch.randint(0, 61, (prompt_length,), generator=torch.Generator().manual_seed(seed)).tolist()
    check_against_reference(model, prompt, n_new, sinks, window, kind)


def test_many_re_rotations_stay_within_tolerance():
    """A window key is re-rotated by -1 at every step it survives: 40 of them here, 150 steps past the window."""
    model = random_model(rope_config(n_layers=2, block_size=64))
    check_against_reference(model, list(range(1, 30)), 150, 4, 40, name="sinks vs reference (long)")


@pytest.mark.parametrize("sinks, window, prompt_length, n_new, slides", [
    (4, 8, 12, 1, 0),  # the prompt fills sinks + window exactly: its logits need no eviction
    (4, 8, 12, 2, 1),  # the first step past the window evicts one token
    (4, 8, 11, 3, 1),  # one free slot first, then the first eviction
    (0, 6, 10, 5, 4),  # no sinks: a plain window of positions 0 .. 5
    (3, 1, 5, 6, 5),  # W = 1: the sinks and the newest token only
    (4, 8, 30, 4, 3),  # a prompt longer than sinks + window: the first step evicts 18 tokens at once
    (6, 4, 3, 12, 4),  # a prompt shorter than the sinks: the generated tokens become sinks too
])
def test_eviction_boundaries(sinks, window, prompt_length, n_new, slides):
    model = random_model(rope_config(n_layers=2))
    prompt = [(7 * i + 3) % 61 for i in range(prompt_length)]
    _, stats = check_against_reference(model, prompt, n_new, sinks, window)
    assert stats.slides == slides  # the steps that evicted: the boundary is where it should be


def test_one_layer_equals_a_fresh_forward_over_the_kept_tokens():
    """With one layer a key depends on its token and position only, so the cache IS a fresh forward over the
    kept tokens at positions 0 .. S - 1. (Deeper layers' kept keys still carry what evicted tokens told them.)"""
    model = random_model(rope_config(n_layers=1))
    prompt, sinks, window = [5, 9, 2, 33, 17, 8, 40, 1, 11, 3], 3, 6
    tokens, logits, _ = run_sinks(model, prompt, 25, sinks, window)
    for j in range(logits.size(0)):
        seen = tokens[: len(prompt) + j]  # what the j-th new token was predicted from
        kept = seen if j == 0 else seen[:sinks] + seen[-window:]
        fresh = model(torch.tensor([kept]))[0, -1]
        diff = record_diff("sinks (1 layer) vs fresh forward over the kept tokens",
                           ((logits[j] - fresh).abs().max() / fresh.abs().max()).item())
        assert diff <= 1e-5, f"step {j}: {diff:.2e}"


def test_deeper_layers_differ_from_a_fresh_forward():
    """The same check fails with two layers: what the policy keeps is not what a re-prefill would compute."""
    model = random_model(rope_config(n_layers=2))
    prompt, sinks, window = [5, 9, 2, 33, 17, 8, 40, 1, 11, 3], 3, 6
    tokens, logits, _ = run_sinks(model, prompt, 6, sinks, window)
    kept = tokens[:sinks] + tokens[len(prompt) + 5 - window: len(prompt) + 5]
    assert (logits[5] - model(torch.tensor([kept]))[0, -1]).abs().max() > 1e-3


@pytest.mark.parametrize("kind", ["static", "dynamic"])
def test_left_padded_batch_equals_each_row_alone(kind):
    """Rows hold different numbers of real tokens, so they evict different numbers; each equals itself alone."""
    model = random_model(rope_config(n_layers=2))
    prompts = [list(range(1, 20)), [3, 4, 5], [9] * 11, [2]]
    gen = AutoregressiveGenerator(model, context_policy="sinks", sinks=2, window=7)
    batch, batch_logits = gen.generate(prompts, 25, cache_kind=kind, return_logits=True)
    for row, prompt in enumerate(prompts):
        alone, alone_logits = gen.generate(prompt, 25, cache_kind=kind, return_logits=True)
        assert batch[row] == alone
        diff = record_diff("sinks batched vs alone", (batch_logits[row] - alone_logits).abs().max().item())
        assert diff <= 1e-5 * alone_logits.abs().max().item()


def test_make_room_keeps_sinks_and_newest_and_moves_them_down():
    model = random_model(rope_config(n_layers=1))
    cache = SinkCacheManager(model.config, 1, "static", sinks=2, window=3)
    with torch.no_grad():
        model.prefill(torch.tensor([[1, 2, 3, 4, 5, 6, 7]]), cache)
        before = cache.layer_caches[0].keys.clone()
        assert cache.make_room(1) == 3 and cache.length == 4  # 7 + 1 - (2 + 3): tokens 3, 4 and 5 go
        after = cache.layer_caches[0].keys
        assert torch.equal(after[:, :, :2], before[:, :, :2])  # sinks: not moved, not rotated
        expected = apply_rope(before[:, :, 5:], *model.rotary(torch.full((2,), -3)))  # 6, 7 moved down by 3
        assert torch.allclose(after[:, :, 2:], expected, atol=1e-6)
        assert cache.make_room(1) == 0  # room for one more already


def test_refusals_name_the_reason():
    learned = random_model(ModelConfig(vocab_size=61, n_layers=1, n_heads=2, d_model=16, block_size=32))
    with pytest.raises(ValueError, match="needs a RoPE model.*cannot be moved"):
        AutoregressiveGenerator(learned, context_policy="sinks", window=8)
    model = random_model(rope_config())
    with pytest.raises(ValueError, match="window=45: must be an int in 1..44"):
        AutoregressiveGenerator(model, context_policy="sinks", sinks=4, window=45)
    with pytest.raises(ValueError, match="sinks=48"):
        AutoregressiveGenerator(model, context_policy="sinks", sinks=48)
    with pytest.raises(ValueError, match="only the 'sinks' policy"):
        AutoregressiveGenerator(model, context_policy="slide", sinks=4)
    with pytest.raises(ValueError, match="eager steps only"):
        AutoregressiveGenerator(model, context_policy="sinks", compile=True)
    gen = AutoregressiveGenerator(model, context_policy="sinks", sinks=4, window=8)
    with pytest.raises(ValueError, match="re-quantize"):
        gen.generate([1, 2], 3, cache_kind="int8")
    with pytest.raises(ValueError, match="use_cache=False"):
        gen.generate([1, 2], 3, use_cache=False)
    assert gen.window == 8 and AutoregressiveGenerator(model, context_policy="sinks").window == 44  # 48 - 4


def test_generates_far_past_the_context():
    model = random_model(rope_config(block_size=16))
    tokens, _, stats = run_sinks(model, [1, 2, 3], 200, 4, 12)
    assert len(tokens) == 203 and stats.slides == 186  # steps 14 .. 199: every step once 16 tokens are cached
