"""`kvgpt serve`: an OpenAI-compatible HTTP server on LLMEngine (FastAPI + uvicorn, the stack vLLM serves with).

    python -m kvgpt serve --model shakespeare-char --port 8000          # make serve
    curl http://127.0.0.1:8000/v1/completions -H 'Content-Type: application/json' \\
         -d '{"prompt": "ROMEO:", "max_tokens": 40, "temperature": 0}'

The engine's knobs are flags under vLLM's names (--block-size, --num-blocks, --max-num-seqs,
--max-num-batched-tokens, --[no-]enable-prefix-caching); --max-queued-requests bounds the waiting line
(beyond it: 503 at once). Listens on 127.0.0.1 unless --host says otherwise. Needs `pip install 'kvgpt[serve]'`.
Introduced in notebooks/15_serving.ipynb.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time

import uvicorn

from .api import Served
from .engine import LLMEngine
from .routes import Server, build_app


def make_server(model, tokenizer, name: str, block_size: int = 16, num_blocks: int | None = None,
                max_num_seqs: int = 16, max_num_batched_tokens: int = 256, enable_prefix_caching: bool = True,
                max_queued_requests: int = 256) -> Server:
    """An LLMEngine over `model` and the server state around it (not listening yet: see build_app, ServerThread).

    Introduced in notebooks/15_serving.ipynb.
    """
    from ..validation import check_int

    max_queued_requests = check_int("max_queued_requests", max_queued_requests, 0)
    engine = LLMEngine(model, block_size, num_blocks, max_num_seqs, max_num_batched_tokens, enable_prefix_caching)
    served = Served(name, tokenizer, model.config.vocab_size, model.config.block_size,
                    engine.cache.allocator.num_blocks, engine.cache.block_size)
    return Server(engine, served, max_queued_requests)


class ServerThread:
    """uvicorn serving `server` from a background thread on host:port (port 0: a free one, read back once bound).

    Started within `timeout` seconds or RuntimeError; stop() (or leaving a `with` block) shuts it down and joins.
    For tests and the chapter. Introduced in notebooks/15_serving.ipynb.
    """

    def __init__(self, server: Server, host: str = "127.0.0.1", port: int = 0, timeout: float = 60.0) -> None:
        self.server = server
        config = uvicorn.Config(build_app(server), host=host, port=port, log_level="warning", lifespan="on")
        self._uvicorn = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._uvicorn.run, name="kvgpt-http", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._uvicorn.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"kvgpt serve did not start on {host}:{port} within {timeout} s")
            time.sleep(0.02)
        self.port = self._uvicorn.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://{host}:{self.port}"

    def stop(self, timeout: float = 30.0) -> None:
        self._uvicorn.should_exit = True
        self._thread.join(timeout)

    def __enter__(self) -> ServerThread:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def spawn(*args: str, timeout: float = 180.0, python: str = sys.executable, cwd=None):
    """`python -m kvgpt serve --port 0 *args` as a subprocess -> (process, base URL) once it listens.

    The URL comes from the line the server prints once bound (so port 0 works); waits at most `timeout` seconds,
    and kills the process if it does not come up. Stop it with stop_process. Introduced in notebooks/15_serving.ipynb.
    """
    import queue
    import subprocess

    proc = subprocess.Popen([python, "-m", "kvgpt", "serve", "--port", "0", *args], cwd=cwd, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True).start()
    seen, deadline = [], time.monotonic() + timeout
    while True:
        try:
            line = lines.get(timeout=1.0)
        except queue.Empty:
            if proc.poll() is None and time.monotonic() < deadline:
                continue
            stop_process(proc)
            raise RuntimeError(f"kvgpt serve did not start (exit code {proc.returncode}, waited at most {timeout} s): "
                               f"{''.join(seen)[-2000:]}") from None
        seen.append(line)
        if ANNOUNCE in line:
            return proc, line.split(ANNOUNCE)[1].strip()


def stop_process(proc, timeout: float = 30.0) -> None:
    """SIGTERM (uvicorn shuts down cleanly), then SIGKILL if it has not exited within `timeout` seconds."""
    import subprocess

    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout)


ANNOUNCE = "kvgpt serve: listening on "


class _AnnouncingServer(uvicorn.Server):
    async def startup(self, sockets=None) -> None:
        await super().startup(sockets)
        if self.started:  # the real port (--port 0 picks a free one), once it accepts connections
            host, port = self.servers[0].sockets[0].getsockname()[:2]
            print(f"{ANNOUNCE}http://{host}:{port}", flush=True)


def serve_parser() -> argparse.ArgumentParser:
    from ..pretrained import DEFAULT_MODEL

    p = argparse.ArgumentParser(prog="kvgpt serve", description="An OpenAI-compatible HTTP server on LLMEngine.")
    p.add_argument("--model", default=DEFAULT_MODEL, help="model name or directory (default: %(default)s)")
    p.add_argument("--served-model-name", default=None, help="the name clients send (default: --model)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s, loopback only)")
    p.add_argument("--port", type=int, default=8000, help="port; 0 = any free one (default: %(default)s)")
    p.add_argument("--block-size", type=int, default=16, help="KV slots per block (default: %(default)s)")
    p.add_argument("--num-blocks", type=int, default=None,
                   help="KV blocks in the pool (default: --max-num-seqs full contexts)")
    p.add_argument("--max-num-seqs", type=int, default=16, help="requests running at once (default: %(default)s)")
    p.add_argument("--max-num-batched-tokens", type=int, default=256, help="tokens per step (default: %(default)s)")
    p.add_argument("--enable-prefix-caching", action=argparse.BooleanOptionalAction, default=True,
                   help="reuse cached prompt blocks (default: on)")
    p.add_argument("--max-queued-requests", type=int, default=256,
                   help="requests that may wait beyond --max-num-seqs; more get 503 (default: %(default)s)")
    p.add_argument("--threads", default="auto", help="torch threads; auto: by model size (default: auto)")
    p.add_argument("--linear-backend", choices=("auto", "mkl", "onednn"), default="auto",
                   help="matrix products on MKL or oneDNN; auto: oneDNN where MKL has no fast path (default: auto)")
    p.add_argument("--log-level", default="warning", help="uvicorn's log level (default: %(default)s)")
    return p


def main(argv: list[str] | None = None) -> int:
    """`kvgpt serve ...`: load the model, build the engine, serve until interrupted. Bad flags: one line, exit 2."""
    parser = serve_parser()
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        server = _build_server(args)
    except (ValueError, TypeError, OSError, ImportError) as e:
        parser.exit(2, f"kvgpt serve: error: {' '.join(str(e).split())}\n")
    config = uvicorn.Config(build_app(server), host=args.host, port=args.port, log_level=args.log_level,
                            lifespan="on")
    _AnnouncingServer(config).run()
    return 0


def _build_server(args) -> Server:
    import torch

    from ..linear import recommended_threads, set_linear_backend
    from ..pretrained import load_pretrained
    from ..validation import check_int, check_positive_int

    check_int("port", args.port, 0, 65535)
    threads = None
    if args.threads != "auto":
        try:
            threads = check_positive_int("threads", int(args.threads))
        except ValueError:
            raise ValueError(f"--threads={args.threads!r}: must be 'auto' or a positive int") from None
    model, tokenizer = load_pretrained(args.model)
    torch.set_num_threads(threads or recommended_threads(model))
    server = make_server(model, tokenizer, args.served_model_name or args.model, args.block_size, args.num_blocks,
                         args.max_num_seqs, args.max_num_batched_tokens, args.enable_prefix_caching,
                         args.max_queued_requests)  # every engine flag checked first
    set_linear_backend(model, args.linear_backend, batch_hint=min(args.max_num_seqs, 8))  # decode rows per step
    return server
