"""The transformer Block: attention and an MLP (or a mixture of experts), pre- or post-norm."""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

from .. import functional as F
from .attention import CausalSelfAttention
from .layers import LayerNorm
from .mlp import MLP
from .module import Module
from .moe import MoE

if TYPE_CHECKING:  # models imports nn, so nn reads the config without importing models
    from ..models.config import GPTConfig


class Block(Module):
    """Layer `layer` of the model that `config` (a GPTConfig) describes.

    norm='pre' (GPT-2): x + attn(ln_1(x)), then x + mlp(ln_2(x)).
    norm='post' (GPT-1): ln_1(x + attn(x)), then ln_2(x + mlp(x)).
    The layer index picks this layer's attention band (config.layer_window) and whether its
    MLP is a mixture of experts (config.layer_moe).
    """

    def __init__(self, config: GPTConfig, layer: int = 0):
        super().__init__()
        c = config
        if not hasattr(c, "layer_window"):
            raise TypeError(f"Block: config must be a GPTConfig (Block(config, layer)), got {type(c).__name__}")
        if not isinstance(layer, int) or isinstance(layer, bool) or not 0 <= layer < c.n_layer:
            raise ValueError(f"Block: layer must be an int in [0, n_layer {c.n_layer}), got {layer!r}")
        self.norm = c.norm
        proj_std = 0.02 / math.sqrt(2 * c.n_layer)  # GPT-2: residual projections scaled by 1/sqrt(2 * n_layer)
        self.ln_1 = LayerNorm(c.n_embd, bias=c.bias, eps=c.layer_norm_eps)
        self.attn = CausalSelfAttention(c.n_embd, c.n_head, dropout=c.dropout, bias=c.bias,
                                        window=c.layer_window(layer), proj_std=proj_std)
        self.ln_2 = LayerNorm(c.n_embd, bias=c.bias, eps=c.layer_norm_eps)
        moe = c.layer_moe(layer)  # MoE's n_expert, top_k, capacity_factor, or None for a dense MLP
        if moe:
            self.mlp = MoE(c.n_embd, **moe, dropout=c.dropout, bias=c.bias, proj_std=proj_std, approximate=c.gelu)
        else:
            self.mlp = MLP(c.n_embd, dropout=c.dropout, bias=c.bias, proj_std=proj_std, approximate=c.gelu)

    def forward(self, x, kv_cache=None):
        if self.norm == "pre":
            # x = x + attn(ln_1(x)); h = ln_2(x), the add and ln_2 fused into one op
            a = self.attn(self.ln_1(x), kv_cache=kv_cache)
            x, h = F.add_layer_norm(x, a, self.ln_2.weight, self.ln_2.bias, self.ln_2.eps)
            return x + self.mlp(h)
        x = self.ln_1(x + self.attn(x, kv_cache=kv_cache))
        return self.ln_2(x + self.mlp(x))
