"""Fuzzing `kvgpt generate`: a random value (numbers at the float extremes, NaN, inf, text, empty) for a random flag.
Property: exit 0 with the prompt and text on stdout and the summary on stderr, or exit 2 with nothing on stdout
and exactly one `kvgpt: error:` line on stderr; never a traceback, never output followed by an error."""

from __future__ import annotations

import contextlib
import io

import pytest
from helpers import random_model
from hypothesis import event, given, settings
from hypothesis import strategies as st

from kvgpt import CharTokenizer, ModelConfig
from kvgpt.cli import main
from kvgpt.pretrained import save_pretrained

CHARS = sorted(set("\n !,.:;?ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"))
FLAGS = ["--prompt", "--max-new-tokens", "--temperature", "--top-k", "--top-p", "--repetition-penalty", "--seed",
         "--cache-kind", "--model", "--device", "--window", "--draft", "--draft-k", "--threads", "--context-policy",
         "--linear-backend", "--compile"]
VALUES = st.one_of(
    st.integers(-(2**70), 2**70).map(str), st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["0", "1", "-0", "1e-50", "1e-38", "3.4e38", "1e300", "5e-324", "nan", "inf", "-inf", "",
                     " ", "static", "dynamic", "cpu", "meta", "cuda", "toaster", "ROMEO:", "~", "\x00", "ngram", "slide",
                     "refuse", "auto", "mkl", "2", "4096"]),
    st.text(max_size=6),
)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    cfg = ModelConfig(vocab_size=len(CHARS), n_layers=1, n_heads=2, d_model=16, block_size=32)
    return str(save_pretrained(random_model(cfg, seed=4), CharTokenizer(CHARS), tmp_path_factory.mktemp("fuzzcli")))


@settings(max_examples=100)
@given(flag=st.sampled_from(FLAGS), value=VALUES)
def test_fuzz_cli_every_flag(model_dir, flag, value):
    argv = ["generate", "--model", model_dir, "--prompt", "To be", "--max-new-tokens", "3", flag, value]
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as e:
            code = e.code
    out, err = out.getvalue(), err.getvalue()
    assert "Traceback" not in err
    if code == 0:
        event("accepted")
        assert out.endswith("\n") and err.startswith("[kvgpt] ") and err.count("\n") == 1
    else:
        event("refused")
        assert code == 2 and out == "" and err.startswith("kvgpt: error: ") and err.count("\n") == 1, (code, out, err)
