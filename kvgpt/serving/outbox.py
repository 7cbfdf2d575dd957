"""Who receives each request's outputs: one box per reader, so every token reaches exactly one consumer.

A step runs every scheduled request, whoever asked for it; its outputs wait here for their owner. Requests
queued by add_request() belong to the SHARED box, which step() and stream() (without prompts) read; a
generate() call and a stream(prompts) each open a private box for their own requests. generate() running
while a stream is open (or while add_request'ed requests wait) therefore steps them too, and their tokens
wait for their reader instead of being dropped.
Introduced in notebooks/11_continuous_batching.ipynb.
"""

from __future__ import annotations

import weakref
from collections import deque
from dataclasses import dataclass

SHARED = 0  # the box of add_request()'s requests


@dataclass(frozen=True)
class StepOutput:
    """One token made by step(): finish_reason is "eos" or "max_new_tokens" on a request's last token, else None.

    A request whose model call or sampling raised ends with token None, finish_reason "error" and `error` saying
    why. Introduced in notebooks/10_paged_attention.ipynb.
    """

    request_id: int
    token: int | None
    finished: bool
    finish_reason: str | None
    error: str | None = None


class StepError(RuntimeError):
    """generate(): one of its requests failed (the model call or sampling raised); the engine goes on.

    Introduced in notebooks/11_continuous_batching.ipynb.
    """


class Outbox:
    """Boxes of undelivered outputs by reader; which box each unfinished request's outputs go to.

    Introduced in notebooks/11_continuous_batching.ipynb.
    """

    def __init__(self) -> None:
        self.boxes: dict[int, deque] = {SHARED: deque()}
        self.owner: dict[int, int] = {}  # unfinished request id -> its box
        self.open_requests: dict[int, int] = {SHARED: 0}  # box -> how many of its requests are unfinished
        self.abandoned: list[int] = []  # boxes whose reader left while the engine was busy: closed next step
        self._next = SHARED + 1

    def open(self) -> int:
        """A new private box -> its id."""
        box, self._next = self._next, self._next + 1
        self.boxes[box], self.open_requests[box] = deque(), 0
        return box

    def assign(self, request_id: int, box: int) -> None:
        self.owner[request_id] = box
        self.open_requests[box] += 1

    def put(self, out) -> None:
        """File a StepOutput in its request's box; a finished request leaves the routing table."""
        box = self.owner[out.request_id]
        self.boxes[box].append(out)
        if out.finished:
            del self.owner[out.request_id]
            self.open_requests[box] -= 1

    def forget(self, request_id: int) -> None:
        """A request ended without a last output (its reader left): stop routing it."""
        box = self.owner.pop(request_id)
        self.open_requests[box] -= 1

    def take(self, box: int) -> list:
        """Every output waiting in `box`, oldest first; the box is left empty."""
        queue = self.boxes.get(box)
        if not queue:
            return []
        out = list(queue)
        queue.clear()
        return out

    def pop(self, box: int):
        """The oldest output waiting in `box`, or None."""
        queue = self.boxes.get(box)
        return queue.popleft() if queue else None

    def unfinished(self, box: int) -> bool:
        """True while a request of `box` can still make an output."""
        return self.open_requests.get(box, 0) > 0

    def close(self, box: int) -> list[int]:
        """Drop a private box and what waits in it -> ids of its requests still unfinished (to be cancelled)."""
        if box == SHARED or box not in self.boxes:
            return []
        del self.boxes[box]
        return [rid for rid, b in self.owner.items() if b == box]


class Reader:
    """The iterator stream() returns: next() reads its box; close() (or being garbage-collected, started or not)
    tells the engine its reader left, so its own requests are aborted and their blocks freed.

    Introduced in notebooks/11_continuous_batching.ipynb.
    """

    def __init__(self, outputs, on_close, *args) -> None:
        self._outputs = outputs  # the generator that steps the engine and pops the box
        self._closed = weakref.finalize(self, on_close, *args)  # runs once: at close() or at collection

    def __iter__(self):
        return self

    def __next__(self):
        return next(self._outputs)

    def close(self) -> None:
        self._outputs.close()
        self._closed()
