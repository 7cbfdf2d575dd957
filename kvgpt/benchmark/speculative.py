"""Speculative decoding's speedup against k, with the break-even acceptance rate measured beside it.

The model (Leviathan et al. 2023, section 3): if each draft is accepted with probability a, independently,
a round of k drafts yields E = (1 - a^(k+1)) / (1 - a) new tokens (the accepted prefix + 1). It costs k
draft passes and one verify pass over k + 1 tokens; in units of one plain decode step, k*c + v_k with
c = draft pass / target step and v_k = verify pass / target step (v_k = 1 on a GPU that is memory-bound,
more on a CPU, where k + 1 tokens cost more than one). So

    speedup = E / (k*c + v_k),  and speculation pays only when a exceeds the break-even a* with E(a*) = k*c + v_k.

For k = 1 and v = 1 this is a* = c: a draft half as expensive as the target must be right half the time.
Every time is measured twice: wall clock (time.perf_counter) and CPU time of this process
(time.process_time; with one thread it ignores the time other processes hold the cores). The cost ratios
c and v_k, and so the break-even, come from CPU time: on a shared machine they are far steadier.
Introduced in notebooks/13_speculative_decoding.ipynb.
"""

from __future__ import annotations

import statistics
import time

import pandas as pd
import torch

from ..generation import AutoregressiveGenerator
from ..cache_manager import KVCacheManager
from ..plots.speculative import break_even_alpha, expected_tokens_per_pass
from ..speculative import SpeculativeGenerator


def _median_ms(fn, repeats: int) -> tuple[float, float]:
    """-> (median wall ms, median CPU ms) of `repeats` calls."""
    wall, cpu = [], []
    for _ in range(repeats):
        t, c = time.perf_counter(), time.process_time()
        fn()
        wall.append((time.perf_counter() - t) * 1e3)
        cpu.append((time.process_time() - c) * 1e3)
    return statistics.median(wall), statistics.median(cpu)


@torch.inference_mode()
def pass_costs(target, draft_model, prompt: list, ks, repeats: int = 30) -> dict:
    """Median CPU ms of one target decode step, one draft decode step and one verify pass (T = k + 1) per k,
    all at the prompt's position. -> {"target_step": ms, "draft_step": ms or None, "verify": {k: ms}}.

    Introduced in notebooks/13_speculative_decoding.ipynb.
    """
    ids = torch.tensor([prompt])

    def step_ms(model):
        cache = KVCacheManager(model.config, 1, "static")
        model.prefill(ids, cache)

        def step():
            model.forward_step(torch.tensor([1]), cache.length, cache)
            cache.crop(len(prompt))  # back to the prompt: every step at the same position
        return _median_ms(step, repeats)[1]

    cache = KVCacheManager(target.config, 1, "static")
    target.prefill(ids, cache)
    verify = {}
    for k in ks:
        block = torch.ones(1, k + 1, dtype=torch.long)

        def run():
            target.prefill(block, cache)
            cache.crop(len(prompt))
        verify[k] = _median_ms(run, repeats)[1]
    return {"target_step": step_ms(target), "draft_step": None if draft_model is None else step_ms(draft_model),
            "verify": verify}


def speculative_sweep(target, drafts: dict, prompt: list, max_new_tokens: int, ks=range(1, 9), sampler=None,
                      repeats: int = 3) -> pd.DataFrame:
    """Greedy (or sampled) generation with each draft source and k, timed against plain decoding.

    drafts: {label: "ngram" or a draft model}. One row per (source, k): acceptance, tokens_per_pass, wall and
    CPU ms per new token (medians of `repeats` whole generations; plain_* for plain decoding), speedup and
    cpu_speedup (plain / speculative), c and v_k (CPU), predicted_speedup = tokens_per_pass / (k c + v_k)
    and break_even, the acceptance rate at which E(a) = k c + v_k.
    Introduced in notebooks/13_speculative_decoding.ipynb.
    """
    plain = AutoregressiveGenerator(target)
    out = plain.generate(prompt, max_new_tokens, sampler)
    plain_wall, plain_cpu = (t / max_new_tokens for t in
                             _median_ms(lambda: plain.generate(prompt, max_new_tokens, sampler), repeats))
    rows = []
    for label, draft in drafts.items():
        model = draft if isinstance(draft, torch.nn.Module) else None
        costs = pass_costs(target, model, prompt, ks)
        gen = SpeculativeGenerator(target, draft)
        for k in ks:
            wall, cpu = (t / max_new_tokens for t in
                         _median_ms(lambda: gen.generate(prompt, max_new_tokens, k, sampler), repeats))
            s = gen.last_stats
            if model is not None:
                c = costs["draft_step"] / costs["target_step"]
            else:  # one lookup per round drafts k slots: its CPU cost on the whole output, per slot
                c = _median_ms(lambda: gen.draft.propose(out, k), 50)[1] / k / costs["target_step"]
            v, a = costs["verify"][k] / costs["target_step"], s.acceptance_rate
            rows.append({"source": label, "k": k, "acceptance": a, "tokens_per_pass": s.tokens_per_target_pass,
                         "expected_tokens_per_pass": expected_tokens_per_pass(a, k), "ms_per_token": wall,
                         "plain_ms_per_token": plain_wall, "speedup": plain_wall / wall, "cpu_ms_per_token": cpu,
                         "plain_cpu_ms_per_token": plain_cpu, "cpu_speedup": plain_cpu / cpu, "c": c, "v": v,
                         "predicted_speedup": s.tokens_per_target_pass / (k * c + v),
                         "break_even": break_even_alpha(k, k * c + v)})
    return pd.DataFrame(rows)


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
