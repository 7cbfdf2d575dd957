"""The HTTP routes of `kvgpt serve` (FastAPI): OpenAI's /v1/completions (streamed as server-sent events or whole),
/v1/models, /health, /tokenize, /detokenize, /metrics; /v1/chat/completions refuses (no chat template).

Each completion: parse and check the body (400 naming the field), refuse when full (503), hand the request to
the engine loop, then relay its tokens; a client that leaves aborts its request. Introduced in notebooks/15_serving.ipynb.
"""

from __future__ import annotations

import asyncio
import json
import time
from contextlib import aclosing, asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from .api import RequestError, Served, parse_body, parse_completion
from .loop import EngineLoop, Handle
from .metrics import CONTENT_TYPE, FINISH, ServerMetrics
from .responses import CompletionText, completion_chunk, usage

NO_CHAT = ("this model has no chat template: it is a character-level model trained on plays, not on conversations "
           "(vLLM refuses the same folder for the same reason); send the text to POST /v1/completions")


class Server:
    """What the routes share: the engine loop, the limits requests are checked against, the metrics, the count of
    requests in flight (touched only by the event loop's thread). Introduced in notebooks/15_serving.ipynb.
    """

    def __init__(self, engine, served: Served, max_queued_requests: int) -> None:
        self.served, self.metrics = served, ServerMetrics(served.name)
        self.loop = EngineLoop(engine, self.metrics)
        self.capacity = engine.scheduler.max_num_seqs + max_queued_requests  # running + waiting
        self.in_flight, self.created = 0, int(time.time())

    async def admit(self, request: Request) -> Handle:
        """Checked, queued and accepted by the engine -> its handle; RequestError otherwise (nothing left behind)."""
        completion = parse_completion(parse_body(await request.body()), self.served)
        if not self.loop.alive:
            raise RequestError(f"the engine loop has stopped ({self.loop.error!r})", None, 503, "ServiceUnavailableError")
        if self.in_flight >= self.capacity:  # backpressure: answer now rather than queue without bound
            raise RequestError(f"the server is full: {self.in_flight} requests in flight, at most {self.capacity} "
                               "(--max-num-seqs + --max-queued-requests); retry later", None, 503,
                               "ServiceUnavailableError")
        handle = Handle(completion, asyncio.get_running_loop())
        self.in_flight += 1
        self.loop.submit(handle)
        kind, value = await handle.events.get()  # the next drain: between two steps
        if kind == "error":  # the engine's own refusal (400), or the loop has stopped meanwhile (503)
            self.in_flight -= 1
            raise RequestError(str(value)) if self.loop.alive else \
                RequestError(str(value), None, 503, "ServiceUnavailableError")
        handle.watcher = asyncio.ensure_future(_watch(request, handle))
        return handle

    async def tokens(self, handle: Handle):
        """Yield (text, finish_reason, stop_reason) per token until the request ends; abort it if it ends early
        (the client left, a stop string, an engine failure)."""
        text, finished = CompletionText(self.served.tokenizer, handle.request.stop), False
        try:
            while True:
                kind, *value = await handle.events.get()
                if kind == "gone":
                    return
                if kind == "error":  # the engine loop died
                    raise RequestError(f"the engine failed: {value[0]!r}", None, 500, "InternalServerError")
                token, reason = value
                finished = reason is not None
                delta = text.push(token, last=finished)
                if text.stopped is not None:
                    yield delta, "stop", text.stopped
                    return
                yield delta, FINISH.get(reason), None
                if finished:
                    return
        finally:  # free its blocks now: the engine drains the abort before its next step
            handle.watcher.cancel()
            if not finished:
                self.loop.abort(handle)
            self.in_flight -= 1

    async def stream(self, handle: Handle):
        """Server-sent events: a chunk per token, then the usage chunk if asked for, then [DONE]."""
        req, n = handle.request, 0
        try:
            async with aclosing(self.tokens(handle)) as tokens:
                async for text, finish, stop in tokens:
                    n += 1
                    yield f"data: {json.dumps(completion_chunk(req, text, finish, stop))}\n\n"
        except RequestError as e:  # headers are sent already: the error goes in the stream
            yield f"data: {json.dumps(e.body())}\n\n"
        if req.include_usage:
            yield f"data: {json.dumps({**completion_chunk(req, '', None), 'choices': [], 'usage': usage(req, n)})}\n\n"
        yield "data: [DONE]\n\n"

    async def complete(self, handle: Handle) -> dict | None:
        """The whole completion as one JSON object (None if the client left first: it was aborted)."""
        parts, finish, stop = [], None, None
        async with aclosing(self.tokens(handle)) as tokens:
            async for text, finish, stop in tokens:
                parts.append(text)
        if finish is None:
            return None
        choice = {"index": 0, "text": "".join(parts), "logprobs": None, "finish_reason": finish, "stop_reason": stop}
        return {**completion_chunk(handle.request, "", None), "choices": [choice], "usage": usage(handle.request, len(parts))}


async def _watch(request: Request, handle: Handle) -> None:
    """Tell the request's reader when its client closes the connection.

    The body has been read, so receive() returns only at a disconnect (or once the response is complete, when
    nobody reads the events any more). Without this a client that leaves is noticed only at the next write,
    and a waiting request only after its prefill. vLLM races each handler against the same message.
    """
    while (await request.receive())["type"] != "http.disconnect":
        pass
    handle.events.put_nowait(("gone",))


def build_app(server: Server) -> FastAPI:
    """The FastAPI application; its lifespan starts and stops the engine loop. Introduced in notebooks/15_serving.ipynb."""

    @asynccontextmanager
    async def lifespan(app):
        server.loop.start()
        yield
        server.loop.stop()

    app = FastAPI(title="kvgpt serve", lifespan=lifespan)
    app.state.server = server
    served = server.served

    @app.exception_handler(RequestError)
    async def refused(request: Request, e: RequestError):
        return JSONResponse(e.body(), status_code=e.status, headers={"Retry-After": "1"} if e.status == 503 else None)

    @app.post("/v1/completions")
    async def completions(request: Request):
        handle = await server.admit(request)
        if handle.request.stream:
            return StreamingResponse(server.stream(handle), media_type="text/event-stream")
        body = await server.complete(handle)
        return Response(status_code=499) if body is None else JSONResponse(body)  # 499: nginx's "client closed"

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        parse_body(await request.body())
        raise RequestError(NO_CHAT, "messages")

    @app.get("/v1/models")
    async def models():
        card = {"id": served.name, "object": "model", "created": server.created, "owned_by": "kvgpt",
                "root": served.name, "parent": None, "max_model_len": served.context}
        return {"object": "list", "data": [card]}

    @app.get("/health")
    async def health():
        if server.loop.alive:
            return Response(status_code=200)
        raise RequestError(f"the engine loop has stopped ({server.loop.error!r})", None, 503, "ServiceUnavailableError")

    @app.post("/tokenize")
    async def tokenize(request: Request):
        body = parse_body(await request.body())
        prompt = body.get("prompt")
        if not isinstance(prompt, str):
            raise RequestError(f"prompt={prompt!r}: must be a string", "prompt")
        try:
            ids = served.tokenizer.encode(prompt)
        except ValueError as e:
            raise RequestError(str(e), "prompt") from None
        return {"count": len(ids), "max_model_len": served.context, "tokens": ids, "token_strs": None}

    @app.post("/detokenize")
    async def detokenize(request: Request):
        tokens = parse_body(await request.body()).get("tokens")
        try:
            return {"prompt": served.tokenizer.decode(tokens if isinstance(tokens, list) else None)}
        except ValueError as e:
            raise RequestError(str(e), "tokens") from None

    @app.get("/metrics")
    async def metrics():
        return Response(server.metrics.render(), media_type=CONTENT_TYPE)

    return app
