"""kvgpt/benchmark/streaming.py: the long-text loss runs the policies' own code, counts model rows right, and
agrees with a plain forward while the text still fits the cache."""

from __future__ import annotations

import pytest
import torch
from helpers import random_model, record_diff

from kvgpt import ModelConfig
from kvgpt.benchmark.streaming import binned, decode_speed, stream_losses

ROPE = dict(positions="rope", norm="rms", mlp="swiglu", bias=False)


def model(**arch):
    return random_model(ModelConfig(vocab_size=29, n_layers=2, n_heads=2, d_model=16, block_size=24, **arch))


def text(n=80):
    return torch.randint(0, 29, (n,), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("arch, policy, window, sinks", [
    ({}, "slide", 10, 0), (ROPE, "slide", 10, 0), (ROPE, "sinks", 20, 4), (ROPE, "window", 24, 0)])
@torch.no_grad()
def test_losses_match_a_full_forward_until_the_cache_is_full(arch, policy, window, sinks):
    m, ids = model(**arch), text()
    r = stream_losses(m, ids, policy, window, sinks)
    full = torch.nn.functional.cross_entropy(m(ids[None, :24])[0], ids[1:25], reduction="none")  # (24,)
    fits = 24 if policy == "slide" else sinks + window  # predictions made before anything is evicted
    diff = record_diff("streaming loss vs full forward", (r["losses"][:fits - 1] - full[:fits - 1]).abs().max().item())
    assert diff <= 1e-5 and len(r["losses"]) == 79
    assert not torch.allclose(r["losses"][30:], torch.zeros(49))


@pytest.mark.parametrize("arch, policy", [({}, "slide"), (ROPE, "sinks")])
def test_model_rows_are_counted(arch, policy, monkeypatch):
    m, ids, seen = model(**arch), text(), []
    prefill, step = m.prefill, m.forward_step
    def counted_prefill(token_ids, *args, **kwargs):
        seen.append(token_ids.size(1))
        return prefill(token_ids, *args, **kwargs)

    def counted_step(next_ids, *args, **kwargs):
        seen.append(1)
        return step(next_ids, *args, **kwargs)

    monkeypatch.setattr(m, "prefill", counted_prefill)
    monkeypatch.setattr(m, "forward_step", counted_step)
    r = stream_losses(m, ids, policy, 10 if policy == "slide" else 8, 2)
    assert r["rows"] == sum(seen) and r["slides"] > 0


def test_sinks_refuse_a_learned_position_model_and_bins_average():
    with pytest.raises(ValueError, match="needs a RoPE model"):
        stream_losses(model(), text(), "sinks", 8, 2)
    assert binned(torch.tensor([1.0, 3.0, 5.0, 7.0, 9.0]), 2) == [2.0, 6.0, 9.0]
    speeds = decode_speed({"gpt2": model(), "llama": model(**ROPE)}, [1, 2, 3], 5, repeats=1)
    assert set(speeds) == {"gpt2", "llama"} and all(v > 0 for v in speeds.values())


def test_plots_draw_one_panel_per_pair_and_a_difference_panel():
    import pandas as pd

    from kvgpt.plots.modern import plot_rope_rotation, plot_stream_losses

    assert len(plot_rope_rotation(head_dim=16, pairs=(0, 7)).axes) == 2
    curves = pd.DataFrame({"label": ["a", "a", "b", "b"], "bin": [0, 1, 0, 1], "loss": [1.0, 2.0, 1.5, 2.5]})
    fig = plot_stream_losses(curves, 10, baseline="a")
    diff = fig.axes[1].lines[-1].get_ydata()  # b minus a
    assert len(fig.axes) == 2 and list(diff) == [0.5, 0.5]
    assert len(plot_stream_losses(curves, 10).axes) == 1
