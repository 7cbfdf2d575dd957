"""Serving benchmarks (kvgpt.benchmark.serving*, serve_suite): what they count and compare, on tiny models.

No timing is asserted anywhere.
"""

from __future__ import annotations

import json
import sys
import types

import matplotlib

matplotlib.use("Agg")

import pytest
import torch
from helpers import cached_model
from hypothesis import given
from hypothesis import strategies as st
from matplotlib.figure import Figure

from kvgpt.benchmark import serve_suite
from kvgpt.benchmark.serving import (
    Timeline,
    continuous_batching,
    poisson_arrivals,
    ragged_tensor,
    static_batching,
    summarize,
    tokens_alone,
    wasted_row_steps,
)
from kvgpt.benchmark.serving_report import (
    SYSTEM_PROMPT,
    kv_memory,
    prefix_prompts,
    pool_concurrency,
    prefix_workload,
    record_plans,
    static_slot_bytes,
    step_overhead,
)
from kvgpt.benchmark.workload import Request, ragged_workload, serve_workload
from kvgpt.cli import main
from kvgpt.plots import plot_memory_trace
from kvgpt.plots.serving import plot_row_gantt, plot_serving, plot_step_budget, plot_ttft_vs_rate
from kvgpt.serving import LLMEngine

MODEL = dict(vocab_size=67, n_layers=2, n_heads=2, d_model=32, block_size=64)


def _requests(n=6, seed=0):
    return ragged_workload(n, MODEL["vocab_size"], MODEL["block_size"], (1, 20), (1, 12), seed=seed)


@given(st.integers(2, 9), st.integers(1, 4), st.integers(0, 50))
def test_static_batching_equals_each_request_alone(n, max_num_seqs, seed):
    model, requests = cached_model(**MODEL), _requests(n, seed)
    timeline = static_batching(model, requests, max_num_seqs)
    assert timeline.tokens == tokens_alone(model, requests)
    assert [len(t) for t in timeline.tokens] == [r.max_new_tokens for r in requests]
    # every step lists the rows that made a token; each request's tokens come out in time order
    assert sum(len(s) for s in timeline.steps) == sum(r.max_new_tokens for r in requests)
    assert all(ts == sorted(ts) for ts in timeline.times)
    # the rows fed but finished are exactly the wasted row-steps counted from the lengths
    assert sum(len(s) for s in timeline.idle) == wasted_row_steps(requests, max_num_seqs)["wasted"]


def test_continuous_batching_timeline_equals_alone_and_rows_join_and_leave():
    model, requests = cached_model(**MODEL), _requests(8)
    engine = LLMEngine(model, block_size=4, max_num_seqs=3, max_num_batched_tokens=16)
    timeline = continuous_batching(engine, requests)
    assert timeline.tokens == tokens_alone(model, requests)
    assert max(len(s) for s in timeline.steps) <= 3
    first = {r: min(i for i, s in enumerate(timeline.steps) if r in s) for r in range(len(requests))}
    last = {r: max(i for i, s in enumerate(timeline.steps) if r in s) for r in range(len(requests))}
    assert any(first[b] > last[a] for a in first for b in first), "no request ever joined after another left"


def test_pool_concurrency_counts_requests_running_at_once_and_the_ones_preempted():
    """Chapter 10's payoff measurement: per seat limit, the most requests running at once and the requests preempted,
    read between steps; checked against the scheduler's own preemptions (wrapped here) and the seat limit."""
    model, requests = cached_model(**MODEL), _requests(12, seed=1)
    preempted = {}

    def factory(seats):
        engine = LLMEngine(model, block_size=4, num_blocks=12, max_num_seqs=seats, max_num_batched_tokens=32)
        ids, preempt = preempted.setdefault(seats, []), engine.scheduler._preempt
        engine.scheduler._preempt = lambda seq: (ids.append(seq.request_id), preempt(seq))
        return engine

    rows = pool_concurrency(factory, requests, (1, 4, 12))
    for row in rows:
        assert row["finished"] == len(requests) and 1 <= row["peak_running"] <= row["max_num_seqs"]
        assert row["preemptions"] == len(preempted[row["max_num_seqs"]])
        assert row["requests_preempted"] == len(set(preempted[row["max_num_seqs"]]))
        assert row["num_blocks"] == 12 and row["peak_blocks_used"] <= 12
    assert rows[0]["peak_running"] == 1 and rows[0]["preemptions"] == 0  # one seat: one request at a time
    assert rows[1]["peak_running"] > rows[0]["peak_running"]
    assert rows[-1]["preemptions"] > 0  # 12 seats on 12 blocks: the pool runs dry


def test_recorded_plans_respect_the_token_budget_and_chunk_long_prompts():
    model = cached_model(**MODEL)
    requests = [Request(tuple(range(1, 41)), 3)] + _requests(4)
    engine = LLMEngine(model, block_size=4, max_num_seqs=4, max_num_batched_tokens=12)
    plans = record_plans(engine)
    assert continuous_batching(engine, requests).tokens == tokens_alone(model, requests)
    assert all(sum(n for _, n, _ in plan) <= 12 for plan in plans)
    chunks = [n for plan in plans for rid, n, decode in plan if rid == 0 and not decode]
    assert sum(chunks) == 40 and len(chunks) >= 4 and max(chunks) <= 12
    assert any(len({d for _, _, d in plan}) == 2 for plan in plans), "no step mixed decode rows with a prompt chunk"


def test_summarize_counts_useful_tokens_ttft_and_gaps():
    tl = Timeline(tokens=[[1, 2, 3], [4]], times=[[0.1, 0.2, 0.4], [0.3]], steps=[[0], [0], [1], [0]],
                  step_s=[0.1, 0.1, 0.1, 0.1], wall_s=0.5)
    s = summarize(tl)
    assert s["useful_tokens"] == 4 and s["tokens_per_s"] == pytest.approx(8.0)
    assert s["ttft_p50_ms"] == pytest.approx(200.0) and s["ttft_mean_ms"] == pytest.approx(200.0)
    assert s["itl_p50_ms"] == pytest.approx(150.0) and s["itl_p99_ms"] == pytest.approx(199.0)
    assert s["tpot_p50_ms"] == pytest.approx(150.0)  # request 0: (0.4 - 0.1) / 2; request 1 has one token
    late = summarize(Timeline(tokens=tl.tokens, times=tl.times, steps=tl.steps, step_s=tl.step_s, wall_s=0.5,
                              arrivals=[0.05, 0.25]))
    assert late["ttft_p50_ms"] == pytest.approx(50.0)  # from each request's arrival: 50 ms and 50 ms
    assert summarize(Timeline.empty(2))["ttft_p50_ms"] != summarize(Timeline.empty(2))["ttft_p50_ms"]  # NaN


def test_poisson_arrivals_are_seeded_increasing_and_at_the_rate():
    times = poisson_arrivals(2000, 50.0, seed=3)
    assert times == poisson_arrivals(2000, 50.0, seed=3) and times != poisson_arrivals(2000, 50.0, seed=4)
    assert all(a < b for a, b in zip(times, times[1:])) and 35 < times[-1] < 45  # 2000 / 50 = 40 s expected
    assert poisson_arrivals(3, float("inf")) == [0.0, 0.0, 0.0]


class _SimulatedClock:
    """A clock that moves 1 ms every time it is read (and jumps on sleep): a run's timing is decided by its code
    path, not by the machine, so a test can reason about who arrived when."""

    def __init__(self):
        self.t = 0.0

    def now(self):
        self.t += 1e-3
        return self.t

    def sleep(self, seconds):
        self.t += seconds


def test_arrivals_are_served_only_after_they_arrive_and_static_batches_wait_to_drain():
    """An engine never produces a token before its request arrived; static batching starts a batch only when idle,
    so a request arriving during a batch waits for it to drain; continuous batching lets it join at the next step.
    Every request still gets its solo tokens either way (a simulated clock: 1 ms per reading)."""
    model = cached_model()
    requests = [Request((1, 2, 3), 60), Request((4, 5), 3), Request((6,), 3)]
    arrivals = [0.0, 0.010, 0.0105]  # both arrive while request 0's 60 steps (>= 60 ms) run
    alone = tokens_alone(model, requests)
    static = static_batching(model, requests, 4, arrivals, clock=_SimulatedClock())
    cont = continuous_batching(LLMEngine(model, block_size=4, max_num_seqs=4), requests, arrivals,
                               clock=_SimulatedClock())
    for tl in (static, cont):
        assert tl.tokens == alone
        assert all(ts[0] >= a for ts, a in zip(tl.times, arrivals))
    rows = [set(s) | set(i) for s, i in zip(static.steps, static.idle)]  # rows of each static step
    assert rows[0] == {0} and rows[-1] == {1, 2}  # the first batch started alone at t = 0; 1 and 2 waited for it
    assert max(static.times[1][0], static.times[2][0]) > static.times[0][-1]  # ... until it drained
    assert cont.times[1][-1] < cont.times[0][-1] and cont.times[2][-1] < cont.times[0][-1]  # they joined it


def test_wasted_row_steps_counts_what_a_batch_pays_for():
    requests = [Request((1,), n) for n in (2, 5, 3, 3)]
    w = wasted_row_steps(requests, max_num_seqs=2)  # batches (2, 5) and (3, 3): pays 2*5 + 2*3, uses 13
    assert (w["row_steps_paid"], w["row_steps_used"], w["wasted"]) == (16, 13, 3)
    assert wasted_row_steps(requests, max_num_seqs=1)["wasted"] == 0


def test_kv_memory_reserved_vs_used():
    model = cached_model(**MODEL)
    cfg = model.config
    assert static_slot_bytes(model) == 2 * cfg.n_layers * cfg.d_model * 4  # K and V, every layer, fp32
    requests = [Request((1,) * 5, 4), Request((1,) * 17, 8)]  # 8 and 24 slots used
    rows = {r["layout"].split(" (")[0]: r for r in kv_memory(model, requests, block_size=16, max_num_seqs=2)}
    per = static_slot_bytes(model)
    assert rows["static"]["reserved_bytes"] == 2 * cfg.block_size * per
    assert rows["static batching"]["reserved_bytes"] == 2 * (17 + 8) * per
    assert rows["paged"]["reserved_bytes"] == (16 + 32) * per
    assert all(r["used_bytes"] == 32 * per and 0 < r["utilization"] <= 1 for r in rows.values())


def test_prefix_workload_shares_a_200_character_system_prompt():
    prompts = prefix_prompts()
    assert len(SYSTEM_PROMPT) == 200 and len(prompts) == 50 == len(set(prompts))
    assert all(p.startswith(SYSTEM_PROMPT) and len(p) < 240 for p in prompts)
    requests = prefix_workload(quick=True)
    assert len(requests) == 10 and all(len(r.prompt) == len(p) for r, p in zip(requests, prefix_prompts(10)))


def test_step_overhead_counts_every_model_call():
    model, requests = cached_model(**MODEL), _requests(5)
    o = step_overhead(lambda m: LLMEngine(m, block_size=4, max_num_seqs=2, max_num_batched_tokens=8), model, requests)
    assert o["token_rows_real"] == sum(len(r.prompt) + r.max_new_tokens - 1 for r in requests)
    assert o["token_rows_computed"] >= o["token_rows_real"] and o["steps"] > 0
    assert 0 <= o["model_s"] <= o["wall_s"]


def test_serve_bench_runs_and_reports_a_vllm_mismatch(tmp_path):
    model = cached_model(**MODEL)
    requests = serve_workload("shakespeare-char", model.config, "quick")
    good = tokens_alone(model, requests)
    bad = [t[:] for t in good]
    bad[3][1] = (bad[3][1] + 1) % MODEL["vocab_size"]
    fake = {"summary": summarize(Timeline(good, [[0.1] * len(t) for t in good], [[0]], [0.1], 1.0))}
    peer = tmp_path / "vllm.json"
    peer.write_text(json.dumps({"mode": "quick", "models": {"shakespeare-char": {**fake, "tokens": bad}}}))
    results = serve_suite.run_serve_bench(True, {"shakespeare-char": model}, threads=1, vllm_json=peer)
    tp = results["throughput"].set_index("engine")
    assert list(tp.index) == list(serve_suite.NAMES)
    assert tp.tokens_identical.tolist() == [True, True, False]
    assert "row 3, new token 1" in tp.mismatch["vLLM"]
    assert set(results["targets"].target) >= {"shakespeare-char: continuous / static tokens/s",
                                              "shakespeare-char: kvgpt LLMEngine / vLLM tokens/s"}
    assert (results["memory"].utilization <= 1).all()
    for fig in (plot_serving(results["throughput"]), plot_memory_trace(results["memory_trace"]),
                plot_row_gantt([[0, 1], [1]], wasted=[[], [0]]), plot_ttft_vs_rate(results["online"]),
                plot_step_budget([[(0, 5, False)], [(0, 1, True), (1, 3, False)]], 8, highlight=1)):
        assert isinstance(fig, Figure)


def test_read_peer_ignores_other_modes_and_missing_files(tmp_path, capsys):
    assert serve_suite.read_peer(tmp_path / "none.json", "full") is None
    (tmp_path / "q.json").write_text(json.dumps({"mode": "quick"}))
    assert serve_suite.read_peer(tmp_path / "q.json", "full") is None
    assert "make vllm-bench" in capsys.readouterr().err


def test_ragged_tensor_pads_with_minus_one():
    assert torch.equal(ragged_tensor([[1, 2], [3]]), torch.tensor([[1, 2], [3, -1]]))


def test_cli_forwards_serve_bench_arguments(monkeypatch):
    seen = []
    suite = types.ModuleType("kvgpt.benchmark.serve_suite")
    suite.main = lambda argv: seen.append(argv) or 0
    monkeypatch.setitem(sys.modules, "kvgpt.benchmark.serve_suite", suite)
    assert main(["serve-bench", "--quick", "--threads", "2"]) == 0
    assert seen == [["--quick", "--threads", "2"]]


def test_serve_bench_help_explains_every_option(capsys):
    # a newcomer's questions: what does each flag do, what is the default, where do the files go, how long
    with pytest.raises(SystemExit):
        serve_suite.main(["--help"])
    out = " ".join(capsys.readouterr().out.split())
    for needed in ("--models", "gpt2-small has random weights", "make vllm-bench", "relative to the current directory",
                   "serve_quick_", "a few minutes"):
        assert needed in out, f"serve-bench --help does not say {needed!r}"
