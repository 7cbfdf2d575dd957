"""The command line, run in-process on a tiny random model saved to a tmp dir (and on the embedded model
when it exists): streamed text, the summary line, one-line errors with exit code 2, bench forwarding."""

from __future__ import annotations

import subprocess
import sys
import types

import pytest
from helpers import random_model
from test_pretrained import HAS_EMBEDDED

from kvgpt import CharTokenizer, ModelConfig
from kvgpt.cli import _TextStream, main
from kvgpt.generation import AutoregressiveGenerator
from kvgpt.pretrained import load_pretrained, save_pretrained
from kvgpt.sampling import Sampler

CHARS = sorted(set("\n !,.:;?ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    cfg = ModelConfig(vocab_size=len(CHARS), n_layers=2, n_heads=2, d_model=32, block_size=64)
    return str(save_pretrained(random_model(cfg, seed=5), CharTokenizer(CHARS), tmp_path_factory.mktemp("cli_model")))


def _run(capsys, *args):
    code = main(["generate", *args])
    out, err = capsys.readouterr()
    return code, out, err


def _expected(model_dir, prompt, n, **knobs):
    model, tok = load_pretrained(model_dir)
    return tok.decode(AutoregressiveGenerator(model).generate(tok.encode(prompt), n, Sampler(**knobs)))


def test_generate_prints_text_and_a_summary(capsys, model_dir):
    code, out, err = _run(capsys, "--model", model_dir, "--prompt", "ROMEO:", "--max-new-tokens", "30",
                          "--temperature", "0.8", "--top-k", "40", "--seed", "0")
    assert code == 0
    assert out == _expected(model_dir, "ROMEO:", 30, temperature=0.8, top_k=40, seed=0) + "\n"
    assert err.count("\n") == 1 and err.startswith("[kvgpt] 30 new tokens after 6 prompt tokens")
    assert "prefill" in err and " ms" in err and "tokens/s" in err and "static cache" in err


@pytest.mark.parametrize("extra", [["--no-cache"], ["--cache-kind", "dynamic"], ["--top-p", "0.9"],
                                   ["--repetition-penalty", "1.3"]])
def test_options_reach_the_generator(capsys, model_dir, extra):
    _, out, err = _run(capsys, "--model", model_dir, "--prompt", "To be", "--max-new-tokens", "25", "--seed", "1",
                       *extra)
    knobs = {"top_p": 0.9} if "--top-p" in extra else {"repetition_penalty": 1.3} if "--repetition-penalty" in extra else {}
    assert out == _expected(model_dir, "To be", 25, seed=1, **knobs) + "\n"  # caching never changes the text
    assert ("no cache" in err) == ("--no-cache" in extra) and ("dynamic cache" in err) == ("dynamic" in extra)


def test_greedy_at_temperature_zero(capsys, model_dir):
    _, out, _ = _run(capsys, "--model", model_dir, "--prompt", "A", "--max-new-tokens", "20", "--temperature", "0")
    model, tok = load_pretrained(model_dir)
    assert out == tok.decode(AutoregressiveGenerator(model).generate(tok.encode("A"), 20)) + "\n"


class _Recorder:
    def __init__(self):
        self.writes, self.flushes = [], 0

    def write(self, s):
        self.writes.append(s)

    def flush(self):
        self.flushes += 1


def test_tokens_are_streamed_one_at_a_time(monkeypatch, model_dir):
    rec = _Recorder()
    monkeypatch.setattr(sys, "stdout", rec)
    assert main(["generate", "--model", model_dir, "--max-new-tokens", "15", "--seed", "0"]) == 0
    pieces = [w for w in rec.writes[1:-1]]  # after the prompt, before the closing newline
    assert len(pieces) == 15 and all(len(p) == 1 for p in pieces) and rec.flushes >= 15


def test_interrupt_stops_cleanly(capsys, monkeypatch, model_dir):
    calls = []

    def push(self, token):
        calls.append(token)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return "x"

    monkeypatch.setattr(_TextStream, "push", push)
    code, _, err = _run(capsys, "--model", model_dir, "--max-new-tokens", "30")
    assert code == 130 and "(interrupted)" in err and "Traceback" not in err


@pytest.mark.parametrize("args, words", [
    (["--temperature", "-1"], "temperature=-1.0"),
    (["--temperature", "abc"], "--temperature"),
    (["--prompt", "ROMEO~"], "'~' at position 5"),
    (["--prompt", ""], "empty"),
    (["--max-new-tokens", "1000"], "block_size=64"),
    (["--max-new-tokens", "-3"], "max_new_tokens=-3"),
    (["--top-k", "-1"], "top_k=-1"),
    (["--top-p", "0"], "top_p=0.0"),
    (["--repetition-penalty", "0"], "repetition_penalty=0.0"),
    (["--cache-kind", "paged"], "--cache-kind"),
    (["--device", "toaster"], "toaster"),
    (["--model", "no-such-model"], "available:"),
    (["--bogus"], "--bogus"),
])
def test_bad_arguments_exit_2_with_one_line(capsys, model_dir, args, words):
    argv = ["--model", model_dir, "--prompt", "ROMEO:", *args]
    with pytest.raises(SystemExit) as e:
        main(["generate", *argv])
    out, err = capsys.readouterr()
    assert e.value.code == 2 and out == ""
    assert err.startswith("kvgpt: error: ") and err.count("\n") == 1 and words in err


def test_bench_forwards_its_arguments(monkeypatch):
    seen = []
    suite = types.ModuleType("kvgpt.benchmark.suite")
    suite.main = lambda argv: seen.append(argv) or 0
    monkeypatch.setitem(sys.modules, "kvgpt.benchmark", types.ModuleType("kvgpt.benchmark"))
    monkeypatch.setitem(sys.modules, "kvgpt.benchmark.suite", suite)
    assert main(["bench", "--quick", "--out", "x.json"]) == 0
    assert seen == [["--quick", "--out", "x.json"]]


def test_bench_without_the_suite_is_a_clear_error(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "kvgpt.benchmark.suite", None)
    with pytest.raises(SystemExit) as e:
        main(["bench"])
    err = capsys.readouterr().err
    assert e.value.code == 1 and err.startswith("kvgpt: error:") and "kvgpt.benchmark.suite" in err


def test_partial_utf8_tokens_are_held_back():
    bytes_tok = types.SimpleNamespace(decode=lambda ids: bytes(ids).decode("utf-8", errors="replace"))
    stream = _TextStream(bytes_tok)
    assert [stream.push(b) for b in "aé".encode()] == ["a", "", "é"]
    assert stream.push(0xE2) == "" and stream.finish() == "\ufffd"  # an unfinished character shows at the end


@pytest.mark.skipif(not HAS_EMBEDDED, reason="kvgpt/data/shakespeare-char not trained yet")
def test_embedded_model_by_default(capsys):
    code, out, err = _run(capsys, "--prompt", "ROMEO:", "--max-new-tokens", "40", "--temperature", "0.8",
                          "--top-k", "40", "--seed", "0")
    assert code == 0 and out.startswith("ROMEO:") and len(out) == 6 + 40 + 1
    assert "shakespeare-char" in err


def test_python_dash_m_help():
    result = subprocess.run([sys.executable, "-m", "kvgpt", "--help"], check=False, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0 and "generate" in result.stdout and "bench" in result.stdout


def test_sinks_policy_from_the_command_line(capsys, tmp_path):
    """--context-policy sinks --sinks S --window W on a RoPE model: past the context, the same text as the API."""
    cfg = ModelConfig(vocab_size=len(CHARS), n_layers=2, n_heads=2, d_model=32, block_size=32, positions="rope",
                      norm="rms", mlp="swiglu", bias=False)
    rope_dir = str(save_pretrained(random_model(cfg, seed=6), CharTokenizer(CHARS), tmp_path / "rope"))
    code, out, err = _run(capsys, "--model", rope_dir, "--prompt", "ROMEO:", "--max-new-tokens", "80",
                          "--temperature", "0", "--context-policy", "sinks", "--sinks", "2", "--window", "20")
    model, tok = load_pretrained(rope_dir)
    gen = AutoregressiveGenerator(model, context_policy="sinks", sinks=2, window=20)
    assert code == 0 and out == tok.decode(gen.generate(tok.encode("ROMEO:"), 80)) + "\n"
    assert f"2 sinks + window 20: {gen.last_stats.slides} evicting steps" in err and gen.last_stats.slides > 50


def test_sinks_refused_for_a_learned_position_model(capsys, model_dir):
    with pytest.raises(SystemExit) as e:
        main(["generate", "--model", model_dir, "--context-policy", "sinks", "--max-new-tokens", "100"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "needs a RoPE model" in err and err.count("\n") == 1
