"""Every plot function returns a matplotlib Figure on small inputs (the chapters and figures/ rely on them)."""

import matplotlib

matplotlib.use("Agg")

import pandas as pd
import pytest
import torch
from helpers import cached_model
from matplotlib.figure import Figure

from kvgpt import CharTokenizer, KVCacheManager, plots


@pytest.fixture(autouse=True)
def close_figures():
    yield
    import matplotlib.pyplot as plt

    plt.close("all")


def test_attention_weights_are_causal_rows_summing_to_one():
    model = cached_model(vocab_size=20, n_layers=2, n_heads=2, d_model=16)
    w = plots.attention_weights(model, torch.tensor([[1, 2, 3, 4, 5]]), layer=1)  # (1, H, T, T)
    assert w.shape == (1, 2, 5, 5)
    assert torch.allclose(w.sum(-1), torch.ones(1, 2, 5)) and torch.equal(w.triu(1), torch.zeros_like(w))
    with pytest.raises(ValueError, match="layer=2"):
        plots.attention_weights(model, torch.tensor([[1]]), layer=2)
    assert isinstance(plots.attention_heatmaps(w[0], list("abcde")), Figure)
    assert isinstance(plots.position_similarity(model, 8), Figure)


def test_cache_and_batch_pictures():
    assert isinstance(plots.kv_cache_fill([[3, 3], [4, 4]], slots=6), Figure)
    assert isinstance(plots.cache_bytes([1, 2, 3], {"dynamic": [1, 2, 3], "static": [3, 3, 3]}), Figure)
    cfg = cached_model().config
    mgr = KVCacheManager(cfg, batch_size=2)
    mgr.set_padding(torch.tensor([[0, 1, 1], [1, 1, 1]]))
    fig = plots.plot_padding_mask(mgr.attention_mask(3), mgr.position_ids(3), ["a", "b"], mgr.pad_lengths)
    assert isinstance(fig, Figure)
    assert isinstance(plots.plot_step_latency({"cached": [1.0] * 12, "uncached": list(range(12))}), Figure)


def test_distribution_pictures():
    tok = CharTokenizer(list("abcdef"))
    logits = torch.tensor([3.0, 1.0, 0.5, 0.0, -1.0, -2.0])
    assert isinstance(plots.plot_processors(logits, tok, history=[0, 1], top=4), Figure)
    with pytest.raises(ValueError, match="differ in size"):
        plots.plot_distribution(torch.ones(3) / 3, torch.ones(4) / 4, tok)


def test_benchmark_pictures():
    df = pd.DataFrame({"engine": ["kvgpt static"] * 2 + ["hf dynamic"] * 2, "batch_size": [1, 4, 1, 4],
                       "decode_tokens_per_s": [100.0, 350.0, 50.0, 150.0], "position": [16, 32, 16, 32],
                       "ms": [1.0, 1.1, 2.0, 2.2]})
    assert isinstance(plots.plot_throughput(df), Figure)
    assert isinstance(plots.plot_position_latency(df), Figure)


def test_roofline_picture():
    points = pd.DataFrame({"series": ["batch"] * 2 + ["steps"] * 2, "label": ["B=1", "B=4", "S=64", "S=128"],
                           "intensity": [0.5, 2.0, 0.5, 0.5], "gflops": [10.0, 30.0, 11.0, 10.5]})
    fig = plots.plot_roofline(points, peak_gflops=300.0, bandwidth_gbs=30.0)
    ax = fig.axes[0]
    roof = ax.lines[0].get_ydata()
    assert roof.max() == 300.0 and abs(roof.min() / ax.lines[0].get_xdata().min() - 30.0) < 1e-9  # min(P, x * W)
    assert [t.get_text() for t in ax.texts][1:] == ["B=1", "B=4", "S=64", "S=128"]  # after the ridge label
    assert ax.get_xscale() == ax.get_yscale() == "log"
