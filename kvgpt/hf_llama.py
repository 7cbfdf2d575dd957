"""HuggingFace LlamaForCausalLM checkpoints <-> kvgpt's Llama-shaped models: the name map and the config checks.

kvgpt rotates with HF's rotate_half layout (channel i pairs with i + D/2), so HF's q_proj/k_proj rows load
as they are. Meta's original checkpoints pair adjacent channels (2i, 2i + 1); HF's converter permuted
their q/k rows once (`interleaved_to_half`) so that rotate_half computes the same scores. A checkpoint in one
layout read with the other's rotation runs without error and gives wrong logits (notebooks/16 measures it).
Introduced in notebooks/16_modern_models.ipynb.
"""

from __future__ import annotations

import re

import torch

from .config import ModelConfig
from .validation import check_int, fail_type

# kvgpt module -> HF module(s), per layer: q|k|v and gate|up are fused in kvgpt (one matmul each), split in HF
LLAMA_NORM_NAMES = {"ln_1": "input_layernorm", "ln_2": "post_attention_layernorm"}  # RMSNorm: a weight only
LINEARS = {"attn.qkv_proj": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
           "attn.out_proj": ("self_attn.o_proj",), "ffn.fc": ("mlp.gate_proj", "mlp.up_proj"),
           "ffn.proj": ("mlp.down_proj",)}
LLAMA_GLOBAL_NAMES = {"token_embedding.embedding.weight": "model.embed_tokens.weight",
                      "final_layernorm.weight": "model.norm.weight", "lm_head.weight": "lm_head.weight"}
LLAMA_IGNORED = re.compile(r"^model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq$")  # a buffer in old checkpoints
LLAMA_ARCH = {"positions": "rope", "norm": "rms", "mlp": "swiglu"}


def llama_config(hf: dict, file: str = "config.json") -> ModelConfig:
    """Map a LlamaForCausalLM config.json to ModelConfig; ValueError naming `file` for what kvgpt does not run."""
    need = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
            "max_position_embeddings")
    missing = [k for k in need if k not in hf]
    if missing:
        raise ValueError(f"{file}: missing Llama config field(s) {missing}")
    rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}  # transformers 5 / 4 spellings
    checks = {"hidden_act": (hf.get("hidden_act", "silu"), ("silu",)),
              "rope_type": (rope.get("rope_type", rope.get("type", "default")), ("default",)),
              "head_dim": (hf.get("head_dim") or hf["hidden_size"] // hf["num_attention_heads"],
                           (hf["hidden_size"] // hf["num_attention_heads"],)),
              "attention_bias == mlp_bias": (hf.get("attention_bias", False) == hf.get("mlp_bias", False), (True,))}
    for key, (value, allowed) in checks.items():
        if value not in allowed:
            raise ValueError(f"{file}: {key}={value!r} is not supported by kvgpt (allowed: {allowed}; "
                             "rope_scaling variants and a free head_dim are 'the same in HF' exercises)")
    try:
        return ModelConfig(vocab_size=hf["vocab_size"], n_layers=hf["num_hidden_layers"],
                           n_heads=hf["num_attention_heads"], d_model=hf["hidden_size"],
                           block_size=hf["max_position_embeddings"], n_kv_heads=hf.get("num_key_value_heads"),
                           rope_theta=float(rope.get("rope_theta", hf.get("rope_theta", 10000.0))),
                           norm_eps=float(hf.get("rms_norm_eps", 1e-6)), mlp_hidden=hf["intermediate_size"],
                           tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
                           bias=bool(hf.get("attention_bias", False)), **LLAMA_ARCH)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{file}: {e}") from e


def hf_llama_config(config: ModelConfig, attn_implementation: str = "sdpa"):
    """The transformers LlamaConfig of a kvgpt Llama-shaped config (rope + rms + swiglu)."""
    from transformers import LlamaConfig

    check_llama(config)
    return LlamaConfig(vocab_size=config.vocab_size, hidden_size=config.d_model, intermediate_size=config.hidden,
                       num_hidden_layers=config.n_layers, num_attention_heads=config.n_heads,
                       num_key_value_heads=config.kv_heads, max_position_embeddings=config.block_size,
                       rms_norm_eps=config.norm_eps, tie_word_embeddings=config.tie_embeddings,
                       rope_parameters={"rope_type": "default", "rope_theta": config.rope_theta},
                       attention_bias=config.bias, mlp_bias=config.bias, bos_token_id=None, eos_token_id=None,
                       attn_implementation=attn_implementation)


def check_llama(config: ModelConfig) -> None:
    """ValueError unless the config is what LlamaForCausalLM computes: RoPE + RMSNorm + SwiGLU."""
    found = {k: getattr(config, k) for k in LLAMA_ARCH}
    if found != LLAMA_ARCH:
        raise ValueError(f"a Llama checkpoint needs {LLAMA_ARCH}; this config has {found}")


def llama_name_pairs(config: ModelConfig) -> list[tuple[str, list[str], list[int]]]:
    """(kvgpt name, its HF name(s), the sizes along dim 0 that split it into them) for every layer tensor."""
    kv = config.kv_heads * config.head_dim
    sizes = {"attn.qkv_proj": [config.d_model, kv, kv], "ffn.fc": [config.hidden, config.hidden]}
    pairs = []
    for i in range(config.n_layers):
        ours, theirs = f"blocks.{i}.", f"model.layers.{i}."
        pairs += [(f"{ours}{o}.weight", [f"{theirs}{t}.weight"], [config.d_model]) for o, t in LLAMA_NORM_NAMES.items()]
        for o, ts in LINEARS.items():
            for kind in ("weight", "bias") if config.bias else ("weight",):
                pairs.append((f"{ours}{o}.{kind}", [f"{theirs}{t}.{kind}" for t in ts], sizes.get(o, [-1])))
    return pairs


def to_llama_state_dict(sd: dict, config: ModelConfig) -> dict[str, torch.Tensor]:
    """kvgpt state_dict -> HF Llama names: q|k|v and gate|up split, a tied head left out (HF re-ties it)."""
    out = {theirs: sd[ours] for ours, theirs in LLAMA_GLOBAL_NAMES.items()
           if not (ours == "lm_head.weight" and config.tie_embeddings)}
    for ours, theirs, sizes in llama_name_pairs(config):
        out.update(zip(theirs, sd[ours].split(sizes, dim=0) if len(theirs) > 1 else [sd[ours]]))
    return out


def from_llama_state_dict(hf_sd: dict, config: ModelConfig) -> dict[str, torch.Tensor]:
    """HF Llama names -> kvgpt state_dict (fused q|k|v and gate|up; lm_head = the embedding when tied)."""
    out = {ours: hf_sd[theirs] for ours, theirs in LLAMA_GLOBAL_NAMES.items() if theirs in hf_sd}
    if config.tie_embeddings:
        out["lm_head.weight"] = out["token_embedding.embedding.weight"]
    for ours, theirs, _ in llama_name_pairs(config):
        out[ours] = torch.cat([hf_sd[t] for t in theirs]) if len(theirs) > 1 else hf_sd[theirs[0]]
    return out


def interleaved_to_half(weight: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Reorder each head's q or k projection rows from interleaved pairs (2i, 2i + 1) (Meta's checkpoints,
    GPT-J) to rotate_half's pairs (i, i + D/2): what HF's convert_llama_weights_to_hf.py applies once.

    Shapes: (H * D, C) -> (H * D, C). Introduced in notebooks/16_modern_models.ipynb.
    """
    d = _head_dim(weight, n_heads)
    return weight.view(n_heads, d // 2, 2, -1).transpose(1, 2).reshape(weight.shape)


def half_to_interleaved(weight: torch.Tensor, n_heads: int) -> torch.Tensor:
    """The inverse of interleaved_to_half. Shapes: (H * D, C) -> (H * D, C)."""
    d = _head_dim(weight, n_heads)
    return weight.view(n_heads, 2, d // 2, -1).transpose(1, 2).reshape(weight.shape)


def _head_dim(weight, n_heads) -> int:
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
        fail_type("weight", weight, "a 2-D (H * D, C) projection weight")
    n_heads = check_int("n_heads", n_heads, 1)
    if weight.size(0) % (2 * n_heads):
        raise ValueError(f"weight has {weight.size(0)} rows: not n_heads={n_heads} heads of an even head_dim")
    return weight.size(0) // n_heads


def llama_weights(sd: dict, config: ModelConfig, file) -> dict[str, torch.Tensor]:
    """A Llama checkpoint's tensors minus old buffers, its tied head checked and dropped (kvgpt/hf.py loads them)."""
    sd = {k: v for k, v in sd.items() if not LLAMA_IGNORED.match(k)}
    if config.tie_embeddings and "lm_head.weight" in sd:
        if not torch.equal(sd.pop("lm_head.weight"), sd.get("model.embed_tokens.weight", torch.empty(0))):
            raise ValueError(f"{file}: lm_head.weight differs from model.embed_tokens.weight but "
                             "tie_word_embeddings is true")
    return sd


def llama_shapes(ours: dict, config: ModelConfig) -> dict[str, torch.Size]:
    """kvgpt name -> shape (`ours`) as HF Llama name -> shape: what a checkpoint of `config` must hold."""
    with torch.device("meta"):
        return {k: v.shape for k, v in to_llama_state_dict({k: torch.empty(s) for k, s in ours.items()},
                                                            config).items()}


def to_hf_llama(model, attn_implementation: str | None = None):
    """A transformers LlamaForCausalLM (eval, same dtype and device) holding exactly `model`'s weights."""
    try:
        from transformers import LlamaForCausalLM
    except ImportError as e:
        raise ImportError("to_hf needs transformers: pip install 'kvgpt[gpt2]'") from e
    c = model.config
    impl = attn_implementation or {"sdpa": "sdpa", "manual": "eager"}[c.attn_impl]
    hf = LlamaForCausalLM(hf_llama_config(c, impl))
    sd = to_llama_state_dict(model.state_dict(), c)
    sd.setdefault("lm_head.weight", sd["model.embed_tokens.weight"])  # tied: the same values under both names
    result = hf.load_state_dict(sd, strict=False)
    if result.missing_keys or result.unexpected_keys:  # a transformers version with other names: fail loudly
        raise ValueError(f"to_hf: LlamaForCausalLM did not take the weights: missing {result.missing_keys}, "
                         f"unexpected {result.unexpected_keys}")
    p = next(model.parameters())
    return hf.to(device=p.device, dtype=p.dtype).eval()
