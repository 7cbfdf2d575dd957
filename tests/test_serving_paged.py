"""PagedKVCache: the unchanged model forward over block pools gives the static cache's logits, writes only real
tokens into the slots its block tables name, never writes a shared block in place, and fails loudly."""

import pytest
import torch
from helpers import assert_close_logits, cached_model, snapshot
from hypothesis import given, settings
from hypothesis import strategies as st

from kvgpt import KVCacheManager
from kvgpt.serving import NoFreeBlocksError, PagedKVCache

SENTINEL = 7.0  # what an untouched pool slot holds in these tests


def _paged_call(model, cache, rows, kernel="auto"):
    """One flat model call over the paged cache: rows = [(seq_id, token ids to append)]. -> [(n_b, V) per row]."""
    for s, toks in rows:
        cache.reserve(s, cache.lengths[s] + len(toks))
    ids = torch.tensor([[t for _, toks in rows for t in toks]])  # (1, N): each row's new tokens in turn, no padding
    batch = cache.batch([s for s, _ in rows], [len(toks) for _, toks in rows], kernel)
    with torch.inference_mode():
        logits = model.prefill(ids, batch)[0]  # (N, V): the same forward Part I uses
    return list(logits.split([len(toks) for _, toks in rows]))


def _static_logits(model, chunks):
    """The reference: Part I's static cache, the same chunks appended in order. -> [(n, V) per chunk]."""
    mgr = KVCacheManager(model.config, 1, "static")
    with torch.inference_mode():
        return [model.prefill(torch.tensor([c]), mgr)[0] for c in chunks]


@st.composite
def schedules(draw):
    """Sequences (token lists) and a random interleaving of chunks: which rows each call carries, how many tokens."""
    block_size = draw(st.integers(1, 8))
    seqs = [draw(st.lists(st.integers(0, 66), min_size=1, max_size=24)) for _ in range(draw(st.integers(1, 4)))]
    done, calls = [0] * len(seqs), []
    while any(d < len(s) for d, s in zip(done, seqs)):
        open_rows = [i for i, s in enumerate(seqs) if done[i] < len(s)]
        chosen = draw(st.lists(st.sampled_from(open_rows), min_size=1, unique=True))
        call = []
        for i in chosen:
            n = draw(st.integers(1, len(seqs[i]) - done[i]))
            call.append((i, seqs[i][done[i] : done[i] + n]))
            done[i] += n
        calls.append(call)
    return block_size, seqs, calls


@given(schedules(), st.sampled_from(["sdpa", "manual"]), st.sampled_from(["auto", "cpp", "blockwise", "gather"]),
       st.sampled_from([None, 2, 1]))
def test_paged_logits_equal_static_cache_logits(schedule, impl, kernel, kv_heads):
    """Every attention kernel reading the pool in place, every call mixing decode rows and chunks, GQA too."""
    block_size, seqs, calls = schedule
    model = cached_model(attn_impl=impl, n_kv_heads=kv_heads)
    blocks = sum(-(-len(s) // block_size) for s in seqs)
    cache = PagedKVCache(model.config, blocks + 2, block_size)
    for i, s in enumerate(seqs):
        cache.add_sequence(i)
    got = {i: [] for i in range(len(seqs))}
    for call in calls:
        logits = _paged_call(model, cache, call, kernel)
        for b, (i, toks) in enumerate(call):
            got[i].append(logits[b])
            cache.commit(i, len(toks), seqs[i])
    for i, s in enumerate(seqs):
        chunks = [toks for call in calls for j, toks in call if j == i]
        want = torch.cat(_static_logits(model, chunks))
        assert_close_logits(torch.cat(got[i]), want, "paged vs static logits")


@pytest.mark.parametrize("impl", ["sdpa", "manual"])
def test_block_boundary_crossed_mid_prefill_and_mid_decode(impl):
    model = cached_model(attn_impl=impl)
    cache = PagedKVCache(model.config, 8, block_size=4)
    tokens = [3, 1, 4, 1, 5, 9, 2, 6, 5, 3]
    cache.add_sequence(0)
    cache.add_sequence(1)
    calls = [[(0, tokens[:6]), (1, tokens[:2])],  # row 0's prefill crosses slot 4 (block 0 -> block 1)
             [(0, tokens[6:7]), (1, tokens[2:5])],  # row 1's chunk crosses the boundary beside a decode row
             [(0, tokens[7:8]), (1, tokens[5:6])], [(0, tokens[8:9])]]  # row 0 decodes into block 2 at slot 8
    got = {0: [], 1: []}
    for call in calls:
        logits = _paged_call(model, cache, call)
        for b, (i, toks) in enumerate(call):
            got[i].append(logits[b])
            cache.commit(i, len(toks), tokens)
    assert len(cache.tables[0]) == 3 and cache.lengths == {0: 9, 1: 6}
    for i in (0, 1):
        want = torch.cat(_static_logits(model, [toks for call in calls for j, toks in call if j == i]))
        assert_close_logits(torch.cat(got[i]), want)


@given(schedules())
def test_only_real_tokens_are_written_and_only_where_the_table_says(schedule):
    block_size, seqs, calls = schedule
    model = cached_model()
    cache = PagedKVCache(model.config, sum(-(-len(s) // block_size) for s in seqs) + 3, block_size)
    for pool in cache.k_pools + cache.v_pools:
        pool.fill_(SENTINEL)
    for i in range(len(seqs)):
        cache.add_sequence(i)
    for call in calls:
        _paged_call(model, cache, call)
        for i, toks in call:
            cache.commit(i, len(toks), seqs[i])
    written = torch.zeros(cache.allocator.num_blocks * block_size, dtype=torch.bool)
    for i, table in cache.tables.items():
        for pos in range(cache.lengths[i]):
            written[table[pos // block_size] * block_size + pos % block_size] = True
    for pool in cache.k_pools + cache.v_pools:
        changed = (pool != SENTINEL).any(-1).any(-1).flatten()  # (num_blocks * block_size,)
        assert torch.equal(changed, written)  # padding never reached the pool; nothing outside the tables did


def test_shared_block_is_copied_on_write_and_the_original_stays_intact():
    model = cached_model()
    cache = PagedKVCache(model.config, 6, block_size=4)
    prompt, a, b = [5, 6, 7, 8, 9, 10], [11, 12], [13, 14]
    cache.add_sequence(0)
    _paged_call(model, cache, [(0, prompt)])
    cache.commit(0, len(prompt), prompt)
    cache.fork_sequence(0, 1)  # both continuations share block 1, which is only half full
    shared = cache.tables[0][1]
    before = [pool[shared].clone() for pool in cache.k_pools]
    got_b = _paged_call(model, cache, [(1, b)])[0]
    assert cache.tables[1][1] != shared and cache.tables[1][0] == cache.tables[0][0]  # copied, prefix still shared
    assert all(torch.equal(pool[shared], old) for pool, old in zip(cache.k_pools, before))
    got_a = _paged_call(model, cache, [(0, a)])[0]
    assert_close_logits(got_a, _static_logits(model, [prompt, a])[1])
    assert_close_logits(got_b, _static_logits(model, [prompt, b])[1])


def test_block_freed_while_in_use_is_caught():
    model = cached_model()
    cache = PagedKVCache(model.config, 4, block_size=4)
    cache.add_sequence(0)
    _paged_call(model, cache, [(0, [1, 2, 3])])
    cache.commit(0, 3, [1, 2, 3])
    cache.allocator.free(cache.tables[0][0])  # behind the table's back
    with pytest.raises(ValueError, match="freed while still in its table"):
        cache.batch([0], [1])
    with pytest.raises(ValueError, match="double free"):
        cache.free_sequence(0)


def test_writing_beyond_reserved_blocks_raises_and_pool_exhaustion_is_all_or_nothing():
    model = cached_model()
    cache = PagedKVCache(model.config, 3, block_size=2)
    cache.add_sequence(0)
    with pytest.raises(ValueError, match="reserve\\(\\) first"):
        cache.batch([0], [1])
    cache.reserve(0, 5)
    assert len(cache.tables[0]) == 3 and cache.allocator.num_free == 0
    cache.add_sequence(1)
    with pytest.raises(NoFreeBlocksError, match="needs 1 more blocks"):
        cache.reserve(1, 2)
    assert cache.tables[1] == [] and cache.allocator.num_free == 0
    cache.free_sequence(0)
    cache.free_sequence(1)
    assert cache.allocator.num_free == 3


def test_pool_bytes_are_read_from_storage_and_allocated_once():
    model = cached_model()
    cfg = model.config
    cache = PagedKVCache(cfg, 5, block_size=4)
    assert cache.nbytes == 2 * cfg.n_layers * 5 * 4 * cfg.n_heads * cfg.head_dim * 4  # K and V, fp32
    assert cache.bytes_per_slot == 2 * cfg.n_layers * cfg.n_heads * cfg.head_dim * 4
    ptrs = [p.data_ptr() for p in cache.k_pools]
    cache.add_sequence(0)
    _paged_call(model, cache, [(0, [1, 2, 3, 4, 5])])
    cache.commit(0, 5, [1, 2, 3, 4, 5])
    assert [p.data_ptr() for p in cache.k_pools] == ptrs and cache.slots_used() == 5


def test_context_check_is_per_row_and_part_one_manager_unchanged():
    model = cached_model(block_size=16)
    cache = PagedKVCache(model.config, 8, block_size=4)
    cache.add_sequence(0)
    cache.add_sequence(1)
    _paged_call(model, cache, [(0, list(range(15)))])
    cache.commit(0, 15, list(range(15)))
    # row 0 decodes at position 15 (its end is 16 = block_size) beside a 10-token prefill: allowed
    logits = _paged_call(model, cache, [(0, [1]), (1, list(range(10)))])
    assert all(torch.isfinite(x).all() for x in logits)
    cache.commit(0, 1, list(range(16)))
    cache.commit(1, 10, list(range(10)))
    with pytest.raises(ValueError, match="17 positions exceed"):
        _paged_call(model, cache, [(0, [2])])
    mgr = KVCacheManager(model.config, 1)
    assert mgr.context_end(3) == 3


def test_paging_pictures():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.figure import Figure

    from kvgpt.plots import plot_block_tables

    model = cached_model()
    cache = PagedKVCache(model.config, 6, block_size=4)
    cache.add_sequence(0)
    _paged_call(model, cache, [(0, [1, 2, 3, 4, 5])])
    cache.commit(0, 5, [1, 2, 3, 4, 5])
    cache.fork_sequence(0, 1)
    assert isinstance(plot_block_tables(cache, {0: "a", 1: "b"}), Figure)
    plt.close("all")


def test_flat_call_picture_marks_each_tokens_write_and_every_key_its_query_reads():
    """plot_flat_call draws, per flat token, one written slot (its slot_mapping) and one cell per key it reads
    (positions 0 .. its own): a picture that drew another sequence's slots, or padding, would fail here."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from kvgpt.plots import plot_flat_call

    model = cached_model()
    cache = PagedKVCache(model.config, 8, block_size=4)
    for s in range(3):
        cache.add_sequence(s)
    _paged_call(model, cache, [(0, [1, 2, 3, 4, 5]), (1, [6, 7])])
    for s, n in ((0, 5), (1, 2)):
        cache.commit(s, n, list(range(1, 8)))
    rows = [(0, [8]), (1, [9, 10, 11]), (2, [12, 13])]
    for s, toks in rows:
        cache.reserve(s, cache.lengths[s] + len(toks))
    batch = cache.batch([s for s, _ in rows], [len(t) for _, t in rows])
    fig = plot_flat_call(batch, ["a", "b", "c"])
    grid = fig.axes[1]
    cells = {(int(p.get_x()), int(p.get_y())) for p in grid.patches}
    bs, tables = 4, batch.block_tables.tolist()
    want = {(i, tables[r][q // bs] * bs + q % bs)
            for i, (r, p) in enumerate(zip(batch.query_row.tolist(), batch.query_pos.tolist())) for q in range(p + 1)}
    assert cells == want and len(grid.patches) == len(want)
    written = {(int(t.get_position()[0]), int(t.get_position()[1])) for t in grid.texts if t.get_text() == "w"}
    assert written == set(enumerate(batch.slot_mapping.tolist()))
    assert len(fig.axes[0].patches) == batch.t  # the top row: one box per real token, none for padding
    plt.close("all")


def test_hash_chain_picture_darkens_exactly_the_blocks_an_earlier_row_hashed():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import to_rgba
    from matplotlib.patches import Rectangle

    from kvgpt.plots import plot_hash_chain
    from kvgpt.plots.paging import SHARED_BLOCK_COLOR as SHARED

    rows = {"a": [1, 2, 3, 4, 5, 6, 7, 8, 9], "b": [1, 2, 3, 4, 5, 6, 7, 8, 0], "c": [0, 2, 3, 4, 5, 6, 7, 8, 9]}
    fig = plot_hash_chain(rows, block_size=4)
    boxes = [p for p in fig.axes[0].patches if isinstance(p, Rectangle)]  # the blocks (the arrows are not)
    dark = [p for p in boxes if p.get_fill() and p.get_facecolor() == to_rgba(SHARED)]
    assert len(boxes) == 9 and len(dark) == 2  # b's two full blocks repeat a's; c's first token changes every hash
    assert sorted(int(p.get_y()) for p in dark) == [1, 1]
    plt.close("all")


@given(st.integers(1, 8), st.lists(st.integers(0, 66), min_size=2, max_size=30), st.data())
def test_crop_releases_blocks_and_continues_like_a_fresh_prefill(block_size, tokens, data):
    """Rollback on the paged cache (speculative decoding): cropped to n slots, the table keeps ceil(n / block_size)
    blocks, the rest return to the pool, and continuing gives the logits of a fresh prefill of the kept prefix."""
    model = cached_model()
    cache = PagedKVCache(model.config, 2 * (-(-len(tokens) // block_size)) + 2, block_size)
    cache.add_sequence(0)
    _paged_call(model, cache, [(0, tokens)])
    cache.commit(0, len(tokens), tokens)
    n = data.draw(st.integers(0, len(tokens) - 1))
    free_before = cache.allocator.num_free
    with pytest.raises(ValueError, match="length"):
        cache.crop(0, len(tokens) + 1)  # refused before any change
    assert cache.lengths[0] == len(tokens) and cache.allocator.num_free == free_before
    cache.crop(0, n)
    kept = -(-n // block_size)
    assert cache.lengths[0] == n and len(cache.tables[0]) == kept
    assert len(cache.hashes[0]) == n // block_size  # only blocks still full keep a prefix hash
    assert cache.allocator.num_free == free_before + (-(-len(tokens) // block_size) - kept)
    rest = tokens[n:] if n else tokens
    got = _paged_call(model, cache, [(0, rest)])[0]
    want = _static_logits(model, [tokens[:n], rest] if n else [rest])[-1]
    assert_close_logits(got, want, "paged crop: continued vs fresh")


def test_crop_never_touches_a_block_another_sequence_shares():
    model, bs = cached_model(), 4
    tokens = list(range(1, 13))
    cache = PagedKVCache(model.config, 10, bs)
    cache.add_sequence(0)
    _paged_call(model, cache, [(0, tokens)])
    cache.commit(0, len(tokens), tokens)
    cache.fork_sequence(0, 1)
    before = [p.clone() for p in cache.k_pools]
    cache.crop(1, 6)  # keeps blocks 0 and 1 (shared); block 2 loses only sequence 1's reference
    assert cache.allocator.ref_counts[cache.tables[0][2]] == 1 and len(cache.tables[1]) == 2
    _paged_call(model, cache, [(1, [40, 41, 42])])  # writes into shared block 1: copied first
    for j, block in enumerate(cache.tables[0]):
        for pool, old in zip(cache.k_pools, before):
            assert torch.equal(pool[block], old[block]), f"sequence 0's block {j} changed"


MISUSE = st.lists(st.tuples(st.sampled_from(["call", "call", "call", "free_block", "unknown", "free_seq"]),
                            st.integers(0, 63), st.lists(st.integers(0, 66), min_size=1, max_size=5)), max_size=16)


@settings(max_examples=100)
@given(MISUSE, st.integers(1, 4))
def test_allocator_and_table_misuse_never_corrupts_another_sequence(ops, block_size):
    """Issue 22, family 2: a block freed through the allocator behind a sequence's back (and handed to another),
    a double free, an unknown sequence id: the victim's next use raises ValueError naming it, refused calls change
    nothing, and every other sequence's logits stay those of the static cache."""
    model = cached_model()
    cache = PagedKVCache(model.config, 12, block_size)
    history, hit = {}, set()  # tokens each live sequence holds; sequences a hostile free took a block from
    for kind, x, toks in ops:
        if kind == "call":
            s = x % 3
            if s not in history:
                cache.add_sequence(s)
                history[s] = []
            if len(history[s]) + len(toks) > model.config.block_size:
                continue
            try:
                logits = _paged_call(model, cache, [(s, toks)])[0]
            except NoFreeBlocksError:
                continue  # a dry pool: reserve is all or nothing
            except ValueError as e:
                assert s in hit and f"sequence {s} uses block(s)" in str(e), e
                continue
            assert s not in hit, f"sequence {s} read a block freed behind its back instead of raising"
            history[s] += toks
            cache.commit(s, len(toks), history[s])
            want = _static_logits(model, [history[s]])[0][-len(toks):]
            assert_close_logits(logits, want)
        elif kind == "free_block":
            held = sorted(cache.allocator.holders) if x % 4 else []  # mostly a block in use, sometimes any block
            b = held[x % len(held)] if held else x % cache.allocator.num_blocks
            holders = list(cache.allocator.holders.get(b, []))
            before = snapshot(cache)
            try:
                cache.allocator.free(b)
            except ValueError as e:
                assert not holders and "not in use" in str(e) and snapshot(cache) == before
                continue
            hit.add(holders[-1])  # an untagged free takes the latest holder's reference
        elif kind == "unknown":
            bad = 100 + x
            for call in (lambda: cache.reserve(bad, 3), lambda: cache.commit(bad, 1, [1]), lambda: cache.crop(bad, 0),
                         lambda: cache.blocks_needed(bad, 3), lambda: cache.free_sequence(bad),
                         lambda: cache.batch([bad], [1]), lambda: cache.fork_sequence(bad, 99)):
                before = snapshot(cache)
                with pytest.raises(ValueError, match=f"={bad}: no such sequence"):
                    call()
                assert snapshot(cache) == before
        elif kind == "free_seq" and history:
            s = sorted(history)[x % len(history)]
            before = snapshot(cache)
            try:
                cache.free_sequence(s)
            except ValueError as e:
                assert s in hit and f"sequence {s}" in str(e) and snapshot(cache) == before
                continue
            del history[s]
            with pytest.raises(ValueError, match=f"seq_id={s}: no such sequence .*double free"):
                cache.free_sequence(s)
