"""AutoregressiveGenerator: cached == uncached, EOS, context limit, validation, streaming, timing stats."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from helpers import assert_close_logits, gen

from kvgpt import generation
from kvgpt.generation import GenerationStats
from kvgpt.sampling import Sampler, apply_repetition_penalty

KINDS = ["static", "dynamic"]

def reference_greedy(model, prompt, n, penalty=1.0):
    """The textbook loop, independent of the generator: full forward, (penalised) argmax, append."""
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(n):
            logits = model(torch.tensor([ids]))[0, -1]  # (V,)
            ids.append(int(apply_repetition_penalty(logits, ids, penalty).argmax()))
    return ids


@pytest.mark.parametrize("config", [
    {}, {"n_layers": 1, "n_heads": 1, "d_model": 16, "attn_impl": "manual", "block_size": 256, "seed": 1},
    {"n_layers": 3, "n_heads": 4, "d_model": 32, "vocab_size": 50, "block_size": 256, "seed": 2},
])
def test_cached_equals_uncached_greedy_200_tokens(config):
    config = {"block_size": 256, **config}
    g = gen(**config)
    prompt = torch.randint(0, g.model.config.vocab_size, (7,), generator=torch.Generator().manual_seed(0))
    base, base_logits = g.generate(prompt, 200, use_cache=False, return_logits=True)
    assert len(base) == 207
    for kind in KINDS:
        out, logits = g.generate(prompt, 200, cache_kind=kind, return_logits=True)
        assert out == base
        assert logits.shape == (200, g.model.config.vocab_size)
        assert_close_logits(logits, base_logits, "generate: cached vs uncached logits, 200 steps (fp32)")


def test_greedy_matches_the_textbook_loop():
    g = gen()
    prompt = [3, 1, 4, 1, 5]
    assert g.generate(prompt, 12) == reference_greedy(g.model, prompt, 12)
    s = Sampler(temperature=0, repetition_penalty=1.8)  # greedy with a penalty over prompt + output
    assert g.generate(prompt, 12, sampler=s) == reference_greedy(g.model, prompt, 12, 1.8)
    assert g.generate(prompt, 12, sampler=s, use_cache=False) == reference_greedy(g.model, prompt, 12, 1.8)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sampling_same_seed_same_tokens_with_and_without_cache(seed):
    g, prompt = gen(), [5, 6, 7]
    s = Sampler(temperature=0.9, top_k=20, top_p=0.95, repetition_penalty=1.2, seed=seed)
    runs = [g.generate(prompt, 40, sampler=s, use_cache=c, cache_kind=k)
            for c, k in [(True, "static"), (True, "dynamic"), (False, "static")]]
    assert runs[0] == runs[1] == runs[2]
    assert g.generate(prompt, 40, sampler=s) == runs[0]  # a sampler is reusable: each call takes fresh generators
    other = g.generate(prompt, 40, sampler=Sampler(temperature=0.9, top_k=20, top_p=0.95, seed=seed + 100))
    assert other != runs[0]


def test_two_generations_in_a_row_equal_fresh_ones():
    g, s = gen(), Sampler(temperature=1.1, seed=4)
    first = [g.generate([1, 2], 15, cache_kind=k, sampler=s) for k in KINDS]
    second = [g.generate([9, 8, 7], 10, cache_kind=k) for k in KINDS]
    again = [g.generate([1, 2], 15, cache_kind=k, sampler=s) for k in KINDS]
    fresh = [gen().generate([9, 8, 7], 10, cache_kind=k) for k in KINDS]
    assert first == again and second == fresh


def test_prompt_forms_agree():
    g = gen()
    as_list = g.generate([4, 5, 6], 6)
    assert g.generate(torch.tensor([4, 5, 6]), 6) == as_list
    assert g.generate((4, 5, 6), 6) == as_list
    assert g.generate(torch.tensor([[4, 5, 6], [4, 5, 6]]), 6) == [as_list, as_list]
    assert g.generate([torch.tensor([4, 5, 6])], 6) == [as_list]
    assert all(type(t) is int for t in as_list)


def test_max_new_tokens_zero_returns_the_prompt():
    g = gen()
    assert g.generate([1, 2, 3], 0) == [1, 2, 3]
    assert g.generate([[1], [2, 3]], 0, use_cache=False) == [[1], [2, 3]]
    assert g.last_stats.new_lengths == [0, 0] and list(g.stream([1], 0)) == []


def test_context_limit_exactly_block_size_works_one_more_raises_before_work():
    g = gen(block_size=32)
    for use_cache in (True, False):
        assert len(g.generate([1] * 10, 22, use_cache=use_cache)) == 32
        g.last_stats = None
        with pytest.raises(ValueError, match=r"prompt length 10 \+ max_new_tokens=23 = 33 .*block_size=32"):
            g.generate([1] * 10, 23, use_cache=use_cache)
        assert g.last_stats is None  # nothing ran
    with pytest.raises(ValueError, match="block_size=32"):
        g.generate([[1] * 3, [1] * 12], 21)  # the longest row counts
    with pytest.raises(ValueError, match="block_size=32"):
        g.stream([1] * 33, 0)


BAD_CALLS = [
    ("prompt", {"prompt": []}), ("prompt", {"prompt": torch.tensor([], dtype=torch.long)}),
    ("prompt", {"prompt": [[1, 2], []]}), ("prompt", {"prompt": [1, 67]}), ("prompt", {"prompt": [-1]}),
    ("prompt", {"prompt": [1.0, 2.0]}), ("prompt", {"prompt": [True]}), ("prompt", {"prompt": torch.tensor([1.0])}),
    ("prompt", {"prompt": torch.ones(1, 1, 2, dtype=torch.long)}), ("prompt", {"prompt": "hello"}),
    ("max_new_tokens", {"max_new_tokens": -1}), ("max_new_tokens", {"max_new_tokens": 1.5}),
    ("max_new_tokens", {"max_new_tokens": True}), ("max_new_tokens", {"max_new_tokens": "3"}),
    ("cache_kind", {"cache_kind": "paged"}), ("sampler", {"sampler": "greedy"}),
    ("eos_token_id", {"eos_token_id": 67}), ("eos_token_id", {"eos_token_id": [1, -2]}),
    ("pad_token_id", {"pad_token_id": 99}), ("eos_token_id", {"eos_token_id": 1.5}),
    ("use_cache", {"use_cache": "yes"}), ("prompt", {"prompt": [torch.tensor(3)]}),
]


@pytest.mark.parametrize("name, kwargs", BAD_CALLS)
def test_bad_arguments_raise_naming_the_argument(name, kwargs):
    g = gen()
    call = {"prompt": [1, 2], "max_new_tokens": 3, **kwargs}
    with pytest.raises(ValueError, match=name):
        g.generate(**call)
    with pytest.raises(ValueError, match=name):
        g.stream(**call)  # checked at the call, before any token is asked for


def test_eos_stops_and_is_included():
    g, prompt = gen(), [3, 9, 4]
    free = g.generate(prompt, 20)
    eos = free[len(prompt) + 4]
    first = free.index(eos, len(prompt))
    out = g.generate(prompt, 20, eos_token_id=eos)
    assert out == free[: first + 1]
    assert g.last_stats.stop_reasons == ["eos"] and g.last_stats.new_lengths == [first + 1 - len(prompt)]
    assert g.generate(prompt, 20, eos_token_id=[eos, 66]) == out  # an int and a list give the same result
    assert g.generate(prompt, 20, eos_token_id=eos, use_cache=False) == out
    in_prompt = g.generate([eos, 3, 9, 4], 5, eos_token_id=free[0])  # EOS inside the prompt finishes nothing
    assert len(in_prompt) == 9 and g.last_stats.stop_reasons == ["max_new_tokens"]


def test_stream_yields_the_same_tokens_as_generate():
    g, s = gen(), Sampler(temperature=1.0, top_k=10, seed=3)
    for kw in ({}, {"sampler": s}, {"use_cache": False, "sampler": s}):
        out = g.generate([1, 2, 3], 25, **kw)
        streamed = list(g.stream([1, 2, 3], 25, **kw))
        assert [1, 2, 3] + streamed == out and all(type(t) is int for t in streamed)


def test_stream_closed_early_reports_stopped():
    g = gen()
    it = g.stream([1, 2, 3], 25)
    firsts = [next(it) for _ in range(4)]
    it.close()
    assert firsts == g.generate([1, 2, 3], 4)[3:]
    g2 = gen()
    it = g2.stream([1, 2, 3], 25)
    [next(it) for _ in range(4)]
    it.close()
    assert g2.last_stats.stop_reasons == ["stopped"] and g2.last_stats.new_lengths == [4]


def test_stream_timing_leaves_out_the_consumer(monkeypatch):
    clock = [100.0]  # a fake perf_counter: only the consumer moves it
    monkeypatch.setattr(generation, "time", SimpleNamespace(perf_counter=lambda: clock[0]))
    g = gen()
    for _ in g.stream([1, 2, 3], 5):
        clock[0] += 10.0  # the consumer takes 10 s per token
    assert g.last_stats.decode_ms == 0.0 and g.last_stats.prefill_ms == 0.0
    it = g.stream([1, 2, 3], 5)
    next(it)
    clock[0] += 10.0
    it.close()  # closed while holding a token: that time is the consumer's too
    assert g.last_stats.decode_ms == 0.0 and g.last_stats.stop_reasons == ["stopped"]


def test_stream_does_not_leak_inference_mode():
    it = gen().stream([1, 2], 3)
    next(it)
    assert not torch.is_inference_mode_enabled()
    it.close()


def test_timing_stats_are_consistent():
    g = gen()
    g.generate([[1, 2, 3], [4]], 10)
    st = g.last_stats
    assert isinstance(st, GenerationStats) and st.use_cache and st.cache_kind == "static"
    assert st.prefill_ms >= 0 and st.decode_ms >= 0 and st.decode_tokens_per_s >= 0
    assert st.prompt_lengths == [3, 1] and st.n_prompt_tokens == 4
    assert st.new_lengths == [10, 10] and st.n_new_tokens == 20 and st.n_decode_tokens == 18
    assert st.stop_reasons == ["max_new_tokens"] * 2
    g.generate([5], 1, use_cache=False)
    assert g.last_stats.n_decode_tokens == 0 and g.last_stats.decode_tokens_per_s == 0.0
    assert not g.last_stats.use_cache


def test_logits_of_return_logits_are_the_raw_model_logits():
    g = gen()
    out, logits = g.generate([7, 8], 5, return_logits=True)
    with torch.no_grad():
        full = g.model(torch.tensor([out]))[0, 1:-1]  # logits that predicted each new token
    assert_close_logits(logits, full)
