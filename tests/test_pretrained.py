"""load_pretrained: kvgpt's own directory format (generic, on a random model), the embedded Shakespeare
model when it has been trained, HuggingFace directories, and clear errors for everything else."""

from __future__ import annotations

import json
import shutil
import sys
import types

import pytest
import torch
from helpers import random_model
from safetensors.torch import load_file, save_file

import kvgpt
from kvgpt import CharTokenizer, ModelConfig, load_pretrained
from kvgpt.generation import AutoregressiveGenerator
from kvgpt.pretrained import available_models, data_dir, save_pretrained
from kvgpt.tokenizer import GPT2Tokenizer

CHARS = sorted(set("\n !',-.:;?ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"))
EMBEDDED = data_dir() / "shakespeare-char"
HAS_EMBEDDED = (EMBEDDED / "model.safetensors").is_file()


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A random model in kvgpt's format, with training-style metadata in config.json."""
    cfg = ModelConfig(vocab_size=len(CHARS), n_layers=2, n_heads=2, d_model=32, block_size=64)
    model, tok = random_model(cfg, seed=3), CharTokenizer(CHARS)
    directory = save_pretrained(model, tok, tmp_path_factory.mktemp("kvgpt_fmt"),
                                metadata={"val_loss": 1.5, "training": {"complete": False}})
    return model, tok, directory


def test_round_trip(saved):
    model, tok, directory = saved
    assert "lm_head.weight" not in load_file(str(directory / "model.safetensors"))  # tied: stored once
    assert json.loads((directory / "config.json").read_text())["val_loss"] == 1.5
    loaded, loaded_tok = load_pretrained(directory)
    assert loaded.config == model.config and loaded_tok == tok and not loaded.training
    assert loaded.lm_head.weight is loaded.token_embedding.embedding.weight
    for name, p in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], p), name
    ids = torch.tensor([tok.encode("ROMEO: hi")])
    with torch.no_grad():
        assert torch.equal(loaded(ids), model(ids))


def test_dtype_and_a_str_path(saved):
    _, _, directory = saved
    model, _ = load_pretrained(str(directory), dtype=torch.bfloat16, device="cpu")
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}


def _copy(saved, tmp_path):
    shutil.copytree(saved[2], tmp_path / "m")
    return tmp_path / "m"


@pytest.mark.parametrize("edit, error, match", [
    ("no_vocab", FileNotFoundError, "vocab.json"),
    ("short_vocab", ValueError, r"vocab.json has 3 characters but .*config.json says vocab_size="),
    ("no_weights", FileNotFoundError, "model.safetensors"),
    ("garbage", ValueError, "model.safetensors: cannot read"),
    ("drop", ValueError, r"model.safetensors: missing keys \['blocks.1.ffn.fc.bias'\]"),
    ("add", ValueError, r"model.safetensors: unexpected keys \['blocks.0.attn.rope'\]"),
    ("shape", ValueError, r"blocks.0.attn.qkv_proj.weight: expected \(96, 32\), found \(32, 96\)"),
    ("untied", ValueError, "lm_head.weight differs"),
    ("config", ValueError, "config.json: not a kvgpt config"),
    ("bad_config", ValueError, "config.json: d_model=32 is not divisible by n_heads=3"),
])
def test_broken_directories_name_the_file(saved, tmp_path, edit, error, match):
    d = _copy(saved, tmp_path)
    sd = load_file(str(d / "model.safetensors"))
    cfg = json.loads((d / "config.json").read_text())
    if edit == "no_vocab":
        (d / "vocab.json").unlink()
    elif edit == "short_vocab":
        CharTokenizer(["a", "b", "c"]).save(d / "vocab.json")
    elif edit == "no_weights":
        (d / "model.safetensors").unlink()
    elif edit == "garbage":
        (d / "model.safetensors").write_bytes(b"\xff" * 64)
    elif edit == "config":
        (d / "config.json").write_text(json.dumps({k: v for k, v in cfg.items() if k != "d_model"}))
    elif edit == "bad_config":
        (d / "config.json").write_text(json.dumps({**cfg, "n_heads": 3}))
    else:
        if edit == "drop":
            del sd["blocks.1.ffn.fc.bias"]
        elif edit == "add":
            sd["blocks.0.attn.rope"] = torch.zeros(2)
        elif edit == "shape":
            sd["blocks.0.attn.qkv_proj.weight"] = sd["blocks.0.attn.qkv_proj.weight"].t().contiguous()
        else:
            sd["lm_head.weight"] = sd["token_embedding.embedding.weight"] + 1
        save_file(sd, str(d / "model.safetensors"))
    with pytest.raises(error, match=match):
        load_pretrained(d)


def test_a_stored_tied_head_is_accepted(saved, tmp_path):
    d = _copy(saved, tmp_path)
    sd = load_file(str(d / "model.safetensors"))
    save_file({**sd, "lm_head.weight": sd["token_embedding.embedding.weight"].clone()}, str(d / "model.safetensors"))
    model, _ = load_pretrained(d)
    assert torch.equal(model.lm_head.weight, saved[0].lm_head.weight)


def test_save_rejects_a_mismatched_tokenizer(saved, tmp_path):
    with pytest.raises(ValueError, match="vocab_size"):
        save_pretrained(saved[0], CharTokenizer(["a"]), tmp_path)


def test_unknown_names_list_the_available_ones():
    with pytest.raises(ValueError, match=r"'gpt5'.*available: .*gpt2") as e:
        load_pretrained("gpt5")
    for name in available_models():
        assert name in str(e.value)


def test_missing_embedded_model_says_how_to_make_it(monkeypatch, tmp_path):
    monkeypatch.setattr(kvgpt.pretrained, "data_dir", lambda: tmp_path)
    with pytest.raises(FileNotFoundError, match="train_shakespeare_char.py"):
        load_pretrained()


def test_gpt2_names_need_the_network(monkeypatch):
    def offline(repo, allow_patterns):
        raise ConnectionError("offline")

    monkeypatch.setitem(sys.modules, "huggingface_hub", types.SimpleNamespace(snapshot_download=offline))
    with pytest.raises(OSError, match="could not download 'gpt2'"):
        load_pretrained("gpt2")


def test_huggingface_directory_with_tokenizer_files(tmp_path):
    transformers = pytest.importorskip("transformers")
    from test_tokenizer import _byte_encoder

    cfg = transformers.GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=257, n_positions=32,
                                  bos_token_id=256, eos_token_id=256)
    transformers.GPT2LMHeadModel(cfg).save_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match="no tokenizer files"):
        load_pretrained(tmp_path)
    vocab = {ch: i for i, ch in enumerate(_byte_encoder().values())} | {"<|endoftext|>": 256}
    (tmp_path / "vocab.json").write_text(json.dumps(vocab))
    (tmp_path / "merges.txt").write_text("#version: 0.2\n")
    model, tok = load_pretrained(tmp_path)
    assert isinstance(tok, GPT2Tokenizer) and tok.eos_token_id == 256 and model.config.vocab_size == 257
    assert tok.decode(tok.encode("hi there")) == "hi there"


def test_package_exports():
    assert kvgpt.load_pretrained is load_pretrained and kvgpt.CharTokenizer is CharTokenizer
    assert {"load_pretrained", "CharTokenizer"} <= set(kvgpt.__all__)
    assert data_dir() == kvgpt.pretrained.data_dir() and data_dir().name == "data"


@pytest.mark.skipif(not HAS_EMBEDDED, reason="kvgpt/data/shakespeare-char not trained yet")
def test_embedded_shakespeare_model():
    model, tok = load_pretrained()
    assert "shakespeare-char" in available_models()
    chars = json.loads((EMBEDDED / "vocab.json").read_text(encoding="utf-8"))
    assert tok.chars == chars == sorted(chars) and model.config.vocab_size == len(chars)
    assert ModelConfig.from_dict(json.loads((EMBEDDED / "config.json").read_text())) == model.config
    line = "ROMEO:\nBut, soft! what light through yonder window breaks?\n"
    assert tok.decode(tok.encode(line)) == line
    gen = AutoregressiveGenerator(model)
    a = gen.generate(tok.encode("ROMEO:"), 40)
    assert a == gen.generate(tok.encode("ROMEO:"), 40) == gen.generate(tok.encode("ROMEO:"), 40, use_cache=False)
    assert tok.decode(a).startswith("ROMEO:") and len(a) == 46
