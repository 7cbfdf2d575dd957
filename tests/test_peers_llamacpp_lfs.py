"""llama.cpp and LLMs-from-scratch peers (peers/engines/llamacpp_engine.py, llms_from_scratch_engine.py).

The GGUF name map is checked here in kvgpt's own venv (it needs numpy only). The engines themselves run in
.venv-peers (built by peers/engines/install.sh): a short script there checks parity and that each of the four
LLMs-from-scratch fixes is needed; without that venv (or without llama.cpp in it) those tests skip and say why.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import cached_model

ROOT = Path(__file__).resolve().parents[1]
ENGINES = ROOT / "peers" / "engines"
VENV = Path(os.environ.get("KVGPT_PEERS_VENV", ROOT / ".venv-peers"))  # the override: a shared, prebuilt venv


def _llamacpp_engine():
    sys.path.insert(0, str(ENGINES))
    try:
        import llamacpp_engine
    finally:
        sys.path.remove(str(ENGINES))
    return llamacpp_engine


def test_gguf_tensor_map_holds_every_kvgpt_weight_once_and_no_separate_head():
    model = cached_model(n_layers=3)
    tensors = _llamacpp_engine().gguf_tensors(model)
    sd = model.state_dict()
    assert len(tensors) == len(sd) - 1  # every tensor but lm_head, which llama.cpp's gpt2 ties to token_embd
    assert "output.weight" not in tensors
    used = []
    for name, array in tensors.items():
        match = [k for k, v in sd.items() if k != "lm_head.weight" and tuple(v.shape) == array.shape
                 and (v.numpy() == array).all()]
        assert match, f"{name}: no kvgpt tensor with these values"
        used += match
    assert sorted(set(used)) == sorted(k for k in sd if k != "lm_head.weight")
    assert tensors["blk.2.attn_qkv.weight"].shape == (3 * 32, 32)  # (3C, C): nn.Linear's layout, ggml's {C, 3C}


CHECK = r"""
import json, sys, tempfile, pathlib, torch
sys.path.insert(0, "peers/engines")
from kvgpt import ModelConfig, MiniGPTInferenceModel
from kvgpt.benchmark.engines import kvgpt_engine, random_prompts
from kvgpt.benchmark.suite import build_model
import llms_from_scratch_engine as L, llamacpp_engine as E
torch.manual_seed(0)
model = MiniGPTInferenceModel(ModelConfig(vocab_size=67, n_layers=2, n_heads=2, d_model=32, block_size=64)).eval()
with torch.no_grad():
    for p in model.parameters():
        p.normal_(0.0, 0.2)  # logits of realistic spread, as tests/helpers.random_model
out = {}
prompt = random_prompts(67, 3, 8, seed=1)
ref = kvgpt_engine(model)(prompt, 20).tokens
out["lfs_logits_gap"] = L.logits_gap(model, prompt)
out["lfs_equal"] = torch.equal(L.build(model, None, 1)(prompt, 20).tokens, ref)
from llms_from_scratch.kv_cache.gpt2 import GPTModel
from llms_from_scratch.kv_cache.generate import generate_text_simple
published = GPTModel(L.gpt_config(model)).eval()
try:
    generate_text_simple(published, prompt, 5)
    out["published"] = "ran"
except Exception as e:
    out["published"] = type(e).__name__ + ": " + str(e)
unmasked = L.convert(model)
unmasked.reset_kv_cache()
for block in unmasked.trf_blocks:  # changes 1-3 only: their attention back
    block.att.__class__ = block.att.__class__.__mro__[1]
try:
    generate_text_simple(unmasked, prompt, 5)
    out["without_mask_fix"] = "ran"
except Exception as e:
    out["without_mask_fix"] = type(e).__name__
theirs = L.convert(model)
theirs.forward = lambda ids, use_cache=False, cache=None: type(theirs).__mro__[1].forward(theirs, ids, use_cache, cache)
with torch.no_grad():  # change 3 undone: the cache handed in is ignored
    out["without_use_cache_fix_equal"] = torch.equal(generate_text_simple(theirs, prompt, 20)[:, 8:], ref)
out["llamacpp"] = E.available()
if out["llamacpp"] is None:
    char, _ = build_model("shakespeare-char")
    with tempfile.TemporaryDirectory() as d:
        engine = E.build(char, pathlib.Path(d), 1)
        for b in (1, 2):
            p = random_prompts(char.config.vocab_size, b, 16, seed=0)
            out[f"llamacpp_equal_b{b}"] = torch.equal(engine(p, 32).tokens, kvgpt_engine(char)(p, 32).tokens)
            out[f"llamacpp_gap_b{b}"] = E.prompt_logits_gap(char, engine, p)
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def peers_check():
    python = VENV / "bin" / "python"
    if not python.exists():
        pytest.skip(f"no {VENV}: build it with bash peers/engines/install.sh .venv-peers (or set KVGPT_PEERS_VENV)")
    if not (VENV / ".installed").exists():
        pytest.skip(f"{VENV} is incomplete (no .installed): rerun peers/engines/install.sh")
    run = subprocess.run([str(python), "-c", CHECK], cwd=ROOT, capture_output=True, text=True, timeout=600,
                         env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"})
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


def test_lfs_uncached_logits_equal_kvgpts_and_cached_tokens_too(peers_check):
    assert peers_check["lfs_logits_gap"] <= 1e-4, peers_check
    assert peers_check["lfs_equal"] is True


def test_each_lfs_fix_is_needed(peers_check):
    assert peers_check["published"] == "AttributeError: 'GPTModel' object has no attribute 'cfg'"
    assert peers_check["without_mask_fix"] == "RuntimeError"
    assert peers_check["without_use_cache_fix_equal"] is False


def test_llamacpp_gives_kvgpts_greedy_tokens_batch_1_and_2(peers_check):
    if peers_check["llamacpp"] is not None:
        pytest.skip(f"llama.cpp not usable in .venv-peers: {peers_check['llamacpp']}")
    assert peers_check["llamacpp_equal_b1"] is True and peers_check["llamacpp_equal_b2"] is True
    # not fp32-exact: ggml's CPU GELU reads an fp16 table (vec.h GGML_GELU_FP16); bounded, not 1e-5
    assert peers_check["llamacpp_gap_b1"] < 2e-2 and peers_check["llamacpp_gap_b2"] < 2e-2
