"""kvgpt.serving: paged KV cache, prefix caching and continuous batching over the one model forward.

Introduced in notebooks/10_paged_attention.ipynb.
"""

from .blocks import BlockAllocator, NoFreeBlocksError, block_hash, prefix_hashes
from .paged import PagedBatch, PagedKVCache, PagedLayer
from .scheduler import EngineStats, Scheduler, Sequence
from .engine import LLMEngine
from .outbox import Outbox, Reader, StepError, StepOutput

__all__ = ["BlockAllocator", "NoFreeBlocksError", "block_hash", "prefix_hashes", "PagedKVCache", "PagedBatch",
           "PagedLayer", "Sequence", "EngineStats", "Scheduler", "LLMEngine", "StepError", "StepOutput", "Outbox", "Reader"]
