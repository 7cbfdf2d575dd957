"""Speculative decoding: greedy returns exactly the target's greedy tokens; sampling keeps the target distribution.

The distribution tests run the package's accept/reject rule (verify_drafts) on many independent rounds at once:
p and q come from two real tiny models (V = 6) over every prefix a round can reach, so 60,000 rounds take a
fraction of a second. Each chi-square test fails at p-value < 1e-3: with fixed seeds the outcome is
deterministic, and for an arbitrary seed a correct rule would fail one test with probability 1e-3.
"""

from unittest import mock

import pytest
import torch
from helpers import cached_model, random_model
from hypothesis import given, settings
from hypothesis import strategies as st

from kvgpt import AutoregressiveGenerator, KVCacheManager, ModelConfig, Sampler, load_pretrained
from kvgpt.drafting import NGramDraft
from kvgpt.speculative import SpeculativeGenerator, verify_drafts

CFG = dict(vocab_size=11, n_layers=2, n_heads=2, d_model=32, block_size=48)
ALPHA = 1e-3  # false-alarm rate of each chi-square test


def target():
    return cached_model(**CFG)


def noisy_copy(model, std, seed=1, **changes):
    """The target's weights plus N(0, std) noise: a draft that agrees with the target only part of the time."""
    cfg = ModelConfig(**{**model.config.to_dict(), **changes})
    draft = random_model(cfg, seed)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for (name, p), (_, src) in zip(draft.named_parameters(), model.named_parameters()):
            if p.shape == src.shape:
                p.copy_(src + std * torch.randn(src.shape, generator=g))
    return draft


DRAFTS = {
    "ngram": lambda: "ngram",
    "noisy draft": lambda: noisy_copy(target(), 0.08),
    "target as draft": lambda: target(),
    "1-layer draft": lambda: noisy_copy(target(), 0.08, n_layers=1),
}


def plain(prompt, n, **kw):
    return AutoregressiveGenerator(target()).generate(prompt, n, **kw)


@pytest.mark.parametrize("source", DRAFTS)
@pytest.mark.parametrize("k", range(1, 9))
@settings(max_examples=6)
@given(prompt=st.lists(st.integers(0, CFG["vocab_size"] - 1), min_size=1, max_size=12),
       n=st.integers(0, 30))
def test_greedy_speculative_equals_target_greedy(source, k, prompt, n):
    gen = SpeculativeGenerator(target(), DRAFTS[source]())
    assert gen.generate(prompt, n, k=k) == plain(prompt, n)
    s = gen.last_stats
    assert s.new_tokens == n and s.accepted == sum(s.accepted_per_round) and s.drafted <= k * s.target_passes
    assert s.new_tokens == s.accepted + s.target_passes  # every round: its accepted drafts + one target token


@pytest.mark.parametrize("sampler", [Sampler(temperature=0), Sampler(top_k=1, seed=3)], ids=["t=0", "top_k=1"])
def test_greedy_samplers_equal_plain_generation(sampler):
    prompt = [1, 2, 3, 1, 2]
    assert SpeculativeGenerator(target(), noisy_copy(target(), 0.08)).generate(prompt, 25, 4, sampler) == \
        plain(prompt, 25, sampler=sampler)


@pytest.mark.parametrize("source", DRAFTS)
def test_eos_inside_a_drafted_run_stops_there(source):
    prompt = [4, 2, 4, 2]
    ref = plain(prompt, 30)
    eos = ref[len(prompt) + 6]  # the 7th new token: inside a round of k = 8 when the drafts are accepted
    want = plain(prompt, 30, eos_token_id=eos)
    gen = SpeculativeGenerator(target(), DRAFTS[source]())
    assert gen.generate(prompt, 30, k=8, eos_token_id=eos) == want
    assert gen.last_stats.stop_reason == "eos" and want[-1] == eos


@pytest.mark.parametrize("source", DRAFTS)
@pytest.mark.parametrize("k", [1, 5, 8])
def test_context_limit_reached_mid_draft(source, k):
    block = CFG["block_size"]
    prompt = [3, 1, 4, 1, 5, 9, 2, 6]
    n = block - len(prompt)  # the last rounds would draft past position block_size - 1
    assert SpeculativeGenerator(target(), DRAFTS[source]()).generate(prompt, n, k=k) == plain(prompt, n)


def test_a_draft_with_a_shorter_context_drafts_less_but_stays_exact():
    short = noisy_copy(target(), 0.05, block_size=20)  # runs out of positions long before the target
    prompt = [1, 2, 3]
    gen = SpeculativeGenerator(target(), short)
    assert gen.generate(prompt, 40, k=6) == plain(prompt, 40)
    assert gen.last_stats.drafted < 6 * gen.last_stats.target_passes


def test_target_as_draft_accepts_everything():
    gen = SpeculativeGenerator(target(), target())
    gen.generate([1, 2, 3], 36, k=5)
    s = gen.last_stats
    assert s.acceptance_rate == 1.0 and s.target_passes == 6 and s.tokens_per_target_pass == 6.0
    assert s.draft_passes == s.drafted == 30


def test_ngram_lookup_proposes_what_followed_the_latest_match():
    d = NGramDraft(max_ngram=3)
    assert d.propose([1, 2, 3, 9, 1, 2, 3, 7, 5, 1, 2, 3], 3)[0] == [7, 5, 1]  # latest match of [1, 2, 3]
    assert d.propose([5, 6, 7, 8, 1, 2], 4)[0] == []  # no earlier 2-gram or 1-gram match
    assert d.propose([5, 2, 6, 7, 2], 2)[0] == [6, 7]  # falls back to the 1-gram [2]
    assert d.propose([1], 3)[0] == [] and d.propose([1, 2, 1], 0)[0] == []


@pytest.mark.parametrize("source", DRAFTS)
def test_every_round_crops_the_target_cache_to_the_kept_prefix(source):
    prompt = [1, 2, 3, 1, 2]
    gen = SpeculativeGenerator(target(), DRAFTS[source]())
    gen.generate(prompt, 30, k=4)
    length = len(prompt)  # tokens of the sequence so far
    for r in gen.last_stats.rounds:
        assert r["cache"] == (length + len(r["drafts"]), length + r["accepted"]), r  # all fed, then cropped
        length += r["accepted"] + 1


@pytest.mark.parametrize("draft", ["shakespeare-char-draft", "ngram"])
def test_forgetting_to_roll_back_the_target_cache_changes_the_tokens(draft):
    target_model, tok = load_pretrained("shakespeare-char")
    source = draft if draft == "ngram" else load_pretrained(draft)[0]
    prompt = tok.encode("ROMEO:\n")
    ref = AutoregressiveGenerator(target_model).generate(prompt, 60)
    gen = SpeculativeGenerator(target_model, source)
    assert gen.generate(prompt, 60, k=4) == ref and 0 < gen.last_stats.acceptance_rate < 1
    with mock.patch.object(KVCacheManager, "crop", lambda self, length: None):  # rejected drafts' keys stay
        assert gen.generate(prompt, 60, k=4) != ref


def test_sampling_is_reproducible_per_call_and_refuses_what_it_cannot_do():
    gen = SpeculativeGenerator(target(), noisy_copy(target(), 0.08))
    s = Sampler(temperature=0.9, top_k=8, top_p=0.95, seed=7)
    assert gen.generate([1, 2], 30, 3, s) == gen.generate([1, 2], 30, 3, s)
    with pytest.raises(ValueError, match="batch of 2"):
        gen.generate([[1, 2], [3, 4]], 5)
    with pytest.raises(ValueError, match="repetition_penalty"):
        gen.generate([1, 2], 5, sampler=Sampler(repetition_penalty=1.2))
    with pytest.raises(ValueError, match="k=0"):
        gen.generate([1, 2], 5, k=0)
    with pytest.raises(ValueError, match="block_size=48"):
        gen.generate([1, 2], 47)
    with pytest.raises(ValueError, match="vocab_size=12"):
        SpeculativeGenerator(target(), noisy_copy(target(), 0.1, vocab_size=12))
    with pytest.raises(ValueError, match="draft='bigram'"):
        SpeculativeGenerator(target(), "bigram")


def test_sampled_draft_from_the_target_itself_is_always_accepted():
    gen = SpeculativeGenerator(target(), target())
    gen.generate([1, 2], 30, 4, Sampler(temperature=1.0, seed=0))
    assert gen.last_stats.acceptance_rate > 0.98  # p == q up to rounding: u * q < p for every u < 1


# ----------------------------------------------------------------------------- the distribution tests

V, PROMPT, N_ROUNDS, K = 6, [1, 4, 2], 60_000, 2
SAMPLER = Sampler(temperature=0.8, top_k=5)  # the knobs apply to p and q alike


@torch.no_grad()
def tables(model):
    """Probabilities after the prompt, after prompt + a, after prompt + a + b: (V,), (V, V), (V, V, V)."""
    a = torch.arange(V)
    prefixes1 = torch.cat([torch.tensor(PROMPT).expand(V, -1), a[:, None]], 1)  # (V, T + 1)
    prefixes2 = torch.cat([prefixes1.repeat_interleave(V, 0), a.repeat(V)[:, None]], 1)  # (V * V, T + 2)
    p0 = SAMPLER.probs(model(torch.tensor([PROMPT]), last_only=True))[0]
    p1 = SAMPLER.probs(model(prefixes1, last_only=True))
    p2 = SAMPLER.probs(model(prefixes2, last_only=True)).reshape(V, V, V)
    return p0, p1, p2


@pytest.fixture(scope="module")
def rounds():
    """N_ROUNDS independent first rounds with K = 2 drafts: d1 ~ q(.|prompt), d2 ~ q(.|prompt, d1)."""
    cfg = dict(vocab_size=V, n_layers=2, n_heads=2, d_model=16, block_size=16)
    p, q = tables(cached_model(**cfg, seed=0)), tables(cached_model(**cfg, seed=7))
    g = torch.Generator().manual_seed(0)
    d1 = torch.multinomial(q[0].expand(N_ROUNDS, V), 1, generator=g)[:, 0]
    d2 = torch.multinomial(q[1][d1], 1, generator=g)[:, 0]
    drafts = torch.stack([d1, d2], 1)  # (N, K)
    P = torch.stack([p[0].expand(N_ROUNDS, V), p[1][d1], p[2][d1, d2]], 1)  # (N, K + 1, V)
    Q = torch.stack([q[0].expand(N_ROUNDS, V), q[1][d1]], 1)  # (N, K, V)
    return p, q, P, Q, drafts


def chi_square(tokens, groups, expected_probs):
    """Pearson's statistic over groups (one expected distribution each); cells expecting < 5 are pooled.

    -> (statistic, degrees of freedom, p-value from the chi-square survival function).
    """
    stat, df = 0.0, 0
    for g in groups.unique():
        sel = tokens[groups == g]
        counts = torch.bincount(sel, minlength=V).double()
        expected = expected_probs[int(g)].double() * len(sel)
        big = expected >= 5
        obs = torch.cat([counts[big], counts[~big].sum()[None]])
        exp = torch.cat([expected[big], expected[~big].sum()[None]])
        keep = exp > 0
        stat += float(((obs[keep] - exp[keep]) ** 2 / exp[keep]).sum())
        df += int(keep.sum()) - 1
    p_value = float(torch.special.gammaincc(torch.tensor(df / 2.0, dtype=torch.float64),
                                            torch.tensor(stat / 2.0, dtype=torch.float64)))
    return stat, df, p_value


def outputs(rule, rounds_, seed=1):
    """Apply an accept/reject rule -> the round's first, second and third tokens (-1 where absent), n."""
    _, _, P, Q, drafts = rounds_
    n, nxt = rule(P, Q, drafts, torch.Generator().manual_seed(seed))
    seq = torch.cat([drafts, torch.full((len(n), 1), -1)], 1)  # (N, K + 1)
    seq[torch.arange(len(n)), n] = nxt
    seq[torch.arange(K + 1)[None] > n[:, None]] = -1
    return seq, n


def first_token_test(rule, rounds_):
    p = rounds_[0]
    seq, _ = outputs(rule, rounds_)
    return chi_square(seq[:, 0], torch.zeros(len(seq), dtype=torch.long), p[0][None])


def test_first_token_follows_the_target_distribution(rounds):
    stat, df, p_value = first_token_test(verify_drafts, rounds)
    assert p_value > ALPHA, f"chi2={stat:.1f} df={df} p={p_value:.2e}"
    p, q = rounds[0], rounds[1]
    assert (p[0] - q[0]).abs().sum() > 0.5  # the draft really differs: the rule has work to do


def test_second_and_bonus_tokens_follow_the_target_given_their_prefix(rounds):
    p = rounds[0]
    seq, n = outputs(verify_drafts, rounds)
    two = n >= 1  # the first token was an accepted draft a: the second is p(.|a) whatever happened next
    stat, df, p_value = chi_square(seq[two, 1], seq[two, 0], p[1])
    assert p_value > ALPHA, f"second token: chi2={stat:.1f} df={df} p={p_value:.2e}"
    three = n == 2  # both drafts accepted: the bonus token comes from p(.|a, b)
    stat, df, p_value = chi_square(seq[three, 2], seq[three, 0] * V + seq[three, 1], p[2].reshape(V * V, V))
    assert p_value > ALPHA, f"bonus token: chi2={stat:.1f} df={df} p={p_value:.2e}"


def accept_always(P, Q, drafts, g):
    """The classic bug: keep every draft, then the bonus token. Its first token follows q, not p."""
    n = torch.full((len(drafts),), drafts.size(1))
    return n, torch.multinomial(P[:, -1], 1, generator=g)[:, 0]


def resample_from_p(P, Q, drafts, g):
    """The subtler bug: the right acceptance test, but a rejection draws from p instead of norm(max(0, p - q))."""
    n, _ = verify_drafts(P, Q, drafts, g)
    return n, torch.multinomial(P[torch.arange(len(n)), n], 1, generator=g)[:, 0]


@pytest.mark.parametrize("broken", [accept_always, resample_from_p])
def test_a_broken_rule_is_caught(rounds, broken):
    stat, df, p_value = first_token_test(broken, rounds)
    assert p_value < ALPHA, f"{broken.__name__} was not caught: chi2={stat:.1f} df={df} p={p_value:.2e}"


def test_greedy_rule_keeps_the_argmax_prefix():
    p = torch.tensor([[[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]]]).repeat(3, 1, 1)  # argmax 1, 0, 1
    drafts = torch.tensor([[1, 0], [1, 1], [0, 0]])
    n, nxt = verify_drafts(p, None, drafts, is_greedy=True)
    assert n.tolist() == [2, 1, 0] and nxt.tolist() == [1, 0, 1]


@pytest.mark.parametrize("draft", ["ngram", "shakespeare-char-draft"])
def test_cli_speculative_greedy_writes_the_plain_greedy_text(capsys, draft):
    from kvgpt.cli import main

    base = ["generate", "--prompt", "ROMEO:", "--max-new-tokens", "80", "--temperature", "0"]
    assert main(base) == 0
    plain_text = capsys.readouterr().out
    assert main(base + ["--draft", draft, "--draft-k", "4"]) == 0
    out, err = capsys.readouterr()
    assert out == plain_text and "acceptance" in err and "tokens per target pass" in err
