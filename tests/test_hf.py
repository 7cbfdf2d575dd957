"""HuggingFace GPT-2 checkpoints: kvgpt loads them with identical logits and greedy tokens, exports back, and
names the file and the key when a checkpoint is wrong. Offline: a small random GPT2LMHeadModel saved to tmp."""

from __future__ import annotations

import json
import os
import shutil
import sys
import types

import pytest
import torch
from helpers import assert_close_logits
from safetensors.torch import load_file, save_file

from kvgpt import MiniGPTInferenceModel
from kvgpt.generation import AutoregressiveGenerator
from kvgpt.hf import load_hf, to_hf

transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()

V, N_POS = 301, 128


def _logits_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float() - b.float()).abs().max().item()


@pytest.fixture(scope="module")
def hf_model():
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(n_layer=3, n_embd=64, n_head=4, vocab_size=V, n_positions=N_POS,
                                  initializer_range=0.2, bos_token_id=None, eos_token_id=None,
                                  attn_implementation="eager")
    model = transformers.GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():  # non-trivial LayerNorms and biases, so a missed transpose or swap shows up
        for name, p in model.named_parameters():
            if "ln" in name or name.endswith("bias"):
                p.normal_(0.0, 0.2).add_(1.0 if name.endswith("weight") else 0.0)
    return model


@pytest.fixture(scope="module")
def hf_dirs(hf_model, tmp_path_factory):
    """The same checkpoint twice: save_pretrained (safetensors, "transformer." prefix, no lm_head) and an
    original-GPT-2-style pytorch_model.bin (no prefix, attn.bias / attn.masked_bias buffers)."""
    st_dir = tmp_path_factory.mktemp("hf_st")
    hf_model.save_pretrained(st_dir)
    bin_dir = tmp_path_factory.mktemp("hf_bin")
    shutil.copy(st_dir / "config.json", bin_dir / "config.json")
    sd = {k.removeprefix("transformer."): v.clone() for k, v in hf_model.state_dict().items() if k != "lm_head.weight"}
    for i in range(hf_model.config.n_layer):
        sd[f"h.{i}.attn.bias"] = torch.ones(1, 1, N_POS, N_POS).tril()
        sd[f"h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
    torch.save(sd, bin_dir / "pytorch_model.bin")
    return {"safetensors": st_dir, "bin": bin_dir}


@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
def test_logits_match_transformers(hf_model, hf_dirs, fmt):
    model = load_hf(hf_dirs[fmt])
    assert model.lm_head.weight is model.token_embedding.embedding.weight  # tied
    assert not model.training
    ids = torch.randint(0, V, (3, 50), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = hf_model(ids).logits
        ours = model(ids)
    assert ref.abs().max() > 3  # realistic spread, so the tolerance is a real bound
    assert_close_logits(ours, ref, "kvgpt vs transformers GPT-2 logits (fp32)")


@pytest.mark.parametrize("use_cache, cache_kind", [(True, "static"), (True, "dynamic"), (False, "static")])
def test_greedy_generation_matches_transformers(hf_model, hf_dirs, use_cache, cache_kind):
    model = load_hf(hf_dirs["safetensors"])
    prompt = torch.randint(0, V, (1, 9), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref = hf_model.generate(prompt, do_sample=False, max_new_tokens=80, pad_token_id=0)[0].tolist()
    ours = AutoregressiveGenerator(model).generate(prompt[0].tolist(), 80, use_cache=use_cache, cache_kind=cache_kind)
    assert len(ours) == 9 + 80 and ours == ref


@pytest.mark.parametrize("attn_impl, hf_impl", [("sdpa", "sdpa"), ("manual", "eager")])
def test_to_hf_round_trip(hf_model, hf_dirs, tmp_path, attn_impl, hf_impl):
    model = load_hf(hf_dirs["safetensors"])
    if attn_impl == "manual":
        model = _with_attn(model, "manual")
    exported = to_hf(model)
    assert exported.config._attn_implementation == hf_impl and not exported.training
    assert exported.lm_head.weight.data_ptr() == exported.transformer.wte.weight.data_ptr()
    for name, p in hf_model.state_dict().items():  # the very same weights, bit for bit
        assert torch.equal(exported.state_dict()[name], p), name
    ids = torch.randint(0, V, (2, 40), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert_close_logits(exported(ids).logits, model(ids), f"to_hf ({hf_impl}) vs kvgpt logits (fp32)")
    exported.save_pretrained(tmp_path)
    again = load_hf(tmp_path)
    for name, p in model.state_dict().items():
        assert torch.equal(again.state_dict()[name], p), name


def _with_attn(model: MiniGPTInferenceModel, impl: str) -> MiniGPTInferenceModel:
    from dataclasses import replace

    other = MiniGPTInferenceModel(replace(model.config, attn_impl=impl)).eval()
    other.load_state_dict(model.state_dict())
    return other


def test_to_hf_keeps_dtype(hf_dirs):
    model = load_hf(hf_dirs["safetensors"], dtype="bfloat16")
    assert model.lm_head.weight.dtype == torch.bfloat16
    assert next(to_hf(model).parameters()).dtype == torch.bfloat16
    with pytest.raises(ValueError, match="dtype='float99'"):
        load_hf(hf_dirs["safetensors"], dtype="float99")


# --- errors: each names the file and the problem ----------------------------------------------------------------

def _variant(tmp_path, src, config=None, weights=None, weights_bytes=None):
    """A copy of `src` with its config.json edited and/or its model.safetensors replaced."""
    shutil.copytree(src, tmp_path / "ckpt")
    d = tmp_path / "ckpt"
    if config is not None:
        cfg = json.loads((d / "config.json").read_text())
        cfg.update(config)
        (d / "config.json").write_text(json.dumps({k: v for k, v in cfg.items() if v != "DELETE"}))
    if weights is not None:
        save_file(weights, str(d / "model.safetensors"))
    if weights_bytes is not None:
        (d / "model.safetensors").write_bytes(weights_bytes)
    return d


def test_missing_files_are_named(tmp_path, hf_dirs):
    d = _variant(tmp_path, hf_dirs["safetensors"])
    (d / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        load_hf(d)
    (d / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_hf(d)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_hf(tmp_path / "nowhere")


class _NotATensor:
    pass


@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
def test_corrupt_or_unsafe_files_are_refused(tmp_path, hf_dirs, fmt):
    d = _variant(tmp_path, hf_dirs[fmt])
    file = d / ("model.safetensors" if fmt == "safetensors" else "pytorch_model.bin")
    file.write_bytes(b"\x00garbage" * 100)
    with pytest.raises(ValueError, match=str(file.name)):
        load_hf(d)
    if fmt == "bin":  # a pickle holding an arbitrary object: weights_only=True refuses to build it
        torch.save({"wte.weight": _NotATensor()}, file)
        with pytest.raises(ValueError, match="pytorch_model.bin"):
            load_hf(d)


def _sd(src):
    return load_file(str(src / "model.safetensors"))


@pytest.mark.parametrize("edit, match", [
    ("drop", r"missing keys \['h.1.mlp.c_fc.bias'\]"),
    ("add", r"unexpected keys \['h.0.attn.rotary.weight'\]"),
    ("shape", r"h.2.attn.c_attn.weight: expected \(64, 192\), found \(192, 64\)"),
    ("head", "lm_head.weight differs"),
])
def test_bad_keys_are_named(tmp_path, hf_dirs, edit, match):
    sd = _sd(hf_dirs["safetensors"])
    if edit == "drop":
        del sd["transformer.h.1.mlp.c_fc.bias"]
    elif edit == "add":
        sd["transformer.h.0.attn.rotary.weight"] = torch.zeros(3)
    elif edit == "shape":
        sd["transformer.h.2.attn.c_attn.weight"] = sd["transformer.h.2.attn.c_attn.weight"].t().contiguous()
    else:
        sd["lm_head.weight"] = torch.zeros_like(sd["transformer.wte.weight"])
    d = _variant(tmp_path, hf_dirs["safetensors"], weights=sd)
    with pytest.raises(ValueError, match=match) as e:
        load_hf(d)
    assert "model.safetensors" in str(e.value)


@pytest.mark.parametrize("field, value", [
    ("activation_function", "relu"), ("scale_attn_by_inverse_layer_idx", True), ("reorder_and_upcast_attn", True),
    ("n_inner", 100), ("layer_norm_epsilon", 1e-6), ("add_cross_attention", True), ("model_type", "gpt_neo"),
    ("tie_word_embeddings", False), ("scale_attn_weights", False), ("n_embd", "DELETE"), ("n_head", 5),
])
def test_unsupported_config_is_rejected(tmp_path, hf_dirs, field, value):
    d = _variant(tmp_path, hf_dirs["safetensors"], config={field: value})
    with pytest.raises(ValueError, match=field) as e:
        load_hf(d)
    assert "config.json" in str(e.value)


@pytest.mark.parametrize("field, value", [("n_inner", 256), ("activation_function", "gelu_pytorch_tanh")])
def test_equivalent_config_values_are_accepted(tmp_path, hf_dirs, field, value):
    load_hf(_variant(tmp_path, hf_dirs["safetensors"], config={field: value}))


def test_invalid_config_json_is_named(tmp_path, hf_dirs):
    d = _variant(tmp_path, hf_dirs["safetensors"])
    (d / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="config.json"):
        load_hf(d)


# --- hub names: never the network here; a stand-in huggingface_hub -----------------------------------------------

def test_hub_names_download_via_huggingface_hub(monkeypatch, hf_dirs):
    calls = []
    fake = types.ModuleType("huggingface_hub")
    fake.snapshot_download = lambda repo, allow_patterns: calls.append((repo, allow_patterns)) or str(hf_dirs["bin"])
    monkeypatch.setitem(sys.modules, "huggingface_hub", fake)
    model = load_hf("someone/tiny-gpt2")
    assert calls[0][0] == "someone/tiny-gpt2" and "config.json" in calls[0][1]
    assert model.config.n_layers == 3


def test_hub_errors_are_clear(monkeypatch):
    def offline(repo, allow_patterns):
        raise ConnectionError("no network")

    fake = types.ModuleType("huggingface_hub")
    fake.snapshot_download = offline
    monkeypatch.setitem(sys.modules, "huggingface_hub", fake)
    with pytest.raises(OSError, match="could not download 'gpt2'.*local directory"):
        load_hf("gpt2")
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)
    with pytest.raises(ImportError, match=r"kvgpt\[gpt2\]"):
        load_hf("gpt2")


GPT2_DIR = os.environ.get("KVGPT_GPT2_DIR")


@pytest.mark.skipif(not GPT2_DIR, reason="set KVGPT_GPT2_DIR to a local copy of the real GPT-2 (124M) checkpoint")
def test_real_gpt2_golden_greedy_ids():
    # transformers' own GPT-2 integration test: "The dog" -> these 20 ids, greedy
    golden = [464, 3290, 373, 1043, 287, 257, 2214, 1474, 262, 16246, 286, 2688, 290, 2688, 27262, 13, 198, 198, 464, 3290]
    model = load_hf(GPT2_DIR)
    assert AutoregressiveGenerator(model).generate([464, 3290], 18) == golden
