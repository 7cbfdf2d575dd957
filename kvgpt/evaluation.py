"""Held-out loss, measured through a KV cache: what a smaller cache (GQA, int8) costs in quality.

A small slice of the held-out plays ships in kvgpt/data/heldout/ so the check runs offline.
Introduced in notebooks/12_smaller_caches.ipynb.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import torch
import torch.nn.functional as F

from .pretrained import data_dir
from .validation import check_positive_int

HELDOUT_FILE = "heldout/shakespeare-char-val.json"


def heldout_windows(tokenizer) -> torch.Tensor:
    """The shipped held-out windows (never trained on) as token ids: (N, 257), 256 predictions per row.

    Introduced in notebooks/12_smaller_caches.ipynb.
    """
    windows = json.loads((data_dir() / HELDOUT_FILE).read_text(encoding="utf-8"))["windows"]
    return torch.tensor([tokenizer.encode(w) for w in windows])  # (N, T + 1)


@torch.no_grad()
def cached_loss(model, ids: torch.Tensor, make_cache: Callable[[int], object] | None = None,
                chunk: int = 1) -> float:
    """Mean cross entropy (nats per token) predicting ids[:, 1:] from ids[:, :-1], teacher-forced through a cache.

    Shapes: ids (B, T + 1). make_cache(batch_size) -> a KVCacheManager (any kind); the inputs go in
    `chunk` tokens per call (chunk=1: token by token, each step reading every earlier position from the
    cache), so a lossy cache's errors reach every prediction after the first. make_cache=None: the full
    forward, the reference.

    Introduced in notebooks/12_smaller_caches.ipynb.
    """
    chunk = check_positive_int("chunk", chunk)
    x, y = ids[:, :-1], ids[:, 1:]  # (B, T)
    if make_cache is None:
        logits = model(x)  # (B, T, V)
    else:
        cache = make_cache(x.size(0))
        logits = torch.cat([model.prefill(x[:, s:s + chunk], cache) for s in range(0, x.size(1), chunk)], dim=1)
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), y.reshape(-1)).item()
