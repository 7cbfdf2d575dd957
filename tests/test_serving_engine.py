"""LLMEngine: every request gets exactly the tokens it gets generated alone, whatever else is scheduled beside it;
prefix hits prefill exactly the uncached rows; every block comes back."""

import random

import pytest
import torch
from helpers import assert_close_logits, cached_model
from hypothesis import given
from hypothesis import strategies as st

from kvgpt import AutoregressiveGenerator, Sampler
from kvgpt.serving import LLMEngine, NoFreeBlocksError, StepOutput


def _solo(model, prompt, max_new, sampler, eos):
    """The reference: Part I's generator, this request alone."""
    out = AutoregressiveGenerator(model).generate(prompt, max_new, sampler=sampler, eos_token_id=eos)
    return out[len(prompt) :]


def _assert_no_leaks(engine):
    a = engine.cache.allocator
    assert not engine.has_unfinished() and not engine.requests and not engine.cache.tables
    assert a.ref_counts == [0] * a.num_blocks and a.num_free == a.num_blocks and a.num_used == 0
    assert sorted(list(a.free_ids) + list(a.cached)) == list(range(a.num_blocks))
    assert engine.kv_bytes_used() == 0 and engine.kv_bytes_allocated() == 0


def _sampler(seed):
    """A seeded sampler; some with a repetition penalty (its history must carry across steps), some greedy."""
    if seed % 3 == 0:
        return Sampler(temperature=0.0, repetition_penalty=1.5, seed=seed)
    return Sampler(temperature=1.0, top_k=12, repetition_penalty=1.3 if seed % 3 == 1 else 1.0, seed=seed)


@st.composite
def workloads(draw):
    n = draw(st.integers(1, 6))
    prompts = [draw(st.lists(st.integers(0, 66), min_size=1, max_size=20)) for _ in range(n)]
    news = [draw(st.integers(1, 12)) for _ in range(n)]
    seeds = [draw(st.one_of(st.none(), st.integers(0, 2**16))) for _ in range(n)]  # None: greedy
    arrivals = [draw(st.integers(0, 6)) for _ in range(n)]  # how many steps run before request i is added
    return prompts, news, seeds, arrivals


@given(workloads(), st.integers(1, 8), st.integers(1, 24), st.sampled_from([None, 3, 10]), st.integers(1, 4),
       st.one_of(st.none(), st.integers(0, 66)), st.booleans())
def test_every_request_equals_its_solo_generation(work, block_size, budget, spare_blocks, max_seqs, eos, prefix):
    prompts, news, seeds, arrivals = work
    model = cached_model()
    samplers = [None if s is None else _sampler(s) for s in seeds]
    largest = max(-(-(len(p) + m - 1) // block_size) for p, m in zip(prompts, news))
    num_blocks = None if spare_blocks is None else largest + spare_blocks  # small pools force preemption
    engine = LLMEngine(model, block_size, num_blocks, max_seqs, budget, enable_prefix_caching=prefix)
    order = sorted(range(len(prompts)), key=lambda i: arrivals[i])
    made, rid_of, steps, busy = {}, {}, 0, 0
    shapes = []  # (B, T) of every model call, counted at the model (a hook on the token embedding)
    handle = model.token_embedding.register_forward_hook(lambda m, args, out: shapes.append(tuple(args[0].shape)))
    try:
        while order or engine.has_unfinished():
            while order and arrivals[order[0]] <= steps:
                i = order.pop(0)
                rid_of[engine.add_request(prompts[i], news[i], samplers[i], eos)] = i
            busy += engine.has_unfinished()
            for out in engine.step():
                made.setdefault(rid_of[out.request_id], []).append(out.token)
            steps += 1
    finally:
        handle.remove()
    for i, p in enumerate(prompts):
        assert made[i] == _solo(model, p, news[i], samplers[i], eos), f"request {i}"
    # one flat call (1, N) per step with work, over the real token-rows only: no padding, no second call
    s = engine.stats
    assert len(shapes) == s.model_calls == busy and all(b == 1 for b, _ in shapes), shapes
    assert sum(n for _, n in shapes) == s.model_tokens == s.prefill_tokens + s.decode_tokens
    _assert_no_leaks(engine)


def test_a_tiny_pool_preempts_and_still_matches():
    model = cached_model()
    rng = random.Random(1)
    prompts = [[rng.randrange(67) for _ in range(rng.randint(5, 30))] for _ in range(8)]
    samplers = [Sampler(temperature=0.8, seed=i) if i % 2 else None for i in range(8)]
    engine = LLMEngine(model, block_size=4, num_blocks=14, max_num_seqs=8, max_num_batched_tokens=9)
    out = engine.generate(prompts, 20, samplers)
    assert engine.stats.preemptions > 0  # the check below covers recompute, not just a roomy pool
    assert out == [_solo(model, p, 20, s, None) for p, s in zip(prompts, samplers)]
    _assert_no_leaks(engine)


def _count_model_rows(model):
    """A forward hook on the token embedding: token-rows (B * T) that go through the model, per call."""
    rows = []
    handle = model.token_embedding.register_forward_hook(lambda m, args, out: rows.append(args[0].numel()))
    return rows, handle


@given(st.integers(1, 6), st.integers(1, 40), st.integers(0, 40), st.integers(1, 30))
def test_prefix_hit_prefills_exactly_the_uncached_rows(block_size, shared, extra, budget):
    model = cached_model()
    rng = random.Random(shared * 100 + extra)
    first = [rng.randrange(67) for _ in range(shared + rng.randint(0, 5))]
    second = first[:shared] + [rng.randrange(67) for _ in range(extra)]
    second = second[:60]
    engine = LLMEngine(model, block_size, num_blocks=64, max_num_seqs=2, max_num_batched_tokens=budget)
    engine.generate([first], 2)
    common = next((i for i, (a, b) in enumerate(zip(first + [None], second)) if a != b), len(second))
    hit = block_size * min(common // block_size, (len(second) - 1) // block_size)  # the last token is always run
    engine.reset_stats()
    rows, handle = _count_model_rows(model)
    try:
        got = engine.generate([second], 1)  # one request alone: no padding, so model rows == prefill rows
    finally:
        handle.remove()
    assert engine.stats.prefix_hit_tokens == hit
    assert sum(rows) == engine.stats.prefill_tokens == len(second) - hit
    assert got == [_solo(model, second, 1, None, None)]
    _assert_no_leaks(engine)


def test_prefix_hit_gives_the_logits_of_no_prefix_cache():
    model = cached_model()
    prompt = list(range(10, 30))
    for caching in (True, False):
        engine = LLMEngine(model, block_size=4, num_blocks=16, enable_prefix_caching=caching)
        engine.generate([prompt[:13]], 1)  # caches blocks of positions 0..11
        cache = engine.cache
        hit = cache.add_sequence(99, prompt)
        assert hit == (12 if caching else 0)
        cache.reserve(99, len(prompt))
        with torch.inference_mode():
            logits = model.prefill(torch.tensor([prompt[hit:]]), cache.batch([99], [len(prompt) - hit]))[0]
            want = model(torch.tensor([prompt]))[0, hit:]  # the full forward, no cache at all
        assert_close_logits(logits, want)
        cache.free_sequence(99)


def test_no_leaks_after_a_thousand_random_requests():
    model = cached_model(vocab_size=11, n_layers=1, n_heads=1, d_model=8, block_size=32)
    rng = random.Random(0)
    engine = LLMEngine(model, block_size=2, num_blocks=24, max_num_seqs=12, max_num_batched_tokens=24)
    made, want_lengths = {}, {}
    for wave in range(50):
        for _ in range(20):
            prompt = [rng.randrange(3) for _ in range(rng.randint(1, 12))]  # few ids: many prefix hits
            sampler = Sampler(temperature=1.0, seed=rng.randrange(100)) if rng.random() < 0.5 else None
            rid = engine.add_request(prompt, rng.randint(1, 6), sampler, eos_token_id=rng.choice([None, 0, 1]))
            want_lengths[rid] = engine.requests[rid].max_new_tokens
        for _ in range(rng.randint(0, 30)):
            for out in engine.step():
                made.setdefault(out.request_id, []).append(out)
    while engine.has_unfinished():
        for out in engine.step():
            made.setdefault(out.request_id, []).append(out)
    assert len(made) == 1000 and engine.stats.finished == 1000
    assert engine.stats.prefix_hit_tokens > 0 and engine.stats.preemptions > 0  # both paths were exercised
    for rid, outs in made.items():
        assert [o.finished for o in outs] == [False] * (len(outs) - 1) + [True]  # one last token, at the end
        assert len(outs) == want_lengths[rid] or outs[-1].finish_reason == "eos"
    _assert_no_leaks(engine)


def test_stream_yields_each_token_once_and_matches_generate():
    model = cached_model()
    prompts = [[1, 2, 3], [4, 5, 6, 7, 8, 9, 10], [11]]
    engine = LLMEngine(model, block_size=4, max_num_batched_tokens=4)
    outs = list(engine.stream(prompts, [5, 3, 4]))
    assert all(isinstance(o, StepOutput) for o in outs)
    per = [[o.token for o in outs if o.request_id == r] for r in range(3)]
    assert per == LLMEngine(model, block_size=4).generate(prompts, [5, 3, 4])
    assert [o.finish_reason for o in outs if o.finished] and sum(o.finished for o in outs) == 3


def test_stats_count_rows_steps_and_bytes():
    model = cached_model()
    engine = LLMEngine(model, block_size=4, max_num_seqs=4, max_num_batched_tokens=64)
    prompts = [[1, 2, 3, 4, 5], [6, 7], [8, 9, 10, 11, 12, 13, 14]]
    engine.add_request(prompts[0], 4)
    engine.step()
    assert 0 < engine.kv_bytes_used() <= engine.kv_bytes_allocated() <= engine.kv_bytes_reserved
    assert engine.kv_bytes_used() == 5 * engine.cache.bytes_per_slot
    assert engine.kv_bytes_allocated() == 2 * 4 * engine.cache.bytes_per_slot  # two blocks, 3 slots unfilled
    engine.generate(prompts[1:], [3, 2])
    s = engine.stats
    assert s.prefill_tokens == 14 and s.decode_tokens == (4 - 1) + (3 - 1) + (2 - 1) and s.finished == 3
    assert s.preemptions == 0 and s.prefix_hit_tokens == 0 and s.peak_blocks_used >= 2
    engine.reset_stats()
    assert engine.stats.steps == engine.stats.prefill_tokens == engine.stats.peak_blocks_used == 0


def test_eos_stops_a_request_and_is_included():
    model = cached_model()
    prompt = [5, 6, 7]
    free = _solo(model, prompt, 8, None, None)
    eos = free[2]
    (got,) = LLMEngine(model).generate([prompt], 8, eos_token_id=eos)
    assert got == free[: free.index(eos) + 1]


def test_invalid_requests_raise_before_any_state_changes():
    model = cached_model(block_size=16)
    engine = LLMEngine(model, block_size=4, num_blocks=3)
    bad = [([], 3, None, None, "prompt=\\[\\]"), ([1, 99], 3, None, None, "99"), ([1], 0, None, None, "max_new_tokens=0"),
           ([1] * 10, 7, None, None, "context block_size=16"), ([1] * 10, 5, None, None, "no preemption could"),
           ([1], 2, "greedy", None, "sampler='greedy'"), ([1], 2, None, -1, "eos_token_id")]
    for prompt, n, sampler, eos, match in bad:
        with pytest.raises(ValueError, match=match):
            engine.add_request(prompt, n, sampler, eos)
    with pytest.raises(ValueError, match="one per prompt"):
        engine.generate([[1], [2]], [1, 2, 3])
    with pytest.raises(ValueError, match="prompts\\[1\\]=\\[\\]"):
        engine.generate([[1], []], 2)  # the first prompt is not queued either
    assert not engine.has_unfinished() and engine.requests == {} and engine._next_id == 0
    for name, kwargs in [("block_size", {"block_size": 0}), ("max_num_seqs", {"max_num_seqs": True}),
                         ("max_num_batched_tokens", {"max_num_batched_tokens": -1}), ("num_blocks", {"num_blocks": 0})]:
        with pytest.raises(ValueError, match=name):
            LLMEngine(model, **kwargs)


def test_pool_held_elsewhere_gives_a_clear_error_instead_of_spinning():
    model = cached_model()
    engine = LLMEngine(model, block_size=4, num_blocks=4)
    engine.cache.add_sequence(-1)
    engine.cache.reserve(-1, 16)  # every block held by something the scheduler cannot preempt
    engine.add_request([1, 2, 3], 2)
    with pytest.raises(NoFreeBlocksError, match="nothing is running and only 0 of 4 blocks are free"):
        engine.step()
