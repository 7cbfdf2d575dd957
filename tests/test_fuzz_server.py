"""Fuzzing the server's entry points (issue 14's property, issue 20's surfaces): any JSON value in any completion
field gives a checked request or a RequestError naming that field (HTTP 400), never another exception; any value
given to LLMEngine.abort_request aborts that request or is a ValueError naming request_id, with nothing changed."""

from __future__ import annotations

from helpers import cached_model
from hypothesis import given, settings
from hypothesis import strategies as st

from kvgpt import CharTokenizer
from kvgpt.serving import LLMEngine
from kvgpt.serving.api import KNOWN, CompletionRequest, RequestError, Served, parse_completion

JSON = st.recursive(st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=4),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=2),
                    max_leaves=6)
TOK = CharTokenizer([chr(c) for c in range(32, 32 + 67)])
SERVED = Served("m", TOK, 67, 16, 3, 4)


@settings(max_examples=300)
@given(st.sampled_from(sorted(KNOWN)), JSON)
def test_fuzz_completion_fields(field, value):
    body = {"prompt": "ab", "max_tokens": 2, field: value}
    try:
        req = parse_completion(body, SERVED)
    except RequestError as e:
        assert e.param == field and e.status == 400, (e.param, str(e))
        return
    assert isinstance(req, CompletionRequest) and 1 <= req.max_tokens and len(req.prompt) + req.max_tokens <= 16
    assert all(0 <= i < 67 for i in req.prompt + req.eos)


@settings(max_examples=100)
@given(st.one_of(JSON, st.integers(-3, 5)))
def test_fuzz_abort_request(value):
    engine = LLMEngine(cached_model(), block_size=4, num_blocks=8, max_num_seqs=2)
    rids = [engine.add_request([1, 2, 3, 4, 5], 6), engine.add_request([7, 8], 6)]
    engine.step()
    before = (sorted(engine.requests), {k: list(v) for k, v in engine.cache.tables.items()},
              list(engine.cache.allocator.ref_counts))
    try:
        engine.abort_request(value)
    except ValueError as e:
        assert "request_id" in str(e)
        assert before == (sorted(engine.requests), {k: list(v) for k, v in engine.cache.tables.items()},
                          list(engine.cache.allocator.ref_counts))
        return
    assert value in rids and value not in engine.requests and value not in engine.cache.tables
