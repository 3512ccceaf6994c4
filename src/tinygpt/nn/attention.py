"""Causal multi-head self-attention, the MLP and the transformer Block (pre- or post-norm)."""
from __future__ import annotations

import math

from .. import functional as F
from .layers import GELU, Dropout, LayerNorm, Linear
from .module import Module
from .moe import MoE


class CausalSelfAttention(Module):
    """Multi-head causal self-attention; `window` makes it GPT-3's locally banded variant."""

    def __init__(self, n_embd: int, n_head: int, dropout: float = 0.0, bias: bool = True,
                 window: int | None = None, proj_std: float = 0.02):
        super().__init__()
        if n_embd % n_head != 0:
            raise ValueError(f"CausalSelfAttention: n_embd {n_embd} is not divisible by n_head {n_head}")
        self.n_head, self.n_embd, self.window, self.dropout = n_head, n_embd, window, dropout
        self.c_attn = Linear(n_embd, 3 * n_embd, bias=bias)
        self.c_proj = Linear(n_embd, n_embd, bias=bias, std=proj_std)
        self.resid_dropout = Dropout(dropout)

    def forward(self, x, kv_cache=None):
        """kv_cache: this layer's view of a models.generation.KVCache (inference): x holds the
        next T tokens, whose keys/values are stored and attended together with the cached ones."""
        B, T, C = x.shape
        nh, hs = self.n_head, C // self.n_head
        p = self.dropout if self.training else 0.0
        qkv = self.c_attn(x)  # (B, T, 3C): q, k, v side by side
        if kv_cache is None:  # one op: split into heads, attention, merge heads (no copies on the CPU)
            y = F.qkv_attention(qkv, nh, causal=True, dropout_p=p, window=self.window)
        else:
            q, k, v = qkv.reshape(B, T, 3, nh, hs).permute(2, 0, 3, 1, 4).unbind(0)  # 3 x (B, nh, T, hs)
            k, v = kv_cache.update(k, v, self.window)  # (B, nh, T, hs) -> (B, nh, cached + T, hs)
            y = F.scaled_dot_product_attention(q, k, v, causal=True, dropout_p=p, window=self.window)
            y = y.permute(0, 2, 1, 3).reshape(B, T, C)  # (B, nh, T, hs) -> (B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(Module):
    """Linear(C, 4C) -> GELU -> Linear(4C, C) -> dropout."""

    def __init__(self, n_embd: int, dropout: float = 0.0, bias: bool = True, proj_std: float = 0.02,
                 approximate: str = "tanh"):
        super().__init__()
        self.c_fc = Linear(n_embd, 4 * n_embd, bias=bias)
        self.gelu = GELU(approximate)
        self.c_proj = Linear(4 * n_embd, n_embd, bias=bias, std=proj_std)
        self.dropout = Dropout(dropout)

    def forward(self, x):
        # c_fc + GELU fused in one op (one kernel, no extra pass); a wrapped c_fc (LoRA) runs its own forward
        if self.gelu.approximate == "tanh" and type(self.c_fc) is Linear:
            h = F.linear_gelu(x, self.c_fc.weight, self.c_fc.bias)
        else:  # the exact erf GELU stays a separate op
            h = self.gelu(self.c_fc(x))
        return self.dropout(self.c_proj(h))


class Block(Module):
    """A transformer block. norm='pre' (GPT-2): x + attn(ln_1(x)), then x + mlp(ln_2(x)).
    norm='post' (GPT-1): ln_1(x + attn(x)), then ln_2(x + mlp(x)). `moe` (a dict of MoE
    keyword arguments) makes the MLP a mixture of experts."""

    def __init__(self, n_embd: int, n_head: int, dropout: float = 0.0, bias: bool = True, norm: str = "pre",
                 window: int | None = None, n_layer: int = 1, gelu: str = "tanh", eps: float = 1e-5,
                 moe: dict | None = None):
        super().__init__()
        if norm not in ("pre", "post"):
            raise ValueError(f"Block: norm must be 'pre' or 'post', got {norm!r}")
        self.norm = norm
        proj_std = 0.02 / math.sqrt(2 * n_layer)  # GPT-2: residual projections scaled by 1/sqrt(2 * n_layer)
        self.ln_1 = LayerNorm(n_embd, bias=bias, eps=eps)
        self.attn = CausalSelfAttention(n_embd, n_head, dropout, bias, window, proj_std)
        self.ln_2 = LayerNorm(n_embd, bias=bias, eps=eps)
        if moe:  # a mixture of experts in place of the MLP (moe = MoE's n_expert, top_k, capacity_factor)
            self.mlp = MoE(n_embd, **moe, dropout=dropout, bias=bias, proj_std=proj_std, approximate=gelu)
        else:
            self.mlp = MLP(n_embd, dropout, bias, proj_std, approximate=gelu)

    def forward(self, x, kv_cache=None):
        if self.norm == "pre":
            # x = x + attn(ln_1(x)); h = ln_2(x), the add and ln_2 fused into one op
            a = self.attn(self.ln_1(x), kv_cache=kv_cache)
            x, h = F.add_layer_norm(x, a, self.ln_2.weight, self.ln_2.bias, self.ln_2.eps)
            return x + self.mlp(h)
        x = self.ln_1(x + self.attn(x, kv_cache=kv_cache))
        return self.ln_2(x + self.mlp(x))
