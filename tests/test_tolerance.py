"""The project's one tolerance rule for logits (issue 22, family 8): helpers.assert_close_logits."""

import pytest
import torch
from helpers import assert_close_logits


def test_a_kernel_sized_difference_passes_and_a_real_bug_fails():
    want = torch.linspace(-13.9, 13.9, 67)
    assert_close_logits(want + 1.41e-5, want)  # the case: 1e-6 relative to logits up to 13.9
    with pytest.raises(AssertionError, match="differ by"):
        assert_close_logits(want + 2.2 * (torch.arange(67) == 3), want)  # the padding crop bug of issue 22
    with pytest.raises(AssertionError, match="differ by"):
        assert_close_logits(want * (1 + 5e-5), want)  # five times the rule on the largest logit


def test_tiny_logits_are_held_to_the_absolute_floor():
    want = torch.full((4,), 1e-3)
    assert_close_logits(want + 9e-6, want)  # scale max(1, 1e-3) = 1
    with pytest.raises(AssertionError):
        assert_close_logits(want + 2e-5, want)
    with pytest.raises(AssertionError, match="shapes differ"):
        assert_close_logits(want[:3], want)
