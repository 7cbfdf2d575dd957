"""The speculative benchmark's math (expected tokens per pass, break-even, chi-square) and its plots."""

import matplotlib

matplotlib.use("Agg")

import pytest
import torch
from helpers import cached_model
from matplotlib.figure import Figure

from kvgpt.benchmark.speculative import chi_square, position_counts, speculative_sweep
from kvgpt.plots.speculative import plot_acceptance, plot_rounds, plot_speedup
from kvgpt.speculative import break_even_alpha, chained_tokens_per_pass, expected_tokens_per_pass


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


def test_chained_tokens_per_pass_is_the_iid_sum_when_rates_are_equal():
    assert chained_tokens_per_pass([0.5] * 3) == pytest.approx(expected_tokens_per_pass(0.5, 3))
    assert chained_tokens_per_pass([0.5, 1.0, 1.0]) == pytest.approx(1 + 0.5 * 3)  # bursty: all or nothing after 1
    assert chained_tokens_per_pass([]) == 1.0


def test_position_counts_examine_only_up_to_the_first_rejection():
    rounds = [{"drafts": [1, 2, 3, 4], "accepted": 0}, {"drafts": [1, 2, 3, 4], "accepted": 2},
              {"drafts": [1, 2, 3, 4], "accepted": 4}, {"drafts": [1, 2], "accepted": 1}]
    examined, accepted = position_counts(rounds)
    assert examined == [4, 3, 2, 1] and accepted == [3, 2, 1, 1]
    # accepted / drafted (7 / 14) runs below accepted / examined (7 / 10): later drafts were never looked at
    assert sum(accepted) / sum(len(r["drafts"]) for r in rounds) < sum(accepted) / sum(examined)


def test_sweep_rows_and_plots():
    target = cached_model(vocab_size=11, n_layers=2, n_heads=2, d_model=32, block_size=48)
    draft = cached_model(vocab_size=11, n_layers=1, n_heads=2, d_model=16, block_size=48, seed=1)
    df, positions = speculative_sweep(target, {"draft": draft, "ngram": "ngram"}, [1, 2, 3, 1, 2], 12, ks=[1, 3],
                                      repeats=1)
    assert list(df.source) == ["draft", "draft", "ngram", "ngram"] and list(df.k) == [1, 3, 1, 3]
    assert ((df.acceptance >= 0) & (df.acceptance <= 1) & (df.tokens_per_pass >= 1)).all()
    assert (df.acceptance >= df.accepted_per_drafted - 1e-12).all()
    assert (df.residual == df.speedup / df.predicted_speedup - 1).all()
    assert ((df.c >= 0) & (df.v > 0)).all() and (df[df.source == "ngram"].c < df[df.source == "draft"].c.min()).all()
    for (source, k), p in positions.groupby(["source", "k"]):
        row = df[(df.source == source) & (df.k == k)].iloc[0]
        assert len(p) <= k and (p.examined.diff().dropna() <= 0).all()  # a later draft is examined less often
        assert p.accepted.sum() / p.examined.sum() == pytest.approx(row.acceptance)
    assert isinstance(plot_acceptance(df, positions), Figure) and isinstance(plot_speedup(df, note="x"), Figure)
    assert isinstance(plot_acceptance(df), Figure)
    rounds = [{"context": "ab", "drafts": ["c", "d", "e"], "accepted": 1, "target": "f", "cache": (5, 3)}]
    assert isinstance(plot_rounds(rounds), Figure)
    import matplotlib.pyplot as plt

    plt.close("all")


def _first_tokens_through_the_generator(target, draft, prompt, n, rule=None):
    """The first new token of n sampled generations, seeds 0 .. n-1, through SpeculativeGenerator itself (k = 1)."""
    import contextlib
    from unittest import mock

    from kvgpt import Sampler
    from kvgpt import speculative as spec

    gen = spec.SpeculativeGenerator(target, draft)
    with mock.patch.object(spec, "verify_drafts", rule) if rule else contextlib.nullcontext():
        return torch.tensor([gen.generate(prompt, 2, k=1, sampler=Sampler(temperature=1.0, seed=s))[len(prompt)]
                             for s in range(n)])


def test_generator_keeps_the_target_distribution_and_catches_accept_always():
    # chapter 13's chi-square drives verify_drafts through first_token_trials' own pipeline; this one goes through
    # SpeculativeGenerator._rounds (how it builds p and q), so a bug there fails too
    target = cached_model(vocab_size=6, n_layers=2, n_heads=2, d_model=16, block_size=16)
    draft = cached_model(vocab_size=6, n_layers=1, n_heads=2, d_model=16, block_size=16, seed=3)
    prompt = [1, 2, 3]
    with torch.no_grad():
        p = target(torch.tensor([prompt]), last_only=True)[0].softmax(-1)  # (V,)
        q = draft(torch.tensor([prompt]), last_only=True)[0].softmax(-1)
    assert 0.5 * float((p - q).abs().sum()) > 0.1  # the draft differs enough for "accept always" to show
    first = _first_tokens_through_the_generator(target, draft, prompt, 2000)
    assert chi_square(first, p)[2] > 1e-3

    def accept_always(P, Q, drafts, generator=None, is_greedy=False):
        n = torch.full((len(drafts),), drafts.size(1))
        return n, torch.multinomial(P[:, -1], 1, generator=generator)[:, 0]

    wrong = _first_tokens_through_the_generator(target, draft, prompt, 2000, rule=accept_always)
    assert chi_square(wrong, p)[2] < 1e-3
