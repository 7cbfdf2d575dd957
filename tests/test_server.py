"""`kvgpt serve` judged by the official `openai` client over real HTTP on 127.0.0.1: completions (whole and streamed)
carry exactly the tokens Part I's generator makes (greedy) and LLMEngine makes (seeded sampling); every bad input
is a 400 naming its field and changes nothing; a full server answers 503 at once; aborted streams free their blocks."""

from __future__ import annotations

import json
import math
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest
from serve_helpers import EMPTY, NAME, embedded, engine_state, engine_text, solo_text, start

from kvgpt import Sampler


@pytest.fixture(scope="module")
def live():
    with start(max_num_seqs=8, max_queued_requests=32) as server:
        yield server


@pytest.fixture(scope="module")
def client(live):
    return openai.OpenAI(base_url=f"{live.url}/v1", api_key="unused", max_retries=0, timeout=60)


def test_greedy_completion_equals_the_generators_text(client):
    out = client.completions.create(model=NAME, prompt="ROMEO:", max_tokens=40, temperature=0)
    assert out.choices[0].text == solo_text("ROMEO:", 40)
    assert out.choices[0].finish_reason == "length" and out.object == "text_completion" and out.model == NAME
    assert (out.usage.prompt_tokens, out.usage.completion_tokens, out.usage.total_tokens) == (6, 40, 46)


def test_a_prompt_of_token_ids_is_the_same_request(client):
    _, tok = embedded()
    by_text = client.completions.create(model=NAME, prompt="JULIET:\n", max_tokens=12, temperature=0)
    by_ids = client.completions.create(model=NAME, prompt=tok.encode("JULIET:\n"), max_tokens=12, temperature=0)
    assert by_ids.choices[0].text == by_text.choices[0].text == solo_text("JULIET:\n", 12)


def test_stream_is_one_chunk_per_token_then_usage(client):
    chunks = list(client.completions.create(model=NAME, prompt="To be", max_tokens=25, temperature=0, stream=True,
                                            stream_options={"include_usage": True}))
    tokens, last = chunks[:-1], chunks[-1]
    assert len(tokens) == 25 and all(len(c.choices) == 1 and len(c.choices[0].text) == 1 for c in tokens)
    assert "".join(c.choices[0].text for c in tokens) == solo_text("To be", 25)
    assert [c.choices[0].finish_reason for c in tokens] == [None] * 24 + ["length"]
    assert last.choices == [] and last.usage.completion_tokens == 25 and last.usage.prompt_tokens == 5


def test_raw_stream_ends_with_done(live):
    body = {"model": NAME, "prompt": "A", "max_tokens": 3, "temperature": 0, "stream": True}
    with httpx.stream("POST", f"{live.url}/v1/completions", json=body, timeout=60) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = [line for line in r.iter_lines() if line]
    assert len(events) == 4 and events[-1] == "data: [DONE]"  # no usage chunk unless asked for
    assert all(json.loads(e.removeprefix("data: "))["usage"] is None for e in events[:-1])


@pytest.mark.parametrize("knobs", [
    {"temperature": 0.8, "top_k": 40, "seed": 7},
    {"temperature": 1.0, "top_p": 0.9, "repetition_penalty": 1.3, "seed": 2**40},
    {"temperature": 0, "repetition_penalty": 1.5, "seed": 3},  # greedy after the penalty
])
def test_seeded_sampling_equals_the_same_request_through_llmengine(client, knobs):
    openai_knobs = {k: v for k, v in knobs.items() if k in ("temperature", "top_p", "seed")}
    extra = {k: v for k, v in knobs.items() if k not in openai_knobs}  # vLLM's extensions: the client's extra_body
    out = client.completions.create(model=NAME, prompt="KING:", max_tokens=30, extra_body=extra, **openai_knobs)
    streamed = client.completions.create(model=NAME, prompt="KING:", max_tokens=30, stream=True, extra_body=extra,
                                         **openai_knobs)
    expected = engine_text("KING:", 30, Sampler(**knobs))
    assert out.choices[0].text == expected == "".join(c.choices[0].text for c in streamed)


def test_stop_string_cuts_the_text_and_is_never_streamed(client):
    full = solo_text("ROMEO:", 60)
    stop = full[10:12]  # two characters that occur in the greedy text
    out = client.completions.create(model=NAME, prompt="ROMEO:", max_tokens=60, temperature=0, stop=[stop, "~~"])
    assert out.choices[0].text == full[: full.index(stop)] and out.choices[0].finish_reason == "stop"
    assert out.choices[0].model_extra["stop_reason"] == stop
    chunks = list(client.completions.create(model=NAME, prompt="ROMEO:", max_tokens=60, temperature=0,
                                            stop=stop, stream=True))
    assert "".join(c.choices[0].text for c in chunks) == full[: full.index(stop)]
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_models_health_tokenize_detokenize(live, client):
    models = client.models.list().data
    assert [m.id for m in models] == [NAME] and models[0].model_extra["max_model_len"] == 256
    assert httpx.get(f"{live.url}/health").status_code == 200
    _, tok = embedded()
    r = httpx.post(f"{live.url}/tokenize", json={"model": NAME, "prompt": "Hi there", "add_special_tokens": False})
    assert r.json() == {"count": 8, "max_model_len": 256, "tokens": tok.encode("Hi there"), "token_strs": None}
    assert httpx.post(f"{live.url}/detokenize", json={"tokens": tok.encode("Hi")}).json() == {"prompt": "Hi"}


def test_chat_is_refused_with_the_reason(client):
    with pytest.raises(openai.BadRequestError, match="no chat template"):
        client.chat.completions.create(model=NAME, messages=[{"role": "user", "content": "Hi"}])


def test_metrics_use_vllms_names(live, client):
    for _ in range(2):  # the second one finds the first's full 16-token block in the prefix cache
        client.completions.create(model=NAME, prompt="ROMEO:\nBut soft, what light", max_tokens=5, temperature=0)
    text = httpx.get(f"{live.url}/metrics").text
    for name in ("vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc",
                 "vllm:prefix_cache_queries_total", "vllm:prefix_cache_hits_total", "vllm:num_preemptions_total",
                 "vllm:time_to_first_token_seconds_bucket", "vllm:inter_token_latency_seconds_bucket",
                 "vllm:e2e_request_latency_seconds_count", "vllm:request_queue_time_seconds_count",
                 "vllm:generation_tokens_total", "kvgpt:kv_blocks_used", 'finished_reason="length"'):
        assert name in text, name
    hits = next(line for line in text.splitlines() if line.startswith("vllm:prefix_cache_hits_total"))
    assert float(hits.split()[-1]) >= 16


# Every bad-input family of the issue -> (body, field named in error.param, words in the message)
BAD = [
    (b"{not json", None, "not valid JSON"),
    (b"[1, 2]", None, "JSON object"),
    ({"model": "gpt-4", "prompt": "A"}, "model", "gpt-4"),
    ({"prompt": "A" * 250, "max_tokens": 10}, "max_tokens", "context of 256"),
    ({"prompt": "A" * 256, "max_tokens": 1}, "prompt", "context of 256"),
    ({"prompt": "caf\u00e9"}, "prompt", "'\u00e9' at position 3"),
    ({"prompt": [1, 2, 80]}, "prompt", "80"),
    ({"prompt": [1, 2.5]}, "prompt", "2.5"),
    ({"prompt": ""}, "prompt", "empty"),
    ({"prompt": 5}, "prompt", "prompt=5"),
    ({"prompt": ["A", "B"]}, "prompt", "2 prompts"),
    ({"prompt": "A", "max_tokens": "10"}, "max_tokens", "max_tokens='10'"),
    ({"prompt": "A", "max_tokens": 0}, "max_tokens", "max_tokens=0"),
    ({"prompt": "A", "max_tokens": -3}, "max_tokens", "max_tokens=-3"),
    ({"prompt": "A", "temperature": -1}, "temperature", "temperature=-1"),
    ({"prompt": "A", "temperature": "hot"}, "temperature", "temperature='hot'"),
    ({"prompt": "A", "temperature": math.nan}, "temperature", "temperature=nan"),
    ({"prompt": "A", "top_p": 0}, "top_p", "top_p=0"),
    ({"prompt": "A", "top_p": math.inf}, "top_p", "top_p=inf"),
    ({"prompt": "A", "top_k": -2}, "top_k", "top_k=-2"),
    ({"prompt": "A", "repetition_penalty": 0}, "repetition_penalty", "repetition_penalty=0"),
    ({"prompt": "A", "seed": -1}, "seed", "seed=-1"),
    ({"prompt": "A", "seed": 1.5}, "seed", "seed=1.5"),
    ({"prompt": "A", "stream": "yes"}, "stream", "stream='yes'"),
    ({"prompt": "A", "stream_options": {"include_usage": 1}}, "stream_options", "include_usage=1"),
    ({"prompt": "A", "stop": ["a", "b", "c", "d", "e"]}, "stop", "up to 4"),
    ({"prompt": "A", "stop": [""]}, "stop", "non-empty"),
    ({"prompt": "A", "ignore_eos": "true"}, "ignore_eos", "ignore_eos='true'"),
    ({"prompt": "A", "stop_token_ids": [99]}, "stop_token_ids", "99"),
    ({"prompt": "A", "n": 2}, "n", "n=2"),
    ({"prompt": "A", "logprobs": 5}, "logprobs", "logprobs=5"),
    ({"prompt": "A", "echo": True}, "echo", "echo=True"),
    ({"prompt": "A", "max_token": 5}, "max_token", "unrecognized field"),
]


@pytest.mark.parametrize("body, param, words", BAD, ids=[f"{i}-{b[1]}" for i, b in enumerate(BAD)])
def test_bad_input_is_a_400_naming_the_field_and_changes_nothing(live, body, param, words):
    before = httpx.get(f"{live.url}/metrics").text.count("\n")
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()  # json.dumps writes NaN and Infinity
    r = httpx.post(f"{live.url}/v1/completions", content=raw, headers={"Content-Type": "application/json"})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == param and error["code"] == 400 and error["type"] == "BadRequestError"
    assert words in error["message"], error["message"]
    assert engine_state(live) == EMPTY and live.server.in_flight == 0  # nothing reached the engine
    assert httpx.get(f"{live.url}/metrics").text.count("\n") == before
    ok = httpx.post(f"{live.url}/v1/completions", json={"prompt": "A", "max_tokens": 2, "temperature": 0}, timeout=60)
    assert ok.status_code == 200 and ok.json()["choices"][0]["text"] == solo_text("A", 2)  # still serving


def test_a_request_the_pool_can_never_hold_is_refused_at_once():
    with start(num_blocks=4, block_size=16) as small:  # 64 slots in all
        r = httpx.post(f"{small.url}/v1/completions", json={"prompt": "ROMEO:", "max_tokens": 100}, timeout=60)
        assert r.status_code == 400 and r.json()["error"]["param"] == "max_tokens"
        assert "need 7 KV blocks of 16 slots" in r.text and "--num-blocks" in r.text
        assert small.server.loop.call(lambda e: e.stats.steps).result(30) == 0  # the engine never saw it
        fits = httpx.post(f"{small.url}/v1/completions", json={"prompt": "ROMEO:", "max_tokens": 50, "temperature": 0},
                          timeout=60)
        assert fits.json()["choices"][0]["text"] == solo_text("ROMEO:", 50)


def test_a_full_server_answers_503_at_once_and_recovers():
    hold = threading.Event()
    with start(max_num_seqs=1, max_queued_requests=1) as full, httpx.Client(base_url=full.url, timeout=60) as http:
        full.server.loop.call(lambda engine: hold.wait(60))  # the engine thread is busy: nothing is drained
        body = {"prompt": "ROMEO:", "max_tokens": 20, "temperature": 0}
        with ThreadPoolExecutor(2) as pool:
            admitted = [pool.submit(http.post, "/v1/completions", json=body) for _ in range(2)]
            _poll(lambda: full.server.in_flight == 2)  # one will run, one will wait: the server is full
            busy = http.post("/v1/completions", json=body)
            assert busy.status_code == 503 and busy.headers["retry-after"] == "1"
            assert busy.json()["error"]["type"] == "ServiceUnavailableError" and "full" in busy.json()["error"]["message"]
            hold.set()
            texts = [f.result(60).json()["choices"][0]["text"] for f in admitted]
        assert texts == [solo_text("ROMEO:", 20)] * 2
        _poll(lambda: engine_state(full) == EMPTY and full.server.in_flight == 0)
        assert http.post("/v1/completions", json=body).status_code == 200


def test_a_client_that_leaves_mid_stream_frees_its_blocks_at_once():
    with start() as live:
        engine, gate = live.server.loop.engine, threading.Semaphore(0)
        step = engine.step
        engine.step = lambda: (gate.acquire(timeout=60), step())[1]  # the test grants the engine its steps
        body = {"prompt": "ROMEO:", "max_tokens": 200, "temperature": 0, "stream": True}
        with httpx.stream("POST", f"{live.url}/v1/completions", json=body, timeout=60) as r:
            gate.release(3)  # prefill + first token, then two more
            events = (line for line in r.iter_lines() if line)
            texts = [json.loads(next(events)[6:])["choices"][0]["text"] for _ in range(3)]
            assert "".join(texts) == solo_text("ROMEO:", 3)
        _poll(lambda: _aborts_queued(live))  # the server noticed: an abort waits for the engine's next drain
        gate.release(1)  # at most one more step: the abort must be drained by then, or the engine stays stuck
        _poll(lambda: engine_state(live) == EMPTY and live.server.in_flight == 0)
        assert engine.stats.decode_tokens <= 3 and engine.stats.finished == 1  # ended by the abort, <= 4 of 200 tokens
        engine.step = step
        assert 'kvgpt:requests_aborted_total{model_name="shakespeare-char"} 1.0' in httpx.get(f"{live.url}/metrics").text


@pytest.mark.parametrize("stream", [False, True])
def test_a_client_that_leaves_while_waiting_or_before_a_whole_answer_is_aborted(stream):
    """No write would reveal these departures (nothing is sent yet): the server watches the connection itself."""
    with start(max_num_seqs=1) as live:
        engine, gate, at_gate = live.server.loop.engine, threading.Semaphore(0), threading.Event()
        step = engine.step

        def gated():
            at_gate.set()  # the engine thread is between two steps, waiting for the test
            gate.acquire(timeout=60)
            at_gate.clear()
            return step()

        engine.step = gated
        body = {"prompt": "ROMEO:", "max_tokens": 200, "temperature": 0, "stream": stream}
        clients = [_raw_post(live.port, body), _raw_post(live.port, {**body, "prompt": "JULIET:"})]
        gate.release(3)
        _poll(lambda: engine.stats.steps == 3 and at_gate.is_set() and len(engine.scheduler.waiting) == 1)
        ran, waiting = engine.scheduler.running[0], engine.scheduler.waiting[0]
        assert waiting.num_computed == 0 and ran.num_generated == 3  # one runs, the other was never run
        for sock in clients:
            sock.close()
        _poll(lambda: _aborts_queued(live))
        gate.release(1)  # at most one more step before both aborts are drained
        _poll(lambda: engine_state(live) == EMPTY and live.server.in_flight == 0)
        assert engine.stats.steps <= 4 and engine.stats.prefill_tokens == len(ran.prompt)  # the other never ran
        engine.step = step


def _raw_post(port: int, body: dict) -> socket.socket:
    """Send a completion request on a plain socket and leave it open (closing it is the client leaving)."""
    data = json.dumps(body).encode()
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\n\r\n" % len(data) + data)
    return sock


def test_a_failed_engine_step_fails_its_requests_and_the_health_check():
    with start() as live:
        def broken():
            raise RuntimeError("boom")

        live.server.loop.engine.step = broken
        r = httpx.post(f"{live.url}/v1/completions", json={"prompt": "A", "max_tokens": 3}, timeout=60)
        assert r.status_code == 500 and "boom" in r.json()["error"]["message"]
        assert httpx.get(f"{live.url}/health").status_code == 503
        again = httpx.post(f"{live.url}/v1/completions", json={"prompt": "A", "max_tokens": 3}, timeout=60)
        assert again.status_code == 503 and again.json()["error"]["type"] == "ServiceUnavailableError"
        with pytest.raises(RuntimeError, match="stopped"):
            live.server.loop.call(len).result(30)  # nothing is left waiting on a dead loop
        assert live.server.in_flight == 0


def _aborts_queued(live) -> bool:
    """Every request still in the engine has its abort waiting in the command queue (read while the engine thread
    waits at the test's gate, so neither side moves)."""
    loop = live.server.loop
    return sum(c[0] == "abort" for c in list(loop._commands)) >= len(loop._handles)


def _poll(done, tries: int = 400) -> None:
    """Wait (bounded: tries x 50 ms) for a condition another thread makes true."""
    for _ in range(tries):
        if done():
            return
        time.sleep(0.05)
    assert done()


def test_the_llama_style_model_serves_through_the_same_server():
    """Chapter 16's model needs nothing new from the server: greedy text (whole and streamed) == Part I's generator."""
    from kvgpt import AutoregressiveGenerator, load_pretrained
    from kvgpt.serving.server import ServerThread, make_server

    llama, tok = load_pretrained("shakespeare-char-llama")
    ids = tok.encode("ROMEO:")
    want = tok.decode(AutoregressiveGenerator(llama).generate(ids, 30)[len(ids):])
    with ServerThread(make_server(llama, tok, "shakespeare-char-llama", max_num_seqs=4), timeout=60) as srv:
        llama_client = openai.OpenAI(base_url=f"{srv.url}/v1", api_key="unused", max_retries=0, timeout=60)
        whole = llama_client.completions.create(model="shakespeare-char-llama", prompt="ROMEO:", max_tokens=30,
                                                temperature=0)
        streamed = "".join(c.choices[0].text for c in llama_client.completions.create(
            model="shakespeare-char-llama", prompt="ROMEO:", max_tokens=30, temperature=0, stream=True) if c.choices)
    assert whole.choices[0].text == streamed == want
