"""`kvgpt serve` under load, bounded in count and time: 210 concurrent streams (mixed lengths, greedy and seeded) of
which a random third hang up mid-stream, then 1,000 short requests. Every completed stream equals its solo
generation; afterwards no request, block or reference is left and /health answers. RSS is measured and printed
(run with -s), never asserted: what is asserted is what can be counted."""

from __future__ import annotations

import asyncio
import json
import random
import time

import httpx
import openai
import psutil
import pytest
from serve_helpers import EMPTY, NAME, embedded, engine_state, solo_text, start

from kvgpt import Sampler
from kvgpt.evaluation import HELDOUT_FILE
from kvgpt.pretrained import data_dir

STREAMS, SOAK, CONCURRENCY, BOUND_S = 210, 1000, 64, 240


def _texts() -> list[str]:
    return json.loads((data_dir() / HELDOUT_FILE).read_text(encoding="utf-8"))["windows"]


def _workload(n: int, seed: int, max_new: int):
    """n requests: (prompt, max_tokens, knobs for the API, Sampler or None, chunks to read before hanging up or None)."""
    rng, texts = random.Random(seed), _texts()
    out = []
    for i in range(n):
        text = rng.choice(texts)
        start_at = rng.randrange(len(text) - 40)
        prompt, max_tokens = text[start_at : start_at + rng.randint(1, 40)], rng.randint(1, max_new)
        knobs = {"temperature": 0} if i % 2 else {"temperature": 0.9, "top_p": 0.95, "seed": i}
        sampler = None if i % 2 else Sampler(temperature=0.9, top_p=0.95, seed=i)
        leave = rng.randint(0, max_tokens - 1) if rng.random() < 1 / 3 and max_tokens > 1 else None
        out.append((prompt, max_tokens, knobs, sampler, leave))
    return out


def _counter(metrics: str, name: str) -> float:
    return sum(float(line.split()[-1]) for line in metrics.splitlines() if line.startswith(name))


async def _stream(client, prompt, max_tokens, knobs, leave):
    """-> the streamed text, or None for a client that hung up after `leave` chunks."""
    stream = await client.completions.create(model=NAME, prompt=prompt, max_tokens=max_tokens, stream=True, **knobs)
    parts = []
    async for c in stream:
        if leave is not None and len(parts) == leave:
            await stream.close()  # the client leaves mid-stream: the server must abort the request
            return None
        parts.append(c.choices[0].text)
    return "".join(parts)


def _rss_mib() -> float:
    return psutil.Process().memory_info().rss / 2**20


def test_200_concurrent_streams_a_third_hang_up_then_nothing_is_left():
    work = _workload(STREAMS, seed=0, max_new=48)
    with start(max_num_seqs=32, max_queued_requests=STREAMS) as live:
        client = openai.AsyncOpenAI(base_url=f"{live.url}/v1", api_key="unused", max_retries=0, timeout=BOUND_S)

        async def run():
            try:
                return await asyncio.gather(*(_stream(client, p, m, k, leave) for p, m, k, _, leave in work))
            finally:
                await client.close()

        started = time.perf_counter()
        texts = asyncio.run(asyncio.wait_for(run(), BOUND_S))
        seconds = time.perf_counter() - started
        _settle(live)
        metrics = httpx.get(f"{live.url}/metrics").text
        assert httpx.get(f"{live.url}/health").status_code == 200
    left = [t is None for t in texts]
    assert sum(left) == sum(w[4] is not None for w in work) >= STREAMS // 4
    for (prompt, max_tokens, _, sampler, _), text in zip(work, texts):
        if text is not None:
            assert text == solo_text(prompt, max_tokens, sampler), prompt
    aborted, finished = _counter(metrics, "kvgpt:requests_aborted_total"), _counter(metrics, "vllm:request_success_total")
    assert aborted + finished == STREAMS and aborted <= sum(left)  # each request ends exactly once
    print(f"\n{STREAMS} streams ({sum(left)} hung up; {aborted:.0f} aborted in the engine, the rest had finished) "
          f"in {seconds:.1f} s; peak blocks {live.server.loop.engine.stats.peak_blocks_used}")


def test_a_thousand_requests_leave_no_request_block_or_handle_behind():
    work = _workload(SOAK, seed=1, max_new=6)
    with start(max_num_seqs=32, max_queued_requests=CONCURRENCY) as live:
        rss = [_rss_mib()]

        async def one(http, gate, prompt, max_tokens, knobs, leave, i):
            async with gate:
                body = {"prompt": prompt, "max_tokens": max_tokens, **knobs, "stream": i % 3 == 0}
                if not body["stream"]:
                    r = await http.post("/v1/completions", json=body)
                    assert r.status_code == 200, r.text
                    return
                async with http.stream("POST", "/v1/completions", json=body) as r:
                    async for n, _ in _enumerate(r.aiter_lines()):
                        if leave is not None and n == leave:
                            break  # leaving the block closes the response: the client hangs up

        async def run():
            gate = asyncio.Semaphore(CONCURRENCY)
            async with httpx.AsyncClient(base_url=live.url, timeout=BOUND_S) as http:
                for batch in range(0, SOAK, 100):
                    await asyncio.gather(*(one(http, gate, p, m, k, leave, i) for i, (p, m, k, _, leave)
                                           in enumerate(work[batch : batch + 100], batch)))
                    rss.append(_rss_mib())

        started = time.perf_counter()
        asyncio.run(asyncio.wait_for(run(), BOUND_S))
        seconds = time.perf_counter() - started
        _settle(live)
        metrics = httpx.get(f"{live.url}/metrics").text
        assert httpx.get(f"{live.url}/health").status_code == 200
    assert _counter(metrics, "kvgpt:requests_aborted_total") + _counter(metrics, "vllm:request_success_total") == SOAK
    print(f"\n{SOAK} requests in {seconds:.1f} s; RSS MiB every 100 requests: {[round(x, 1) for x in rss]} "
          f"(growth {rss[-1] - rss[1]:+.1f} MiB after the first 100)")


async def _enumerate(lines):
    n = 0
    async for line in lines:
        if line.startswith("data: {"):
            yield n, line
            n += 1


def _settle(live, tries: int = 400) -> None:
    """Aborts reach the engine at its next drain: poll (bounded) until nothing is left, then check once more."""
    for _ in range(tries):
        if engine_state(live) == EMPTY and live.server.in_flight == 0:
            break
        time.sleep(0.05)
    assert engine_state(live) == EMPTY and live.server.in_flight == 0
    alloc = live.server.loop.engine.cache.allocator
    assert alloc.ref_counts == [0] * alloc.num_blocks and alloc.num_free == alloc.num_blocks


@pytest.fixture(autouse=True, scope="module")
def _model_loaded_once():
    embedded()
