"""Tokenizers: text <-> token ids. A character vocabulary for the embedded model, GPT-2's BPE for GPT-2.

Both share one interface: `encode(str) -> list[int]`, `decode(ids) -> str`, `vocab_size`, `eos_token_id`.
Introduced in notebooks/05_decoding.ipynb.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch

from .validation import ID_DTYPES, ArgumentTypeError, check_path, fail_type, is_int

GPT2_NAMES = ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl", "distilgpt2")  # one BPE shared by all
# tiktoken fetches these two files on first use and caches them under sha1(url) (tiktoken/load.py)
_GPT2_BPE_URLS = tuple(f"https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/{f}"
                       for f in ("vocab.bpe", "encoder.json"))
GPT2_EXTRA_HINT = "install the optional extra: pip install 'kvgpt[gpt2]'"


def _ids_to_list(ids) -> list[int]:
    """Token ids as a flat list of ints from a list, tuple or integer tensor of shape (T,) or (1, T).

    Only integers are ids: 1.7 or True would otherwise decode as a real token (int() truncates).
    """
    if isinstance(ids, torch.Tensor):
        if ids.dtype not in ID_DTYPES:  # floats are not ids; int8/uint8 ids have overflowed already
            raise ArgumentTypeError(f"ids has dtype {ids.dtype}: token ids must be an int32 or int64 tensor")
        if ids.dim() == 2 and ids.size(0) == 1:
            ids = ids[0]  # (T,): a single row of a batch is unambiguous
        if ids.dim() > 1:
            raise ValueError(f"ids must be one sequence (T,) or (1, T), got a tensor of shape {tuple(ids.shape)}")
        return ids.reshape(-1).tolist()
    if not isinstance(ids, (list, tuple)):  # a str would decode its digits, a set has no order
        fail_type("ids", ids, "a list or tuple of int token ids, or an integer tensor")
    bad = next((i for i in ids if not is_int(i)), None)
    if bad is not None:
        raise ArgumentTypeError(f"ids contains {bad!r} ({type(bad).__name__}); token ids must be ints")
    return [int(i) for i in ids]


def _check_text(text) -> str:
    if not isinstance(text, str):  # a list of characters would be encoded silently, an int fails inside
        fail_type("text", text, "a str")
    return text


class CharTokenizer:
    """One token per character: id i is `chars[i]`. The vocabulary is saved with the model as vocab.json.

    Shapes: encode str (T characters) -> T ids; decode (T,) ids -> str.
    A character outside the vocabulary raises ValueError naming it and its position: the model has
    no unknown-token id, and dropping or replacing the character would silently change the prompt.

    Introduced in notebooks/05_decoding.ipynb.
    """

    eos_token_id = None  # a character model has no end-of-text token; generation stops at max_new_tokens

    def __init__(self, chars: Sequence[str]):
        if not isinstance(chars, (str, list, tuple)):
            fail_type("chars", chars, "a str or a list of single characters, in id order")
        chars = list(chars)
        if not chars:
            raise ValueError("chars=[]: the vocabulary needs at least one character")
        bad = [c for c in chars if not isinstance(c, str) or len(c) != 1]
        if bad:
            raise ValueError(f"chars contains {bad[0]!r}: every entry must be a single character")
        if len(set(chars)) != len(chars):
            dup = next(c for c in chars if chars.count(c) > 1)
            raise ValueError(f"chars contains {dup!r} twice: each character needs exactly one id")
        self.chars = chars
        self.stoi = {c: i for i, c in enumerate(chars)}

    @classmethod
    def from_text(cls, text: str) -> CharTokenizer:
        """The sorted set of characters in `text` (the embedded model's recipe)."""
        return cls(sorted(set(text)))

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> CharTokenizer:
        """Load vocab.json: a JSON list of characters in id order."""
        try:
            chars = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"cannot read the character vocabulary {path}: {e}") from e
        if not isinstance(chars, list):
            raise ValueError(f"{path}: expected a JSON list of characters, got {type(chars).__name__}")
        return cls(chars)

    def save(self, path: str | os.PathLike) -> None:
        """Write vocab.json (ensure_ascii=False keeps it readable)."""
        Path(path).write_text(json.dumps(self.chars, ensure_ascii=False), encoding="utf-8")

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> list[int]:
        """str -> ids. Raises ValueError for the first character outside the vocabulary."""
        _check_text(text)
        try:
            return [self.stoi[c] for c in text]
        except KeyError:
            pos = next(i for i, c in enumerate(text) if c not in self.stoi)
            raise ValueError(f"character {text[pos]!r} at position {pos} is not in the vocabulary "
                             f"({self.vocab_size} characters: {''.join(self.chars)!r})") from None

    def decode(self, ids) -> str:
        """ids (list, or tensor (T,) / (1, T)) -> str. Raises ValueError for an id outside 0..V-1."""
        ids = _ids_to_list(ids)
        for i in ids:
            if not 0 <= i < self.vocab_size:
                raise ValueError(f"token id {i} is outside the vocabulary 0..{self.vocab_size - 1}")
        return "".join(self.chars[i] for i in ids)

    def __eq__(self, other) -> bool:
        return isinstance(other, CharTokenizer) and self.chars == other.chars

    def __repr__(self) -> str:
        return f"CharTokenizer(vocab_size={self.vocab_size})"


class TextStream:
    """Turns ids arriving one at a time into text deltas (the CLI's output, the server's stream).

    A BPE token can end inside a multi-byte character, so the text is re-decoded from the start and a
    trailing U+FFFD is held back until complete. Introduced in notebooks/05_decoding.ipynb.
    """

    def __init__(self, tokenizer):
        self.tokenizer, self.ids, self.shown = tokenizer, [], 0

    def push(self, token: int) -> str:
        self.ids.append(token)
        text = self.tokenizer.decode(self.ids)
        if text.endswith("\ufffd"):
            return ""
        delta, self.shown = text[self.shown:], len(text)
        return delta

    def finish(self) -> str:
        text = self.tokenizer.decode(self.ids)
        delta, self.shown = text[self.shown:], len(text)
        return delta


def gpt2_bpe_cached() -> bool:
    """True if tiktoken's GPT-2 BPE files are already in its local cache (so using them needs no network)."""
    cache_dir = os.environ.get("TIKTOKEN_CACHE_DIR", os.environ.get("DATA_GYM_CACHE_DIR"))
    if cache_dir is None:
        cache_dir = os.path.join(tempfile.gettempdir(), "data-gym-cache")
    return all(os.path.exists(os.path.join(cache_dir, hashlib.sha1(u.encode()).hexdigest())) for u in _GPT2_BPE_URLS)


class GPT2Tokenizer:
    """GPT-2's byte-level BPE (50257 tokens) behind the CharTokenizer interface. Needs `kvgpt[gpt2]`.

    `name_or_dir`: a GPT-2 hub name -> tiktoken's "gpt2" encoding (its two files are downloaded once,
    on first use, then cached); a local directory with HuggingFace tokenizer files (vocab.json +
    merges.txt, or tokenizer.json) -> transformers' fast tokenizer, offline.
    Shapes: encode str -> T ids; decode (T,) ids -> str; pieces (T,) ids -> T strings.

    Introduced in notebooks/09_gpt2.ipynb.
    """

    def __init__(self, name_or_dir: str | os.PathLike = "gpt2"):
        self.source = check_path("name_or_dir", name_or_dir)  # "" is not the current directory
        if Path(name_or_dir).is_dir():
            self._tok, self._kind = _hf_tokenizer(Path(name_or_dir)), "transformers"
            self.vocab_size, self.eos_token_id = len(self._tok), self._tok.eos_token_id
            self._id_limit = max(self._tok.get_vocab().values()) + 1  # ids may be sparse (0..255 and 50256)
        elif self.source in GPT2_NAMES:
            self._tok, self._kind = _tiktoken_gpt2(), "tiktoken"
            self.vocab_size, self.eos_token_id = self._tok.n_vocab, self._tok.eot_token
            self._id_limit = self.vocab_size
        else:
            raise ValueError(f"name_or_dir={self.source!r}: expected a directory with tokenizer files "
                             f"or one of {GPT2_NAMES}")

    def encode(self, text: str) -> list[int]:
        """str -> ids. "<|endoftext|>" in the text becomes the end-of-text token, as in transformers."""
        _check_text(text)
        if self._kind == "tiktoken":
            return self._tok.encode(text, allowed_special="all")
        return self._tok.encode(text, add_special_tokens=False)

    def decode(self, ids) -> str:
        """ids -> str. A token that ends inside a multi-byte character decodes to U+FFFD on its own.

        An id the tokenizer has no entry for raises ValueError naming it (the backends would drop it silently
        or fail deep inside): a vocabulary may be smaller than the model's, or sparse, as in a stand-in
        tokenizer. pieces() shows such ids instead of refusing them.
        """
        ids = _ids_to_list(ids)
        bad = next((i for i in ids if not self._known(i)), None)
        if bad is not None:
            raise ValueError(f"ids contains {bad}, which this tokenizer has no entry for ({self._known_ids()}); "
                             f"pieces(ids) shows it as '<{bad}>'")
        return self._tok.decode(ids)

    def pieces(self, ids) -> list[str]:
        """One string per id: the text of that token alone, or "<id>" for an id this tokenizer has no entry for
        (decode() refuses those): every generated id stays visible."""
        return [self._tok.decode([i]) if self._known(i) else f"<{i}>" for i in _ids_to_list(ids)]

    def _known(self, i: int) -> bool:
        if not 0 <= i < self._id_limit:
            return False
        return self._kind == "tiktoken" or self._tok.convert_ids_to_tokens(i) is not None

    def _known_ids(self) -> str:
        count = self.vocab_size if self._kind == "tiktoken" else len(self._tok.get_vocab())
        return f"{count:,} known ids in 0..{self._id_limit - 1}"

    def __repr__(self) -> str:
        return f"GPT2Tokenizer({self.source!r}, backend={self._kind}, vocab_size={self.vocab_size})"


def _tiktoken_gpt2():
    try:
        import tiktoken
    except ImportError as e:
        raise ImportError(f"GPT2Tokenizer needs tiktoken: {GPT2_EXTRA_HINT}") from e
    try:
        return tiktoken.get_encoding("gpt2")
    except Exception as e:  # network or cache failure: say what was being fetched
        raise OSError(f"could not load GPT-2's BPE files with tiktoken (downloaded on first use, "
                      f"then cached; are you offline?): {e}") from e


def _hf_tokenizer(directory: Path):
    try:
        from transformers import GPT2TokenizerFast
    except ImportError as e:
        raise ImportError(f"GPT2Tokenizer(directory) needs transformers: {GPT2_EXTRA_HINT}") from e
    if not any((directory / f).is_file() for f in ("tokenizer.json", "vocab.json", "merges.txt")):
        raise FileNotFoundError(f"{directory} has no tokenizer files (tokenizer.json, or vocab.json + merges.txt)")
    return GPT2TokenizerFast.from_pretrained(str(directory), local_files_only=True)


def read_char_tokenizer(directory: str | os.PathLike) -> CharTokenizer | None:
    """The CharTokenizer a tokenizer.json written by hf_char_tokenizer holds, or None for any other tokenizer.

    Introduced in notebooks/15_serving.ipynb.
    """
    file = Path(directory) / "tokenizer.json"
    try:
        spec = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(spec, dict) or not isinstance(spec.get("model"), dict) or not isinstance(spec.get("decoder"), dict):
        return None
    model, vocab = spec["model"], spec["model"].get("vocab")
    if (model.get("type") != "BPE" or model.get("merges") or spec["decoder"].get("type") != "Fuse"
            or spec.get("normalizer") or spec.get("pre_tokenizer") or spec.get("added_tokens")
            or not isinstance(vocab, dict) or sorted(vocab.values()) != list(range(len(vocab)))
            or not all(isinstance(c, str) and len(c) == 1 for c in vocab)):
        return None
    return CharTokenizer(sorted(vocab, key=vocab.get))
