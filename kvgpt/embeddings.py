"""Token and learned absolute position embeddings (GPT-2's wte and wpe).

Introduced in notebooks/02_embeddings.ipynb.
"""

from __future__ import annotations

import torch
from torch import nn

from .config import ModelConfig


class TokenEmbedding(nn.Module):
    """Maps token ids to vectors; its weight is also the LM head (weight tying).

    Shapes: (B, T) int ids -> (B, T, C).

    Introduced in notebooks/02_embeddings.ipynb.
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.embedding = nn.Embedding(config.vocab_size, config.d_model)

    def forward(self, token_ids: torch.Tensor) -> torch.Tensor:
        return self.embedding(token_ids)  # (B, T, C)


class PositionalEmbedding(nn.Module):
    """Learned vector per absolute position 0 .. block_size - 1.

    Shapes: (B, T) or (T,) int positions -> (B, T, C) or (T, C).
    A token at position t must get row t whether it is computed in a full forward or as
    the t-th cached step; that alignment is what notebooks/02 checks.

    Introduced in notebooks/02_embeddings.ipynb.
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.pos_embedding = nn.Embedding(config.block_size, config.d_model)

    def forward(self, position_ids: torch.Tensor) -> torch.Tensor:
        return self.pos_embedding(position_ids)  # (B, T, C)
