"""Measure each peer's options side by side (how the modules' defaults were chosen), run with .venv-peers' python.

    PYTHONPATH=$PWD .venv-peers/bin/python peers/engines/sweep_options.py onnxruntime shakespeare-char \\
        --threads 1 --batch 1 --new-tokens 64 --repeats 5

Every variant is built once, checked against kvgpt static's greedy tokens, then all variants and kvgpt are timed
in turn (interleaved, so a busy moment hits all of them), median decode ms/token printed per variant.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

import ctranslate2_engine
import onnxruntime_engine
from kvgpt.benchmark.engines import kvgpt_engine, random_prompts
from kvgpt.benchmark.suite import build_model

VARIANTS = {
    "onnxruntime": (onnxruntime_engine, {
        "1 graph, torchscript": {"graphs": 1},
        "2 graphs, torchscript": {"graphs": 2},
        "2 graphs, no spinning": {"graphs": 2, "spinning": False},
        "2 graphs, dynamo": {"graphs": 2, "exporter": "dynamo"},
        "2 graphs, dynamo + gpt2 optimizer": {"graphs": 2, "exporter": "dynamo", "optimizer": "gpt2"},
        "2 graphs, torchscript + gpt2 optimizer": {"graphs": 2, "optimizer": "gpt2"},
    }),
    "ctranslate2": (ctranslate2_engine, {
        "generate_batch + callback": {"stream": "callback"},
        "generate_tokens": {"stream": "generate_tokens"},
    }),
}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("engine", choices=sorted(VARIANTS))
    parser.add_argument("model", choices=["shakespeare-char", "gpt2-small"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--only", nargs="+", default=None, help="variant names to run")
    args = parser.parse_args(argv)
    module, variants = VARIANTS[args.engine]
    model, _ = build_model(args.model)
    prompt = random_prompts(model.config.vocab_size, args.batch, 16, seed=0)  # (B, T)
    torch.set_num_threads(args.threads)
    engines = {"kvgpt static": kvgpt_engine(model)}
    ref = engines["kvgpt static"](prompt, args.new_tokens).tokens
    with tempfile.TemporaryDirectory(prefix="kvgpt-sweep-") as tmp:
        for name, options in variants.items():
            if args.only and name not in args.only:
                continue
            start = time.perf_counter()
            engine = module.build(model, Path(tmp) / name.replace(" ", "_"), args.threads, **options)
            build_s = time.perf_counter() - start
            try:
                equal = torch.equal(engine(prompt, args.new_tokens).tokens, ref)
            except ValueError as e:
                print(f"{name}: skipped ({e})")
                continue
            print(f"{name}: built in {build_s:.1f} s, tokens equal kvgpt static: {equal}", flush=True)
            engines[name] = engine
        times = {name: [] for name in engines}
        for _ in range(args.repeats):
            for name, engine in engines.items():
                run = engine(prompt, args.new_tokens)
                times[name].append(run.decode_ms / (args.new_tokens - 1))
    print(f"{args.engine} {args.model} threads={args.threads} B={args.batch} N={args.new_tokens}, "
          f"decode ms/token (median of {args.repeats}):")
    for name, values in times.items():
        print(f"  {name:40s} {statistics.median(values):9.3f}   all {[round(v, 3) for v in values]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
