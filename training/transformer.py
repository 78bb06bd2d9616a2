"""Small transformer encoders (Vaswani et al. 2017, post-norm) in plain PyTorch, shaped for ppml.

Every size is a module attribute, never read from ``x.shape``, so the ONNX
export has constant reshape targets (ppml's parser refuses shape
computations). Exported with :func:`ppml.client.model_export.export_model`,
a :class:`TransformerClassifier` becomes a graph of Linear (on each token),
Bias (positional embedding), Reshape, Transpose, MatMul, Scale, Softmax,
Add (residuals), LayerNorm, GELU, Mean (pooling) and a Linear head.

:func:`digits_transformer` reads sklearn's 8x8 digits as 8 tokens of 8
features (the tests train it); :func:`bert_tiny_like` has BERT-tiny's
shape (sequence 128, hidden 128, 2 heads, FFN 512, 2 layers) with random
weights, for timing.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class SelfAttention(nn.Module):
    """Multi-head self-attention over ``tokens`` tokens of ``dim`` features."""

    def __init__(self, tokens: int, dim: int, heads: int) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by {heads} heads")
        self.tokens, self.heads, self.head_dim = tokens, heads, dim // heads
        self.q, self.k, self.v = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)
        self.softmax = nn.Softmax(dim=-1)
        self.scale = 1.0 / math.sqrt(self.head_dim)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        """``(batch, tokens, dim)`` -> ``(batch, heads, tokens, head_dim)``."""
        return x.reshape(-1, self.tokens, self.heads, self.head_dim).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self._split(self.q(x)), self._split(self.k(x)), self._split(self.v(x))
        weights = self.softmax(torch.matmul(q, k.transpose(2, 3)) * self.scale)
        merged = torch.matmul(weights, v).transpose(1, 2)
        return self.out(merged.reshape(-1, self.tokens, self.heads * self.head_dim))


class EncoderLayer(nn.Module):
    """``x = norm1(x + attention(x)); x = norm2(x + ffn(x))`` with a GELU feed-forward."""

    def __init__(self, tokens: int, dim: int, heads: int, ffn: int) -> None:
        super().__init__()
        self.attention = SelfAttention(tokens, dim, heads)
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn), nn.GELU(), nn.Linear(ffn, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm1(x + self.attention(x))
        return self.norm2(x + self.ffn(x))


class TransformerClassifier(nn.Module):
    """Token embedding, positional embedding, encoder layers, mean pooling, linear head.

    Input ``(batch, tokens, features)``; output ``(batch, classes)`` logits.
    """

    def __init__(self, tokens: int, features: int, dim: int, heads: int, ffn: int,
                 layers: int, classes: int) -> None:  # fmt: skip
        super().__init__()
        self.embed = nn.Linear(features, dim)
        self.position = nn.Parameter(torch.randn(tokens, dim) * 0.02)
        self.layers = nn.Sequential(*(EncoderLayer(tokens, dim, heads, ffn) for _ in range(layers)))
        self.head = nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.layers(self.embed(x) + self.position).mean(1))


def digits_transformer(classes: int = 10) -> TransformerClassifier:
    """For 8x8 digits as 8 tokens of 8 features: width 16, 2 heads, FFN 32, 1 layer."""
    return TransformerClassifier(8, 8, 16, 2, 32, 1, classes)


def bert_tiny_like(seq: int = 128, hidden: int = 128, heads: int = 2, ffn: int = 512,
                   layers: int = 2, features: int | None = None,
                   classes: int = 2) -> TransformerClassifier:  # fmt: skip
    """BERT-tiny's encoder shape with random weights; input ``(batch, seq, features)``.

    ``features`` defaults to ``hidden`` (inputs are already embedded tokens).
    """
    return TransformerClassifier(seq, features or hidden, hidden, heads, ffn, layers, classes)
