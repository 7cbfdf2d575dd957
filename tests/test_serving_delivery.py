"""LLMEngine under mixed use (issue 22, families 1 and 3): every token reaches exactly one reader, the one that asked
for its request, whatever mix of add_request / step / generate / stream runs; a model call or a sampler that raises
ends only its own requests (finish_reason "error", blocks freed) and the engine goes on."""

from __future__ import annotations

from unittest import mock

import pytest
import torch
from helpers import cached_model, random_model
from hypothesis import given, settings
from hypothesis import strategies as st

from kvgpt import AutoregressiveGenerator, Sampler
from kvgpt.serving import LLMEngine, StepError

MODEL = cached_model()
V = MODEL.config.vocab_size


def _solo(prompt, max_new, seed, model=MODEL):
    """The reference: Part I's generator, this request alone (seed None: greedy)."""
    sampler = None if seed is None else Sampler(temperature=1.0, top_k=12, seed=seed)
    return AutoregressiveGenerator(model).generate(prompt, max_new, sampler=sampler)[len(prompt):]


def _sampler(seed):
    return None if seed is None else Sampler(temperature=1.0, top_k=12, seed=seed)


def _assert_no_leaks(engine):
    a = engine.cache.allocator
    assert not engine.has_unfinished() and not engine.requests and not engine.cache.tables
    assert a.ref_counts == [0] * a.num_blocks and a.num_free == a.num_blocks and not a.holders


REQUEST = st.tuples(st.lists(st.integers(0, V - 1), min_size=1, max_size=8), st.integers(1, 6),
                    st.one_of(st.none(), st.integers(0, 99)))
OPS = st.one_of(
    st.tuples(st.just("add"), REQUEST),
    st.tuples(st.just("step")),
    st.tuples(st.just("generate"), st.lists(REQUEST, min_size=1, max_size=3)),
    st.tuples(st.just("open"), st.lists(REQUEST, min_size=1, max_size=3)),  # a private stream(prompts)
    st.tuples(st.just("next"), st.integers(0, 3), st.integers(1, 4)),  # pull items from stream i
    st.tuples(st.just("shared"), st.integers(1, 4)),  # pull items from one shared stream()
    st.tuples(st.just("close"), st.integers(0, 3)),
    st.tuples(st.just("close shared")),  # what it took and did not hand out goes back to step()
)


@settings(max_examples=100)
@given(st.lists(OPS, min_size=1, max_size=12), st.integers(2, 6), st.sampled_from([None, 12]), st.booleans())
def test_every_token_reaches_exactly_the_reader_of_its_request(ops, block_size, num_blocks, prefix):
    engine = LLMEngine(MODEL, block_size, num_blocks, max_num_seqs=3, max_num_batched_tokens=10,
                       enable_prefix_caching=prefix)
    want, reader_of, got = {}, {}, {}  # request id -> solo tokens, its reader, tokens delivered (in order)
    streams, closed, shared = [], set(), None

    def queue(reqs, reader):
        first = engine._next_id  # ids are handed out in order
        for i, (prompt, n, seed) in enumerate(reqs):
            want[first + i], reader_of[first + i] = _solo(prompt, n, seed), reader

    def deliver(out, reader):
        assert reader_of[out.request_id] == ("shared" if reader in ("step", "shared") else reader), (out, reader)
        assert out.request_id not in closed, f"request {out.request_id} delivered after its stream was closed"
        assert out.finish_reason != "error", out
        got.setdefault(out.request_id, []).append(out.token)

    for op in ops:
        if op[0] == "add":
            prompt, n, seed = op[1]
            queue([op[1]], "shared")
            assert engine.add_request(prompt, n, _sampler(seed)) == max(want)
        elif op[0] == "step":
            for out in engine.step():
                deliver(out, "step")
        elif op[0] == "generate":
            queue(op[1], "generate")
            first = max(want) - len(op[1]) + 1
            made = engine.generate([p for p, _, _ in op[1]], [n for _, n, _ in op[1]], [_sampler(s) for _, _, s in op[1]])
            for i, tokens in enumerate(made):
                got[first + i] = tokens
        elif op[0] == "open":
            queue(op[1], f"stream {len(streams)}")
            streams.append(engine.stream([p for p, _, _ in op[1]], [n for _, n, _ in op[1]],
                                         [_sampler(s) for _, _, s in op[1]]))
        elif op[0] == "next" and op[1] < len(streams):
            for out in _pull(streams[op[1]], op[2]):
                deliver(out, f"stream {op[1]}")
        elif op[0] == "shared":
            shared = shared or engine.stream()
            for out in _pull(shared, op[1]):
                deliver(out, "shared")
        elif op[0] == "close shared" and shared is not None:
            shared.close()
            shared = None
        elif op[0] == "close" and op[1] < len(streams):
            streams[op[1]].close()
            closed |= {rid for rid, r in reader_of.items() if r == f"stream {op[1]}"}
            assert not closed & set(engine.requests), "a closed stream's requests must end (aborted)"
    for i, stream in enumerate(streams):  # the end: every reader reads what is left
        for out in stream:
            deliver(out, f"stream {i}")
    while engine.has_unfinished():
        for out in engine.step():
            deliver(out, "step")
    for rid, tokens in want.items():
        if rid in closed:  # a closed stream's requests were aborted: what it read is where they stood
            assert got.get(rid, []) == tokens[: len(got.get(rid, []))], rid
        else:
            assert got.get(rid) == tokens, f"request {rid} ({reader_of[rid]})"
    _assert_no_leaks(engine)


def _pull(stream, n):
    out = []
    for item in stream:
        out.append(item)
        if len(out) == n:
            break
    return out


def test_generate_beside_queued_requests_and_an_open_stream_drops_nothing():
    """The issue's cases: a stream got 15 of 20 tokens, an add_request lost all 10."""
    engine = LLMEngine(MODEL, block_size=4)
    rid = engine.add_request([1, 2, 3], 10)
    stream = engine.stream([[4, 5, 6]], 20)
    first = next(stream)
    (made,) = engine.generate([[7, 8]], 5)
    assert made == _solo([7, 8], 5, None)
    rest = [first] + list(stream)
    assert [o.token for o in rest] == _solo([4, 5, 6], 20, None) and rest[-1].finished
    outs = []
    while engine.has_unfinished():
        outs += engine.step()
    assert [o.token for o in outs if o.request_id == rid] == _solo([1, 2, 3], 10, None)
    _assert_no_leaks(engine)


def test_a_dropped_stream_aborts_its_requests_and_frees_their_blocks():
    engine = LLMEngine(MODEL, block_size=4)
    stream = engine.stream([[1, 2, 3], [4]], 8)
    next(stream)
    del stream  # never exhausted, never closed: garbage-collected
    assert engine.generate([[5, 6]], 3) == [_solo([5, 6], 3, None)]
    assert not engine.requests and engine.cache.allocator.num_used == 0
    with pytest.raises(ValueError, match="max_new_tokens=3 without prompts"):
        engine.stream(max_new_tokens=3)


def test_a_reader_leaving_during_a_step_is_cancelled_at_the_next_one():
    """A stream collected by the garbage collector in the middle of a step must not change the queues under it."""
    engine = LLMEngine(MODEL, block_size=4)
    stream = engine.stream([[1, 2, 3]], 6)
    box = engine.outbox.owner[0]
    engine._busy = True  # as if the collector ran inside a step
    stream.close()
    engine._busy = False
    assert 0 in engine.requests and engine.outbox.abandoned == [box]
    assert engine.step() == [] and not engine.requests and engine.cache.allocator.num_used == 0
    _assert_no_leaks(engine)


def _nan_model():
    model = random_model(MODEL.config, seed=3)
    with torch.no_grad():
        next(model.parameters()).fill_(float("nan"))
    return model


def test_non_finite_weights_end_the_request_with_a_reason_and_later_steps_work():
    model = _nan_model()
    engine = LLMEngine(model, block_size=4)
    rid = engine.add_request([1, 2], 3)
    (out,) = engine.step()
    assert (out.request_id, out.token, out.finished, out.finish_reason) == (rid, None, True, "error")
    assert "logits contain NaN" in out.error and engine.cache.allocator.num_used == 0
    assert engine.step() == [] and not engine.has_unfinished()
    with pytest.raises(StepError, match=r"request 1 \(prompts\[0\]\) failed: ValueError: logits contain NaN"):
        engine.generate([[3], [4, 5]], 2)
    (err,) = list(engine.stream([[6]], 2))
    assert err.finish_reason == "error"
    _assert_no_leaks(engine)


@given(st.lists(REQUEST, min_size=2, max_size=6), st.integers(0, 8), st.sampled_from(["model", "sampler"]),
       st.integers(2, 6))
def test_a_failing_call_ends_only_its_requests(reqs, fail_at, where, block_size):
    model = random_model(MODEL.config, seed=0)  # the cached model's weights: the solo references apply
    engine = LLMEngine(model, block_size, max_num_seqs=3, max_num_batched_tokens=8)
    calls, failed_rows = [], []
    batch, prefill = engine.cache.batch, model.prefill

    def recorded_batch(seq_ids, num_new, *rest):
        calls.append(list(seq_ids))
        return batch(seq_ids, num_new, *rest)

    def failing_prefill(*args, **kwargs):
        if len(calls) - 1 == fail_at and where == "model":
            failed_rows.extend(calls[-1])
            raise RuntimeError("injected model failure")
        return prefill(*args, **kwargs)

    samplers = [_sampler(seed) for _, _, seed in reqs]
    if where == "sampler":  # one request's sampler raises on its second draw
        victim = next((i for i, s in enumerate(samplers) if s is not None and reqs[i][1] >= 2), None)
        if victim is not None:
            samplers[victim] = _Exploding(temperature=1.0, top_k=12, seed=reqs[victim][2])
            failed_rows.append(victim)
    with mock.patch.object(engine.cache, "batch", recorded_batch), mock.patch.object(model, "prefill", failing_prefill):
        rids = [engine.add_request(p, n, s) for (p, n, _), s in zip(reqs, samplers)]
        outs = []
        while engine.has_unfinished():
            outs += engine.step()
    for rid, (prompt, n, seed) in zip(rids, reqs):
        mine = [o for o in outs if o.request_id == rid]
        assert sum(o.finished for o in mine) == 1 and mine[-1].finished, mine
        if rid in failed_rows:
            assert mine[-1].finish_reason == "error" and "injected" in mine[-1].error
            assert [o.token for o in mine[:-1]] == _solo(prompt, n, seed)[: len(mine) - 1]
        else:
            assert [o.token for o in mine] == _solo(prompt, n, seed), rid
    _assert_no_leaks(engine)
    assert engine.generate([[1, 2, 3]], 4) == [_solo([1, 2, 3], 4, None)]  # later steps work


class _Exploding(Sampler):
    """A sampler whose second draw raises (a hostile subclass, or a bug in a custom one)."""

    draws = 0

    def sample(self, *args, **kwargs):
        self.draws += 1
        if self.draws == 2:
            raise RuntimeError("injected sampler failure")
        return super().sample(*args, **kwargs)
