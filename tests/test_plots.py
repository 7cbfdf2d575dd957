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


def _png(fig) -> bytes:
    import io

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=50, metadata={"Software": None})
    return buffer.getvalue()


def test_heatmaps_have_colorbars_and_per_head_scale():
    g = torch.Generator().manual_seed(0)
    w = torch.softmax(torch.randn(2, 6, 6, generator=g).masked_fill(~torch.ones(6, 6, dtype=torch.bool).tril(),
                                                                      float("-inf")), -1)  # (H, T, T)
    fig = plots.attention_heatmaps(w, list("abcdef"))
    assert len(fig.axes) == 4  # two heads, each with its colorbar
    tops = [im.get_clim()[1] for ax in fig.axes[:2] for im in ax.get_images()]
    visible = [w[h][torch.ones(6, 6, dtype=torch.bool).tril()] for h in range(2)]
    assert tops == pytest.approx([float(v.quantile(0.98)) for v in visible]) and max(tops) < 1.0
    fixed = plots.attention_heatmaps(w, list("abcdef"), per_head=False)
    assert [im.get_clim() for ax in fixed.axes[:2] for im in ax.get_images()] == [(0, 1), (0, 1)]


def test_new_pictures_are_byte_stable():
    cfg = cached_model(n_layers=3).config
    for make in (lambda: plots.architecture_diagram(cfg), lambda: plots.cached_vs_uncached(list("ROMEO:")),
                 plots.attention_shapes):
        assert _png(make()) == _png(make())
    assert sum("KV cache, layer" in t.get_text() for t in plots.architecture_diagram(cfg).axes[0].texts) == 3


def test_cached_vs_uncached_colours_the_work():
    from kvgpt.plots.cache import CACHED, NEW, SAME

    fig = plots.cached_vs_uncached(list("abcd"))
    uncached, cached = ([p.get_facecolor() for p in ax.patches] for ax in fig.axes[:2])
    rgba = lambda c: matplotlib.colors.to_rgba(c)  # noqa: E731
    # no cache: 4 keys + 4 queries + 10 visible scores; new work only in the last key, query and score row
    assert uncached.count(rgba(NEW)) == 1 + 1 + 4 and uncached.count(rgba(SAME)) == 3 + 3 + 6
    # cache: 3 keys read, 1 new key, 1 query, a row of 4 scores; nothing recomputed
    assert cached.count(rgba(CACHED)) == 3 and cached.count(rgba(NEW)) == 1 + 1 + 4 and rgba(SAME) not in cached


def test_cache_and_batch_pictures():
    assert len(plots.kv_cache_fill([[3, 3], [4, 4]], slots=6).axes) == 1  # layers agree: one panel
    assert len(plots.kv_cache_fill([[3, 3], [4, 3]], slots=6).axes) == 2  # they disagree: one panel each
    assert isinstance(plots.cache_bytes([1, 2, 3], {"dynamic": [1, 2, 3], "static": [3, 3, 3]}), Figure)
    cfg = cached_model().config
    mgr = KVCacheManager(cfg, batch_size=2)
    mgr.set_padding(torch.tensor([[0, 1, 1], [1, 1, 1]]))
    fig = plots.plot_padding_mask(mgr.attention_mask(3), mgr.position_ids(3), ["a", "b"], mgr.pad_lengths)
    assert isinstance(fig, Figure)
    assert isinstance(plots.plot_step_latency({"cached": [1.0] * 12, "uncached": list(range(12))}), Figure)
    log = plots.plot_step_latency({"cached": [1.0] * 12, "uncached": [100.0] * 12}, smooth=1, log=True)
    assert log.axes[0].get_yscale() == "log"


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


def test_smaller_caches_pictures():
    assert isinstance(plots.plot_head_sharing(8, (8, 2, 1)), Figure)
    k = torch.randn(1, 2, 6, 4)
    assert isinstance(plots.plot_kv_spread(k, -k, title="layer 0"), Figure)


def test_roofline_picture():
    points = pd.DataFrame({"series": ["batch"] * 2 + ["steps"] * 2, "label": ["B=1", "B=4", "S=64", "S=128"],
                           "intensity": [0.5, 2.0, 0.5, 0.5], "gflops": [10.0, 30.0, 11.0, 10.5]})
    fig = plots.plot_roofline(points, peak_gflops=300.0, bandwidth_gbs=30.0)
    ax = fig.axes[0]
    roof = ax.lines[0].get_ydata()
    assert roof.max() == 300.0 and abs(roof.min() / ax.lines[0].get_xdata().min() - 30.0) < 1e-9  # min(P, x * W)
    assert [t.get_text() for t in ax.texts][1:] == ["B=1", "B=4", "S=64", "S=128"]  # after the ridge label
    assert ax.get_xscale() == ax.get_yscale() == "log"


def _flat_batch():
    """One flat call of chapter 10's kind: a decode row, a prompt chunk and a new prompt, tables interleaved."""
    from kvgpt.serving import PagedKVCache

    cache = PagedKVCache(cached_model().config, num_blocks=6, block_size=4)
    for s, (past, new) in enumerate(((5, 1), (2, 3), (0, 4))):
        cache.add_sequence(s)
        cache.reserve(s, past + new)
        if past:
            cache.commit(s, past, [1] * past)
    return cache.batch([0, 1, 2], [1, 3, 4])


def _chapter_figures():
    """The figures chapters 10-13 (and 08's peers chart) draw, on the stored measurements in figures/."""
    from pathlib import Path

    from kvgpt.benchmark.peer_report import load_peers, plot_peers
    from kvgpt.plots import serving, speculative

    root = Path(__file__).resolve().parents[1] / "figures"
    throughput, trace = pd.read_csv(root / "serve_throughput.csv"), pd.read_csv(root / "serve_memory_trace.csv")
    online = pd.read_csv(root / "serve_online.csv")  # the files chapter 11 reads
    sweep, positions = pd.read_csv(root / "spec_speedup.csv"), pd.read_csv(root / "spec_positions.csv")
    label = lambda d: d.assign(source=d["mode"] + ", " + d["source"])  # noqa: E731
    k = torch.randn(8, 4, 256, 32, generator=torch.Generator().manual_seed(0))
    steps = [list(range(16 - s // 3)) for s in range(40)]
    return {
        "plot_serving": lambda: serving.plot_serving(throughput),
        "plot_memory_trace": lambda: plots.plot_memory_trace(trace[trace.model == trace.model.iloc[0]],
                                                             {"a static cache": 2 * trace.reserved_bytes.max()}),
        "plot_ttft_vs_rate": lambda: serving.plot_ttft_vs_rate(online, note="a CPU, 1 thread"),
        "plot_step_budget": lambda: serving.plot_step_budget(
            [[(r, 1, True) for r in range(s % 5)] + [(9, 40 - s % 5, False)] for s in range(12)], 48, highlight=9),
        "plot_pool_concurrency": lambda: plots.plot_pool_concurrency(
            pd.DataFrame({"max_num_seqs": [16, 32, 64], "peak_running": [16, 32, 61], "preemptions": [0, 0, 12]}),
            {"static cache, same bytes": 16}),
        "plot_flat_call": lambda: plots.plot_flat_call(_flat_batch(), ["A", "B", "C"]),
        "plot_hash_chain": lambda: plots.plot_hash_chain({"To be": [1, 2, 3, 4, 5, 6, 7], "So be": [9, 2, 3, 4, 5]}, 2),
        "plot_row_gantt": lambda: serving.plot_row_gantt(steps, 16, wasted=[[15]] * 40, title="static batching"),
        "plot_acceptance": lambda: speculative.plot_acceptance(label(sweep), label(positions)),
        "plot_speedup": lambda: speculative.plot_speedup(sweep[sweep["mode"] == "greedy"], note="a CPU, 1 thread"),
        "plot_rounds": lambda: speculative.plot_rounds(
            [{"context": "ROME", "drafts": list("O:⏎I"), "accepted": i % 5, "target": "w", "cache": (11, 9)}
             for i in range(7)], "Greedy speculative decoding, k = 4"),
        "plot_kv_spread": lambda: plots.plot_kv_spread(k, 0.5 * k, title="layer 1"),
        "plot_head_sharing": lambda: plots.plot_head_sharing(8, (8, 2, 1)),
        "plot_peers": lambda: plot_peers(load_peers(root / "peers_results.csv"), "a CPU"),
        "plot_logit_gap": lambda: plots.plot_logit_gap({"load_hf": [2e-7] * 30, "to_hf()": [0.0] * 30,
                                                       "no transpose": [0.9] * 30}),
    }


CHAPTER_FIGURES = ["plot_serving", "plot_memory_trace", "plot_ttft_vs_rate", "plot_step_budget", "plot_pool_concurrency",
                   "plot_flat_call", "plot_hash_chain", "plot_row_gantt", "plot_acceptance", "plot_speedup", "plot_rounds",
                   "plot_kv_spread", "plot_head_sharing", "plot_peers", "plot_logit_gap"]


def test_chapter_figure_list_is_complete():
    assert sorted(_chapter_figures()) == sorted(CHAPTER_FIGURES)


@pytest.mark.parametrize("name", CHAPTER_FIGURES)
def test_chapter_figures_have_no_legend_over_data_no_clipped_or_overlapping_text(name):
    from figure_layout import layout_problems

    assert layout_problems(_chapter_figures()[name]()) == []


def test_layout_checker_sees_a_legend_over_data_and_overlapping_titles():
    import matplotlib.pyplot as plt
    from figure_layout import layout_problems

    fig, (a, b) = plt.subplots(1, 2, figsize=(4, 2))
    a.plot(range(10), range(10), label="a line")
    a.legend(loc="center")  # right on the line
    a.set_title("a long title that runs into its neighbour's")
    b.set_title("the neighbour's title")
    problems = layout_problems(fig)
    assert any("covers data" in p for p in problems) and any("overlaps" in p for p in problems)


def test_scaled_logit_gap_divides_by_the_largest_reference_logit():
    ref = torch.tensor([[[10.0, -20.0], [1.0, 2.0]]])  # (1, T=2, V=2)
    assert plots.scaled_logit_gap(ref + torch.tensor([[[0.0, 2e-4], [1e-4, 0.0]]]), ref) == pytest.approx([1e-5, 5e-6], rel=1e-2)
    small = torch.tensor([[0.1, 0.2]])  # max |logit| below 1: the scale is 1, as in the tolerance rule
    assert plots.scaled_logit_gap(small + 1e-6, small) == pytest.approx([1e-6], rel=1e-2)
    with pytest.raises(ValueError, match="differ in shape"):
        plots.scaled_logit_gap(ref, ref[0])


def test_memory_trace_keeps_reserved_held_and_filled_apart():
    """Chapter 10's three numbers: each drawn from its own column, in MiB, with the legend naming it."""
    mib = 2**20
    trace = pd.DataFrame({"step": [0, 1, 2], "reserved_bytes": [8 * mib] * 3,
                          "allocated_bytes": [1 * mib, 3 * mib, 1 * mib], "used_bytes": [mib // 2, 2 * mib, 1 * mib]})
    fig = plots.plot_memory_trace(trace, {"a static cache": 16 * mib})
    ax = fig.axes[0]
    held, filled = ax.collections[:2]  # the two filled areas, in drawing order
    assert max(held.get_paths()[0].vertices[:, 1]) == 3 and max(filled.get_paths()[0].vertices[:, 1]) == 2
    reserved, static = ax.get_lines()
    assert set(reserved.get_ydata()) == {8} and set(static.get_ydata()) == {16}
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert labels[:3] == ["held by requests (blocks allocated)", "filled (slots holding a key/value)",
                          "reserved (the pool, allocated once)"] and labels[3] == "a static cache"
