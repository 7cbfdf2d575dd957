"""vLLM serving the serve-bench workloads on this CPU, timed per token like kvgpt's engines; results to JSON.

    .venv-vllm/bin/python peers/vllm/bench.py [--quick] [--threads N] [--models ...] [--out figures/serve_vllm.json]

Same weights (kvgpt's models exported with to_hf), same requests (kvgpt.benchmark.workload.serve_workload),
greedy, no EOS. All requests are added at t = 0 to vLLM's engine and its step() loop is driven here, so each
token's arrival time is seen as kvgpt.benchmark.serving.continuous_batching sees its own engine's; the same
summarize() turns the Timeline into the table's numbers. One warm-up pass first (vLLM's first steps allocate).
Also: the prefix-caching workload with and without enable_prefix_caching. `python -m kvgpt serve-bench` reads
this file back and puts vLLM beside kvgpt.
"""

from __future__ import annotations

import argparse
import os
import sys
import time


def _threads_first(argv) -> int:
    """--threads decides vLLM's OpenMP binding, which must be set before vllm is imported."""
    n = 1
    if "--threads" in argv:
        n = int(argv[argv.index("--threads") + 1])
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "0" if n == 1 else f"0-{n - 1}")
    return n


THREADS = _threads_first(sys.argv)

import _common as c  # noqa: E402


def vllm_timeline(llm, requests, arrivals=None):
    """Serve the requests through vLLM's engine step loop -> kvgpt Timeline (token ids and arrival times).

    arrivals (seconds from the start, None: all at 0): before each step every request that has arrived is added,
    and an idle engine waits for the next one -- kvgpt.benchmark.serving.continuous_batching's loop.
    """
    from kvgpt.benchmark.serving import Timeline, _wait_until

    engine, timeline = llm.llm_engine, Timeline.empty(len(requests), arrivals)
    cpu, nxt = cpu_seconds(), 0
    start = last = time.perf_counter()
    while nxt < len(requests) or engine.has_unfinished_requests():
        if not engine.has_unfinished_requests():
            _wait_until(start, timeline.arrivals[nxt])
        now = time.perf_counter() - start
        while nxt < len(requests) and timeline.arrivals[nxt] <= now:
            r = requests[nxt]
            engine.add_request(str(nxt), {"prompt_token_ids": list(r.prompt)}, c.params(r.max_new_tokens))
            nxt += 1
        outs = engine.step()
        now = time.perf_counter()
        got = []
        for o in outs:
            rid, ids = int(o.request_id), list(o.outputs[0].token_ids) if o.outputs else []
            for token in ids[len(timeline.tokens[rid]):]:  # cumulative outputs: take what is new
                timeline.record(rid, token, now - start)
            got.append(rid)
        if got:
            timeline.step_s.append(now - last)
            timeline.steps.append(got)
            last = now
    timeline.wall_s, timeline.cpu_s = time.perf_counter() - start, cpu_seconds() - cpu
    return timeline


def cpu_seconds() -> float:
    """CPU seconds (user + system) of this process and every live child: vLLM's engine core and worker included."""
    import psutil

    procs = [psutil.Process()] + psutil.Process().children(recursive=True)
    total = 0.0
    for p in procs:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


def bench_model(name: str, mode: str) -> dict:
    from kvgpt.benchmark.serve_online import ONLINE_RATES, ONLINE_SEED
    from kvgpt.benchmark.serving import poisson_arrivals, summarize
    from kvgpt.benchmark.workload import serve_workload

    model = c.build(name)
    requests = serve_workload(name, model.config, mode)
    with c.scratch() as d:
        c.export(model, c.Path(d))
        started = time.perf_counter()
        llm = c.make_llm(c.Path(d), model.config.block_size)
        startup = time.perf_counter() - started
        vllm_timeline(llm, requests[: c.ENGINE_ARGS["max_num_seqs"]])  # warm-up
        timeline = vllm_timeline(llm, requests)
        online = {}
        for rate in ONLINE_RATES[mode][name]:  # the same seeded Poisson arrivals as kvgpt's online sweep
            tl = vllm_timeline(llm, requests, poisson_arrivals(len(requests), rate, ONLINE_SEED))
            online[str(rate)] = {"summary": summarize(tl), "tokens": tl.tokens}
        del llm
    summary = summarize(timeline)
    print(f"vllm {name}: {summary['useful_tokens']} tokens in {summary['wall_s']:.2f} s = "
          f"{summary['tokens_per_s']:.0f} tokens/s", file=sys.stderr)
    return {"summary": summary, "startup_s": round(startup, 1), "tokens": timeline.tokens,
            "steps": timeline.steps, "step_s": timeline.step_s, "online": online, "threads": THREADS}


def bench_prefix(mode: str) -> dict:
    """The shared-system-prompt workload (kvgpt.benchmark.serving_report) with and without prefix caching."""
    from kvgpt.benchmark.serving import summarize
    from kvgpt.benchmark.serving_report import prefix_workload

    model = c.build("shakespeare-char")
    requests = prefix_workload(quick=mode == "quick")
    out = {}
    with c.scratch() as d:
        c.export(model, c.Path(d))
        for cached in (False, True):
            llm = c.make_llm(c.Path(d), model.config.block_size, enable_prefix_caching=cached)
            vllm_timeline(llm, requests[:4])  # warm-up (with caching on, this also caches the shared prefix)
            if cached:  # measure a cold cache, as kvgpt's engine starts: reset what the warm-up cached
                llm.reset_prefix_cache()
            timeline = vllm_timeline(llm, requests)
            out["on" if cached else "off"] = {"summary": summarize(timeline), "tokens": timeline.tokens}
            del llm
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="the quick workloads (as serve-bench --quick)")
    parser.add_argument("--threads", type=int, default=1, help="OpenMP threads vLLM's worker binds (default 1)")
    parser.add_argument("--models", nargs="+", default=list(c.MODELS), choices=c.MODELS)
    parser.add_argument("--no-prefix", action="store_true", help="skip the prefix-caching workload")
    parser.add_argument("--out", default=None, help="default figures/serve_vllm.json (serve_quick_vllm.json)")
    args = parser.parse_args(argv)
    mode = "quick" if args.quick else "full"
    out = c.Path(args.out) if args.out else c.FIGURES / ("serve_quick_vllm.json" if args.quick else "serve_vllm.json")
    started = time.perf_counter()
    results = {"mode": mode, "threads": args.threads, "models": {n: bench_model(n, mode) for n in args.models}}
    old = c.json.loads(out.read_text()) if out.is_file() else {}
    if old.get("mode") == mode:  # another run's models (e.g. at another thread count) are kept beside these
        results["models"] = {**old.get("models", {}), **results["models"]}
        results.setdefault("prefix", old.get("prefix"))
    if not args.no_prefix:
        results["prefix"] = bench_prefix(mode)
    results.update(versions=c.versions(), load_average_1m_at_end=round(os.getloadavg()[0], 2),
                   wall_s=round(time.perf_counter() - started, 1),
                   engine_args={**c.ENGINE_ARGS, "block_size": c.VLLM_BLOCK_SIZE},
                   VLLM_CPU_OMP_THREADS_BIND=os.environ["VLLM_CPU_OMP_THREADS_BIND"],
                   command="make vllm-bench  (.venv-vllm/bin/python peers/vllm/bench.py"
                           + (" --quick)" if args.quick else ")"))
    c.write_json(out, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
