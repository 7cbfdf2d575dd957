"""kvgpt.benchmark: runs on tiny models and yields well-formed tables; token mismatches raise. Never timing."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest
import torch
from helpers import cached_model
from hypothesis import given
from hypothesis import strategies as st

from kvgpt import KVCacheManager, ModelConfig
from kvgpt.benchmark import (
    LatencyBenchmark,
    Run,
    ThroughputBenchmark,
    TokenMismatchError,
    check_identical,
    decode_floor_ms,
    kv_formula_bytes,
    kv_memory_profile,
    kvgpt_engines,
    measure_bandwidth,
    measured_kv_bytes,
    new_tokens_sweep,
    prefill_latency,
    random_prompts,
    step_latency,
    suite,
    weight_bytes,
)
from kvgpt.benchmark.bounds import matmul_time_ms, ops_per_step
from kvgpt.benchmark.peers import hf_engines, hf_model
from kvgpt.generation import AutoregressiveGenerator

LATENCY_COLUMNS = {"model", "engine", "batch_size", "prompt_len", "new_tokens", "prefill_ms", "decode_ms_per_token",
                   "decode_ms_per_token_min", "decode_tokens_per_s", "total_ms", "decode_cpu_ms_per_token", "repeats"}
TINY_PLAN = {"repeats": 1, "prompt_len": 4, "bandwidth_bytes": 2**20, "memory_new_tokens": 3,
             "shakespeare-char": {"new_tokens": (4, 6), "batch_new_tokens": 3, "batches": (1, 2), "uncached_max": 4,
                                  "positions": (8, 16), "prefill_len": 8}}


@pytest.fixture(scope="module")
def model():
    return cached_model()


@pytest.fixture(scope="module")
def engines(model):
    return {**kvgpt_engines(model), **hf_engines(hf_model(model))}


def _tampered(engine):
    """An engine that gets the last token of row 0 wrong: what a broken cache would do."""
    def run(prompt_ids, n):
        r = engine(prompt_ids, n)
        tokens = r.tokens.clone()
        tokens[0, -1] = (tokens[0, -1] + 1) % 67
        return Run(tokens, r.prefill_ms, r.decode_ms, r.total_ms)
    return run


def test_latency_table_columns_dtypes_and_one_row_per_engine(engines):
    df = LatencyBenchmark(engines, warmup=1, repeats=2).run(random_prompts(67, 2, 5), 4, "tiny")
    assert set(df.columns) == LATENCY_COLUMNS
    assert list(df.engine) == list(engines)
    for col in ("batch_size", "prompt_len", "new_tokens", "repeats"):
        assert pd.api.types.is_integer_dtype(df[col]), col
    for col in ("prefill_ms", "decode_ms_per_token", "decode_tokens_per_s", "total_ms"):
        assert pd.api.types.is_float_dtype(df[col]) and (df[col] > 0).all(), col
    assert (df.batch_size == 2).all() and (df.new_tokens == 4).all() and (df.prompt_len == 5).all()


def test_engines_agree_with_the_generator_and_with_transformers(model, engines):
    prompts = random_prompts(67, 3, 6, seed=1)
    expected = torch.tensor(AutoregressiveGenerator(model).generate(prompts, 7))[:, 6:]  # (B, N)
    for name, engine in engines.items():
        run = engine(prompts, 7)
        assert torch.equal(run.tokens, expected), name
        assert run.prefill_ms > 0 and run.decode_ms > 0 and run.total_ms >= run.prefill_ms + run.decode_ms * 0.99


@pytest.mark.parametrize("victim", ["kvgpt static", "hf dynamic"])
def test_an_injected_token_mismatch_raises(engines, victim):
    bad = {**engines, victim: _tampered(engines[victim])}
    with pytest.raises(TokenMismatchError, match=f"{victim}.*row 0, new token 3"):
        LatencyBenchmark(bad, warmup=0, repeats=1).run(random_prompts(67, 1, 5), 4, "tiny")


def test_check_identical_names_engines_row_step_and_shape():
    a = torch.tensor([[1, 2, 3], [4, 5, 6]])
    check_identical({"x": a, "y": a.clone()})
    b = a.clone()
    b[1, 2] = 9
    with pytest.raises(TokenMismatchError, match=r"y and x disagree at row 1, new token 2: 9 vs 6"):
        check_identical({"x": a, "y": b}, "ctx")
    with pytest.raises(TokenMismatchError, match="shape"):
        check_identical({"x": a, "y": a[:, :2]})


def test_latency_benchmark_rejects_bad_arguments(engines):
    with pytest.raises(ValueError, match="engines"):
        LatencyBenchmark({})
    with pytest.raises(ValueError, match="repeats=0"):
        LatencyBenchmark(engines, repeats=0)
    with pytest.raises(ValueError, match="new_tokens=1"):
        LatencyBenchmark(engines).run(random_prompts(67, 1, 3), 1)


def test_throughput_rows_per_batch_and_speedup_is_one_at_batch_1(model):
    engines = {k: e for k, e in kvgpt_engines(model).items() if k != "kvgpt no cache"}
    df = ThroughputBenchmark(engines, 67, prompt_len=3, new_tokens=3, warmup=0, repeats=1).run((1, 3), "tiny")
    assert len(df) == 4 and sorted(set(df.batch_size)) == [1, 3]
    assert (df[df.batch_size == 1].speedup_vs_batch_size1 == 1.0).all()
    assert (df.speedup_vs_batch_size1 > 0).all()
    with pytest.raises(ValueError, match="batch_sizes"):
        ThroughputBenchmark(engines, 67).run(())


def test_new_tokens_sweep_caps_slow_engines(model):
    df = new_tokens_sweep(kvgpt_engines(model), 67, (3, 5), prompt_len=3, limits={"kvgpt no cache": 3},
                          warmup=0, repeats=1, label="tiny")
    assert set(df[df.new_tokens == 3].engine) == {"kvgpt no cache", "kvgpt dynamic", "kvgpt static"}
    assert set(df[df.new_tokens == 5].engine) == {"kvgpt dynamic", "kvgpt static"}
    assert (df.total_tokens_per_s > 0).all()


def test_step_and_prefill_latency_tables(model):
    hf = hf_model(model)
    steps = step_latency(model, [8, 12], steps=2, repeats=1)
    assert list(steps.columns) == ["position", "engine", "ms", "batch_size"] and len(steps) == 6
    assert (steps.ms > 0).all()
    with pytest.raises(ValueError, match="position=65"):
        step_latency(model, [65])
    pre = prefill_latency(model, hf, 10, batch_size=2, repeats=1)
    assert len(pre) == 4 and (pre.ms > 0).all() and (pre.prompt_len == 10).all()


@given(layers=st.integers(1, 4), heads=st.integers(1, 4), head_dim=st.integers(1, 8), batch=st.integers(1, 3),
       positions=st.integers(0, 20), dtype=st.sampled_from([torch.float32, torch.float16, torch.float64]))
def test_kv_formula_is_2_L_B_H_T_D_bytes(layers, heads, head_dim, batch, positions, dtype):
    cfg = ModelConfig(vocab_size=5, n_layers=layers, n_heads=heads, d_model=heads * head_dim, block_size=32)
    size = {torch.float32: 4, torch.float16: 2, torch.float64: 8}[dtype]
    assert kv_formula_bytes(cfg, batch, positions, dtype) == 2 * layers * batch * heads * positions * head_dim * size


@pytest.mark.parametrize("kind", ["static", "dynamic"])
def test_measured_kv_bytes_equal_the_formula_and_static_allocates_once(model, kind):
    df = kv_memory_profile(model, kind, batch_size=2, prompt_len=5, new_tokens=6)
    assert list(df.slots) == list(range(5, 12))
    assert (df.measured_bytes == df.formula_bytes).all()
    assert list(df.allocations) == ([1] * 7 if kind == "static" else list(range(1, 8)))


def test_measured_kv_bytes_sees_a_view_keeping_a_bigger_buffer_alive(model):
    cache = KVCacheManager(model.config, 1, "dynamic")
    big = torch.zeros(1, 2, 10, 16)
    for i in range(model.config.n_layers):
        cache.get(i)._k, cache.get(i)._v, cache.get(i).length = big[:, :, :2], big[:, :, :2], 2
    assert measured_kv_bytes(cache) == big.nbytes  # one storage, counted once, at its full size
    assert kv_formula_bytes(model.config, 1, 2) < big.nbytes


def test_weight_bytes_count_the_tied_head_once_and_floor_adds_kv(model):
    params = sum(p.numel() for p in model.parameters())  # parameters() already yields a tied tensor once
    assert weight_bytes(model) == params * 4
    bw = 1e9
    expected = (weight_bytes(model) + kv_formula_bytes(model.config, 1, 10)) / bw * 1e3
    assert decode_floor_ms(model, 10, bw) == pytest.approx(expected)
    assert math.isfinite(measure_bandwidth(2**20, repeats=2)) and measure_bandwidth(2**20, repeats=2) > 0


def test_matmul_time_counts_every_matrix_once_per_row(model):
    ms, gflops = matmul_time_ms(model, rows=3, head_rows=1, repeats=1)
    c, v, layers = model.config.d_model, model.config.vocab_size, model.config.n_layers
    flops = 2 * 3 * layers * (3 * c * c + c * c + 8 * c * c) + 2 * 1 * c * v  # qkv, out, fc, proj; head once
    assert ms > 0 and gflops == pytest.approx(flops / (ms / 1e3) / 1e9)


def test_kvgpt_decode_step_launches_fewer_ops_than_transformers(model, engines):
    ours = ops_per_step(engines["kvgpt static"], model.config.vocab_size, prompt_len=4, short=3, long=7)
    peer = ops_per_step(engines["hf dynamic"], model.config.vocab_size, prompt_len=4, short=3, long=7)
    assert ours == int(ours) and peer == int(peer)  # the same ops every step: a whole number
    # the lean step: ~21 ATen ops per layer (layer norms, 4 matmuls, head split, cache writes, attention,
    # GELU, residual adds) plus ~16 around them; more means glue crept into the hot path
    assert ours <= 22 * model.config.n_layers + 16, ours
    assert ours < peer


@pytest.fixture(scope="module")
def tiny_results(model):
    return suite.run_suite(models={"shakespeare-char": model}, plan=TINY_PLAN, threads=1)


def test_run_suite_returns_every_table_and_targets(tiny_results):
    r = tiny_results
    assert set(r) == {"decode", "new_tokens", "batch", "steps", "prefill", "memory", "limits", "targets", "meta"}
    assert len(r["decode"]) == 6 and (r["decode"].new_tokens == 4).all()  # the longest N all six engines ran
    assert {"floor_ms", "x_floor", "speedup_vs_hf_dynamic"} <= set(r["decode"].columns)
    assert list(r["targets"].columns) == ["target", "condition", "measured", "required", "met", "best_possible",
                                          "bounded_by"]
    assert r["targets"].met.dtype == bool and len(r["targets"]) == 4
    assert r["targets"].bounded_by.iloc[0].startswith("op dispatch: ")  # the char model's bound names its ops
    limits = r["limits"].set_index("quantity").value
    assert set(r["limits"].columns) == {"model", "quantity", "value", "unit"}
    assert {"bandwidth floor ms, decode at position 16", "matmul ms, decode B=2", "matmul GFLOP/s, prefill 8",
            "ops per decode step, kvgpt static", "ops per decode step, hf dynamic"} <= set(limits.index)
    assert (limits > 0).all() and limits.map(math.isfinite).all()
    meta = dict(zip(r["meta"].key, r["meta"].value))
    assert meta["torch_threads"] == "1" and meta["weights[shakespeare-char]"] == "given"


def test_write_results_csv_json_and_byte_stable_png(tiny_results, tmp_path):
    from kvgpt.benchmark.report import write_results

    paths = write_results(tiny_results, tmp_path / "a", "bench_")
    again = write_results(tiny_results, tmp_path / "b", "bench_")
    names = sorted(p.name for p in paths)
    assert "bench_meta.json" in names and "bench_decode.png" in names and "bench_targets.csv" in names
    for p, q in zip(paths, again):
        if p.suffix == ".png":
            assert p.read_bytes() == q.read_bytes(), p.name
    assert pd.read_csv(tmp_path / "a" / "bench_decode.csv").shape == tiny_results["decode"].shape
    assert json.loads((tmp_path / "a" / "bench_meta.json").read_text())["mode"] == "quick"


def test_cli_main_writes_files_and_restores_threads(model, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(suite.PLANS, "quick", TINY_PLAN)
    monkeypatch.setattr(suite, "build_model", lambda name, seed=0: (model, "tiny"))
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # the suite runs with --threads 1 and must put 2 back
    try:
        assert suite.main(["--quick", "--models", "shakespeare-char", "--out", str(tmp_path), "--threads", "1"]) == 0
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)
    out, err = capsys.readouterr()
    assert "== targets ==" in out and "[bench" in err
    assert "#--------- 1/7]" in err and "########## 7/7]" in err  # a bar over the plan's phases, one model: 1 + 6
    assert (tmp_path / "bench_quick_batch.png").is_file() and (tmp_path / "bench_quick_steps.csv").is_file()
    with pytest.raises(SystemExit):
        suite.main(["--threads", "0"])
