"""What serving costs besides time: KV memory reserved vs used (static vs paged), prefix caching, step overheads.

Memory is read from storage (a real StaticKVCache, the engine's block pools), never from shapes alone.
The prefix workload is text: one shared 200-character system prompt, then 50 short questions (CharTokenizer).
Introduced in notebooks/11_continuous_batching.ipynb.
"""

from __future__ import annotations

import time

import torch

from ..cache_manager import KVCacheManager
from .memory import measured_kv_bytes
from .workload import Request

SYSTEM_PROMPT = ("You are the Chorus of a company of players. Answer each question in verse, in the voice of the "
                 "speaker named, briefly, as the play would have it; keep to the scene, "
                 "and end every speech well, friend.\n")
SPEAKERS = ("ROMEO", "JULIET", "HAMLET", "OPHELIA", "LEAR", "CORDELIA", "MACBETH", "PORTIA", "BRUTUS", "VIOLA")
QUESTIONS = ("What light is this?", "Where goest thou?", "Who knocks there?", "Why weep you so?", "What news?")


def prefix_prompts(n: int = 50) -> list[str]:
    """n prompts: SYSTEM_PROMPT (200 characters) + "SPEAKER: question\\n", speakers x questions in a fixed order."""
    pairs = [(s, q) for q in QUESTIONS for s in SPEAKERS]
    return [f"{SYSTEM_PROMPT}{s}: {q}\n" for s, q in (pairs * (n // len(pairs) + 1))[:n]]


def prefix_workload(quick: bool = False, max_new_tokens: int = 16, tokenizer=None) -> list[Request]:
    """The prefix-caching workload encoded with the embedded model's CharTokenizer (10 questions when quick)."""
    if tokenizer is None:
        from ..pretrained import load_pretrained

        tokenizer = load_pretrained("shakespeare-char")[1]
    return [Request(tuple(tokenizer.encode(p)), max_new_tokens) for p in prefix_prompts(10 if quick else 50)]


def static_slot_bytes(model) -> int:
    """Bytes of one token's keys and values in every layer, read from a real static cache's storage."""
    cfg = model.config
    cache = KVCacheManager(cfg, 1, "static", capacity=cfg.block_size)
    with torch.inference_mode():
        model.prefill(torch.zeros(1, 1, dtype=torch.long), cache)  # a static cache allocates on its first append
    return measured_kv_bytes(cache) // cfg.block_size


def kv_memory(model, requests: list[Request], block_size: int = 16, max_num_seqs: int = 16) -> list[dict]:
    """Per layout: KV bytes reserved vs used when every request holds its whole sequence (the vLLM paper's Fig. 2).

    A request's used slots are prompt + new - 1 (its last token is never fed back). Reserved:
    static = the model's context per row (a StaticKVCache sized for any request); static batching = the
    left-padded width of its batch of max_num_seqs (longest prompt + most new tokens, Part I's generate);
    paged = whole blocks of block_size slots. Introduced in notebooks/11_continuous_batching.ipynb.
    """
    config, per_slot = model.config, static_slot_bytes(model)
    used = [len(r.prompt) + r.max_new_tokens - 1 for r in requests]
    batch_width = []
    for first in range(0, len(requests), max_num_seqs):
        batch = requests[first:first + max_num_seqs]
        batch_width += [max(len(r.prompt) for r in batch) + max(r.max_new_tokens for r in batch)] * len(batch)
    layouts = {f"static (capacity {config.block_size} per row)": [config.block_size] * len(requests),
               f"static batching (batches of {max_num_seqs}, padded width)": batch_width,
               f"paged ({block_size}-slot blocks)": [-(-u // block_size) * block_size for u in used]}
    return [{"layout": name, "requests": len(requests), "reserved_bytes": sum(res) * per_slot,
             "used_bytes": sum(used) * per_slot, "utilization": sum(used) / sum(res), "bytes_per_slot": per_slot}
            for name, res in layouts.items()]


def engine_memory_trace(engine, requests: list[Request]) -> list[dict]:
    """Run the requests on an LLMEngine and read its pools after every step: bytes used / allocated / reserved."""
    for r in requests:
        engine.add_request(list(r.prompt), r.max_new_tokens)
    rows = []
    while engine.has_unfinished():
        engine.step()
        rows.append({"step": len(rows), "used_bytes": engine.kv_bytes_used(),
                     "allocated_bytes": engine.kv_bytes_allocated(), "reserved_bytes": engine.kv_bytes_reserved})
    return rows


def pool_concurrency(engine_factory, requests: list[Request], seats) -> list[dict]:
    """How many of `requests` one pool serves at once, per seat limit: engine_factory(max_num_seqs) -> an LLMEngine
    (the same num_blocks every time), all requests queued at t = 0 and run to the end.

    Per seat limit: the most requests running at once, steps, preemptions (events) and the requests preempted at
    least once (a request that left `running` without finishing), read from the engine between steps.
    Introduced in notebooks/10_paged_attention.ipynb.
    """
    rows = []
    for n in seats:
        engine = engine_factory(n)
        for r in requests:
            engine.add_request(list(r.prompt), r.max_new_tokens)
        peak, preempted = 0, set()
        while engine.has_unfinished():
            before = {seq.request_id for seq in engine.scheduler.running}
            engine.step()
            running = {seq.request_id for seq in engine.scheduler.running}
            preempted |= {rid for rid in before - running if rid in engine.requests}  # left unfinished: preempted
            peak = max(peak, len(running))
        rows.append({"max_num_seqs": n, "num_blocks": engine.cache.allocator.num_blocks, "peak_running": peak,
                     "steps": engine.stats.steps, "preemptions": engine.stats.preemptions,
                     "requests_preempted": len(preempted), "finished": engine.stats.finished,
                     "peak_blocks_used": engine.stats.peak_blocks_used})
    return rows


def record_plans(engine) -> list:
    """Record what the engine's scheduler plans each step: a list that gets one [(request_id, tokens, decode?)] per
    step() from now on (the scheduler's schedule() is wrapped, nothing else changes).

    Introduced in notebooks/11_continuous_batching.ipynb.
    """
    plans, schedule = [], engine.scheduler.schedule

    def recorded():
        plan = schedule()
        plans.append([(seq.request_id, n, seq.is_decode) for seq, n in plan])
        return plan

    engine.scheduler.schedule = recorded
    return plans


class TimedModel:
    """Wraps a model so an engine's model calls are timed (prefill seconds, calls, token-rows B x T) apart from
    the engine's own Python work. Everything else is the model's. Introduced in notebooks/11_continuous_batching.ipynb.
    """

    def __init__(self, model):
        self._model, self.seconds, self.calls, self.rows = model, 0.0, 0, 0

    def __getattr__(self, name):
        return getattr(self._model, name)

    def prefill(self, ids, *args, **kwargs):
        start = time.perf_counter()
        out = self._model.prefill(ids, *args, **kwargs)
        self.seconds, self.calls, self.rows = self.seconds + time.perf_counter() - start, self.calls + 1, \
            self.rows + ids.numel()
        return out


def step_overhead(engine_factory, model, requests: list[Request]) -> dict:
    """Where an engine's step time goes: the model call vs the engine's Python (scheduling, tables, sampling).

    engine_factory(model) -> an engine; the same requests are served with a TimedModel in place of its model
    (swapped in after construction: the engine's constructor accepts only a real kvgpt model).
    """
    engine = engine_factory(model)
    engine.model = timed = TimedModel(engine.model)
    start = time.perf_counter()
    for r in requests:
        engine.add_request(list(r.prompt), r.max_new_tokens)
    steps = 0
    while engine.has_unfinished():
        engine.step()
        steps += 1
    wall = time.perf_counter() - start
    real = engine.stats.prefill_tokens + engine.stats.decode_tokens
    return {"steps": steps, "wall_s": wall, "model_s": timed.seconds, "engine_python_s": wall - timed.seconds,
            "engine_ms_per_step": (wall - timed.seconds) / steps * 1e3,
            "model_ms_per_step": timed.seconds / steps * 1e3,
            "token_rows_real": real, "token_rows_computed": timed.rows,
            "computed_per_real": timed.rows / real if real else float("nan")}
