"""kvgpt.serving.api without HTTP: stop strings cut the text exactly and no streamed delta ever shows a stop string;
the request checks map OpenAI's knobs to the Sampler a solo generation would use."""

from __future__ import annotations

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from kvgpt import CharTokenizer
from kvgpt.serving.api import RequestError, Served, parse_completion
from kvgpt.serving.responses import CompletionText

TOK = CharTokenizer(list("abc\n "))
SERVED = Served("m", TOK, 5, 64, 4, 16)


@settings(max_examples=300)  # pure string work: cheap, and partial matches need many tries
@given(st.lists(st.integers(0, 4), min_size=1, max_size=40),
       st.lists(st.text(alphabet="abc\n ", min_size=1, max_size=4), max_size=3))
@example([2, 0, 1, 2], ["ab"])  # "a" arrives alone: held back until "b" makes the stop string
@example([0, 0, 1], ["aab", "ab"])  # two stops, overlapping
def test_stop_strings_cut_before_the_first_and_are_never_streamed(ids, stops):
    text = CompletionText(TOK, stops)
    deltas = []
    for i, token in enumerate(ids):
        deltas.append(text.push(token, last=i == len(ids) - 1))
        if text.stopped is not None:
            break
    full = TOK.decode(ids)
    cut = min((full.find(s) for s in stops if s in full), default=len(full))
    assert "".join(deltas) == full[:cut]
    assert (text.stopped is not None) == (cut < len(full) or any(full.find(s) == cut for s in stops if s in full))
    for k in range(len(deltas)):  # what had been sent at any moment never contains a stop string
        sent = "".join(deltas[: k + 1])
        assert not any(s in sent for s in stops)


def test_knobs_become_the_sampler_a_solo_generation_uses():
    req = parse_completion({"prompt": "ab", "max_tokens": 3, "temperature": 0.7, "top_k": -1, "top_p": 1,
                            "repetition_penalty": 1.1, "seed": 5}, SERVED)
    assert req.prompt == [0, 1] and req.max_tokens == 3 and req.sampler.seed == 5
    assert req.sampler.knobs == {"temperature": 0.7, "top_k": None, "top_p": 1.0, "repetition_penalty": 1.1}
    greedy = parse_completion({"prompt": [0], "temperature": 0}, SERVED)
    assert greedy.sampler is None and greedy.max_tokens == 16 and greedy.eos == []  # OpenAI's default max_tokens
    assert parse_completion({"prompt": ["ab"], "stop_token_ids": [2], "ignore_eos": True}, SERVED).eos == [2]


@pytest.mark.parametrize("body, param", [({"prompt": "ab", "max_tokens": 63}, "max_tokens"),
                                         ({"prompt": "a" * 64, "max_tokens": 1}, "prompt"),
                                         ({"prompt": "ab", "max_tokens": 62, "model": "x"}, "model")])
def test_limits_name_the_field(body, param):
    with pytest.raises(RequestError) as e:
        parse_completion(body, SERVED)
    assert e.value.param == param and e.value.status == 400 and e.value.body()["error"]["param"] == param


def test_the_pool_limit_is_the_engines():
    from helpers import cached_model

    from kvgpt.serving import LLMEngine

    engine = LLMEngine(cached_model(), block_size=4, num_blocks=3)
    served = Served("m", TOK, 67, 64, 3, 4)
    for prompt_len, max_tokens in [(4, 9), (4, 10), (10, 3), (10, 4), (1, 12), (1, 13)]:
        why = served.never_fits(prompt_len, max_tokens)
        try:
            engine.add_request([1] * prompt_len, max_tokens)
            engine_refuses = False
        except ValueError:
            engine_refuses = True
        assert (why is not None) == engine_refuses, (prompt_len, max_tokens)
