"""The transformer blocks of a cached inference step, run on arrays without the autograd layer.

A decode step of GPT-2 124M is about 100 small ops per token. Through Module -> functional ->
Function.apply each costs about 5 us of Python beyond its kernel: about 1 ms per token, as long as
streaming the int4 weights takes (BENCHMARKS.md, issue 15). Under a KV cache there is no graph to
build (KVCache.check refuses grad mode), so `cached_blocks` calls the same kernels straight on the
arrays: tinygpt.kernels.select with the same arrays as the modules' ops, hence the same kernel and the
same numbers, bit for bit. Where that would run native CPU kernels only, the whole step is one native
call instead (the kernels op cached_blocks, csrc/cpu/decode.cpp, chaining the same C++ functions), which
takes the rest of the Python out of the step. tests/test_fastpath.py compares the three paths.

It covers the blocks this library builds, in eval mode: pre- or post-norm, a dense MLP (fused tanh
GELU or a separate one), Linear or QuantizedLinear projections, dense or banded attention. For
anything else (MoE, LoRA, a subclass of any of these, a module in training mode) it returns None
before touching the cache, and GPT.hidden_states runs the modules.
"""
from __future__ import annotations

import math

import numpy as np

from .. import kernels
from ..backend import xp as array_module
from ..kernels import policy
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

def _norm_arrays(ln):
    return ln.weight.data, None if ln.bias is None else ln.bias.data, ln.eps


def _linear_arrays(lin):
    """(weight, None, bias) of a Linear, (q, scale, bias) of a QuantizedLinear: csrc/cpu/decode.cpp's layout."""
    if type(lin) is Linear:
        return lin.weight.data, None, None if lin.bias is None else lin.bias.data
    q, s = lin._table()
    return q, s, lin.bias


def _native_step(blocks, x, cache):
    """The whole step as one native call (kernels op cached_blocks, csrc/cpu/decode.cpp), or None where the
    per-op path must run: native kernels off or absent, an array they do not take, or a float linear that
    kernels.policy gives to NumPy at this many rows (the per-op path would run the reference there)."""
    step = kernels.implementation("cached_blocks", "cpu") if kernels.native_enabled() else None
    if step is None or type(x) is not np.ndarray:  # host NumPy only (kernels._qualifies' device rule)
        return None
    layers = []
    for b in blocks:
        attn, mlp = b.attn, b.mlp
        lins = tuple(_linear_arrays(lin) for lin in (attn.c_attn, attn.c_proj, mlp.c_fc, mlp.c_proj))
        layers.append((b.norm == "pre", attn.n_head, attn.window, mlp.gelu.approximate == "tanh",
                       _norm_arrays(b.ln_1), _norm_arrays(b.ln_2)) + lins)
    rows = x.shape[0]
    if rows > 1 and any(s is None and not policy.linear_policy(rows, w.shape[1], w.shape[0])
                        for layer in layers for w, s, _ in layer[6:]):
        return None
    return step(x, layers, cache.k[:len(layers)], cache.v[:len(layers)], cache.batch_size, cache.length)


def cached_blocks(blocks, x, cache):
    """The output of `blocks` (a ModuleList of Block) for x (B, T, C) (an array: the embeddings of the next T
    tokens) against `cache` (a KVCache, which gets their keys and values; the caller advances it), or None
    when a block is one this path does not cover (the caller then runs the modules). One native call runs
    the whole step where it can (_native_step); otherwise each op runs through kernels.select as below."""
    if not all(_covered(b) for b in blocks):
        return None
    shape = x.shape
    x = array_module(x).ascontiguousarray(x.reshape(-1, shape[-1]))  # every op on (B T, C) rows
    y = _native_step(blocks, x, cache)
    if y is not None:
        return y.reshape(shape)
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
