"""Shared by the server tests: the embedded model, a live `kvgpt serve` in a thread on a free loopback port, the
references (Part I's generator, LLMEngine directly) and the engine-state checks run inside the engine thread."""

from __future__ import annotations

import functools

from kvgpt import AutoregressiveGenerator, load_pretrained
from kvgpt.serving import LLMEngine
from kvgpt.serving.server import ServerThread, make_server

NAME = "shakespeare-char"


@functools.lru_cache(maxsize=1)
def embedded():
    """(model, tokenizer) of the embedded character model, loaded once."""
    return load_pretrained(NAME)


def start(**engine_args) -> ServerThread:
    """A live server on 127.0.0.1:<free port> (bounded start-up wait); stop() it, or use it in a `with`."""
    model, tok = embedded()
    return ServerThread(make_server(model, tok, NAME, **engine_args), timeout=60)


def solo_text(prompt: str, max_tokens: int, sampler=None) -> str:
    """Part I's AutoregressiveGenerator alone on this prompt: the text the server must send."""
    model, tok = embedded()
    ids = tok.encode(prompt)
    return tok.decode(AutoregressiveGenerator(model).generate(ids, max_tokens, sampler=sampler)[len(ids):])


def engine_text(prompt: str, max_tokens: int, sampler) -> str:
    """The same request through LLMEngine directly (no HTTP)."""
    model, tok = embedded()
    return tok.decode(LLMEngine(model).generate([tok.encode(prompt)], max_tokens, sampler)[0])


def engine_state(server: ServerThread, timeout: float = 30.0) -> dict:
    """What must be empty once every request has ended, read inside the engine thread between two steps."""

    def read(engine):
        alloc = engine.cache.allocator
        return {"requests": len(engine.requests), "waiting": len(engine.scheduler.waiting),
                "running": len(engine.scheduler.running), "tables": len(engine.cache.tables),
                "blocks_used": alloc.num_used, "nonzero_refcounts": sum(1 for r in alloc.ref_counts if r),
                "handles": len(server.server.loop._handles)}

    return server.server.loop.call(read).result(timeout)


EMPTY = {"requests": 0, "waiting": 0, "running": 0, "tables": 0, "blocks_used": 0, "nonzero_refcounts": 0,
         "handles": 0}
