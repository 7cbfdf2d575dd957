"""vLLM parity: kvgpt's weights served by vLLM on this CPU give the same greedy tokens as kvgpt.

    .venv-vllm/bin/python peers/vllm/parity.py [--models shakespeare-char gpt2-small] [--out figures/vllm_parity.json]

For each model (the embedded Shakespeare model, a seeded random GPT-2-small): the ragged requests of
SERVE_WORKLOADS["parity"], generated (1) one by one with Part I's generator (the reference), (2) by Part I's
static batched generate, (3) by kvgpt's continuous-batching LLMEngine (when kvgpt.serving exists) and (4) by
vLLM from a to_hf().save_pretrained() directory. Writes the verdicts, versions and CPU to JSON; exit code 1
when any engine's tokens differ from the reference (the JSON says where).
"""

from __future__ import annotations

import argparse
import sys
import time

import _common as c


def first_mismatch(ref: list, got: list) -> dict | None:
    """The first request and token where got differs from ref, or None when all are equal."""
    for r, (a, b) in enumerate(zip(ref, got)):
        if a != b:
            step = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
            return {"request": r, "token": step, "expected": a[step:step + 3], "got": b[step:step + 3],
                    "expected_len": len(a), "got_len": len(b)}
    return None if len(ref) == len(got) else {"request": min(len(ref), len(got)), "token": 0}


def kvgpt_tokens(model, requests) -> dict:
    """Tokens from every kvgpt engine that can run here: alone (reference), static batched, LLMEngine."""
    from kvgpt.benchmark.serving import continuous_batching, static_batching, tokens_alone

    out = {"kvgpt alone (Part I)": tokens_alone(model, requests),
           "kvgpt static batching (Part I)": static_batching(model, requests, c.ENGINE_ARGS["max_num_seqs"]).tokens}
    try:
        from kvgpt.serving import LLMEngine
    except ImportError as e:
        print(f"parity: kvgpt.serving.LLMEngine not available ({e}); checking Part I only", file=sys.stderr)
        return out
    engine = LLMEngine(model, block_size=c.KVGPT_BLOCK_SIZE, max_num_seqs=c.ENGINE_ARGS["max_num_seqs"],
                       max_num_batched_tokens=c.ENGINE_ARGS["max_num_batched_tokens"], enable_prefix_caching=True)
    out["kvgpt LLMEngine (continuous batching)"] = continuous_batching(engine, requests).tokens
    return out


def check_model(name: str) -> dict:
    from kvgpt.benchmark.workload import SERVE_WORKLOADS, serve_workload

    import torch

    torch.set_num_threads(1)  # tokens do not depend on it; on a shared 2-core machine 1 thread is far faster
    model = c.build(name)
    requests = serve_workload(name, model.config, "parity")
    return compare(name, model, requests, {"workload": SERVE_WORKLOADS["parity"][name]}, model.config.block_size)


def compare(name: str, model, requests, extra: dict, max_model_len: int) -> dict:
    """Every engine's greedy tokens for `requests` against kvgpt alone; `extra` leads the result dict."""
    started = time.perf_counter()
    engines = kvgpt_tokens(model, requests)  # before vLLM starts: it pins threads of its own
    kvgpt_s = time.perf_counter() - started
    with c.scratch() as d:
        c.export(model, c.Path(d))  # to_hf(): GPT2LMHeadModel, or LlamaForCausalLM for a RoPE model
        started = time.perf_counter()
        llm = c.make_llm(c.Path(d), max_model_len)
        load_s = time.perf_counter() - started
        engines["vLLM"] = c.vllm_generate(llm, requests)
        del llm
    ref_name = next(iter(engines))
    ref = engines[ref_name]
    verdicts = {k: first_mismatch(ref, v) for k, v in engines.items() if k != ref_name}
    result = {**extra, "requests": len(requests),
              "prompt_lengths": [len(r.prompt) for r in requests], "new_tokens": sum(len(t) for t in ref),
              "reference": ref_name, "equal": {k: v is None for k, v in verdicts.items()},
              "first_mismatch": {k: v for k, v in verdicts.items() if v is not None},
              "kvgpt_seconds": round(kvgpt_s, 1), "vllm_startup_seconds": round(load_s, 1),
              "first_request_tokens": ref[0][:16]}
    print(f"parity {name}: {len(requests)} requests, {result['new_tokens']} tokens: "
          + ", ".join(f"{k} {'==' if v is None else '!='} reference" for k, v in verdicts.items()), file=sys.stderr)
    return result


def main(argv=None, models=c.MODELS, check=None, out="vllm_parity.json", command="make vllm-parity",
         doc=__doc__) -> int:
    """Check `models` with `check` (default check_model), write figures/`out`; peers/vllm/parity_llama.py reuses it."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(models), choices=models)
    parser.add_argument("--out", default=str(c.FIGURES / out))
    args = parser.parse_args(argv)
    results = {name: (check or check_model)(name) for name in args.models}
    ok = all(all(r["equal"].values()) for r in results.values())
    c.write_json(c.Path(args.out), {"all_equal": ok, "models": results, "versions": c.versions(),
                                    "engine_args": {**c.ENGINE_ARGS, "kvgpt block_size": c.KVGPT_BLOCK_SIZE,
                                                    "vllm block_size": c.VLLM_BLOCK_SIZE},
                                    "command": command})
    print("parity: " + ("all engines gave identical greedy tokens" if ok else "TOKENS DIFFER (see the JSON)"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
