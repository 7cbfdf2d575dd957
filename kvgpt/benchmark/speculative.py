"""Speculative decoding's speedup against k, explained by a cost model measured inside the generator's own loop.

The model (Leviathan et al. 2023, section 3): a round of k drafts costs k draft passes and one verify pass
over k + 1 tokens; in units of one plain decode step t (the plain generator's whole loop per token, sampler
included), k*c + v_k. It yields tokens_per_pass new tokens, so

    speedup = tokens_per_pass / (k*c + v_k).

c, v_k and t are timed on the same footing: every repeat runs the plain generator and then the speculative one,
back to back; c = the speculative loop's drafting time per drafted token / t, v_k = its verify time per pass
(target prefill over k + 1 tokens, the accept rule, both crops) / t. What the model leaves out (the loop's
glue, allocating the caches) is the residual, measured / predicted - 1, reported beside it.

If every draft were accepted with the same probability a, independently, a round would yield
E = (1 - a^(k+1)) / (1 - a) tokens. The a those formulas assume is per position: accepted drafts / drafts
examined (draft i is examined only when drafts 1 .. i-1 were accepted), not accepted / drafted, which counts
drafts after the first rejection that nobody looked at and so runs low. Both are reported; the per-position
rates (spec_positions.csv) show where independence fails.
Introduced in notebooks/13_speculative_decoding.ipynb.
"""

from __future__ import annotations

import statistics
import time

import pandas as pd
import torch

from ..generation import AutoregressiveGenerator
from ..speculative import SpeculativeGenerator, break_even_alpha, expected_tokens_per_pass


def position_counts(rounds: list[dict]) -> tuple[list[int], list[int]]:
    """Per draft position i = 1 .. K: (rounds that examined draft i, rounds that accepted it).

    Draft i is examined only when drafts 1 .. i-1 were all accepted: after the first rejection the target's
    token replaces the rest. rounds: SpeculativeStats.rounds ({"drafts": [...], "accepted": n}).
    Introduced in notebooks/13_speculative_decoding.ipynb.
    """
    k = max((len(r["drafts"]) for r in rounds), default=0)
    reached, accepted = [0] * k, [0] * k
    for r in rounds:
        for i in range(min(len(r["drafts"]), r["accepted"] + 1)):
            reached[i] += 1
        for i in range(r["accepted"]):
            accepted[i] += 1
    return reached, accepted


def _paired_run(plain, spec, prompt: list, max_new_tokens: int, k: int, sampler) -> dict:
    """One plain generation, then one speculative generation, timed the same way (perf_counter, ms)."""
    t = time.perf_counter()
    n = len(plain.generate(prompt, max_new_tokens, sampler)) - len(prompt)
    step = (time.perf_counter() - t) * 1e3 / n  # t: the plain loop's ms per token
    t = time.perf_counter()
    spec.generate(prompt, max_new_tokens, k, sampler)
    total, s = (time.perf_counter() - t) * 1e3, spec.last_stats
    return {"step_ms": step, "speedup": step * s.new_tokens / total,
            "c": s.draft_ms / s.drafted / step if s.drafted else 0.0, "v": s.target_ms / s.target_passes / step,
            "other": (total - s.draft_ms - s.target_ms) / s.target_passes / step}


def speculative_sweep(target, drafts: dict, prompt: list, max_new_tokens: int, ks=range(1, 9), sampler=None,
                      repeats: int = 3) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Greedy (or sampled) generation with each draft source and k, each repeat paired with plain decoding.

    drafts: {label: "ngram" or a draft model}. -> (one row per (source, k), one row per (source, k, position)).
    Rows: acceptance per position (accepted / examined) and per drafted token, tokens_per_pass and the i.i.d.
    formula's value at each acceptance, speedup (median of paired repeats), c, v, other (glue per pass, all in
    plain steps), predicted_speedup = tokens_per_pass / (drafts_per_round * c + v), residual = speedup /
    predicted - 1, break_even (the per-position acceptance at which the i.i.d. E equals the round's cost).
    Introduced in notebooks/13_speculative_decoding.ipynb.
    """
    plain = AutoregressiveGenerator(target)
    plain.generate(prompt, 8, sampler)  # warm-up: one-off first-call costs are not decoding
    rows, positions = [], []
    for label, draft in drafts.items():
        gen = SpeculativeGenerator(target, draft)
        gen.generate(prompt, 8, 1, sampler)
        for k in ks:
            runs = pd.DataFrame([_paired_run(plain, gen, prompt, max_new_tokens, k, sampler) for _ in range(repeats)])
            s = gen.last_stats  # the same tokens every repeat: greedy, or a seeded sampler
            reached, accepted = position_counts(s.rounds)
            per_round = s.drafted / s.target_passes  # k, less when the context or max_new_tokens cut a round
            c, v, other = (statistics.median(runs[col]) for col in ("c", "v", "other"))
            a = s.accepted / sum(reached) if sum(reached) else 0.0
            predicted = s.tokens_per_target_pass / (per_round * c + v)
            speedup = statistics.median(runs.speedup)
            rows.append({"source": label, "k": k, "acceptance": a, "accepted_per_drafted": s.acceptance_rate,
                         "tokens_per_pass": s.tokens_per_target_pass,
                         "iid_tokens_per_pass": expected_tokens_per_pass(a, k),
                         "iid_tokens_per_pass_drafted": expected_tokens_per_pass(s.acceptance_rate, k),
                         "plain_ms_per_token": statistics.median(runs.step_ms), "speedup": speedup,
                         "c": c, "v": v, "other": other, "predicted_speedup": predicted,
                         "residual": speedup / predicted - 1, "break_even": break_even_alpha(k, per_round * c + v)})
            positions += [{"source": label, "k": k, "position": i + 1, "examined": n, "accepted": m,
                           "acceptance": m / n if n else float("nan")}
                          for i, (n, m) in enumerate(zip(reached, accepted))]
    return pd.DataFrame(rows), pd.DataFrame(positions)


def chi_square(tokens: torch.Tensor, probs: torch.Tensor, min_expected: float = 5.0) -> tuple[float, int, float]:
    """Pearson's goodness of fit of drawn tokens (N,) to probs (V,); cells expecting < min_expected pooled.

    -> (statistic, degrees of freedom, p-value = chi-square survival function, via the regularised gamma).
    Introduced in notebooks/13_speculative_decoding.ipynb.
    """
    counts = torch.bincount(tokens, minlength=probs.numel()).double()
    expected = probs.double() * len(tokens)
    big = expected >= min_expected
    obs = torch.cat([counts[big], counts[~big].sum()[None]])
    exp = torch.cat([expected[big], expected[~big].sum()[None]])
    keep = exp > 0
    stat = float(((obs[keep] - exp[keep]) ** 2 / exp[keep]).sum())
    df = int(keep.sum()) - 1
    p_value = float(torch.special.gammaincc(torch.tensor(df / 2.0, dtype=torch.float64),
                                            torch.tensor(stat / 2.0, dtype=torch.float64)))
    return stat, df, p_value


@torch.inference_mode()
def first_token_trials(target, draft, prompt: list, sampler, n_rounds: int = 20_000, rule=None, seed: int = 0):
    """n_rounds independent first rounds with k = 1, vectorised -> (first tokens (N,), p (V,), q (V,)).

    d ~ q(.|prompt) from the draft; the bonus position uses p(.|prompt, d) from one batched target pass
    over every possible d. `rule` defaults to the package's verify_drafts; pass a broken one to see it caught.
    Introduced in notebooks/13_speculative_decoding.ipynb.
    """
    from ..speculative import verify_drafts

    rule = verify_drafts if rule is None else rule
    v, ids = target.config.vocab_size, torch.tensor([prompt])
    p = sampler.probs(target(ids, last_only=True))[0]  # (V,)
    q = sampler.probs(draft(ids, last_only=True))[0]  # (V,)
    after = torch.cat([ids.expand(v, -1), torch.arange(v)[:, None]], 1)  # (V, T + 1): the prompt + each d
    p_next = sampler.probs(target(after, last_only=True))  # (V, V)
    g = torch.Generator().manual_seed(seed)
    d = torch.multinomial(q.expand(n_rounds, v), 1, generator=g)  # (N, 1)
    P = torch.stack([p.expand(n_rounds, v), p_next[d[:, 0]]], 1)  # (N, 2, V)
    n, nxt = rule(P, q.expand(n_rounds, 1, v), d, g)
    return torch.where(n > 0, d[:, 0], nxt), p, q
