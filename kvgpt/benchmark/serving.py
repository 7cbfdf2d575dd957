"""Serving a workload: requests arrive (all at t = 0, or at seeded Poisson times); each token is timed as it comes out.

Three ways to serve the same requests on the same weights, greedy, no EOS (each request makes exactly its
max_new_tokens): static batching (Part I's batched generate: when idle, it takes up to max_num_seqs requests
that have arrived and runs them until the longest ends; later arrivals wait for the next batch), continuous
batching (kvgpt.serving.LLMEngine, one step() at a time, arrivals join between steps) and vLLM
(peers/vllm/bench.py, same step loop, read back from JSON). Each run is a Timeline; `summarize` turns it into the
table's columns, latencies measured from each request's arrival. Introduced in notebooks/11_continuous_batching.ipynb.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from ..generation import AutoregressiveGenerator
from ..validation import check_positive_int
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
    arrivals: list = field(default_factory=list)  # arrivals[r]: seconds when request r arrived (empty: all at 0)

    @classmethod
    def empty(cls, n: int, arrivals=None) -> "Timeline":
        return cls([[] for _ in range(n)], [[] for _ in range(n)], arrivals=list(arrivals or [0.0] * n))

    def record(self, rid: int, token: int, t: float) -> None:
        self.tokens[rid].append(int(token))
        self.times[rid].append(t)


def poisson_arrivals(n: int, rate: float, seed: int = 0) -> list[float]:
    """n arrival times (seconds, from 0) of a Poisson process of `rate` requests/s (exponential gaps, seeded, as
    `vllm bench serve --request-rate`); rate inf: every request at t = 0. Introduced in notebooks/11_continuous_batching.ipynb.
    """
    if math.isinf(rate):
        return [0.0] * n
    rng, t, out = random.Random(seed), 0.0, []
    for _ in range(n):
        t += rng.expovariate(rate)
        out.append(t)
    return out


def _pct(values, q: float) -> float:
    return float(np.percentile(values, q)) if len(values) else float("nan")


def summarize(timeline: Timeline) -> dict:
    """Useful tokens/s and, from each request's arrival, time to first token, time per output token and
    inter-token latency (p50/p99, ms) of one run — vLLM's `bench serve` definitions.

    Useful tokens are the ones a request asked for (static batching's padding steps are not counted). TPOT of a
    request = (last token - first token) / (tokens - 1); ITL = every gap between consecutive tokens of a request.
    tokens_per_cpu_s divides by the CPU time the serving process(es) used instead of wall time.
    Introduced in notebooks/11_continuous_batching.ipynb.
    """
    useful = sum(len(t) for t in timeline.tokens)
    arrivals = timeline.arrivals or [0.0] * len(timeline.tokens)
    ttft = [(ts[0] - a) * 1e3 for ts, a in zip(timeline.times, arrivals) if ts]
    tpot = [(ts[-1] - ts[0]) / (len(ts) - 1) * 1e3 for ts in timeline.times if len(ts) > 1]
    gaps = [(b - a) * 1e3 for ts in timeline.times for a, b in zip(ts, ts[1:])]
    wall = timeline.wall_s
    return {"requests": len(timeline.tokens), "useful_tokens": useful, "steps": len(timeline.steps),
            "wall_s": wall, "tokens_per_s": useful / wall if wall else float("nan"),
            "ttft_mean_ms": float(np.mean(ttft)) if ttft else float("nan"),
            "ttft_p50_ms": _pct(ttft, 50), "ttft_p99_ms": _pct(ttft, 99),
            "tpot_p50_ms": _pct(tpot, 50), "tpot_p99_ms": _pct(tpot, 99),
            "itl_p50_ms": _pct(gaps, 50), "itl_p99_ms": _pct(gaps, 99),
            "step_ms_mean": float(np.mean(timeline.step_s)) * 1e3 if timeline.step_s else float("nan"),
            "cpu_s": timeline.cpu_s, "tokens_per_cpu_s": useful / timeline.cpu_s if timeline.cpu_s else float("nan")}


class WallClock:
    """The clock a serving run reads: time.perf_counter and time.sleep (a test passes a simulated one instead)."""

    now = staticmethod(time.perf_counter)
    sleep = staticmethod(time.sleep)


def _wait_until(start: float, t: float, clock=WallClock) -> None:
    """Sleep until `t` seconds after `start` (an idle server waiting for its next request)."""
    delay = start + t - clock.now()
    if delay > 0:
        clock.sleep(delay)


def static_batching(model, requests: list[Request], max_num_seqs: int = 16, arrivals=None, clock=WallClock) -> Timeline:
    """Part I's batched generate: when idle, up to max_num_seqs ARRIVED requests in arrival order, greedy, no EOS.

    A batch runs until its longest request ends: every row is fed a token each step, the rows that are
    already done make tokens nobody asked for (dropped here, but paid for), and a request that arrives meanwhile
    waits for the batch to drain. arrivals: seconds from the start (None: all at 0); clock: now() and sleep().
    Shapes: each batch (B, T) left-padded. Introduced in notebooks/11_continuous_batching.ipynb.
    """
    check_positive_int("max_num_seqs", max_num_seqs)
    generator, timeline = AutoregressiveGenerator(model), Timeline.empty(len(requests), arrivals)
    start = last = clock.now()
    cpu, first = time.process_time(), 0
    while first < len(requests):
        _wait_until(start, timeline.arrivals[first], clock)  # idle: the next batch starts with the next arrival
        now = clock.now() - start
        batch = [r for r in range(first, min(first + max_num_seqs, len(requests))) if timeline.arrivals[r] <= now]
        first += len(batch)
        wanted = [requests[r].max_new_tokens for r in batch]
        prompts = [list(requests[r].prompt) for r in batch]
        for step, ids in enumerate(generator.stream(prompts, max(wanted))):
            now = clock.now()
            timeline.step_s.append(now - last)
            last = now
            timeline.steps.append([r for r, n in zip(batch, wanted) if step < n])
            timeline.idle.append([r for r, n in zip(batch, wanted) if step >= n])  # finished, still fed
            for r, n, token in zip(batch, wanted, ids):
                if step < n:
                    timeline.record(r, token, now - start)
    timeline.wall_s, timeline.cpu_s = clock.now() - start, time.process_time() - cpu
    return timeline


def continuous_batching(engine, requests: list[Request], arrivals=None, clock=WallClock) -> Timeline:
    """Serve the requests with a continuous-batching engine (add_request / step / has_unfinished), greedy.

    Before each step, every request that has arrived joins (arrivals: seconds from the start, None: all at 0);
    an idle engine waits for the next arrival. Each step()'s outputs are timed as they return.
    Introduced in notebooks/11_continuous_batching.ipynb.
    """
    timeline = Timeline.empty(len(requests), arrivals)
    start = last = clock.now()
    cpu, index, nxt = time.process_time(), {}, 0
    while nxt < len(requests) or engine.has_unfinished():
        if not engine.has_unfinished():
            _wait_until(start, timeline.arrivals[nxt], clock)
        now = clock.now() - start
        while nxt < len(requests) and timeline.arrivals[nxt] <= now:  # arrivals join between steps
            index[engine.add_request(list(requests[nxt].prompt), requests[nxt].max_new_tokens)] = nxt
            nxt += 1
        outs = engine.step()
        now = clock.now()
        timeline.step_s.append(now - last)
        last = now
        timeline.steps.append([index[o.request_id] for o in outs])
        for o in outs:
            timeline.record(index[o.request_id], o.token, now - start)
    timeline.wall_s, timeline.cpu_s = clock.now() - start, time.process_time() - cpu
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
