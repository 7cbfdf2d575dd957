"""Where speculative decoding's guesses come from: a small draft model with its own cache, or prompt lookup.

A draft source proposes up to k next tokens for a sequence; the target model then checks them all in
one pass (kvgpt/speculative.py). Both sources share one small interface: start() before a generation,
propose(tokens, k, choose) -> (drafts, q), rollback(n_valid) after the target's verdict.
Introduced in notebooks/13_speculative_decoding.ipynb.
"""

from __future__ import annotations

import torch

from .cache_manager import KVCacheManager
from .model import check_model
from .validation import ID_DTYPES, check_choice, check_id_list, check_int, check_tensor, fail_type, show


class DraftModel:
    """A small model drafting k tokens autoregressively from its own KV cache (Leviathan et al. 2023).

    Proposing k tokens costs k draft passes: one prefill of the tokens it has not seen yet (1 or 2 after
    the first round, the whole prompt at first), then k - 1 one-token steps. The last draft is chosen
    but never fed, so the cache holds tokens + drafts[:-1]; rollback crops it to what the target kept.
    Shapes: q (k, V) fp32, the distribution each draft was drawn from (None when chosen greedily).

    Introduced in notebooks/13_speculative_decoding.ipynb.
    """

    name = "draft model"

    def __init__(self, model, cache_kind: str = "static"):
        self.model, self.cache_kind = check_model("draft", model), check_choice("cache_kind", cache_kind, ("static", "dynamic"))
        self.cache: KVCacheManager | None = None
        self.cached, self.passes = 0, 0  # tokens of the sequence in the draft cache; forward passes so far

    def start(self) -> None:
        """A fresh cache for a new generation (the passes counter restarts too)."""
        self.cache = KVCacheManager(self.model.config, 1, self.cache_kind)
        self.cached, self.passes = 0, 0

    def propose(self, tokens: list, k: int, choose) -> tuple[list, torch.Tensor | None]:
        """Up to k drafts after `tokens` (fewer when the draft's context runs out); choose(logits (V,)) -> (id, q)."""
        k = min(k, self.model.config.block_size - len(tokens) + 1)  # feeding tokens + drafts[:-1] must fit
        if k <= 0:
            return [], None
        device = next(self.model.parameters()).device
        feed = torch.tensor([tokens[self.cached:]], device=device)  # (1, T): what the cache has not seen
        logits = self.model.prefill(feed, self.cache, last_only=True)[0]  # (V,)
        drafts, qs = [], []
        for i in range(k):
            token, q = choose(logits)
            drafts.append(token)
            qs.append(q)
            if i < k - 1:
                logits = self.model.forward_step(torch.tensor([token], device=device), self.cache.length, self.cache)[0]
        self.passes += k
        self.cached = len(tokens) + k - 1
        return drafts, (None if qs[0] is None else torch.stack(qs))  # (k, V)

    def rollback(self, n_valid: int) -> None:
        """The first n_valid tokens of the sequence are final: forget every cached position after them."""
        self.cached = min(self.cached, n_valid)
        self.cache.crop(self.cached)


class NGramDraft:
    """Prompt lookup: find the last earlier occurrence of the sequence's final n tokens and propose what
    followed it (HF's prompt_lookup_num_tokens, Saxena 2023). No second model, no cache, no passes.

    n runs from max_ngram down to min_ngram; the most recent match of the longest n wins; no match -> no
    drafts (that round is a plain decode step). The drafts are deterministic: q is a one-hot (None here).

    Introduced in notebooks/13_speculative_decoding.ipynb.
    """

    name = "n-gram lookup"
    passes = 0

    def __init__(self, max_ngram: int = 3, min_ngram: int = 1):
        self.min_ngram = check_int("min_ngram", min_ngram, 1)
        self.max_ngram = check_int("max_ngram", max_ngram, self.min_ngram, allowed=f"an int >= min_ngram={min_ngram}")

    def start(self) -> None:
        """Nothing to reset: the lookup reads only the tokens it is given."""

    def propose(self, tokens: list, k: int, choose=None) -> tuple[list, None]:
        """Up to k tokens that followed the latest earlier match of the last n tokens; [] if none."""
        if k <= 0:
            return [], None
        for n in range(min(self.max_ngram, len(tokens) - 1), self.min_ngram - 1, -1):
            pattern = tokens[-n:]
            for start in range(len(tokens) - n - 1, -1, -1):  # latest first, never the suffix itself
                if tokens[start:start + n] == pattern:
                    return tokens[start + n:start + n + k], None
        return [], None

    def rollback(self, n_valid: int) -> None:
        """Nothing cached, nothing to roll back."""


def as_draft_source(draft):
    """A draft source from "ngram", a kvgpt model (-> DraftModel) or an object with start/propose/rollback.

    Introduced in notebooks/13_speculative_decoding.ipynb.
    """
    if isinstance(draft, str):
        if draft != "ngram":
            raise ValueError(f"draft={draft!r}: the only named source is 'ngram' (else pass a model)")
        return NGramDraft()
    if isinstance(draft, torch.nn.Module):
        return DraftModel(draft)
    if all(callable(getattr(draft, a, None)) for a in ("start", "propose", "rollback")):
        return draft
    fail_type("draft", draft, "'ngram', a kvgpt MiniGPTInferenceModel or a draft source (start/propose/rollback)")


def check_proposal(source, proposal, k: int, vocab_size: int) -> tuple[list, torch.Tensor | None]:
    """A draft source's propose() result, not trusted: (drafts, q) with at most k ids in 0 .. vocab_size - 1 and q
    None or the (len(drafts), V) probabilities each draft was drawn from (finite, >= 0, > 0 at the draft). -> ids.

    Introduced in notebooks/13_speculative_decoding.ipynb.
    """
    name = f"draft source {type(source).__name__}"
    if not isinstance(proposal, tuple) or len(proposal) != 2:
        raise ValueError(f"draft: {name}.propose returned {show(proposal)}; it must return (drafts, q)")
    drafts, q = proposal
    if isinstance(drafts, torch.Tensor) and drafts.dim() == 1 and drafts.dtype in ID_DTYPES:
        drafts = drafts.tolist()
    if not isinstance(drafts, (list, tuple)):
        fail_type("draft", drafts, f"a list of token ids from {name}.propose")
    if len(drafts) > k:
        raise ValueError(f"draft: {name} proposed {len(drafts)} tokens but was asked for at most {k}")
    check_id_list("draft", list(drafts), vocab_size)
    drafts = [int(d) for d in drafts]
    if q is not None:
        check_tensor("draft q", q, (2,))
        if tuple(q.shape) != (len(drafts), vocab_size) or not q.dtype.is_floating_point:
            raise ValueError(f"draft q has shape {tuple(q.shape)} {q.dtype}: {name} must give floating "
                             f"({len(drafts)}, {vocab_size}) probabilities, one row per draft")
        if drafts and not (torch.isfinite(q).all() and (q >= 0).all() and (q[range(len(drafts)), drafts] > 0).all()):
            raise ValueError(f"draft q from {name}: probabilities must be finite, >= 0 and > 0 at each drawn draft")
    return drafts, q
