"""Attention over the paged pool in place (issue 23): every kernel equals a float64 per-query oracle and the
gather + SDPA reference, for random block sizes, tables with holes and shared blocks, ragged pasts, chunks, GQA;
the online softmax and its merge are exact; the C++ operator and its fallback agree, and the fallback really runs
when the operator cannot be built; bad indices are refused before any is followed; the is_causal pitfall.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from helpers import record_diff
from hypothesis import given
from hypothesis import strategies as st

from kvgpt import paged_kernel
from kvgpt.attention import attend
from kvgpt.flex_paged import flex_paged_attention, flex_unsupported_reason
from kvgpt.online_softmax import Partial, flash_decoding, merge_partials, tiled_attention
from kvgpt.paged_attention import (paged_attention, paged_attention_blockwise, paged_attention_gather, paged_metadata,
                                   write_kv)

TOL = 1e-5  # fp32: outputs are convex combinations of values ~N(0, 1)


def oracle(q, k_pool, v_pool, tables, rows, pos):
    """One query and one head at a time, in float64: softmax over keys 0 .. pos of the query's row. -> (1, H, N, D)"""
    _, h, n, d = q.shape
    bs, hkv = k_pool.shape[1], k_pool.shape[2]
    out = torch.zeros(1, h, n, d, dtype=torch.float64)
    for i in range(n):
        keys = torch.arange(int(pos[i]) + 1)
        slots = tables[int(rows[i]), keys // bs] * bs + keys % bs
        k, v = (p.reshape(-1, hkv, d)[slots].double() for p in (k_pool, v_pool))  # (S, Hkv, D)
        for head in range(h):
            kv_head = head // (h // hkv)
            weights = torch.softmax(k[:, kv_head] @ q[0, head, i].double() / math.sqrt(d), 0)
            out[0, head, i] = weights @ v[:, kv_head]
    return out


@st.composite
def paged_calls(draw, dtype=torch.float32):
    """A random step: rows with ragged pasts and new-token counts (decode rows and chunks), tables drawn from a
    larger pool (holes, in random order), sometimes a shared first block; unused blocks hold NaN and the unfilled
    slots of each row huge values, so a kernel that reads outside what a query may see fails loudly."""
    bs = draw(st.sampled_from([1, 2, 3, 4, 8, 16]))
    hkv, group, d = draw(st.integers(1, 3)), draw(st.integers(1, 3)), draw(st.sampled_from([4, 8, 32, 64]))
    rows = draw(st.integers(1, 4))
    past = draw(st.lists(st.integers(0, 40), min_size=rows, max_size=rows))
    new = draw(st.lists(st.one_of(st.just(1), st.integers(1, 9)), min_size=rows, max_size=rows))
    need = [-(-(p + n) // bs) for p, n in zip(past, new)]
    num_blocks = sum(need) + draw(st.integers(0, 6))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31)))
    order = torch.randperm(num_blocks, generator=g).tolist()
    starts = [sum(need[:r]) for r in range(rows)]
    tables = [order[s:s + n] for s, n in zip(starts, need)]
    k_pool = torch.full((num_blocks, bs, hkv, d), float("nan"), dtype=torch.float64)
    v_pool = k_pool.clone()
    for table, p, n in zip(tables, past, new):
        for j, block in enumerate(table):
            for pool in (k_pool, v_pool):
                pool[block] = torch.randn(bs, hkv, d, generator=g, dtype=torch.float64)
                filled = max(0, min(bs, p + n - j * bs))
                pool[block, filled:] = 1e4  # unfilled slots: never visible
    if rows > 1 and draw(st.booleans()) and past[0] >= bs and past[1] >= bs:
        tables[1][0] = tables[0][0]  # a shared prefix block (both rows read it)
    md = paged_metadata(past, new, tables, bs, num_blocks)
    q = torch.randn(1, hkv * group, len(md.query_row), d, generator=g, dtype=torch.float64)
    if draw(st.booleans()):  # flattened queries need not be grouped by row
        perm = torch.randperm(len(md.query_row), generator=g)
        q, md = q[:, :, perm], md._replace(query_row=md.query_row[perm], query_pos=md.query_pos[perm])
    return q.to(dtype), k_pool.to(dtype), v_pool.to(dtype), md


KERNELS = {
    "gather sdpa": lambda *a: paged_attention_gather(*a, impl="sdpa"),
    "gather manual": lambda *a: paged_attention_gather(*a, impl="manual"),
    "blockwise": paged_attention_blockwise,
    "blockwise, 3 blocks per tile": lambda *a: paged_attention_blockwise(*a, tile_blocks=3),
    "cpp": lambda *a: paged_attention(*a, impl="cpp"),
    "auto": lambda *a: paged_attention(*a, impl="auto"),
}
if flex_unsupported_reason(compiled=False) is None:  # eager flex: same math as the compiled kernel, no compile wait
    KERNELS["flex (eager)"] = lambda *a: flex_paged_attention(*a, compiled=False)


@pytest.fixture(scope="module")
def cpp_kernel():
    if paged_kernel.load_paged_kernel() is None:
        pytest.skip(f"the C++ kernel does not build here: {paged_kernel.kernel_error()}")


@pytest.mark.parametrize("kernel", sorted(KERNELS))
@given(paged_calls())
def test_every_kernel_matches_the_oracle_and_the_reference(cpp_kernel, kernel, call):
    q, k_pool, v_pool, md = call
    if kernel == "flex (eager)":  # eager flex computes every score of the pool, then masks: NaN blocks poison it
        k_pool, v_pool = k_pool.nan_to_num(), v_pool.nan_to_num()
    args = (q, k_pool, v_pool, md.block_tables, md.query_row, md.query_pos)
    out = KERNELS[kernel](*args)
    reference = paged_attention_gather(*args)
    assert out.shape == q.shape and torch.isfinite(out).all()
    diff = record_diff(f"paged attention {kernel} vs oracle", (out.double() - oracle(*args)).abs().max())
    assert diff <= TOL
    assert (out - reference).abs().max() <= TOL


@given(paged_calls(dtype=torch.bfloat16))
def test_cpp_kernel_in_bfloat16(cpp_kernel, call):
    q, k_pool, v_pool, md = call
    args = (q, k_pool, v_pool, md.block_tables, md.query_row, md.query_pos)
    out = paged_attention(*args, impl="cpp")
    assert out.dtype == torch.bfloat16
    assert (out.double() - oracle(*args)).abs().max() <= 2e-2  # bf16 keeps 8 bits of mantissa: output rounding


@given(paged_calls())
def test_cpp_kernel_and_blockwise_fallback_agree(cpp_kernel, call):
    q, k_pool, v_pool, md = call
    args = (q, k_pool, v_pool, md.block_tables, md.query_row, md.query_pos)
    diff = (paged_attention(*args, impl="cpp") - paged_attention(*args, impl="blockwise")).abs().max()
    assert record_diff("paged attention cpp vs blockwise", diff) <= TOL


def test_cpp_kernel_uses_its_threads(cpp_kernel):
    """Ragged rows and 1 vs 2 threads give the same numbers (work items are independent)."""
    q, k_pool, v_pool, md = _fixed_call()
    args = (q, k_pool, v_pool, md.block_tables, md.query_row, md.query_pos)
    threads = torch.get_num_threads()
    try:
        outs = []
        for n in (1, 2):
            torch.set_num_threads(n)
            outs.append(paged_attention(*args, impl="cpp"))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(outs[0], outs[1])


def _fixed_call(past=(5, 0, 40, 17), new=(1, 9, 1, 3), bs=4, hkv=2, group=2, d=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    need = [-(-(p + n) // bs) for p, n in zip(past, new)]
    num_blocks = sum(need) + 3
    order = torch.randperm(num_blocks, generator=g).tolist()
    tables = [order[sum(need[:r]):sum(need[:r + 1])] for r in range(len(need))]
    k_pool, v_pool = (torch.randn(num_blocks, bs, hkv, d, generator=g) for _ in range(2))
    md = paged_metadata(list(past), list(new), tables, bs, num_blocks)
    return torch.randn(1, hkv * group, sum(new), d, generator=g), k_pool, v_pool, md


# --- metadata and the write into the pool ---

def test_metadata_positions_rows_and_slots():
    md = paged_metadata([5, 0, 2], [1, 3, 2], [[7, 2], [4], [9]], block_size=4, num_blocks=10)
    assert md.query_row.tolist() == [0, 1, 1, 1, 2, 2]
    assert md.query_pos.tolist() == [5, 0, 1, 2, 2, 3]
    assert md.slot_mapping.tolist() == [2 * 4 + 1, 16, 17, 18, 38, 39]  # block * block_size + position % block_size
    assert md.block_tables.tolist() == [[7, 2], [4, 4], [9, 9]]  # padded with the row's first block


@pytest.mark.parametrize("past, new, tables, message", [
    ([5], [1], [[7]], "tables[0]"),  # 6 positions need 2 blocks of 4
    ([0], [0], [[1]], "num_new[0]"),
    ([-1], [1], [[1]], "past_lengths[0]"),
    ([0], [1], [[10]], "tables"),  # num_blocks = 10
    ([0], [1], [[1.5]], "tables"),
    ([0], None, [[1]], "num_new"),
    ([0, 1], [1], [[1]], "past_lengths"),
])
def test_metadata_refuses_what_the_kernel_could_not_follow(past, new, tables, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        paged_metadata(past, new, tables, block_size=4, num_blocks=10)


def test_write_kv_fills_exactly_the_new_slots():
    g = torch.Generator().manual_seed(0)
    k_pool, v_pool = torch.zeros(6, 4, 2, 8), torch.zeros(6, 4, 2, 8)
    md = paged_metadata([3, 0], [2, 1], [[5, 1], [2]], block_size=4, num_blocks=6)
    k, v = torch.randn(1, 2, 3, 8, generator=g), torch.randn(1, 2, 3, 8, generator=g)
    write_kv(k_pool, v_pool, md.slot_mapping, k, v)
    assert torch.equal(k_pool[5, 3], k[0, :, 0]) and torch.equal(k_pool[1, 0], k[0, :, 1])
    assert torch.equal(v_pool[2, 0], v[0, :, 2])
    assert int((k_pool != 0).any(-1).any(-1).sum()) == 3  # nothing else was touched
    with pytest.raises(ValueError, match="slot_mapping"):
        write_kv(k_pool, v_pool, torch.tensor([0, 1, 24]), k, v)


# --- refusals before any index is followed ---

def _valid(dtype=torch.float32):
    q, k_pool, v_pool, md = _fixed_call()
    return dict(q=q.to(dtype), k_pool=k_pool.to(dtype), v_pool=v_pool.to(dtype), block_tables=md.block_tables,
                query_row=md.query_row, query_pos=md.query_pos)


def _bad(name, change):
    args = _valid()
    args[name] = change(args[name])
    return args


BAD = [
    ("block_tables", lambda t: t.index_fill(1, torch.tensor([0]), 10**6)),
    ("block_tables", lambda t: t.index_fill(1, torch.tensor([0]), -1)),
    ("block_tables", lambda t: t.to(torch.int8)),
    ("block_tables", lambda t: t[0]),
    ("query_row", lambda t: t.index_fill(0, torch.tensor([1]), 4)),  # R = 4 rows
    ("query_row", lambda t: t[:-1]),
    ("query_pos", lambda t: t.index_fill(0, torch.tensor([0]), 10**6)),
    ("query_pos", lambda t: t.index_fill(0, torch.tensor([0]), -1)),
    ("query_pos", lambda t: t.float()),
    ("q", lambda t: t[0]),
    ("q", lambda t: t.double()),
    ("q", lambda t: t[:, :3]),  # 3 heads over 2 K/V heads
    ("q", lambda t: t[..., :16]),  # D = 16, pool D = 32
    ("k_pool", lambda t: t.transpose(0, 1).contiguous().transpose(0, 1)),  # not contiguous
    ("v_pool", lambda t: t[:-1]),
]


@pytest.mark.parametrize("impl", ["cpp", "blockwise", "gather"])
@pytest.mark.parametrize("name, change", BAD)
def test_bad_inputs_are_refused_naming_the_argument(cpp_kernel, impl, name, change):
    with pytest.raises(ValueError, match=name):
        paged_attention(**_bad(name, change), impl=impl)


def test_the_cpp_operator_checks_indices_itself(cpp_kernel):
    """Called directly (no Python checks), the operator still refuses an index before reading through it."""
    args = _valid()
    op = torch.ops.kvgpt.paged_attention
    q = args["q"]
    tables = args["block_tables"].clone()
    tables[-1, -1] = 10**9
    pools = (q, args["k_pool"], args["v_pool"])
    for bad, name in (((tables, args["query_row"], args["query_pos"]), "block_tables"),
                      ((args["block_tables"], args["query_row"] + 4, args["query_pos"]), "query_row"),
                      ((args["block_tables"], args["query_row"], args["query_pos"] * 0 + 10**6), "query_pos")):
        with pytest.raises(ValueError, match=name):
            op(*pools, *bad, 1.0)


def test_empty_call_and_unknown_impl():
    args = _valid()
    empty = dict(args, q=args["q"][:, :, :0], query_row=args["query_row"][:0], query_pos=args["query_pos"][:0])
    assert paged_attention(**empty).shape == (1, 4, 0, 32)
    with pytest.raises(ValueError, match="impl"):
        paged_attention(**args, impl="flash")


# --- the fallback ---

def test_fallback_runs_with_one_warning_when_the_operator_cannot_be_built(monkeypatch):
    def no_compiler(flags):
        raise OSError("no C++ compiler (simulated)")

    monkeypatch.setattr(paged_kernel, "_registered", lambda: None)
    monkeypatch.setattr(paged_kernel, "_build", no_compiler)
    monkeypatch.setattr(paged_kernel, "_STATE", {"tried": False, "op": None, "error": None})
    args = _valid()
    with pytest.warns(RuntimeWarning, match="blockwise") as record:
        out = paged_attention(**args)
    assert len(record) == 1
    assert paged_kernel.kernel_in_use() == "blockwise"
    assert "simulated" in paged_kernel.kernel_error()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a second call warns no more
        assert torch.equal(paged_attention(**args), out)
    assert (out - paged_attention_gather(*args.values())).abs().max() <= TOL
    with pytest.raises(ValueError, match="cpp"):
        paged_attention(**args, impl="cpp")


def test_kernel_in_use_reports_the_cpp_operator(cpp_kernel):
    assert paged_kernel.kernel_in_use() == "cpp" and paged_kernel.kernel_error() is None


def test_cpp_source_shows_definitions_from_the_compiled_file():
    assert paged_kernel.cpp_source("decode_item").count("void decode_item(") == 1
    assert paged_kernel.cpp_source("TORCH_LIBRARY").startswith("TORCH_LIBRARY(kvgpt, m)")
    with pytest.raises(ValueError, match="name"):
        paged_kernel.cpp_source("no_such_function")


# --- the online softmax ---

@st.composite
def attention_inputs(draw):
    b, hkv, group = draw(st.integers(1, 2)), draw(st.integers(1, 2)), draw(st.integers(1, 2))
    t = draw(st.integers(1, 5))
    s, d = t + draw(st.integers(0, 30)), draw(st.sampled_from([4, 16]))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31)))
    q = torch.randn(b, hkv * group, t, d, generator=g) * draw(st.sampled_from([1.0, 30.0]))  # 30: large logits
    k, v = torch.randn(b, hkv, s, d, generator=g), torch.randn(b, hkv, s, d, generator=g)
    mask = None
    if draw(st.booleans()):  # ragged: each query row sees a random nonempty prefix
        ends = torch.randint(1, s + 1, (b, 1, t, 1), generator=g)
        mask = torch.arange(s) < ends
    return q, k, v, mask


@given(attention_inputs(), st.integers(1, 40))
def test_tiled_online_softmax_is_exact(inputs, tile):
    q, k, v, mask = inputs
    out = tiled_attention(q, k, v, tile=tile, mask=mask)
    reference = attend(q, k, v, mask, "manual")
    assert record_diff("online softmax vs softmax", (out.out - reference).abs().max()) <= TOL
    scores = (q @ torch.repeat_interleave(k, q.size(1) // k.size(1), 1).transpose(-2, -1)) / math.sqrt(q.size(-1))
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    assert torch.allclose(out.lse, torch.logsumexp(scores, -1), atol=1e-4, rtol=1e-5)


@given(attention_inputs(), st.integers(1, 12))
def test_flash_decoding_merge_is_exact(inputs, splits):
    q, k, v, mask = inputs
    out = flash_decoding(q, k, v, splits, mask)
    assert (out.out - attend(q, k, v, mask, "manual")).abs().max() <= TOL


def test_merge_of_parts_that_see_no_key():
    """A part with no visible key (lse = -inf) contributes nothing; two such parts merge to lse = -inf, no NaN."""
    out = torch.ones(1, 1, 2, 3)
    empty = Partial(torch.zeros(1, 1, 2, 3), torch.full((1, 1, 2), float("-inf")))
    full = Partial(out, torch.zeros(1, 1, 2))
    assert torch.equal(merge_partials([empty, full]).out, out)
    both = merge_partials([empty, empty])
    assert torch.isneginf(both.lse).all() and torch.equal(both.out, torch.zeros(1, 1, 2, 3))


def test_naive_softmax_overflows_where_the_running_max_does_not():
    scores = torch.tensor([[100.0, 90.0, 80.0]])  # exp(100) overflows fp32
    naive = torch.exp(scores) / torch.exp(scores).sum(-1, keepdim=True)
    assert torch.isnan(naive).any()
    q = torch.tensor([[[[10.0]]]])
    k = torch.tensor([[[[10.0], [9.0], [8.0]]]])  # q.k = 100, 90, 80
    out = tiled_attention(q, k, torch.eye(3).view(1, 1, 3, 3), tile=1)
    assert torch.allclose(out.out[0, 0, 0], torch.softmax(scores[0], 0), atol=1e-7)


# --- the is_causal pitfall (pytorch/pytorch#144858) ---

def test_sdpa_is_causal_with_one_query_attends_to_key_0_only():
    """Documents the pitfall: SDPA's causal mask is top-left aligned, so a 1-token query over S > 1 keys sees
    key 0 alone, not the whole past. (If torch changes this, the guard below still holds.)"""
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 1, n, 8, generator=g) for n in (1, 5, 5))
    wrong = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    assert torch.allclose(wrong, v[:, :, :1], atol=1e-6)  # key 0's value, exactly
    right = F.scaled_dot_product_attention(q, k, v)
    assert not torch.allclose(wrong, right, atol=1e-3)


def test_the_package_never_asks_sdpa_for_a_causal_mask_it_cannot_mean(monkeypatch):
    """Spy on every SDPA call kvgpt makes while prefilling, decoding and chunking (static, dynamic and paged
    caches): is_causal=True only ever comes with as many queries as keys."""
    from helpers import cached_model

    from kvgpt import KVCacheManager
    from kvgpt.serving import PagedKVCache

    calls = []
    real = F.scaled_dot_product_attention

    def spy(q, k, v, *args, is_causal=False, **kwargs):
        calls.append((q.size(-2), k.size(-2), is_causal))
        return real(q, k, v, *args, is_causal=is_causal, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    model = cached_model(attn_impl="sdpa")
    ids = torch.tensor([[1, 2, 3, 4, 5, 6]])
    with torch.inference_mode():
        for kind in ("static", "dynamic"):
            manager = KVCacheManager(model.config, 1, kind)
            model.prefill(ids[:, :4], manager)  # T == S: the triangle
            model.prefill(ids[:, 4:], manager)  # a chunk after a past
            model.prefill(ids[:, :1], manager)  # one token after a past
        cache = PagedKVCache(model.config, num_blocks=8, block_size=4)
        cache.add_sequence(0)
        cache.reserve(0, 6)
        model.prefill(ids[:, :5], cache.batch([0], [5]))
        cache.commit(0, 5, ids[0].tolist())
        model.prefill(ids[:, 5:], cache.batch([0], [1]))
    assert any(causal for _, _, causal in calls) and any(t == 1 for t, _, _ in calls)
    assert all(t == s for t, s, causal in calls if causal), calls


# --- the benchmark (numbers, never timings) ---

@pytest.mark.parametrize("chunk, ragged", [(0, False), (8, True)])
def test_benchmark_variants_agree_and_bytes_add_up(cpp_kernel, chunk, ragged):
    from kvgpt.benchmark.attention_kernels import Case, bytes_moved, make_inputs, measure_case

    case = Case("embedded-gqa", rows=3, past=20, chunk=chunk, ragged=ragged)
    rows = measure_case(case, threads=1, variants=("static", "gather", "blockwise", "cpp"), repeats=1, min_s=0.0)
    assert {r["variant"] for r in rows} == {"static", "gather", "blockwise", "cpp"}
    assert all(r["max_abs_diff"] <= TOL for r in rows if r["variant"] != "static")
    inputs = make_inputs(case)
    slot = 2 * 2 * 32 * 4  # K and V, 2 K/V heads, D = 32, fp32
    visible = int((inputs["md"].query_pos + 1).sum())
    assert bytes_moved("cpp", inputs) == visible * slot
    assert bytes_moved("gather", inputs) == 3 * 3 * int(inputs["md"].query_pos.max() + 1) * slot
