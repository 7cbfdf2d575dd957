"""ModelConfig: frozen, derived head_dim, every bad value rejected with its field name."""

import dataclasses

import pytest

from kvgpt import ModelConfig

GOOD = dict(vocab_size=65, n_layers=4, n_heads=4, d_model=128, block_size=256)


def test_defaults_and_head_dim():
    cfg = ModelConfig(**GOOD)
    assert (cfg.dropout, cfg.attn_impl, cfg.head_dim) == (0.0, "sdpa", 32)


def test_frozen():
    cfg = ModelConfig(**GOOD)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.d_model = 64


def test_round_trip_dict_ignores_extra_keys():
    cfg = ModelConfig(**GOOD, attn_impl="manual")
    assert ModelConfig.from_dict({**cfg.to_dict(), "val_loss": 1.5}) == cfg


@pytest.mark.parametrize("field", ["vocab_size", "n_layers", "n_heads", "d_model", "block_size"])
@pytest.mark.parametrize("value", [0, -1, 2.0, True, "8", None])
def test_bad_sizes_name_the_field(field, value):
    with pytest.raises(ValueError, match=f"{field}={value!r}"):
        ModelConfig(**{**GOOD, field: value})


def test_d_model_not_divisible():
    with pytest.raises(ValueError, match="d_model=130 is not divisible by n_heads=4"):
        ModelConfig(**{**GOOD, "d_model": 130})


@pytest.mark.parametrize("value", [-0.1, 1.0, 1.5, float("nan"), "0.1", True])
def test_bad_dropout(value):
    with pytest.raises(ValueError, match="dropout="):
        ModelConfig(**GOOD, dropout=value)


def test_bad_attn_impl():
    with pytest.raises(ValueError, match="attn_impl='flash'"):
        ModelConfig(**GOOD, attn_impl="flash")
