"""The fuzzing toolkit shared by tests/test_fuzz_*.py (issue 14, Part II in issue 22): hostile values of any type,
shape, dtype and extreme, and `outcome`, the one property every public entry point is held to:

    the call returns a correct result, or raises ValueError/TypeError whose message names the argument,
    and then every cache, manager, engine, sampler and torch.Generator involved is exactly as before.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from helpers import snapshot
from hypothesis import event, settings
from hypothesis import strategies as st

from kvgpt.validation import FP32

FUZZ_EXAMPLES = 100
fuzz = settings(max_examples=FUZZ_EXAMPLES)
V = 67  # the fuzzed models' vocabulary
DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int8, torch.uint8, torch.int16,
          torch.int32, torch.int64, torch.bool]
EXTREMES = [0.0, -0.0, 5e-324, 1e-45, FP32.tiny, FP32.max, 3.5e38, 1e300, float("nan"), float("inf"), -float("inf")]


@st.composite
def tensors(draw, max_dims=3):
    """A small tensor of any dtype and shape (dims 0..max_dims, sizes 0..5), values near the id range or extreme."""
    shape = draw(st.lists(st.integers(0, 5), max_size=max_dims))
    dtype = draw(st.sampled_from(DTYPES))
    n = math.prod(shape)
    if dtype.is_floating_point:
        values = draw(st.lists(st.one_of(st.floats(-100, 100), st.sampled_from(EXTREMES)), min_size=n, max_size=n))
        return torch.tensor(values, dtype=torch.float64).reshape(shape).to(dtype)
    values = draw(st.lists(st.integers(-3, 70), min_size=n, max_size=n))
    return torch.tensor(values, dtype=torch.int64).reshape(shape).to(dtype)


HOSTILE = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.sampled_from([0, 1, -1, 2**63, 2**64, 2**64 - 1]),
    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from(EXTREMES),
    st.text(max_size=3), st.lists(st.integers(-3, 70), max_size=4), st.lists(st.lists(st.integers(-1, 70), max_size=3),
                                                                            max_size=3),
    st.builds(np.int64, st.integers(-(2**63), 2**63 - 1)), st.builds(np.float32, st.floats(width=32)),
    tensors(), st.sampled_from(["cpu", "meta", "cuda", "toaster", "", "static", "sdpa", "float32", "int64"]),
    st.sampled_from([object(), torch.float16, torch.int8, torch.device("meta"), {}, (1, 2), [[]], [torch.tensor(1)]]),
)


def outcome(call, names: tuple, *state, also=()):
    """call() -> its result, or None after a ValueError/TypeError whose message names one of `names`;
    either way a refusal must leave `state` exactly as it was. Other exceptions propagate (a failed example)."""
    before = snapshot(*state)
    try:
        result = call()
    except (ValueError, TypeError, *also) as e:
        event(f"refused: {type(e).__name__}")
        assert any(n in str(e) for n in names), f"message does not name {names}: {type(e).__name__}: {e}"
        assert snapshot(*state) == before, f"a refused call changed state: {e}"
        return None
    event("accepted")
    return result


