"""kvgpt: a small GPT-2 inference engine that teaches the KV cache, one module per chapter.

Shape legend, used as trailing comments throughout the package and the notebooks:

    B  batch (rows generated together)
    T  new tokens in this call (the prompt length at prefill, 1 at a decode step)
    S  key/value positions visible to the queries (past + T)
    C  model width (d_model)
    H  attention heads          D  head dim = C // H
    V  vocabulary size          L  layers

Chapter map (module -> notebooks/NN_*.ipynb):
    config, validation (01) · embeddings (02) · attention (03) · kv_cache, cache_manager, model (04) ·
    generation, requests (05) · sampling, widgets (06) · batching (07) · benchmark/ (08) · linear, compiled (08b) ·
    tokenizer, hf, pretrained (09) · serving/blocks, serving/paged, serving/paged_batch, serving/engine (10) ·
    serving/scheduler, benchmark/serving (11) · gqa, quantized_cache, evaluation (12) ·
    speculative, drafting, context (13) · online_softmax, paged_attention, paged_kernel (14) ·
    export, serving/server, serving/loop, serving/api, serving/routes, serving/metrics (15) ·
    modern, hf_llama, sinks, benchmark/streaming (16) ·
    plots/ draws every chapter's figures.
"""

from .attention import CausalSelfAttention
from .config import ModelConfig
from .embeddings import PositionalEmbedding, TokenEmbedding
from .generation import AutoregressiveGenerator, GenerationStats
from .cache_manager import CacheView, KVCacheManager, NoCache
from .kv_cache import CachedCausalSelfAttention, DynamicKVCache, KVCache, StaticKVCache
from . import quantized_cache as _quantized_cache  # registers the "int8" cache kind (kvgpt/cache_manager.py)
from .model import FeedForward, MiniGPTInferenceModel, TransformerBlock
from .pretrained import load_pretrained
from .sampling import Sampler
from .tokenizer import CharTokenizer

__version__ = "0.1.0"

__all__ = [
    "ModelConfig", "TokenEmbedding", "PositionalEmbedding", "CausalSelfAttention",
    "CachedCausalSelfAttention", "KVCache", "DynamicKVCache", "StaticKVCache", "KVCacheManager",
    "FeedForward", "TransformerBlock", "MiniGPTInferenceModel",
    "Sampler", "AutoregressiveGenerator", "GenerationStats", "CharTokenizer", "load_pretrained",
]
