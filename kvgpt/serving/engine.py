"""LLMEngine: continuous batching over the paged KV cache, one MiniGPTInferenceModel.prefill call per step.

add_request() queues a prompt; step() asks the scheduler for rows, runs them through the model in one
ragged call (decode rows beside prefill chunks), samples each finished row with its own sampler and
generator, and returns what was made. The name and API follow vLLM's and nano-vllm's LLMEngine.
Introduced in notebooks/10_paged_attention.ipynb.
"""

from __future__ import annotations

from dataclasses import dataclass
from numbers import Integral

import torch

from ..batching import check_token_ids
from ..sampling import Sampler, greedy, row_generators, seen_mask
from ..validation import is_int
from .blocks import NoFreeBlocksError
from .paged import PagedKVCache
from .scheduler import EngineStats, Scheduler, Sequence


@dataclass(frozen=True)
class StepOutput:
    """One token made by step(): finish_reason is "eos" or "max_new_tokens" on a request's last token, else None.

    Introduced in notebooks/10_paged_attention.ipynb.
    """

    request_id: int
    token: int
    finished: bool
    finish_reason: str | None


def _positive(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral) or value <= 0:
        raise ValueError(f"{name}={value!r}: must be a positive int")
    return int(value)


class LLMEngine:
    """Requests in, tokens out, one step at a time; every request gets what it would get generated alone.

    num_blocks None: enough blocks for max_num_seqs sequences of the model's full context.
    Introduced in notebooks/10_paged_attention.ipynb.
    """

    def __init__(self, model, block_size: int = 16, num_blocks: int | None = None, max_num_seqs: int = 16,
                 max_num_batched_tokens: int = 256, enable_prefix_caching: bool = True) -> None:
        self.model, cfg = model, model.config
        block_size, max_num_seqs = _positive("block_size", block_size), _positive("max_num_seqs", max_num_seqs)
        max_num_batched_tokens = _positive("max_num_batched_tokens", max_num_batched_tokens)
        if num_blocks is None:
            num_blocks = max_num_seqs * -(-cfg.block_size // block_size)
        param = next(model.parameters())
        self.cache = PagedKVCache(cfg, _positive("num_blocks", num_blocks), block_size, param.device, param.dtype,
                                  enable_prefix_caching)
        self.stats = EngineStats()
        self.scheduler = Scheduler(self.cache, max_num_seqs, max_num_batched_tokens, self.stats)
        self.requests: dict[int, Sequence] = {}  # unfinished requests by id
        self._next_id = 0

    def add_request(self, prompt, max_new_tokens: int, sampler: Sampler | None = None, eos_token_id=None) -> int:
        """Queue a prompt (list of token ids); -> its request id. Checked before anything changes."""
        return self._enqueue(self._sequence(prompt, max_new_tokens, sampler, eos_token_id))

    def _enqueue(self, seq: Sequence) -> int:
        seq.request_id, self._next_id = self._next_id, self._next_id + 1
        self.requests[seq.request_id] = seq
        self.scheduler.add(seq)
        return seq.request_id

    def _sequence(self, prompt, max_new_tokens, sampler, eos_token_id) -> Sequence:
        """A validated request, not queued yet (its id is given when it is)."""
        cfg, bs = self.model.config, self.cache.block_size
        prompt = prompt.tolist() if isinstance(prompt, torch.Tensor) else list(prompt)
        if not prompt:
            raise ValueError("prompt=[]: a request needs at least one token")
        check_token_ids("prompt", prompt, cfg.vocab_size)
        max_new_tokens = _positive("max_new_tokens", max_new_tokens)
        if len(prompt) + max_new_tokens > cfg.block_size:
            raise ValueError(f"prompt length {len(prompt)} + max_new_tokens={max_new_tokens} exceeds the model's "
                             f"context block_size={cfg.block_size}")
        blocks = -(-(len(prompt) + max_new_tokens - 1) // bs)  # the last new token is never fed back
        if blocks > self.cache.allocator.num_blocks:
            raise ValueError(f"a request of {len(prompt)} + {max_new_tokens} tokens needs {blocks} blocks but the pool "
                             f"has num_blocks={self.cache.allocator.num_blocks}: no preemption could ever fit it")
        if sampler is not None and not isinstance(sampler, Sampler):
            raise ValueError(f"sampler={sampler!r}: must be None (greedy) or a kvgpt.Sampler")
        eos = [] if eos_token_id is None else list(eos_token_id) if isinstance(eos_token_id, (list, tuple)) else [eos_token_id]
        check_token_ids("eos_token_id", eos, cfg.vocab_size)
        seq = Sequence(-1, prompt, max_new_tokens, sampler, frozenset(eos))
        if sampler is not None and not sampler.is_greedy:  # exactly the generator a solo generate() would use
            seq.generator = row_generators(sampler.seed, 1)[0]
        if sampler is not None and sampler.knobs["repetition_penalty"] != 1.0:
            seq.seen = seen_mask([prompt], cfg.vocab_size, 1)
        return seq

    def abort_request(self, request_id: int) -> None:
        """Stop an unfinished request now (vLLM's abort_request): it leaves its queue and its blocks are freed.

        Call it between steps, from the thread that calls step(). An id that is not unfinished (never given,
        finished, or aborted already) raises ValueError naming it, and nothing changes.
        Introduced in notebooks/15_serving.ipynb.
        """
        seq = self.requests.get(request_id) if is_int(request_id) else None  # True is not request 1
        if seq is None:
            raise ValueError(f"request_id={request_id!r}: no unfinished request has this id "
                             f"({len(self.requests)} unfinished)")
        self.scheduler.abort(seq)
        del self.requests[request_id]

    def has_unfinished(self) -> bool:
        return self.scheduler.has_unfinished()

    def step(self) -> list[StepOutput]:
        """One scheduler step: its rows through the model, a token for every row that reached its end."""
        plan = self.scheduler.schedule()
        if not plan:
            if self.scheduler.waiting and not self.scheduler.running:  # nothing can free a block: never spin
                seq, free = self.scheduler.waiting[0], self.cache.allocator.num_free
                raise NoFreeBlocksError(f"request {seq.request_id} waits for KV blocks, nothing is running and only "
                                        f"{free} of {self.cache.allocator.num_blocks} blocks are free (held elsewhere?)")
            return []
        self.stats.steps += 1
        # decode rows and prompt chunks go in separate calls: one ragged call would pad every decode row to the
        # longest chunk (16 decode rows beside a 200-token chunk: 3,200 token-rows of work instead of 216)
        decode = [(seq, n) for seq, n in plan if seq.is_decode]
        prefill = [(seq, n) for seq, n in plan if not seq.is_decode]
        self.stats.decode_tokens += len(decode)
        self.stats.prefill_tokens += sum(n for _, n in prefill)
        return [out for rows in (decode, prefill) if rows for out in self._run(rows)]

    def _run(self, rows: list) -> list[StepOutput]:
        """One ragged model call over rows = [(sequence, tokens to run)]; sample the rows that reached their end."""
        t = max(n for _, n in rows)
        ids = torch.tensor([[0] * (t - n) + seq.tokens[seq.num_computed : seq.num_computed + n]
                            for seq, n in rows])  # (B, T), each row's tokens right-aligned (left-padded)
        batch = self.cache.batch([seq.request_id for seq, _ in rows], [n for _, n in rows])
        with torch.inference_mode():
            logits = self.model.prefill(ids.to(self.cache.k_pools[0].device), batch, last_only=True)  # (B, V)
        self.stats.model_calls += 1
        self.stats.padded_tokens += len(rows) * t
        outputs, greedy_ids = [], None
        for b, (seq, n) in enumerate(rows):
            self.cache.commit(seq.request_id, n, seq.tokens)
            seq.num_computed += n
            if seq.remaining:  # a prompt chunk that does not reach the end: its logits are not needed
                continue
            if seq.sampler is None:
                greedy_ids = greedy(logits).tolist() if greedy_ids is None else greedy_ids
                token = greedy_ids[b]
            else:
                token = self._sample(seq, logits[b : b + 1])
            seq.tokens.append(token)
            reason = "eos" if token in seq.eos else "max_new_tokens" if seq.num_generated == seq.max_new_tokens else None
            if reason is not None:
                self.scheduler.finish(seq, reason)
                del self.requests[seq.request_id]
            outputs.append(StepOutput(seq.request_id, token, reason is not None, reason))
        return outputs

    @staticmethod
    def _sample(seq: Sequence, logits: torch.Tensor) -> int:
        """Exactly AutoregressiveGenerator's pick for a batch of one: the same sampler, generator and history."""
        with torch.inference_mode():
            gens = None if seq.generator is None else [seq.generator]
            token = seq.sampler.sample(logits, seq.seen, gens, [True])  # (1,)
        if seq.seen is not None:
            seq.seen[0, token] = True
        return int(token[0])

    def _add_all(self, prompts, max_new_tokens, sampler, eos_token_id) -> list[int]:
        n = len(prompts)
        news = list(max_new_tokens) if isinstance(max_new_tokens, (list, tuple)) else [max_new_tokens] * n
        samplers = list(sampler) if isinstance(sampler, (list, tuple)) else [sampler] * n
        if len(news) != n or len(samplers) != n:
            raise ValueError(f"max_new_tokens and sampler: one value, or a list of one per prompt ({n})")
        seqs = [self._sequence(p, m, s, eos_token_id) for p, m, s in zip(prompts, news, samplers)]  # all checked
        return [self._enqueue(seq) for seq in seqs]

    def generate(self, prompts, max_new_tokens, sampler=None, eos_token_id=None) -> list[list[int]]:
        """Run prompts to completion; -> new tokens per prompt, in input order. max_new_tokens/sampler: one or a list."""
        rids = self._add_all(prompts, max_new_tokens, sampler, eos_token_id)
        made = {rid: [] for rid in rids}
        while any(rid in self.requests for rid in rids):
            for out in self.step():
                if out.request_id in made:
                    made[out.request_id].append(out.token)
        return [made[rid] for rid in rids]

    def stream(self, prompts=None, max_new_tokens=None, sampler=None, eos_token_id=None):
        """Yield StepOutputs as they are made, until every request (those given here and earlier ones) is done.

        Prompts given here are queued now, before the first item is asked for.
        """
        if prompts is not None:
            self._add_all(prompts, max_new_tokens, sampler, eos_token_id)
        return self._stream()

    def _stream(self):
        while self.has_unfinished():
            yield from self.step()

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
