"""The GPT-2 decoder: blocks of pre-LayerNorm attention and MLP, with a full forward and a cached path.

`forward` recomputes everything (the reference); `prefill` fills the caches from a prompt in one
pass; `forward_step` adds exactly one token per row. Introduced in notebooks/04_kv_cache.ipynb.
"""

from __future__ import annotations

import torch
from torch import nn

from .config import ModelConfig, check_config
from .linear import Linear
from .embeddings import PositionalEmbedding, TokenEmbedding
from .cache_manager import CacheView, KVCacheManager, NoCache
from .kv_cache import CachedCausalSelfAttention, KVCache
from .modern import RMSNorm, RotaryEmbedding, SwiGLU
from .validation import check_bool, check_instance, check_int, check_mask, check_token_ids, fail_type

_CACHE_VIEW_TYPES: set[type] = set()  # classes already seen to implement CacheView


def make_norm(config: ModelConfig) -> nn.Module:
    """The normalisation config.norm names: GPT-2's LayerNorm or Llama's RMSNorm (kvgpt/modern.py)."""
    if config.norm == "rms":
        return RMSNorm(config.d_model, config.norm_eps)
    return nn.LayerNorm(config.d_model, eps=config.norm_eps, bias=config.bias)


class FeedForward(nn.Module):
    """Position-wise MLP: Linear(C, 4C) -> GELU (tanh approximation, as GPT-2) -> Linear(4C, C) (4C = config.hidden).

    Shapes: (B, T, C) -> (B, T, C).

    Introduced in notebooks/04_kv_cache.ipynb.
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.fc = Linear(config.d_model, config.hidden, bias=config.bias)
        self.gelu = nn.GELU(approximate="tanh")
        self.proj = Linear(config.hidden, config.d_model, bias=config.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.gelu(self.fc(x)))  # (B, T, C)


class TransformerBlock(nn.Module):
    """x = x + Attention(LN(x)); x = x + MLP(LN(x)). With a cache, attention reads and extends it.

    Shapes: x (B, T, C) -> (B, T, C).

    Introduced in notebooks/04_kv_cache.ipynb.
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.ln_1 = make_norm(config)
        self.attn = CachedCausalSelfAttention(config)
        self.ln_2 = make_norm(config)
        self.ffn = SwiGLU(config) if config.mlp == "swiglu" else FeedForward(config)

    def forward(self, x, kv_cache: KVCache | None = None, position: int = 0, mask=None, rope=None):
        x = x + self.attn(self.ln_1(x), kv_cache, position, mask, rope)
        return x + self.ffn(self.ln_2(x))  # (B, T, C)


class MiniGPTInferenceModel(nn.Module):
    """GPT-2 architecture for inference: embeddings, L blocks, final LayerNorm, tied LM head.

    The same class is Llama-shaped when the config says so (positions="rope": no position table, queries and
    keys rotated by `rotary`; RMSNorm; SwiGLU; no biases; untied head): one forward for every architecture.

    Shapes: token ids (B, T) -> logits (B, T, V); forward_step: (B,) -> (B, V).
    The model holds no generation state: caches belong to the caller (a KVCacheManager), so
    one model can serve several generations.

    Introduced in notebooks/04_kv_cache.ipynb.
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = check_config("config", config)
        self.token_embedding = TokenEmbedding(config)
        if config.positions == "rope":  # computed per call from the positions: nothing learned, nothing stored
            self.rotary = RotaryEmbedding(config)
        else:
            self.position_embedding = PositionalEmbedding(config)
        self.blocks = nn.ModuleList(TransformerBlock(config) for _ in range(config.n_layers))
        self.final_layernorm = make_norm(config)
        self.lm_head = Linear(config.d_model, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.token_embedding.embedding.weight  # tied, as in GPT-2
        self.apply(self._init_weights)
        self._store_transposed()

    def _store_transposed(self) -> None:
        """Keep every weight matrix (out, in) in shape but (in, out) in memory, as GPT-2's Conv1D stores it.

        A decode step streams each matrix once per token; MKL's kernels read this layout faster (measured on
        GPT-2-small: 5% per batch-1 step, 14% per batch-16 step). Values, shapes and state_dict are unchanged,
        and load_state_dict copies into the existing storage, so loaded weights keep the layout.
        """
        embedding = self.token_embedding.embedding
        for module in [m for m in self.modules() if isinstance(m, nn.Linear)] + [embedding]:
            module.weight = nn.Parameter(module.weight.detach().t().contiguous().t())
        if self.config.tie_embeddings:
            self.lm_head.weight = embedding.weight  # re-tie after replacing the parameter

    # from_hf/to_hf: two small public doors into kvgpt/hf.py, imported when called (hf.py builds on this module;
    # the only import circle the package keeps, on purpose: tests/test_structure.py allows exactly this one)
    @classmethod
    def from_hf(cls, name_or_dir: str, **kwargs) -> "MiniGPTInferenceModel":
        """Load HuggingFace GPT-2 weights (a local directory, or a hub name when online). See kvgpt/hf.py."""
        from .hf import load_hf

        return load_hf(name_or_dir, **kwargs)

    def to_hf(self):
        """A transformers GPT2LMHeadModel with exactly these weights. See kvgpt/hf.py."""
        from .hf import to_hf

        return to_hf(self)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        # GPT-2's initialisation, so a fresh model gives sensible logits before any weights load
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def _check_ids(self, token_ids: torch.Tensor, name: str) -> None:
        check_token_ids(name, token_ids, self.config.vocab_size)  # one aminmax: this runs on every decode step
        weight = self.token_embedding.embedding.weight
        if token_ids.device != weight.device:
            raise ValueError(f"{name} is on {token_ids.device} but the model is on {weight.device}")

    def _check_cache(self, cache, b: int, t: int) -> None:
        """Before anything is written: the cache says whether this (b, t) call fits the context and the cache.

        One contract for every cache (KVCacheManager, NoCache, the paged batch of kvgpt/serving): CacheView.
        """
        if type(cache) not in _CACHE_VIEW_TYPES:  # a Protocol isinstance walks its members: once per class is enough
            if not isinstance(cache, CacheView):
                fail_type("cache", cache, "a KVCacheManager (or None in prefill)")
            _CACHE_VIEW_TYPES.add(type(cache))
        end = cache.context_end(t)  # past + t when every row has the same length
        if end > self.config.block_size:
            raise ValueError(f"{end} positions exceed the model's context block_size={self.config.block_size}")
        cache.check_call(self, b, t)

    def _logits(self, x: torch.Tensor, last_only: bool, last_index: torch.Tensor | None = None) -> torch.Tensor:
        if last_only:  # the LM head is the widest matmul: skip the rows nobody reads
            x = x[:, -1] if last_index is None else x[0, last_index]  # (B, C), or (R, C): a flat call's sequences
        return self.lm_head(self.final_layernorm(x))  # (B, T, V) or (B, V)

    def forward(self, token_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                last_only: bool = False) -> torch.Tensor:
        """Full forward with no cache: every position recomputed. (B, T) -> (B, T, V), or (B, V) if last_only.

        `attention_mask` (B, T) of 0/1 marks left padding, as in prefill.
        """
        return self.prefill(token_ids, None, attention_mask, last_only)

    def prefill(self, token_ids: torch.Tensor, cache: KVCacheManager | None,
                attention_mask: torch.Tensor | None = None, last_only: bool = False) -> torch.Tensor:
        """Run T tokens in one pass, appending their keys and values to every layer's cache.

        Shapes: token_ids (B, T), attention_mask (B, T) 0/1 with 0 = left padding (first chunk
        only) -> logits (B, T, V), or (B, V) for the last position if last_only. With a non-empty
        cache this continues it (chunked prefill). With cache=None nothing is stored.
        """
        if not isinstance(token_ids, torch.Tensor):
            fail_type("token_ids", token_ids, "a (B, T) tensor of token ids")
        if token_ids.dim() != 2 or 0 in token_ids.shape:
            raise ValueError(f"token_ids must be (B, T) with B, T >= 1, got shape {tuple(token_ids.shape)}")
        self._check_ids(token_ids, "token_ids")
        check_bool("last_only", last_only)
        b, t = token_ids.shape
        cache = NoCache(self.config, b) if cache is None else cache  # a full forward: stores nothing
        self._check_cache(cache, b, t)  # every check before set_padding: a refused call leaves no padding behind
        past = cache.length
        if attention_mask is not None:
            if past:
                raise ValueError("attention_mask (padding) is only accepted for the first chunk of a prompt")
            cache.set_padding(check_mask("attention_mask", attention_mask, token_ids))
        return self._run(token_ids, cache, past, last_only)

    def forward_step(self, next_ids: torch.Tensor, position: int, cache: KVCacheManager) -> torch.Tensor:
        """Decode one new token per row at slot `position`, which must equal the cache length.

        Shapes: next_ids (B,) or (B, 1) -> logits (B, V).
        """
        next_ids = self._check_step(next_ids, position, cache)  # (B, 1)
        return self._run(next_ids, cache, position, last_only=True)  # (B, V)

    def _check_step(self, next_ids, position, cache) -> torch.Tensor:
        """forward_step's checks, before anything is written (kvgpt/compiled.py runs the same). -> ids (B, 1)."""
        if not isinstance(next_ids, torch.Tensor):
            fail_type("next_ids", next_ids, "a (B,) or (B, 1) tensor of token ids")
        if next_ids.dim() == 1:
            next_ids = next_ids[:, None]  # (B, 1)
        if next_ids.dim() != 2 or next_ids.size(1) != 1:
            raise ValueError(f"next_ids: forward_step takes exactly one token per row, (B,) or (B, 1); "
                             f"got {tuple(next_ids.shape)}")
        if not isinstance(cache, KVCacheManager):
            fail_type("cache", cache, "a KVCacheManager")
        if type(position) is not int:  # a numpy int becomes an int; True, 3.0 or a tensor are refused
            position = check_int("position", position, 0)
        if position != cache.length:
            raise ValueError(f"position={position} but the cache holds {cache.length} slots; "
                             "the next token must go at position == cache length")
        if next_ids.size(0) != cache.batch_size:
            raise ValueError(f"next_ids has batch {next_ids.size(0)} but the cache has batch_size={cache.batch_size}")
        self._check_ids(next_ids, "next_ids")
        self._check_cache(cache, cache.batch_size, 1)
        return next_ids

    def _run(self, token_ids: torch.Tensor, cache: CacheView, past: int, last_only: bool) -> torch.Tensor:
        """The one forward every path runs (full, prefill, step, paged, compiled): no checks, no host syncs.

        Shapes: token_ids (B, T) -> logits (B, T, V), or (B, V) if last_only (a flat paged call of R sequences in
        one row: (R, V), each sequence's last token, from cache.last_index). `cache` answers the call's positions and
        mask once; each layer reads and writes only its own cache.
        """
        t, device = token_ids.size(1), token_ids.device
        pos = cache.position_ids(t, device)  # (T,) or (B, T)
        mask = cache.attention_mask(t, device)  # None, (T, S) or (B, 1, T, S): built once for every layer
        x = self.token_embedding(token_ids)  # (B, T, C)
        rope = None
        if self.config.positions == "rope":  # cos, sin (B or 1, 1, T, D): once per call, shared by every layer
            rope = self.rotary(pos, x.dtype)
        else:
            x = x + self.position_embedding(pos)  # (B, T, C)
        for i, block in enumerate(self.blocks):
            x = block(x, cache.get(i), past, mask, rope)  # layer i reads and writes only cache i
        return self._logits(x, last_only, getattr(cache, "last_index", None))


def check_model(name: str, model) -> MiniGPTInferenceModel:
    """A kvgpt MiniGPTInferenceModel (None, a name, a ModelConfig or another library's nn.Module are refused by name,
    not met later as an AttributeError). validation.check_instance bound to this class, beside it."""
    return check_instance(name, model, MiniGPTInferenceModel,
                          "a kvgpt MiniGPTInferenceModel (load_pretrained(...) or MiniGPTInferenceModel(config))")
