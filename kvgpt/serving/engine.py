"""LLMEngine: continuous batching over the paged KV cache, one MiniGPTInferenceModel.prefill call per step.

add_request() queues a prompt; step() asks the scheduler for rows, runs them through the model in one
ragged call (decode rows beside prefill chunks), samples each finished row with its own sampler and
generator, and returns what was made. Every output reaches the one reader that asked for its request
(kvgpt/serving/outbox.py), and a call that raises ends only its own requests (finish_reason "error").
The name and API follow vLLM's and nano-vllm's LLMEngine.
Introduced in notebooks/10_paged_attention.ipynb.
"""

from __future__ import annotations

import torch

from ..model import check_model
from ..paged_attention import IMPLS
from ..requests import RowSampler, check_request
from ..sampling import Sampler
from ..validation import check_allocation, check_bool, check_choice, check_positive_int, fail_type, is_int
from .blocks import NoFreeBlocksError
from .outbox import SHARED, Outbox, Reader, StepError, StepOutput
from .picking import pick_tokens
from .paged import PagedKVCache
from .scheduler import EngineStats, Scheduler, Sequence


class LLMEngine:
    """Requests in, tokens out, one step at a time; every request gets what it would get generated alone.

    num_blocks None: enough blocks for max_num_seqs sequences of the model's full context. Every argument is
    checked before anything is allocated (the pool's bytes against the memory available).
    Introduced in notebooks/10_paged_attention.ipynb.
    """

    def __init__(self, model, block_size: int = 16, num_blocks: int | None = None, max_num_seqs: int = 16,
                 max_num_batched_tokens: int = 256, enable_prefix_caching: bool = True,
                 attention_impl: str = "auto") -> None:
        cfg = check_model("model", model).config
        self.attention = check_choice("attention_impl", attention_impl, IMPLS)  # kvgpt/paged_attention.py's kernels
        block_size, max_num_seqs = check_positive_int("block_size", block_size), check_positive_int("max_num_seqs",
                                                                                                   max_num_seqs)
        max_num_batched_tokens = check_positive_int("max_num_batched_tokens", max_num_batched_tokens)
        enable_prefix_caching = check_bool("enable_prefix_caching", enable_prefix_caching)
        sized = f"block_size={block_size}, num_blocks={num_blocks}"
        if num_blocks is None:
            num_blocks, sized = max_num_seqs * -(-cfg.block_size // block_size), f"{sized}, max_num_seqs={max_num_seqs}"
        num_blocks, param = check_positive_int("num_blocks", num_blocks), next(model.parameters())
        slot = 2 * cfg.n_layers * cfg.kv_heads * cfg.head_dim * param.element_size()  # K and V of one token
        check_allocation(f"LLMEngine({sized}): a pool of {num_blocks} x {block_size} slots", num_blocks * block_size
                         * slot, param.device)
        self.model = model
        self.cache = PagedKVCache(cfg, num_blocks, block_size, param.device, param.dtype, enable_prefix_caching)
        self.stats = EngineStats()
        self.scheduler = Scheduler(self.cache, max_num_seqs, max_num_batched_tokens, self.stats)
        self.requests: dict[int, Sequence] = {}  # unfinished requests by id
        self.outbox = Outbox()
        self._next_id, self._busy = 0, False

    def add_request(self, prompt, max_new_tokens: int, sampler: Sampler | None = None, eos_token_id=None) -> int:
        """Queue a prompt (list of token ids); -> its request id; step() and stream() return its outputs."""
        return self._enqueue(self._sequence(prompt, max_new_tokens, sampler, eos_token_id), SHARED)

    def _enqueue(self, seq: Sequence, box: int) -> int:
        seq.request_id, self._next_id = self._next_id, self._next_id + 1
        self.requests[seq.request_id] = seq
        self.outbox.assign(seq.request_id, box)
        self.scheduler.add(seq)
        return seq.request_id

    def _sequence(self, prompt, max_new_tokens, sampler, eos_token_id, name: str = "prompt") -> Sequence:
        """A validated request, not queued yet (its id is given when it is): the generators' one request check
        (kvgpt/requests.py), plus what a paged engine adds (one prompt, at least one new token, a pool it fits)."""
        cfg, bs = self.model.config, self.cache.block_size
        if isinstance(prompt, (list, tuple)) and prompt and all(isinstance(p, (list, tuple)) for p in prompt):
            fail_type(name, prompt, "one prompt, a list of int token ids (generate() and stream() take lists of them)")
        req = check_request(prompt, max_new_tokens, sampler, eos_token_id, cfg.vocab_size, min_new_tokens=1,
                            name=name)
        if req.batched:
            fail_type(name, prompt, "one prompt, a (T,) tensor or a list of int token ids")
        prompt, max_new_tokens = req.rows[0], req.max_new_tokens
        if len(prompt) + max_new_tokens > cfg.block_size:
            raise ValueError(f"prompt length {len(prompt)} + max_new_tokens={max_new_tokens} exceeds the model's "
                             f"context block_size={cfg.block_size}")
        blocks = -(-(len(prompt) + max_new_tokens - 1) // bs)  # the last new token is never fed back
        if blocks > self.cache.allocator.num_blocks:
            raise ValueError(f"a request of {len(prompt)} + {max_new_tokens} tokens needs {blocks} blocks but the pool "
                             f"has num_blocks={self.cache.allocator.num_blocks}: no preemption could ever fit it")
        # a RowSampler of one row: exactly the generator and seen tokens a solo generate() would use
        picker = None if req.sampler is None else RowSampler(req.sampler, [prompt], cfg.vocab_size, 1)
        return Sequence(-1, prompt, max_new_tokens, req.sampler, frozenset(req.eos), picker)

    def abort_request(self, request_id: int) -> None:
        """Stop an unfinished request now (vLLM's abort_request): it leaves its queue and its blocks are freed.

        Call it between steps, from the thread that calls step(). Its reader gets one last StepOutput (token None,
        finish_reason "abort"). An id that is not unfinished (never given, finished, or aborted already) raises
        ValueError naming it, and nothing changes.
        Introduced in notebooks/15_serving.ipynb.
        """
        seq = self.requests.get(request_id) if is_int(request_id) else None  # True is not request 1
        if seq is None:
            raise ValueError(f"request_id={request_id!r}: no unfinished request has this id "
                             f"({len(self.requests)} unfinished)")
        if self._busy:  # never change the queues in the middle of a step (a sampler or hook calling this)
            raise RuntimeError("LLMEngine.abort_request: called from inside a step; call it between steps")
        self._finish(seq, "abort")  # leaves its queue; its blocks are released at once
        self.outbox.put(StepOutput(request_id, None, True, "abort"))  # its reader hears how it ended

    def has_unfinished(self) -> bool:
        """True while a request is queued or running, or step() has outputs still to return."""
        return self.scheduler.has_unfinished() or bool(self.outbox.boxes[SHARED])

    def step(self) -> list[StepOutput]:
        """One scheduler step; -> the outputs of add_request()'s requests not returned yet, this step's included
        (those made while a generate() call or a stream ran come first)."""
        self._advance()
        return self.outbox.take(SHARED)

    def _advance(self) -> None:
        """One scheduler step for every request, whoever reads it: outputs go to their owners' boxes."""
        if self._busy:
            raise RuntimeError("LLMEngine: a step was started from inside a step (a sampler or hook calling step()?)")
        while self.outbox.abandoned:  # readers that left during a step: their requests end now
            self._cancel(self.outbox.abandoned.pop())
        self._busy = True
        try:
            plan = self.scheduler.schedule()
            if not plan:
                if self.scheduler.waiting and not self.scheduler.running:  # nothing can free a block: never spin
                    seq, free = self.scheduler.waiting[0], self.cache.allocator.num_free
                    raise NoFreeBlocksError(f"request {seq.request_id} waits for KV blocks, nothing is running and "
                                            f"only {free} of {self.cache.allocator.num_blocks} blocks are free "
                                            "(held elsewhere?)")
                return
            self.stats.steps += 1
            self.stats.decode_tokens += sum(n for seq, n in plan if seq.is_decode)
            self.stats.prefill_tokens += sum(n for seq, n in plan if not seq.is_decode)
            self._run(plan)  # decode rows and prompt chunks in ONE flat call: no row is padded to another
        finally:
            self._busy = False

    def _run(self, rows: list) -> None:
        """One flat model call over rows = [(sequence, tokens to run)]: every row's new tokens in one (1, N) row,
        logits (R, V) at each row's last token; sample the rows that reached their end.

        Transactional: a row's slots are committed only with its token, so a call that raises commits nothing
        (its requests end with finish_reason "error", blocks freed) and a row whose sampling raises ends alone.
        """
        try:
            ids = torch.tensor([[t for seq, n in rows for t in seq.tokens[seq.num_computed : seq.num_computed + n]]],
                               device=self.cache.k_pools[0].device)  # (1, N): each row's new tokens in turn
            batch = self.cache.batch([seq.request_id for seq, _ in rows], [n for _, n in rows], self.attention)
            with torch.inference_mode():
                logits = self.model.prefill(ids, batch, last_only=True)  # (R, V)
        except Exception as e:  # noqa: BLE001 -- whatever the model raised, only these requests end
            for seq, _ in rows:
                self._fail(seq, e)
            return
        self.stats.model_calls += 1
        self.stats.model_tokens += ids.size(1)  # token-rows the model computed: exactly the real ones
        picks = pick_tokens(rows, logits)
        for b, (seq, n) in enumerate(rows):
            if isinstance(picks.get(b), Exception):
                self._fail(seq, picks[b])
                continue
            self.cache.commit(seq.request_id, n, seq.tokens)
            seq.num_computed += n
            if b not in picks:  # a prompt chunk that does not reach the end: its logits are not needed
                continue
            seq.tokens.append(picks[b])
            reason = "eos" if picks[b] in seq.eos else "max_new_tokens" if seq.num_generated == seq.max_new_tokens else None
            out = StepOutput(seq.request_id, picks[b], reason is not None, reason)
            if reason is not None:
                self._finish(seq, reason)
            self.outbox.put(out)

    def _finish(self, seq: Sequence, reason: str) -> None:
        self.scheduler.finish(seq, reason)
        del self.requests[seq.request_id]

    def _fail(self, seq: Sequence, error: Exception) -> None:
        """seq's call or sampling raised: it ends now, its blocks freed, its reader told why."""
        self._finish(seq, "error")
        self.outbox.put(StepOutput(seq.request_id, None, True, "error", f"{type(error).__name__}: {error}"))

    def _cancel(self, box: int) -> None:
        """A private reader left (generate raised, a stream was closed): its unfinished requests end unread."""
        if self._busy:  # never change the queues in the middle of a step: the next step does it
            if box not in self.outbox.abandoned:
                self.outbox.abandoned.append(box)
            return
        for rid in self.outbox.close(box):
            self.outbox.forget(rid)
            self._finish(self.requests[rid], "abort")

    def _requests(self, prompts, max_new_tokens, sampler, eos_token_id) -> list[Sequence]:
        """The checked requests of generate()/stream(): prompts is a list of prompts."""
        if isinstance(prompts, torch.Tensor) and prompts.dim() == 2:
            prompts = list(prompts)  # (B, T) -> B rows
        if not isinstance(prompts, (list, tuple)) or any(is_int(p) for p in prompts):
            fail_type("prompts", prompts, "a list of prompts, each a list of token ids (one prompt: [prompt])")
        n = len(prompts)
        news = list(max_new_tokens) if isinstance(max_new_tokens, (list, tuple)) else [max_new_tokens] * n
        samplers = list(sampler) if isinstance(sampler, (list, tuple)) else [sampler] * n
        if len(news) != n or len(samplers) != n:
            raise ValueError(f"max_new_tokens and sampler: one value, or a list of one per prompt ({n})")
        return [self._sequence(p, m, s, eos_token_id, f"prompts[{i}]")
                for i, (p, m, s) in enumerate(zip(prompts, news, samplers))]  # all checked before any is queued

    def generate(self, prompts, max_new_tokens, sampler=None, eos_token_id=None) -> list[list[int]]:
        """Run prompts to completion; -> new tokens per prompt, in input order. max_new_tokens/sampler: one or a list.

        Other requests advance too (their outputs wait for their readers). If one of these requests fails,
        the others of this call are aborted and StepError says why.
        """
        seqs = self._requests(prompts, max_new_tokens, sampler, eos_token_id)
        box = self.outbox.open()
        try:
            rids = [self._enqueue(seq, box) for seq in seqs]
            made = {rid: [] for rid in rids}
            while self.outbox.unfinished(box):
                self._advance()
                for out in self.outbox.take(box):
                    if out.error is not None:
                        raise StepError(f"request {out.request_id} (prompts[{rids.index(out.request_id)}]) failed: "
                                        f"{out.error}; the other requests of this generate() call were aborted")
                    if out.token is not None:  # an aborted request's last output carries none
                        made[out.request_id].append(out.token)
        finally:
            self._cancel(box)
        return [made[rid] for rid in rids]

    def stream(self, prompts=None, max_new_tokens=None, sampler=None, eos_token_id=None):
        """Yield StepOutputs as they are made: of these prompts (queued now, before the first item is asked for),
        or without prompts, of add_request()'s requests until none is left. Closing it aborts its own requests."""
        if prompts is None:
            for name, value in (("max_new_tokens", max_new_tokens), ("sampler", sampler), ("eos_token_id", eos_token_id)):
                if value is not None:
                    raise ValueError(f"{name}={value!r} without prompts: stream() alone reads add_request()'s requests")
            return Reader(self._stream(SHARED), self._cancel, SHARED)
        seqs = self._requests(prompts, max_new_tokens, sampler, eos_token_id)
        box = self.outbox.open()
        for seq in seqs:
            self._enqueue(seq, box)
        return Reader(self._stream(box), self._cancel, box)

    def _stream(self, box: int):
        try:
            while True:
                out = self.outbox.pop(box)  # one at a time: a paused stream holds nothing another reader could want
                if out is not None:
                    yield out
                elif self.outbox.unfinished(box):
                    self._advance()
                else:
                    return
        finally:
            self._cancel(box)

    def reset_stats(self) -> None:
        for name in vars(EngineStats()):
            setattr(self.stats, name, 0)

    @property
    def kv_bytes_reserved(self) -> int:
        """Bytes of the block pools (storage), reserved once at construction."""
        return self.cache.nbytes

    def kv_bytes_used(self) -> int:
        """Bytes of KV slots holding a live key/value right now: slots filled x bytes per slot."""
        return self.cache.slots_used() * self.cache.bytes_per_slot

    def kv_bytes_allocated(self) -> int:
        """Bytes of the blocks in use right now (filled or not): used / allocated is the internal fragmentation."""
        return self.cache.allocator.num_used * self.cache.block_size * self.cache.bytes_per_slot
