"""The CLI with hostile values for every flag: nothing on stdout, one `kvgpt: error:` line naming the flag, exit 2,
no traceback. Extreme values that are allowed run to the end (no crash after output has started)."""

from __future__ import annotations

import pytest
from helpers import random_model

from kvgpt import CharTokenizer, ModelConfig
from kvgpt.cli import main
from kvgpt.pretrained import save_pretrained

CHARS = sorted(set("\n !,.:;?ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    cfg = ModelConfig(vocab_size=len(CHARS), n_layers=1, n_heads=2, d_model=16, block_size=32)
    return str(save_pretrained(random_model(cfg, seed=2), CharTokenizer(CHARS), tmp_path_factory.mktemp("hostile")))


HOSTILE = {  # flag: values that must be refused before any output
    "--prompt": ["", "ROMEO~", "A" * 40, "\x00"],
    "--max-new-tokens": ["-1", str(10**30), "nan", "1.5", "", "inf"],
    "--temperature": ["-1", "nan", "inf", "-inf", "1e-50", "1e300", "", "abc"],
    "--top-k": ["-1", "1.5", "", "nan"],
    "--top-p": ["0", "-0.1", "1.5", "nan", "inf", ""],
    "--repetition-penalty": ["0", "-1", "nan", "inf", "1e-50", "1e300", ""],
    "--seed": ["-1", str(2**64), "1.5", "", "nan"],
    "--cache-kind": ["paged", ""],
    "--model": ["", "   ", "/no/such/dir", "no-such-model"],
    "--device": ["meta", "cuda", "cuda:7", "toaster", "", "cpu:abc", "mps"],
    # Part II's flags (issue 22): alone, --window and --draft-k would do nothing; out of range, they name themselves
    "--window": ["5", "0", "-1", str(10**30)],
    "--draft-k": ["3", "0", str(10**30)],
    "--draft": ["", "   ", "/no/such/dir", "no-such-model"],
    "--threads": ["0", "-1", str(10**30), "abc", ""],
    "--context-policy": ["", "grow"],
    "--linear-backend": ["", "cuda"],
    "--compile": ["", "jit"],
}
CASES = [(flag, value) for flag, values in HOSTILE.items() for value in values]


def _generate(model_dir, *args):
    return ["generate", "--model", model_dir, "--prompt", "ROMEO:", "--max-new-tokens", "5", *args]


@pytest.mark.parametrize("flag, value", CASES)
def test_a_hostile_value_is_one_error_line_before_any_output(capsys, model_dir, flag, value):
    with pytest.raises(SystemExit) as e:
        main(_generate(model_dir, flag, value))
    out, err = capsys.readouterr()
    assert e.value.code == 2 and out == "", (out, err)
    assert err.startswith("kvgpt: error: ") and err.count("\n") == 1 and "Traceback" not in err
    names = {"--max-new-tokens": "max_new_tokens", "--prompt": "prompt", "--model": "model"}
    assert flag in err or names.get(flag, "~") in err, err  # the message says which flag was wrong


def test_an_unknown_flag_and_a_missing_value(capsys, model_dir):
    for argv in (_generate(model_dir, "--bogus"), _generate(model_dir, "--seed")):
        with pytest.raises(SystemExit) as e:
            main(argv)
        out, err = capsys.readouterr()
        assert e.value.code == 2 and out == "" and err.startswith("kvgpt: error: ") and err.count("\n") == 1


@pytest.mark.parametrize("args", [
    ["--temperature", "1e-30"], ["--temperature", "3e38"], ["--top-p", "1e-300"],
    ["--repetition-penalty", "1e-30"], ["--repetition-penalty", "1e30"], ["--seed", str(2**64 - 1)],
    ["--top-k", str(10**30)], ["--max-new-tokens", "0"],
    ["--temperature", "1e-30", "--repetition-penalty", "1e-30", "--top-p", "1e-300", "--cache-kind", "dynamic"],
])
def test_extreme_allowed_values_run_to_the_end(capsys, model_dir, args):
    assert main(_generate(model_dir, *args)) == 0
    out, err = capsys.readouterr()
    assert out.startswith("ROMEO:") and out.endswith("\n") and err.startswith("[kvgpt] ") and "Traceback" not in err


COMBINATIONS = [  # (flags, the flag the one error line must name): would do nothing, or out of range where used
    (["--context-policy", "slide", "--window", str(10**30)], "--window"),
    (["--context-policy", "slide", "--window", "0"], "--window"),
    (["--draft", "ngram", "--draft-k", str(10**30)], "--draft-k"),
    (["--draft", "ngram", "--draft-k", "0"], "--draft-k"),
    (["--draft", "ngram", "--draft-k", "32"], "--draft-k"),  # the model's context is 32: at most 31 drafts
    (["--no-cache", "--cache-kind", "dynamic"], "--cache-kind"),
    (["--temperature", "0", "--seed", "1"], "--seed"),
    (["--top-k", "1", "--seed", "1"], "--seed"),
    (["--temperature", "0", "--top-k", "5"], "--top-k"),
    (["--temperature", "0", "--top-p", "0.5"], "--top-p"),
    (["--compile", "--no-cache"], "--compile"),
    (["--compile", "inductor", "--cache-kind", "dynamic"], "--compile"),
]


@pytest.mark.parametrize("args, flag", COMBINATIONS)
def test_a_flag_that_would_do_nothing_or_is_out_of_range_names_itself(capsys, model_dir, args, flag):
    with pytest.raises(SystemExit) as e:
        main(_generate(model_dir, *args))
    out, err = capsys.readouterr()
    assert e.value.code == 2 and out == "" and err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(f"kvgpt: error: {flag}"), err


@pytest.mark.parametrize("args", [["--context-policy", "slide", "--window", "8", "--max-new-tokens", "40"],
                                  ["--draft", "ngram", "--draft-k", "2"], ["--draft", "ngram"],
                                  ["--temperature", "0", "--repetition-penalty", "1.3"], ["--threads", "2"]])
def test_flags_used_together_run_to_the_end(capsys, model_dir, args):
    assert main(_generate(model_dir, *args)) == 0
    out, err = capsys.readouterr()
    assert out.startswith("ROMEO:") and err.startswith("[kvgpt] ") and "Traceback" not in err
