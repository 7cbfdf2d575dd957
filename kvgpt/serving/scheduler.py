"""Iteration-level scheduling: which sequences run in the next model call, and how many tokens each.

Every step has a token budget (max_num_batched_tokens) and a cap on running sequences (max_num_seqs).
Decode rows (one token each) go first, then prompts continue in chunks (chunked prefill), then waiting
requests join, each first reusing its cached prefix blocks. When the pool runs dry, the most recently
admitted sequence is preempted by recompute: its blocks are freed and it waits again with its prompt and
the tokens it made so far (its sampler's generator kept, so its later tokens are unchanged).
The design follows vLLM's v1 scheduler and nano-vllm's scheduler.py (ideas, not code).
Introduced in notebooks/10_paged_attention.ipynb.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from .paged import PagedKVCache


@dataclass
class Sequence:
    """One request's state: its tokens (prompt + generated), how many have keys/values cached, its sampler.

    Introduced in notebooks/10_paged_attention.ipynb.
    """

    request_id: int
    prompt: list
    max_new_tokens: int
    sampler: object = None  # a kvgpt.Sampler, or None for greedy
    eos: frozenset = frozenset()
    picker: object = None  # a kvgpt.requests.RowSampler of one row: its own generator and seen tokens
    tokens: list = field(default_factory=list)
    num_computed: int = 0  # tokens whose keys/values are in the cache
    finish_reason: str | None = None

    def __post_init__(self):
        self.tokens = list(self.prompt)

    num_generated = property(lambda self: len(self.tokens) - len(self.prompt))
    remaining = property(lambda self: len(self.tokens) - self.num_computed)  # tokens still to run through the model
    is_decode = property(lambda self: self.num_generated > 0 and self.remaining == 1)


@dataclass
class EngineStats:
    """Counters since the last reset: model calls, token-rows by kind, prefix hits, preemptions, peak blocks.

    prefill_tokens counts prompt (and recomputed) tokens run through the model, decode_tokens the one-token
    rows that feed a freshly generated token; model_tokens = N summed over calls, the token-rows the model computed
    (one flat call per step, no padding: prefill + decode). Introduced in notebooks/10_paged_attention.ipynb.
    """

    steps: int = 0
    model_calls: int = 0
    prefill_tokens: int = 0
    decode_tokens: int = 0
    model_tokens: int = 0
    prefix_hit_tokens: int = 0
    preemptions: int = 0
    peak_blocks_used: int = 0
    finished: int = 0


class Scheduler:
    """waiting / running queues; schedule() -> [(sequence, tokens to run now)] for the next model call.

    vLLM's names: max_num_seqs, max_num_batched_tokens (chunked prefill is always on; vLLM v1's default).
    Introduced in notebooks/10_paged_attention.ipynb.
    """

    def __init__(self, cache: PagedKVCache, max_num_seqs: int, max_num_batched_tokens: int,
                 stats: EngineStats) -> None:
        self.cache, self.max_num_seqs, self.max_num_batched_tokens = cache, max_num_seqs, max_num_batched_tokens
        self.stats = stats
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    def schedule(self) -> list[tuple[Sequence, int]]:
        """Plan one step: decode rows, then continuing prefills, then new arrivals, within the budget."""
        budget, plan, preempted = self.max_num_batched_tokens, [], False
        queue = [s for s in self.running if s.is_decode] + [s for s in self.running if not s.is_decode]
        i = 0
        while i < len(queue) and budget > 0:
            seq, n = queue[i], min(queue[i].remaining, budget)
            while self.cache.blocks_needed(seq.request_id, seq.num_computed + n) > self.cache.allocator.num_free:
                victim = queue.pop()  # the latest in line that is not planned yet (possibly seq itself)
                self._preempt(victim)
                preempted = True
                if victim is seq:
                    break
            else:
                self.cache.reserve(seq.request_id, seq.num_computed + n)
                plan.append((seq, n))
                budget -= n
                i += 1
        if not preempted:  # as vLLM: no new arrivals in a step that had to evict
            budget = self._admit(plan, budget)
        self.stats.peak_blocks_used = max(self.stats.peak_blocks_used, self.cache.allocator.num_used)
        return plan

    def _admit(self, plan: list, budget: int) -> int:
        while self.waiting and budget > 0 and len(self.running) < self.max_num_seqs:
            seq = self.waiting[0]
            hit = self.cache.add_sequence(seq.request_id, seq.tokens)  # cached full blocks: refcount + 1
            seq.num_computed = hit
            n = min(seq.remaining, budget)
            if self.cache.blocks_needed(seq.request_id, hit + n) > self.cache.allocator.num_free:
                self.cache.free_sequence(seq.request_id)  # undo: it waits until blocks are free
                seq.num_computed = 0
                break
            self.cache.reserve(seq.request_id, hit + n)
            self.waiting.popleft()
            self.running.append(seq)
            self.stats.prefix_hit_tokens += hit
            plan.append((seq, n))
            budget -= n
        return budget

    def _preempt(self, seq: Sequence) -> None:
        """Recompute later: free every block, keep tokens and generator, wait at the front of the queue."""
        self.running.remove(seq)
        self.cache.free_sequence(seq.request_id)
        seq.num_computed = 0
        self.waiting.appendleft(seq)
        self.stats.preemptions += 1

    def finish(self, seq: Sequence, reason: str) -> None:
        """A sequence is done: it leaves its queue and its blocks return to the pool (or the cache).

        reason "error" or "abort" (a failed call, a reader that left): whatever blocks it still holds are released
        without the double-free check, so cleaning up after a failure never fails again.
        """
        seq.finish_reason = reason
        running = any(s is seq for s in self.running)
        (self.running if running else self.waiting).remove(seq)
        if reason in ("error", "abort"):
            self.cache.release(seq.request_id)
        elif running:
            self.cache.free_sequence(seq.request_id)
        self.stats.finished += 1
