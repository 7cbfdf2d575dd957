"""Attention without the (T, S) score matrix: the online softmax (FlashAttention's identity), tiles, flash-decoding.

softmax(s) @ v over S keys can be computed one tile of keys at a time. Per query keep three things: the largest
score so far m, the sum l of exp(score - m) and the sum acc of exp(score - m) * value. A tile whose scores exceed
m raises it to m', and what was summed under the old m is rescaled by exp(m - m'). After the last tile, acc / l is
softmax(s) @ v exactly (only the order of the float additions changes). Two partial results over disjoint key
sets merge the same way, through their log-sum-exp lse = m + log l: that is flash-decoding's reduction.
Introduced in notebooks/14_attention_kernels.ipynb.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from .attention import repeat_kv
from .validation import check_positive_int, check_tensor

NEG_INF = float("-inf")


class SoftmaxState(NamedTuple):
    """The running state of an online softmax: max m (..., T), sum l (..., T), weighted values acc (..., T, D).

    Introduced in notebooks/14_attention_kernels.ipynb.
    """

    m: torch.Tensor
    l: torch.Tensor  # noqa: E741 -- FlashAttention's name
    acc: torch.Tensor


class Partial(NamedTuple):
    """Attention over a subset of the keys: out normalised over that subset (..., T, D), lse its scores'
    log-sum-exp (..., T); lse = -inf when the subset holds no visible key (out is then 0).

    Introduced in notebooks/14_attention_kernels.ipynb.
    """

    out: torch.Tensor
    lse: torch.Tensor


def empty_state(shape: tuple, d: int, dtype=torch.float32, device=None) -> SoftmaxState:
    """The state before any key: m = -inf, l = 0, acc = 0. shape = the queries' (..., T)."""
    return SoftmaxState(torch.full(shape, NEG_INF, dtype=dtype, device=device),
                        torch.zeros(shape, dtype=dtype, device=device),
                        torch.zeros(*shape, d, dtype=dtype, device=device))


def online_softmax_update(state: SoftmaxState, scores: torch.Tensor, v: torch.Tensor) -> SoftmaxState:
    """Fold one tile of keys into the running state.

    Shapes: scores (..., T, s) with -inf where a key is hidden, v (..., s, D). Returns the new state.
    Introduced in notebooks/14_attention_kernels.ipynb.
    """
    m_new = torch.maximum(state.m, scores.amax(dim=-1))  # (..., T)
    m_safe = m_new.masked_fill(m_new == NEG_INF, 0.0)  # a query that saw no key yet: exp(-inf - 0) = 0, never NaN
    alpha = torch.exp(state.m - m_safe)  # (..., T): rescales what was summed under the old max
    p = torch.exp(scores - m_safe[..., None])  # (..., T, s): this tile's unnormalised weights
    return SoftmaxState(m_new, state.l * alpha + p.sum(dim=-1), state.acc * alpha[..., None] + p @ v)


def finish(state: SoftmaxState) -> Partial:
    """The state after the last tile -> (out = acc / l, lse = m + log l); a query with no visible key gets out 0."""
    seen = state.l > 0
    out = state.acc / torch.where(seen, state.l, torch.ones_like(state.l))[..., None]
    return Partial(out, torch.where(seen, state.m + torch.log(state.l), torch.full_like(state.l, NEG_INF)))


def tiled_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, tile: int = 16,
                    mask: torch.Tensor | None = None) -> Partial:
    """softmax(q k^T / sqrt(D) + mask) v, one tile of `tile` keys at a time: at most (T, tile) scores exist at once.

    Shapes: q (B, H, T, D), k and v (B, Hkv, S, D), mask (B or 1, 1, T, S) bool (True = may attend) or None.
    Returns Partial(out (B, H, T, D), lse (B, H, T)).
    Introduced in notebooks/14_attention_kernels.ipynb.
    """
    check_positive_int("tile", tile)
    check_tensor("q", q, (4,))
    k, v = repeat_kv(k, q.size(1) // k.size(1)), repeat_kv(v, q.size(1) // v.size(1))  # (B, H, S, D)
    state = empty_state(q.shape[:-1], v.size(-1), q.dtype, q.device)
    for start in range(0, k.size(-2), tile):
        scores = q @ k[..., start:start + tile, :].transpose(-2, -1) / math.sqrt(q.size(-1))  # (B, H, T, tile)
        if mask is not None:
            scores = scores.masked_fill(~mask[..., start:start + tile], NEG_INF)
        state = online_softmax_update(state, scores, v[..., start:start + tile, :])
    return finish(state)


def merge_partials(parts: list[Partial]) -> Partial:
    """Combine attention results over disjoint key sets into the result over their union, exactly.

    Each part is weighted by exp(lse_part - lse_all): its share of the softmax's denominator.
    Shapes: every part's out (..., T, D), lse (..., T). Introduced in notebooks/14_attention_kernels.ipynb.
    """
    lse = torch.stack([p.lse for p in parts])  # (P, ..., T)
    total = torch.logsumexp(lse, dim=0)  # (..., T); -inf only if no part saw a key
    weights = torch.exp(lse - total.masked_fill(total == NEG_INF, 0.0))  # (P, ..., T)
    out = sum(w[..., None] * p.out for w, p in zip(weights, parts))
    return Partial(out, total)


def flash_decoding(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, splits: int,
                   mask: torch.Tensor | None = None) -> Partial:
    """Split the keys into `splits` contiguous parts, attend to each independently, merge: the same result.

    The parts are independent work items (B * H * splits instead of B * H), which is what keeps every core
    busy when a decode step has fewer (sequence, head) pairs than the machine has cores.
    Shapes: as tiled_attention. Introduced in notebooks/14_attention_kernels.ipynb.
    """
    check_positive_int("splits", splits)
    s, size = k.size(-2), -(-k.size(-2) // splits)
    parts = [tiled_attention(q, k[..., a:a + size, :], v[..., a:a + size, :], tile=size,
                             mask=None if mask is None else mask[..., a:a + size]) for a in range(0, s, size)]
    return merge_partials(parts)
