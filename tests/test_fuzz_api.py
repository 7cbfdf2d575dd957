"""Fuzzing the public API (issue 14): one argument at a time gets a random hostile value (any type, shape, dtype,
extreme or non-finite number) while the others stay valid. The property, for every entry point:

    the call returns a correct result, or raises ValueError/TypeError whose message names the argument,
    and then every cache, manager, sampler and torch.Generator involved is exactly as before (snapshot/compare).

Any other exception (IndexError, RuntimeError from deep inside torch, AttributeError...) fails the test.
Profile from conftest.py (derandomized), with FUZZ_EXAMPLES (tests/fuzzing.py) examples per test instead of 25: a hostile value is
cheap to try, and the cases issue 14 lists needed more than 25 draws to be found.
"""

from __future__ import annotations

import math

import pytest
import torch
from fuzzing import HOSTILE, V, fuzz, outcome, tensors
from helpers import assert_close_logits, cached_model
from hypothesis import given, settings
from hypothesis import strategies as st

from kvgpt import (
    AutoregressiveGenerator,
    CharTokenizer,
    DynamicKVCache,
    KVCacheManager,
    ModelConfig,
    Sampler,
    StaticKVCache,
)
from kvgpt.batching import pad_prompts
from kvgpt.pretrained import load_pretrained
from kvgpt.sampling import apply_repetition_penalty, apply_temperature, apply_top_k, apply_top_p, row_generators
from kvgpt.validation import FP32

MODEL = cached_model(vocab_size=V, n_layers=2, n_heads=2, d_model=32, block_size=16)
CFG = dict(vocab_size=7, n_layers=1, n_heads=2, d_model=8, block_size=16, dropout=0.0, attn_impl="sdpa")


@fuzz
@given(st.sampled_from(list(CFG)), HOSTILE)
def test_fuzz_model_config(field, value):
    cfg = outcome(lambda: ModelConfig(**{**CFG, field: value}), (field,))
    if cfg is not None:
        assert ModelConfig.from_dict(cfg.to_dict()) == cfg and all(type(getattr(cfg, f)) is int for f in
                                                                      ("vocab_size", "n_layers", "block_size"))


@fuzz
@given(st.sampled_from(["batch_size", "kind", "capacity", "device", "dtype"]), HOSTILE)
def test_fuzz_cache_manager(arg, value):
    kwargs = {"batch_size": 2, "kind": "static", "capacity": None, "device": None, "dtype": None, arg: value}
    mgr = outcome(lambda: KVCacheManager(MODEL.config, **kwargs), (arg,))
    if mgr is not None:
        assert len(mgr.layer_caches) == 2 and 1 <= mgr.capacity <= 16 and mgr.length == 0


@fuzz
@given(st.sampled_from(["static", "dynamic"]), st.one_of(HOSTILE, tensors(max_dims=4)),
       st.one_of(st.just("same"), HOSTILE), st.integers(0, 3))
def test_fuzz_cache_append(kind, k_new, v_new, prefilled):
    cache = StaticKVCache(2, 2, 4, capacity=6) if kind == "static" else DynamicKVCache(capacity=6)
    if prefilled:
        cache.append(torch.ones(2, 2, prefilled, 4), torch.ones(2, 2, prefilled, 4))
    v = k_new if isinstance(v_new, str) and v_new == "same" else v_new
    out = outcome(lambda: cache.append(k_new, v), ("k_new", "v_new", "capacity"), cache)
    if out is not None:
        stored = out[0][:, :, prefilled:]  # exactly what was appended (NaN too: values are not a cache's business)
        assert cache.length == prefilled + k_new.size(2) and torch.allclose(stored, k_new, 0, 0, equal_nan=True)


def _valid_prefill():
    return {"token_ids": torch.tensor([[1, 2, 3], [4, 5, 6]]), "cache": KVCacheManager(MODEL.config, 2),
            "attention_mask": torch.tensor([[0, 1, 1], [1, 1, 1]]), "last_only": False}


@fuzz
@given(st.sampled_from(["token_ids", "cache", "attention_mask", "last_only"]),
       st.one_of(HOSTILE, tensors(max_dims=2), st.builds(lambda b, k: KVCacheManager(MODEL.config, b, k),
                                                         st.integers(1, 3), st.sampled_from(["static", "dynamic"]))))
def test_fuzz_prefill(arg, value):
    call = {**_valid_prefill(), arg: value}
    state = [call["cache"]] if isinstance(call["cache"], KVCacheManager) else []
    names = (arg, "cache") if arg == "token_ids" else (arg,)  # a batch the cache does not have names both
    with torch.no_grad():
        out = outcome(lambda: MODEL.prefill(**call), names, *state)
        if out is not None:  # correct: the same logits as the cache-less forward
            ref = MODEL(call["token_ids"], attention_mask=call["attention_mask"], last_only=call["last_only"])
            assert_close_logits(out, ref)


@st.composite
def plausible_prefills(draw):
    """Near-valid prefill calls: random batch, length, id dtype and values, masks of random width and values,
    caches of random batch, kind, capacity and fill, so that both outcomes are common."""
    b, t = draw(st.integers(1, 3)), draw(st.integers(1, 6))
    dtype = draw(st.sampled_from([torch.int64, torch.int64, torch.int32, torch.int8, torch.float32]))
    ids = torch.tensor(draw(st.lists(st.integers(-1, V), min_size=b * t, max_size=b * t))).reshape(b, t).to(dtype)
    mask = None
    if draw(st.booleans()):
        w = draw(st.sampled_from([t, t, t, t - 1, t + 1]))
        pads = draw(st.lists(st.integers(0, max(w, 0)), min_size=b, max_size=b))
        rows = [[0] * p + [1] * (w - p) for p in pads]
        if draw(st.integers(0, 4)) == 0 and w > 0:  # a stray value: 2, or a hole in the padding
            rows[0][draw(st.integers(0, w - 1))] = draw(st.sampled_from([2, 0, 1]))
        mask = torch.tensor(rows, dtype=draw(st.sampled_from([torch.long, torch.bool, torch.int32, torch.float32])))
    cache, past = None, 0
    if draw(st.booleans()):
        cache = KVCacheManager(MODEL.config, draw(st.sampled_from([b, b, 1, 2])), draw(st.sampled_from(["static",
                               "dynamic"])), capacity=draw(st.integers(1, 16)))
        past = draw(st.integers(0, min(3, cache.capacity)))
        if past:
            with torch.no_grad():
                MODEL.prefill(torch.ones(cache.batch_size, past, dtype=torch.long), cache)
    return ids, cache, mask, past


@fuzz
@given(plausible_prefills())
def test_fuzz_prefill_plausible(call):
    ids, cache, mask, past = call
    state = [cache] if cache is not None else []
    with torch.no_grad():
        out = outcome(lambda: MODEL.prefill(ids, cache, mask), ("token_ids", "cache", "attention_mask", "block_size"),
                      *state)
        if out is not None:
            prefix = torch.ones(ids.size(0), past, dtype=torch.long)
            full_mask = None if mask is None else mask.long()
            ref = MODEL(torch.cat([prefix, ids.long()], 1), attention_mask=full_mask)[:, past:]
            assert_close_logits(out, ref)
            assert cache is None or cache.length == past + ids.size(1)


@fuzz
@given(st.sampled_from(["next_ids", "position", "cache"]), st.one_of(HOSTILE, tensors(max_dims=2)))
def test_fuzz_forward_step(arg, value):
    mgr = KVCacheManager(MODEL.config, 2, capacity=5)
    with torch.no_grad():
        MODEL.prefill(torch.tensor([[1, 2, 3], [4, 5, 6]]), mgr)
        call = {"next_ids": torch.tensor([7, 8]), "position": 3, "cache": mgr, arg: value}
        out = outcome(lambda: MODEL.forward_step(**call), (arg, "cache"), mgr)
        if out is not None:
            ids = call["next_ids"].reshape(2, 1)
            ref = MODEL(torch.cat([torch.tensor([[1, 2, 3], [4, 5, 6]]), ids], 1), last_only=True)
            assert mgr.length == 4
            assert_close_logits(out, ref)


GEN_ARGS = ["prompt", "max_new_tokens", "sampler", "use_cache", "cache_kind", "eos_token_id", "pad_token_id"]


@fuzz
@given(st.sampled_from(GEN_ARGS), HOSTILE)
def test_fuzz_generate(arg, value):
    g, s = AutoregressiveGenerator(MODEL), Sampler(temperature=0.9, seed=1)
    g.generate([1, 2], 2, s)  # some state to keep
    call = {"prompt": [1, 2], "max_new_tokens": 3, "sampler": s, "eos_token_id": None, arg: value}
    out = outcome(lambda: g.generate(**call), (arg,), g, s)
    if out is not None:
        rows = out if out and isinstance(out[0], list) else [out]
        assert all(isinstance(i, int) and 0 <= i < V for r in rows for i in r)
        assert all(len(r) <= 16 for r in rows) and g.last_stats is not None


ARCH = {"positions": "rope", "rope_theta": 10000.0, "norm": "rms", "norm_eps": 1e-5, "mlp": "swiglu",
        "mlp_hidden": None, "tie_embeddings": True, "bias": False}  # issue 21: the Llama-style choices


@fuzz
@given(st.sampled_from(list(ARCH)), HOSTILE)
def test_fuzz_model_config_architecture(field, value):
    cfg = outcome(lambda: ModelConfig(**{**CFG, **ARCH, field: value}), (field,))
    if cfg is not None:
        assert ModelConfig.from_dict(cfg.to_dict()) == cfg and cfg.hidden >= 1
        assert type(cfg.rope_theta) is float and type(cfg.norm_eps) is float


ROPE_MODEL = cached_model(vocab_size=V, n_layers=2, n_heads=2, d_model=32, block_size=16, arch="llama")


@fuzz
@given(st.sampled_from(["sinks", "window", "cache_kind"]), HOSTILE)
def test_fuzz_sinks_policy(arg, value):
    kwargs = {"sinks": 2, "window": 6, "cache_kind": "static", arg: value}
    gen = outcome(lambda: AutoregressiveGenerator(ROPE_MODEL, context_policy="sinks", sinks=kwargs["sinks"],
                                                  window=kwargs["window"]), (arg,))
    if gen is not None:
        out = outcome(lambda: gen.generate([1, 2, 3], 20, cache_kind=kwargs["cache_kind"]), (arg,), gen)
        assert out is None or (len(out) == 23 and all(0 <= i < V for i in out))


KNOBS = ["temperature", "top_k", "top_p", "repetition_penalty", "seed"]


@fuzz
@given(st.sampled_from(KNOBS), HOSTILE)
def test_fuzz_sampler_knobs(knob, value):
    s = outcome(lambda: Sampler(**{knob: value}), (knob,))
    if s is not None:  # whatever was accepted samples without a crash
        x = torch.randn(2, V, generator=torch.Generator().manual_seed(0)) * 1e30
        ids = s.sample(x, history=[[1, 2], [3]])
        assert ids.shape == (2,) and ((0 <= ids) & (ids < V)).all()


def _log_uniform(low, high):
    return st.floats(math.log(low), math.log(high)).map(math.exp)


@fuzz
@given(temperature=st.one_of(st.just(0.0), _log_uniform(FP32.tiny, FP32.max)), top_k=st.none() | st.integers(0, 99),
       top_p=st.none() | _log_uniform(5e-324, 1.0), penalty=_log_uniform(FP32.tiny, FP32.max),
       scale=st.sampled_from([1.0, 1e10, 1e30, 3e38]), dtype=st.sampled_from([torch.float32, torch.float16,
                                                                                torch.bfloat16]),
       masked=st.integers(0, V - 1))
def test_fuzz_every_allowed_knob_gives_a_finite_distribution(temperature, top_k, top_p, penalty, scale, dtype, masked):
    x = (torch.rand(3, V, generator=torch.Generator().manual_seed(masked)) * 2 - 1) * scale
    x = x.clamp(-torch.finfo(dtype).max, torch.finfo(dtype).max).to(dtype)
    x[:, :masked] = float("-inf")  # every row keeps V - masked finite entries
    s = Sampler(temperature=min(temperature, FP32.max), top_k=top_k, top_p=min(top_p, 1.0) if top_p else None,
                repetition_penalty=min(penalty, FP32.max), seed=0)
    probs = s.probs(x, history=[[masked], list(range(V)), []])
    assert torch.isfinite(probs).all() and torch.allclose(probs.sum(-1), torch.ones(3))
    assert (probs[:, :masked] == 0).all()
    ids = s.sample(x, history=[[masked], list(range(V)), []])
    assert (probs[torch.arange(3), ids] > 0).all()


@fuzz
@given(st.sampled_from(["logits", "history", "generators", "active"]), HOSTILE)
def test_fuzz_sample_call(arg, value):
    s, gens = Sampler(temperature=0.7, repetition_penalty=1.2, seed=0), row_generators(0, 2)
    s.sample(torch.zeros(2, V))  # the sampler's own generators exist and carry state
    call = {"logits": torch.randn(2, V, generator=torch.Generator().manual_seed(1)), "history": None,
            "generators": gens, "active": None, arg: value}
    names = (arg, "generators") if arg == "logits" else (arg,)  # a batch the generators do not fit names them
    out = outcome(lambda: s.sample(**call), names, s, *gens)
    if out is not None:
        assert out.shape == call["logits"].shape[:-1] and ((0 <= out) & (out < call["logits"].size(-1))).all()


@fuzz
@given(st.sampled_from([apply_temperature, apply_top_k, apply_top_p, apply_repetition_penalty]),
       st.sampled_from(["logits", "knob"]), st.one_of(HOSTILE, tensors(max_dims=2)))
def test_fuzz_filters(fn, arg, value):
    knob = {apply_temperature: 0.5, apply_top_k: 3, apply_top_p: 0.5, apply_repetition_penalty: 1.5}[fn]
    name = {apply_temperature: "temperature", apply_top_k: "top_k", apply_top_p: "top_p",
            apply_repetition_penalty: "repetition_penalty"}[fn]
    logits = torch.randn(2, 9, generator=torch.Generator().manual_seed(0)) if arg == "knob" else value
    knob = value if arg == "knob" else knob
    call = (lambda: fn(logits, [[1], [2]], knob)) if fn is apply_repetition_penalty else (lambda: fn(logits, knob))
    out = outcome(call, ("logits", name, "history"))
    if out is not None:
        assert out.shape == logits.shape and not out.isnan().any() and (out.isfinite().sum(-1) >= 1).all()


TOK = CharTokenizer(list("abcdefg"))


@fuzz
@given(st.sampled_from(["encode", "decode"]), st.one_of(HOSTILE, st.text(alphabet="abcdefgz", max_size=5)))
def test_fuzz_tokenizer(method, value):
    out = outcome(lambda: getattr(TOK, method)(value), ("text", "ids", "character", "token id"))
    if out is not None and method == "encode":
        assert TOK.decode(out) == value
    if out is not None and method == "decode":
        ids = value.reshape(-1).tolist() if isinstance(value, torch.Tensor) else [int(i) for i in value]
        assert out == "".join(TOK.chars[i] for i in ids)


@fuzz
@given(st.sampled_from(["prompts", "pad_id"]), HOSTILE)
def test_fuzz_pad_prompts(arg, value):
    call = {"prompts": [[1, 2], [3]], "pad_id": 0, arg: value}
    out = outcome(lambda: pad_prompts(**call), ("prompts", "pad_id", "prompt"))
    if out is not None:
        ids, mask = out
        assert ids.shape == mask.shape and (mask.sum(1) == torch.tensor([len(p) for p in call["prompts"]])).all()


@pytest.mark.filterwarnings("ignore::UserWarning")
@settings(max_examples=50)  # each accepted example loads a model
@given(st.sampled_from(["name", "device", "dtype"]), HOSTILE)
def test_fuzz_load_pretrained(arg, value):
    call = {"name": "shakespeare-char", "device": "cpu", "dtype": None, arg: value}
    out = outcome(lambda: load_pretrained(**call), (arg, "model", "config.json", "file not found"),
                  also=(FileNotFoundError,))
    if out is not None:
        model, tok = out
        assert model.config.vocab_size == tok.vocab_size


def _valid_paged():
    from kvgpt.paged_attention import paged_metadata

    g = torch.Generator().manual_seed(0)
    md = paged_metadata([5, 0], [1, 3], [[2, 0], [1]], block_size=4, num_blocks=3)
    return {"q": torch.randn(1, 4, 4, 8, generator=g), "k_pool": torch.randn(3, 4, 2, 8, generator=g),
            "v_pool": torch.randn(3, 4, 2, 8, generator=g), "block_tables": md.block_tables,
            "query_row": md.query_row, "query_pos": md.query_pos, "impl": "auto"}


PAGED_GROUPS = {"q": ("q", "k_pool", "v_pool"), "k_pool": ("k_pool", "v_pool", "q"), "v_pool": ("v_pool",),
                "block_tables": ("block_tables", "query_row", "query_pos"), "query_row": ("query_row", "query_pos"),
                "query_pos": ("query_pos",), "impl": ("impl",)}


@fuzz
@given(st.sampled_from(sorted(PAGED_GROUPS)), st.one_of(HOSTILE, tensors(max_dims=4)))
def test_fuzz_paged_attention(arg, value):
    """Hostile values for paged attention (issue 23): refused naming the argument (or the one it contradicts),
    the pools untouched; whatever is accepted equals the gather reference."""
    from kvgpt.paged_attention import paged_attention, paged_attention_gather

    call = {**_valid_paged(), arg: value}
    from helpers import _tensor_state  # the bytes of every tensor argument: a call must not write into them

    before = {n: _tensor_state(v) for n, v in call.items() if isinstance(v, torch.Tensor)}
    out = outcome(lambda: paged_attention(**call), PAGED_GROUPS[arg])
    assert all(_tensor_state(call[n]) == state for n, state in before.items())
    if out is not None:
        args = [call[n] for n in ("q", "k_pool", "v_pool", "block_tables", "query_row", "query_pos")]
        assert (out - paged_attention_gather(*args)).abs().max() <= 1e-5
