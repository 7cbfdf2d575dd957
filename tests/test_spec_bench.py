"""The speculative benchmark's math (expected tokens per pass, break-even, chi-square) and its plots."""

import matplotlib

matplotlib.use("Agg")

import pytest
import torch
from helpers import cached_model
from matplotlib.figure import Figure

from kvgpt.benchmark.speculative import chi_square, speculative_sweep
from kvgpt.plots.speculative import (break_even_alpha, expected_tokens_per_pass, plot_acceptance, plot_rounds,
                                     plot_speedup)


def test_expected_tokens_per_pass_is_the_geometric_sum():
    assert expected_tokens_per_pass(0.0, 4) == 1.0 and expected_tokens_per_pass(1.0, 4) == 5.0
    assert expected_tokens_per_pass(0.5, 3) == pytest.approx(1 + 0.5 + 0.25 + 0.125)


@pytest.mark.parametrize("k, cost", [(1, 1.5), (4, 2.0), (8, 3.3)])
def test_break_even_solves_tokens_per_pass_equals_cost(k, cost):
    a = break_even_alpha(k, cost)
    assert expected_tokens_per_pass(a, k) == pytest.approx(cost, abs=1e-9)
    assert break_even_alpha(1, 1.3) == pytest.approx(0.3)  # k = 1, v = 1: a* = c
    assert break_even_alpha(4, 0.9) == 0.0 and break_even_alpha(4, 5.0) == 1.0


def test_chi_square_of_a_perfect_fit_and_of_a_wrong_one():
    probs = torch.tensor([0.5, 0.25, 0.25])
    exact = torch.tensor([0] * 500 + [1] * 250 + [2] * 250)
    assert chi_square(exact, probs)[0] == 0.0 and chi_square(exact, probs)[2] == pytest.approx(1.0)
    stat, df, p = chi_square(torch.tensor([0] * 400 + [1] * 300 + [2] * 300), probs)
    assert df == 2 and stat == pytest.approx(100 ** 2 / 500 + 2 * 50 ** 2 / 250) and p < 1e-3


def test_sweep_rows_and_plots():
    target = cached_model(vocab_size=11, n_layers=2, n_heads=2, d_model=32, block_size=48)
    draft = cached_model(vocab_size=11, n_layers=1, n_heads=2, d_model=16, block_size=48, seed=1)
    df = speculative_sweep(target, {"draft": draft, "ngram": "ngram"}, [1, 2, 3, 1, 2], 12, ks=[1, 3], repeats=1)
    assert list(df.source) == ["draft", "draft", "ngram", "ngram"] and list(df.k) == [1, 3, 1, 3]
    assert ((df.acceptance >= 0) & (df.acceptance <= 1) & (df.tokens_per_pass >= 1)).all()
    assert isinstance(plot_acceptance(df), Figure) and isinstance(plot_speedup(df, note="x"), Figure)
    rounds = [{"context": "ab", "drafts": ["c", "d", "e"], "accepted": 1, "target": "f", "cache": (5, 3)}]
    assert isinstance(plot_rounds(rounds), Figure)
    import matplotlib.pyplot as plt

    plt.close("all")
