"""Tokenizers: CharTokenizer (vocab.json, errors) and the GPT-2 BPE wrapper (offline: a tiny local BPE)."""

from __future__ import annotations

import hashlib
import json
import sys

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from kvgpt.tokenizer import _GPT2_BPE_URLS, CharTokenizer, GPT2Tokenizer, gpt2_bpe_cached

CHARS = list("\n !',-.:;?ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyzé’")


@pytest.fixture(scope="module")
def char_tok():
    return CharTokenizer(CHARS)


@given(st.text(alphabet=CHARS, max_size=80))
def test_char_round_trip(text):
    tok = CharTokenizer(CHARS)
    ids = tok.encode(text)
    assert len(ids) == len(text) and all(0 <= i < tok.vocab_size for i in ids)
    assert tok.decode(ids) == text
    assert tok.decode(torch.tensor(ids, dtype=torch.long)) == text


def test_char_ids_follow_vocab_order(char_tok):
    assert char_tok.encode("\n !") == [0, 1, 2]
    assert char_tok.vocab_size == len(CHARS)
    assert CharTokenizer.from_text("banana") == CharTokenizer(["a", "b", "n"])


@pytest.mark.parametrize("text, bad, pos", [("ROMEO: ~", "~", 7), ("#", "#", 0), ("ab\tc", "\t", 2)])
def test_unknown_character_names_it_and_its_position(char_tok, text, bad, pos):
    with pytest.raises(ValueError) as e:
        char_tok.encode(text)
    assert repr(bad) in str(e.value) and f"position {pos}" in str(e.value)


def test_decode_accepts_a_batch_of_one_and_rejects_bad_ids(char_tok):
    assert char_tok.decode(torch.tensor([char_tok.encode("VW")])) == "VW"
    assert char_tok.decode(torch.tensor(5)) == char_tok.chars[5]
    with pytest.raises(ValueError, match="shape"):
        char_tok.decode(torch.zeros(2, 3, dtype=torch.long))
    for bad in (-1, len(CHARS)):
        with pytest.raises(ValueError, match=f"token id {bad}"):
            char_tok.decode([0, bad])


@pytest.mark.parametrize("chars, match", [([], "at least one"), (["a", "bc"], "'bc'"), (["a", "b", "a"], "twice"),
                                          (["a", 3], "3")])
def test_bad_vocabularies_are_rejected(chars, match):
    with pytest.raises(ValueError, match=match):
        CharTokenizer(chars)


def test_save_and_load_round_trip(tmp_path, char_tok):
    path = tmp_path / "vocab.json"
    char_tok.save(path)
    assert json.loads(path.read_text(encoding="utf-8")) == CHARS
    assert "é" in path.read_text(encoding="utf-8")  # readable, not \u escapes
    assert CharTokenizer.from_file(path) == char_tok


@pytest.mark.parametrize("content", ['{"a": 0}', "not json", ""])
def test_bad_vocab_file_names_the_file(tmp_path, content):
    path = tmp_path / "vocab.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ValueError, match="vocab.json"):
        CharTokenizer.from_file(path)
    with pytest.raises(ValueError, match="missing.json"):
        CharTokenizer.from_file(tmp_path / "missing.json")


# --- GPT-2 BPE -------------------------------------------------------------------------------------------------

def _byte_encoder() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map (the vocabulary's alphabet)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


@pytest.fixture(scope="module")
def tiny_bpe_dir(tmp_path_factory):
    """A byte-level BPE in HuggingFace GPT-2 format: 256 byte tokens, 3 merges, <|endoftext|>."""
    directory = tmp_path_factory.mktemp("tiny_bpe")
    vocab = {ch: i for i, ch in enumerate(_byte_encoder().values())}
    merges = ["h e", "l l", "Ġ w"]
    for m in merges:
        vocab[m.replace(" ", "")] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    (directory / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (directory / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    return directory


def test_gpt2_tokenizer_from_local_files(tiny_bpe_dir):
    pytest.importorskip("transformers")
    tok = GPT2Tokenizer(tiny_bpe_dir)
    assert tok.vocab_size == 260 and tok.eos_token_id == 259
    ids = tok.encode("hello world")
    assert ids[:2] == [256, 257] and 258 in ids  # "he", "ll", " w" merged
    assert tok.decode(ids) == "hello world"
    assert tok.encode("a<|endoftext|>")[-1] == 259


def test_gpt2_pieces_keep_unknown_ids_visible(tiny_bpe_dir):
    # decode() refuses ids outside the vocabulary (naming one); pieces() shows each id, unknown ones as <id>
    pytest.importorskip("transformers")
    tok = GPT2Tokenizer(tiny_bpe_dir)
    ids = tok.encode("hello world") + [5000, 259]
    with pytest.raises(ValueError, match="5000"):
        tok.decode(ids)
    assert tok.decode(ids[:-2] + ids[-1:]) == "hello world<|endoftext|>"
    assert tok.pieces(ids) == ["he", "ll", "o", " w", "o", "r", "l", "d", "<5000>", "<|endoftext|>"]


def test_gpt2_decode_refuses_an_id_missing_from_a_sparse_vocabulary(tmp_path):
    # chapter 09's offline stand-in: GPT-2's 256 byte ids and <|endoftext|> = 50256, nothing in between. An id
    # below the largest one but absent (300) used to vanish from decode()'s text without a word.
    pytest.importorskip("transformers")
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import GPT2TokenizerFast

    byte_ids = {c: i for i, c in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    bpe = Tokenizer(models.BPE(byte_ids | {"<|endoftext|>": 50256}, merges=[]))
    bpe.pre_tokenizer, bpe.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
    GPT2TokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>").save_pretrained(tmp_path)
    tok = GPT2Tokenizer(tmp_path)
    ids = tok.encode("hi") + [300, 50256]
    with pytest.raises(ValueError, match=r"ids contains 300, which this tokenizer has no entry for \(257 known ids"):
        tok.decode(ids)
    assert tok.pieces(ids) == ["h", "i", "<300>", "<|endoftext|>"]
    assert tok.decode([i for i, p in zip(ids, tok.pieces(ids)) if p != f"<{i}>"]) == "hi<|endoftext|>"


@pytest.fixture(scope="module")
def tiny_tok(tiny_bpe_dir):
    pytest.importorskip("transformers")
    return GPT2Tokenizer(tiny_bpe_dir)


@given(st.text(max_size=40))
def test_gpt2_byte_level_round_trip(tiny_tok, text):
    assert tiny_tok.decode(tiny_tok.encode(text)) == text


def test_real_gpt2_bpe_when_cached():
    pytest.importorskip("tiktoken")
    if not gpt2_bpe_cached():
        pytest.skip("GPT-2 BPE files are not in tiktoken's local cache; this test never downloads them")
    tok = GPT2Tokenizer("gpt2")
    assert tok.vocab_size == 50257 and tok.eos_token_id == 50256
    assert tok.encode("Hello world") == [15496, 995]
    assert tok.decode([15496, 995]) == "Hello world"


def test_gpt2_bpe_cache_check_reads_tiktokens_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
    assert not gpt2_bpe_cached()
    for url in _GPT2_BPE_URLS:
        (tmp_path / hashlib.sha1(url.encode()).hexdigest()).write_bytes(b"x")
    assert gpt2_bpe_cached()


@pytest.mark.parametrize("module, source", [("tiktoken", "gpt2"), ("transformers", "DIR")])
def test_missing_extra_gives_a_clear_error(monkeypatch, tiny_bpe_dir, module, source):
    monkeypatch.setitem(sys.modules, module, None)  # import now raises ImportError, as if not installed
    with pytest.raises(ImportError, match=r"kvgpt\[gpt2\]"):
        GPT2Tokenizer(tiny_bpe_dir if source == "DIR" else source)


def test_gpt2_tokenizer_rejects_unknown_sources(tmp_path):
    with pytest.raises(ValueError, match="gpt3"):
        GPT2Tokenizer("gpt3")
    with pytest.raises(FileNotFoundError, match="no tokenizer files"):
        GPT2Tokenizer(tmp_path)
