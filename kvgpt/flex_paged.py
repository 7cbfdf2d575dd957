"""FlexAttention over the paged pool: the same paged attention, written as a mask over one long key sequence.

The whole pool is the key sequence (1, Hkv, num_blocks * block_size, D), read in place. A BlockMask lists, for
each row, the pool blocks its table holds (so the kernel skips every other block), and mask_mod hides, inside
those blocks, the slots a query may not see: slot s is visible to a query of row r at position p iff s's block
sits at index j of r's table and j * block_size + s % block_size <= p. Eager flex_attention materialises the
scores (correct, slow); torch.compile generates a fused kernel, compiled once per shape. Compiled flex on the
CPU needs x86 with AVX2 and refuses macOS (torch/_inductor/kernel/flex/flex_cpu.py), plus a C++ compiler.
Introduced in notebooks/14_attention_kernels.ipynb.
"""

from __future__ import annotations

import functools
import sys
import types
import warnings

import torch

from .paged_attention import _grid, queries_by_row


def flex_unsupported_reason(compiled: bool = True) -> str | None:
    """Why FlexAttention cannot run here (None: it can). Eager flex needs torch >= 2.5; compiled flex on the
    CPU also needs x86 with AVX2 and not macOS."""
    try:
        from torch.nn.attention.flex_attention import BlockMask, flex_attention  # noqa: F401
    except ImportError:
        return f"torch {torch.__version__} has no FlexAttention (2.5 or newer)"
    if compiled and sys.platform == "darwin":
        return "compiled FlexAttention on the CPU refuses macOS"
    if compiled and torch.backends.cpu.get_cpu_capability() not in ("AVX2", "AVX512", "AVX512_BF16", "AMX"):
        return f"compiled FlexAttention on the CPU needs AVX2 (this CPU: {torch.backends.cpu.get_cpu_capability()})"
    return None


def paged_block_mask(block_tables: torch.Tensor, query_row: torch.Tensor, query_pos: torch.Tensor, block_size: int,
                     num_blocks: int):
    """The BlockMask of one step, built directly from the block tables (no dense mask is ever evaluated).

    Row r's queries (its cells of the (R, T) query grid) read pool blocks block_tables[r, :n_r], n_r = the blocks
    holding positions 0 .. its last query's. Blocks every query of the row sees whole are "full" (no mask_mod
    call); the rest are "partial", where mask_mod compares the slot's position in the row with the query's.
    Shapes: block_tables (R, M), query_row and query_pos (N,) -> BlockMask for (R, 1, T, num_blocks * block_size).
    Introduced in notebooks/14_attention_kernels.ipynb.
    """
    from torch.nn.attention.flex_attention import BlockMask

    rows, width = block_tables.shape
    _, t, pos = queries_by_row(query_row, query_pos, rows)  # (R, T) each cell's position
    last = pos.amax(dim=1)  # (R,)
    first = torch.full_like(last, 2**62).scatter_reduce(0, query_row, query_pos, "amin")  # (R,) real queries only
    used, full = last // block_size + 1, (first + 1) // block_size  # blocks read; blocks seen whole by every query
    index = torch.arange(width, device=pos.device).expand(rows, width)  # (R, M): index in the row's table
    live = index < used[:, None]
    logical = torch.full((rows, num_blocks), -1, dtype=torch.long, device=pos.device)  # pool block -> its index
    logical[torch.nonzero(live)[:, 0], block_tables[live].long()] = index[live]

    def mask_mod(b, h, q_idx, kv_idx):
        j = logical[b, kv_idx // block_size]
        return (j >= 0) & (j * block_size + kv_idx % block_size <= pos[b, q_idx])

    def indices(start, count):  # (R, 1, 1, num_blocks) int32: table entries start .. start + count - 1 of each row
        out = torch.zeros(rows, 1, 1, num_blocks, dtype=torch.int32, device=pos.device)
        take = (index + start[:, None]).clamp(max=width - 1)
        out[:, 0, 0, :width] = torch.where(index < count[:, None], block_tables.gather(1, take), 0).int()
        return count.int().view(rows, 1, 1), out

    partial, full_blocks = indices(full, used - full), indices(torch.zeros_like(full), full)
    return BlockMask.from_kv_blocks(*partial, *full_blocks, BLOCK_SIZE=(t, block_size), mask_mod=mask_mod,
                                    seq_lengths=(t, num_blocks * block_size))


def _flex(q, k, v, block_mask, enable_gqa):
    from torch.nn.attention.flex_attention import flex_attention

    return flex_attention(q, k, v, block_mask=block_mask, enable_gqa=enable_gqa)


@functools.lru_cache(maxsize=64)
def _compiled_flex(key: tuple):
    """One compiled function per shape `key`, each with its own code object: dynamo's per-function recompile
    limit (8) would otherwise send the ninth shape back to eager flex silently (as kvgpt/compiled.py does)."""
    fresh = types.FunctionType(_flex.__code__.replace(), _flex.__globals__, "_flex")
    return torch.compile(fresh, dynamic=False, fullgraph=True)


def flex_paged_attention(q, k_pool, v_pool, block_tables, query_row, query_pos, compiled: bool = True,
                         block_mask=None):
    """paged_attention through FlexAttention: same arguments and shapes, (1, H, N, D) out.

    block_mask: paged_block_mask's result for this step, built once and shared by every layer (None: build it).
    Introduced in notebooks/14_attention_kernels.ipynb.
    """
    (_, h, n, d), rows, (nb, bs, hkv, _) = q.shape, block_tables.size(0), k_pool.shape
    col, t, _ = queries_by_row(query_row, query_pos, rows)
    mask = paged_block_mask(block_tables, query_row, query_pos, bs, nb) if block_mask is None else block_mask
    k, v = (pool.view(1, nb * bs, hkv, d).transpose(1, 2) for pool in (k_pool, v_pool))  # (1, Hkv, nb * bs, D)
    grid = _grid(q, query_row, col, rows, t)  # (R, H, T, D)
    key = (tuple(grid.shape), tuple(k.shape), grid.dtype, tuple(mask.kv_indices.shape),
           torch.is_inference_mode_enabled())
    run = _compiled_flex(key) if compiled else _flex
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*unfused implementation.*")  # eager flex says it is slow
        out = run(grid, k, v, mask, hkv != h)  # (R, H, T, D)
    return out[query_row, :, col].transpose(0, 1).unsqueeze(0)  # (1, H, N, D)
