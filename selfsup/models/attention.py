"""Multi-head cross-attention: queries attend to a separate set of keys and values (CAE's
regressor, the attentive probe). Self-attention blocks come from timm (``timm.layers`` /
``timm.models.vision_transformer.Block``)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class CrossAttention(nn.Module):
    """softmax((q W_q)(k W_k)^T / sqrt(d_h)) (v W_v), per head, then the output projection W_o.

    q (B, M, D), k and v (B, N, D) -> (B, M, D). ``qkv_bias``: biases on W_q, W_k, W_v.
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"attention width {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.k = nn.Linear(dim, dim, bias=qkv_bias)
        self.v = nn.Linear(dim, dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def heads(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, D) -> (B, heads, N, D / heads)."""
        return x.unflatten(-1, (self.num_heads, -1)).transpose(1, 2)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        out = F.scaled_dot_product_attention(self.heads(self.q(q)), self.heads(self.k(k)), self.heads(self.v(v)))
        return self.proj(out.transpose(1, 2).flatten(2))
