"""`kvgpt export`: a Hugging Face folder whose tokenizer gives CharTokenizer's ids on the whole held-out text, whose
weights transformers runs to kvgpt's logits, and which load_pretrained reads back as the same model and tokenizer."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import random_model
from hypothesis import given
from hypothesis import strategies as st
from transformers import AutoModelForCausalLM, AutoTokenizer

from kvgpt import CharTokenizer, ModelConfig, load_pretrained
from kvgpt.cli import main
from kvgpt.evaluation import HELDOUT_FILE
from kvgpt.export import export_hf, hf_char_tokenizer, read_char_tokenizer, synthetic_chars
from kvgpt.pretrained import data_dir


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hf") / "shakespeare-char"
    assert main(["export", "shakespeare-char", str(folder)]) == 0
    return folder


def test_the_folder_is_an_ordinary_hugging_face_model(exported):
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= {
        p.name for p in exported.iterdir()}
    assert json.loads((exported / "config.json").read_text())["model_type"] == "gpt2"


def test_hf_tokenizer_ids_equal_chartokenizers_on_the_whole_heldout_text(exported):
    _, ours = load_pretrained("shakespeare-char")
    theirs = AutoTokenizer.from_pretrained(str(exported))
    windows = json.loads((data_dir() / HELDOUT_FILE).read_text(encoding="utf-8"))["windows"]
    text = "".join(windows) + "".join(ours.chars)  # every character of the vocabulary too
    ids = ours.encode(text)
    assert theirs.encode(text, add_special_tokens=False) == ids
    assert theirs.decode(ids) == text and theirs.vocab_size == ours.vocab_size and theirs.all_special_ids == []


def test_transformers_runs_the_folder_to_kvgpts_logits(exported):
    model, tok = load_pretrained("shakespeare-char")
    hf = AutoModelForCausalLM.from_pretrained(str(exported)).eval()
    ids = torch.tensor([tok.encode("ROMEO:\nWhat light")])
    with torch.inference_mode():
        ours, theirs = model(ids), hf(ids).logits
    scale = ours.abs().max().item()
    assert (ours - theirs).abs().max().item() <= 1e-5 * scale


def test_load_pretrained_reads_the_folder_back_as_the_same_model_and_tokenizer(exported):
    model, tok = load_pretrained("shakespeare-char")
    again, tok_again = load_pretrained(str(exported))
    assert isinstance(tok_again, CharTokenizer) and tok_again == tok
    for (name, a), b in zip(model.state_dict().items(), again.state_dict().values()):
        assert torch.equal(a, b), name


def test_a_random_model_gets_a_synthetic_character_vocabulary(tmp_path):
    model = random_model(ModelConfig(vocab_size=3000, n_layers=1, n_heads=2, d_model=16, block_size=32))
    export_hf(model, None, tmp_path)
    tok = read_char_tokenizer(tmp_path)
    chars = synthetic_chars(3000)
    assert tok.chars == chars and len(set(chars)) == 3000 and not any(c.isspace() for c in chars)
    theirs = AutoTokenizer.from_pretrained(str(tmp_path))
    ids = list(range(0, 3000, 7))
    assert theirs.decode(ids) == tok.decode(ids) and theirs.encode(tok.decode(ids), add_special_tokens=False) == ids


@given(st.lists(st.sampled_from(synthetic_chars(200) + list(" \n\t")), min_size=1, max_size=30, unique=True),
       st.text(max_size=40))
def test_any_character_vocabulary_round_trips(chars, text):
    tok = CharTokenizer(chars)
    fast = hf_char_tokenizer(tok)
    text = "".join(c for c in text if c in tok.stoi) + "".join(chars)
    assert fast.encode(text, add_special_tokens=False) == tok.encode(text) and fast.decode(tok.encode(text)) == text


def test_other_tokenizers_are_not_mistaken_for_a_character_vocabulary(tmp_path):
    spec = {"model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "ab": 2}, "merges": [["a", "b"]]},
            "decoder": {"type": "ByteLevel"}}
    (tmp_path / "tokenizer.json").write_text(json.dumps(spec))
    assert read_char_tokenizer(tmp_path) is None
    (tmp_path / "tokenizer.json").write_text("[1, 2]")
    assert read_char_tokenizer(tmp_path) is None
    assert read_char_tokenizer(tmp_path / "missing") is None


@pytest.mark.parametrize("args, words", [(["no-such-model", "x"], "no-such-model"),
                                         (["shakespeare-char-kv1", "x"], "n_kv_heads")])
def test_export_errors_are_one_line_and_exit_2(tmp_path, capsys, args, words):
    with pytest.raises(SystemExit) as e:
        main(["export", args[0], str(tmp_path / args[1])])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith("kvgpt export: error:") and words in err and err.count("\n") == 1
