"""LLMEngine.abort_request: a waiting or running request leaves at once, its blocks return to the pool, and every
other request still gets exactly its solo tokens; an id that is not unfinished is refused and changes nothing."""

import pytest
from helpers import cached_model
from hypothesis import given
from hypothesis import strategies as st
from test_serving_engine import _assert_no_leaks, _sampler, _solo

from kvgpt.serving import LLMEngine


def _engine(**kw):
    args = {"block_size": 4, "num_blocks": None, "max_num_seqs": 4, "max_num_batched_tokens": 16} | kw
    return LLMEngine(cached_model(), **args)


def test_abort_a_running_request_frees_its_blocks_at_once():
    engine = _engine(enable_prefix_caching=False)
    keep = engine.add_request(list(range(10)), 12)
    gone = engine.add_request(list(range(20, 37)), 12)
    engine.step()
    engine.step()
    held = len(engine.cache.tables[gone])
    used = engine.cache.allocator.num_used
    assert held > 0 and engine.requests[gone].num_generated > 0  # running and holding blocks
    engine.abort_request(gone)
    assert gone not in engine.requests and gone not in engine.cache.tables
    assert engine.cache.allocator.num_used == used - held
    made = [out.token for out in engine.stream() if out.request_id == keep]
    assert engine.requests == {} and len(made) == 12 - 2
    _assert_no_leaks(engine)


def test_abort_a_waiting_request_and_a_preempted_one():
    engine = _engine(max_num_seqs=1)
    first = engine.add_request([1, 2, 3], 5)
    waiting = engine.add_request([4, 5, 6], 5)
    engine.step()
    assert engine.requests[waiting] in engine.scheduler.waiting and waiting not in engine.cache.tables
    engine.abort_request(waiting)
    assert list(engine.scheduler.waiting) == []
    # a pool of 3 four-slot blocks: the second request preempts the first, which then waits without blocks
    small = _engine(num_blocks=3, max_num_seqs=2, max_num_batched_tokens=8)
    a = small.add_request(list(range(6)), 6)
    b = small.add_request(list(range(10, 16)), 6)
    while small.stats.preemptions == 0:
        small.step()
    victim = next(s.request_id for s in small.scheduler.waiting)
    small.abort_request(victim)
    other = ({a, b} - {victim}).pop()
    tokens = [out.token for out in small.stream() if out.request_id == other]
    assert tokens  # the survivor finishes
    _assert_no_leaks(small)
    for out in engine.stream():
        assert out.request_id == first or (out.request_id == waiting and out.finish_reason == "abort")
    _assert_no_leaks(engine)


@pytest.mark.parametrize("bad", [99, -1, True, "0", 0.0, None])
def test_an_id_that_is_not_unfinished_is_refused_and_nothing_changes(bad):
    engine = _engine()
    rid = engine.add_request([1, 2, 3], 4)
    engine.step()
    before = (dict(engine.requests), {k: list(v) for k, v in engine.cache.tables.items()},
              list(engine.cache.allocator.ref_counts), list(engine.scheduler.running))
    with pytest.raises(ValueError, match="request_id"):
        engine.abort_request(bad if bad != 99 else rid + 99)
    assert before == (dict(engine.requests), {k: list(v) for k, v in engine.cache.tables.items()},
                      list(engine.cache.allocator.ref_counts), list(engine.scheduler.running))
    list(engine.stream())
    with pytest.raises(ValueError, match=f"request_id={rid}"):  # finished: no longer abortable
        engine.abort_request(rid)
    _assert_no_leaks(engine)


@given(st.lists(st.tuples(st.lists(st.integers(0, 66), min_size=1, max_size=14), st.integers(1, 10),
                          st.one_of(st.none(), st.integers(0, 99)), st.one_of(st.none(), st.integers(0, 12))),
                min_size=1, max_size=6),
       st.sampled_from([None, 2, 6]), st.booleans())
def test_aborts_at_random_steps_leave_the_others_exact_and_no_leaks(requests, spare, prefix):
    """requests: (prompt, max_new, seed or None = greedy, step at which it is aborted or None = never)."""
    model = cached_model()
    largest = max(-(-(len(p) + m - 1) // 4) for p, m, _, _ in requests)
    engine = LLMEngine(model, 4, None if spare is None else largest + spare, 3, 12, enable_prefix_caching=prefix)
    samplers = [None if seed is None else _sampler(seed) for _, _, seed, _ in requests]
    rids = [engine.add_request(p, m, s) for (p, m, _, _), s in zip(requests, samplers)]
    made, step = {rid: [] for rid in rids}, 0
    while engine.has_unfinished():
        for rid, (_, _, _, when) in zip(rids, requests):
            if when == step and rid in engine.requests:
                engine.abort_request(rid)
        for out in engine.step():
            if out.finish_reason == "abort":  # the one last output of an aborted request carries no token
                assert out.token is None and out.finished
                continue
            made[out.request_id].append(out.token)
        step += 1
    for rid, (prompt, max_new, _, when), sampler in zip(rids, requests, samplers):
        solo = _solo(model, prompt, max_new, sampler, None)
        if when is None or len(made[rid]) == max_new:  # never aborted, or finished before its abort came
            assert made[rid] == solo
        else:  # aborted: what it made so far is a prefix of its solo tokens
            assert made[rid] == solo[: len(made[rid])]
    _assert_no_leaks(engine)
