"""Autoregressive generation: prefill the prompt once, then decode one token per step from the KV cache.

`use_cache=False` is the honest baseline (recompute the whole prefix every step, as nanoGPT does);
both paths choose identical tokens. Introduced in notebooks/05_decoding.ipynb.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from .batching import check_token_ids, pad_prompts, prompt_rows
from .compiled import CompiledDecoder, graph_capacity
from .context import check_context_length, check_context_policy, check_sinks, sliding_forward
from .kv_cache import CACHE_KINDS, KVCacheManager
from .model import MiniGPTInferenceModel
from .sampling import Sampler, greedy, seen_mask
from .sinks import check_sinks_model, sink_forward
from .validation import check_int, fail_type


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
    rows: list  # the prompts as lists of ints
    batched: bool
    ids: torch.Tensor  # (B, T) left-padded prompts
    mask: torch.Tensor | None  # (B, T) 0/1, None when no row is padded
    max_new: int
    sampler: Sampler | None
    use_cache: bool
    cache_kind: str
    eos: torch.Tensor | None  # (E,) stop ids
    pad_id: int
    paused: float = 0.0  # seconds a stream consumer held the generator
    slides: int = 0


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
        if not isinstance(model, MiniGPTInferenceModel):  # else the first generate fails on a missing attribute
            fail_type("model", model, "a kvgpt MiniGPTInferenceModel")
        self.model = model
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
        """The decode loop: yields (next ids (B,), raw logits (B, V), rows finished before this step or None)."""
        b = job.ids.size(0)
        steps, finish, active, done, next_ids = 0, [0] * b, [True] * b, None, None
        t_start = t_first = time.perf_counter()
        try:
            if job.max_new == 0:
                return
            forward, pick = self._forward(job), self._picker(job)
            for _ in range(job.max_new):
                with torch.inference_mode():  # entered per step, so a stream's consumer never runs inside it
                    logits = forward(next_ids)  # (B, V): the prompt at the first step, then one token per row
                    next_ids = pick(logits, active, done)  # (B,)
                steps += 1
                if steps == 1:
                    t_first = time.perf_counter()
                newly = self._finished(next_ids, job.eos, active) if job.eos is not None else ()
                for r in newly:
                    active[r], finish[r] = False, steps
                yield next_ids, logits, done
                if newly and not any(active):
                    return
                if newly:
                    done = torch.tensor([not a for a in active], device=next_ids.device)  # (B,)
        finally:
            t_end = time.perf_counter()
            reasons = ["eos" if f else "max_new_tokens" if steps == job.max_new else "stopped" for f in finish]
            self.last_stats = GenerationStats(
                (t_first - t_start) * 1e3, max(t_end - t_first - job.paused, 0.0) * 1e3,
                [len(r) for r in job.rows], [f or steps for f in finish], reasons, job.use_cache, job.cache_kind,
                job.slides)

    def _forward(self, job: _Job):
        """-> forward(next_ids): logits (B, V) of the last position. The first call (None) runs the prompt."""
        model, (b, t0) = self.model, job.ids.shape
        step = model.forward_step if self.compiled is None else self.compiled.trusted_step  # (ids, position, cache)
        if self.sinks is not None:
            return sink_forward(model, job, self.sinks, self.window, step)
        if self.window is not None:
            return sliding_forward(model, job, self.window, step)
        if job.use_cache:  # sized to exactly this generation; compiled: rounded up, one graph per capacity
            capacity = t0 + job.max_new
            if self.compiled is not None:
                capacity = graph_capacity(capacity, model.config.block_size)
            cache = KVCacheManager(model.config, b, job.cache_kind, capacity=capacity)

            def cached(next_ids):
                if next_ids is None:
                    return model.prefill(job.ids, cache, job.mask, last_only=True)
                return step(next_ids, cache.length, cache)  # the next free slot

            return cached
        seq = [job.ids, job.mask]  # (B, S) ids and 0/1 mask (None: no padding), grown every step

        def uncached(next_ids):  # the baseline: the whole prefix again, LM head on the last position only
            if next_ids is not None:
                seq[0] = torch.cat([seq[0], next_ids[:, None]], dim=1)
                seq[1] = None if seq[1] is None else torch.cat([seq[1], seq[1][:, -1:]], dim=1)
            return model(seq[0], attention_mask=seq[1], last_only=True)

        return uncached

    def _picker(self, job: _Job):
        """-> pick(logits, active, done): next ids (B,); finished rows get the pad token and no draw."""
        sampler, b, v = job.sampler, job.ids.size(0), self.model.config.vocab_size
        gens = sampler.generators(b) if sampler is not None and not sampler.is_greedy else None
        seen = None  # (B, V) tokens each row has seen, prompt included, pads never: for the repetition penalty
        if sampler is not None and sampler.knobs["repetition_penalty"] != 1.0:
            prompt = job.ids if job.mask is None else job.ids.masked_fill(job.mask == 0, -1)  # -1: not a token
            seen = seen_mask(prompt, v, b).to(job.ids.device)

        def pick(logits, active, done):
            ids = greedy(logits) if sampler is None else sampler.sample(logits, seen, gens, active)
            if done is not None:  # finished rows: their logits are ignored, they are fed the pad token
                ids = ids.masked_fill(done, job.pad_id)
            if seen is not None:
                seen.scatter_(1, ids[:, None], True)
            return ids

        return pick

    @staticmethod
    def _finished(next_ids: torch.Tensor, eos: torch.Tensor, active: list) -> list:
        hit = torch.isin(next_ids, eos).tolist()  # one host sync per step, only when an EOS is set
        return [r for r, (a, h) in enumerate(zip(active, hit)) if a and h]

    def _prepare(self, prompt, max_new_tokens, sampler, use_cache, cache_kind, eos_token_id, pad_token_id) -> _Job:
        cfg = self.model.config
        rows, batched = prompt_rows(prompt, cfg.vocab_size)
        max_new_tokens = check_int("max_new_tokens", max_new_tokens, 0)  # a numpy int would wrap in the sums below
        if not isinstance(use_cache, bool):
            raise ValueError(f"use_cache={use_cache!r}: must be True (KV cache) or False (recompute every step)")
        if cache_kind not in CACHE_KINDS:
            raise ValueError(f"cache_kind={cache_kind!r}: must be one of {CACHE_KINDS}")
        if self.sinks is not None and not use_cache:
            raise ValueError("use_cache=False with context_policy='sinks': the policy IS a cache (its kept keys were "
                             "computed in the context they had then); recomputing the kept tokens is another model")
        if self.sinks is not None and cache_kind == "int8":
            raise ValueError("cache_kind='int8' with context_policy='sinks': every eviction re-rotates the kept keys, "
                             "which would re-quantize them each time; use 'static' or 'dynamic'")
        if self.compiled is not None and (not use_cache or cache_kind != "static"):
            raise ValueError(f"use_cache={use_cache}, cache_kind={cache_kind!r}: a generator built with compile=True "
                             "decodes from a static cache (use_cache=True, cache_kind='static')")
        if sampler is not None and not isinstance(sampler, Sampler):
            raise ValueError(f"sampler={sampler!r}: must be None (greedy) or a kvgpt.sampling.Sampler")
        longest = max(len(r) for r in rows)
        check_context_length(self.window, longest, max_new_tokens, cfg.block_size)
        eos = list(eos_token_id) if isinstance(eos_token_id, (list, tuple)) else [eos_token_id]
        eos = [] if eos_token_id is None else eos
        check_token_ids("eos_token_id", eos, cfg.vocab_size)
        pad = pad_token_id if pad_token_id is not None else eos[0] if eos else 0
        check_token_ids("pad_token_id", [pad], cfg.vocab_size)
        device = next(self.model.parameters()).device
        ids, mask = pad_prompts(rows, pad, device)  # (B, T), (B, T)
        eos_t = torch.tensor(eos, device=device) if eos else None
        padded = any(len(r) < longest for r in rows)
        return _Job(rows, batched, ids, mask if padded else None, int(max_new_tokens), sampler, use_cache,
                    cache_kind, eos_t, pad)

