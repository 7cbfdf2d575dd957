"""Choosing each finished row's next token after a model call: greedy rows in one argmax, sampled rows one by one
with their own sampler, generator and history; a row whose choice raises fails alone.
Introduced in notebooks/11_continuous_batching.ipynb.
"""

from __future__ import annotations

import torch

from ..sampling import greedy


def pick_tokens(rows: list, logits: torch.Tensor) -> dict:
    """rows = [(Sequence, tokens run)], logits (B, V) of each row's last position -> {row b: its next token, or the
    exception choosing it raised} for the rows that reached their end (a prompt chunk short of it picks nothing).

    Introduced in notebooks/11_continuous_batching.ipynb.
    """
    ends = [b for b, (seq, n) in enumerate(rows) if seq.num_computed + n == len(seq.tokens)]
    greedy_rows = [b for b in ends if rows[b][0].sampler is None]
    picks: dict = {}
    try:  # one argmax and one host sync for every greedy row
        picks.update(zip(greedy_rows, greedy(logits[greedy_rows]).tolist() if greedy_rows else []))
    except ValueError:  # a row's logits are not finite: row by row, so only that row fails
        for b in greedy_rows:
            picks[b] = _attempt(lambda b=b: int(greedy(logits[b])))
    for b in ends:
        if b not in picks:
            picks[b] = _attempt(lambda b=b: sample_row(rows[b][0], logits[b : b + 1]))
    return picks


def sample_row(seq, logits: torch.Tensor) -> int:
    """Exactly AutoregressiveGenerator's pick for a batch of one: the request's RowSampler (its sampler, its own
    generator, its seen tokens). Shapes: logits (1, V). Introduced in notebooks/11_continuous_batching.ipynb.
    """
    with torch.inference_mode():
        return int(seq.picker.pick(logits)[0])


def _attempt(pick):
    """pick() or the exception it raised (a row's failure is that row's result, not the step's)."""
    try:
        return pick()
    except Exception as e:  # noqa: BLE001 -- the sampler's or a hostile subclass's error ends only its request
        return e
