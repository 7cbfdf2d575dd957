"""ModelConfig: the one immutable description of a model's shape.

Introduced in notebooks/01_config.ipynb.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

from .validation import check_bool, check_choice, check_instance, check_int, check_positive_int, check_real, fail_type

ATTN_IMPLS = ("sdpa", "manual")
POSITIONS = ("learned", "rope")  # GPT-2's table of absolute positions, or rotary embeddings (Llama & co.)
NORMS = ("layer", "rms")
MLPS = ("gelu", "swiglu")
# Architecture fields: config.json and to_dict() carry one only when it differs from this GPT-2 default,
# so every existing checkpoint and its stored config read exactly as before
GPT2_DEFAULTS = {"positions": "learned", "rope_theta": 10000.0, "norm": "layer", "norm_eps": 1e-5, "mlp": "gelu",
                 "mlp_hidden": None, "tie_embeddings": True, "bias": True}


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

    Architecture (defaults = GPT-2; Llama-style = positions="rope", norm="rms", mlp="swiglu", bias=False):
    `positions` "learned" (a table of block_size vectors added to the tokens) or "rope" (queries and keys
    rotated by their position, `rope_theta` the base of the frequencies); `norm` LayerNorm or RMSNorm with
    `norm_eps`; `mlp` GELU(C -> hidden) or SwiGLU (gate and up C -> hidden each); `mlp_hidden` None = 4 * C
    (GPT-2) or 8/3 * C rounded up to a multiple of 32 (SwiGLU's same-parameters rule); `tie_embeddings` the
    LM head shares the token embedding; `bias` on every Linear and LayerNorm. Introduced in
    notebooks/16_modern_models.ipynb.

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
    positions: str = "learned"
    rope_theta: float = 10000.0
    norm: str = "layer"
    norm_eps: float = 1e-5
    mlp: str = "gelu"
    mlp_hidden: int | None = None
    tie_embeddings: bool = True
    bias: bool = True

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
        self._check_architecture()

    def _check_architecture(self) -> None:
        """The Llama-era choices (notebooks/16_modern_models.ipynb); floats stored as float (JSON round trip)."""
        for name, choices in (("positions", POSITIONS), ("norm", NORMS), ("mlp", MLPS)):
            check_choice(name, getattr(self, name), choices)
        finite_positive = lambda v: 0 < v < float("inf")  # noqa: E731 (NaN fails too)
        object.__setattr__(self, "rope_theta", check_real("rope_theta", self.rope_theta, finite_positive,
                                                          "a positive finite number (RoPE's frequency base)"))
        object.__setattr__(self, "norm_eps", check_real("norm_eps", self.norm_eps, finite_positive,
                                                        "a positive finite number"))
        if self.mlp_hidden is not None:
            object.__setattr__(self, "mlp_hidden", check_positive_int("mlp_hidden", self.mlp_hidden))
        check_bool("tie_embeddings", self.tie_embeddings)
        check_bool("bias", self.bias)
        if self.positions == "rope" and self.head_dim % 2:
            raise ValueError(f"head_dim={self.head_dim} (d_model // n_heads) is odd: RoPE rotates pairs of channels")

    @property
    def head_dim(self) -> int:
        """D, the width of one attention head."""
        return self.d_model // self.n_heads

    @property
    def kv_heads(self) -> int:
        """Key/value heads actually used: n_kv_heads, or n_heads when it is None (multi-head attention)."""
        return self.n_heads if self.n_kv_heads is None else self.n_kv_heads

    @property
    def hidden(self) -> int:
        """The MLP's hidden width: mlp_hidden, or 4 * C (GELU) / 8/3 * C rounded up to a multiple of 32 (SwiGLU)."""
        if self.mlp_hidden is not None:
            return self.mlp_hidden
        return 4 * self.d_model if self.mlp == "gelu" else -(-8 * self.d_model // 3 // 32) * 32

    def to_dict(self) -> dict:
        """The fields as a plain dict (for config.json); n_kv_heads only when set and an architecture field only
        when it differs from GPT-2's default, so existing configs read exactly as before."""
        return {f.name: getattr(self, f.name) for f in fields(self)
                if not (f.name == "n_kv_heads" and self.n_kv_heads is None)
                and not (f.name in GPT2_DEFAULTS and getattr(self, f.name) == GPT2_DEFAULTS[f.name])}

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
