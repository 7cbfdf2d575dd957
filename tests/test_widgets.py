"""The sampling panel, driven without a browser: set `.value`, `.click()` the button, read the widgets."""

from __future__ import annotations

import functools
import math
import subprocess
import sys

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

pytest.importorskip("ipywidgets")
pytest.importorskip("matplotlib")

from helpers import assert_close_logits, cached_model

from kvgpt.generation import AutoregressiveGenerator
from kvgpt.sampling import Sampler
from kvgpt.tokenizer import CharTokenizer
from kvgpt.widgets import SamplingPanel

CHARS = "\n !,.:;?abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
TOK = CharTokenizer(CHARS)
MODEL = cached_model(vocab_size=len(CHARS), block_size=64)


@pytest.fixture
def panel():
    return SamplingPanel(MODEL, TOK, prompt="ROMEO:\n", max_new_tokens=12)


@functools.lru_cache(maxsize=1)
def shared_panel():
    """One panel reused by the hypothesis examples, without drawing (the other tests cover the chart)."""
    panel = SamplingPanel(MODEL, TOK, prompt="abc")
    panel._draw = lambda before, after: None
    return panel


def expected_text(prompt: str, n: int, **knobs) -> str:
    ids = AutoregressiveGenerator(MODEL).generate(TOK.encode(prompt), n, Sampler(**knobs))
    return TOK.decode(ids)


def test_import_kvgpt_needs_neither_ipywidgets_nor_matplotlib():
    code = ("import sys, kvgpt, kvgpt.widgets, kvgpt.plots; "
            "print(sorted(m for m in ('ipywidgets', 'matplotlib') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_click_streams_the_same_text_as_generate(panel):
    panel.temperature.value, panel.top_k.value, panel.seed.value = 0.8, 10, 7
    updates = []
    panel.output.observe(lambda change: updates.append(change["new"]), names="value")
    panel.button.click()
    want = expected_text("ROMEO:\n", 12, temperature=0.8, top_k=10, seed=7)
    assert panel.text == want
    assert len([u for u in updates if u]) == 12  # one update per new token: the text streams
    assert panel.output.value.startswith("<pre") and "ROMEO:" in panel.output.value
    assert "12 tokens" in panel.message.value and "#b00020" not in panel.message.value


def test_same_seed_same_text_other_seed_other_text(panel):
    panel.seed.value, panel.max_new_tokens.value = 3, 30
    first, again = panel.generate(), panel.generate()
    panel.seed.value = 4
    other = panel.generate()
    assert first == again and first != other and first.startswith("ROMEO:\n")


def test_temperature_zero_is_greedy(panel):
    panel.temperature.value, panel.seed.value = 0.0, 1
    greedy = TOK.decode(AutoregressiveGenerator(MODEL).generate(TOK.encode("ROMEO:\n"), 12))
    assert panel.generate() == greedy
    assert int((panel.probs > 0).sum()) == 1


def model_logits(prompt: str) -> torch.Tensor:
    return MODEL(torch.tensor([TOK.encode(prompt)]), last_only=True)[0].detach()  # (V,)


def test_chart_follows_every_knob(panel):
    ids = TOK.encode("ROMEO:\n")
    assert_close_logits(panel.logits, model_logits("ROMEO:\n"))
    assert len(panel.chart.outputs) == 1 and "image/png" in panel.chart.outputs[0]["data"]
    panel.top_k.value = 3
    assert int((panel.probs > 0).sum()) == 3
    panel.top_k.value, panel.top_p.value, panel.repetition_penalty.value, panel.temperature.value = 0, 0.5, 1.3, 0.7
    sampler = Sampler(temperature=0.7, top_p=0.5, repetition_penalty=1.3)
    assert torch.equal(panel.probs, sampler.probs(panel.logits, history=ids))
    panel.prompt.value = "JULIET:\n"  # a new prompt: new logits
    assert_close_logits(panel.logits, model_logits("JULIET:\n"))
    assert torch.equal(panel.probs, sampler.probs(panel.logits, history=TOK.encode("JULIET:\n")))


@given(k=st.integers(0, len(CHARS)), p=st.floats(0.05, 1.0), t=st.floats(0.1, 2.0))
def test_chart_distribution_is_the_samplers(k, p, t):
    panel = shared_panel()
    panel.top_k.value, panel.top_p.value, panel.temperature.value = k, p, t
    knobs = {"temperature": panel.temperature.value, "top_k": k, "top_p": panel.top_p.value}  # sliders round to step
    assert torch.equal(panel.probs, Sampler(**knobs).probs(panel.logits, history=TOK.encode("abc")))
    assert math.isclose(float(panel.probs.sum()), 1.0, abs_tol=1e-5)


@pytest.mark.parametrize("setting, words", [
    ({"prompt": ""}, "prompt is empty"),
    ({"prompt": "héllo"}, "'é' at position 1 is not in the vocabulary"),
    ({"temperature": float("nan")}, "temperature=nan"),
    ({"seed": -1}, "seed=-1"),
    ({"seed": 10**20}, "seed=100000000000000000000: must be None or an int in 0 .. 2**64 - 1"),
])
def test_bad_input_is_a_message_not_an_exception(panel, setting, words):
    for name, value in setting.items():
        getattr(panel, name).value = value
    assert panel.generate() == ""
    assert words in panel.message.value and "#b00020" in panel.message.value  # shown in red
    assert panel.output.value == ""


def test_chart_shows_bad_prompt_then_recovers(panel):
    panel.prompt.value = "é"
    assert panel.probs is None and panel.chart.outputs == () and "not in the vocabulary" in panel.message.value
    panel.prompt.value = "ok"
    assert panel.probs is not None and len(panel.chart.outputs) == 1 and panel.message.value == ""


def test_panel_prints_nothing(capsys):
    panel = SamplingPanel(MODEL, TOK, max_new_tokens=5)
    panel.button.click()
    panel.temperature.value = 0.5
    assert capsys.readouterr().out == ""
    assert panel.text.startswith("ROMEO:\n")


def test_controls_are_in_the_widget(panel):
    import ipywidgets as w

    def leaves(widget):
        kids = getattr(widget, "children", ())
        return [widget] if not kids else [leaf for kid in kids for leaf in leaves(kid)]

    found = leaves(panel.widget)
    for name in ("prompt", "temperature", "top_k", "top_p", "repetition_penalty", "max_new_tokens", "seed",
                 "button", "output", "message", "chart"):
        assert getattr(panel, name) in found, name
    assert isinstance(panel.widget, w.VBox)
    assert all(not getattr(s, "continuous_update", False) for s in found if isinstance(s, (w.FloatSlider, w.IntSlider)))


def test_labels_are_sized_to_their_text(panel):
    # a fixed description_width cut "temperature (0=greedy)" to "temperature (0=gre..." in the browser
    for name in ("temperature", "top_k", "top_p", "repetition_penalty", "max_new_tokens", "seed"):
        assert getattr(panel, name).style.description_width == "initial", name


def test_max_new_tokens_bound_follows_the_prompt(panel):
    block = MODEL.config.block_size
    assert panel.max_new_tokens.max == block - len("ROMEO:\n")
    panel.max_new_tokens.value = panel.max_new_tokens.max
    assert panel.generate() and "#b00020" not in panel.message.value  # the largest value the slider allows works
    panel.prompt.value = "a" * 60
    assert panel.max_new_tokens.max == block - 60 and panel.max_new_tokens.value == block - 60
    panel.prompt.value = "a" * 70  # longer than the context: the model sees its last block_size tokens
    assert panel.max_new_tokens.max == 1


@pytest.mark.parametrize("seed", [10**20, 2**64])
def test_seed_out_of_range_is_a_clear_message(panel, seed):
    panel.seed.value = seed
    assert panel.generate() == ""
    assert f"seed={seed}" in panel.message.value and "2**64 - 1" in panel.message.value
    panel.seed.value = 2**64 - 1  # the largest seed torch.Generator takes
    assert panel.generate().startswith("ROMEO:\n")


def test_stats_line_survives_a_knob_change(panel):
    panel.generate()
    stats = panel.message.value
    assert "12 tokens" in stats
    panel.temperature.value = 0.5
    assert panel.message.value == stats


def test_snapshot_draws_the_state(panel):
    from matplotlib.figure import Figure

    panel.seed.value, panel.temperature.value = 5, 0.7
    text = panel.generate()
    fig = panel.snapshot()
    assert isinstance(fig, Figure) and len(fig.axes) == 2
    drawn = "\n".join(t.get_text() for t in fig.axes[0].texts)
    assert "temperature 0.70" in drawn and "seed 5" in drawn and text.splitlines()[-1] in drawn
    assert fig.axes[1].patches  # the distribution's bars
