"""Long-text loss under each context policy (StreamingLLM's figure on our models) and the decode speed of two models.

A text much longer than the context is fed one token at a time (teacher forcing) through the SAME policy code
generation uses (kvgpt/context.py's SlidingWindow, kvgpt/sinks.py's SinkWindow), and the loss of every next
token is kept. Cost is counted in model token-rows (a re-prefill of W tokens is W rows, a step is 1) and time.
Introduced in notebooks/16_modern_models.ipynb.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..context import SlidingWindow
from ..generation import AutoregressiveGenerator
from ..sinks import SinkWindow
from ..validation import check_choice, check_int, check_tensor

STREAM_POLICIES = ("slide", "sinks", "window")  # window = sinks with none kept: StreamingLLM's "window attention"


@dataclass
class _TeacherJob:
    """The fields SlidingWindow and SinkWindow read from a generation job (batch 1, no padding)."""

    ids: torch.Tensor  # (1, 1): the first token
    mask: None = None
    use_cache: bool = True
    cache_kind: str = "static"
    slides: int = 0
    pad_id: int = 0


@torch.inference_mode()
def stream_losses(model, ids: torch.Tensor, policy: str, window: int, sinks: int = 0) -> dict:
    """Feed ids (N,) one token at a time under `policy`; the loss (nats) of predicting each next one.

    policy "slide": when the cache is full, re-prefill the last `window` tokens (chapter 13; any model).
    "sinks": keep the first `sinks` tokens and the last `window`, evict the middle (RoPE models).
    "window": the same with no sinks (window = the whole cache). -> {"losses": (N - 1,) float tensor,
    "rows": token rows the model ran, "slides": re-prefills or evicting steps, "seconds": wall time}.
    Introduced in notebooks/16_modern_models.ipynb.
    """
    policy = check_choice("policy", policy, STREAM_POLICIES)
    ids = check_tensor("ids", ids, (1,), (torch.int32, torch.int64))
    window = check_int("window", window, 1, model.config.block_size)
    sinks = 0 if policy == "window" else check_int("sinks", sinks, 0, model.config.block_size - window)
    job = _TeacherJob(ids[:1][None])
    feed = SlidingWindow(model, job, window) if policy == "slide" else SinkWindow(model, job, sinks, window)
    losses = torch.empty(len(ids) - 1)
    started = time.perf_counter()
    logits = feed.prompt()  # (1, V) after the first token
    for i in range(1, len(ids)):
        losses[i - 1] = F.cross_entropy(logits.float(), ids[i:i + 1])
        if i < len(ids) - 1:
            logits = feed.token(ids[i:i + 1])
    seconds = time.perf_counter() - started
    steps = len(ids) - 2  # one-token calls after the first
    rows = 1 + steps + (job.slides * (window - 1) if policy == "slide" else 0)  # a slide runs W rows, not 1
    return {"losses": losses, "rows": rows, "slides": job.slides, "seconds": seconds}


def binned(losses: torch.Tensor, width: int) -> list[float]:
    """Mean loss of each run of `width` consecutive predictions (the last run may be shorter)."""
    return [losses[i:i + width].mean().item() for i in range(0, len(losses), width)]


def decode_speed(models: dict, prompt: list[int], max_new_tokens: int, repeats: int = 5) -> dict:
    """Batch-1 greedy decode tokens/s of each model (static cache), round-robin so a busy moment hits every model
    alike -> {name: median tokens/s}. Introduced in notebooks/16_modern_models.ipynb."""
    runs = {name: [] for name in models}
    for _ in range(check_int("repeats", repeats, 1)):
        for name, model in models.items():
            gen = AutoregressiveGenerator(model)
            gen.generate(prompt, max_new_tokens)
            runs[name].append(gen.last_stats.decode_tokens_per_s)
    return {name: statistics.median(r) for name, r in runs.items()}
