"""A kvgpt model as an ordinary Hugging Face model folder: to_hf() weights + config + a real HF tokenizer.

The character vocabulary becomes a `tokenizers` BPE whose vocabulary is the characters in id order and which
has no merges (every character is one token: exactly CharTokenizer's ids) and a Fuse decoder (ids -> the
characters joined, nothing added), wrapped in transformers' PreTrainedTokenizerFast. AutoTokenizer,
transformers, `vllm serve DIR` and `kvgpt serve --model DIR` then read the same model and the same text.

    python -m kvgpt export shakespeare-char DIR        # the embedded model
    python -m kvgpt export random-gpt2-small DIR       # GPT-2-small's shape, seeded random weights

Introduced in notebooks/15_serving.ipynb.
"""

from __future__ import annotations

import json
import os
import unicodedata
from pathlib import Path

from .tokenizer import CharTokenizer, read_char_tokenizer  # noqa: F401 (read_char_tokenizer: its reading half)
from .validation import check_int, check_path, fail_type

RANDOM_PREFIX = "random-"  # random-gpt2-small: a benchmark shape (kvgpt.benchmark.suite.build_model), random weights


def hf_char_tokenizer(tokenizer: CharTokenizer, model_max_length: int | None = None):
    """A transformers PreTrainedTokenizerFast giving exactly `tokenizer`'s ids and text (no special tokens).

    Introduced in notebooks/15_serving.ipynb.
    """
    if not isinstance(tokenizer, CharTokenizer):
        fail_type("tokenizer", tokenizer, "a kvgpt CharTokenizer")
    try:
        from tokenizers import Tokenizer, decoders, models
        from transformers import PreTrainedTokenizerFast
    except ImportError as e:
        raise ImportError("exporting a Hugging Face tokenizer needs transformers: pip install 'kvgpt[gpt2]'") from e
    # no normalizer and no pre-tokenizer: spaces and newlines are characters like any other
    bpe = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(tokenizer.chars)}, merges=[]))
    bpe.decoder = decoders.Fuse()
    extra = {} if model_max_length is None else {"model_max_length": check_int("model_max_length", model_max_length, 1)}
    return PreTrainedTokenizerFast(tokenizer_object=bpe, clean_up_tokenization_spaces=False, **extra)


def synthetic_chars(n: int) -> list[str]:
    """n distinct printable characters (letters, digits, punctuation, symbols from U+0021 up; no spaces, no marks).

    The vocabulary of a model with random weights: its ids mean nothing, but every id decodes to one character
    and back, so a benchmark's random prompt of N ids is exactly N tokens on every server.
    Introduced in notebooks/15_serving.ipynb.
    """
    n, chars, code = check_int("n", n, 1), [], 0x21
    while len(chars) < n:
        if code > 0x10FFFF:
            raise ValueError(f"n={n}: more characters than Unicode has printable ones")
        c = chr(code)
        if unicodedata.category(c)[0] in "LNPS":  # not separators, controls, surrogates, unassigned or marks
            chars.append(c)
        code += 1
    return chars


def export_hf(model, tokenizer: CharTokenizer | None, directory: str | os.PathLike) -> Path:
    """Write a Hugging Face GPT-2 folder: config.json + model.safetensors (to_hf) + tokenizer.json.

    tokenizer None: synthetic_chars(vocab_size) (a model with random weights). -> the directory.
    Introduced in notebooks/15_serving.ipynb.
    """
    directory = Path(check_path("directory", directory))
    vocab = model.config.vocab_size
    tokenizer = CharTokenizer(synthetic_chars(vocab)) if tokenizer is None else tokenizer
    if not isinstance(tokenizer, CharTokenizer) or tokenizer.vocab_size != vocab:
        raise ValueError(f"tokenizer={tokenizer!r}: must be a CharTokenizer of the model's vocab_size={vocab} "
                         "(GPT-2's own tokenizer folders come from the hub as they are)")
    hf_tokenizer = hf_char_tokenizer(tokenizer, model.config.block_size)  # built first: fails before any file
    model.to_hf().save_pretrained(directory)
    hf_tokenizer.save_pretrained(directory)
    return directory


def load_for_export(name: str):
    """-> (model, CharTokenizer or None) for a load_pretrained name/directory or random-<benchmark shape>."""
    if name.startswith(RANDOM_PREFIX):
        from .benchmark.suite import build_model

        return build_model(name.removeprefix(RANDOM_PREFIX))[0], None
    from .pretrained import load_pretrained

    return load_pretrained(name)


def main(argv: list[str]) -> int:
    """`kvgpt export MODEL DIR`: write the Hugging Face folder, print its path. Bad arguments: one line, exit 2."""
    import argparse

    parser = argparse.ArgumentParser(prog="kvgpt export", description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="an embedded model (shakespeare-char), a directory, or random-gpt2-small")
    parser.add_argument("directory", help="the folder to write (created if missing)")
    args = parser.parse_args(argv)
    try:
        model, tokenizer = load_for_export(args.model)
        if tokenizer is not None and not isinstance(tokenizer, CharTokenizer):
            raise ValueError(f"model {args.model!r} has a GPT-2 BPE tokenizer: use its Hugging Face folder as it is")
        out = export_hf(model, tokenizer, args.directory)
    except (ValueError, TypeError, OSError, ImportError) as e:
        parser.exit(2, f"kvgpt export: error: {' '.join(str(e).split())}\n")
    print(out)
    return 0
