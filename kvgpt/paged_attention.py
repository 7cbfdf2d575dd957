"""Paged attention: the queries of a step attend to keys and values where they sit in the block pool.

Varlen and flattened, as vLLM's and nano-vllm's attention: one call takes the N new tokens of every sequence of a
step (decode rows and prompt chunks alike), each with its table row and its position; query i attends to keys
0 .. query_pos[i] of row query_row[i]. A decode token sees its whole past; a chunk's queries are causal among
themselves. Pool layout (num_blocks, block_size, Hkv, D), as kvgpt/serving/paged.py's. R = sequences (table
rows), M = blocks per table row. Three kernels, one result:
  "gather"    copy each row's keys out of the pool through its table, then SDPA with a mask (the reference)
  "blockwise" an online softmax over block columns in PyTorch (the teaching version, and the fallback)
  "cpp"       kvgpt/csrc/paged_attention.cpp, reading every block in place (built by kvgpt/paged_kernel.py)
Introduced in notebooks/14_attention_kernels.ipynb.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from .attention import attend
from .online_softmax import NEG_INF, empty_state, finish, online_softmax_update
from .paged_kernel import load_paged_kernel
from .validation import (ArgumentTypeError, check_choice, check_int, check_positive_int, check_tensor,
                         fail_value, show)

IMPLS = ("auto", "cpp", "blockwise", "gather")
CPP_DTYPES = (torch.float32, torch.float64, torch.bfloat16)  # what the C++ kernel is compiled for
FLOAT_DTYPES = CPP_DTYPES + (torch.float16,)
INDEX_DTYPES = (torch.int32, torch.int64)


class PagedMetadata(NamedTuple):
    """What every layer's paged-attention call of one step shares, built once per step.

    Shapes: block_tables (R, M), query_row, query_pos and slot_mapping (N,), all int64; slot_mapping[i] is the
    pool slot (block * block_size + offset) that token i's key and value are written to.
    Introduced in notebooks/14_attention_kernels.ipynb.
    """

    block_tables: torch.Tensor
    query_row: torch.Tensor
    query_pos: torch.Tensor
    slot_mapping: torch.Tensor


def paged_metadata(past_lengths: list[int], num_new: list[int], tables: list[list[int]], block_size: int,
                   num_blocks: int, device=None) -> PagedMetadata:
    """Per sequence (past length, new tokens, block table) -> the flattened metadata, without a per-token loop.

    Row r contributes num_new[r] queries at positions past_lengths[r] .. past_lengths[r] + num_new[r] - 1, and its
    table must hold all of them; tables are padded with the row's first block (any id in range would do).
    Introduced in notebooks/14_attention_kernels.ipynb.
    """
    bs, nb = check_positive_int("block_size", block_size), check_positive_int("num_blocks", num_blocks)
    rows = len(num_new) if isinstance(num_new, (list, tuple)) else 0
    for name, value in (("num_new", num_new), ("past_lengths", past_lengths), ("tables", tables)):
        if not isinstance(value, (list, tuple)) or len(value) != rows or not value:
            fail_value(name, value, f"a non-empty list with one entry per sequence (num_new has {rows})")
    for r, (past, new, table) in enumerate(zip(past_lengths, num_new, tables)):  # per sequence, never per token
        check_int(f"past_lengths[{r}]", past, low=0)
        check_positive_int(f"num_new[{r}]", new)
        need = -(-(past + new) // bs)
        if not isinstance(table, (list, tuple)) or len(table) < need:
            fail_value(f"tables[{r}]", table, f"a list of at least {need} block ids (positions 0..{past + new - 1})")
    width = max(len(t) for t in tables)
    try:
        block_tables = torch.tensor([list(t) + [t[0]] * (width - len(t)) for t in tables], device=device)  # (R, M)
    except (TypeError, ValueError, RuntimeError) as e:
        raise ValueError(f"tables={show(tables)}: must hold int block ids ({e})") from None
    if block_tables.dtype not in INDEX_DTYPES:
        fail_value("tables", tables, "int block ids")
    _check_range("tables", block_tables, nb)
    new = torch.tensor(num_new, device=device)  # (R,)
    query_row = torch.repeat_interleave(torch.arange(len(num_new), device=device), new)  # (N,)
    first = torch.cumsum(new, 0) - new  # (R,): flattened index of each row's first query
    query_pos = torch.tensor(past_lengths, device=device)[query_row] + torch.arange(len(query_row), device=device)
    query_pos -= first[query_row]  # (N,)
    slots = block_tables[query_row, query_pos // bs] * bs + query_pos % bs  # (N,)
    return PagedMetadata(block_tables, query_row, query_pos, slots)


def write_kv(k_pool: torch.Tensor, v_pool: torch.Tensor, slot_mapping: torch.Tensor, k: torch.Tensor,
             v: torch.Tensor) -> None:
    """Write the N new keys and values into their pool slots (vLLM's reshape_and_cache, nano-vllm's store_kvcache).

    Shapes: pools (num_blocks, block_size, Hkv, D), slot_mapping (N,), k and v (1, Hkv, N, D) as
    CausalSelfAttention.split_heads returns them. Introduced in notebooks/14_attention_kernels.ipynb.
    """
    _check_pools(k_pool, v_pool)
    check_tensor("slot_mapping", slot_mapping, (1,), INDEX_DTYPES)
    for name, new in (("k", k), ("v", v)):
        check_tensor(name, new, (4,), (k_pool.dtype,))
        if new.shape != (1, k_pool.size(2), slot_mapping.numel(), k_pool.size(3)):
            fail_value(name, new, f"shape (1, Hkv, N, D) = {(1, k_pool.size(2), slot_mapping.numel(), k_pool.size(3))}")
    _check_range("slot_mapping", slot_mapping, k_pool.size(0) * k_pool.size(1))
    store_kv(k_pool, v_pool, slot_mapping, k, v)


def store_kv(k_pool, v_pool, slot_mapping: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    """write_kv without its checks, for metadata the engine built itself (index_copy_ still refuses a slot
    outside the pool). Shapes as write_kv. Introduced in notebooks/14_attention_kernels.ipynb.
    """
    for pool, new in ((k_pool, k), (v_pool, v)):
        pool.view(-1, pool.size(2), pool.size(3)).index_copy_(0, slot_mapping, new[0].transpose(0, 1))  # (N, Hkv, D)


def _check_pools(k_pool, v_pool) -> None:
    check_tensor("k_pool", k_pool, (4,), FLOAT_DTYPES, "(num_blocks, block_size, Hkv, D)")
    check_tensor("v_pool", v_pool, (4,), (k_pool.dtype,), "(num_blocks, block_size, Hkv, D)")
    if 0 in k_pool.shape:
        fail_value("k_pool", k_pool, "a pool with at least one block, slot, K/V head and channel")
    if v_pool.shape != k_pool.shape or v_pool.device != k_pool.device:
        fail_value("v_pool", v_pool, f"k_pool's shape {tuple(k_pool.shape)} on {k_pool.device}")
    for name, pool in (("k_pool", k_pool), ("v_pool", v_pool)):
        if not pool.is_contiguous():
            fail_value(name, pool, "contiguous (a pool is allocated once, whole)")


def _check_range(name: str, index: torch.Tensor, high: int) -> None:
    """Every entry of `index` in 0 .. high - 1 (one reduction, one host sync)."""
    if index.numel():
        low, top = torch.aminmax(index)
        if low.item() < 0 or top.item() >= high:
            bad = index[(index < 0) | (index >= high)][0].item()
            raise ValueError(f"{name} contains {bad}: must hold only values in 0..{high - 1}")


def _check_call(q, k_pool, v_pool, block_tables, query_row, query_pos) -> None:
    """Shapes, dtypes and devices; index VALUES are checked by _check_indices (or by the C++ operator)."""
    check_tensor("q", q, (4,), FLOAT_DTYPES, "(1, H, N, D)")
    _check_pools(k_pool, v_pool)
    if q.size(0) != 1 or q.size(-1) != k_pool.size(3) or q.size(1) % k_pool.size(2):
        fail_value("q", q, f"(1, H, N, D) with D = {k_pool.size(3)} and H a multiple of the pool's Hkv = "
                   f"{k_pool.size(2)}")
    if q.dtype != k_pool.dtype:
        raise ArgumentTypeError(f"q has dtype {q.dtype} but the pools hold {k_pool.dtype}")
    check_tensor("block_tables", block_tables, (2,), INDEX_DTYPES, "(R, M)")
    for name, index in (("query_row", query_row), ("query_pos", query_pos)):
        check_tensor(name, index, (1,), INDEX_DTYPES, "(N,)")
        if index.numel() != q.size(2):
            fail_value(name, index, f"one entry per query (N = {q.size(2)})")
    for name, t in (("k_pool", k_pool), ("block_tables", block_tables), ("query_row", query_row),
                    ("query_pos", query_pos)):
        if t.device != q.device:
            fail_value(name, t, f"on q's device {q.device}")


def _check_indices(k_pool, block_tables, query_row, query_pos) -> None:
    """Every index in range before any is followed: block ids, table rows, positions a table row holds."""
    _check_range("block_tables", block_tables, k_pool.size(0))
    _check_range("query_row", query_row, block_tables.size(0))
    _check_range("query_pos", query_pos, block_tables.size(1) * k_pool.size(1))


def queries_by_row(query_row: torch.Tensor, query_pos: torch.Tensor, rows: int):
    """Place the N flattened queries on a (R, T) grid, T = most queries of one row.

    Returns col (N,) (query i sits at [query_row[i], col[i]]), T, and pos (R, T): each cell's position; an empty
    cell gets position 0, so it sees key 0 (a padding query, computed and dropped, never a NaN).
    Introduced in notebooks/14_attention_kernels.ipynb.
    """
    order = torch.argsort(query_row, stable=True)  # (N,)
    counts = torch.bincount(query_row, minlength=rows)  # (R,)
    first = torch.cumsum(counts, 0) - counts  # (R,)
    col = torch.empty_like(query_row)
    col[order] = torch.arange(len(order), device=query_row.device) - first[query_row[order]]
    t = int(counts.max())
    pos = torch.zeros(rows, t, dtype=query_pos.dtype, device=query_pos.device)
    pos[query_row, col] = query_pos
    return col, t, pos  # (N,), T, (R, T)


def _grid(q: torch.Tensor, query_row, col, rows: int, t: int) -> torch.Tensor:
    """(1, H, N, D) flattened queries -> (R, H, T, D) on the row grid, zeros in empty cells."""
    grid = q.new_zeros(rows, q.size(1), t, q.size(3))
    grid[query_row, :, col] = q[0].transpose(0, 1)  # (N, H, D) into their cells
    return grid


def paged_attention_gather(q, k_pool, v_pool, block_tables, query_row, query_pos, impl: str = "sdpa"):
    """The reference: gather every row's keys 0 .. S-1 through its table into a copy, then attend with a mask.

    Shapes: as paged_attention; the copy is (R, Hkv, S, D) for K and for V, S = max(query_pos) + 1.
    Introduced in notebooks/14_attention_kernels.ipynb.
    """
    (_, h, n, d), rows, bs = q.shape, block_tables.size(0), k_pool.size(1)
    col, t, pos = queries_by_row(query_row, query_pos, rows)
    key_pos = torch.arange(int(query_pos.max()) + 1, device=q.device)  # (S,)
    slots = block_tables[:, key_pos // bs] * bs + key_pos % bs  # (R, S)
    k, v = (pool.view(-1, pool.size(2), d)[slots].transpose(1, 2) for pool in (k_pool, v_pool))  # (R, Hkv, S, D)
    mask = (key_pos <= pos[..., None]).unsqueeze(1)  # (R, 1, T, S): key position <= query position
    out = attend(_grid(q, query_row, col, rows, t), k, v, mask, impl)  # (R, H, T, D)
    return out[query_row, :, col].transpose(0, 1).unsqueeze(0)  # (1, H, N, D)


def paged_attention_blockwise(q, k_pool, v_pool, block_tables, query_row, query_pos, tile_blocks: int = 1):
    """Online softmax over block columns: step j reads block table[:, j] of every row, never more at once.

    Column j is one block per row (tile_blocks columns per step), so the scores that exist at once are
    (R, H, T, tile_blocks * block_size). PyTorch cannot follow the table inside a matmul, so each step still copies
    its blocks (index_select); the C++ kernel does not. Shapes: as paged_attention.
    Introduced in notebooks/14_attention_kernels.ipynb.
    """
    (_, h, n, d), rows, bs, hkv = q.shape, block_tables.size(0), k_pool.size(1), k_pool.size(2)
    g, work = h // hkv, torch.float32 if q.dtype in (torch.float16, torch.bfloat16) else q.dtype
    col, t, pos = queries_by_row(query_row, query_pos, rows)
    # the g query heads of one K/V head share its blocks: (R, Hkv, g * T, D), row j * T + c = head j, cell c
    qg = _grid(q, query_row, col, rows, t).to(work).view(rows, hkv, g * t, d) / math.sqrt(d)
    posg = pos.repeat(1, g).view(rows, 1, g * t, 1)  # (R, 1, g * T, 1)
    state = empty_state((rows, hkv, g * t), d, work, q.device)
    for j in range(0, int(query_pos.max()) // bs + 1, tile_blocks):
        blocks = block_tables[:, j:j + tile_blocks]  # (R, c): this step's columns
        k, v = (pool[blocks].to(work).view(rows, -1, hkv, d).transpose(1, 2) for pool in (k_pool, v_pool))
        key_pos = j * bs + torch.arange(k.size(2), device=q.device)  # (c * bs,)
        scores = (qg @ k.transpose(-2, -1)).masked_fill(key_pos > posg, NEG_INF)  # (R, Hkv, g * T, c * bs)
        state = online_softmax_update(state, scores, v)
    out = finish(state).out.view(rows, h, t, d).to(q.dtype)  # (R, H, T, D)
    return out[query_row, :, col].transpose(0, 1).unsqueeze(0)  # (1, H, N, D)


def paged_attention(q: torch.Tensor, k_pool: torch.Tensor, v_pool: torch.Tensor, block_tables: torch.Tensor,
                    query_row: torch.Tensor, query_pos: torch.Tensor, impl: str = "auto") -> torch.Tensor:
    """softmax(q k^T / sqrt(D)) v for N flattened queries, each over its own sequence's keys in the paged pool.

    Shapes: q (1, H, N, D) (CausalSelfAttention.split_heads of token_ids (1, N)), k_pool and v_pool
    (num_blocks, block_size, Hkv, D) with H % Hkv == 0, block_tables (R, M), query_row and query_pos (N,) ->
    (1, H, N, D). impl: "auto" (the C++ kernel on the CPU when it builds, else "blockwise"), "cpp", "blockwise"
    or "gather". Every index is checked before any is followed. The new tokens' keys must already be written
    (write_kv). Introduced in notebooks/14_attention_kernels.ipynb.
    """
    check_choice("impl", impl, IMPLS)
    _check_call(q, k_pool, v_pool, block_tables, query_row, query_pos)
    if q.size(2) == 0:
        return q.new_empty(q.shape)
    op = load_paged_kernel() if q.device.type == "cpu" and q.dtype in CPP_DTYPES and impl in ("auto", "cpp") else None
    if impl == "auto":
        impl = "cpp" if op is not None else "blockwise"
    if impl == "cpp":
        if op is None:
            raise ValueError(f"impl='cpp' needs CPU tensors of {CPP_DTYPES} and a built kernel (q: {q.dtype} on "
                             f"{q.device}; kvgpt.paged_kernel.kernel_error() says why a build failed)")
        index = (block_tables, query_row, query_pos)
        if not all(t.dtype == torch.long and t.is_contiguous() for t in index):
            index = tuple(t.long().contiguous() for t in index)
        return op(q if q.stride(-1) == 1 else q.contiguous(), k_pool, v_pool, *index, q.size(-1) ** -0.5)
    _check_indices(k_pool, block_tables, query_row, query_pos)
    if impl == "gather":
        return paged_attention_gather(q, k_pool, v_pool, block_tables, query_row, query_pos)
    return paged_attention_blockwise(q, k_pool, v_pool, block_tables, query_row, query_pos)
