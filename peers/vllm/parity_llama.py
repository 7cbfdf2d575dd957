"""vLLM parity for kvgpt's Llama-shaped models: to_hf() folders (LlamaForCausalLM) served by vLLM on this CPU give
kvgpt's greedy tokens for a batch of ragged prompts.

    PYTHONPATH=. .venv-vllm/bin/python peers/vllm/parity_llama.py [--models ...] [--out figures/vllm_parity_llama.json]
    (make vllm-parity runs it after peers/vllm/parity.py)

Models: the embedded shakespeare-char-llama (RoPE + RMSNorm + SwiGLU, 2 K/V heads) and a seeded random model of
SmolLM-135M's shape (30 layers x 576, 9 query heads sharing 3 K/V heads, SwiGLU 1536, vocab 49152, tied; GPT-2
init std 0.02). Engines as peers/vllm/parity.py: kvgpt alone (the reference), static batching, the continuous-
batching LLMEngine, vLLM (its own RoPE kernel, rotate_half layout: is_neox_style=True). Exit code 1 on a mismatch.
"""

from __future__ import annotations

import sys

import parity
from parity import compare

# SmolLM-135M's config.json under kvgpt's names (HuggingFaceTB/SmolLM-135M)
SMOLLM_SHAPE = dict(vocab_size=49152, n_layers=30, n_heads=9, n_kv_heads=3, d_model=576, block_size=2048,
                    mlp_hidden=1536, norm_eps=1e-5, rope_theta=10000.0, tie_embeddings=True, positions="rope",
                    norm="rms", mlp="swiglu", bias=False)
WORKLOADS = {"shakespeare-char-llama": {"n_requests": 24, "prompt_lengths": (1, 128), "output_lengths": (1, 96)},
             "smollm-135m-shape": {"n_requests": 8, "prompt_lengths": (1, 48), "output_lengths": (1, 24)}}


def build(name: str):
    import torch

    from kvgpt import MiniGPTInferenceModel, ModelConfig, load_pretrained

    if name == "shakespeare-char-llama":
        return load_pretrained(name)[0]
    torch.manual_seed(0)
    return MiniGPTInferenceModel(ModelConfig(**SMOLLM_SHAPE)).eval()


def check_model(name: str) -> dict:
    import torch

    from kvgpt.benchmark.workload import ragged_workload

    torch.set_num_threads(1)  # tokens do not depend on it; on a shared 2-core machine 1 thread is far faster
    model = build(name)
    cfg = model.config
    requests = ragged_workload(vocab_size=cfg.vocab_size, block_size=cfg.block_size, seed=0, **WORKLOADS[name])
    return compare(name, model, requests, {"workload": WORKLOADS[name], "config": cfg.to_dict()},
                   min(cfg.block_size, 512))


def main(argv=None) -> int:
    return parity.main(argv, tuple(WORKLOADS), check_model, "vllm_parity_llama.json",
                       "PYTHONPATH=. .venv-vllm/bin/python peers/vllm/parity_llama.py", __doc__)


if __name__ == "__main__":
    sys.exit(main())
