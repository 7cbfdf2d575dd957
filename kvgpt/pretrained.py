"""Ready-to-use models: the embedded Shakespeare character model (offline), GPT-2 (online), or a directory.

kvgpt's own format is a directory of three files: model.safetensors (the state_dict without the tied
lm_head.weight), config.json (ModelConfig fields; other keys are metadata) and vocab.json (the
characters in id order). Introduced in notebooks/05_decoding.ipynb.
"""

from __future__ import annotations

import json
import os
from importlib import resources
from pathlib import Path

import torch

from .config import ModelConfig
from .hf import TIED_HEAD, check_tensors, expected_shapes, load_hf, read_json, read_weights
from .model import MiniGPTInferenceModel
from .tokenizer import GPT2_NAMES, CharTokenizer, GPT2Tokenizer, read_char_tokenizer
from .validation import check_device, check_dtype, check_path, fail_type

DEFAULT_MODEL = "shakespeare-char"
EMBED_KEY = "token_embedding.embedding.weight"
HF_TOKENIZER_FILES = ("tokenizer.json", "merges.txt")


def data_dir() -> Path:
    """kvgpt/data/, where the embedded models live (a real directory for any normal install)."""
    return Path(str(resources.files("kvgpt") / "data"))


def embedded_names() -> list[str]:
    """Names of the models shipped inside the package (subdirectories of kvgpt/data with a config.json)."""
    root = data_dir()
    return sorted(p.name for p in root.iterdir() if (p / "config.json").is_file()) if root.is_dir() else []


def available_models() -> list[str]:
    """Everything load_pretrained accepts by name: embedded models (offline) and GPT-2 hub names (online)."""
    return embedded_names() + list(GPT2_NAMES)


def load_pretrained(name: str | os.PathLike = DEFAULT_MODEL, device=None, dtype=None):
    """Load a model and its tokenizer -> (MiniGPTInferenceModel in eval mode, tokenizer).

    `name`: an embedded model ("shakespeare-char", offline), a GPT-2 name ("gpt2", "gpt2-medium", ...:
    weights from the HuggingFace hub and tiktoken's BPE, online only), or a local directory in
    kvgpt's format or HuggingFace GPT-2 format. dtype None -> float32.

    Introduced in notebooks/05_decoding.ipynb.
    """
    text = check_path("name", name)  # "" would be read as the current directory
    device, dtype = check_device("device", device), check_dtype("dtype", dtype)  # before anything is loaded
    if text in embedded_names():
        return load_dir(data_dir() / text, device, dtype)
    if text in GPT2_NAMES:
        return load_hf(text, dtype=dtype, device=device), GPT2Tokenizer(text)
    path = Path(text).expanduser()
    if path.is_dir():
        return load_dir(path, device, dtype)
    if text == DEFAULT_MODEL:  # a source checkout before training: say how to make it
        raise FileNotFoundError(f"{data_dir() / text}: the embedded model is missing; "
                                "create it with scripts/prepare_shakespeare.py and scripts/train_shakespeare_char.py")
    raise ValueError(f"model {text!r}: not an existing directory nor a known model name; "
                     f"available: {', '.join(available_models())} (or a directory path)")


def load_dir(directory: str | os.PathLike, device=None, dtype=None):
    """Load a directory in kvgpt's format, or in HuggingFace GPT-2 format -> (model, tokenizer)."""
    directory = Path(check_path("directory", directory))
    device, dtype = check_device("device", device), check_dtype("dtype", dtype)
    config = read_json(directory / "config.json")
    if "n_layer" in config or config.get("model_type") in ("gpt2", "llama"):  # HuggingFace's names
        return load_hf(directory, dtype=dtype, device=device), _hf_dir_tokenizer(directory, config)
    model_config = _model_config(config, directory / "config.json")
    tokenizer = CharTokenizer.from_file(directory / "vocab.json") if (directory / "vocab.json").is_file() else None
    if tokenizer is None:
        raise FileNotFoundError(f"{directory / 'vocab.json'}: file not found (the character vocabulary)")
    if tokenizer.vocab_size != model_config.vocab_size:
        raise ValueError(f"{directory / 'vocab.json'} has {tokenizer.vocab_size} characters but "
                         f"{directory / 'config.json'} says vocab_size={model_config.vocab_size}")
    sd = _read_weights(directory / "model.safetensors", model_config)  # checked before the model is allocated
    model = MiniGPTInferenceModel(model_config)
    model.load_state_dict(sd)
    return model.to(device=device, dtype=dtype or torch.float32).eval(), tokenizer


def _model_config(config: dict, file: Path) -> ModelConfig:
    try:
        return ModelConfig.from_dict(config)
    except TypeError as e:  # a required field missing
        raise ValueError(f"{file}: not a kvgpt config ({e})") from e
    except ValueError as e:
        raise ValueError(f"{file}: {e}") from e


def _read_weights(file: Path, config: ModelConfig) -> dict[str, torch.Tensor]:
    """kvgpt-format weights checked against `config` (every key, shape and a floating dtype; a stored
    lm_head.weight must equal the embedding) -> a state_dict ready for load_state_dict."""
    if not file.is_file():
        raise FileNotFoundError(f"{file}: file not found")
    sd = read_weights(file)
    if not config.tie_embeddings:  # an untied head is a tensor of its own, checked like the others
        check_tensors(expected_shapes(config, sd, "blocks.", file), sd, file)
        return sd
    head = sd.pop(TIED_HEAD, None)
    if head is not None and (EMBED_KEY not in sd or not torch.equal(head, sd[EMBED_KEY])):
        raise ValueError(f"{file}: {TIED_HEAD} differs from {EMBED_KEY}; kvgpt ties the LM head to the embedding")
    expected = {k: v for k, v in expected_shapes(config, sd, "blocks.", file).items() if k != TIED_HEAD}
    check_tensors(expected, sd, file)
    return {**sd, TIED_HEAD: sd[EMBED_KEY]}


def _hf_dir_tokenizer(directory: Path, config: dict):
    chars = read_char_tokenizer(directory)  # a character vocabulary exported by kvgpt.export (chapter 15)
    if chars is not None:
        return chars
    vocab = directory / "vocab.json"  # a character model saved beside to_hf()'s files keeps kvgpt's list of characters
    if vocab.is_file() and vocab.read_text(encoding="utf-8").lstrip().startswith("["):
        return CharTokenizer.from_file(vocab)
    if any((directory / f).is_file() for f in HF_TOKENIZER_FILES):
        return GPT2Tokenizer(directory)
    if config.get("vocab_size") == 50257:  # GPT-2's own vocabulary: tiktoken's copy of the BPE
        return GPT2Tokenizer("gpt2")
    raise FileNotFoundError(f"{directory}: no tokenizer files ({' or '.join(HF_TOKENIZER_FILES)}) "
                            f"and vocab_size={config.get('vocab_size')} is not GPT-2's 50257")


def save_pretrained(model: MiniGPTInferenceModel, tokenizer: CharTokenizer, directory: str | os.PathLike,
                    metadata: dict | None = None) -> Path:
    """Write model.safetensors (without the tied head), config.json (+ metadata keys), vocab.json."""
    from safetensors.torch import save_file

    if not isinstance(model, MiniGPTInferenceModel) or not isinstance(tokenizer, CharTokenizer):
        fail_type("model, tokenizer", (type(model).__name__, type(tokenizer).__name__),
                  "a MiniGPTInferenceModel and a CharTokenizer")
    directory = check_path("directory", directory)
    if tokenizer.vocab_size != model.config.vocab_size:
        raise ValueError(f"tokenizer has {tokenizer.vocab_size} tokens but the model's vocab_size is "
                         f"{model.config.vocab_size}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    sd = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()
          if not (k == TIED_HEAD and model.config.tie_embeddings)}
    save_file(sd, str(directory / "model.safetensors"), metadata={"format": "pt"})
    config = {**(metadata or {}), **model.config.to_dict()}
    (directory / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    tokenizer.save(directory / "vocab.json")
    return directory
