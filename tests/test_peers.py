"""The peer engines (peers/engines/, run through .venv-peers): ONNX Runtime and CTranslate2 make kvgpt's greedy
tokens, and the benchmark runner records parity for every engine it times.

Without .venv-peers (bash peers/engines/install.sh .venv-peers, or `make peers-env`) these skip and say so.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
VENV = Path(os.environ.get("KVGPT_PEERS_VENV", ROOT / ".venv-peers"))
ENV = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "HOME": os.environ.get("HOME", "/")}

CHECK = r"""
import json, sys, tempfile, pathlib, torch
sys.path.insert(0, "peers/engines")
from kvgpt import ModelConfig
from kvgpt.benchmark.engines import kvgpt_engine, random_prompts
import onnxruntime_engine as ORT, ctranslate2_engine as CT2
torch.manual_seed(0)
from kvgpt import MiniGPTInferenceModel
model = MiniGPTInferenceModel(ModelConfig(vocab_size=67, n_layers=2, n_heads=2, d_model=32, block_size=64)).eval()
with torch.no_grad():
    for p in model.parameters():
        p.normal_(0.0, 0.2)
out = {"ort": ORT.available(), "ct2": CT2.available()}
prompt = random_prompts(67, 3, 8, seed=1)  # (B=3, T=8)
ref = kvgpt_engine(model)(prompt, 24).tokens
for key, module in (("ort", ORT), ("ct2", CT2)):
    if out[key] is None:
        with tempfile.TemporaryDirectory() as d:
            for threads in (1, 2):
                run = module.build(model, pathlib.Path(d) / str(threads), threads)(prompt, 24)
                out[f"{key}_equal_t{threads}"] = torch.equal(run.tokens, ref)
                out[f"{key}_shape"] = list(run.tokens.shape)
print(json.dumps(out))
"""


def _python() -> Path:
    python = VENV / "bin" / "python"
    if not python.exists():
        pytest.skip(f"no {VENV}: build it with `make peers-env` (or set KVGPT_PEERS_VENV)")
    if not (VENV / ".installed").exists():
        pytest.skip(f"{VENV} is incomplete (no .installed): rerun peers/engines/install.sh")
    return python


def test_onnxruntime_and_ctranslate2_make_kvgpts_tokens_batched_at_both_thread_counts():
    run = subprocess.run([str(_python()), "-c", CHECK], cwd=ROOT, capture_output=True, text=True, timeout=600,
                         env=ENV)
    assert run.returncode == 0, run.stderr[-3000:]
    out = json.loads(run.stdout.strip().splitlines()[-1])
    for key, name in (("ort", "ONNX Runtime"), ("ct2", "CTranslate2")):
        assert out[key] is None, f"{name} does not run in {VENV}: {out[key]}"
        assert out[f"{key}_shape"] == [3, 24] and out[f"{key}_equal_t1"] and out[f"{key}_equal_t2"], out


def test_bench_runner_records_every_engine_with_parity(tmp_path):
    engines = ["kvgpt static", "transformers", "onnxruntime", "ctranslate2", "llms-from-scratch", "llama.cpp"]
    run = subprocess.run([str(_python()), "peers/engines/bench.py", "--quick", "--threads", "1", "--out",
                          str(tmp_path), "--engines", *engines], cwd=ROOT, capture_output=True, text=True,
                         timeout=900, env=ENV)
    assert run.returncode == 0, run.stderr[-3000:]
    df = pd.read_csv(tmp_path / "peers_quick_results.csv", keep_default_na=False, na_values=[""])
    meta = json.loads((tmp_path / "peers_quick_meta.json").read_text())
    ran = df[df.skipped.isna()]
    expected = set(engines) - set(meta["not_run"])  # an engine that does not import here is listed with its reason
    assert set(ran.engine) == expected, (df, meta["not_run"])
    assert ran.tokens_equal.astype(bool).all(), ran[["engine", "first_mismatch"]]
    assert (ran.decode_ms > 0).all() and (ran.floor_ms > 0).all() and meta["cpu"]
