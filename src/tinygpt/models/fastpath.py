"""A cached inference step of GPT, run on arrays without the autograd layer.

A decode step of GPT-2 124M is about 100 small ops per token. Through Module -> functional ->
Function.apply each costs about 5 us of Python beyond its kernel: about 1 ms per token, as long as
streaming the int4 weights takes (BENCHMARKS.md, issue 15). Under a KV cache there is no graph to
build (KVCache.check refuses grad mode), so this module runs the same kernels straight on the arrays,
with the same numbers as the modules, bit for bit (tests/test_fastpath.py compares every path):

  cached_logits  token ids -> the last position's logits in one native call (the kernels op of that name,
                 csrc/cpu/decode.cpp): embeddings, blocks, final LayerNorm and head. generation.next_logits
                 (GPT.generate, GPT.stream) tries it first.
  cached_blocks  the blocks inside GPT.hidden_states(idx, kv_cache=...): one native call (cached_blocks)
                 where it covers them, else each op through tinygpt.kernels.select, as the modules would.

The native calls chain the same C++ functions as the per-op bindings (csrc/cpu/ops.h), and run where the
modules would run native kernels only: host NumPy arrays the kernels take, and float linears at row
counts where kernels.policy picks the native GEMM (every one-row decode step). Both cover the blocks this
library builds, in eval mode: pre- or post-norm, a dense MLP (fused tanh GELU or a separate erf one),
Linear or QuantizedLinear projections, dense or banded attention. For anything else (MoE, LoRA, a subclass
of any of these, a module in training mode) they return None before touching the cache, and the caller
runs the modules.
"""
from __future__ import annotations

import math

import numpy as np

from .. import kernels
from ..backend import xp as array_module
from ..kernels import policy
from ..nn import GELU, MLP, Block, CausalSelfAttention, Dropout, Embedding, LayerNorm, Linear
from ..quantize import QuantizedEmbedding, QuantizedLinear, quantized_linear


def _norm_arrays(ln):
    """(weight, bias or None, eps) of a LayerNorm: csrc/cpu/decode.cpp's layout."""
    return ln.weight.data, None if ln.bias is None else ln.bias.data, ln.eps


def _linear_arrays(lin):
    """(weight, None, bias) of a Linear, (q, scale, bias) of a QuantizedLinear: csrc/cpu/decode.cpp's layout."""
    if type(lin) is Linear:
        return lin.weight.data, None, None if lin.bias is None else lin.bias.data
    q, s = lin._table()
    return q, s, lin.bias


def _linear(lin, x, gelu: bool = False):
    """lin(x) (gelu: gelu_tanh(lin(x)) fused) as F.linear / F.linear_gelu / QuantizedLinear run it."""
    w, s, b = _linear_arrays(lin)
    if s is None:
        return kernels.select("linear_gelu" if gelu else "linear", x, w, b).forward(x, w, b)[0]
    return quantized_linear(x, w, s, b, bits=lin.bits, gelu=gelu, block_rows=lin.block_rows)


def _layer_norm(ln, x, residual=None):
    """ln(x), or with `residual` (x + residual, ln(x + residual)) in one op, as F.layer_norm / F.add_layer_norm."""
    w, b, eps = _norm_arrays(ln)
    if residual is None:
        return kernels.select("layer_norm", x, w, b).forward(x, w, b, eps)[0]
    return kernels.select("add_layer_norm", x, residual, w, b).forward(x, residual, w, b, eps)[0]


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


def _layer(block):
    """`block`'s arrays and options as csrc/cpu/decode.cpp takes them, or None when the block is not exactly what
    this module reproduces (every type exact, nothing in training mode)."""
    if type(block) is not Block or block.training:
        return None
    attn, mlp = block.attn, block.mlp
    linears = (attn.c_attn, attn.c_proj, mlp.c_fc, mlp.c_proj)
    for lin in linears:
        if (type(lin) is not Linear and type(lin) is not QuantizedLinear) or lin.training:
            return None
    for m, cls in ((block.ln_1, LayerNorm), (block.ln_2, LayerNorm), (attn, CausalSelfAttention), (mlp, MLP),
                   (mlp.gelu, GELU), (attn.resid_dropout, Dropout), (mlp.dropout, Dropout)):
        if type(m) is not cls or m.training:
            return None
    return (block.norm == "pre", attn.n_head, attn.window, mlp.gelu.approximate == "tanh", _norm_arrays(block.ln_1),
            _norm_arrays(block.ln_2)) + tuple(_linear_arrays(lin) for lin in linears)


def _native_rows(layers, rows: int, head=None) -> bool:
    """Whether kernels.policy gives every float linear of the `_layer` tuples (at `rows` rows) and of the head
    ((rows, weight, scale), at its own row count) to the native GEMM, as the modules would run them."""
    if rows <= 1 and (head is None or head[0] <= 1):  # a one-row decode step: always (policy.linear_policy)
        return True
    linears = [(rows, w, s) for layer in layers for w, s, _ in layer[6:]] + ([head] if head is not None else [])
    return all(s is not None or policy.linear_policy(n, w.shape[1], w.shape[0]) for n, w, s in linears)


def _native_step(layers, x, cache):
    """The whole step as one native call (kernels op cached_blocks, csrc/cpu/decode.cpp) on the `_layer` tuples,
    or None where the per-op path must run: native kernels off or absent, an array they do not take, or a float
    linear that kernels.policy gives to NumPy at this many rows (the per-op path would run the reference there)."""
    step = kernels.implementation("cached_blocks", "cpu") if kernels.native_enabled() else None
    if step is None or type(x) is not np.ndarray or not _native_rows(layers, x.shape[0]):
        return None  # (host NumPy only: kernels._qualifies' device rule)
    return step(x, layers, cache.k[:len(layers)], cache.v[:len(layers)], cache.batch_size, cache.length)


def cached_blocks(blocks, x, cache):
    """The output of `blocks` (a ModuleList of Block) for x (B, T, C) (an array: the embeddings of the next T
    tokens) against `cache` (a KVCache, which gets their keys and values; the caller advances it), or None
    when a block is one this path does not cover (the caller then runs the modules). One native call runs
    the whole step where it can (_native_step); otherwise each op runs through kernels.select as below."""
    layers = [_layer(b) for b in blocks]
    if None in layers:
        return None
    shape = x.shape
    x = array_module(x).ascontiguousarray(x.reshape(-1, shape[-1]))  # every op on (B T, C) rows
    y = _native_step(layers, x, cache)
    if y is not None:
        return y.reshape(shape)
    for i, b in enumerate(blocks):
        if b.norm == "pre":  # x + attn(ln_1(x)); then ln_2 of it in the same op; then x + mlp(ln_2(x))
            x, h = _layer_norm(b.ln_2, x, _attention(b.attn, _layer_norm(b.ln_1, x), cache, i))
            x = x + _mlp(b.mlp, h)
        else:  # post-norm (GPT-1): ln_1(x + attn(x)), then ln_2(x + mlp(x))
            x = _layer_norm(b.ln_1, x + _attention(b.attn, x, cache, i))
            x = _layer_norm(b.ln_2, x + _mlp(b.mlp, x))
    return x.reshape(shape)


def _table_arrays(emb):
    """An embedding table laid out as a linear's weight (decode.cpp): (table, None, None) of an Embedding or a float
    position table, (q, scale, None) of a QuantizedEmbedding; None for anything else."""
    if type(emb) is Embedding:
        return emb.weight.data, None, None
    if type(emb) is QuantizedEmbedding:
        return (*emb._table(), None)
    return (emb, None, None) if type(emb) is np.ndarray else None  # sinusoidal positions: a buffer


def cached_logits(model, idx, cache):
    """float32 logits (B, vocab) of the last of the T tokens idx (B, T) that follow the cache's, as
    model.lm_head(model.hidden_states(idx, kv_cache=cache)[:, -1]) computes them (bit for bit), from one native
    call (kernels op cached_logits: embeddings, every block, the final LayerNorm and the head); the cache gets
    their keys and values and advances. None, with the cache untouched, where that call does not cover the
    model (anything but a GPT of this library's modules in eval mode, native kernels off, an array they do not
    take, a float linear that kernels.policy gives to NumPy at this many rows): run the modules then."""
    from .gpt import GPT  # noqa: PLC0415 - gpt imports this module

    if type(model) is not GPT or model.training or not kernels.native_enabled():
        return None
    step = kernels.implementation("cached_logits", "cpu")
    tr = model.transformer
    if step is None or type(tr.drop) is not Dropout or tr.drop.training:
        return None
    ln_f = tr.ln_f if model.config.final_norm else None
    if ln_f is not None and (type(ln_f) is not LayerNorm or ln_f.training):
        return None
    head, wte, wpe = model.lm_head, _table_arrays(tr.wte), _table_arrays(tr.wpe)
    if (type(head) is not Linear and type(head) is not QuantizedLinear) or head.training or wte is None or wpe is None:
        return None
    ids = model._check_idx(model._on_device(idx, "idx"))
    if type(ids) is not np.ndarray:  # a model on the GPU: hidden_states runs its per-op path
        return None
    layers = [_layer(b) for b in tr.h]
    if None in layers:
        return None
    B, T = ids.shape
    cache.check(B, T, len(layers))
    head_arrays = _linear_arrays(head)
    if not _native_rows(layers, B * T, head=(B, *head_arrays[:2])):
        return None
    logits = step(np.ascontiguousarray(ids, dtype=np.int64), wte, wpe, layers,
                  None if ln_f is None else _norm_arrays(ln_f), head_arrays, cache.k, cache.v, cache.length)
    if logits is not None:
        cache.advance(T)
    return logits
