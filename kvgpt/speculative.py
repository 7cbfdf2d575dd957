"""Speculative decoding: a cheap source drafts k tokens, the target checks all of them in ONE pass.

Each round: draft k tokens -> one target prefill over [pending token, d_1 .. d_k] (T = k + 1, the chunked-
prefill path) -> keep the longest acceptable prefix plus one token from the target -> crop both caches
back to the kept prefix. Greedy keeps a draft iff it is the target's argmax, so the tokens equal plain
greedy decoding; sampling uses the rule of Leviathan et al. 2023 / Chen et al. 2023, which leaves the
target's distribution unchanged. Batch 1 only. Introduced in notebooks/13_speculative_decoding.ipynb.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from numbers import Integral

import torch

from .cache_manager import KVCacheManager
from .drafting import DraftModel, as_draft_source, check_proposal
from .model import check_model
from .requests import CheckedRequest, RowSampler, check_request
from .sampling import Sampler, greedy
from .validation import check_choice, check_int


def verify_drafts(p: torch.Tensor, q: torch.Tensor | None, drafts: torch.Tensor,
                  generator: torch.Generator | None = None, is_greedy: bool = False):
    """The accept/reject rule for N independent rounds -> (n_accepted (N,), next token (N,)).

    Shapes: p (N, K+1, V) target probabilities (greedy: any scores, only the argmax is read), q (N, K, V)
    the draft's probabilities (None: deterministic drafts, a one-hot), drafts (N, K) long.
    Greedy: accept while d_i == argmax p_i; the next token is the argmax after the last accepted draft.
    Sampling: accept d_i with probability min(1, p_i(d_i) / q_i(d_i)); at the first rejection draw from
    norm(max(0, p_i - q_i)); if all K pass, draw a bonus token from p_{K+1}.
    Introduced in notebooks/13_speculative_decoding.ipynb.
    """
    n_rounds, k = drafts.shape
    rows = torch.arange(n_rounds, device=p.device)
    if is_greedy:
        ok = drafts == p[:, :k].argmax(-1)  # (N, K)
        n = ok.long().cumprod(-1).sum(-1)  # (N,) the accepted prefix stops at the first mismatch
        return n, p[rows, n].argmax(-1)
    if q is None:
        q = torch.nn.functional.one_hot(drafts, p.size(-1)).to(p.dtype)  # (N, K, V)
    u = torch.rand(n_rounds, k, generator=generator, device="cpu").to(p.device)  # (N, K)
    p_d = p[:, :k].gather(-1, drafts[..., None])[..., 0]  # (N, K) target prob of each draft
    q_d = q.gather(-1, drafts[..., None])[..., 0]  # (N, K) > 0: the draft was drawn from q
    n = (u * q_d < p_d).long().cumprod(-1).sum(-1)  # u < p/q without dividing
    q_next = torch.cat([q, torch.zeros_like(p[:, :1])], 1)[rows, n]  # (N, V): zeros after K accepts
    p_next = p[rows, n]  # (N, V)
    residual = (p_next - q_next).clamp(min=0)
    mass = residual.sum(-1, keepdim=True)  # 0 only if p == q at a (rare, rounding) rejection: then p itself
    residual = torch.where(mass > 0, residual / mass.clamp(min=1e-30), p_next)
    return n, torch.multinomial(residual.cpu(), 1, generator=generator)[:, 0].to(p.device)



def expected_tokens_per_pass(alpha: float, k: int) -> float:
    """E[tokens per target pass] = (1 - alpha^(k+1)) / (1 - alpha), alpha = per-token acceptance (Leviathan eq. 1).

    Introduced in notebooks/13_speculative_decoding.ipynb.
    """
    return float(k + 1) if alpha >= 1 else (1 - alpha ** (k + 1)) / (1 - alpha)


def chained_tokens_per_pass(rates) -> float:
    """Tokens per pass from per-position acceptance rates a_1 .. a_k (a_i = P(accept draft i | 1 .. i-1 accepted)):
    1 + a_1 + a_1 a_2 + ... + a_1 ... a_k. Equal to expected_tokens_per_pass(a, k) when every a_i = a.

    Introduced in notebooks/13_speculative_decoding.ipynb.
    """
    total, reach = 1.0, 1.0
    for a in rates:
        reach *= a
        total += reach
    return total


def break_even_alpha(k: int, cost: float) -> float:
    """The acceptance rate at which speculation pays exactly: expected_tokens_per_pass(alpha, k) = cost.

    `cost` is one round's time in units of one plain decode step (k draft passes + the verify pass).
    Solved by bisection (the left side grows with alpha); 0 if even alpha = 0 pays, 1 if nothing does.
    Introduced in notebooks/13_speculative_decoding.ipynb.
    """
    if cost <= 1:
        return 0.0
    if cost >= k + 1:
        return 1.0
    lo, hi = 0.0, 1.0
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if expected_tokens_per_pass(mid, k) < cost else (lo, mid)
    return (lo + hi) / 2


@dataclass
class SpeculativeStats:
    """Counts and times of the last SpeculativeGenerator call (time.perf_counter, milliseconds).

    drafted / accepted count draft tokens over all rounds. rounds[i] = {"drafts", "accepted" (the kept prefix
    length), "target" (the token the target added), "cache" (target cache length after the verify pass,
    after the crop)}.
    Introduced in notebooks/13_speculative_decoding.ipynb.
    """

    source: str
    k: int
    prompt_length: int
    new_tokens: int = 0
    target_passes: int = 0
    draft_passes: int = 0
    drafted: int = 0
    accepted: int = 0
    draft_ms: float = 0.0
    target_ms: float = 0.0
    total_ms: float = 0.0
    stop_reason: str = "max_new_tokens"
    rounds: list = field(default_factory=list)

    acceptance_rate = property(lambda self: self.accepted / self.drafted if self.drafted else 0.0)
    def record(self, round_: dict, n_new: int, draft_passes: int, t0: float, t1: float, start: float) -> None:
        """Add one round: drafting ran from perf_counter t0 to t1, verifying from t1 to now."""
        now = time.perf_counter()
        self.rounds.append(round_)
        self.draft_ms, self.target_ms = self.draft_ms + (t1 - t0) * 1e3, self.target_ms + (now - t1) * 1e3
        self.target_passes, self.draft_passes = self.target_passes + 1, draft_passes
        self.new_tokens += n_new
        self.drafted, self.accepted = self.drafted + len(round_["drafts"]), self.accepted + round_["accepted"]
        self.total_ms = (now - start) * 1e3

    accepted_per_round = property(lambda self: [r["accepted"] for r in self.rounds])
    tokens_per_target_pass = property(lambda self: self.new_tokens / self.target_passes if self.target_passes else 0.0)


class SpeculativeGenerator:
    """Greedy or sampled generation from `target`, k tokens drafted per round by `draft` and verified at once.

    draft: "ngram" (prompt lookup), a smaller MiniGPTInferenceModel with the same vocabulary, or a draft
    source object (kvgpt/drafting.py). One prompt at a time: a batch raises ValueError. The repetition
    penalty is refused (it would make p depend on the drafts still under review). `last_stats` holds a
    SpeculativeStats. Shapes: prompt list[int] or (T,) -> list[int] (prompt + new tokens).

    Introduced in notebooks/13_speculative_decoding.ipynb.
    """

    def __init__(self, target, draft="ngram"):
        self.target, self.draft = check_model("target", target), as_draft_source(draft)
        inner = getattr(self.draft, "model", None)
        if isinstance(self.draft, DraftModel) and inner.config.vocab_size != target.config.vocab_size:
            raise ValueError(f"draft model vocab_size={inner.config.vocab_size} differs from the target's "
                             f"{target.config.vocab_size}: drafts must be target tokens")
        self.last_stats: SpeculativeStats | None = None

    def generate(self, prompt, max_new_tokens: int, k: int = 4, sampler: Sampler | None = None,
                 eos_token_id=None, cache_kind: str = "static") -> list:
        """Prompt followed by up to max_new_tokens new tokens (the EOS token included when it stops)."""
        req = self._check(prompt, max_new_tokens, k, sampler, eos_token_id, cache_kind)
        return req.rows[0] + [t for chunk in self._rounds(req, k, cache_kind) for t in chunk]

    def stream(self, prompt, max_new_tokens: int, k: int = 4, sampler: Sampler | None = None,
               eos_token_id=None, cache_kind: str = "static"):
        """Like generate, but yields each new token (ints) as soon as its round is verified."""
        rounds = self._rounds(self._check(prompt, max_new_tokens, k, sampler, eos_token_id, cache_kind), k, cache_kind)
        return (t for chunk in rounds for t in chunk)

    def _check(self, prompt, max_new_tokens, k, sampler, eos_token_id, cache_kind) -> CheckedRequest:
        """The generators' one request check, plus what speculation adds: one row, k, no repetition penalty."""
        cfg = self.target.config
        req = check_request(prompt, max_new_tokens, sampler, eos_token_id, cfg.vocab_size)
        if req.batched:
            raise ValueError(f"prompt: speculative decoding here runs one sequence at a time; "
                             f"got a batch of {len(req.rows)}")
        check_int("k", k, 1, cfg.block_size - 1, f"an int in 1..{cfg.block_size - 1} (draft tokens per round)")
        if sampler is not None and sampler.knobs["repetition_penalty"] != 1.0:
            raise ValueError("sampler: repetition_penalty must be 1 with speculative decoding (p would depend on "
                             "the drafts being verified)")
        check_choice("cache_kind", cache_kind, ("static", "dynamic"))
        if len(req.rows[0]) + req.max_new_tokens > cfg.block_size:
            raise ValueError(f"prompt length {len(req.rows[0])} + max_new_tokens={req.max_new_tokens} exceeds the "
                             f"target's context block_size={cfg.block_size}")
        return req

    def _chooser(self, sampler, gen):
        """-> choose(logits (V,)) -> (draft id, q (V,) or None): how the draft model picks its tokens."""
        if sampler is None:
            return lambda logits: (int(greedy(logits)), None)
        if sampler.is_greedy:
            return lambda logits: (int(sampler.process(logits).argmax()), None)

        def choose(logits):
            q = sampler.probs(logits)  # (V,) the same knobs as the target's p
            return int(torch.multinomial(q.cpu(), 1, generator=gen)), q
        return choose

    def _rounds(self, req: CheckedRequest, k: int, cache_kind: str):
        """Yields each round's new tokens (accepted drafts + the target's token); fills last_stats."""
        model, tokens, sampler, max_new = self.target, list(req.rows[0]), req.sampler, req.max_new_tokens
        device = next(model.parameters()).device
        name = getattr(self.draft, "name", type(self.draft).__name__)
        stats = self.last_stats = SpeculativeStats(name, k, len(tokens))
        picker = RowSampler(sampler, [tokens], model.config.vocab_size, 1)  # the row's own generator, as alone
        gen = picker.generators[0] if picker.generators else None
        greedy_mode = sampler is None or sampler.is_greedy
        choose = self._chooser(sampler, gen)
        cache = KVCacheManager(model.config, 1, cache_kind)
        cached, start = 0, time.perf_counter()  # tokens of the sequence held by the target's cache
        self.draft.start()
        while stats.new_tokens < max_new:
            t0 = time.perf_counter()
            with torch.inference_mode():
                asked = min(k, max_new - stats.new_tokens - 1)
                drafts, q = check_proposal(self.draft, self.draft.propose(tokens, asked, choose), asked,
                                           model.config.vocab_size)  # never trusted: more than asked, bad ids
                t1 = time.perf_counter()
                feed = torch.tensor([tokens[cached:] + drafts], device=device)  # (1, T): pending + drafts
                logits = model.prefill(feed, cache)[:, -len(drafts) - 1:]  # (1, K+1, V) one pass for all
                scores = logits if sampler is None else sampler.process(logits[0])[None]
                p = scores if greedy_mode else scores.softmax(-1)
                d = torch.tensor([drafts], dtype=torch.long, device=device).reshape(1, len(drafts))  # (1, K)
                n, nxt = verify_drafts(p, None if q is None else q[None], d, gen, greedy_mode)
            n = int(n)
            verified, cached = cache.length, len(tokens) + n  # the kept prefix; nxt is pending, fed next round
            cache.crop(cached)
            self.draft.rollback(cached)
            new = drafts[:n] + [int(nxt)]
            stop = next((i for i, t in enumerate(new) if t in req.eos), None)  # the first stop id ends it
            if stop is not None:
                new, stats.stop_reason = new[: stop + 1], "eos"
            stats.record({"drafts": drafts, "accepted": n, "target": int(nxt), "cache": (verified, cache.length)},
                         len(new), getattr(self.draft, "passes", 0), t0, t1, start)
            tokens += new
            yield new
            if stats.stop_reason == "eos":
                return
