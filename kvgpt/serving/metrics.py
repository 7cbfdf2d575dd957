"""Prometheus metrics of `kvgpt serve`, under vLLM's names where vLLM has one (vllm/v1/metrics/loggers.py).

Written by the engine loop's thread after each step and each token (prometheus_client is thread-safe), read
by GET /metrics. One registry per server, so two servers in one process (tests) never share counters.
Introduced in notebooks/15_serving.ipynb.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

disable_created_metrics()  # as vLLM: no *_created series beside every counter and histogram

# vLLM's buckets, with finer ones below 10 ms: a CPU step of a small model is a few milliseconds
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
                40.0, 80.0, 160.0, 640.0)
ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0,
               2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0)
REQUEST_BUCKETS = (0.01, 0.05, 0.1, 0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0,
                   120.0, 240.0, 480.0, 960.0)
FINISH = {"eos": "stop", "max_new_tokens": "length"}  # the engine's finish reasons under OpenAI's names
CONTENT_TYPE = CONTENT_TYPE_LATEST


class ServerMetrics:
    """Gauges, counters and histograms of one server, labelled with the served model name.

    Introduced in notebooks/15_serving.ipynb.
    """

    def __init__(self, model_name: str) -> None:
        self.registry = r = CollectorRegistry()
        lab = {"labelnames": ["model_name"], "registry": r}

        def one(kind, name, doc, **kw):
            return kind(name, doc, **lab, **kw).labels(model_name)

        self.running = one(Gauge, "vllm:num_requests_running", "Requests in the engine's running queue.")
        self.waiting = one(Gauge, "vllm:num_requests_waiting", "Requests waiting for a slot (and commands not drained).")
        self.kv_usage = one(Gauge, "vllm:kv_cache_usage_perc", "Fraction of KV blocks in use (1 = full).")
        self.blocks_used = one(Gauge, "kvgpt:kv_blocks_used", "KV blocks with a reference (kvgpt's own count).")
        self.blocks_total = one(Gauge, "kvgpt:kv_blocks_total", "KV blocks in the pool.")
        self.prefix_queries = one(Counter, "vllm:prefix_cache_queries", "Prompt tokens looked up in the prefix cache "
                                  "(counted at a request's first token).")
        self.prefix_hits = one(Counter, "vllm:prefix_cache_hits", "Prompt tokens found in the prefix cache.")
        self.preemptions = one(Counter, "vllm:num_preemptions", "Requests preempted (blocks freed, recomputed later).")
        self.prompt_tokens = one(Counter, "vllm:prompt_tokens", "Prompt tokens admitted.")
        self.generation_tokens = one(Counter, "vllm:generation_tokens", "Tokens generated.")
        self.aborted = one(Counter, "kvgpt:requests_aborted", "Unfinished requests aborted (client left, stop string).")
        self.success = Counter("vllm:request_success", "Requests finished by the engine.",
                               ["model_name", "finished_reason"], registry=r)
        self.ttft = one(Histogram, "vllm:time_to_first_token_seconds", "Arrival to first token.", buckets=TTFT_BUCKETS)
        self.itl = one(Histogram, "vllm:inter_token_latency_seconds", "Gap between two tokens of a request.",
                       buckets=ITL_BUCKETS)
        self.e2e = one(Histogram, "vllm:e2e_request_latency_seconds", "Arrival to last token.", buckets=REQUEST_BUCKETS)
        self.queue_time = one(Histogram, "vllm:request_queue_time_seconds", "Arrival to the first step that ran it.",
                              buckets=REQUEST_BUCKETS)
        self.model_name = model_name
        self._seen = {"prefix_hit_tokens": 0, "preemptions": 0}  # engine counters already exported

    def on_token(self, handle, now: float, finish_reason: str | None) -> None:
        """A token was made for `handle` at `now` (engine thread)."""
        if handle.last_token is None:  # its first token: the prompt has been looked up and run
            self.ttft.observe(now - handle.arrival)
            self.queue_time.observe((handle.scheduled or now) - handle.arrival)
            self.prompt_tokens.inc(len(handle.request.prompt))
            self.prefix_queries.inc(len(handle.request.prompt))
        else:
            self.itl.observe(now - handle.last_token)
        self.generation_tokens.inc()
        if finish_reason is not None:
            self.e2e.observe(now - handle.arrival)
            self.success.labels(self.model_name, FINISH.get(finish_reason, finish_reason)).inc()

    def on_abort(self) -> None:
        """An unfinished request was aborted (engine thread)."""
        self.aborted.inc()

    def on_step(self, engine, pending: int) -> None:
        """After a step (engine thread): queue lengths, blocks, prefix-cache hits, preemptions."""
        sched, alloc, stats = engine.scheduler, engine.cache.allocator, engine.stats
        self.running.set(len(sched.running))
        self.waiting.set(len(sched.waiting) + pending)
        self.kv_usage.set(alloc.num_used / alloc.num_blocks)
        self.blocks_used.set(alloc.num_used)
        self.blocks_total.set(alloc.num_blocks)
        for name, counter in (("prefix_hit_tokens", self.prefix_hits), ("preemptions", self.preemptions)):
            now = getattr(stats, name)
            if now >= self._seen[name]:  # a reset_stats() in between would make it negative: skip that step
                counter.inc(now - self._seen[name])
            self._seen[name] = now

    def render(self) -> bytes:
        return generate_latest(self.registry)
