"""The transformer blocks of a cached inference step, run on arrays without the autograd layer.

A decode step of GPT-2 124M is about 100 small ops per token. Through Module -> functional ->
Function.apply each costs about 5 us of Python beyond its kernel: about 1 ms per token, as long as
streaming the int4 weights takes (BENCHMARKS.md, issue 15). Under a KV cache there is no graph to
build (KVCache.check refuses grad mode), so `cached_blocks` calls the same kernels straight on the
arrays: tinygpt.kernels.select with the same arrays as the modules' ops, hence the same kernel and the
same numbers, bit for bit (tests/test_fastpath.py compares the two paths).

It covers the blocks this library builds, in eval mode: pre- or post-norm, a dense MLP (fused tanh
GELU or a separate one), Linear or QuantizedLinear projections, dense or banded attention. For
anything else (MoE, LoRA, a subclass of any of these, a module in training mode) it returns None
before touching the cache, and GPT.hidden_states runs the modules.
"""
from __future__ import annotations

import math

from .. import kernels
from ..backend import xp as array_module
from ..nn import GELU, MLP, Block, CausalSelfAttention, Dropout, LayerNorm, Linear
from ..quantize import QuantizedLinear, quantized_linear


def _linear(lin, x, gelu: bool = False):
    """lin(x) (gelu: gelu_tanh(lin(x)) fused) as F.linear / F.linear_gelu / QuantizedLinear run it."""
    if type(lin) is Linear:
        w, b = lin.weight.data, None if lin.bias is None else lin.bias.data
        return kernels.select("linear_gelu" if gelu else "linear", x, w, b).forward(x, w, b)[0]
    q, s = lin._table()
    return quantized_linear(x, q, s, lin.bias, bits=lin.bits, gelu=gelu, block_rows=lin.block_rows)


def _layer_norm(ln, x):
    w, b = ln.weight.data, None if ln.bias is None else ln.bias.data
    return kernels.select("layer_norm", x, w, b).forward(x, w, b, ln.eps)[0]


def _attention(attn, x, cache, i):
    """attn(x) with layer i's view of the cache: c_attn, kv_attention (stores the new keys and values), c_proj."""
    B, C = cache.batch_size, attn.n_embd
    qkv = _linear(attn.c_attn, x).reshape(B, -1, 3 * C)  # (B T, 3C) -> (B, T, 3C)
    y = kernels.kv_attention(qkv, cache.k[i], cache.v[i], cache.length, attn.n_head, window=attn.window,
                             dropout_p=0.0, seed=0, scale=1.0 / math.sqrt(C // attn.n_head))
    return _linear(attn.c_proj, y.reshape(-1, C))


def _mlp(mlp, x):
    if mlp.gelu.approximate == "tanh":
        h = _linear(mlp.c_fc, x, gelu=True)
    else:  # the exact erf GELU is a separate op, as in MLP.forward
        h = _linear(mlp.c_fc, x)
        h = kernels.select("gelu", h).forward(h, mlp.gelu.approximate)[0]
    return _linear(mlp.c_proj, h)


def _covered(block) -> bool:
    """Whether `block` is exactly what this module reproduces (every type exact, nothing in training mode)."""
    if type(block) is not Block:
        return False
    attn, mlp = block.attn, block.mlp
    linears = (attn.c_attn, attn.c_proj, mlp.c_fc, mlp.c_proj)
    if any(type(lin) is not Linear and type(lin) is not QuantizedLinear for lin in linears):
        return False
    parts = ((block.ln_1, LayerNorm), (block.ln_2, LayerNorm), (attn, CausalSelfAttention), (mlp, MLP),
             (mlp.gelu, GELU), (attn.resid_dropout, Dropout), (mlp.dropout, Dropout))
    return (not block.training and all(type(m) is cls and not m.training for m, cls in parts)
            and not any(lin.training for lin in linears))

def cached_blocks(blocks, x, cache):
    """The output of `blocks` (a ModuleList of Block) for x (B, T, C) (an array: the embeddings of the next T
    tokens) against `cache` (a KVCache, which gets their keys and values; the caller advances it), or None
    when a block is one this path does not cover (the caller then runs the modules)."""
    if not all(_covered(b) for b in blocks):
        return None
    shape = x.shape
    x = array_module(x).ascontiguousarray(x.reshape(-1, shape[-1]))  # every op on (B T, C) rows
    for i, b in enumerate(blocks):
        if b.norm == "pre":  # x + attn(ln_1(x)); then ln_2 of it in the same op; then x + mlp(ln_2(x))
            a = _attention(b.attn, _layer_norm(b.ln_1, x), cache, i)
            w, bias = b.ln_2.weight.data, None if b.ln_2.bias is None else b.ln_2.bias.data
            (x, h), _ = kernels.select("add_layer_norm", x, a, w, bias).forward(x, a, w, bias, b.ln_2.eps)
            x = x + _mlp(b.mlp, h)
        else:  # post-norm (GPT-1): ln_1(x + attn(x)), then ln_2(x + mlp(x))
            x = _layer_norm(b.ln_1, x + _attention(b.attn, x, cache, i))
            x = _layer_norm(b.ln_2, x + _mlp(b.mlp, x))
    return x.reshape(shape)
