"""The engine loop: ONE thread owns the LLMEngine; requests join and leave between its steps.

HTTP handlers (asyncio, another thread) never call the engine. They put commands on a queue (add, abort,
call) and wake the loop; the loop drains the queue, runs one step, and hands each token to its request's
asyncio queue with loop.call_soon_threadsafe. Idle, it sleeps on a condition variable (no busy spin).
The split follows vLLM's AsyncLLM (front end) / EngineCore (the step loop), in one process.
Introduced in notebooks/15_serving.ipynb.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field


@dataclass
class Handle:
    """One request's link between the HTTP side and the engine thread.

    events: ("accepted", request_id) or ("error", exception) once, then ("token", id, finish_reason or None)
    per token (finish_reason "eos" or "max_new_tokens" on the last one), or ("error", exception) if the engine
    dies; the HTTP side adds ("gone",) when the client disconnects. Times are time.perf_counter() seconds, written by the engine thread (the metrics read them).
    Introduced in notebooks/15_serving.ipynb.
    """

    request: object  # a kvgpt.serving.api.CompletionRequest (prompt, max_tokens, sampler, eos)
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    request_id: int | None = None  # the engine's id, once accepted
    arrival: float = field(default_factory=time.perf_counter)
    scheduled: float | None = None  # first step that ran it
    last_token: float | None = None
    tokens: int = 0
    watcher: object = None  # the HTTP side's disconnect watcher (an asyncio task), if any

    def post(self, *event) -> None:
        """Called by the engine thread: deliver an event to the request's own event loop."""
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, event)
        except RuntimeError:  # that event loop is closed: nobody is listening any more
            pass


class EngineLoop:
    """Drives LLMEngine.step() in its own thread; add/abort/call from any thread through a command queue.

    metrics: None, or an object with on_token(handle, now, finish_reason), on_abort() and on_step(engine, pending).
    Introduced in notebooks/15_serving.ipynb.
    """

    def __init__(self, engine, metrics=None) -> None:
        self.engine, self.metrics = engine, metrics
        self._commands: deque = deque()
        self._wake = threading.Condition()
        self._handles: dict[int, Handle] = {}  # engine request id -> handle, unfinished only (engine thread)
        self._stopping = False
        self.error: BaseException | None = None  # set if a step raised: the loop has stopped
        self._thread = threading.Thread(target=self._run, name="kvgpt-engine-loop", daemon=True)

    def start(self) -> EngineLoop:
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Let the current step finish, end every open request with an error event, join the thread."""
        self._put(("stop",))
        self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive() and self.error is None

    def submit(self, handle: Handle) -> None:
        """Queue a request; the handle gets ("accepted", id) or ("error", ValueError) at the next drain."""
        self._put(("add", handle))

    def abort(self, handle: Handle) -> None:
        """The client left: free the request's blocks at the next drain (a no-op if it already finished)."""
        self._put(("abort", handle))

    def call(self, fn) -> Future:
        """Run fn(engine) in the engine thread between steps -> a Future of its result (for checks and tests)."""
        future: Future = Future()
        self._put(("call", fn, future))
        return future

    def _put(self, command) -> None:
        with self._wake:
            if self._stopping:  # the loop has ended: nobody would ever drain this
                self._refuse(command)
                return
            self._commands.append(command)
            self._wake.notify()

    def _run(self) -> None:
        try:
            while not self._stopping:
                with self._wake:
                    while not self._commands and not self.engine.has_unfinished():
                        self._wake.wait()  # idle: sleep until a command arrives
                    commands = list(self._commands)
                    self._commands.clear()
                for command in commands:
                    self._apply(command)
                if self._stopping:
                    break
                if self.engine.has_unfinished():
                    self._step()
                elif commands and self.metrics is not None:  # an abort freed blocks: no step will report it
                    self.metrics.on_step(self.engine, 0)
        except BaseException as e:  # noqa: BLE001 -- a failed step ends the loop; every request is told why
            self.error = e
        with self._wake:
            self._stopping, left = True, list(self._commands)  # from now on _put answers at once
            self._commands.clear()
        for command in left:
            self._refuse(command)
        for handle in self._handles.values():
            handle.post("error", self.error or RuntimeError("the server is shutting down"))
        self._handles.clear()

    def _refuse(self, command) -> None:
        """Answer a command the loop will never run: an add gets an error event, a call an exception."""
        error = RuntimeError(f"the engine loop has stopped ({self.error!r})" if self.error else "the server stopped")
        if command[0] == "add":
            command[1].post("error", error)
        elif command[0] == "call":
            command[2].set_exception(error)

    def _apply(self, command) -> None:
        """One command, between two steps."""
        kind = command[0]
        if kind == "add":
            handle, r = command[1], command[1].request
            try:
                handle.request_id = self.engine.add_request(r.prompt, r.max_tokens, r.sampler, r.eos)
            except ValueError as e:  # the API checks first; this is the engine's own refusal
                handle.post("error", e)
                return
            self._handles[handle.request_id] = handle
            handle.post("accepted", handle.request_id)
        elif kind == "abort":
            rid = command[1].request_id
            if self._handles.pop(rid, None) is not None:  # unknown: refused, or finished meanwhile
                self.engine.abort_request(rid)
                if self.metrics is not None:
                    self.metrics.on_abort()
        elif kind == "call":
            fn, future = command[1], command[2]
            try:
                future.set_result(fn(self.engine))
            except Exception as e:  # noqa: BLE001 -- handed to the caller
                future.set_exception(e)
        elif kind == "stop":
            self._stopping = True

    def _step(self) -> None:
        start = time.perf_counter()
        outputs = self.engine.step()
        now = time.perf_counter()
        ran = [seq.request_id for seq in self.engine.scheduler.running] + [out.request_id for out in outputs]
        for rid in ran:  # the first step that ran a request ends its queue time
            handle = self._handles.get(rid)
            if handle is not None and handle.scheduled is None:
                handle.scheduled = start
        for out in outputs:
            handle = self._handles.get(out.request_id)
            if handle is None:
                continue
            if out.error is not None:  # this request's call or sampling raised: it alone ends, with the reason
                del self._handles[out.request_id]
                handle.post("error", RuntimeError(out.error))
                continue
            if self.metrics is not None:
                self.metrics.on_token(handle, now, out.finish_reason)
            handle.tokens, handle.last_token = handle.tokens + 1, now
            handle.post("token", out.token, out.finish_reason)
            if out.finished:
                del self._handles[out.request_id]
        if self.metrics is not None:
            self.metrics.on_step(self.engine, len(self._commands))
