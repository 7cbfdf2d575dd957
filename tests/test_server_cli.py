"""`python -m kvgpt serve` as a user starts it: a subprocess on 127.0.0.1, port 0, announced URL, clean stop;
bad flags are one line and exit code 2 before anything listens."""

from __future__ import annotations

import sys

import httpx
import pytest
from serve_helpers import NAME, solo_text

from kvgpt.cli import main
from kvgpt.serving.server import spawn, stop_process


def test_kvgpt_serve_subprocess_answers_and_stops():
    proc, url = spawn("--model", NAME, "--max-num-seqs", "2", "--threads", "1", "--no-enable-prefix-caching")
    try:
        assert url.startswith("http://127.0.0.1:") and httpx.get(f"{url}/health", timeout=30).status_code == 200
        r = httpx.post(f"{url}/v1/completions", json={"prompt": "ROMEO:", "max_tokens": 20, "temperature": 0},
                       timeout=60)
        assert r.json()["choices"][0]["text"] == solo_text("ROMEO:", 20)
    finally:
        stop_process(proc)
    assert proc.returncode is not None


@pytest.mark.parametrize("flags, words", [(["--block-size", "0"], "block_size=0"),
                                          (["--max-num-seqs", "-1"], "max_num_seqs=-1"),
                                          (["--max-queued-requests", "-2"], "max_queued_requests=-2"),
                                          (["--threads", "many"], "--threads='many'"),
                                          (["--port", "70000"], "port=70000"),
                                          (["--model", "no-such-model"], "no-such-model")])
def test_bad_flags_are_one_line_and_exit_2(capsys, flags, words):
    with pytest.raises(SystemExit) as e:
        main(["serve", *flags])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith("kvgpt serve: error:") and words in err and err.count("\n") == 1


def test_serve_without_the_web_stack_says_which_extra(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "kvgpt.serving.server", None)
    with pytest.raises(SystemExit) as e:
        main(["serve"])
    err = capsys.readouterr().err
    assert e.value.code == 1 and "kvgpt.serving.server" in err and "kvgpt[serve]" in err


def test_import_kvgpt_serving_needs_no_web_stack():
    import subprocess

    code = ("import sys; import kvgpt, kvgpt.serving, kvgpt.serving.api, kvgpt.serving.loop, kvgpt.export; "
            "bad = [m for m in ('fastapi', 'uvicorn', 'starlette', 'prometheus_client') if m in sys.modules]; "
            "assert not bad, bad")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).returncode == 0
