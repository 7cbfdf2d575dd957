"""ModelConfig: the one immutable description of a model's shape.

Introduced in notebooks/01_config.ipynb.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

from .validation import check_choice, check_instance, check_int, check_positive_int, fail_type

ATTN_IMPLS = ("sdpa", "manual")


@dataclass(frozen=True)
class ModelConfig:
    """Hyper-parameters of a GPT-2-style decoder, fixed for the model's lifetime.

    Shapes: C = d_model, H = n_heads, D = head_dim = C // H, V = vocab_size, L = n_layers.

    `n_kv_heads` (grouped-query attention): how many key/value heads the H query heads share; each group
    of H // n_kv_heads query heads reads one K/V head, and the cache stores only those. None (the default,
    GPT-2 and every existing checkpoint) means n_heads: plain multi-head attention; 1 is multi-query.
    Use `kv_heads` for the resolved number.

    `dropout` is kept for compatibility with training configs; kvgpt is inference-only and never
    applies it. `attn_impl` picks explicit matmul-mask-softmax ("manual", what the chapters show)
    or torch's fused scaled_dot_product_attention ("sdpa", the fast default); they agree.

    Introduced in notebooks/01_config.ipynb.
    """

    vocab_size: int
    n_layers: int
    n_heads: int
    d_model: int
    block_size: int
    dropout: float = 0.0
    attn_impl: str = "sdpa"
    n_kv_heads: int | None = None

    def __post_init__(self) -> None:
        for name in ("vocab_size", "n_layers", "n_heads", "d_model", "block_size"):
            # bool is an int subclass (True layers is a typo, not a size); numpy ints are stored as int
            object.__setattr__(self, name, check_positive_int(name, getattr(self, name)))
        if self.d_model % self.n_heads:
            raise ValueError(
                f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}: "
                "each head gets d_model // n_heads dimensions"
            )
        d = self.dropout
        if isinstance(d, bool) or not isinstance(d, (int, float)) or math.isnan(d) or not 0 <= d < 1:
            raise ValueError(f"dropout={d!r}: must be a number in [0, 1)")
        kv = self.n_kv_heads
        if kv is not None:
            kv = check_int("n_kv_heads", kv, 1, allowed="None (= n_heads) or a positive int")
            object.__setattr__(self, "n_kv_heads", kv)
        if kv is not None and self.n_heads % kv:
            raise ValueError(f"n_heads={self.n_heads} is not divisible by n_kv_heads={kv}: "
                             "each K/V head serves a whole group of n_heads // n_kv_heads query heads")
        check_choice("attn_impl", self.attn_impl, ATTN_IMPLS)

    @property
    def head_dim(self) -> int:
        """D, the width of one attention head."""
        return self.d_model // self.n_heads

    @property
    def kv_heads(self) -> int:
        """Key/value heads actually used: n_kv_heads, or n_heads when it is None (multi-head attention)."""
        return self.n_heads if self.n_kv_heads is None else self.n_kv_heads

    def to_dict(self) -> dict:
        """The fields as a plain dict (for config.json); n_kv_heads only when set, so MHA configs read as before."""
        return {f.name: getattr(self, f.name) for f in fields(self)
                if not (f.name == "n_kv_heads" and self.n_kv_heads is None)}

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        """Build from a dict, ignoring keys that are not fields (e.g. training metadata)."""
        if not isinstance(d, dict):
            fail_type("d", d, "a dict of ModelConfig fields")
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def check_config(name: str, config) -> ModelConfig:
    """A kvgpt ModelConfig (a dict or another library's config is refused by name, not as an AttributeError).

    validation.check_instance bound to this class: it lives here so validation.py never imports config.py.
    """
    return check_instance(name, config, ModelConfig, "a kvgpt.ModelConfig (ModelConfig.from_dict builds one from a dict)")
