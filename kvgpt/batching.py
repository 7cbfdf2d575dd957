"""Batching prompts of different lengths: left padding, per-row positions, and the mask that hides the pads.

Rows are right-aligned so every row's next token goes in the same cache slot; row b's first
pad_lengths[b] slots are padding. Introduced in notebooks/07_batching.ipynb.
"""

from __future__ import annotations

from numbers import Integral

import torch

from .validation import ID_DTYPES, ArgumentTypeError, check_id_list, check_tensor, fail_type, show


def pad_lengths_from_mask(attention_mask: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Count the leading zeros of a (B, T) 0/1 left-padding mask. -> (B,) long.

    Introduced in notebooks/07_batching.ipynb.
    """
    check_tensor("attention_mask", attention_mask, (2,), what="(B, T) 0/1")
    if attention_mask.dtype.is_floating_point or attention_mask.dtype.is_complex:  # 0.5 would count as padding
        raise ArgumentTypeError(f"attention_mask has dtype {attention_mask.dtype}: must be an integer or bool tensor")
    mask = attention_mask.to(torch.long)
    if mask.dim() != 2 or mask.shape[0] != batch_size or not ((mask == 0) | (mask == 1)).all():
        raise ValueError(f"attention_mask must be (B={batch_size}, T) of 0/1, got shape {tuple(mask.shape)}")
    if (mask[:, 1:] < mask[:, :-1]).any():
        raise ValueError("attention_mask must be left padding: zeros may only come before the ones of a row")
    return (mask == 0).sum(dim=1)  # (B,)


def query_slots(past, t: int, device=None) -> torch.Tensor:
    """The cache slots the next t tokens go to: past .. past + t - 1, per row when past is per row.

    past: an int (every row has filled that many slots), or a (B,) / (1,) tensor (each row its own count, or a
    compiled step's position as a tensor). Slots below 0 (the left padding of a shorter row in a ragged call)
    are clamped to 0. Shapes: -> (T,) for an int, (B or 1, T) for a tensor.
    Introduced in notebooks/07_batching.ipynb.
    """
    if isinstance(past, torch.Tensor):
        return (past[:, None] + torch.arange(t, device=past.device)).clamp(min=0)  # (B, T)
    return torch.arange(past, past + t, device=device)  # (T,)


def padded_position_ids(pad_lengths: torch.Tensor, past, t: int) -> torch.Tensor:
    """Positions of the next t slots of each row: slot - pad, pads clamped to 0. -> (B, T).

    Without this, a row padded by 3 would start its text at position 3 and its logits would
    differ from running it alone (the classic left-padding bug for learned positions).
    `past` is an int or per-row tensor (see query_slots): the one place kvgpt turns slots into positions.

    Introduced in notebooks/07_batching.ipynb.
    """
    slots = query_slots(past, t, pad_lengths.device)  # (T,) or (B, T)
    return (slots - pad_lengths[:, None]).clamp(min=0)  # (B, T)


def padded_attention_mask(pad_lengths: torch.Tensor, past, t: int, s: int | None = None) -> torch.Tensor:
    """Mask for t new queries over S slots: causal, no pad keys, and always itself.

    Shapes: pad_lengths (B,) -> (B, 1, T, S) bool, S = past + t unless given (a static buffer's capacity, a
    ragged batch's longest row). Letting a query see itself means a padding query still has one key, so softmax
    never meets an all-masked row (no NaN). The one place kvgpt builds a padding/ragged mask.

    Introduced in notebooks/07_batching.ipynb.
    """
    s = past + t if s is None else s
    device = pad_lengths.device
    q = query_slots(past, t, device)[..., None]  # (T, 1) or (B, T, 1): each query's own slot
    keys = torch.arange(s, device=device)  # (S,)
    causal_real = (keys <= q) & (keys >= pad_lengths[:, None, None])  # (B, T, S)
    return (causal_real | (keys == q)).unsqueeze(1)  # (B, 1, T, S)


def pad_prompts(prompts, pad_id: int = 0, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad prompts of different lengths into one batch. -> ids (B, T) long, attention_mask (B, T) long.

    T is the longest prompt; row b starts with T - len(prompts[b]) copies of pad_id, marked 0 in the mask.
    The pad id never matters: the mask hides it and positions come from the mask.

    Introduced in notebooks/07_batching.ipynb.
    """
    if not isinstance(prompts, (list, tuple)) or not all(isinstance(p, (list, tuple, torch.Tensor)) for p in prompts):
        fail_type("prompts", prompts, "a list of prompts, each a list of int ids or a (T,) tensor")
    rows = [_ids(p) for p in prompts]
    if not rows or any(len(r) == 0 for r in rows):
        lengths = [len(r) for r in rows]
        raise ValueError(f"prompts must be a non-empty list of non-empty token lists, got lengths {lengths}")
    if any(isinstance(i, bool) or not isinstance(i, Integral) or not 0 <= i < 2**63 for r in rows for i in r + [pad_id]):
        raise ValueError(f"prompts and pad_id={pad_id!r} must hold int token ids (>= 0, below 2**63)")
    t = max(len(r) for r in rows)
    ids = torch.tensor([[pad_id] * (t - len(r)) + r for r in rows], dtype=torch.long, device=device)  # (B, T)
    mask = torch.tensor([[0] * (t - len(r)) + [1] * len(r) for r in rows], dtype=torch.long, device=device)  # (B, T)
    return ids, mask


def prompt_rows(prompt, vocab_size: int, name: str = "prompt") -> tuple[list[list[int]], bool]:
    """One prompt (list of ids or a (T,) tensor) or a batch (a list of them or a (B, T) tensor) -> (rows, batched).

    Raises ValueError for an empty prompt and for ids that are not ints in 0 .. vocab_size - 1, naming the
    argument `name` (row b of a batch: name[b]).

    Introduced in notebooks/07_batching.ipynb.
    """
    if isinstance(prompt, torch.Tensor):
        if prompt.dim() not in (1, 2) or prompt.dtype not in ID_DTYPES:
            raise ValueError(f"{name} must be a (T,) or (B, T) tensor of int32/int64 ids, got {tuple(prompt.shape)} "
                             f"{prompt.dtype}")
        rows, batched = (prompt.tolist(), True) if prompt.dim() == 2 else ([prompt.tolist()], False)
    elif not isinstance(prompt, (list, tuple)):
        fail_type(name, prompt, "a list of token ids, a tensor, or a list of prompts (text: tokenizer.encode)")
    elif prompt and all(isinstance(p, (list, tuple)) or isinstance(p, torch.Tensor) and p.dim() for p in prompt):
        rows, batched = [_ids(p) for p in prompt], True
    else:  # one prompt: a 0-d tensor in it is not read as a row (check_id_list refuses it: ids are ints)
        rows, batched = [_ids(prompt)], False
    if not rows:
        raise ValueError(f"{name}={show(prompt)} holds no rows: a batch needs at least one prompt")
    for b, row in enumerate(rows):
        row_name = f"{name}[{b}]" if batched else name
        if not isinstance(row, list) or not row:
            raise ValueError(f"{row_name}={row!r} is empty or not a list: generation needs at least one token (e.g. BOS)")
        check_id_list(row_name, row, vocab_size)
    return rows, batched


def _ids(row) -> list:
    """A row of ids as a list: a (T,) tensor's values (int32/int64 only), a list's items as given (checked later)."""
    if isinstance(row, torch.Tensor):
        if row.dtype not in ID_DTYPES or row.dim() != 1:  # int8/uint8 ids have overflowed already; floats are not ids
            raise ArgumentTypeError(f"a prompt tensor {tuple(row.shape)} {row.dtype}: must be (T,) int32 or int64 ids")
        return row.tolist()
    return list(row)
