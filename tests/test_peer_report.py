"""kvgpt/benchmark/peer_report.py reads what peers/engines/bench.py writes: tables, ratios, the fastest engine."""

from __future__ import annotations

import pandas as pd
import pytest

from kvgpt.benchmark.peer_report import fastest, load_peers, peer_ratios, peer_table, plot_peers, skipped_engines

COLUMNS = ["model", "threads", "batch", "engine", "decode_ms", "x_floor", "floor_ms", "tokens_equal",
           "first_mismatch", "prefill_ms", "build_or_compile_s", "skipped"]


@pytest.fixture
def csv(tmp_path):
    rows = [("m", 1, 1, "kvgpt static", 2.0, 4.0, 0.5, True, "", 1.0, 0.1, ""),
            ("m", 1, 1, "onnxruntime", 1.0, 2.0, 0.5, True, "", 1.0, 3.0, ""),
            ("m", 2, 8, "kvgpt static", 3.0, 3.0, 1.0, True, "", 1.0, 0.1, ""),
            ("m", 2, 8, "onnxruntime", 6.0, 6.0, 1.0, False, "row 0, step 3: 5 vs kvgpt 4", 1.0, 3.0, ""),
            ("m", 2, 8, "llama.cpp", None, None, None, None, None, None, None, "batch_size=8: one sequence")]
    path = tmp_path / "peers_results.csv"
    pd.DataFrame(rows, columns=COLUMNS).to_csv(path, index=False)
    return path


def test_tables_ratios_and_fastest(csv):
    df = load_peers(csv)
    assert list(df.engine) == ["kvgpt static", "onnxruntime"] * 2  # the skipped row is not a measurement
    table = peer_table(df)
    assert list(table.columns) == ["kvgpt static", "onnxruntime"] and table.loc[("m", 2, 8), "onnxruntime"] == 6.0
    assert peer_ratios(df).loc[("m", 1, 1), "onnxruntime"] == 0.5
    best = fastest(df).set_index(["threads", "batch"])
    assert best.loc[(1, 1), "fastest"] == "onnxruntime" and best.loc[(1, 1), "kvgpt_over_fastest"] == 2.0
    assert best.loc[(2, 8), "fastest"] == "kvgpt static" and best.loc[(2, 8), "kvgpt_over_fastest"] == 1.0
    assert not df[df.engine == "onnxruntime"].tokens_equal.iloc[1]  # a mismatch stays visible
    assert skipped_engines(csv).skipped.tolist() == ["batch_size=8: one sequence"]


def test_plot_names_the_cpu(csv):
    fig = plot_peers(load_peers(csv), "Some CPU")
    assert "Some CPU" in fig._suptitle.get_text() and len(fig.axes) == 1
