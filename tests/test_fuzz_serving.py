"""Fuzzing Part II's public API (issue 22): LLMEngine, PagedKVCache and BlockAllocator, SpeculativeGenerator and its
draft sources, crop on every cache kind. One argument at a time gets a hostile value (tests/fuzzing.py) while the
others stay valid; the property is Part I's: a correct result (the engine's tokens are each request's solo tokens,
speculative greedy is plain greedy, a crop is a fresh cache of the kept prefix), or ValueError/TypeError naming the
argument with every object involved exactly as before. The `kvgpt generate` flags are fuzzed in test_fuzz_cli.py.

Memory: the bytes a pool may take are capped at BUDGET (available_bytes patched), so a huge size is refused the
same way on every machine and nothing large is ever allocated here.
"""

from __future__ import annotations

import contextlib
from unittest import mock

import numpy as np
import torch
from fuzzing import HOSTILE, V, fuzz, outcome, tensors
from helpers import assert_close_logits, cached_model
from hypothesis import given
from hypothesis import strategies as st

from kvgpt import AutoregressiveGenerator, DynamicKVCache, KVCacheManager, Sampler, StaticKVCache
from kvgpt.quantized_cache import Int8KVCache
from kvgpt.serving import BlockAllocator, LLMEngine, NoFreeBlocksError, PagedKVCache
from kvgpt.speculative import SpeculativeGenerator

MODEL = cached_model(vocab_size=V, n_layers=2, n_heads=2, d_model=32, block_size=16)
BUDGET = 2**24  # bytes


@contextlib.contextmanager
def small_memory():
    with mock.patch("kvgpt.validation.available_bytes", lambda device: BUDGET):
        yield


def solo(prompt, n, sampler=None, eos=None):
    """The reference: Part I's generator, the request alone -> its new tokens."""
    prompt = prompt.tolist() if isinstance(prompt, torch.Tensor) else [int(i) for i in prompt]
    return AutoregressiveGenerator(MODEL).generate(prompt, n, sampler=sampler, eos_token_id=eos)[len(prompt):]


EXTRA = st.sampled_from([MODEL.config, torch.nn.Linear(2, 2), "gpt2", {1, 2}, frozenset([3]), np.array([1, 2]),
                         np.int64(3), torch.tensor(3), torch.tensor([1, 2]), (1, 2, 3), Sampler(temperature=0.8, seed=3),
                         Sampler(temperature=0.0), [[1, 2], [3]], [np.int64(4), 5]])
ENGINE_ARGS = ["model", "block_size", "num_blocks", "max_num_seqs", "max_num_batched_tokens", "enable_prefix_caching"]


@fuzz
@given(st.sampled_from(ENGINE_ARGS), st.one_of(HOSTILE, EXTRA))
def test_fuzz_engine_constructor(arg, value):
    kwargs = {"model": MODEL, "block_size": 4, "num_blocks": None, "max_num_seqs": 2, "max_num_batched_tokens": 8,
              "enable_prefix_caching": True, arg: value}
    with small_memory():
        engine = outcome(lambda: LLMEngine(**kwargs), (arg,))
    if engine is not None:  # whatever was accepted serves a request correctly, or refuses one it cannot ever fit
        assert type(value) is bool if arg == "enable_prefix_caching" else arg == "model" or value is None or (
            isinstance(value, (int, np.integer)) and not isinstance(value, bool))  # "no" is not read as True
        out = outcome(lambda: engine.generate([[1, 2, 3]], 3), ("no preemption could ever fit",), engine)
        assert out is None or out == [solo([1, 2, 3], 3)]


REQUEST_ARGS = ["prompt", "max_new_tokens", "sampler", "eos_token_id"]


def _busy_engine():
    """An engine with state to keep: one request mid-way, outputs waiting to be read."""
    engine = LLMEngine(MODEL, block_size=4, num_blocks=8, max_num_seqs=2, max_num_batched_tokens=8)
    engine.add_request([5, 6], 4, Sampler(temperature=1.0, seed=1))
    engine.step()
    engine.generate([[7]], 1)
    return engine


@fuzz
@given(st.sampled_from(REQUEST_ARGS), st.one_of(HOSTILE, EXTRA), st.sampled_from(["add_request", "generate", "stream"]),
       st.booleans())
def test_fuzz_engine_requests(arg, value, door, nested):
    engine = _busy_engine()
    call = {"prompt": [1, 2, 3], "max_new_tokens": 3, "sampler": None, "eos_token_id": None, arg: value}
    names = (arg,)
    if door == "add_request":
        run = lambda: engine.add_request(**call)  # noqa: E731
    else:  # a list of prompts: the hostile value is the list itself, or one prompt in it
        prompts = ([[1, 2, 3], value] if nested else value) if arg == "prompt" else [call["prompt"]]
        names = ("prompts",) if arg == "prompt" else (arg,)
        args = (prompts, call["max_new_tokens"], call["sampler"], call["eos_token_id"])
        run = (lambda: engine.generate(*args)) if door == "generate" else (lambda: list(engine.stream(*args)))
    out = outcome(run, names, engine)
    if out is None:
        return
    prompts = [call["prompt"]] if door == "add_request" or arg != "prompt" else (prompts if not torch.is_tensor(
        prompts) else list(prompts))
    news = call["max_new_tokens"] if isinstance(call["max_new_tokens"], (list, tuple)) else [call["max_new_tokens"]] * len(prompts)
    samplers = call["sampler"] if isinstance(call["sampler"], (list, tuple)) else [call["sampler"]] * len(prompts)
    want = [solo(p, n, s, call["eos_token_id"]) for p, n, s in zip(prompts, news, samplers)]
    if door == "add_request":
        made = []
        while engine.has_unfinished():
            made += [o.token for o in engine.step() if o.request_id == out]
        assert [made] == want
    elif door == "generate":
        assert out == want
    else:
        first = engine._next_id - len(prompts)
        assert [[o.token for o in out if o.request_id == first + i] for i in range(len(prompts))] == want


PAGED_ARGS = ["config", "num_blocks", "block_size", "device", "dtype", "enable_prefix_caching"]


@fuzz
@given(st.sampled_from(PAGED_ARGS), st.one_of(HOSTILE, EXTRA))
def test_fuzz_paged_cache_constructor(arg, value):
    kwargs = {"config": MODEL.config, "num_blocks": 4, "block_size": 4, "device": None, "dtype": torch.float32,
              "enable_prefix_caching": True, arg: value}
    with small_memory():
        cache = outcome(lambda: PagedKVCache(**kwargs), (arg,))
    if cache is not None:
        c = MODEL.config
        assert tuple(cache.k_pools[0].shape) == (cache.allocator.num_blocks, cache.block_size, c.kv_heads, c.head_dim)
        assert cache.nbytes == 2 * c.n_layers * cache.k_pools[0].nelement() * cache.k_pools[0].element_size()


def _paged():
    """Sequence 0 holds 5 computed tokens in 8 reserved slots, sequence 1 is empty, block_size 4."""
    cache = PagedKVCache(MODEL.config, 8, 4)
    cache.add_sequence(0)
    cache.reserve(0, 8)
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    with torch.inference_mode():
        MODEL.prefill(ids, cache.batch([0], [5]))
    cache.commit(0, 5, [1, 2, 3, 4, 5])
    cache.add_sequence(1)
    return cache


PAGED_CALLS = {  # method: the valid call; each argument gets the hostile value in turn
    "add_sequence": {"seq_id": 2, "tokens": [1, 2, 3, 4, 5, 6]},
    "reserve": {"seq_id": 0, "end": 8},
    "blocks_needed": {"seq_id": 0, "end": 9},
    "commit": {"seq_id": 0, "n": 1, "tokens": [1, 2, 3, 4, 5, 6]},
    "free_sequence": {"seq_id": 1},
    "crop": {"seq_id": 0, "length": 3},
    "fork_sequence": {"src": 0, "dst": 5},
    "batch": {"seq_ids": [0], "num_new": [1]},
}
PAGED_METHOD_ARGS = [(m, a) for m, call in PAGED_CALLS.items() for a in call]


@fuzz
@given(st.sampled_from(PAGED_METHOD_ARGS), st.one_of(HOSTILE, EXTRA))
def test_fuzz_paged_cache_methods(method_arg, value):
    method, arg = method_arg
    cache = _paged()
    call = {**PAGED_CALLS[method], arg: value}
    out = outcome(lambda: getattr(cache, method)(**call), (arg, "no such sequence"), cache,
                  also=(NoFreeBlocksError,))  # a dry pool: reserve is all or nothing
    a = cache.allocator
    assert all(len(a.holders.get(b, [])) == a.ref_counts[b] for b in range(a.num_blocks))  # tags match counts
    assert sorted([b for t in cache.tables.values() for b in t] + list(a.free_ids) + list(a.cached)) == sorted(
        [b for b, h in a.holders.items() for _ in h] + list(a.free_ids) + list(a.cached))
    if out is not None and method in ("reserve", "crop", "commit"):
        s = call["seq_id"]
        assert cache.lengths[s] <= len(cache.tables[s]) * cache.block_size


ALLOCATOR_CALLS = {
    "free": {"block": 0, "owner": None},
    "fork": {"block": 0, "owner": 7},
    "register": {"block": 1, "hash_value": 123, "parent": None, "tokens": [1, 2, 3, 4]},
    "lookup": {"hash_value": 99, "parent": None, "tokens": [1, 2, 3, 4]},
    "is_shared_or_full": {"block": 0},
}


@fuzz
@given(st.sampled_from([(m, a) for m, call in ALLOCATOR_CALLS.items() for a in call] + [("__init__", "num_blocks"),
                                                                                         ("__init__", "block_size")]),
       st.one_of(HOSTILE, EXTRA))
def test_fuzz_block_allocator(method_arg, value):
    method, arg = method_arg
    if method == "__init__":
        with small_memory():
            a = outcome(lambda: BlockAllocator(**{"num_blocks": 4, "block_size": 4, arg: value}), (arg,))
        assert a is None or a.num_free == a.num_blocks
        return
    cache = _paged()  # the allocator of a paged cache: sequence 0 holds blocks 0 and 1
    a = cache.allocator
    names = (arg, "not in use", "holds no reference", "is free") if arg in ("block", "owner") else (arg,)
    outcome(lambda: getattr(a, method)(**{**ALLOCATOR_CALLS[method], arg: value}), names, cache)
    assert all(len(a.holders.get(b, [])) == a.ref_counts[b] for b in range(a.num_blocks))


SPEC_ARGS = ["prompt", "max_new_tokens", "k", "sampler", "eos_token_id", "cache_kind"]


@fuzz
@given(st.sampled_from(SPEC_ARGS + ["target", "draft"]), st.one_of(HOSTILE, EXTRA))
def test_fuzz_speculative(arg, value):
    if arg in ("target", "draft"):
        gen = outcome(lambda: SpeculativeGenerator(**{"target": MODEL, "draft": "ngram", arg: value}), (arg,))
        if gen is None:
            return
        call = {"prompt": [1, 2, 3, 1, 2], "max_new_tokens": 6}
    else:
        gen = SpeculativeGenerator(MODEL, "ngram")
        gen.generate([1, 2, 1, 2], 3)  # last_stats to keep
        call = {"prompt": [1, 2, 3, 1, 2], "max_new_tokens": 6, "k": 3, "sampler": None, "eos_token_id": None,
                "cache_kind": "static", arg: value}
    out = outcome(lambda: gen.generate(**call), (arg,), gen)
    if out is None:
        return
    prompt = call["prompt"].tolist() if torch.is_tensor(call["prompt"]) else [int(i) for i in call["prompt"]]
    sampler = call.get("sampler")
    assert out[: len(prompt)] == prompt and len(out) <= len(prompt) + call["max_new_tokens"]
    if sampler is None or sampler.is_greedy:  # greedy speculative decoding is plain greedy decoding
        plain = AutoregressiveGenerator(MODEL).generate(prompt, call["max_new_tokens"], sampler=sampler,
                                                        eos_token_id=call.get("eos_token_id"))
        assert out == plain
    assert all(0 <= t < V for t in out)


class _Source:
    """A draft source that proposes whatever it is given, every round (never trusted)."""

    def __init__(self, proposal):
        self.proposal = proposal

    def start(self):
        pass

    def propose(self, tokens, k, choose):
        return self.proposal

    def rollback(self, n_valid):
        pass


PROPOSALS = st.one_of(
    HOSTILE, st.tuples(st.lists(st.integers(-2, V + 2), max_size=9), st.none()),
    st.tuples(st.lists(st.integers(0, V - 1), max_size=9), st.one_of(st.none(), tensors(max_dims=2))),
    st.tuples(tensors(max_dims=2), st.none()),
)


@fuzz
@given(PROPOSALS, st.integers(1, 5), st.integers(0, 8), st.sampled_from([None, Sampler(temperature=1.0, seed=2)]))
def test_fuzz_draft_sources_are_not_trusted(proposal, k, max_new, sampler):
    """Issue 22, family 5: more than k drafts, ids outside the vocabulary, a malformed q: refused naming the draft;
    anything accepted gives plain greedy's tokens (greedy) and never more than max_new_tokens."""
    gen = SpeculativeGenerator(MODEL, _Source(proposal))
    out = outcome(lambda: gen.generate([1, 2, 3], max_new, k, sampler), ("draft",))
    if out is not None:
        assert 3 <= len(out) <= 3 + max_new and all(0 <= t < V for t in out)
        if sampler is None:
            assert out == AutoregressiveGenerator(MODEL).generate([1, 2, 3], max_new)


class _Oracle(_Source):
    """Proposes the target's own greedy continuation, `extra` tokens more than it is asked for."""

    def __init__(self, extra):
        self.extra = extra

    def propose(self, tokens, k, choose):
        return AutoregressiveGenerator(MODEL).generate(tokens, min(k + self.extra, 16 - len(tokens)))[len(tokens):], None


@given(st.integers(1, 6), st.integers(1, 4), st.integers(1, 10))
def test_more_drafts_than_asked_are_refused_never_returned(extra, k, max_new):
    """The issue's case: 10 tokens asked, 15 returned, because a source proposed more than k correct drafts."""
    gen = SpeculativeGenerator(MODEL, _Oracle(extra))
    try:
        out = gen.generate([1, 2, 3], max_new, k)
    except ValueError as e:
        assert "draft" in str(e) and "asked for at most" in str(e)
        return
    assert out == AutoregressiveGenerator(MODEL).generate([1, 2, 3], max_new)  # only when the context cut it


def _filled(kind):
    """(a cache of the given kind holding 7 positions, its (K, V) chunks). Int8 with window 3 has wrapped its ring."""
    g = torch.Generator().manual_seed(0)
    cache = {"static": lambda: StaticKVCache(1, 2, 4, 12), "dynamic": lambda: DynamicKVCache(12),
             "int8": lambda: Int8KVCache(1, 2, 4, 12), "int8 window": lambda: Int8KVCache(1, 2, 4, 12, window=3)}[kind]()
    xs = [torch.randn(1, 2, t, 4, generator=g) for t in (3, 4)]
    for x in xs:
        cache.append(x, -x)
    return cache, torch.cat(xs, 2)


@fuzz
@given(st.sampled_from(["static", "dynamic", "int8", "int8 window", "manager", "paged"]),
       st.one_of(HOSTILE, st.integers(-2, 9), EXTRA))
def test_fuzz_crop_every_cache_kind(kind, length):
    """Issue 22, family 6: crop on every cache kind is exact (the same reads, after more appends too, as a cache given
    only the kept positions), or refused naming `length` before any change."""
    if kind == "paged":
        cache = _paged()
        if outcome(lambda: cache.crop(0, length) or True, ("length",), cache):
            with torch.inference_mode():
                cache.reserve(0, length + 2)
                got = MODEL.prefill(torch.tensor([[9, 8]]), cache.batch([0], [2]))[0]
            assert_close_logits(got, MODEL(torch.tensor([[1, 2, 3, 4, 5][:length] + [9, 8]]))[0, length:])
        return
    if kind == "manager":
        cache = KVCacheManager(MODEL.config, 2, "static")
        with torch.no_grad():
            MODEL.prefill(torch.tensor([[1, 2, 3, 4], [0, 0, 5, 6]]), cache, torch.tensor([[1, 1, 1, 1], [0, 0, 1, 1]]))
        assert outcome(lambda: cache.crop(length) or True, ("length",), cache) is None or cache.length == length
        return  # exactness into padding: tests/test_crop.py
    cache, everything = _filled(kind)
    outcome(lambda: cache.crop(length), ("length",), cache)
    fresh = _filled(kind)[0].__class__(*((1, 2, 4, 12) if kind != "dynamic" else (12,)),
                                       **({"window": 3} if kind == "int8 window" else {}))
    if cache.length:
        fresh.append(everything[:, :, : cache.length], -everything[:, :, : cache.length])
    more = torch.ones(1, 2, 2, 4)
    for a, b in zip(cache.append(more, more), fresh.append(more, more)):
        assert torch.equal(a, b)
