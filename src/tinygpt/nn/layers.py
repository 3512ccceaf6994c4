"""The basic layers: Linear, Embedding, LayerNorm, Dropout, GELU."""
from __future__ import annotations

import math

import numpy as np

from .. import functional as F
from .. import random as _random
from .module import Module, Parameter


def _normal(shape, std, dtype=np.float32):
    return (_random.generator().standard_normal(shape) * std).astype(dtype)


class Linear(Module):
    """y = x @ W.T + b with W of shape (out_features, in_features), as PyTorch.

    Initialised N(0, std) with std=0.02 (GPT-2) unless `std` is given; bias zeros.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, std: float = 0.02):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = Parameter(_normal((out_features, in_features), std))
        self.bias = Parameter(np.zeros(out_features, dtype=np.float32)) if bias else None

    def forward(self, x):
        return F.linear(x, self.weight, self.bias)

    def forward_gelu(self, x):
        """gelu_tanh(self(x)) in one op (the MLP's first projection; QuantizedLinear has the same)."""
        return F.linear_gelu(x, self.weight, self.bias)

    def extra_repr(self):
        return f"{self.in_features}, {self.out_features}, bias={self.bias is not None}"


class Embedding(Module):
    """A lookup table (num_embeddings, embedding_dim), initialised N(0, 0.02)."""

    def __init__(self, num_embeddings: int, embedding_dim: int, std: float = 0.02):
        super().__init__()
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        self.weight = Parameter(_normal((num_embeddings, embedding_dim), std))

    def forward(self, ids):
        return F.embedding(ids, self.weight)

    def extra_repr(self):
        return f"{self.num_embeddings}, {self.embedding_dim}"


class LayerNorm(Module):
    """LayerNorm over the last axis, with optional bias (nanoGPT's bias=False option)."""

    def __init__(self, ndim: int, bias: bool = True, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = Parameter(np.ones(ndim, dtype=np.float32))
        self.bias = Parameter(np.zeros(ndim, dtype=np.float32)) if bias else None

    def forward(self, x):
        return F.layer_norm(x, self.weight, self.bias, self.eps)

    def extra_repr(self):
        return f"{self.weight.shape[0]}, bias={self.bias is not None}, eps={self.eps}"


class Dropout(Module):
    def __init__(self, p: float = 0.5):
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"Dropout: p must be in [0, 1], got {p}")
        self.p = p

    def forward(self, x):
        return F.dropout(x, self.p, self.training)

    def extra_repr(self):
        return f"p={self.p}"


class GELU(Module):
    def __init__(self, approximate: str = "tanh"):
        super().__init__()
        self.approximate = approximate

    def forward(self, x):
        return F.gelu(x, self.approximate)

    def extra_repr(self):
        return f"approximate={self.approximate!r}"


def sinusoidal_positions(n_positions: int, dim: int, dtype=np.float32) -> np.ndarray:
    """The original Transformer's fixed encoding: sin on even channels, cos on odd ones."""
    pos = np.arange(n_positions, dtype=np.float64)[:, None]
    freq = np.exp(-math.log(10000.0) * np.arange(0, dim, 2, dtype=np.float64) / dim)
    table = np.zeros((n_positions, dim), dtype=np.float64)
    table[:, 0::2] = np.sin(pos * freq)
    table[:, 1::2] = np.cos(pos * freq[: dim // 2])
    return table.astype(dtype)
