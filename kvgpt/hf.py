"""HuggingFace GPT-2 checkpoints <-> kvgpt: the weight name map, Conv1D transposes, config checks.

`load_hf` reads a local directory (offline) or downloads a hub name ("gpt2") when online;
`to_hf` builds a transformers GPT2LMHeadModel holding exactly kvgpt's weights (for comparisons).
Introduced in notebooks/08_benchmarks.ipynb (to_hf) and notebooks/09_gpt2.ipynb (load_hf).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import torch

from .config import GPT2_DEFAULTS, ModelConfig
from .model import MiniGPTInferenceModel, check_model
from .validation import check_device, check_dtype, check_path

# The one name map. kvgpt name -> HF GPT-2 name (without the optional "transformer." prefix).
GLOBAL_NAMES = {
    "token_embedding.embedding.weight": "wte.weight",
    "position_embedding.pos_embedding.weight": "wpe.weight",
    "final_layernorm.weight": "ln_f.weight",
    "final_layernorm.bias": "ln_f.bias",
}
LAYER_NAMES = {"ln_1": "ln_1", "attn.qkv_proj": "attn.c_attn", "attn.out_proj": "attn.c_proj",
               "ln_2": "ln_2", "ffn.fc": "mlp.c_fc", "ffn.proj": "mlp.c_proj"}
CONV1D = {"attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"}  # stored [in, out]; nn.Linear is [out, in]
IGNORED = re.compile(r"^h\.\d+\.attn\.(bias|masked_bias)$")  # causal-mask buffers of old checkpoints
TIED_HEAD = "lm_head.weight"  # tied to wte in GPT-2 and in kvgpt: stored once, as wte

CONFIG_NAMES = {"n_layer": "n_layers", "n_head": "n_heads", "n_embd": "d_model",
                "n_positions": "block_size", "vocab_size": "vocab_size"}
# Config fields that change the computation: the values kvgpt implements (checked when present)
SUPPORTED = {"model_type": ("gpt2",), "activation_function": ("gelu_new", "gelu_pytorch_tanh"),
             "scale_attn_weights": (True,), "scale_attn_by_inverse_layer_idx": (False,),
             "reorder_and_upcast_attn": (False,), "layer_norm_epsilon": (1e-5,),
             "add_cross_attention": (False,), "tie_word_embeddings": (True,)}
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
HUB_FILES = ["config.json", "model.safetensors", "vocab.json", "merges.txt", "tokenizer.json", "tokenizer_config.json"]


def name_pairs(n_layers: int) -> list[tuple[str, str, bool]]:
    """(kvgpt name, HF name, transpose?) for every stored tensor of an n_layers model."""
    pairs = [(ours, theirs, False) for ours, theirs in GLOBAL_NAMES.items()]
    for i in range(n_layers):
        for ours, theirs in LAYER_NAMES.items():
            for p in ("weight", "bias"):
                pairs.append((f"blocks.{i}.{ours}.{p}", f"h.{i}.{theirs}.{p}", p == "weight" and theirs in CONV1D))
    return pairs


def as_dtype(dtype) -> torch.dtype | None:
    """None, a floating torch.dtype, or its name ("float16", "bfloat16", "float32") -> torch.dtype or None."""
    return check_dtype("dtype", dtype)  # int64 weights would be a model that cannot run


def config_from_hf(hf: dict, file: str = "config.json") -> ModelConfig:
    """Map a GPT-2 config.json to ModelConfig; ValueError naming `file` for missing or unsupported fields."""
    missing = [k for k in CONFIG_NAMES if k not in hf]
    if missing:
        raise ValueError(f"{file}: missing GPT-2 config field(s) {missing}")
    for key, allowed in SUPPORTED.items():
        if key in hf and hf[key] not in allowed:
            raise ValueError(f"{file}: {key}={hf[key]!r} is not supported by kvgpt (allowed: {allowed})")
    kv = hf.get("num_key_value_heads", hf.get("n_kv_heads"))
    if kv not in (None, hf["n_head"]):  # GPT-2 has no grouped-query attention
        raise ValueError(f"{file}: num_key_value_heads={kv!r} != n_head={hf['n_head']}: GPT-2 checkpoints are "
                         "multi-head; kvgpt's grouped-query models live in kvgpt's own format")
    if hf.get("n_inner") not in (None, 4 * hf["n_embd"]):
        raise ValueError(f"{file}: n_inner={hf['n_inner']!r} is not supported by kvgpt (allowed: None or 4 * n_embd)")
    try:
        return ModelConfig(**{ours: hf[theirs] for theirs, ours in CONFIG_NAMES.items()})
    except ValueError as e:
        raise ValueError(f"{file}: {e}") from e


def check_tensors(expected: dict, found: dict, file) -> None:
    """ValueError naming `file` and the keys if `found` lacks, adds or misshapes any of `expected` (name -> shape)."""
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    shapes = [f"{k}: expected {tuple(s)}, found {tuple(found[k].shape)}"
              for k, s in expected.items() if k in found and tuple(found[k].shape) != tuple(s)]
    # integer weights would load by casting and give a model of rounded numbers: refuse them
    dtypes = [f"{k}: {v.dtype}" for k, v in found.items() if k in expected and not v.dtype.is_floating_point]
    for what, items in (("missing keys", missing), ("unexpected keys", unexpected), ("misshaped keys", shapes),
                        ("non-floating keys", dtypes)):
        if items:
            more = f" (and {len(items) - 5} more)" if len(items) > 5 else ""
            raise ValueError(f"{file}: {what} {items[:5]}{more}")


def expected_shapes(config: ModelConfig, found: dict, layer_prefix: str, file) -> dict[str, torch.Size]:
    """kvgpt name -> shape for `config`, worked out on the meta device: nothing is allocated until the weights agree.

    The layer count is compared first (from the `layer_prefix`<i>. keys in `found`), so a config claiming
    a million layers is refused without building them even on meta.
    """
    layers = {int(m.group(1)) for k in found if (m := re.match(rf"{re.escape(layer_prefix)}(\d+)\.", k))}
    if layers != set(range(config.n_layers)):
        raise ValueError(f"{file}: holds layers {sorted(layers)[:5]}{'...' if len(layers) > 5 else ''} "
                         f"({len(layers)} in all) but the config says n_layers={config.n_layers}")
    with torch.device("meta"):
        return {k: v.shape for k, v in MiniGPTInferenceModel(config).state_dict().items()}


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from .safetensors, or from a .bin with torch.load(weights_only=True): never arbitrary pickle."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        sd = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # safetensors, pickle and zip errors have no common base class
        raise ValueError(f"{path}: cannot read the weights (corrupt, truncated or not a plain "
                         f"tensor checkpoint): {type(e).__name__}: {e}") from e
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ValueError(f"{path}: expected a dict of tensors, got {type(sd).__name__}")
    return sd


def read_json(path: Path) -> dict:
    """config.json as a dict; FileNotFoundError / ValueError naming the file."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON: {e}") from e
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def resolve_dir(name_or_dir: str | os.PathLike) -> Path:
    """A local directory as is; a hub name ("gpt2", "org/name") downloaded via huggingface_hub (online only)."""
    path = Path(check_path("name_or_dir", name_or_dir)).expanduser()  # "" is not the current directory
    if path.is_dir():
        return path
    text = str(name_or_dir)
    if path.exists() or text.startswith((".", "/", "~")) or "\\" in text or text.count("/") > 1:
        raise FileNotFoundError(f"{text}: not a directory (expected one holding config.json and model.safetensors)")
    try:
        from huggingface_hub import snapshot_download
    except ImportError as e:
        raise ImportError(f"downloading {text!r} needs huggingface_hub: pip install 'kvgpt[gpt2]'") from e
    try:
        return Path(snapshot_download(text, allow_patterns=HUB_FILES))
    except Exception as e:  # offline, unknown repo, auth: all end here
        raise OSError(f"could not download {text!r} from the HuggingFace hub (hub names need the network; "
                      f"pass a local directory to work offline): {type(e).__name__}: {e}") from e


def weights_file(directory: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    """The weights file found in `directory` and its tensors as stored."""
    file = next((directory / f for f in WEIGHT_FILES if (directory / f).is_file()), None)
    if file is None:
        raise FileNotFoundError(f"{directory}: no weights file (expected one of {WEIGHT_FILES})")
    return file, read_weights(file)


def hf_state_dict(directory: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    """The weights file found in `directory` and its tensors, with buffers and the "transformer." prefix removed."""
    file, sd = weights_file(directory)
    sd = {k.removeprefix("transformer."): v for k, v in sd.items()}
    return file, {k: v for k, v in sd.items() if not IGNORED.match(k)}


def load_hf(name_or_dir: str | os.PathLike, dtype=None, device=None) -> MiniGPTInferenceModel:
    """Load HuggingFace GPT-2 weights into a MiniGPTInferenceModel (eval mode; dtype None -> float32).

    `name_or_dir`: a directory with config.json and model.safetensors (or pytorch_model.bin), or a
    hub name such as "gpt2" (downloaded when online). Errors name the file and the key.

    Introduced in notebooks/09_gpt2.ipynb.
    """
    dtype, device = check_dtype("dtype", dtype), check_device("device", device)  # before any file is read
    directory = resolve_dir(name_or_dir)
    hf_config = read_json(directory / "config.json")
    if hf_config.get("model_type") == "llama":  # Llama-shaped: kvgpt/hf_llama.py has its names
        from .hf_llama import from_llama_state_dict, llama_config, llama_shapes, llama_weights

        file, sd = weights_file(directory)
        config = llama_config(hf_config, str(directory / "config.json"))
        sd = llama_weights(sd, config, file)
        check_tensors(llama_shapes(expected_shapes(config, sd, "model.layers.", file), config), sd, file)
        ours = from_llama_state_dict(sd, config)
        model = MiniGPTInferenceModel(config)
        model.load_state_dict(ours)
        return model.to(device=device, dtype=dtype or torch.float32).eval()
    config = config_from_hf(hf_config, str(directory / "config.json"))
    file, sd = hf_state_dict(directory)
    head = sd.pop(TIED_HEAD, None)
    if head is not None and ("wte.weight" not in sd or not torch.equal(head, sd["wte.weight"])):
        raise ValueError(f"{file}: {TIED_HEAD} differs from wte.weight; kvgpt ties the LM head to the embedding")
    ours = expected_shapes(config, sd, "h.", file)  # shapes only: the model is built once the weights agree
    pairs = name_pairs(config.n_layers)
    expected = {theirs: ours[o][::-1] if t else ours[o] for o, theirs, t in pairs}
    check_tensors(expected, sd, file)
    model = MiniGPTInferenceModel(config)
    converted = {o: sd[theirs].t() if t else sd[theirs] for o, theirs, t in pairs}
    model.load_state_dict({**converted, TIED_HEAD: converted["token_embedding.embedding.weight"]})
    return model.to(device=device, dtype=dtype or torch.float32).eval()


def to_hf(model: MiniGPTInferenceModel, attn_implementation: str | None = None):
    """A transformers GPT2LMHeadModel (eval, same dtype and device) with exactly `model`'s weights.

    attn_implementation defaults to the counterpart of model.config.attn_impl: "sdpa" -> "sdpa"
    (transformers' default), "manual" -> "eager", so both sides use the same kind of attention kernel.

    Introduced in notebooks/08_benchmarks.ipynb.
    """
    try:
        from transformers import GPT2Config, GPT2LMHeadModel
    except ImportError as e:
        raise ImportError("to_hf needs transformers: pip install 'kvgpt[gpt2]'") from e
    check_model("model", model)
    c = model.config
    if c.positions == "rope":  # Llama-shaped (RoPE + RMSNorm + SwiGLU): a LlamaForCausalLM
        from .hf_llama import to_hf_llama

        return to_hf_llama(model, attn_implementation)
    odd = {k: getattr(c, k) for k in ("norm", "mlp", "tie_embeddings", "bias") if getattr(c, k) != GPT2_DEFAULTS[k]}
    if odd or c.hidden != 4 * c.d_model:
        raise ValueError(f"to_hf: {odd or {'mlp_hidden': c.mlp_hidden}} is not GPT-2's architecture, and learned "
                         "positions are not Llama's: transformers has no model for this mix")
    if c.kv_heads != c.n_heads:
        raise ValueError(f"to_hf: n_kv_heads={c.n_kv_heads} != n_heads={c.n_heads}; GPT-2 has no grouped-query "
                         "attention (save with kvgpt.save_pretrained, or expand with kvgpt.gqa.expand_to_mha)")
    impl = attn_implementation or {"sdpa": "sdpa", "manual": "eager"}[c.attn_impl]
    eos = 50256 if c.vocab_size > 50256 else None  # GPT-2's <|endoftext|>, only when the vocabulary has it
    hf_config = GPT2Config(vocab_size=c.vocab_size, n_positions=c.block_size, n_embd=c.d_model, n_layer=c.n_layers,
                           n_head=c.n_heads, activation_function="gelu_new", layer_norm_epsilon=1e-5,
                           resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, tie_word_embeddings=True,
                           bos_token_id=eos, eos_token_id=eos, attn_implementation=impl)
    hf = GPT2LMHeadModel(hf_config)
    ours = model.state_dict()
    sd = {f"transformer.{theirs}": ours[o].t() if t else ours[o] for o, theirs, t in name_pairs(c.n_layers)}
    sd[TIED_HEAD] = ours["token_embedding.embedding.weight"]
    result = hf.load_state_dict(sd, strict=False)
    left = [k for k in result.missing_keys if not IGNORED.match(k.removeprefix("transformer."))]
    if left or result.unexpected_keys:  # a transformers version with different names: fail loudly
        raise ValueError(f"to_hf: transformers' GPT2LMHeadModel did not take the weights: "
                         f"missing {left}, unexpected {result.unexpected_keys}")
    p = next(model.parameters())
    return hf.to(device=p.device, dtype=p.dtype).eval()
