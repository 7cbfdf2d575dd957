"""kvgpt/linear.py: the oneDNN-packed linear computes what nn.Linear computes, never from a stale copy."""

from __future__ import annotations

import pytest
import torch
from helpers import assert_close_logits, cached_model, random_model
from hypothesis import given
from hypothesis import strategies as st

import kvgpt.linear as kl
from kvgpt import AutoregressiveGenerator, ModelConfig, load_pretrained
from kvgpt.linear import Linear, resolve_backend, set_linear_backend

pytestmark = pytest.mark.skipif(not kl.onednn_available(), reason="this torch build has no oneDNN packed linear")


def _linears(model):
    return [m for m in model.modules() if isinstance(m, Linear)]


@given(layers=st.integers(1, 3), heads=st.sampled_from([1, 2, 4]), width=st.sampled_from([8, 16, 32]),
       batch=st.integers(1, 5), t=st.integers(1, 9), hint=st.sampled_from([1, 8]), seed=st.integers(0, 2**16))
def test_onednn_logits_equal_mkl(layers, heads, width, batch, t, hint, seed):
    model = random_model(ModelConfig(vocab_size=37, n_layers=layers, n_heads=heads, d_model=heads * width,
                                     block_size=32), seed)
    ids = torch.randint(0, 37, (batch, t), generator=torch.Generator().manual_seed(seed))
    with torch.inference_mode():
        ref = model(ids)
        assert set_linear_backend(model, "onednn", hint) == "onednn"
        out = model(ids)
    set_linear_backend(model, "mkl")
    assert_close_logits(out, ref, "onednn vs mkl logits")


def test_every_linear_is_packed_and_the_lm_head_too():
    model = random_model(ModelConfig(vocab_size=37, n_layers=2, n_heads=2, d_model=16, block_size=16))
    set_linear_backend(model, "onednn")
    layers = _linears(model)
    assert len(layers) == 2 * 4 + 1 and all(m._packed is not None for m in layers)
    assert model.lm_head in layers and model.linear_backend == "onednn"
    set_linear_backend(model, "mkl")
    assert all(m._packed is None for m in layers) and model.linear_backend == "mkl"


def test_embedded_model_generates_the_same_tokens_on_both_backends():
    model, tok = load_pretrained()
    gen, prompt = AutoregressiveGenerator(model), tok.encode("ROMEO:")
    ref = gen.generate(prompt, 120)
    try:
        set_linear_backend(model, "onednn", 1)
        assert gen.generate(prompt, 120) == ref
        assert gen.generate([prompt, tok.encode("To be")], 40) == [ref[:46], gen.generate(tok.encode("To be"), 40)]
    finally:
        set_linear_backend(model, "mkl")


def test_weights_changed_after_packing_are_repacked_not_stale():
    config = ModelConfig(vocab_size=37, n_layers=2, n_heads=2, d_model=16, block_size=16)
    model, other = random_model(config, seed=1), random_model(config, seed=2)
    ids = torch.randint(0, 37, (2, 7), generator=torch.Generator().manual_seed(0))
    set_linear_backend(model, "onednn")
    with torch.inference_mode():
        model(ids)  # uses the packs
    model.load_state_dict(other.state_dict())  # in-place copies: every weight's version counter moves
    with torch.inference_mode():
        assert_close_logits(model(ids), other(ids))
    with torch.no_grad():
        model.blocks[0].ffn.fc.weight.mul_(0.5)  # one more in-place change, no load_state_dict
        packed = model(ids)
    set_linear_backend(model, "mkl")
    with torch.no_grad():
        assert_close_logits(packed, model(ids))


def test_dtype_and_device_changes_fall_back_or_repack():
    config = ModelConfig(vocab_size=37, n_layers=1, n_heads=2, d_model=16, block_size=16)
    model, ids = random_model(config), torch.randint(0, 37, (1, 5), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = model(ids)
        set_linear_backend(model, "onednn")
        model.double()  # new storage in another dtype: the fp32 packs may not be used
        assert_close_logits(model(ids), ref)
        model.float()  # new fp32 storage: the packs are rebuilt from it
        assert_close_logits(model(ids), ref)


def test_training_forward_uses_the_differentiable_path():
    model = random_model(ModelConfig(vocab_size=37, n_layers=1, n_heads=2, d_model=16, block_size=16)).train()
    set_linear_backend(model, "onednn")
    model(torch.randint(0, 37, (2, 5))).sum().backward()
    assert all(m.weight.grad is not None and m.weight.grad.abs().sum() > 0 for m in _linears(model))


def test_auto_picks_onednn_exactly_where_mkl_takes_its_generic_path(monkeypatch):
    monkeypatch.delenv("MKL_CBWR", raising=False)
    monkeypatch.setattr(kl, "cpu_vendor", lambda: "GenuineIntel")
    assert resolve_backend("auto") == "mkl"
    monkeypatch.setattr(kl, "cpu_vendor", lambda: "AuthenticAMD")
    assert resolve_backend("auto") == "onednn"
    monkeypatch.setattr(kl, "cpu_vendor", lambda: "GenuineIntel")
    monkeypatch.setenv("MKL_CBWR", "COMPATIBLE")  # MKL's vendor-neutral kernels, forced on an Intel CPU
    assert resolve_backend("auto") == "onednn"
    assert resolve_backend("auto", weight_bytes=kl.SMALL_MODEL_BYTES) == "onednn"
    assert resolve_backend("auto", weight_bytes=kl.SMALL_MODEL_BYTES - 1) == "mkl"  # a small model: MKL wins anyway
    monkeypatch.setattr(kl, "onednn_available", lambda: False)
    assert resolve_backend("auto") == "mkl"
    with pytest.raises(ValueError, match="backend='onednn'.*no oneDNN"):
        resolve_backend("onednn")


def test_cpu_vendor_reads_this_machine():
    assert isinstance(kl.cpu_vendor(), str)


@pytest.mark.parametrize("kwargs, match", [({"backend": "cuda"}, "backend='cuda'"), ({"backend": 1}, "backend=1"),
                                           ({"batch_hint": 0}, "batch_hint=0"), ({"batch_hint": 1.5}, "batch_hint")])
def test_bad_arguments_are_refused_before_any_layer_changes(kwargs, match):
    model = cached_model()
    with pytest.raises((ValueError, TypeError), match=match):
        set_linear_backend(model, **kwargs)
    assert all(m._packed is None for m in _linears(model)) and not hasattr(model, "linear_backend")


def test_onednn_refuses_non_fp32_weights_before_packing_any():
    model = random_model(ModelConfig(vocab_size=37, n_layers=1, n_heads=2, d_model=16, block_size=16),
                         dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="fp32 CPU weights"):
        set_linear_backend(model, "onednn")
    assert all(m._packed is None for m in _linears(model))


def test_thread_policy_one_thread_for_a_small_model_every_core_for_a_large_one():
    from kvgpt.linear import SMALL_MODEL_BYTES, recommended_threads

    small = load_pretrained()[0]  # 3.3 MB
    large = random_model(ModelConfig(vocab_size=1000, n_layers=4, n_heads=4, d_model=384, block_size=64))
    assert sum(p.nelement() * 4 for p in large.parameters()) > SMALL_MODEL_BYTES  # ~30 MB
    assert recommended_threads(small, available=2) == 1
    assert recommended_threads(large, available=2) == 2 and recommended_threads(large, available=1) == 1
