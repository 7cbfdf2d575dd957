"""Issue 14, family by family: every refused call names the argument, its value and what is allowed, and leaves
caches, managers and generators exactly as they were (snapshot, fail, compare). The fuzz suite (test_fuzz_*.py)
checks the same properties over random input; these are the cases it found, pinned."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers import assert_close_logits, cached_model, random_model, snapshot

from kvgpt import (
    AutoregressiveGenerator,
    CausalSelfAttention,
    CharTokenizer,
    DynamicKVCache,
    KVCacheManager,
    MiniGPTInferenceModel,
    ModelConfig,
    Sampler,
    StaticKVCache,
)
from kvgpt.attention import attend, causal_mask
from kvgpt.pretrained import load_pretrained, save_pretrained
from kvgpt.sampling import apply_repetition_penalty, apply_temperature, apply_top_p, row_generators
from kvgpt.tokenizer import GPT2Tokenizer
from kvgpt.validation import FP32, ArgumentTypeError, check_device

IDS = torch.tensor([[1, 2, 3, 4], [5, 6, 7, 8]])


def refused(call, *state, match: str, error=ValueError):
    """call() raises `error` matching `match`, and every object in `state` is exactly as before."""
    before = snapshot(*state)
    with pytest.raises(error, match=match):
        call()
    assert snapshot(*state) == before


def test_argument_type_error_is_both_type_and_value_error():
    assert issubclass(ArgumentTypeError, TypeError) and issubclass(ArgumentTypeError, ValueError)


def test_snapshot_sees_every_change():  # the comparison the refusal tests rely on cannot be blind
    model = cached_model()
    mgr = KVCacheManager(model.config, 2, capacity=8)
    before = snapshot(mgr)
    with torch.no_grad():
        model.prefill(IDS, mgr, torch.tensor([[0, 1, 1, 1], [1, 1, 1, 1]]))
    assert snapshot(mgr) != before
    s = Sampler(seed=0)
    before = snapshot(s)
    s.sample(torch.zeros(1, 5))
    assert snapshot(s) != before


# 1. silent wrong results ------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["static", "dynamic"])
def test_a_refused_prefill_leaves_no_padding_behind(kind):
    model = cached_model()
    mgr = KVCacheManager(model.config, 2, kind, capacity=3)
    mask = torch.tensor([[0, 1, 1, 1], [1, 1, 1, 1]])
    refused(lambda: model.prefill(IDS, mgr, mask), mgr, match="capacity=3")  # 4 tokens into 3 slots
    assert mgr.pad_lengths is None
    with torch.no_grad():  # the next call is not poisoned: it equals a fresh manager's
        out = model.prefill(IDS[:, :3], mgr)
        assert torch.equal(out, model.prefill(IDS[:, :3], KVCacheManager(model.config, 2, kind, capacity=3)))


@pytest.mark.parametrize("mask, match", [
    (torch.tensor([[0.5, 1, 1, 1], [1, 1, 1, 1]]), "dtype torch.float32"),  # 0.5 used to count as padding
    (torch.tensor([[1.0, 1, 1, 1], [1, 1, 1, 1]]), "dtype torch.float32"),
    (torch.tensor([[0, 1, 1], [1, 1, 1]]), r"shape \(2, 3\): must match the token ids' \(2, 4\)"),
    (torch.tensor([[0, 2, 2, 2], [1, 1, 1, 1]]), "contains 2"),
    (torch.tensor([[0, 0, 0, 0], [1, 1, 1, 1]]), "row 0 is all padding"),
    (torch.tensor([[1, 0, 1, 1], [1, 1, 1, 1]]), "left padding"),
    ([[0, 1, 1, 1], [1, 1, 1, 1]], "attention_mask"),
])
def test_masks_are_checked_against_the_ids(mask, match):
    model = cached_model()
    mgr = KVCacheManager(model.config, 2)
    refused(lambda: model.prefill(IDS, mgr, mask), mgr, match=match)
    with pytest.raises(ValueError, match=match):
        model(IDS, attention_mask=mask)


@pytest.mark.parametrize("ids", [[1.7, 0.2], [True], "12", torch.tensor([1.5]), {1, 2}, [np.float64(1.0)]])
def test_decoders_refuse_non_integer_ids(ids):
    with pytest.raises(TypeError, match="ids"):
        CharTokenizer(list("abc")).decode(ids)


def test_decoders_accept_numpy_and_tensor_ints():
    tok = CharTokenizer(list("abc"))
    assert tok.decode([np.int64(1), 2]) == tok.decode(torch.tensor([1, 2], dtype=torch.int32)) == "bc"


def _saved(tmp_path, **overrides):
    cfg = ModelConfig(vocab_size=5, n_layers=2, n_heads=2, d_model=8, block_size=16)
    directory = save_pretrained(random_model(cfg), CharTokenizer(list("abcde")), tmp_path / "m")
    if overrides:
        config = json.loads((directory / "config.json").read_text())
        (directory / "config.json").write_text(json.dumps({**config, **overrides}))
    return directory


def test_integer_weights_are_refused_not_cast(tmp_path):
    from safetensors.torch import load_file, save_file

    directory = _saved(tmp_path)
    sd = load_file(str(directory / "model.safetensors"))
    sd["final_layernorm.weight"] = torch.ones_like(sd["final_layernorm.weight"], dtype=torch.int64)
    save_file(sd, str(directory / "model.safetensors"))
    with pytest.raises(ValueError, match="non-floating keys.*final_layernorm.weight: torch.int64"):
        load_pretrained(directory)


# 2. accepted, then a crash deep in torch ---------------------------------------------------------------------

EXTREME_KNOBS = [dict(temperature=FP32.tiny), dict(temperature=1e-30), dict(temperature=FP32.max),
                 dict(top_p=5e-324), dict(top_p=1e-46), dict(repetition_penalty=FP32.tiny),
                 dict(repetition_penalty=FP32.max), dict(temperature=1e-20, repetition_penalty=1e-20, top_p=1e-40)]


@pytest.mark.parametrize("knobs", EXTREME_KNOBS)
def test_extreme_accepted_knobs_sample_finite_distributions(knobs):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 50, generator=g) * torch.tensor([[1.0], [1e4], [1e30], [3e38]])
    x[:, 10:] = float("-inf")  # masked tokens stay masked, however hot or penalised
    history = [[0, 1, 2], [3], list(range(10)), []]
    probs = Sampler(**knobs).probs(x, history)
    assert torch.isfinite(probs).all() and torch.allclose(probs.sum(-1), torch.ones(4))
    assert (probs[:, 10:] == 0).all()
    ids = Sampler(**knobs, seed=1).sample(x, history)
    assert (ids < 10).all()


def test_tiny_temperature_is_the_greedy_limit_and_huge_the_uniform_one():
    x = torch.tensor([[3e38, 2e38, 1.0, float("-inf")]])
    assert Sampler(temperature=FP32.tiny).probs(x).tolist() == [[1.0, 0.0, 0.0, 0.0]]
    hot = Sampler(temperature=FP32.max).probs(torch.tensor([[5.0, 1.0, -3.0, float("-inf")]]))
    assert torch.allclose(hot, torch.tensor([[1 / 3, 1 / 3, 1 / 3, 0.0]]))


def test_overflow_free_temperature_equals_plain_division_when_nothing_overflows():
    x = torch.randn(3, 20, generator=torch.Generator().manual_seed(2)) * 5
    for t in (0.01, 0.5, 0.99, 2.0):
        assert torch.equal(apply_temperature(x, t), x / t)  # bit-identical: stored outputs do not move
    huge = torch.tensor([[1e38, -1e38, 0.0]])
    out = apply_temperature(huge, 0.1)  # 1e39 overflows fp32: this row is shifted by its max first
    assert torch.equal(out, (huge - 1e38) / 0.1) and torch.isfinite(out[0, 0])


def test_penalty_saturates_at_the_dtype_range_and_keeps_masks():
    x = torch.tensor([[3e38, -3e38, float("-inf"), 1.0]])
    out = apply_repetition_penalty(x, [0, 1, 2], 1e-10)
    assert out.tolist() == [[FP32.max, (torch.tensor(-3e38) * 1e-10).item(), float("-inf"), 1.0]]
    out = apply_repetition_penalty(x, [0, 1, 2], FP32.max)
    assert out[0, 1] == -FP32.max and out[0, 2] == float("-inf")


def test_top_p_below_fp32_resolution_keeps_the_top_token():
    x = torch.randn(2, 30, generator=torch.Generator().manual_seed(3))
    out = apply_top_p(x, 5e-324)  # compares as 0 in fp32: every token would be dropped
    assert (torch.isfinite(out).sum(-1) == 1).all() and torch.equal(out.argmax(-1), x.argmax(-1))


@pytest.mark.parametrize("knobs, match", [
    (dict(temperature=1e-45), "temperature=1e-45"), (dict(temperature=1e300), "temperature=1e[+]300"),
    (dict(temperature=float("nan")), "temperature=nan"), (dict(repetition_penalty=1e-320), "repetition_penalty"),
    (dict(repetition_penalty=float("inf")), "repetition_penalty=inf"), (dict(top_p=1.0000001), "top_p"),
    (dict(seed=2**64), "seed=18446744073709551616"), (dict(seed=-1), "seed=-1"), (dict(seed=1.0), "seed=1.0"),
    (dict(seed=True), "seed=True"), (dict(top_k=np.float64(3)), "top_k"),
])
def test_knobs_outside_the_fp32_safe_range_are_refused(knobs, match):
    with pytest.raises(ValueError, match=match):
        Sampler(**knobs)


def test_seeds_cover_torch_generators_range_and_numpy_ints():
    for seed in (0, 2**64 - 1, np.int64(7), np.uint64(2**64 - 1)):
        s = Sampler(seed=seed)
        assert type(s.seed) is int and s.sample(torch.zeros(5)).shape == ()
    assert Sampler(seed=np.int64(7)).generators(1)[0].initial_seed() == 7
    with pytest.raises(ValueError, match="seed=18446744073709551616"):
        row_generators(2**64, 1)


@pytest.mark.parametrize("device, match", [("meta", "computes nothing"), ("cuda:7", "not usable"),
                                           ("toaster", "not a torch device"), (3, "device=3"), ("", "device=''")])
def test_devices_that_parse_but_cannot_run_are_refused(device, match):
    if device == "cuda:7" and torch.cuda.device_count() > 7:
        pytest.skip("this machine has a cuda:7")
    with pytest.raises(ValueError, match=match):
        check_device("device", device)
    with pytest.raises(ValueError, match=match):
        load_pretrained("shakespeare-char", device=device)
    if device != "meta":
        with pytest.raises(ValueError, match=match):
            KVCacheManager(cached_model().config, 1, device=device)


def test_a_meta_cache_counts_bytes_but_a_model_will_not_write_into_it():
    model = cached_model()
    mgr = KVCacheManager(model.config, 2, device="meta")  # chapter 04 sizes GPT-2's cache this way
    assert mgr.nbytes == 2 * 2 * 2 * 2 * 64 * 16 * 4
    refused(lambda: model.prefill(IDS, mgr, torch.tensor([[0, 1, 1, 1], [1, 1, 1, 1]])), mgr, match="on meta")


def test_sampler_generators_are_checked_before_any_draw():
    s, gens = Sampler(seed=0), row_generators(0, 2)
    x = torch.zeros(2, 5)
    refused(lambda: s.sample(x, generators=[gens[0], "g"]), s, *gens, match="generators")
    refused(lambda: s.sample(x, generators=gens[:1]), s, *gens, match="one per row")
    refused(lambda: s.sample(x, active=[True]), s, *gens, match="active")
    refused(lambda: s.sample(x, history=[[1], [9]]), s, *gens, match="history")
    refused(lambda: s.sample(x, history=[[1.5], [0]]), s, *gens, match="history row 0")


# 3. opaque errors ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["static", "dynamic"])
@pytest.mark.parametrize("other", [dict(n_layers=1), dict(n_layers=3), dict(n_heads=4), dict(d_model=64, n_heads=4)])
def test_a_cache_built_for_another_config_is_refused_before_any_layer_is_written(kind, other):
    model = cached_model()
    cfg = ModelConfig(**{**model.config.to_dict(), **other})
    mgr = KVCacheManager(cfg, 2, kind)
    refused(lambda: model.prefill(IDS, mgr), mgr, match="cache was built for")
    refused(lambda: model.forward_step(IDS[:, 0], 0, mgr), mgr, match="cache was built for")


def test_a_cache_of_another_dtype_is_refused_before_padding_is_set():
    model = cached_model()
    mgr = KVCacheManager(model.config, 2, dtype=torch.float64)
    mask = torch.tensor([[0, 1, 1, 1], [1, 1, 1, 1]])
    refused(lambda: model.prefill(IDS, mgr, mask), mgr, match="cache holds torch.float64")


@pytest.mark.parametrize("call, match", [
    (lambda m, c: m.prefill([[1, 2]], c), "token_ids=.*list.*tensor"),
    (lambda m, c: m.prefill(IDS.to(torch.int8), c), "int32 or int64"),
    (lambda m, c: m.prefill(IDS.to(torch.uint8), c), "int32 or int64"),
    (lambda m, c: m.prefill(IDS, "cache"), "cache="),
    (lambda m, c: m.prefill(IDS, c, last_only=1), "last_only=1"),
    (lambda m, c: m.prefill(torch.zeros(0, 3, dtype=torch.long), c), "B, T >= 1"),
    (lambda m, c: m.forward_step(5, 0, c), "next_ids=5"),
    (lambda m, c: m.forward_step(IDS[:, 0], True, c), "position=True"),
    (lambda m, c: m.forward_step(IDS[:, 0], 0.0, c), "position=0.0"),
    (lambda m, c: m.forward_step(IDS[:, 0], 0, None), "cache=None"),
])
def test_wrong_argument_types_are_named(call, match):
    model = cached_model()
    mgr = KVCacheManager(model.config, 2)
    refused(lambda: call(model, mgr), mgr, match=match)


@pytest.mark.parametrize("make, match", [
    (lambda: MiniGPTInferenceModel({"vocab_size": 5}), "config=.*ModelConfig"),
    (lambda: CausalSelfAttention(None), "config=None"),
    (lambda: KVCacheManager(object(), 1), "config="),
    (lambda: KVCacheManager(cached_model().config, True), "batch_size=True"),
    (lambda: KVCacheManager(cached_model().config, 1, capacity=True), "capacity=True"),
    (lambda: KVCacheManager(cached_model().config, 1, dtype=torch.int64), "floating"),
    (lambda: KVCacheManager(cached_model().config, 1, dtype="float99"), "dtype='float99'"),
    (lambda: ModelConfig(vocab_size=True, n_layers=1, n_heads=1, d_model=4, block_size=4), "vocab_size=True"),
    (lambda: ModelConfig.from_dict([1, 2]), "ModelConfig fields"),
    (lambda: StaticKVCache(1, 2, 8, 0), "capacity=0"),
    (lambda: StaticKVCache(1.0, 2, 8, 4), "batch_size=1.0"),
    (lambda: DynamicKVCache(capacity=-1), "capacity=-1"),
    (lambda: CharTokenizer(list("ab")).encode(["a", "b"]), r"text=\['a', 'b'\]"),
    (lambda: CharTokenizer(list("ab")).encode(None), "text=None"),
    (lambda: GPT2Tokenizer(""), "name_or_dir=''"),
    (lambda: DynamicKVCache().append([1], [1]), "k_new"),
])
def test_constructors_and_tokenizers_name_what_is_wrong(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_numpy_ints_are_ints_in_configs_and_managers():
    cfg = ModelConfig(vocab_size=np.int64(7), n_layers=np.int32(1), n_heads=2, d_model=8, block_size=np.int64(9))
    assert type(cfg.vocab_size) is int and json.dumps(cfg.to_dict())
    assert KVCacheManager(cfg, np.int64(2), capacity=np.int16(4)).capacity == 4


@pytest.mark.parametrize("kind", ["static", "dynamic"])
def test_appends_that_do_not_fit_write_nothing(kind):
    cache = StaticKVCache(1, 2, 8, 4) if kind == "static" else DynamicKVCache(capacity=4)
    ok = torch.zeros(1, 2, 1, 8)
    refused(lambda: cache.append(torch.zeros(1, 2, 3, 8), ok), cache, match="v_new")  # would broadcast
    refused(lambda: cache.append(torch.zeros(1, 2, 1, 8, dtype=torch.float64), ok), cache, match="v_new")
    refused(lambda: cache.append(ok.long(), ok.long()), cache, match="floating", error=TypeError)
    refused(lambda: cache.append(ok.numpy(), ok), cache, match="k_new", error=TypeError)
    cache.append(ok, ok)  # the first good append decides the layout
    refused(lambda: cache.append(torch.zeros(1, 3, 1, 8), torch.zeros(1, 3, 1, 8)), cache, match="does not fit")
    refused(lambda: cache.append(ok.double(), ok.double()), cache, match="does not fit")
    refused(lambda: cache.append(torch.zeros(1, 2, 4, 8), torch.zeros(1, 2, 4, 8)), cache, match="capacity=4")


def test_a_static_cache_refused_before_its_first_allocation_adopts_nothing():
    cache = StaticKVCache(1, 2, 8, 4)
    refused(lambda: cache.append(torch.zeros(1, 2, 1, 7, dtype=torch.float64), torch.zeros(1, 2, 1, 7,
            dtype=torch.float64)), cache, match="does not fit")
    assert cache._k is None  # no float64 buffers were allocated by the refused call


def test_manager_get_refuses_other_layers():
    mgr = KVCacheManager(cached_model().config, 1)
    for bad in (-1, 2, True, 1.0):
        with pytest.raises(ValueError, match="layer_idx"):
            mgr.get(bad)


@pytest.mark.parametrize("override", [dict(block_size=10**9), dict(n_layers=10**6), dict(d_model=16),
                                      dict(vocab_size=6)])
def test_loaders_check_the_weights_before_allocating_the_config(tmp_path, monkeypatch, override):
    directory = _saved(tmp_path, **override)
    if "vocab_size" in override:
        override["vocab_size"] = 5  # vocab.json must agree first; the weights are what disagree then
        (directory / "vocab.json").write_text(json.dumps(list("abcdef")))
    built = []
    monkeypatch.setattr("kvgpt.pretrained.MiniGPTInferenceModel", lambda c: built.append(c))
    with pytest.raises(ValueError, match="model.safetensors"):
        load_pretrained(directory)
    assert built == []  # refused from the file alone: block_size=10**9 would need 10**18 mask entries


@pytest.mark.parametrize("name", ["", "   ", None, 3])
def test_an_empty_model_name_is_not_the_current_directory(tmp_path, monkeypatch, name):
    _saved(tmp_path)
    monkeypatch.chdir(tmp_path / "m")  # a loadable model right here: "" must still not mean it
    with pytest.raises(ValueError, match="name="):
        load_pretrained(name)
    from kvgpt.hf import load_hf

    with pytest.raises(ValueError, match="name_or_dir="):
        load_hf(name if name is not None else "")


# 4. cost cliffs ----------------------------------------------------------------------------------------

def test_no_layer_keeps_a_block_size_squared_mask():
    cfg = ModelConfig(vocab_size=11, n_layers=2, n_heads=2, d_model=8, block_size=2**16)
    model = MiniGPTInferenceModel(cfg)  # a (2**16)**2 bool mask per layer would be 4 GiB each
    assert list(model.buffers()) == []
    weights = sum(p.numel() for p in model.parameters())
    assert weights < 2 * 2**16 * 8  # positions dominate: memory grows with block_size, not its square


@pytest.mark.parametrize("impl", ["manual", "sdpa"])
def test_on_demand_masks_give_the_same_logits_as_the_triangle(impl):
    model = cached_model(attn_impl=impl)
    with torch.no_grad():
        full = model(IDS)
        q, k, v = (torch.randn(1, 2, 5, 4, generator=torch.Generator().manual_seed(i)) for i in range(3))
        assert torch.equal(attend(q, k, v, None, impl, causal=True), attend(q, k, v, causal_mask(5, 5), impl))
        mgr = KVCacheManager(model.config, 2)
        model.prefill(IDS[:, :2], mgr)
        chunked = model.prefill(IDS[:, 2:], mgr)  # a later chunk builds causal_mask(2, 4) for this call
    assert_close_logits(chunked, full[:, 2:])


# 5. inconsistencies ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["static", "dynamic"])
def test_both_cache_kinds_take_and_honour_capacity_device_and_dtype(kind):
    model = cached_model()
    mgr = KVCacheManager(model.config, 2, kind, capacity=5, device="cpu", dtype=torch.float32)
    with torch.no_grad():
        model.prefill(IDS, mgr)
        model.forward_step(IDS[:, 0], 4, mgr)
        refused(lambda: model.forward_step(IDS[:, 0], 5, mgr), mgr, match="capacity=5")
    half = KVCacheManager(model.config, 2, kind, dtype=torch.float16)
    refused(lambda: half.get(0).append(torch.zeros(2, 2, 1, 16), torch.zeros(2, 2, 1, 16)), half,
            match="float16")


@pytest.mark.parametrize("kind", ["static", "dynamic"])
@pytest.mark.parametrize("first, then", [(torch.inference_mode, torch.no_grad), (torch.no_grad, torch.inference_mode),
                                         (torch.inference_mode, torch.inference_mode)])
def test_cache_kinds_behave_the_same_under_inference_mode_and_no_grad(kind, first, then):
    model = cached_model()
    mgr, ref = KVCacheManager(model.config, 2, kind), KVCacheManager(model.config, 2, kind)
    with first():
        model.prefill(IDS, mgr)
    with then():
        out = model.forward_step(IDS[:, 0], 4, mgr)
    with torch.no_grad():
        model.prefill(IDS, ref)
        assert torch.equal(out, model.forward_step(IDS[:, 0], 4, ref))


def test_a_list_of_0d_tensors_is_refused_as_one_prompt_not_read_as_a_batch():
    g = AutoregressiveGenerator(cached_model())
    refused(lambda: g.generate([torch.tensor(1), torch.tensor(2)], 2), g, match=r"prompt contains tensor\(1\)")
    assert len(g.generate(torch.tensor([1, 2]), 2)) == 4  # the (T,) tensor is the way to pass one


@pytest.mark.parametrize("prompt", [torch.tensor([[1, 2]], dtype=torch.uint8), torch.zeros(0, 3, dtype=torch.long),
                                    [torch.tensor([[1]])], "hello", 5])
def test_odd_prompts_are_refused_naming_the_prompt(prompt):
    g = AutoregressiveGenerator(cached_model())
    refused(lambda: g.generate(prompt, 2), g, match="prompt")


def test_a_refused_generate_leaves_the_generator_and_sampler_as_they_were():
    g, s = AutoregressiveGenerator(cached_model()), Sampler(seed=3)
    g.generate([1, 2], 3, s)
    s.sample(torch.zeros(1, 67))
    for bad in (dict(max_new_tokens=-1), dict(eos_token_id=1.5), dict(cache_kind="paged"), dict(max_new_tokens=10**9)):
        refused(lambda: g.generate(**{"prompt": [1, 2], "max_new_tokens": 3, "sampler": s, **bad}), g, s,
                match="max_new_tokens|eos_token_id|cache_kind")


def test_set_padding_only_before_the_first_chunk_and_never_from_floats():
    model = cached_model()
    mgr = KVCacheManager(model.config, 2)
    refused(lambda: mgr.set_padding(torch.tensor([[0.0, 1.0], [1.0, 1.0]])), mgr, match="dtype torch.float32")
    with torch.no_grad():
        model.prefill(IDS, mgr)
    refused(lambda: mgr.set_padding(torch.tensor([[0, 1], [1, 1]])), mgr, match="already holds 4 slots")


def test_gpt2_tokenizer_decode_checks_ids_against_a_sparse_vocabulary(tmp_path):
    pytest.importorskip("transformers")
    from test_tokenizer import _byte_encoder

    vocab = {c: i for i, c in enumerate(_byte_encoder().values())} | {"<|endoftext|>": 50256}  # chapter 09's
    (tmp_path / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (tmp_path / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    tok = GPT2Tokenizer(tmp_path)
    assert tok.vocab_size == 257 and tok.decode(tok.encode("hi") + [50256]) == "hi<|endoftext|>"
    for bad, error in (([50257], ValueError), ([-1], ValueError), ([1.5], TypeError), ("hi", TypeError)):
        with pytest.raises(error, match="token id|ids"):
            tok.decode(bad)
    with pytest.raises(TypeError, match="text="):
        tok.encode(b"hi")
