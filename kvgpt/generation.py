"""Autoregressive generation: prefill the prompt once, then decode one token per step from the KV cache.

`use_cache=False` is the honest baseline (recompute the whole prefix every step, as nanoGPT does);
both paths choose identical tokens. Introduced in notebooks/05_decoding.ipynb.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from .batching import pad_prompts
from .cache_manager import CACHE_KINDS, KVCacheManager
from .compiled import CompiledDecoder, graph_capacity
from .context import SlidingWindow, check_context_length, check_context_policy, check_sinks
from .model import check_model
from .requests import CheckedRequest, RowSampler, check_request
from .sampling import Sampler
from .sinks import SinkWindow, check_sinks_cache_kind, check_sinks_model
from .validation import check_bool, check_choice


@dataclass
class GenerationStats:
    """Timing and counts of the last generate()/stream() call (time.perf_counter, milliseconds).

    prefill = the prompt's forward pass plus choosing the first new token (time to first token);
    decode = every later step. A stream consumer's own time between tokens is not counted.
    Per-row lists are in batch order; stop_reasons[b] is "eos", "max_new_tokens" or "stopped" (stream closed).
    """

    prefill_ms: float
    decode_ms: float
    prompt_lengths: list
    new_lengths: list
    stop_reasons: list
    use_cache: bool
    cache_kind: str
    slides: int = 0  # context slides (re-prefills of the window) under "slide", evicting steps under "sinks"

    n_prompt_tokens = property(lambda self: sum(self.prompt_lengths))
    n_new_tokens = property(lambda self: sum(self.new_lengths))
    # each row's first new token comes out of the prefill; the rest are decode tokens
    n_decode_tokens = property(lambda self: sum(max(n - 1, 0) for n in self.new_lengths))

    @property
    def decode_tokens_per_s(self) -> float:
        """Decode throughput: tokens made by decode steps (all rows) per second of decode time."""
        return self.n_decode_tokens / (self.decode_ms / 1e3) if self.decode_ms > 0 else 0.0


def _compile_backend(compile) -> str:
    """compile=True / "inductor" -> "inductor", "aot" -> "aot"; anything else is refused by name."""
    if compile is True or compile in ("inductor", "aot"):
        return "inductor" if compile is True else compile
    raise ValueError(f"compile={compile!r}: must be False, True (= 'inductor') or 'aot'")


@dataclass
class _Job:
    """One generate()/stream() call: the checked request, the left-padded prompt batch, how to decode it."""

    request: CheckedRequest
    ids: torch.Tensor  # (B, T) left-padded prompts
    mask: torch.Tensor | None  # (B, T) 0/1, None when no row is padded
    use_cache: bool
    cache_kind: str
    paused: float = 0.0  # seconds a stream consumer held the generator
    slides: int = 0

    rows = property(lambda self: self.request.rows)
    batched = property(lambda self: self.request.batched)
    max_new = property(lambda self: self.request.max_new_tokens)


class CachedFeed:
    """Feeds the model from a KV cache: the prompt once (prefill), then one token per row (a decode step).

    Introduced in notebooks/05_decoding.ipynb.
    """

    def __init__(self, model, job: _Job, step, capacity: int) -> None:
        self.model, self.job, self.step = model, job, step  # step: model.forward_step or the compiled one
        self.cache = KVCacheManager(model.config, job.ids.size(0), job.cache_kind, capacity=capacity)

    def prompt(self) -> torch.Tensor:
        return self.model.prefill(self.job.ids, self.cache, self.job.mask, last_only=True)  # (B, V)

    def token(self, next_ids: torch.Tensor) -> torch.Tensor:
        return self.step(next_ids, self.cache.length, self.cache)  # (B, V): written at the next free slot


class RecomputeFeed:
    """The honest baseline (use_cache=False, as nanoGPT): the whole prefix again every step, LM head on the last.

    Introduced in notebooks/05_decoding.ipynb.
    """

    def __init__(self, model, job: _Job) -> None:
        self.model, self.ids, self.mask = model, job.ids, job.mask  # (B, S) ids and 0/1 mask, grown every step

    def prompt(self) -> torch.Tensor:
        return self.model(self.ids, attention_mask=self.mask, last_only=True)  # (B, V)

    def token(self, next_ids: torch.Tensor) -> torch.Tensor:
        self.ids = torch.cat([self.ids, next_ids[:, None]], dim=1)  # (B, S + 1)
        self.mask = None if self.mask is None else torch.cat([self.mask, self.mask[:, -1:]], dim=1)
        return self.prompt()


class AutoregressiveGenerator:
    """Prefill once, then one token per step; greedy when sampler is None. Holds no state between calls
    except `last_stats` (a GenerationStats), so two generations in a row equal two fresh ones.

    Shapes: a prompt is list[int] or a (T,) LongTensor -> list[int] (prompt + new tokens); a batch is a
    list of prompts (or a (B, T) tensor) -> a list of such lists, unpadded, each stopped at its own EOS.
    context_policy "refuse" (default) rejects prompt + max_new_tokens > block_size; "slide" keeps the last
    `window` tokens when the context is full and goes on (kvgpt/context.py); "sinks" (RoPE models) keeps the
    first `sinks` tokens and the last `window` with no re-prefill (kvgpt/sinks.py). compile=True (or "inductor") runs
    every decode step as one torch.compile graph, compile="aot" as one AOTInductor C++ function (torch >= 2.6)
    (kvgpt/compiled.py; static cache only; the first call per batch size and capacity compiles, seconds, then
    it is reused).

    Introduced in notebooks/05_decoding.ipynb.
    """

    def __init__(self, model, context_policy: str = "refuse", window: int | None = None, compile=False,
                 sinks: int | None = None):
        self.model = check_model("model", model)  # else the first generate fails on a missing attribute
        self.window = check_context_policy(context_policy, window, model.config.block_size, sinks)  # None: refuse
        self.sinks = None
        if context_policy == "sinks":
            check_sinks_model(model.config)
            self.sinks = check_sinks(sinks, model.config.block_size)
            if compile is not False:
                raise ValueError("compile: a compiled step writes a fixed slot per step; context_policy='sinks' "
                                 "moves the kept keys, so it runs eager steps only")
        self.compiled = None if compile is False else CompiledDecoder(model, _compile_backend(compile))
        self.last_stats: GenerationStats | None = None

    def generate(self, prompt, max_new_tokens: int, sampler: Sampler | None = None, use_cache: bool = True,
                 cache_kind: str = "static", eos_token_id=None, pad_token_id: int | None = None,
                 return_logits: bool = False):
        """Prompt(s) followed by up to max_new_tokens new tokens (the EOS token included when it stops a row).

        eos_token_id: an int or a list of ints; pad_token_id (fed to finished rows and used as left
        padding, never seen by the model's attention) defaults to the first EOS id, else 0. With
        return_logits, also returns each row's raw model logits per new token, (N_b, V) in fp32.
        """
        job = self._prepare(prompt, max_new_tokens, sampler, use_cache, cache_kind, eos_token_id, pad_token_id)
        steps, logits = [], []
        for next_ids, step_logits, _ in self._run(job):
            steps.append(next_ids)  # (B,) stays a tensor: no host round trip per step
            if return_logits:
                logits.append(step_logits)
        new = torch.stack(steps, 1).tolist() if steps else [[] for _ in job.rows]  # (B, steps)
        n = self.last_stats.new_lengths
        out = [row + new[b][: n[b]] for b, row in enumerate(job.rows)]
        result = out if job.batched else out[0]
        if not return_logits:
            return result
        v = self.model.config.vocab_size
        per_row = [torch.stack([s[b] for s in logits[: n[b]]]).float() if n[b] else torch.empty(0, v)
                   for b in range(len(job.rows))]  # (N_b, V) each
        return result, (per_row if job.batched else per_row[0])

    def stream(self, prompt, max_new_tokens: int, sampler: Sampler | None = None, use_cache: bool = True,
               cache_kind: str = "static", eos_token_id=None, pad_token_id: int | None = None):
        """Like generate, but yields each new token as soon as it is chosen (the prompt is not repeated).

        One prompt: yields ints. A batch: yields one list per step with each row's new token, None for
        rows that already finished. Arguments are checked now, before the first token is asked for.
        """
        job = self._prepare(prompt, max_new_tokens, sampler, use_cache, cache_kind, eos_token_id, pad_token_id)
        return self._stream(job)

    def _stream(self, job: _Job):
        run, t = self._run(job), None
        try:
            for next_ids, _, done in run:
                ids = next_ids.tolist()
                done = done.tolist() if done is not None else [False] * len(ids)
                item = [None if d else i for i, d in zip(ids, done)] if job.batched else ids[0]
                t = time.perf_counter()
                yield item
                job.paused, t = job.paused + time.perf_counter() - t, None
        finally:
            if t is not None:  # closed while the consumer held the last token
                job.paused += time.perf_counter() - t
            run.close()

    def _run(self, job: _Job):
        """The decode loop, top to bottom: prefill the prompt once, then pick a token per row and feed it back.

        Yields (next ids (B,), raw logits (B, V), rows finished before this step or None); fills last_stats.
        """
        req, b = job.request, job.ids.size(0)
        history = job.ids if job.mask is None else job.ids.masked_fill(job.mask == 0, -1)  # -1: padding, not a token
        picker = RowSampler(req.sampler, history, self.model.config.vocab_size, b, req.pad_id, req.eos)
        steps, finish = 0, [0] * b  # finish[r]: the step at which row r emitted its EOS
        t_start = t_first = time.perf_counter()
        try:
            if job.max_new == 0:
                return
            feed = self._feed(job)  # a KV cache (the default), the recompute baseline, or a sliding window
            with torch.inference_mode():  # entered per call, so a stream's consumer never runs inside it
                logits = feed.prompt()  # (B, V): the whole prompt in one pass
            while True:
                with torch.inference_mode():
                    next_ids = picker.pick(logits)  # (B,): argmax or a draw; rows already finished get the pad
                steps += 1
                t_first = t_first if steps > 1 else time.perf_counter()
                done_before = picker.done
                for r in picker.finish(next_ids):  # rows whose token is an EOS stop here
                    finish[r] = steps
                yield next_ids, logits, done_before
                if steps == job.max_new or picker.all_finished:
                    return
                with torch.inference_mode():
                    logits = feed.token(next_ids)  # (B, V): one new token per row, from the cache
        finally:
            t_end = time.perf_counter()
            reasons = ["eos" if f else "max_new_tokens" if steps == job.max_new else "stopped" for f in finish]
            self.last_stats = GenerationStats(
                (t_first - t_start) * 1e3, max(t_end - t_first - job.paused, 0.0) * 1e3,
                [len(r) for r in job.rows], [f or steps for f in finish], reasons, job.use_cache, job.cache_kind,
                job.slides)

    def _feed(self, job: _Job):
        """How the model is fed: -> an object with prompt() and token(next_ids), each -> logits (B, V)."""
        model = self.model
        step = model.forward_step if self.compiled is None else self.compiled.trusted_step  # (ids, position, cache)
        if self.sinks is not None:
            return SinkWindow(model, job, self.sinks, self.window, step)
        if self.window is not None:
            return SlidingWindow(model, job, self.window, step)
        if not job.use_cache:
            return RecomputeFeed(model, job)
        capacity = job.ids.size(1) + job.max_new  # sized to exactly this generation
        if self.compiled is not None:  # compiled: rounded up, one graph per capacity
            capacity = graph_capacity(capacity, model.config.block_size)
        return CachedFeed(model, job, step, capacity)

    def _prepare(self, prompt, max_new_tokens, sampler, use_cache, cache_kind, eos_token_id, pad_token_id) -> _Job:
        cfg = self.model.config
        req = check_request(prompt, max_new_tokens, sampler, eos_token_id, cfg.vocab_size, pad_token_id)
        check_bool("use_cache", use_cache)
        check_choice("cache_kind", cache_kind, tuple(CACHE_KINDS))
        if self.sinks is not None and not use_cache:
            raise ValueError("use_cache=False with context_policy='sinks': the policy IS a cache (its kept keys were "
                             "computed in the context they had then); recomputing the kept tokens is another model")
        if self.sinks is not None:
            check_sinks_cache_kind(cache_kind)
        if self.compiled is not None and (not use_cache or cache_kind != "static"):
            raise ValueError(f"use_cache={use_cache}, cache_kind={cache_kind!r}: a generator built with compile=True "
                             "decodes from a static cache (use_cache=True, cache_kind='static')")
        longest = max(len(r) for r in req.rows)
        check_context_length(self.window, longest, req.max_new_tokens, cfg.block_size)
        ids, mask = pad_prompts(req.rows, req.pad_id, next(self.model.parameters()).device)  # (B, T), (B, T)
        padded = any(len(r) < longest for r in req.rows)
        return _Job(req, ids, mask if padded else None, use_cache, cache_kind)
