"""Attention kernels side by side: paged attention variants against a contiguous static-cache SDPA of the same rows.

One case = one layer's attention call of a serving step: `rows` sequences with `past` cached tokens each (or
ragged pasts), decode only (one new token per row) or mixed (the last row brings a `chunk`-token prompt chunk).
Every variant computes the same numbers (checked against the gather reference in the same run); timings are the
minimum over interleaved repeats (variants alternate, so a burst of load from elsewhere hits them all alike).
Bytes moved are counted from the algorithm (K and V, reads + writes of pool, copies and caches), not measured.
Introduced in notebooks/14_attention_kernels.ipynb.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from ..attention import SDPA_GQA
from ..flex_paged import flex_paged_attention, flex_unsupported_reason, paged_block_mask
from ..paged_attention import paged_attention, paged_metadata

KERNEL_SHAPES = {"embedded": (4, 32, 4), "embedded-gqa": (4, 32, 2), "gpt2-small": (12, 64, 12)}  # (H, D, Hkv)
VARIANTS = ("static", "gather", "blockwise", "cpp", "flex")


@dataclass(frozen=True)
class Case:
    """One attention call to time. past: every row's cached tokens; ragged: pasts drawn from 16 .. past."""

    model: str
    rows: int
    past: int
    chunk: int = 0  # 0: decode only; else the last row appends `chunk` tokens
    ragged: bool = False
    block_size: int = 16


def case_grid(quick: bool = False) -> list[Case]:
    """The measured grid: every model, 1..32 rows, pasts 16..1000, decode and mixed (a 128-token chunk)."""
    rows, pasts = ((1, 16), (128, 1000)) if quick else ((1, 4, 16, 32), (16, 128, 1000))
    cases = [Case(m, r, p, c) for m in KERNEL_SHAPES for r in rows for p in pasts for c in (0, 128)]
    return cases + [Case(m, r, 1000, c, ragged=True) for m in KERNEL_SHAPES for r in (16, 32) if not quick for c in (0, 128)]


def make_inputs(case: Case, seed: int = 0) -> dict:
    """Random pools, scattered block tables and queries for `case`, plus the contiguous caches of the same rows."""
    h, d, hkv = KERNEL_SHAPES[case.model]
    g = torch.Generator().manual_seed(seed)
    pasts = (torch.randint(16, case.past + 1, (case.rows,), generator=g).tolist() if case.ragged
             else [case.past] * case.rows)
    new = [1] * case.rows
    if case.chunk:
        new[-1] = case.chunk
    bs = case.block_size
    need = [-(-(p + n) // bs) for p, n in zip(pasts, new)]
    num_blocks = sum(need) + case.rows  # a little slack, like a pool that is not full
    order = torch.randperm(num_blocks, generator=g).tolist()  # blocks scattered over the pool, as after a while
    tables = [order[sum(need[:r]):sum(need[:r + 1])] for r in range(case.rows)]
    md = paged_metadata(pasts, new, tables, bs, num_blocks)
    k_pool, v_pool = (torch.randn(num_blocks, bs, hkv, d, generator=g) for _ in range(2))
    q = torch.randn(1, h, len(md.query_row), d, generator=g)
    return {"case": case, "q": q, "k_pool": k_pool, "v_pool": v_pool, "md": md, "pasts": pasts, "new": new,
            "static": _static_groups(pasts, new, h, d, hkv, g)}


def _static_groups(pasts, new, h, d, hkv, g) -> list[tuple]:
    """Contiguous caches of the same rows: the decode rows as one batch (right-padded, masked if ragged),
    the chunk row alone (its queries causal after its past). -> [(q, k, v, mask)]."""
    groups = []
    decode = [p for p, n in zip(pasts, new) if n == 1]
    if decode:
        s = max(decode) + 1
        mask = None if len(set(decode)) == 1 else (torch.arange(s) <= torch.tensor(decode)[:, None]).view(-1, 1, 1, s)
        groups.append((torch.randn(len(decode), h, 1, d, generator=g), torch.randn(len(decode), hkv, s, d, generator=g),
                       torch.randn(len(decode), hkv, s, d, generator=g), mask))
    for p, n in zip(pasts, new):
        if n > 1:
            mask = torch.arange(p + n) <= torch.arange(p, p + n)[:, None]  # (T, S)
            groups.append((torch.randn(1, h, n, d, generator=g), torch.randn(1, hkv, p + n, d, generator=g),
                           torch.randn(1, hkv, p + n, d, generator=g), mask))
    return groups


def static_attention(groups) -> list[torch.Tensor]:
    """SDPA over contiguous caches, group by group (what a static-cache engine computes for these rows)."""
    out = []
    for q, k, v, mask in groups:
        if q.size(1) != k.size(1) and not SDPA_GQA:
            k, v = (x.repeat_interleave(q.size(1) // k.size(1), 1) for x in (k, v))
        gqa = {"enable_gqa": True} if q.size(1) != k.size(1) and SDPA_GQA else {}
        out.append(F.scaled_dot_product_attention(q, k, v, attn_mask=mask, **gqa))
    return out


def variant_call(name: str, inputs: dict):
    """A zero-argument function that runs variant `name` on `inputs`."""
    if name == "static":
        return lambda: static_attention(inputs["static"])
    md = inputs["md"]
    args = (inputs["q"], inputs["k_pool"], inputs["v_pool"], md.block_tables, md.query_row, md.query_pos)
    if name == "flex":  # the block mask is built once per step and shared by the layers: timed apart (mask_us)
        mask = flex_block_mask(inputs)
        return lambda: flex_paged_attention(*args, block_mask=mask)
    return lambda: paged_attention(*args, impl=name)


def flex_block_mask(inputs: dict):
    """The step's BlockMask for flex_paged_attention (what one step builds once for all its layers)."""
    md, pool = inputs["md"], inputs["k_pool"]
    return paged_block_mask(md.block_tables, md.query_row, md.query_pos, pool.size(1), pool.size(0))


def bytes_moved(name: str, inputs: dict) -> int:
    """K and V bytes a variant reads and writes for one call (counted from the algorithm).

    static: each row's contiguous cache once, padded to its group's longest row; gather: the (R, S) copy is read
    from the pool, written, and read again by SDPA (S = the longest row); blockwise: the same three passes, one
    block column at a time; cpp: each query reads the keys it may see, where they sit (a chunk's queries re-read
    their row's keys, from the CPU caches after the first); flex: each row's table blocks once per query block.
    """
    pool = inputs["k_pool"]
    slot = 2 * pool.size(2) * pool.size(3) * pool.element_size()  # K and V of one token, every K/V head
    pos, bs = inputs["md"].query_pos, pool.size(1)
    rows, s = len(inputs["pasts"]), int(pos.max()) + 1
    if name == "static":
        return sum(q.size(0) * k.size(2) for q, k, _, _ in inputs["static"]) * slot
    if name == "gather":
        return 3 * rows * s * slot
    if name == "blockwise":
        return 3 * rows * (-(-s // bs) * bs) * slot
    if name == "cpp":
        return int((pos + 1).sum()) * slot
    ends = [p + n for p, n in zip(inputs["pasts"], inputs["new"])]
    return sum(-(-e // bs) * bs for e in ends) * slot  # flex: one query block per row


def _time(fn, min_s: float) -> float:
    """Seconds per call: as many calls as fill min_s (at least one)."""
    calls, start = 0, time.perf_counter()
    while True:
        fn()
        calls += 1
        elapsed = time.perf_counter() - start
        if elapsed >= min_s:
            return elapsed / calls


def measure_case(case: Case, threads: int, variants=VARIANTS, repeats: int = 5, min_s: float = 0.02) -> list[dict]:
    """Time every variant on one case: warm-up (flex: its compile time), then `repeats` interleaved rounds."""
    torch.set_num_threads(threads)
    with torch.inference_mode():  # warm-up and timing alike (a compiled function is specialised on grad mode)
        return _measure(case, threads, variants, repeats, min_s)


def _measure(case: Case, threads: int, variants, repeats: int, min_s: float) -> list[dict]:
    inputs = make_inputs(case)
    reference = variant_call("gather", inputs)()
    calls, compile_s, diffs, errors = {}, {}, {}, {}
    for name in variants:
        if name == "flex" and flex_unsupported_reason() is not None:
            continue
        call, start = variant_call(name, inputs), time.perf_counter()
        try:
            out = call()
        except Exception as e:  # noqa: BLE001 -- a compiler refusing a shape is a result to report, not a crash
            errors[name] = f"{type(e).__name__}: {' '.join(str(e).split())[:200]}"
            continue
        calls[name], compile_s[name] = call, time.perf_counter() - start
        diffs[name] = float("nan") if name == "static" else float((out - reference).abs().max())
    best = {name: float("inf") for name in calls}
    mask_s = {"flex": _time(lambda: flex_block_mask(inputs), min_s)} if "flex" in calls else {}
    for r in range(repeats):
        names = list(calls)
        for name in names[r % len(names):] + names[:r % len(names)]:  # a different variant goes first each round
            best[name] = min(best[name], _time(calls[name], min_s))
    h, d, hkv = KERNEL_SHAPES[case.model]
    return [{**asdict(case), "heads": h, "head_dim": d, "kv_heads": hkv, "threads": threads, "variant": name,
             "us_per_call": best[name] * 1e6, "x_static": best[name] / best["static"] if "static" in best else None,
             "bytes_moved": bytes_moved(name, inputs), "max_abs_diff": diffs[name],
             "first_call_s": compile_s[name], "mask_us": mask_s[name] * 1e6 if name in mask_s else None,
             "error": ""} for name in calls] + [
        {**asdict(case), "heads": h, "head_dim": d, "kv_heads": hkv, "threads": threads, "variant": name,
         "error": error} for name, error in errors.items()]
