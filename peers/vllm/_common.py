"""Shared by peers/vllm/*.py (run with .venv-vllm's python): offline settings, the models, vLLM set up like kvgpt.

vLLM is a peer and an oracle here, never a dependency of kvgpt: these scripts import kvgpt, never the reverse.
"""

from __future__ import annotations

import os

# Before vllm is imported: nothing downloads, 1 GiB of KV cache (the CPU backend's knob for its block pool).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import json  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from importlib import metadata  # noqa: E402
from pathlib import Path  # noqa: E402

from kvgpt.benchmark.report import cpu_name  # noqa: E402  (one helper for every figure's CPU name)

ROOT = Path(__file__).resolve().parents[2]
FIGURES = ROOT / "figures"
MODELS = ("shakespeare-char", "gpt2-small")
# kvgpt's engine defaults, given to vLLM under its own names (chapter 11's "the same in vLLM" table), except
# block_size: vLLM 0.32's CPU attention backend takes only multiples of 32 ("No common block size for 16
# (CPU_ATTN: [MultipleOf(32)])"), so vLLM runs with 32-slot blocks and kvgpt's engine with 16 (its default).
ENGINE_ARGS = {"max_num_seqs": 16, "max_num_batched_tokens": 256}
KVGPT_BLOCK_SIZE, VLLM_BLOCK_SIZE = 16, 32


def versions() -> dict:
    """Versions of everything that decides the tokens and the speed, and the machine."""
    out = {}
    for name in ("vllm-cpu", "vllm", "torch", "transformers", "kvgpt"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    import torch

    out.update({"python": platform.python_version(), "cpu": cpu_name(), "cpu_count": os.cpu_count(),
                "torch_threads": torch.get_num_threads(),
                "VLLM_CPU_KVCACHE_SPACE": os.environ["VLLM_CPU_KVCACHE_SPACE"],
                "utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
    return out


def build(name: str):
    """kvgpt's model for a benchmark shape (the same seeded weights serve-bench uses)."""
    from kvgpt.benchmark.suite import build_model

    model, _ = build_model(name)
    return model


def export(model, directory: Path) -> Path:
    """kvgpt's weights as a transformers GPT-2 directory (config.json + model.safetensors) vLLM can load."""
    model.to_hf().save_pretrained(directory)
    return directory


def make_llm(directory: Path, max_model_len: int, enable_prefix_caching: bool = False):
    """vLLM's offline LLM on that directory, fp32, eager, no tokenizer (token ids in, token ids out)."""
    from vllm import LLM

    return LLM(model=str(directory), skip_tokenizer_init=True, dtype="float32", enforce_eager=True,
               max_model_len=max_model_len, enable_prefix_caching=enable_prefix_caching, seed=0,
               block_size=VLLM_BLOCK_SIZE,
               **ENGINE_ARGS)


def params(max_tokens: int):
    from vllm import SamplingParams

    return SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True, detokenize=False)


def vllm_generate(llm, requests) -> list[list[int]]:
    """Greedy new tokens of every request, in request order (one llm.generate call: vLLM batches them)."""
    prompts = [{"prompt_token_ids": list(r.prompt)} for r in requests]
    outs = llm.generate(prompts, [params(r.max_new_tokens) for r in requests], use_tqdm=False)
    return [list(o.outputs[0].token_ids) for o in outs]


def write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {path}", file=sys.stderr)


def scratch() -> tempfile.TemporaryDirectory:
    return tempfile.TemporaryDirectory(prefix="kvgpt-vllm-")
