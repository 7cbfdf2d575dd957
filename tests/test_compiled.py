"""kvgpt/compiled.py: the decode step as one graph gives the eager step's tokens and logits, and refuses what it
cannot run before anything is written."""

from __future__ import annotations

import copy

import pytest
import torch
from helpers import assert_close_logits, cached_model, snapshot
from hypothesis import given
from hypothesis import strategies as st

from kvgpt import AutoregressiveGenerator, KVCacheManager, Sampler, load_pretrained
from kvgpt.compiled import CompiledDecoder, compiled_step, graph_capacity


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()  # every test starts with no compiled graphs (dynamo's cache is per function, global)
    yield


def _eager_traced(model) -> AutoregressiveGenerator:
    """compile=True with dynamo's "eager" backend: the same single-graph trace, no C++ build (fast to test)."""
    gen = AutoregressiveGenerator(model, compile=True)
    gen.compiled = CompiledDecoder(model, backend="eager")
    return gen


@given(layers=st.integers(1, 3), heads=st.sampled_from([1, 2, 4]), kv=st.sampled_from([None, 1]),
       impl=st.sampled_from(["sdpa", "manual"]), lengths=st.lists(st.integers(1, 9), min_size=1, max_size=3),
       new=st.integers(1, 20), seed=st.integers(0, 2**16))
def test_compiled_generation_equals_eager(layers, heads, kv, impl, lengths, new, seed):
    model = cached_model(n_layers=layers, n_heads=heads, d_model=8 * heads, attn_impl=impl, n_kv_heads=kv)
    g = torch.Generator().manual_seed(seed)
    prompts = [torch.randint(0, 67, (n,), generator=g).tolist() for n in lengths]
    eager, compiled = AutoregressiveGenerator(model), _eager_traced(model)
    ref, ref_logits = eager.generate(prompts, new, return_logits=True)
    out, logits = compiled.generate(prompts, new, return_logits=True)
    assert out == ref
    for a, b in zip(ref_logits, logits):
        assert_close_logits(b, a, "compiled vs eager logits")


def test_the_step_is_one_graph_with_no_break():
    model = cached_model(n_layers=2)
    cache = KVCacheManager(model.config, 2, "static", capacity=16)
    with torch.inference_mode():
        model.prefill(torch.randint(0, 67, (2, 5)), cache)
        layers = cache.layer_caches
        explained = torch._dynamo.explain(compiled_step)(model, torch.zeros(2, 1, dtype=torch.long),
                                                          torch.tensor([5]), torch.zeros(2, dtype=torch.long),
                                                          [c._k for c in layers], [c._v for c in layers])
    assert (explained.graph_count, explained.graph_break_count) == (1, 0)


def test_slots_not_written_yet_are_never_read():
    """Garbage beyond the cache length (stale slots of an earlier, longer sequence) must not change the logits."""
    model = cached_model(n_layers=2)
    dec = CompiledDecoder(model, backend="eager")
    ids, nxt = torch.randint(0, 67, (1, 6)), torch.tensor([3])
    out = []
    for garbage in (0.0, 1e4):
        cache = KVCacheManager(model.config, 1, "static", capacity=32)
        with torch.inference_mode():
            model.prefill(ids, cache)
            for c in cache.layer_caches:
                c._k[:, :, 6:], c._v[:, :, 6:] = garbage, garbage
            out.append(dec(nxt, 6, cache))
    assert (out[0] - out[1]).abs().max() == 0


def test_inductor_compiles_once_per_shape_and_matches_eager_on_the_embedded_model():
    model, tok = load_pretrained()
    eager, compiled = AutoregressiveGenerator(model), AutoregressiveGenerator(model, compile=True)
    prompt = tok.encode("ROMEO:")
    assert compiled.generate(prompt, 150) == eager.generate(prompt, 150)
    sampler = Sampler(temperature=0.8, top_k=40, seed=1)
    assert compiled.generate(prompt, 50, sampler=sampler) == eager.generate(prompt, 50, sampler=sampler)
    frames = torch._dynamo.utils.counters["frames"]["ok"]
    compiled.generate(tok.encode("KING:"), 200)  # 5 + 200 -> capacity 256 again: the first graph, reused
    assert torch._dynamo.utils.counters["frames"]["ok"] == frames
    assert list(compiled.compiled.compile_s) == [(1, 256, torch.float32, "cpu"), (1, 64, torch.float32, "cpu")]


@pytest.mark.parametrize("needed, capacity", [(1, 64), (64, 64), (65, 128), (200, 256), (256, 256)])
def test_graph_capacity_rounds_up_to_a_power_of_two_within_the_context(needed, capacity):
    assert graph_capacity(needed, 256) == capacity


@pytest.mark.parametrize("kwargs", [{"use_cache": False}, {"cache_kind": "dynamic"}, {"cache_kind": "int8"}])
def test_compile_refuses_caches_that_change_shape_or_format(kwargs):
    gen = _eager_traced(cached_model())
    with pytest.raises(ValueError, match="compile=True"):
        gen.generate([1, 2, 3], 4, **kwargs)


def test_refused_steps_change_nothing():
    model = cached_model(n_layers=2)
    dec = CompiledDecoder(model, backend="eager")
    cache = KVCacheManager(model.config, 1, "static", capacity=4)
    with torch.inference_mode():
        model.prefill(torch.tensor([[1, 2, 3, 4]]), cache)  # full
        before = snapshot(cache)
        with pytest.raises(ValueError, match="overflow"):
            dec.step(torch.tensor([5]), cache)
        with pytest.raises(ValueError, match="67"):
            dec(torch.tensor([67]), 4, cache)  # the checked call: an id outside the vocabulary
        with pytest.raises(ValueError, match="position=3"):
            dec(torch.tensor([5]), 3, cache)
        assert snapshot(cache) == before
    dynamic = KVCacheManager(model.config, 1, "dynamic")
    with pytest.raises(ValueError, match="kind 'static'"):
        dec.step(torch.tensor([5]), dynamic)
    with pytest.raises(TypeError, match="model"):
        CompiledDecoder("gpt2")
    with pytest.raises(ValueError, match="backend"):
        CompiledDecoder(model, backend="tvm")


@pytest.mark.skipif(not hasattr(torch._inductor, "aoti_compile_and_package"), reason="AOTInductor needs torch >= 2.6")
def test_aot_backend_matches_eager_and_recompiles_after_a_weight_change():
    model, tok = load_pretrained()
    model = copy.deepcopy(model)  # its weights change below
    eager, aot = AutoregressiveGenerator(model), AutoregressiveGenerator(model, compile="aot")
    prompts = [tok.encode("ROMEO:"), tok.encode("KING:")]
    assert aot.generate(prompts, 40) == eager.generate(prompts, 40)
    with torch.no_grad():
        model.blocks[0].ffn.fc.weight.mul_(0.5)  # the AOT package holds a copy of the old weights
    assert aot.generate(prompts, 40) == eager.generate(prompts, 40)
    assert len(aot.compiled.compile_s) == 1 and len(aot.compiled._graphs) == 1  # rebuilt, not stale


@pytest.mark.parametrize("compile", ["yes", 1, "tvm"])
def test_compile_option_is_checked(compile):
    with pytest.raises(ValueError, match="compile="):
        AutoregressiveGenerator(cached_model(), compile=compile)
