"""Serving under load, and what one decode step costs: requests arriving at seeded Poisson times (TTFT, TPOT, ITL
per request rate, static vs continuous batching vs vLLM), and a paged flat step beside a static-cache step.

Introduced in notebooks/11_continuous_batching.ipynb.
"""

from __future__ import annotations

import pandas as pd
import torch

from ..cache_manager import KVCacheManager
from .serving import continuous_batching, poisson_arrivals, static_batching, summarize
from .timing import interleaved_ms

INF = float("inf")
# request rates (requests/s) per model, around each engine's capacity on a 2-core CPU; inf = all at t = 0
ONLINE_RATES = {"full": {"shakespeare-char": (4.0, 8.0, 16.0, 32.0, INF), "gpt2-small": (0.5, 1.0, 2.0, 4.0, INF)},
                "quick": {"shakespeare-char": (8.0, INF), "gpt2-small": (2.0, INF)}}
ONLINE_SEED = 0  # the arrival times' seed: vLLM's run (peers/vllm/bench.py) draws the same ones


def online_sweep(name: str, model, requests, mode: str, make_engine, max_num_seqs: int, peer: dict | None = None,
                 same_tokens=None) -> pd.DataFrame:
    """Every rate of ONLINE_RATES[mode][name]: static and continuous batching (and vLLM's rows, if given) serving
    the same requests arriving at the same seeded Poisson times -> one row per (rate, engine), summarize()'s columns.

    make_engine() -> a fresh LLMEngine; same_tokens(ref, got, context) -> (identical?, message).
    Introduced in notebooks/11_continuous_batching.ipynb.
    """
    rows = []
    for rate in ONLINE_RATES[mode][name]:
        arrivals = poisson_arrivals(len(requests), rate, ONLINE_SEED)
        static = static_batching(model, requests, max_num_seqs, arrivals)
        runs = {"static batching (Part I)": static,
                "continuous batching (kvgpt LLMEngine)": continuous_batching(make_engine(), requests, arrivals)}
        for engine, tl in runs.items():
            rows.append({"model": name, "rate": rate, "engine": engine, **summarize(tl),
                         "tokens_identical": same_tokens(static.tokens, tl.tokens, f"{name} @ {rate}")[0]})
        run = (peer or {}).get(str(rate))
        if run is not None:
            rows.append({"model": name, "rate": rate, "engine": "vLLM", **run["summary"],
                         "tokens_identical": same_tokens(static.tokens, run["tokens"], f"{name} vLLM @ {rate}")[0]})
    return pd.DataFrame(rows)


def decode_step_cost(model, rows: int = 16, past: int = 100, repeats: int = 7, block_size: int = 16) -> dict:
    """One decode step of `rows` sequences with `past` cached tokens each, timed side by side (median of `repeats`,
    interleaved): Part I's static cache (forward_step), the paged flat step reading the pool in place ("auto"
    kernel) and the same step with the gather-then-SDPA reference kernel; plus the bytes of K/V each one moves
    besides reading the cache (the gather copies every visible key and value; in place, only the new ones are
    written; past is cut to block_size - 1 for a model with a shorter context).
    Introduced in notebooks/11_continuous_batching.ipynb.
    """
    from ..serving import PagedKVCache

    cfg, g = model.config, torch.Generator().manual_seed(0)
    past = min(past, cfg.block_size - 1)  # a small test model's context bounds it
    prompts = torch.randint(0, cfg.vocab_size, (rows, past), generator=g)  # (B, P)
    nxt = torch.randint(0, cfg.vocab_size, (rows,), generator=g)  # (B,)
    static = KVCacheManager(cfg, rows, "static", capacity=past + 1)
    paged = PagedKVCache(cfg, rows * -(-(past + 1) // block_size), block_size, enable_prefix_caching=False)
    with torch.inference_mode():
        model.prefill(prompts, static)
        for s in range(rows):
            paged.add_sequence(s)
            paged.reserve(s, past + 1)
        model.prefill(prompts.reshape(1, -1), paged.batch(list(range(rows)), [past] * rows))
        for s in range(rows):
            paged.commit(s, past, prompts[s].tolist())

    def step(kind):
        with torch.inference_mode():
            if kind == "static":
                static.crop(past)  # the same step again: back to `past` slots
                return model.forward_step(nxt, past, static)
            return model.prefill(nxt[None], paged.batch(list(range(rows)), [1] * rows, kind), last_only=True)

    med = interleaved_ms({kind: (lambda k=kind: step(k)) for kind in ("static", "auto", "gather")}, repeats)
    per_slot = 2 * cfg.n_layers * cfg.kv_heads * cfg.head_dim * next(model.parameters()).element_size()  # K and V
    return {"rows": rows, "past": past, "static_ms": med["static"], "paged_ms": med["auto"],
            "gather_ms": med["gather"], "paged_over_static": med["auto"] / med["static"],
            "gather_over_static": med["gather"] / med["static"],
            "gather_bytes_copied": rows * (past + 1) * per_slot, "paged_bytes_copied": rows * per_slot}
