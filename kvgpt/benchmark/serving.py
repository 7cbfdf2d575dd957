"""Serving a workload: every request arrives at t = 0; an engine is timed per token as each one comes out.

Three ways to serve the same requests on the same weights, greedy, no EOS (each request makes exactly its
max_new_tokens): static batching (Part I's batched generate, max_num_seqs requests at a time, each batch
running until its longest request ends), continuous batching (kvgpt.serving.LLMEngine, one step() at a time)
and vLLM (peers/vllm/bench.py, same step loop, read back from JSON). Each run is a Timeline; `summarize`
turns it into the table's columns. Introduced in notebooks/11_continuous_batching.ipynb.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field

import torch

from ..generation import AutoregressiveGenerator
from .workload import Request


@dataclass
class Timeline:
    """Every request's new tokens and the time each one came out (seconds since the run started).

    steps: one entry per engine step, the ids of the requests that got a token in it (row occupancy).
    Introduced in notebooks/11_continuous_batching.ipynb.
    """

    tokens: list = field(default_factory=list)  # tokens[r]: list of ids of request r
    times: list = field(default_factory=list)  # times[r][i]: seconds when token i of request r came out
    steps: list = field(default_factory=list)  # steps[s]: request indices that got a token at step s
    step_s: list = field(default_factory=list)  # step_s[s]: wall seconds of step s
    wall_s: float = 0.0
    idle: list = field(default_factory=list)  # idle[s]: rows that ran at step s but made nothing asked for
    cpu_s: float = float("nan")  # CPU seconds the serving process(es) used: on a busy machine, wall time is not work

    @classmethod
    def empty(cls, n: int) -> "Timeline":
        return cls([[] for _ in range(n)], [[] for _ in range(n)])

    def record(self, rid: int, token: int, t: float) -> None:
        self.tokens[rid].append(int(token))
        self.times[rid].append(t)


def percentile(values, q: float) -> float:
    """The q-th percentile (0..100) by linear interpolation; NaN for no values."""
    xs = sorted(values)
    if not xs:
        return float("nan")
    k = (len(xs) - 1) * q / 100
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def summarize(timeline: Timeline) -> dict:
    """Useful tokens/s, time to first token and inter-token latency (p50/p99, ms) of one run.

    Useful tokens are the ones a request asked for (static batching's padding steps are not counted).
    Per-token latency is the gap between consecutive tokens of the same request. tokens_per_cpu_s divides by the
    CPU time the serving process(es) used instead of wall time: what the run cost, whatever else the machine ran.
    Introduced in notebooks/11_continuous_batching.ipynb.
    """
    useful = sum(len(t) for t in timeline.tokens)
    ttft = [ts[0] * 1e3 for ts in timeline.times if ts]
    gaps = [(b - a) * 1e3 for ts in timeline.times for a, b in zip(ts, ts[1:])]
    return {"requests": len(timeline.tokens), "useful_tokens": useful, "steps": len(timeline.steps),
            "wall_s": timeline.wall_s, "tokens_per_s": useful / timeline.wall_s if timeline.wall_s else float("nan"),
            "ttft_mean_ms": statistics.fmean(ttft) if ttft else float("nan"),
            "ttft_p50_ms": percentile(ttft, 50), "ttft_p99_ms": percentile(ttft, 99),
            "itl_p50_ms": percentile(gaps, 50), "itl_p99_ms": percentile(gaps, 99),
            "step_ms_mean": statistics.fmean(timeline.step_s) * 1e3 if timeline.step_s else float("nan"),
            "cpu_s": timeline.cpu_s, "tokens_per_cpu_s": useful / timeline.cpu_s if timeline.cpu_s else float("nan")}


def static_batching(model, requests: list[Request], max_num_seqs: int = 16) -> Timeline:
    """Part I's batched generate, max_num_seqs requests at a time in arrival order, greedy, no EOS.

    A batch runs until its longest request ends: every row is fed a token each step, the rows that are
    already done make tokens nobody asked for (dropped here, but paid for). Shapes: each batch (B, T) left-padded.
    Introduced in notebooks/11_continuous_batching.ipynb.
    """
    if isinstance(max_num_seqs, bool) or not isinstance(max_num_seqs, int) or max_num_seqs < 1:
        raise ValueError(f"max_num_seqs={max_num_seqs!r}: must be an int >= 1")
    generator, timeline = AutoregressiveGenerator(model), Timeline.empty(len(requests))
    start = last = time.perf_counter()
    cpu = time.process_time()
    for first in range(0, len(requests), max_num_seqs):
        batch = list(range(first, min(first + max_num_seqs, len(requests))))
        wanted = [requests[r].max_new_tokens for r in batch]
        prompts = [list(requests[r].prompt) for r in batch]
        for step, ids in enumerate(generator.stream(prompts, max(wanted))):
            now = time.perf_counter()
            timeline.step_s.append(now - last)
            last = now
            timeline.steps.append([r for r, n in zip(batch, wanted) if step < n])
            timeline.idle.append([r for r, n in zip(batch, wanted) if step >= n])  # finished, still fed
            for r, n, token in zip(batch, wanted, ids):
                if step < n:
                    timeline.record(r, token, now - start)
    timeline.wall_s, timeline.cpu_s = time.perf_counter() - start, time.process_time() - cpu
    return timeline


def continuous_batching(engine, requests: list[Request]) -> Timeline:
    """Serve the requests with a continuous-batching engine (add_request / step / has_unfinished), greedy.

    All requests are added at t = 0; each step()'s outputs are timed as they return.
    Introduced in notebooks/11_continuous_batching.ipynb.
    """
    timeline = Timeline.empty(len(requests))
    start = last = time.perf_counter()
    cpu = time.process_time()
    index = {engine.add_request(list(r.prompt), r.max_new_tokens): i for i, r in enumerate(requests)}
    while engine.has_unfinished():
        outs = engine.step()
        now = time.perf_counter()
        timeline.step_s.append(now - last)
        last = now
        timeline.steps.append([index[o.request_id] for o in outs])
        for o in outs:
            timeline.record(index[o.request_id], o.token, now - start)
    timeline.wall_s, timeline.cpu_s = time.perf_counter() - start, time.process_time() - cpu
    return timeline


def tokens_alone(model, requests: list[Request]) -> list[list[int]]:
    """Each request generated by itself with Part I's generator (greedy): the reference every engine must equal."""
    generator = AutoregressiveGenerator(model)
    return [generator.generate(list(r.prompt), r.max_new_tokens)[len(r.prompt):] for r in requests]


def ragged_tensor(rows: list[list[int]]) -> torch.Tensor:
    """Ragged token lists -> (R, N) long, padded with -1 (never a token id), for check_identical."""
    n = max((len(r) for r in rows), default=0)
    return torch.tensor([r + [-1] * (n - len(r)) for r in rows], dtype=torch.long).reshape(len(rows), n)


def wasted_row_steps(requests: list[Request], max_num_seqs: int) -> dict:
    """Static batching's row-steps (one row fed one token): paid for vs asked for, counted from the lengths.

    A batch of B rows runs max(new tokens) steps, so it pays B * max row-steps and uses sum(new tokens).
    Introduced in notebooks/11_continuous_batching.ipynb.
    """
    paid = used = 0
    for first in range(0, len(requests), max_num_seqs):
        wanted = [r.max_new_tokens for r in requests[first:first + max_num_seqs]]
        paid, used = paid + len(wanted) * max(wanted), used + sum(wanted)
    return {"row_steps_paid": paid, "row_steps_used": used, "wasted": paid - used,
            "wasted_fraction": (paid - used) / paid if paid else 0.0}
