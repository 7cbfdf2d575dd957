"""Llama-style architecture in the one model (kvgpt/modern.py): GPT-2 stays bit-identical, configs round-trip,
RoPE is relative, RMSNorm and SwiGLU equal transformers' Llama modules, and every cache path of a RoPE model
equals the full forward: static, dynamic, int8, chunked, left-padded batches, the paged engine, speculative
decoding and the compiled step."""

from __future__ import annotations

import dataclasses
import importlib
import subprocess
import sys
import tarfile
import io
from pathlib import Path

import pytest
import torch
from helpers import random_model, record_diff
from hypothesis import given, settings
from hypothesis import strategies as st

from kvgpt import AutoregressiveGenerator, KVCacheManager, MiniGPTInferenceModel, ModelConfig, load_pretrained
from kvgpt.modern import RMSNorm, RotaryEmbedding, SwiGLU, apply_rope
from kvgpt.quantized_cache import int8_cache

ROOT = Path(__file__).resolve().parents[1]
BEFORE = "ebbcef8"  # main just before issue 21 (the Llama-style choices): GPT-2 must compute exactly as there
LLAMA = dict(positions="rope", norm="rms", mlp="swiglu", bias=False)


def rope_config(n_layers=2, n_heads=4, n_kv_heads=2, d_model=32, block_size=64, vocab_size=67, **kw):
    return ModelConfig(vocab_size=vocab_size, n_layers=n_layers, n_heads=n_heads, d_model=d_model,
                       block_size=block_size, n_kv_heads=n_kv_heads, **{**LLAMA, **kw})


def relative(a, b) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


# ---------------------------------------------------------------- GPT-2 unchanged

@pytest.fixture(scope="module")
def old_kvgpt(tmp_path_factory):
    """The package as it was at BEFORE, imported as kvgpt_before (from git history; skips in a shallow clone)."""
    run = subprocess.run(["git", "-C", str(ROOT), "archive", BEFORE, "kvgpt"], capture_output=True)
    if run.returncode:
        pytest.skip(f"git archive {BEFORE} failed (a shallow clone has no history): {run.stderr.decode()[:200]}")
    d = tmp_path_factory.mktemp("before")
    tarfile.open(fileobj=io.BytesIO(run.stdout)).extractall(d, filter="data")
    (d / "kvgpt").rename(d / "kvgpt_before")
    sys.path.insert(0, str(d))
    try:
        return importlib.import_module("kvgpt_before")
    finally:
        sys.path.remove(str(d))


@pytest.mark.parametrize("kv", [None, 2])
@torch.no_grad()
def test_gpt2_outputs_are_bit_identical_to_before(old_kvgpt, kv):
    cfg = dict(vocab_size=67, n_layers=2, n_heads=4, d_model=32, block_size=64, n_kv_heads=kv)
    new = random_model(ModelConfig(**cfg))
    old = old_kvgpt.MiniGPTInferenceModel(old_kvgpt.ModelConfig(**cfg)).eval()
    assert list(old.state_dict()) == list(new.state_dict())  # the same parameter names, in the same order
    old.load_state_dict(new.state_dict())
    ids = torch.randint(0, 67, (3, 40), generator=torch.Generator().manual_seed(0))
    mask = torch.ones(3, 40, dtype=torch.long)
    mask[1, :7] = 0
    assert torch.equal(new(ids), old(ids))
    assert torch.equal(new(ids, attention_mask=mask), old(ids, attention_mask=mask))
    for kind in ("static", "dynamic", "int8"):
        outs = []
        for pkg, model in ((sys.modules["kvgpt"], new), (old_kvgpt, old)):
            cache = pkg.KVCacheManager(model.config, 3, kind)
            outs.append(torch.cat([model.prefill(ids[:, :9], cache, mask[:, :9]), model.prefill(ids[:, 9:20], cache)]
                                  + [model.forward_step(ids[:, p], p, cache)[:, None] for p in range(20, 40)], 1))
        assert torch.equal(outs[0], outs[1]), kind


@torch.no_grad()
def test_embedded_gpt2_model_generates_as_before(old_kvgpt):
    new, tok = load_pretrained("shakespeare-char")
    old = old_kvgpt.MiniGPTInferenceModel(old_kvgpt.ModelConfig.from_dict(new.config.to_dict())).eval()
    old.load_state_dict(new.state_dict())
    prompt = tok.encode("ROMEO:\n")
    sampler = dict(temperature=0.8, top_k=40, seed=1)
    a = AutoregressiveGenerator(new).generate(prompt, 60, sampler=sys.modules["kvgpt"].Sampler(**sampler))
    b = old_kvgpt.AutoregressiveGenerator(old).generate(prompt, 60, sampler=old_kvgpt.Sampler(**sampler))
    assert a == b
    assert torch.equal(new(torch.tensor([a])), old(torch.tensor([a])))


def test_gpt2_configs_write_what_they_wrote_before():
    cfg = ModelConfig(vocab_size=80, n_layers=4, n_heads=4, d_model=128, block_size=256)
    assert list(cfg.to_dict()) == ["vocab_size", "n_layers", "n_heads", "d_model", "block_size", "dropout", "attn_impl"]
    llama = rope_config(mlp_hidden=416, tie_embeddings=False, rope_theta=5e5)
    assert {k: v for k, v in llama.to_dict().items() if k not in cfg.to_dict()} == {
        "n_kv_heads": 2, "positions": "rope", "rope_theta": 5e5, "norm": "rms", "mlp": "swiglu", "mlp_hidden": 416,
        "tie_embeddings": False, "bias": False}
    assert ModelConfig.from_dict(llama.to_dict()) == llama


@pytest.mark.parametrize("field, value, match", [
    ("positions", "alibi", "positions='alibi'"), ("norm", "batch", "norm='batch'"), ("mlp", "relu", "mlp='relu'"),
    ("rope_theta", 0.0, "rope_theta=0.0"), ("rope_theta", float("nan"), "rope_theta=nan"),
    ("norm_eps", -1e-5, "norm_eps=-1e-05"), ("mlp_hidden", 0, "mlp_hidden=0"), ("mlp_hidden", 2.5, "mlp_hidden=2.5"),
    ("tie_embeddings", 1, "tie_embeddings=1"), ("bias", "no", "bias='no'"),
])
def test_bad_architecture_fields_are_named(field, value, match):
    with pytest.raises(ValueError, match=match.replace("(", r"\(")):
        ModelConfig(vocab_size=5, n_layers=1, n_heads=2, d_model=8, block_size=8, **{field: value})


def test_rope_needs_an_even_head_dim_and_swiglu_defaults_to_8c_over_3():
    with pytest.raises(ValueError, match="head_dim=3.*odd"):
        rope_config(n_heads=2, n_kv_heads=None, d_model=6)
    assert rope_config(d_model=128).hidden == 352 and rope_config(d_model=128, mlp="gelu").hidden == 512


def test_llama_model_has_no_position_table_no_biases_and_the_named_parameters():
    model = MiniGPTInferenceModel(rope_config(n_layers=1, mlp_hidden=40))
    names = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert names == {"token_embedding.embedding.weight": (67, 32), "blocks.0.ln_1.weight": (32,),
                     "blocks.0.attn.qkv_proj.weight": (64, 32), "blocks.0.attn.out_proj.weight": (32, 32),
                     "blocks.0.ln_2.weight": (32,), "blocks.0.ffn.fc.weight": (80, 32),
                     "blocks.0.ffn.proj.weight": (32, 40), "final_layernorm.weight": (32,),
                     "lm_head.weight": (67, 32)}  # q | k | v = 32 + 16 + 16; gate | up = 40 + 40
    assert model.lm_head.weight is model.token_embedding.embedding.weight
    untied = MiniGPTInferenceModel(rope_config(tie_embeddings=False))
    assert untied.lm_head.weight is not untied.token_embedding.embedding.weight


# ---------------------------------------------------------------- the pieces

@settings(max_examples=50)
@given(m=st.integers(0, 300), n=st.integers(0, 300), shift=st.integers(-200, 200), seed=st.integers(0, 2**16),
       theta=st.sampled_from([100.0, 1e4, 5e5]))
def test_rope_scores_depend_only_on_the_distance(m, n, shift, seed, theta):
    """q at position m against k at position n scores the same as at m + shift, n + shift."""
    rotary = RotaryEmbedding(rope_config(rope_theta=theta))  # D = 8
    g = torch.Generator().manual_seed(seed)
    q, k = (torch.randn(1, 1, 1, 8, generator=g, dtype=torch.float64) for _ in range(2))

    def score(pm, pn):
        cq, sq = rotary(torch.tensor([max(pm, 0)]), torch.float64)
        ck, sk = rotary(torch.tensor([max(pn, 0)]), torch.float64)
        return (apply_rope(q, cq, sq) * apply_rope(k, ck, sk)).sum().item()

    shift = max(shift, -min(m, n))  # positions stay >= 0
    # angles are computed in fp32 (as HF does): an angle of p radians is off by up to ~p * 6e-8
    tol = 2e-7 * (1 + max(m, n) + abs(shift)) * (q.norm() * k.norm()).item()
    assert score(m, n) == pytest.approx(score(m + shift, n + shift), abs=tol)


def test_rope_keeps_lengths_and_position_zero_is_the_identity():
    rotary = RotaryEmbedding(rope_config())
    x = torch.randn(2, 4, 10, 8, generator=torch.Generator().manual_seed(0))
    cos, sin = rotary(torch.arange(10))
    y = apply_rope(x, cos, sin)
    assert torch.allclose(y.norm(dim=-1), x.norm(dim=-1), atol=1e-5)
    assert torch.equal(y[:, :, 0], x[:, :, 0])


@torch.no_grad()
def test_rmsnorm_and_swiglu_equal_transformers_llama_modules():
    llama = pytest.importorskip("transformers.models.llama.modeling_llama")
    from transformers import LlamaConfig

    cfg = rope_config(mlp_hidden=24, norm_eps=1e-6)
    x = torch.randn(2, 5, 32, generator=torch.Generator().manual_seed(0)) * 3
    ours = RMSNorm(32, 1e-6)
    ours.weight.normal_()
    theirs = llama.LlamaRMSNorm(32, eps=1e-6)
    theirs.weight.copy_(ours.weight)
    assert torch.equal(ours(x), theirs(x))
    mlp = SwiGLU(cfg)
    for p in mlp.parameters():
        p.normal_(0, 0.2)
    hf = llama.LlamaMLP(LlamaConfig(hidden_size=32, intermediate_size=24))
    hf.gate_proj.weight.copy_(mlp.fc.weight[:24])  # gate first, then up: vLLM's gate_up_proj order
    hf.up_proj.weight.copy_(mlp.fc.weight[24:])
    hf.down_proj.weight.copy_(mlp.proj.weight)
    assert torch.allclose(mlp(x), hf(x), atol=1e-6)


# ---------------------------------------------------------------- every cache kind

@settings(max_examples=30)
@given(n_layers=st.integers(1, 3), heads=st.sampled_from([(4, 4), (4, 2), (4, 1), (2, 2), (6, 3)]),
       head_dim=st.sampled_from([2, 4, 8]), b=st.integers(1, 3),
       chunks=st.lists(st.integers(1, 9), min_size=1, max_size=4),
       steps=st.integers(0, 12), kind=st.sampled_from(["static", "dynamic", "int8-exact"]),
       impl=st.sampled_from(["sdpa", "manual"]), seed=st.integers(0, 2**16))
@torch.no_grad()
def test_rope_cached_equals_full_for_every_kind(n_layers, heads, head_dim, b, chunks, steps, kind, impl, seed):
    """Chunked prefill then one-token steps == one full forward. int8-exact: the int8 cache with every position in
    its full-precision window (the quantized part is lossy by design; test_int8_rope_error_is_bounded)."""
    h, kv = heads
    cfg = rope_config(n_layers, h, kv, h * head_dim, attn_impl=impl, rope_theta=100.0)  # theta 100: fast turns
    model = random_model(cfg, seed % 5)
    total = sum(chunks) + steps
    ids = torch.randint(0, 67, (b, total), generator=torch.Generator().manual_seed(seed))
    cache = (int8_cache(cfg, b, total, window=total) if kind == "int8-exact" else KVCacheManager(cfg, b, kind))
    outs, p = [], 0
    for c in chunks:
        outs.append(model.prefill(ids[:, p:p + c], cache))
        p += c
    outs += [model.forward_step(ids[:, q], q, cache)[:, None] for q in range(p, total)]
    full = model(ids)
    diff = record_diff("RoPE cached vs full (fp32), relative", relative(torch.cat(outs, 1), full))
    assert diff <= 1e-5


@torch.no_grad()
def test_int8_rope_error_is_bounded():
    model = random_model(rope_config())
    ids = torch.randint(0, 67, (2, 50), generator=torch.Generator().manual_seed(1))
    cache = KVCacheManager(model.config, 2, "int8")
    got = torch.cat([model.prefill(ids[:, :10], cache)] + [model.forward_step(ids[:, p], p, cache)[:, None]
                                                            for p in range(10, 50)], 1)
    err = relative(got, model(ids))
    assert 0 < err < 0.05  # keys quantized after rotation: lossy, and small


@pytest.mark.parametrize("kind", ["static", "dynamic", "int8"])
def test_rope_left_padded_batch_equals_each_row_alone(kind):
    """A padded row's positions start at 0 after its padding: its rotations must not count the pads."""
    model = random_model(rope_config())
    prompts = [[5, 6, 7, 8, 9, 10, 11, 12], [1, 2], [40, 41, 42, 43, 44]]
    gen = AutoregressiveGenerator(model)
    batch, logits = gen.generate(prompts, 20, cache_kind=kind, return_logits=True)
    for row, prompt in enumerate(prompts):
        alone, alone_logits = gen.generate(prompt, 20, cache_kind=kind, return_logits=True)
        assert batch[row] == alone
        assert record_diff("RoPE batched vs alone, relative", relative(logits[row], alone_logits)) <= 1e-5


@torch.no_grad()
def test_positions_off_by_one_after_padding_change_the_logits():
    """The failure the padded positions prevent: the same row run at positions shifted by the padding."""
    model = random_model(rope_config())
    ids = torch.tensor([[0, 0, 5, 6, 7, 8]])
    mask = torch.tensor([[0, 0, 1, 1, 1, 1]])
    right = model(ids, attention_mask=mask)[0, -1]
    alone = model(ids[:, 2:])[0, -1]
    assert relative(right, alone) <= 1e-5
    cache = KVCacheManager(model.config, 1)  # positions 0..5 instead of 0..3: only the mask, no pad lengths
    cache.pad_lengths = torch.tensor([0])
    wrong = model.prefill(ids, cache, last_only=True)[0]
    assert relative(wrong, alone) > 1e-3


def test_rope_paged_engine_equals_each_request_alone():
    from kvgpt.serving import LLMEngine

    model = random_model(rope_config())
    prompts = [list(range(1, 1 + n)) for n in (3, 17, 9, 30, 1)]
    news = [12, 5, 20, 8, 15]
    engine = LLMEngine(model, block_size=4, max_num_seqs=3, max_num_batched_tokens=16)
    ids = {engine.add_request(p, n): i for i, (p, n) in enumerate(zip(prompts, news))}
    made = {}
    while engine.has_unfinished():
        for out in engine.step():
            made.setdefault(ids[out.request_id], []).append(out.token)
    for i, (p, n) in enumerate(zip(prompts, news)):
        assert made[i] == AutoregressiveGenerator(model).generate(p, n)[len(p):], f"request {i}"


@pytest.mark.parametrize("draft", ["ngram", "1-layer"])
def test_rope_speculative_greedy_equals_greedy(draft):
    """Rejected drafts are cropped from the cache: the next keys must be rotated at the kept length."""
    from kvgpt.speculative import SpeculativeGenerator

    model = random_model(rope_config(vocab_size=11))
    source = "ngram" if draft == "ngram" else random_model(dataclasses.replace(model.config, n_layers=1), 4)
    for prompt in ([1, 2, 3, 1, 2, 3, 1], [7], [4, 5, 6, 7, 8, 9, 4, 5]):
        for k in (1, 3, 6):
            ref = AutoregressiveGenerator(model).generate(prompt, 30)
            assert SpeculativeGenerator(model, source).generate(prompt, 30, k=k) == ref


def test_rope_compiled_step_equals_eager():
    from kvgpt.compiled import CompiledDecoder

    model = random_model(rope_config())
    prompts = [[5, 6, 7, 8], [1, 2]]
    eager = AutoregressiveGenerator(model).generate(prompts, 20, return_logits=True)
    gen = AutoregressiveGenerator(model)
    gen.compiled = CompiledDecoder(model, "eager")  # the graph's code path without compiling (seconds)
    graph = gen.generate(prompts, 20, return_logits=True)
    assert graph[0] == eager[0]
    assert all(relative(a, b) <= 1e-5 for a, b in zip(graph[1], eager[1]))


@torch.no_grad()
def test_attention_weights_plot_rotates_like_the_model():
    """kvgpt.plots.attention_weights on a RoPE GQA model: weights @ values reproduce the layer's attention."""
    from kvgpt.plots import attention_weights

    model = random_model(rope_config(n_layers=2))
    ids = torch.randint(0, 67, (1, 12), generator=torch.Generator().manual_seed(0))
    attn, seen = model.blocks[1].attn, []
    handle = attn.register_forward_hook(lambda m, args, out: seen.append((args[0], out)))
    model(ids)
    handle.remove()
    x, out = seen[0]
    _, _, v = attn.split_heads(x)
    w = attention_weights(model, ids, layer=1)  # (1, H, T, T)
    assert torch.allclose(attn.merge_heads(w @ v.repeat_interleave(2, dim=1)), out, atol=1e-5)
