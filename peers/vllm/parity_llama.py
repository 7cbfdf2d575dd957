"""vLLM parity for kvgpt's Llama-shaped models: to_hf() folders (LlamaForCausalLM) served by vLLM on this CPU give
kvgpt's greedy tokens for a batch of ragged prompts.

    PYTHONPATH=. .venv-vllm/bin/python peers/vllm/parity_llama.py [--models ...] [--out figures/vllm_parity_llama.json]

Models: the embedded shakespeare-char-llama (RoPE + RMSNorm + SwiGLU, 2 K/V heads) and a seeded random model of
SmolLM-135M's shape (30 layers x 576, 9 query heads sharing 3 K/V heads, SwiGLU 1536, vocab 49152, tied; GPT-2
init std 0.02). Engines as peers/vllm/parity.py: kvgpt alone (the reference), static batching, the continuous-
batching LLMEngine, vLLM (its own RoPE kernel, rotate_half layout: is_neox_style=True). Exit code 1 on a mismatch.
"""

from __future__ import annotations

import argparse
import sys
import time

import _common as c
from parity import first_mismatch, kvgpt_tokens

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
    started = time.perf_counter()
    engines = kvgpt_tokens(model, requests)
    kvgpt_s = time.perf_counter() - started
    with c.scratch() as d:
        c.export(model, c.Path(d))  # to_hf(): a LlamaForCausalLM folder
        started = time.perf_counter()
        llm = c.make_llm(c.Path(d), min(cfg.block_size, 512))
        load_s = time.perf_counter() - started
        engines["vLLM"] = c.vllm_generate(llm, requests)
        del llm
    ref_name = next(iter(engines))
    ref = engines[ref_name]
    verdicts = {k: first_mismatch(ref, v) for k, v in engines.items() if k != ref_name}
    result = {"workload": WORKLOADS[name], "config": cfg.to_dict(), "requests": len(requests),
              "prompt_lengths": [len(r.prompt) for r in requests], "new_tokens": sum(len(t) for t in ref),
              "reference": ref_name, "equal": {k: v is None for k, v in verdicts.items()},
              "first_mismatch": {k: v for k, v in verdicts.items() if v is not None},
              "kvgpt_seconds": round(kvgpt_s, 1), "vllm_startup_seconds": round(load_s, 1),
              "first_request_tokens": ref[0][:16]}
    print(f"parity {name}: {len(requests)} requests, {result['new_tokens']} tokens: "
          + ", ".join(f"{k} {'==' if v is None else '!='} reference" for k, v in verdicts.items()), file=sys.stderr)
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(WORKLOADS), choices=list(WORKLOADS))
    parser.add_argument("--out", default=str(c.FIGURES / "vllm_parity_llama.json"))
    args = parser.parse_args(argv)
    results = {name: check_model(name) for name in args.models}
    ok = all(all(r["equal"].values()) for r in results.values())
    c.write_json(c.Path(args.out), {"all_equal": ok, "models": results, "versions": c.versions(),
                                    "engine_args": {**c.ENGINE_ARGS, "kvgpt block_size": c.KVGPT_BLOCK_SIZE,
                                                    "vllm block_size": c.VLLM_BLOCK_SIZE},
                                    "command": "PYTHONPATH=. .venv-vllm/bin/python peers/vllm/parity_llama.py"})
    print("parity: " + ("all engines gave identical greedy tokens" if ok else "TOKENS DIFFER (see the JSON)"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
