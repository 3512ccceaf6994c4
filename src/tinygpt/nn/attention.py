"""Causal multi-head self-attention (GPT-3's locally banded variant with `window`)."""
from __future__ import annotations

from .. import functional as F
from .layers import Dropout, Linear
from .module import Module


class CausalSelfAttention(Module):
    """Multi-head causal self-attention; `window` makes it GPT-3's locally banded variant."""

    def __init__(self, n_embd: int, n_head: int, dropout: float = 0.0, bias: bool = True,
                 window: int | None = None, proj_std: float = 0.02):
        super().__init__()
        for name, value in (("n_embd", n_embd), ("n_head", n_head), ("window", 1 if window is None else window)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"CausalSelfAttention: {name} must be a positive int, got {value!r}")
        if n_embd % n_head != 0:
            raise ValueError(f"CausalSelfAttention: n_embd {n_embd} is not divisible by n_head {n_head}")
        self.n_head, self.n_embd, self.window, self.dropout = n_head, n_embd, window, dropout
        self.c_attn = Linear(n_embd, 3 * n_embd, bias=bias)
        self.c_proj = Linear(n_embd, n_embd, bias=bias, std=proj_std)
        self.resid_dropout = Dropout(dropout)

    def forward(self, x, kv_cache=None):
        """kv_cache: this layer's view of a models.generation.KVCache (inference): x holds the
        next T tokens, whose keys/values are stored and attended together with the cached ones."""
        p = self.dropout if self.training else 0.0
        qkv = self.c_attn(x)  # (B, T, 3C): q, k, v side by side
        if kv_cache is None:  # one op: split into heads, attention, merge heads (no copies on the CPU)
            y = F.qkv_attention(qkv, self.n_head, causal=True, dropout_p=p, window=self.window)
        else:  # one op: store the new keys and values, attend over the cache in place
            y = kv_cache.attend(qkv, self.n_head, dropout_p=p, window=self.window)
        return self.resid_dropout(self.c_proj(y))
