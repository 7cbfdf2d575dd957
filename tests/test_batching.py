"""Batched generation: left padding, per-row EOS and per-row seeds give exactly what each prompt gives alone."""

from __future__ import annotations

import pytest
import torch
from helpers import assert_close_logits, cached_model, gen
from hypothesis import given
from hypothesis import strategies as st

from kvgpt.batching import pad_prompts
from kvgpt.generation import AutoregressiveGenerator
from kvgpt.sampling import Sampler

V = 67  # cached_model's default vocab
prompts_st = st.lists(st.lists(st.integers(0, V - 1), min_size=1, max_size=16), min_size=1, max_size=4)


def test_pad_prompts_left_pads_and_masks():
    ids, mask = pad_prompts([[5, 6, 7], [8], [1, 2]], pad_id=9)
    assert ids.tolist() == [[5, 6, 7], [9, 9, 8], [9, 1, 2]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1], [0, 1, 1]]
    assert ids.dtype == mask.dtype == torch.long
    ids, mask = pad_prompts([torch.tensor([3, 4])])
    assert ids.tolist() == [[3, 4]] and mask.tolist() == [[1, 1]]


@pytest.mark.parametrize("bad", [[], [[1], []], [[1.5]], [[True]]])
def test_pad_prompts_rejects_bad_input(bad):
    with pytest.raises(ValueError, match="prompts"):
        pad_prompts(bad)


def assert_batch_equals_solo(g, prompts, n, **kw):
    batch, batch_logits = g.generate(prompts, n, return_logits=True, **kw)
    for b, prompt in enumerate(prompts):
        solo, solo_logits = g.generate(prompt, n, return_logits=True, **kw)
        assert batch[b] == solo
        assert batch_logits[b].shape == solo_logits.shape
        assert torch.isfinite(batch_logits[b]).all()
        assert_close_logits(batch_logits[b], solo_logits, "generate: batched vs alone logits (fp32)")


@given(prompts_st, st.integers(0, V - 1), st.sampled_from(["static", "dynamic", "uncached"]))
def test_batched_equals_one_by_one(prompts, pad, kind):
    kw = {"use_cache": False} if kind == "uncached" else {"cache_kind": kind}
    assert_batch_equals_solo(gen(), prompts, 6, pad_token_id=pad, **kw)


@given(prompts_st, st.randoms(use_true_random=False))
def test_row_order_permutes_the_outputs(prompts, rnd):
    g = gen()
    order = list(range(len(prompts)))
    rnd.shuffle(order)
    out = g.generate(prompts, 5)
    assert g.generate([prompts[i] for i in order], 5) == [out[i] for i in order]


@given(prompts_st, st.integers(0, 2**31), st.integers(0, V - 1))
def test_seeded_rows_sample_as_if_alone(prompts, seed, pad):
    g = gen()
    s = Sampler(temperature=1.2, top_k=30, top_p=0.9, repetition_penalty=1.3, seed=seed)
    batch = g.generate(prompts, 6, sampler=s, pad_token_id=pad)
    assert batch == [g.generate(p, 6, sampler=s) for p in prompts]  # whatever else is in the batch


def test_eos_per_row():
    g, prompts = gen(), [[3, 9, 4], [11], [20, 21, 22, 23, 24, 25, 26]]
    free = g.generate(prompts, 12)
    eos = free[0][3 + 2]  # row 0 produces it at its 3rd new token
    batch = g.generate(prompts, 12, eos_token_id=eos)
    stats = g.last_stats
    assert batch == [g.generate(p, 12, eos_token_id=eos) for p in prompts]
    assert batch[0] == free[0][: free[0].index(eos, 3) + 1]
    reasons = ["eos" if eos in row[len(p):] else "max_new_tokens" for row, p in zip(batch, prompts)]
    assert stats.stop_reasons == reasons
    assert stats.new_lengths == [len(r) - len(p) for r, p in zip(batch, prompts)]


def test_finished_rows_do_not_change_the_others_and_the_loop_ends():
    g, prompts = gen(), [[1, 2], [30, 31, 32, 33]]
    free = g.generate(prompts, 10)
    eos = free[0][2]  # row 0 ends at once (unless row 1 starts with it too)
    for kw in ({}, {"use_cache": False}, {"cache_kind": "dynamic"}):
        batch = g.generate(prompts, 10, eos_token_id=eos, pad_token_id=5, **kw)
        assert batch == [g.generate(p, 10, eos_token_id=eos, **kw) for p in prompts]
        assert batch[0] == [1, 2, eos]
    stream = list(g.stream(prompts, 10, eos_token_id=eos))
    assert stream[0][0] == eos and all(step[0] is None for step in stream[1:])
    assert [step[1] for step in stream] == batch[1][4:]
    both = g.generate(prompts, 10, eos_token_id=[free[0][2], free[1][4]])
    assert g.last_stats.stop_reasons == ["eos", "eos"] and len(both[1]) <= 5
    steps = list(g.stream(prompts, 10, eos_token_id=[free[0][2], free[1][4]]))
    assert len(steps) == max(g.last_stats.new_lengths) < 10  # every row done: the loop stopped


def test_a_finished_row_is_fed_the_pad_token():
    g, prompts = gen(), [[1, 2], [30, 31, 32, 33]]
    eos = g.generate(prompts[0], 1)[-1]
    fed = []
    hook = g.model.token_embedding.register_forward_hook(lambda mod, args, out: fed.append(args[0][:, -1].tolist()))
    try:
        out = g.generate(prompts, 6, eos_token_id=[eos], pad_token_id=5)
    finally:
        hook.remove()
    assert out[0] == [1, 2, eos] and len(fed) == 1 + (len(out[1]) - 4 - 1)  # prefill, then one call per step
    assert [step[0] for step in fed[1:]] == [eos] + [5] * (len(fed) - 2)  # after its EOS, row 0 gets the pad


def test_pad_equal_to_eos_is_never_counted():
    g, prompts = gen(), [[7], [1, 2, 3, 4, 5]]
    eos = g.generate(prompts[0], 1)[1]
    s = Sampler(temperature=0, repetition_penalty=2.0)  # a penalised pad would change row 0
    batch = g.generate(prompts, 8, sampler=s, eos_token_id=[66], pad_token_id=eos)
    assert batch == [g.generate(p, 8, sampler=s, eos_token_id=[66]) for p in prompts]


def test_low_precision_padded_rows_stay_finite():
    model = cached_model(block_size=32).to(torch.bfloat16)
    try:
        _, logits = AutoregressiveGenerator(model).generate([[1], list(range(16))], 4, return_logits=True)
        assert all(torch.isfinite(x).all() for x in logits)
    finally:
        model.float()  # cached_model is shared: give it back in fp32
