"""Grouped-query / multi-query attention: the default is today's model bit for bit; every n_kv_heads dividing
n_heads keeps cached == full and batched == alone; the cache stores only n_kv_heads; the converter's algebra."""

import dataclasses
import json
from unittest import mock

import pytest
import torch
import torch.nn.functional as F
from helpers import assert_close_logits, cached_model, random_model
from hypothesis import given
from hypothesis import strategies as st

import kvgpt.attention
from kvgpt import KVCacheManager, MiniGPTInferenceModel, ModelConfig
from kvgpt.attention import CausalSelfAttention, causal_mask
from kvgpt.benchmark.memory import kv_formula_bytes, measured_kv_bytes
from kvgpt.evaluation import cached_loss, heldout_windows
from kvgpt.gqa import expand_to_mha, mean_pool_kv
from kvgpt.hf import config_from_hf
from kvgpt.pretrained import available_models, data_dir, load_pretrained, save_pretrained
from kvgpt.tokenizer import CharTokenizer

TOL = 1e-5  # fp32, weights with std 0.2 (|logits| up to ~10)
BASE = dict(vocab_size=40, n_layers=2, n_heads=4, d_model=32, block_size=48)


@st.composite
def gqa_configs(draw):
    """Any n_kv_heads dividing n_heads (1 = multi-query, n_heads = multi-head), both attention kernels."""
    heads = draw(st.sampled_from([1, 2, 3, 4, 6, 8]))
    kv = draw(st.sampled_from([d for d in range(1, heads + 1) if heads % d == 0]))
    return dict(vocab_size=draw(st.integers(2, 60)), n_layers=draw(st.integers(1, 3)), n_heads=heads,
                d_model=heads * draw(st.sampled_from([2, 4, 8])), block_size=40, n_kv_heads=kv,
                attn_impl=draw(st.sampled_from(["sdpa", "manual"])))


def ids_for(vocab, b, t, seed):
    return torch.randint(0, vocab, (b, t), generator=torch.Generator().manual_seed(seed))


def decode_all(model, ids, kind, split, mask=None):
    """Prefill ids[:, :split] (with optional left-padding mask), then one-token steps -> (B, T, V), manager."""
    mgr = KVCacheManager(model.config, batch_size=ids.size(0), kind=kind)
    out = [model.prefill(ids[:, :split], mgr, mask)]
    for pos in range(split, ids.size(1)):
        out.append(model.forward_step(ids[:, pos], pos, mgr)[:, None])
    return torch.cat(out, dim=1), mgr


# ---------------------------------------------------------------- n_kv_heads == n_heads is today's model

def legacy_split_heads(self, x, rope=None):
    """split_heads exactly as before n_kv_heads existed (commit 8a68af4); `rope` is always None for GPT-2 (issue 21)."""
    b, t, c = x.shape
    qkv = self.qkv_proj(x).view(b, t, 3, self.n_heads, self.head_dim)
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
    return q, k, v


def legacy_attend(q, k, v, mask, impl="sdpa", causal=False):
    """attend exactly as before n_kv_heads existed (commit 8a68af4), with issue 14's contract: causal=True and
    no mask means the plain triangle, built per call (no mask buffer)."""
    if impl == "sdpa":
        if causal:
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    if causal and mask is None:
        mask = causal_mask(q.size(-2), k.size(-2), q.device)
    scores = (q @ k.transpose(-2, -1)) / (q.size(-1) ** 0.5)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return torch.softmax(scores, dim=-1) @ v


def run_everything(model, ids):
    """Full forward, cached decode (static and dynamic) and a padded batch: every attention path."""
    mask = torch.ones_like(ids)
    mask[0, :3] = 0
    return [model(ids), decode_all(model, ids, "static", 5)[0], decode_all(model, ids, "dynamic", 1)[0],
            model(ids, attention_mask=mask)]


@pytest.mark.parametrize("impl", ["sdpa", "manual"])
@pytest.mark.parametrize("explicit", [False, True])
@torch.no_grad()
def test_n_kv_heads_equal_to_n_heads_is_bit_identical_to_the_old_model(impl, explicit):
    old_cfg = ModelConfig(**BASE, attn_impl=impl)  # no n_kv_heads: how every existing config is built
    cfg = dataclasses.replace(old_cfg, n_kv_heads=old_cfg.n_heads if explicit else None)
    torch.manual_seed(0)
    model = MiniGPTInferenceModel(cfg).eval()  # GPT-2 init, same seed: the same draws as before
    torch.manual_seed(0)
    old = MiniGPTInferenceModel(old_cfg).eval()
    assert model.blocks[0].attn.qkv_proj.weight.shape == (3 * 32, 32)  # GPT-2's c_attn, unchanged
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), old.state_dict().values()))
    ids = ids_for(40, 2, 20, seed=0)
    new = run_everything(model, ids)
    with mock.patch.object(CausalSelfAttention, "split_heads", legacy_split_heads), \
            mock.patch("kvgpt.attention.attend", legacy_attend), mock.patch("kvgpt.kv_cache.attend", legacy_attend):
        before = run_everything(old, ids)
    assert all(torch.equal(a, b) for a, b in zip(new, before))


def test_embedded_checkpoint_reads_as_multi_head():
    model, _ = load_pretrained("shakespeare-char")
    assert model.config.n_kv_heads is None and model.config.kv_heads == model.config.n_heads == 4
    assert "n_kv_heads" not in model.config.to_dict()  # config.json of MHA models reads exactly as before


# ---------------------------------------------------------------- every n_kv_heads dividing n_heads

@given(cfg=gqa_configs(), t=st.integers(1, 40), b=st.integers(1, 3), data=st.data())
@torch.no_grad()
def test_cached_equals_full_forward(cfg, t, b, data):
    model = cached_model(**cfg)
    ids = ids_for(cfg["vocab_size"], b, t, seed=t)
    split = data.draw(st.integers(1, t), label="split")
    full = model(ids)
    for kind in ("static", "dynamic"):
        got, mgr = decode_all(model, ids, kind, split)
        assert_close_logits(got, full, "GQA cached vs full logits (fp32)")
        d = model.config.head_dim
        for i in range(cfg["n_layers"]):  # only the K/V heads are stored
            assert mgr.get(i).keys.shape == mgr.get(i).values.shape == (b, cfg["n_kv_heads"], t, d)


@given(cfg=gqa_configs(), t=st.integers(2, 30), pads=st.lists(st.integers(0, 5), min_size=2, max_size=3))
@torch.no_grad()
def test_batched_left_padded_equals_each_row_alone(cfg, t, pads):
    model = cached_model(**cfg)
    rows = [ids_for(cfg["vocab_size"], 1, max(1, t - p), seed=i)[0] for i, p in enumerate(pads)]
    width = max(len(r) for r in rows)
    ids = torch.stack([F.pad(r, (width - len(r), 0)) for r in rows])  # (B, width), left padded
    mask = torch.stack([F.pad(torch.ones_like(r), (width - len(r), 0)) for r in rows])
    split = min(width, max(1, width - 3, max(width - len(r) for r in rows) + 1))  # every row has a real token
    batched, _ = decode_all(model, ids, "static", split, mask[:, :split])  # the mask describes the prefilled ids
    for i, r in enumerate(rows):
        alone, _ = decode_all(model, r[None], "dynamic", max(1, len(r) - (width - split)))
        got = batched[i, width - len(r):]  # the row's real positions
        assert_close_logits(got, alone[0], "GQA batched vs alone (fp32)")


@given(cfg=gqa_configs(), b=st.integers(1, 3), t=st.integers(1, 20))
@torch.no_grad()
def test_cache_bytes_are_two_l_b_kvheads_s_d_bytes_measured_from_storage(cfg, b, t):
    model = cached_model(**cfg)
    c = model.config
    ids = ids_for(c.vocab_size, b, t, seed=0)
    for kind, capacity in (("static", 30), ("dynamic", None)):
        mgr = KVCacheManager(c, b, kind, capacity=capacity or c.block_size)
        model.prefill(ids, mgr)
        s = capacity or t  # a static cache holds its capacity; a dynamic one what is filled
        formula = 2 * c.n_layers * b * cfg["n_kv_heads"] * s * c.head_dim * 4
        assert measured_kv_bytes(mgr) == mgr.nbytes == formula == kv_formula_bytes(c, b, s)


@torch.no_grad()
def test_grouped_query_attention_shrinks_the_cache_by_n_heads_over_n_kv_heads():
    sizes = {}
    for kv in (4, 2, 1):
        model = cached_model(**BASE, n_kv_heads=kv)
        mgr = KVCacheManager(model.config, 2, "static", capacity=16)
        model.prefill(ids_for(40, 2, 4, seed=0), mgr)
        sizes[kv] = measured_kv_bytes(mgr)
    assert sizes[4] == 2 * sizes[2] == 4 * sizes[1]


# ---------------------------------------------------------------- the converter and the head order

@given(cfg=gqa_configs(), t=st.integers(1, 30))
@torch.no_grad()
def test_expand_to_mha_computes_the_same_function(cfg, t):
    model = cached_model(**cfg)
    mha = expand_to_mha(model)
    assert mha.config.kv_heads == cfg["n_heads"] and mha.config.n_kv_heads is None
    ids = ids_for(cfg["vocab_size"], 2, t, seed=1)
    assert_close_logits(mha(ids), model(ids), "GQA vs its expanded MHA (fp32)")
    back = mean_pool_kv(mha, cfg["n_kv_heads"])  # the mean of identical copies: the original weights (to rounding)
    assert all(torch.allclose(a, b, rtol=1e-6, atol=0) for a, b in zip(back.state_dict().values(),
                                                                     model.state_dict().values()))


@pytest.mark.parametrize("impl, torch_gqa", [("sdpa", True), ("sdpa", False), ("manual", False)])
@pytest.mark.parametrize("heads, kv", [(4, 2), (6, 3), (8, 2)])
@torch.no_grad()
def test_every_attention_path_groups_query_heads_in_repeat_interleave_order(impl, torch_gqa, heads, kv):
    """SDPA's own grouping (torch >= 2.5), its fallback for older torch, and the manual path all match MHA."""
    model = cached_model(vocab_size=40, n_layers=2, n_heads=heads, d_model=8 * heads, block_size=48, n_kv_heads=kv,
                         attn_impl=impl)
    ids = ids_for(40, 2, 12, seed=3)
    with mock.patch.object(kvgpt.attention, "SDPA_GQA", torch_gqa and kvgpt.attention.SDPA_GQA):
        got, _ = decode_all(model, ids, "static", 5)
    assert_close_logits(got, expand_to_mha(model)(ids), "GQA vs its expanded MHA (fp32)")


def tiled_repeat_kv(x, n_rep):
    """The wrong order: h0 h1 h0 h1 (torch.repeat) where query heads expect h0 h0 h1 h1."""
    return x.repeat(1, n_rep, 1, 1)


@pytest.mark.parametrize("kv", [1, 2])
@torch.no_grad()
def test_repeating_kv_heads_in_the_wrong_order_is_caught(kv):
    model = cached_model(**BASE, n_kv_heads=kv, attn_impl="manual")  # manual: always expands with repeat_kv
    mha, ids = expand_to_mha(model), ids_for(40, 2, 12, seed=2)
    with mock.patch.object(kvgpt.attention, "repeat_kv", tiled_repeat_kv):
        wrong = (model(ids) - mha(ids)).abs().max().item()
    assert (wrong > 1e-2) == (kv == 2)  # with one K/V head (MQA) both orders are the same copy


@torch.no_grad()
def test_mean_pool_averages_each_groups_heads_and_leaves_the_rest():
    model = cached_model(**BASE)  # multi-head, 4 heads of D = 8
    pooled = mean_pool_kv(model, 2)
    c, d = 32, 8
    w, pw = model.blocks[1].attn.qkv_proj.weight, pooled.blocks[1].attn.qkv_proj.weight
    assert pw.shape == (c + 2 * 2 * d, c)
    assert torch.equal(pw[:c], w[:c])  # queries untouched
    for part in (0, 1):  # keys, values
        heads = w[c + part * 4 * d: c + (part + 1) * 4 * d].reshape(4, d, c)
        got = pw[c + part * 2 * d: c + (part + 1) * 2 * d].reshape(2, d, c)
        assert torch.allclose(got[0], (heads[0] + heads[1]) / 2) and torch.allclose(got[1], (heads[2] + heads[3]) / 2)
    b, pb = model.blocks[1].attn.qkv_proj.bias, pooled.blocks[1].attn.qkv_proj.bias
    assert torch.allclose(pb[c: c + d], (b[c: c + d] + b[c + d: c + 2 * d]) / 2)
    assert torch.equal(pooled.blocks[0].ffn.fc.weight, model.blocks[0].ffn.fc.weight)
    assert model.config.n_kv_heads is None and pooled.config.n_kv_heads == 2  # the input is not modified


def test_gqa_model_round_trips_through_save_and_load(tmp_path):
    model = cached_model(vocab_size=5, n_layers=1, n_heads=4, d_model=16, block_size=8, n_kv_heads=2)
    assert ModelConfig.from_dict({**model.config.to_dict(), "val_loss": 1.0}) == model.config
    save_pretrained(model, CharTokenizer("abcde"), tmp_path)
    loaded, _ = load_pretrained(tmp_path)
    ids = ids_for(5, 1, 8, seed=0)
    with torch.no_grad():
        assert loaded.config == model.config and torch.equal(loaded(ids), model(ids))


# ---------------------------------------------------------------- bad configurations

@pytest.mark.parametrize("value", [0, -2, True, 2.0, "2"])
def test_bad_n_kv_heads_values(value):
    with pytest.raises(ValueError, match=f"n_kv_heads={value!r}"):
        ModelConfig(**BASE, n_kv_heads=value)


@pytest.mark.parametrize("value", [3, 8])
def test_n_kv_heads_must_divide_n_heads(value):
    with pytest.raises(ValueError, match=f"n_heads=4 is not divisible by n_kv_heads={value}"):
        ModelConfig(**BASE, n_kv_heads=value)


@pytest.mark.parametrize("value", [3, 0, True])
def test_mean_pool_rejects_a_head_count_that_does_not_divide(value):
    with pytest.raises(ValueError, match=f"n_kv_heads={value!r}"):
        mean_pool_kv(cached_model(**BASE), value)
    with pytest.raises(ValueError, match="must divide"):
        mean_pool_kv(cached_model(**BASE, n_kv_heads=2), 4)  # pooling cannot add heads


def test_gpt2_conversions_refuse_grouped_query_configs():
    with pytest.raises(ValueError, match="n_kv_heads=2 != n_heads=4; GPT-2 has no grouped-query"):
        random_model(ModelConfig(**BASE, n_kv_heads=2)).to_hf()
    hf = {"n_layer": 2, "n_head": 4, "n_embd": 32, "n_positions": 48, "vocab_size": 40, "num_key_value_heads": 2}
    with pytest.raises(ValueError, match="num_key_value_heads=2 != n_head=4"):
        config_from_hf(hf)
    assert config_from_hf({**hf, "num_key_value_heads": 4}).n_kv_heads is None


# ---------------------------------------------------------------- the shipped GQA / MQA models

@pytest.mark.parametrize("kv", [2, 1])
def test_shipped_gqa_models_load_and_record_their_conversion(kv):
    name = f"shakespeare-char-kv{kv}"
    assert name in available_models()
    model, tok = load_pretrained(name)
    mha, _ = load_pretrained("shakespeare-char")
    assert model.config == dataclasses.replace(mha.config, n_kv_heads=kv) and tok.chars == load_pretrained()[1].chars
    c = json.loads((data_dir() / name / "config.json").read_text())
    t = c["training"]
    assert t["complete"] and t["iterations"] == 400 and t["init_from"] == "kvgpt/data/shakespeare-char"
    assert c["val_loss"] < 1.6 < 3.0 < t["val_loss_converted"]  # uptraining recovered what pooling lost
    ids = heldout_windows(tok)
    with torch.no_grad():  # on the shipped slice: within a few hundredths of the whole-set figure
        assert abs(cached_loss(model, ids) - c["val_loss"]) < 0.1
        assert abs(cached_loss(mean_pool_kv(mha, kv), ids) - t["val_loss_converted"]) < 0.3
