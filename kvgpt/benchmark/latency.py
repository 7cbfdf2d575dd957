"""Latency: time to first token (prefill) and milliseconds per generated token (decode), per engine.

LatencyBenchmark runs several engines on one prompt (warm-up, then repeats round-robin so a
busy machine slows every engine alike) and reports medians; step_latency times single model
steps at chosen positions (cached vs recomputing everything); prefill_latency times one prompt pass.
Introduced in notebooks/08_benchmarks.ipynb.
"""

from __future__ import annotations

import statistics

import pandas as pd
import torch

from ..cache_manager import KVCacheManager
from .engines import Engine, check_identical, random_prompts
from .timing import call_ms, interleaved_ms, repeat_ms


class LatencyBenchmark:
    """Prefill ms and decode ms/token of each engine on the same prompt (greedy, tokens checked identical).

    Shapes: prompt_ids (B, T). run() -> one row per engine: prefill_ms, decode_ms_per_token (median over
    repeats), decode_tokens_per_s = B * (N - 1) / decode time, total_ms. Raises TokenMismatchError if any
    two runs disagree. `progress` (a callable taking one line of text) hears about each engine.

    Introduced in notebooks/08_benchmarks.ipynb.
    """

    def __init__(self, engines: dict[str, Engine], warmup: int = 1, repeats: int = 3, progress=None):
        if not engines:
            raise ValueError("engines={}: give at least one engine")
        if warmup < 0 or repeats < 1:
            raise ValueError(f"warmup={warmup}, repeats={repeats}: need warmup >= 0 and repeats >= 1")
        self.engines, self.warmup, self.repeats, self.progress = dict(engines), warmup, repeats, progress

    def run(self, prompt_ids: torch.Tensor, new_tokens: int, label: str = "") -> pd.DataFrame:
        """Time every engine generating `new_tokens` after `prompt_ids` (B, T); one row per engine."""
        if new_tokens < 2:
            raise ValueError(f"new_tokens={new_tokens}: need >= 2 (one prefill token and at least one decode step)")
        for name, engine in self.engines.items():  # warm-up: code paths, allocator, thread pool
            for _ in range(self.warmup):
                engine(prompt_ids, min(new_tokens, 8))
        runs: dict[str, list] = {name: [] for name in self.engines}
        for r in range(self.repeats):
            for name, engine in self.engines.items():
                self._say(f"{label} {name}: B={prompt_ids.size(0)} N={new_tokens} repeat {r + 1}/{self.repeats}")
                runs[name].append(engine(prompt_ids, new_tokens))
            first = next(iter(runs.values()))[0].tokens  # also across repeats: greedy is deterministic
            check_identical({"first run": first, **{name: rs[-1].tokens for name, rs in runs.items()}},
                            f"{label} B={prompt_ids.size(0)} N={new_tokens} repeat {r + 1}")
        return pd.DataFrame([self._row(name, rs, prompt_ids, new_tokens, label) for name, rs in runs.items()])

    def _row(self, name: str, runs: list, prompt_ids: torch.Tensor, n: int, label: str) -> dict:
        b, t = prompt_ids.shape
        decode = statistics.median(r.decode_ms for r in runs) / (n - 1)  # ms per decode step
        return {"model": label, "engine": name, "batch_size": b, "prompt_len": t, "new_tokens": n,
                "prefill_ms": statistics.median(r.prefill_ms for r in runs),
                "decode_ms_per_token": decode, "decode_ms_per_token_min": min(r.decode_ms for r in runs) / (n - 1),
                "decode_tokens_per_s": b * 1e3 / decode, "total_ms": statistics.median(r.total_ms for r in runs),
                "decode_cpu_ms_per_token": statistics.median(r.decode_cpu_ms for r in runs) / (n - 1),
                "repeats": len(runs)}

    def _say(self, text: str) -> None:
        if self.progress is not None:
            self.progress(text.strip())


def step_latency(model, positions, batch_size: int = 1, steps: int = 4, repeats: int = 3,
                 seed: int = 0) -> pd.DataFrame:
    """Milliseconds for the step that makes the sequence `position` tokens long, with and without a cache.

    Cached: median of `steps` consecutive forward_step calls ending at that position (static and dynamic).
    Uncached: median of `repeats` full forwards over all `position` tokens, LM head on the last one only.
    -> rows (model position, engine, ms, batch_size).

    Introduced in notebooks/08_benchmarks.ipynb.
    """
    cfg, rows = model.config, []
    for p in positions:
        if not steps < p <= cfg.block_size:
            raise ValueError(f"position={p}: must be in {steps + 1}..block_size={cfg.block_size} (steps={steps})")
        ids = random_prompts(cfg.vocab_size, batch_size, p, seed)  # (B, p)
        with torch.inference_mode():
            model(ids[:, :8], last_only=True)  # warm-up
            for kind in ("static", "dynamic"):
                cache = KVCacheManager(cfg, batch_size, kind)
                model.prefill(ids[:, : p - steps], cache, last_only=True)
                times = [call_ms(lambda s=slot: model.forward_step(ids[:, s], s, cache)) for slot in range(p - steps, p)]
                rows.append({"position": p, "engine": f"kvgpt {kind}", "ms": statistics.median(times)})
            ms = repeat_ms(lambda ids=ids: model(ids, last_only=True), repeats)
            rows.append({"position": p, "engine": "kvgpt no cache", "ms": ms})
    return pd.DataFrame(rows).assign(batch_size=batch_size)


def prefill_latency(model, hf, prompt_len: int, batch_size: int = 1, repeats: int = 3, seed: int = 0) -> pd.DataFrame:
    """One prompt pass into a fresh cache: kvgpt (LM head on the last position / everywhere) vs transformers.

    transformers' generate asks for logits_to_keep=1 (the last position); a plain hf(ids) computes all.
    Every variant's next token must agree. -> rows (engine, prompt_len, batch_size, ms).

    Introduced in notebooks/08_benchmarks.ipynb.
    """
    from .peers import hf_forward

    cfg = model.config
    ids = random_prompts(cfg.vocab_size, batch_size, prompt_len, seed)  # (B, T)

    def kvgpt(last_only: bool):
        cache = KVCacheManager(cfg, batch_size, "static", capacity=prompt_len)
        with torch.inference_mode():
            logits = model.prefill(ids, cache, last_only=last_only)
        return logits if last_only else logits[:, -1]  # (B, V)

    variants = {"kvgpt prefill (last position)": lambda: kvgpt(True),
                "kvgpt prefill (all positions)": lambda: kvgpt(False),
                "hf forward (logits_to_keep=1, as generate)": lambda: hf_forward(hf, ids, 1)[:, -1],
                "hf forward (all positions)": lambda: hf_forward(hf, ids)[:, -1]}
    firsts = {name: fn().argmax(-1)[:, None] for name, fn in variants.items()}  # warm-up and token check
    check_identical(firsts, f"prefill of {prompt_len} tokens")
    times = interleaved_ms(variants, repeats)  # round-robin, so background load hits every variant alike
    rows = [{"engine": name, "ms": ms} for name, ms in times.items()]
    return pd.DataFrame(rows).assign(prompt_len=prompt_len, batch_size=batch_size)
