"""The "slide" context policy: generation past block_size by re-prefilling the last W tokens at positions 0..W-1."""

import pytest
import torch
from helpers import assert_close_logits, cached_model
from hypothesis import given, settings
from hypothesis import strategies as st

from kvgpt import AutoregressiveGenerator, Sampler
from kvgpt.cli import main as cli_main

CFG = dict(vocab_size=13, n_layers=2, n_heads=2, d_model=16, block_size=16)


def model():
    return cached_model(**CFG)


def windows(prompt, new, block, window, pad=0):
    """The token window each new token was predicted from, replaying the policy by hand (no model).

    `pad` left-padding slots (a shorter row of a batch) count towards the full context: a batch slides
    all its rows together, when its slots run out.
    """
    seen, out = [None] * pad + list(prompt), []
    for token in new:
        out.append([t for t in seen if t is not None])
        seen.append(token)
        if len(seen) > block:
            seen = seen[-window:]
    return out


@pytest.mark.parametrize("kind", ["static", "dynamic"])
@settings(max_examples=10)
@given(prompt=st.lists(st.integers(0, CFG["vocab_size"] - 1), min_size=1, max_size=16),
       window=st.integers(1, CFG["block_size"]), n=st.integers(1, 60))
def test_every_step_equals_a_fresh_prefill_of_its_window(kind, prompt, window, n):
    m, block = model(), CFG["block_size"]
    gen = AutoregressiveGenerator(m, context_policy="slide", window=window)
    out, logits = gen.generate(prompt, n, cache_kind=kind, return_logits=True)
    new = out[len(prompt):]
    assert len(new) == n
    with torch.no_grad():
        for step, win in enumerate(windows(prompt, new, block, window)):
            fresh = m(torch.tensor([win]))[0, -1]  # a brand-new forward of exactly the kept window
            assert_close_logits(logits[step], fresh, "slide: logits vs fresh prefill of the window")
    slides = sum(1 for a, b in zip(windows(prompt, new, block, window), windows(prompt, new, block, window)[1:])
                 if len(b) <= len(a))
    assert gen.last_stats.slides == slides


@pytest.mark.parametrize("window", [1, 5, 12, 16])
@pytest.mark.parametrize("sampler", [None, Sampler(temperature=1.0, top_k=6, seed=3)], ids=["greedy", "sampled"])
def test_the_first_block_size_tokens_equal_plain_generation(window, sampler):
    m, prompt = model(), [1, 2, 3, 4]
    n_plain = CFG["block_size"] - len(prompt)
    plain = AutoregressiveGenerator(m).generate(prompt, n_plain, sampler)
    slid = AutoregressiveGenerator(m, context_policy="slide", window=window).generate(prompt, 50, sampler)
    assert slid[: CFG["block_size"]] == plain and len(slid) == len(prompt) + 50


@pytest.mark.parametrize("window", [3, 9])
def test_cached_and_uncached_slides_choose_the_same_tokens(window):
    gen = AutoregressiveGenerator(model(), context_policy="slide", window=window)
    assert gen.generate([5, 6], 70, use_cache=True) == gen.generate([5, 6], 70, use_cache=False)


def test_a_batch_of_equal_rows_slides_like_each_row_alone():
    gen = AutoregressiveGenerator(model(), context_policy="slide", window=6)
    rows = [[1, 2, 3, 4, 5, 6, 7], [8, 9, 10, 11, 12, 0, 1]]
    together = gen.generate(rows, 40, Sampler(temperature=1.0, seed=1))
    assert together == [gen.generate(r, 40, Sampler(temperature=1.0, seed=1)) for r in rows]


@pytest.mark.parametrize("window", [3, 6, 16])
def test_a_padded_row_slides_with_its_batch_and_sees_only_its_own_tokens(window):
    m, block = model(), CFG["block_size"]
    rows = [[1, 2, 3, 4, 5, 6, 7], [8, 9]]  # row 1 is left-padded by 5: its slots run out 5 tokens early
    out, logits = AutoregressiveGenerator(m, context_policy="slide", window=window).generate(
        rows, 40, Sampler(temperature=1.0, seed=1), return_logits=True)
    with torch.no_grad():
        for b, pad in ((0, 0), (1, 5)):
            for step, win in enumerate(windows(rows[b], out[b][len(rows[b]):], block, window, pad)):
                assert_close_logits(logits[b][step], m(torch.tensor([win]))[0, -1])


def test_policies_and_windows_are_checked():
    m = model()
    with pytest.raises(ValueError, match="block_size=16.*context_policy='slide'"):
        AutoregressiveGenerator(m).generate([1, 2], 15)  # "refuse" stays the default
    with pytest.raises(ValueError, match="context_policy='crop'"):
        AutoregressiveGenerator(m, context_policy="crop")
    for bad in (0, 17, 2.5, True):
        with pytest.raises(ValueError, match=f"window={bad!r}"):
            AutoregressiveGenerator(m, context_policy="slide", window=bad)
    with pytest.raises(ValueError, match="only the 'slide' policy"):
        AutoregressiveGenerator(m, window=4)
    with pytest.raises(ValueError, match="prompt length 17 exceeds"):
        AutoregressiveGenerator(m, context_policy="slide").generate(list(range(13)) + [1, 2, 3, 4], 3)
    assert AutoregressiveGenerator(m, context_policy="slide").window == 8  # default: half the context


def test_cli_writes_past_the_context_window(capsys):
    code = cli_main(["generate", "--prompt", "ROMEO:", "--max-new-tokens", "300", "--temperature", "0.8",
                     "--top-k", "40", "--seed", "0", "--context-policy", "slide", "--window", "192"])
    out, err = capsys.readouterr()
    assert code == 0 and len(out) >= len("ROMEO:") + 300 and "300 new tokens" in err and "slides" in err
