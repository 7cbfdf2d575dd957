"""Logits processors and the Sampler: hand-computed cases, transformers parity, properties, bad inputs, seeding."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from kvgpt.sampling import (
    Sampler,
    apply_repetition_penalty,
    apply_temperature,
    apply_top_k,
    apply_top_p,
    greedy,
    row_generators,
    sample_from_probs,
    seen_mask,
)

hf = pytest.importorskip("transformers.generation.logits_process")  # test-only dependency

PROCESSORS = [
    lambda x: apply_repetition_penalty(x, [[0, 0]] * x.size(0), 1.3),
    lambda x: apply_temperature(x, 0.7),
    lambda x: apply_temperature(x, 0),
    lambda x: apply_top_k(x, 3),
    lambda x: apply_top_p(x, 0.6),
]

def kept(x: torch.Tensor) -> list[int]:
    """Indices of the entries a filter left finite (1-D)."""
    return torch.isfinite(x).nonzero().flatten().tolist()


def logits_of(probs) -> torch.Tensor:
    return torch.log(torch.tensor([probs]))  # (1, V)


# ---------------------------------------------------------------- hand-computed cases


@pytest.mark.parametrize("probs, p, expected", [
    ([0.3, 0.1, 0.1, 0.5], 0.8, [0, 3]),  # transformers' LP vectors: the crossing token (0.3) is kept
    ([0.15, 0.3, 0.3, 0.25], 0.8, [1, 2, 3]),
    ([0.1, 0.2, 0.3, 0.4], 0.7, [2, 3]),  # llama.cpp's vectors
    ([0.1, 0.2, 0.3, 0.4], 0.8, [1, 2, 3]),
    ([0.1, 0.2, 0.3, 0.4], 0.3, [3]),
    ([0.1, 0.2, 0.3, 0.4], 1.0, [0, 1, 2, 3]),
    ([0.1, 0.2, 0.3, 0.4], 1e-8, [3]),
    ([0.25, 0.25, 0.25, 0.25], 0.5, [0, 1]),  # ties at the boundary: lowest ids first
])
def test_top_p_hand_cases(probs, p, expected):
    assert kept(apply_top_p(logits_of(probs), p)[0]) == expected


def test_top_k_ramp_and_ties():
    ramp = torch.arange(10.0)[None]  # (1, 10)
    assert kept(apply_top_k(ramp, 3)[0]) == [7, 8, 9]
    assert torch.equal(apply_top_k(ramp, 10), ramp) and torch.equal(apply_top_k(ramp, 99), ramp)
    assert torch.equal(apply_top_k(ramp, 0), ramp) and torch.equal(apply_top_k(ramp, None), ramp)
    tied = torch.tensor([[1.0, 3.0, 3.0, 3.0, 0.0]])
    assert kept(apply_top_k(tied, 1)[0]) == [1]  # exactly k: ties go to the lowest id
    assert kept(apply_top_k(tied, 2)[0]) == [1, 2]
    assert kept(apply_top_k(tied, 4)[0]) == [0, 1, 2, 3]


def test_temperature_hand_cases():
    x = torch.tensor([[1.0, 2.0, 4.0]])
    assert torch.allclose(apply_temperature(x, 2.0), x / 2)
    uniform = torch.zeros(1, 5)
    assert torch.equal(apply_temperature(uniform, 0.3), uniform)  # uniform stays uniform
    p = x.softmax(-1)
    assert apply_temperature(x, 0.5).softmax(-1).max() > p.max() > apply_temperature(x, 2.0).softmax(-1).max()
    zero = apply_temperature(torch.tensor([[1.0, 5.0, 5.0, 2.0]]), 0)  # 0 = greedy: the first argmax alone
    assert kept(zero[0]) == [1] and zero[0, 1] == 5.0


def test_repetition_penalty_hand_case():
    x = torch.tensor([[2.0, -2.0, 1.0, 0.5]])
    out = apply_repetition_penalty(x, [0, 1, 1, -1], 2.0)  # token 1 twice: penalised once; -1 = padding, ignored
    assert torch.equal(out, torch.tensor([[1.0, -4.0, 1.0, 0.5]]))
    assert torch.equal(apply_repetition_penalty(x, [0, 1], 1.0), x)
    mask = torch.tensor([[True, True, False, False]])
    assert torch.equal(apply_repetition_penalty(x, mask, 2.0), out)  # a (B, V) seen mask works too
    assert torch.equal(apply_repetition_penalty(x[0], [0, 1], 2.0), out[0])  # (V,) logits


def test_seen_mask_rows_and_errors():
    m = seen_mask([[0, 2], [1, -1, -1]], 4, 2)
    assert m.tolist() == [[True, False, True, False], [False, True, False, False]]
    assert seen_mask(torch.tensor([[-1, -1]]), 4).sum() == 0
    with pytest.raises(ValueError, match="history"):
        seen_mask([0, 4], 4)
    with pytest.raises(ValueError, match="history"):
        seen_mask([[0], [1]], 4, 3)


def test_greedy_first_argmax_and_top_k_1_equals_greedy_on_ties():
    x = torch.tensor([[0.0, 7.0, 7.0, 7.0], [1.0, 1.0, 0.0, 1.0]])
    assert greedy(x).tolist() == [1, 0]
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        for seed in range(8):
            s = Sampler(temperature=1.3, top_k=1, seed=seed)
            assert s.sample(x.to(dtype)).tolist() == [1, 0]
            assert Sampler(temperature=0, seed=seed).sample(x.to(dtype)).tolist() == [1, 0]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_tiny_top_p_keeps_one_in_low_precision(dtype):
    x = torch.randn(3, 50, generator=torch.Generator().manual_seed(0)).to(dtype) * 10
    out = apply_top_p(x, 1e-8)
    assert out.dtype == dtype and (torch.isfinite(out).sum(-1) == 1).all()
    probs = Sampler(top_p=1e-8).probs(x)
    assert probs.dtype == torch.float32 and torch.equal(probs.argmax(-1), x.float().argmax(-1))


def test_pipeline_order_equals_steps_one_by_one():
    x = torch.randn(2, 30, generator=torch.Generator().manual_seed(1)) * 3
    hist = [[1, 2, 3], [4, 4]]
    s = Sampler(temperature=0.6, top_k=12, top_p=0.7, repetition_penalty=1.4)
    by_hand = apply_top_p(apply_top_k(apply_temperature(apply_repetition_penalty(x, hist, 1.4), 0.6), 12), 0.7)
    assert torch.equal(s.process(x, hist), by_hand)
    assert torch.allclose(s.probs(x, hist), by_hand.softmax(-1))
    assert torch.equal(s.temperature(x), apply_temperature(x, 0.6)) and torch.equal(s.top_k(x, 2), apply_top_k(x, 2))
    assert torch.equal(s.top_p(x), apply_top_p(x, 0.7)) and torch.equal(s.greedy(x), x.argmax(-1))


def test_top_p_sees_the_top_k_survivors_only():
    x = logits_of([0.4, 0.3, 0.2, 0.1])
    # top-k first: [.4, .3] renormalise to [.57, .43], so p=0.5 is reached by the first alone
    assert kept(Sampler(top_k=2, top_p=0.5).process(x)[0]) == [0]
    assert kept(apply_top_p(x, 0.5)[0]) == [0, 1]  # the other order would keep two
    hf_pipeline = hf.TopPLogitsWarper(0.5)(None, hf.TopKLogitsWarper(2)(None, x))
    assert kept(hf_pipeline[0]) == [0]


# ---------------------------------------------------------------- transformers parity


@pytest.mark.parametrize("seed", range(5))
def test_matches_transformers_processors(seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(4, 97, generator=g) * 4  # continuous: no ties, so top-k tie rules do not differ
    ids = torch.randint(0, 97, (4, 12), generator=g)
    for t in (0.3, 1.0, 2.5):
        assert torch.equal(apply_temperature(x, t), hf.TemperatureLogitsWarper(t)(ids, x))
    for k in (1, 5, 50, 97, 200):
        assert torch.equal(apply_top_k(x, k), hf.TopKLogitsWarper(k)(ids, x))
    for p in (0.05, 0.5, 0.9, 0.999, 1.0):
        assert torch.equal(torch.isfinite(apply_top_p(x, p)), torch.isfinite(hf.TopPLogitsWarper(p)(ids, x)))
    for r in (0.5, 1.0, 1.3, 3.0):
        assert torch.allclose(apply_repetition_penalty(x, ids, r), hf.RepetitionPenaltyLogitsProcessor(r)(ids, x))


def test_documented_differences_from_transformers():
    tied = torch.tensor([[1.0, 3.0, 3.0, 3.0, 0.0]])
    assert kept(hf.TopKLogitsWarper(1)(None, tied)[0]) == [1, 2, 3]  # transformers keeps every tie at the k-th value
    assert kept(apply_top_k(tied, 1)[0]) == [1]  # we keep exactly k, so top_k=1 is greedy
    with pytest.raises(ValueError):
        hf.TemperatureLogitsWarper(0.0)  # transformers: use do_sample=False
    assert kept(apply_temperature(tied, 0)[0]) == [1]  # we: temperature 0 is greedy
    with pytest.raises(ValueError):
        hf.RepetitionPenaltyLogitsProcessor(1)  # transformers wants a float
    assert torch.equal(apply_repetition_penalty(tied, [1], 1), tied)  # we accept any real number > 0
    hf.TopPLogitsWarper(float("nan"))  # transformers accepts NaN; we raise (see test_bad_knobs)


# ---------------------------------------------------------------- properties

finite = st.floats(-50, 50, allow_nan=False, width=32)


@given(st.lists(finite, min_size=1, max_size=40, unique=True), st.integers(1, 45))
def test_top_k_property(values, k):
    x = torch.tensor([values])
    keep = kept(apply_top_k(x, k)[0])
    assert len(keep) == min(k, len(values)) and int(x.argmax()) in keep
    assert set(keep) <= set(kept(apply_top_k(x, k + 1)[0]))  # grows with k
    assert min(values[i] for i in keep) >= max([v for i, v in enumerate(values) if i not in keep], default=-math.inf)


@given(st.lists(finite, min_size=1, max_size=40), st.integers(1, 45))
def test_top_k_keeps_exactly_k_even_with_ties(values, k):
    assert len(kept(apply_top_k(torch.tensor([values]), k)[0])) == min(k, len(values))


@given(st.lists(finite, min_size=1, max_size=40), st.floats(1e-6, 1.0))
def test_top_p_property(values, p):
    x = torch.tensor([values])
    keep = kept(apply_top_p(x, p)[0])
    probs = x[0].double().softmax(-1)
    mass = sorted(probs[keep].tolist(), reverse=True)
    assert keep and int(x.argmax()) in keep
    assert sum(mass) >= p - 1e-5  # reaches p ...
    assert sum(mass[:-1]) < p + 1e-5  # ... and is the shortest such prefix
    assert min(probs[keep]) >= max([probs[i] for i in range(len(values)) if i not in keep], default=0) - 1e-7
    assert set(keep) <= set(kept(apply_top_p(x, min(1.0, p * 1.5))[0]))  # grows with p


@given(st.lists(finite, min_size=2, max_size=30), st.lists(st.integers(0, 29), max_size=10), st.floats(1.0, 5.0))
def test_repetition_penalty_property(values, history, r):
    x = torch.tensor([values])
    history = [i for i in history if i < len(values)]
    out = apply_repetition_penalty(x, [history], r)
    for i in range(len(values)):  # a seen logit never goes up; an unseen one never moves
        assert out[0, i] <= x[0, i] if i in history else out[0, i] == x[0, i]
    assert torch.equal(out, apply_repetition_penalty(x, [history * 2], r))  # counted once per token


@given(st.lists(finite, min_size=1, max_size=40), st.floats(1e-3, 100))
def test_temperature_never_moves_the_argmax(values, t):
    x = torch.tensor([values])
    out = apply_temperature(x, t)
    assert out[0, x.argmax()] == out.max()


@given(st.lists(finite, min_size=1, max_size=30), st.integers(0, 4), st.sampled_from([torch.float32, torch.float16]))
def test_processors_pure_and_never_empty(values, which, dtype):
    x = torch.tensor([values, values[::-1]]).to(dtype)
    x[0, 0] = -math.inf if len(values) > 1 else x[0, 0]  # masked entries are allowed
    before = x.clone()
    out = PROCESSORS[which](x)
    assert torch.equal(x, before)  # input untouched
    assert out.shape == x.shape and out.dtype == dtype
    assert torch.isfinite(out).any(-1).all()


@given(st.lists(finite, min_size=2, max_size=30), st.floats(0.05, 3), st.integers(0, 8), st.floats(0.05, 1),
       st.floats(0.5, 3), st.integers(0, 2**31))
def test_sampled_token_is_always_kept(values, t, k, p, r, seed):
    s = Sampler(temperature=t, top_k=k, top_p=p, repetition_penalty=r, seed=seed)
    x = torch.tensor([values])
    allowed = kept(s.process(x, [[0, 1]])[0])
    assert all(int(s.sample(x, [[0, 1]])) in allowed for _ in range(5))


def test_sampling_statistics_match_filtered_softmax():
    x = torch.randn(1, 12, generator=torch.Generator().manual_seed(3)) * 2
    s = Sampler(temperature=0.8, top_k=8, top_p=0.95, repetition_penalty=1.2, seed=0)
    probs = s.probs(x, [[0, 5]])  # (1, V)
    n, g = 20_000, torch.Generator().manual_seed(0)
    draws = sample_from_probs(probs.expand(n, -1), [g] * n)  # one stream, 20k draws
    freq = torch.bincount(draws, minlength=12).double()
    assert set(draws.unique().tolist()) <= set(kept(probs[0] > 0))
    assert (freq / n - probs[0].double()).abs().max() < 0.01
    nz = probs[0] > 0
    chi2 = ((freq[nz] - n * probs[0, nz]) ** 2 / (n * probs[0, nz])).sum()
    dof = torch.tensor((int(nz.sum()) - 1) / 2, dtype=torch.float64)
    assert torch.special.gammaincc(dof, chi2 / 2) > 1e-3  # chi-square p-value


# ---------------------------------------------------------------- bad knobs and bad logits

BAD_KNOBS = [("temperature", v) for v in (-0.1, float("nan"), float("inf"), "1", True, None)] + \
    [("top_k", v) for v in (-1, 1.5, True, "3")] + \
    [("top_p", v) for v in (0, -0.1, 1.1, float("nan"), float("inf"), "0.5", True)] + \
    [("repetition_penalty", v) for v in (0, -1.0, float("nan"), float("inf"), None, "1")] + \
    [("seed", v) for v in (-1, 1.5, "0", True)]
APPLY = {"temperature": apply_temperature, "top_k": apply_top_k, "top_p": apply_top_p,
         "repetition_penalty": lambda x, v: apply_repetition_penalty(x, [0], v)}


@pytest.mark.parametrize("knob, value", BAD_KNOBS)
def test_bad_knobs_raise_naming_the_knob(knob, value):
    with pytest.raises(ValueError, match=knob):
        Sampler(**{knob: value})
    if knob in APPLY:
        with pytest.raises(ValueError, match=knob):
            APPLY[knob](torch.zeros(1, 4), value)


BAD_LOGITS = {
    "NaN": torch.tensor([[0.0, float("nan"), 1.0]]),
    r"\+inf": torch.tensor([[0.0, float("inf"), 1.0]]),
    "all -inf": torch.tensor([[0.0, 1.0, 2.0], [float("-inf")] * 3]),
    "shape": torch.zeros(1, 1, 3),
}
CALLS = {
    "greedy": greedy, "temperature": lambda x: apply_temperature(x, 1.0), "top_k": lambda x: apply_top_k(x, 2),
    "top_p": lambda x: apply_top_p(x, 0.5), "penalty": lambda x: apply_repetition_penalty(x, [0], 1.2),
    "sample": Sampler(seed=0).sample, "probs": Sampler().probs, "greedy_sampler": Sampler(temperature=0).sample,
}


@pytest.mark.parametrize("what", BAD_LOGITS)
@pytest.mark.parametrize("call", CALLS)
def test_bad_logits_raise_clearly(what, call):
    with pytest.raises(ValueError, match=f"logits.*{what}" if what != "shape" else "logits"):
        CALLS[call](BAD_LOGITS[what])


def test_greedy_accepts_huge_finite_logits_whose_sum_overflows():
    x = torch.full((3, 5), -1.0)
    x[:, 2] = 3e38  # finite, but three of them sum to +inf: the one-sync fast path must not reject them
    assert greedy(x).tolist() == [2, 2, 2]


def test_masked_minus_inf_is_fine():
    x = torch.tensor([[float("-inf"), 1.0, 2.0, float("-inf")]])
    s = Sampler(temperature=0.9, top_k=3, top_p=0.9, seed=0)
    assert all(int(s.sample(x)) in (1, 2) for _ in range(20))


# ---------------------------------------------------------------- seeding


def test_same_seed_same_tokens_and_no_global_rng():
    x = torch.randn(3, 40, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(123)
    global_state = torch.get_rng_state()
    a = [Sampler(temperature=1.5, seed=7).sample(x) for _ in range(3)]
    assert all(torch.equal(a[0], b) for b in a)
    stream = Sampler(temperature=1.5, seed=7)
    draws = torch.stack([stream.sample(x) for _ in range(20)])  # the sampler's own stream carries on
    assert torch.equal(draws[0], a[0]) and len({tuple(d.tolist()) for d in draws}) > 1
    other = torch.stack([Sampler(temperature=1.5, seed=8).sample(x) for _ in range(1)])
    assert torch.equal(torch.get_rng_state(), global_state)  # the global RNG was never touched
    assert other.shape == (1, 3)


def test_each_row_draws_as_if_alone():
    x = torch.randn(3, 40, generator=torch.Generator().manual_seed(0)) * 0.5  # flat: draws vary
    s = Sampler(temperature=1.0, seed=11)
    batch = s.sample(x, generators=s.generators(3))
    alone = [int(s.sample(x[b : b + 1], generators=s.generators(1))[0]) for b in range(3)]
    assert batch.tolist() == alone


def test_one_generator_per_row_is_required():
    with pytest.raises(ValueError, match="generators"):
        sample_from_probs(torch.full((2, 3), 1 / 3), row_generators(0, 1))


def test_inactive_rows_are_not_drawn():
    gens = row_generators(5, 2)
    state = gens[1].get_state()
    out = sample_from_probs(torch.full((2, 6), 1 / 6), gens, active=[True, False])
    assert torch.equal(gens[1].get_state(), state) and out[1] == 0  # row 1 finished: no draw
    assert not torch.equal(gens[0].get_state(), state)


def test_greedy_sampler_does_not_advance_generators():
    gens = row_generators(5, 1)
    state = gens[0].get_state()
    Sampler(temperature=0, repetition_penalty=1.5).sample(torch.randn(1, 9), [[1]], gens)
    assert torch.equal(gens[0].get_state(), state)


def test_repr_names_the_knobs():
    assert repr(Sampler(top_k=5, seed=1)) == (
        "Sampler(temperature=1.0, top_k=5, top_p=None, repetition_penalty=1.0, seed=1)")
