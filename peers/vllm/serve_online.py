"""The online benchmark: `vllm bench serve` (vLLM's own client) against `kvgpt serve` and `vllm serve` on the SAME
exported Hugging Face folder, for each model and request rate -> figures/serve_online_{results.csv,meta.json,.png}.

    make serve-online                                   # the sweep (about 25 min on 2 vCPUs; --budget-minutes bounds it)
    .venv/bin/python peers/vllm/serve_online.py --quick # a dry run: a few prompts at two rates

Run with kvgpt's venv (it exports the folders and plots); vLLM's server and client run from .venv-vllm through
peers/vllm/cli.py. One server at a time, same engine knobs under vLLM's names (chapter 11's: max_num_seqs 16,
max_num_batched_tokens 256; blocks of 16 for kvgpt, 32 for vLLM whose CPU backend takes only multiples of 32),
same thread count, greedy, ignore_eos (the random dataset sets it), prefix caching on (both defaults).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PLANS = {  # input/output tokens per request, request rates (req/s; inf = all at once) up to saturation
    "shakespeare-char": {"input": 64, "output": 64, "rates": ["2", "4", "8", "16", "32", "inf"], "prompts": 64},
    "random-gpt2-small": {"input": 128, "output": 32, "rates": ["0.5", "1", "2", "4", "inf"], "prompts": 32},
}
QUICK = {"rates": ["4", "inf"], "prompts": 6}
ENGINE = {"max-num-seqs": "16", "max-num-batched-tokens": "256"}
METRICS = ("ttft", "tpot", "itl", "e2el")


def bench(vllm_py: str, url: str, name: str, folder: Path, plan: dict, rate: str, prompts: int, out: Path,
          timeout: float) -> dict:
    """One `vllm bench serve` run -> its saved result (JSON)."""
    cmd = [vllm_py, str(ROOT / "peers/vllm/cli.py"), "bench", "serve", "--backend", "openai", "--base-url", url,
           "--model", name, "--tokenizer", str(folder), "--dataset-name", "random", "--random-input-len",
           str(plan["input"]), "--random-output-len", str(plan["output"]), "--num-prompts", str(prompts),
           "--request-rate", rate, "--seed", "0", "--temperature", "0", "--percentile-metrics", ",".join(METRICS),
           "--metric-percentiles", "50,99", "--save-result", "--result-dir", str(out.parent),
           "--result-filename", out.name]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=_env())
    if run.returncode != 0:
        raise RuntimeError(f"vllm bench serve failed: {run.stdout[-2000:]}{run.stderr[-2000:]}")
    return json.loads(out.read_text())


def _env(threads: int = 1) -> dict:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONPATH": "",
            "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_CPU_OMP_THREADS_BIND": "0" if threads == 1 else f"0-{threads - 1}"}


def start_vllm(vllm_py: str, folder: Path, name: str, context: int, threads: int, timeout: float):
    """`vllm serve FOLDER` on a free loopback port -> (process, URL) once /health answers (bounded wait)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = tempfile.NamedTemporaryFile("w", prefix="vllm-serve-", suffix=".log", delete=False)
    proc = subprocess.Popen([vllm_py, str(ROOT / "peers/vllm/cli.py"), "serve", str(folder), "--host", "127.0.0.1",
                             "--port", str(port), "--served-model-name", name, "--dtype", "float32",
                             "--max-model-len", str(context), "--block-size", "32", "--enforce-eager", "--seed", "0",
                             *[x for k, v in ENGINE.items() for x in (f"--{k}", v)]],
                            stdout=log, stderr=subprocess.STDOUT, env=_env(threads))
    url, deadline = f"http://127.0.0.1:{port}", time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if urllib.request.urlopen(f"{url}/health", timeout=5).status == 200:
                return proc, url
        except OSError:
            time.sleep(2)
    _stop(proc)
    raise RuntimeError(f"vllm serve did not come up in {timeout} s; log: {log.name}")


def _stop(proc) -> None:
    from kvgpt.serving.server import stop_process

    stop_process(proc, timeout=60)


def row(model: str, server: str, rate: str, plan: dict, r: dict) -> dict:
    out = {"model": model, "server": server, "rate": rate, "input_len": plan["input"], "output_len": plan["output"],
           "num_prompts": r["num_prompts"], "completed": r["completed"], "failed": r["failed"],
           "duration_s": round(r["duration"], 3), "request_throughput": round(r["request_throughput"], 4),
           "output_throughput": round(r["output_throughput"], 2)}
    for m in METRICS:
        for p in ("p50", "p99"):
            out[f"{m}_{p}_ms"] = round(r[f"{p}_{m}_ms"], 3)
    return out


def sweep(args) -> tuple[list, dict]:
    from kvgpt.export import export_hf, load_for_export
    from kvgpt.serving.server import spawn

    rows, skipped, started = [], [], time.monotonic()
    budget = args.budget_minutes * 60
    with tempfile.TemporaryDirectory(prefix="kvgpt-online-") as tmp:
        for model in args.models:
            plan = {**PLANS[model], **(QUICK if args.quick else {})}
            net, tok = load_for_export(model)
            folder = export_hf(net, tok, Path(tmp) / model)
            for server in args.servers:
                if time.monotonic() - started > budget:
                    skipped.append(f"{model}/{server}: over --budget-minutes {args.budget_minutes}")
                    continue
                if server == "kvgpt":
                    proc, url = spawn("--model", str(folder), "--served-model-name", model, "--block-size", "16",
                                      "--threads", str(args.threads), *[x for k, v in ENGINE.items()
                                                                        for x in (f"--{k}", v)], cwd=ROOT)
                else:
                    proc, url = start_vllm(args.vllm_python, folder, model, net.config.block_size, args.threads, 900)
                try:
                    bench(args.vllm_python, url, model, folder, plan, "inf", 4, Path(tmp) / "warmup.json", 600)
                    for rate in plan["rates"]:
                        if time.monotonic() - started > budget:
                            skipped.append(f"{model}/{server}/{rate}: over --budget-minutes")
                            continue
                        out = Path(tmp) / f"{model}-{server}-{rate}.json"
                        r = bench(args.vllm_python, url, model, folder, plan, rate, plan["prompts"], out, 1800)
                        rows.append(row(model, server, rate, plan, r))
                        print(f"{model:18} {server:6} rate {rate:>4}: ttft p50 {rows[-1]['ttft_p50_ms']:.1f} ms, "
                              f"tpot p50 {rows[-1]['tpot_p50_ms']:.1f} ms, {r['completed']}/{r['num_prompts']} ok",
                              file=sys.stderr, flush=True)
                finally:
                    _stop(proc)
    return rows, {"skipped": skipped, "wall_s": round(time.monotonic() - started, 1)}


def meta(args, facts: dict) -> dict:
    from kvgpt.benchmark.report import cpu_name, package_versions

    vllm = subprocess.run([args.vllm_python, "-c", "import importlib.metadata as m; print(m.version('vllm-cpu'))"],
                          capture_output=True, text=True, env=_env()).stdout.strip() or None
    return {"cpu": cpu_name(), "cpu_count": os.cpu_count(), "load_avg_end": os.getloadavg(), "threads": args.threads,
            "quick": args.quick, "plans": {m: {**PLANS[m], **(QUICK if args.quick else {})} for m in args.models},
            "engine_args": ENGINE, "block_size": {"kvgpt": 16, "vLLM": 32}, "vllm-cpu": vllm,
            "versions": package_versions("kvgpt", "torch", "transformers", "fastapi", "uvicorn"),
            "command": " ".join(["peers/vllm/serve_online.py", *sys.argv[1:]]), **facts,
            "utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="dry run: %s prompts at rates %s" % (QUICK["prompts"],
                                                                                          QUICK["rates"]))
    p.add_argument("--models", nargs="+", default=list(PLANS), choices=list(PLANS))
    p.add_argument("--servers", nargs="+", default=["kvgpt", "vLLM"], choices=["kvgpt", "vLLM"])
    p.add_argument("--threads", type=int, default=1, help="torch/OpenMP threads of each server (default 1)")
    p.add_argument("--vllm-python", default=str(ROOT / os.environ.get("VLLM_VENV", ".venv-vllm") / "bin/python"))
    p.add_argument("--budget-minutes", type=float, default=60, help="runs not started by then are skipped")
    p.add_argument("--out", type=Path, default=ROOT / "figures")
    args = p.parse_args(argv)
    if not Path(args.vllm_python).exists():
        print(f"serve-online: skipped, no {args.vllm_python} (make vllm-env)", file=sys.stderr)
        return 0
    import pandas as pd

    rows, facts = sweep(args)
    df, info = pd.DataFrame(rows), meta(args, facts)
    args.out.mkdir(parents=True, exist_ok=True)
    df.to_csv(args.out / "serve_online_results.csv", index=False)
    (args.out / "serve_online_meta.json").write_text(json.dumps(info, indent=1) + "\n", encoding="utf-8")
    from kvgpt.plots.serving import plot_online

    note = f", {args.threads} thread(s) per server" + (" (dry run: a few prompts)" if args.quick else "")
    plot_online(df, info["cpu"], note).savefig(args.out / "serve_online.png", dpi=110)
    print(f"wrote {args.out}/serve_online_results.csv, serve_online_meta.json, serve_online.png", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
