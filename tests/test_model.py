"""The spec's invariants (§12) on the model: cached == full, causal isolation, positions, layers, limits."""

import pytest
import torch
from helpers import assert_close_logits, cached_model
from hypothesis import given
from hypothesis import strategies as st

from kvgpt import KVCacheManager, MiniGPTInferenceModel, ModelConfig
from kvgpt.kv_cache import CachedCausalSelfAttention

TOL = 1e-5  # fp32, weights with std 0.2 (|logits| up to ~10)

configs = st.builds(
    lambda layers, heads, hd, vocab, impl: dict(vocab_size=vocab, n_layers=layers, n_heads=heads,
                                                d_model=heads * hd, block_size=48, attn_impl=impl),
    st.integers(1, 3), st.sampled_from([1, 2, 4]), st.integers(4, 16), st.integers(2, 100),
    st.sampled_from(["sdpa", "manual"]),
)


def ids_for(model, b, t, seed):
    return torch.randint(0, model.config.vocab_size, (b, t), generator=torch.Generator().manual_seed(seed))


def decode_all(model, ids, kind, split):
    """Prefill ids[:, :split], then one-token steps; return logits at every position (B, T, V)."""
    mgr = KVCacheManager(model.config, batch_size=ids.size(0), kind=kind)
    out = [model.prefill(ids[:, :split], mgr)]
    for pos in range(split, ids.size(1)):
        out.append(model.forward_step(ids[:, pos], pos, mgr)[:, None])
        assert all(mgr.get(i).length == pos + 1 for i in range(model.config.n_layers))  # len(K) = len(V) = t
    return torch.cat(out, dim=1), mgr


@given(cfg=configs, t=st.integers(1, 48), b=st.integers(1, 3), data=st.data())
@torch.no_grad()
def test_cached_equals_full_forward(cfg, t, b, data):
    model = cached_model(**cfg)
    ids = ids_for(model, b, t, seed=t)
    split = data.draw(st.integers(1, t), label="split")
    full = model(ids)
    for kind in ("static", "dynamic"):
        got, mgr = decode_all(model, ids, kind, split)
        assert_close_logits(got, full, "cached vs full logits (fp32)")
        for i in range(model.config.n_layers):
            assert mgr.get(i).keys.shape == mgr.get(i).values.shape == (b, cfg["n_heads"], t, model.config.head_dim)


@given(cfg=configs, t=st.integers(2, 40), data=st.data())
@torch.no_grad()
def test_chunked_prefill_equals_one_pass(cfg, t, data):
    model = cached_model(**cfg)
    ids = ids_for(model, 2, t, seed=1)
    cuts = sorted(set(data.draw(st.lists(st.integers(1, t - 1), max_size=3), label="cuts")))
    mgr = KVCacheManager(model.config, batch_size=2, kind=data.draw(st.sampled_from(["static", "dynamic"])))
    parts = [model.prefill(ids[:, a:b], mgr) for a, b in zip([0, *cuts], [*cuts, t])]
    assert_close_logits(torch.cat(parts, dim=1), model(ids), "chunked prefill vs full (fp32)")


@torch.no_grad()
def test_token_by_token_priming_equals_one_pass_prefill():
    model = cached_model(n_layers=3, n_heads=4, d_model=32)
    ids = ids_for(model, 2, 20, seed=2)
    one_pass, _ = decode_all(model, ids, "static", split=20)
    by_token, _ = decode_all(model, ids, "static", split=1)
    assert_close_logits(one_pass, by_token)


@given(cfg=configs, t=st.integers(1, 30))
@torch.no_grad()
def test_manual_attention_equals_sdpa(cfg, t):
    sdpa = cached_model(**{**cfg, "attn_impl": "sdpa"})
    manual = MiniGPTInferenceModel(ModelConfig(**{**cfg, "attn_impl": "manual"})).eval()
    manual.load_state_dict(sdpa.state_dict())
    ids = ids_for(sdpa, 2, t, seed=3)
    assert_close_logits(manual(ids), sdpa(ids), "manual vs sdpa attention (fp32)")
    assert_close_logits(decode_all(manual, ids, "dynamic", 1)[0], sdpa(ids))


@given(t=st.integers(2, 30), data=st.data())
@torch.no_grad()
def test_causal_isolation(t, data):
    model = cached_model(n_layers=2, n_heads=2, d_model=16)
    ids = ids_for(model, 1, t, seed=4)
    j = data.draw(st.integers(1, t - 1), label="changed position")
    changed = ids.clone()
    changed[0, j] = (changed[0, j] + 1) % model.config.vocab_size
    before, after = model(ids), model(changed)
    assert torch.equal(before[:, :j], after[:, :j])  # nothing before j may move
    assert not torch.allclose(before[:, j:], after[:, j:])  # the test can see a change at all
    cached, _ = decode_all(model, changed, "static", split=1)
    assert_close_logits(cached[:, :j], before[:, :j])


@torch.no_grad()
def test_one_token_per_step():
    model = cached_model()
    mgr = KVCacheManager(model.config, batch_size=2)
    model.prefill(torch.zeros(2, 3, dtype=torch.long), mgr)
    with pytest.raises(ValueError, match="exactly one token per row"):
        model.forward_step(torch.zeros(2, 2, dtype=torch.long), 3, mgr)
    assert mgr.length == 3


@pytest.mark.parametrize("position", [2, 4, 0])
@torch.no_grad()
def test_position_must_equal_cache_length(position):
    model = cached_model()
    mgr = KVCacheManager(model.config, batch_size=1)
    model.prefill(torch.zeros(1, 3, dtype=torch.long), mgr)
    with pytest.raises(ValueError, match=f"position={position} but the cache holds 3"):
        model.forward_step(torch.zeros(1, dtype=torch.long), position, mgr)
    assert mgr.length == 3


@pytest.mark.parametrize("kind", ["static", "dynamic"])
@torch.no_grad()
def test_shared_cache_between_layers_is_caught(kind):
    model = cached_model(n_layers=2)
    mgr = KVCacheManager(model.config, batch_size=1, kind=kind)
    mgr.layer_caches = [mgr.layer_caches[0]] * 2  # the bug: every layer writes into one cache
    with pytest.raises(ValueError, match="each layer must write at its own cache's length"):
        model.prefill(torch.zeros(1, 3, dtype=torch.long), mgr)


@torch.no_grad()
def test_cached_attention_without_cache_is_the_reference():
    model = cached_model()
    attn = model.blocks[0].attn
    assert isinstance(attn, CachedCausalSelfAttention)
    x = torch.randn(2, 5, model.config.d_model, generator=torch.Generator().manual_seed(0))
    from kvgpt.kv_cache import DynamicKVCache
    assert_close_logits(attn(x, DynamicKVCache(), 0), attn(x))  # attention outputs, the same rule


@torch.no_grad()
def test_context_limit_raises_before_any_work():
    model = cached_model(block_size=16)
    mgr = KVCacheManager(model.config, batch_size=1)
    model.prefill(torch.zeros(1, 16, dtype=torch.long), mgr)  # exactly block_size works
    with pytest.raises(ValueError, match="17 positions exceed the model's context block_size=16"):
        model.forward_step(torch.zeros(1, dtype=torch.long), 16, mgr)
    mgr.reset_all()
    model.prefill(torch.zeros(1, 10, dtype=torch.long), mgr)
    with pytest.raises(ValueError, match="block_size=16"):
        model.prefill(torch.zeros(1, 7, dtype=torch.long), mgr)
    assert mgr.length == 10
    with pytest.raises(ValueError, match="block_size=16"):
        model(torch.zeros(1, 17, dtype=torch.long))


@pytest.mark.parametrize("bad, message", [
    (torch.tensor([[1, 67]]), "token id 67; allowed ids are 0..66"),
    (torch.tensor([[-1, 2]]), "token id -1"),
    (torch.tensor([[1.0, 2.0]]), "integer token ids"),
    (torch.zeros(1, 0, dtype=torch.long), "T >= 1"),
    (torch.zeros(3, dtype=torch.long), r"\(B, T\)"),
])
@torch.no_grad()
def test_bad_token_ids(bad, message):
    model = cached_model(vocab_size=67)
    with pytest.raises(ValueError, match=message):
        model(bad)
    mgr = KVCacheManager(model.config, batch_size=bad.size(0))
    with pytest.raises(ValueError, match=message):
        model.prefill(bad, mgr)
    assert mgr.length == 0


@torch.no_grad()
def test_forward_step_rejects_bad_ids_and_batch():
    model = cached_model(vocab_size=67)
    mgr = KVCacheManager(model.config, batch_size=2)
    model.prefill(torch.zeros(2, 2, dtype=torch.long), mgr)
    with pytest.raises(ValueError, match="token id 99"):
        model.forward_step(torch.tensor([1, 99]), 2, mgr)
    with pytest.raises(ValueError, match="batch 3 but the cache has batch_size=2"):
        model.forward_step(torch.tensor([1, 2, 3]), 2, mgr)
    with pytest.raises(ValueError, match="batch_size=2"):
        model.prefill(torch.zeros(1, 2, dtype=torch.long), mgr)


@pytest.mark.parametrize("kind", ["static", "dynamic"])
@torch.no_grad()
def test_reused_manager_after_reset_equals_fresh(kind):
    model = cached_model()
    a, b = ids_for(model, 2, 12, seed=5), ids_for(model, 2, 9, seed=6)
    reused = KVCacheManager(model.config, batch_size=2, kind=kind)
    results = []
    for ids in (a, b):
        reused.reset_all()
        out = [model.prefill(ids[:, :4], reused)] + [
            model.forward_step(ids[:, p], p, reused)[:, None] for p in range(4, ids.size(1))]
        results.append(torch.cat(out, 1))
    fresh = [decode_all(model, ids, kind, 4)[0] for ids in (a, b)]
    assert all(torch.equal(r, f) for r, f in zip(results, fresh))
    assert torch.equal(model(a), model(a))  # and the uncached path is untouched by cached runs


@torch.no_grad()
def test_left_padding_changes_nothing_whatever_the_pad_ids():
    model = cached_model()
    ids = ids_for(model, 1, 10, seed=7)
    solo = model(ids)
    for pad_id in (0, 5, model.config.vocab_size - 1):
        padded = torch.cat([torch.full((1, 6), pad_id), ids], dim=1)
        mask = torch.cat([torch.zeros(1, 6), torch.ones(1, 10)], dim=1).long()
        for impl_model in (model,):
            out = impl_model(padded, attention_mask=mask)
            assert torch.isfinite(out).all()
            assert_close_logits(out[:, 6:], solo)


def test_padding_mask_must_be_left_padding():
    model = cached_model()
    mgr = KVCacheManager(model.config, batch_size=1)
    with pytest.raises(ValueError, match="left padding"):
        model.prefill(torch.zeros(1, 3, dtype=torch.long), mgr, attention_mask=torch.tensor([[1, 0, 1]]))


@torch.no_grad()
def test_weights_are_tied_and_gpt2_shaped():
    model = cached_model()
    assert model.lm_head.weight is model.token_embedding.embedding.weight
    assert model.blocks[0].ffn.gelu.approximate == "tanh"
    assert model.blocks[0].ffn.fc.out_features == 4 * model.config.d_model


def _stored_transposed(w):
    return w.dim() == 2 and w.stride() == (1, w.size(0))  # shape (out, in), memory (in, out)


def test_weight_matrices_are_stored_transposed_and_stay_so(tmp_path):
    from kvgpt.pretrained import load_pretrained, save_pretrained
    from kvgpt.tokenizer import CharTokenizer

    model = MiniGPTInferenceModel(ModelConfig(vocab_size=11, n_layers=2, n_heads=2, d_model=8, block_size=16))
    matrices = [m.weight for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert len(matrices) == 4 * 2 + 1 and all(_stored_transposed(w) for w in matrices)
    assert model.lm_head.weight is model.token_embedding.embedding.weight  # still tied after the re-layout
    assert model.position_embedding.pos_embedding.weight.is_contiguous()  # rows are looked up: keep them rows
    for moved in (model.double(), model.float()):  # .to() keeps the strides
        assert _stored_transposed(moved.blocks[0].attn.qkv_proj.weight)
    save_pretrained(model, CharTokenizer("abcdefghijk"), tmp_path / "m")
    loaded, _ = load_pretrained(tmp_path / "m")
    assert _stored_transposed(loaded.blocks[1].ffn.proj.weight) and _stored_transposed(loaded.lm_head.weight)
    for a, b in zip(model.state_dict().values(), loaded.state_dict().values()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("dtype, tol", [(torch.float16, 5e-2), (torch.bfloat16, 2e-1)])
@torch.no_grad()
def test_low_precision_follows_the_model(dtype, tol):
    model = MiniGPTInferenceModel(ModelConfig(vocab_size=67, n_layers=2, n_heads=2, d_model=32, block_size=64))
    model = model.to(dtype).eval()
    ids = torch.randint(0, 67, (2, 12), generator=torch.Generator().manual_seed(8))
    got, mgr = decode_all(model, ids, "static", split=3)
    assert got.dtype == dtype and mgr.get(0).keys.dtype == dtype
    assert_close_logits(got, model(ids), rtol=tol)  # fp16/bf16: their own tolerance, the same rule


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
@torch.no_grad()
def test_cuda_matches_cpu():
    model = cached_model()
    ids = ids_for(model, 2, 16, seed=9)
    cpu = model(ids)
    gpu_model = MiniGPTInferenceModel(model.config).cuda().eval()
    gpu_model.load_state_dict(model.state_dict())
    got, _ = decode_all(gpu_model, ids.cuda(), "static", split=4)
    assert_close_logits(got.cpu(), cpu, rtol=1e-4)  # CUDA kernels (TF32 matmuls allowed): a looser rtol


def test_package_has_no_training_code():
    import pathlib

    import kvgpt
    for path in pathlib.Path(kvgpt.__file__).parent.rglob("*.py"):
        text = path.read_text()
        assert "torch.optim" not in text and ".backward(" not in text, path
