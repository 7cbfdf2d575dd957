"""The torch side of the ONNX Runtime / CTranslate2 peers (peers/engines/), checked in kvgpt's own venv.

What runs in .venv-peers (export, ORT sessions, CTranslate2) is checked there by the peers' parity run; here:
the graph that gets exported (KVGraph) computes kvgpt's logits and cache exactly, prefill and steps, every batch;
the synthetic vocabulary maps id i to row i; the harness reports the first differing token.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from helpers import assert_close_logits, cached_model
from hypothesis import given
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "peers" / "engines"))

import _harness  # noqa: E402
import ctranslate2_engine  # noqa: E402
import onnxruntime_engine  # noqa: E402


def empty_cache(config, b):
    return torch.zeros(config.n_layers, b, config.kv_heads, 0, config.head_dim)  # (L, B, H, P=0, D)


@given(b=st.integers(1, 3), t=st.integers(1, 6), steps=st.integers(1, 4), impl=st.sampled_from(["sdpa", "manual"]),
       seed=st.integers(0, 2**16))
def test_kvgraph_prefill_and_steps_match_the_model(b, t, steps, impl, seed):
    model = cached_model(attn_impl=impl)
    c = model.config
    ids = torch.randint(0, c.vocab_size, (b, t + steps), generator=torch.Generator().manual_seed(seed))  # (B, T+n)
    prefill, step = onnxruntime_engine.KVGraph(model), onnxruntime_engine.KVGraph(model, step=True)
    with torch.no_grad():
        logits, key, value = prefill(ids[:, :t], empty_cache(c, b), empty_cache(c, b))
        ref = model(ids[:, :t], last_only=True)  # (B, V), no cache
        assert_close_logits(logits, ref, "KVGraph prefill vs model")
        for i in range(t, t + steps):
            graph = step if i % 2 else prefill  # the T=1 step graph and the general graph must agree
            logits, key, value = graph(ids[:, i:i + 1], key, value)
            ref = model(ids[:, :i + 1], last_only=True)
            assert_close_logits(logits, ref, "KVGraph step vs model")
            assert key.shape == value.shape == (c.n_layers, b, c.kv_heads, i + 1, c.head_dim)


def test_kvgraph_cache_holds_the_models_keys():
    model = cached_model()
    c = model.config
    ids = torch.randint(0, c.vocab_size, (2, 5), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        _, key, value = onnxruntime_engine.KVGraph(model)(ids, empty_cache(c, 2), empty_cache(c, 2))
        x = model.token_embedding(ids) + model.position_embedding(torch.arange(5))
        q, k, v = model.blocks[0].attn.split_heads(model.blocks[0].ln_1(x))  # layer 0's own projection
    assert torch.allclose(key[0], k, atol=1e-6) and torch.allclose(value[0], v, atol=1e-6)
    assert not torch.allclose(key[0], value[0])  # the values are not the keys (an export once read keys twice)


def test_build_refuses_unknown_options_before_exporting(tmp_path):
    with pytest.raises(ValueError, match="graph"):
        onnxruntime_engine.build(cached_model(), tmp_path, 1, graph=2)
    assert not list(tmp_path.iterdir())


def test_synthetic_vocabulary_maps_id_i_to_row_i():
    tok = ctranslate2_engine.SyntheticTokenizer(67)
    vocab = tok.get_vocab()
    assert [i for _, i in sorted(vocab.items(), key=lambda kv: kv[1])] == list(range(67))
    assert all(vocab[ctranslate2_engine.token(i)] == i for i in range(67))
    assert {tok.bos_token, tok.eos_token, tok.unk_token} <= set(vocab)  # else CTranslate2 grows the vocabulary


def test_first_mismatch_names_the_first_row_then_step():
    ref = torch.tensor([[1, 2, 3], [4, 5, 6]])
    assert _harness.first_mismatch(ref.clone(), ref) is None
    peer = ref.clone()
    peer[1, 0], peer[0, 2] = 9, 8
    assert _harness.first_mismatch(peer, ref) == {"row": 0, "step": 2, "peer": 8, "kvgpt": 3}
    assert _harness.first_mismatch(ref[:, :2], ref) == {"shape": [2, 2], "kvgpt_shape": [2, 3]}


def test_available_names_what_is_missing_or_nothing():
    for module in (onnxruntime_engine, ctranslate2_engine):
        reason = module.available()
        assert reason is None or "Error" in reason
