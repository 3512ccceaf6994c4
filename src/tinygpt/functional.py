"""Fused differentiable GPT ops: one Function each, with a hand-written backward.

The maths lives in `tinygpt/kernels/` (reference arrays code or a native kernel, chosen
there); these Functions check their inputs, pick the kernel, and plumb gradients.
"""
from __future__ import annotations

import math

import numpy as np

from . import backend, kernels
from .kernels import reference
from . import random as _random
from .autograd import Function, is_grad_enabled
from .backend import xp as array_module
from .tensor import Tensor


def _contiguous(a):
    return a if a is None or a.flags.c_contiguous else array_module(a).ascontiguousarray(a)


def _check_floats(op, one_dtype=True, **arrays):
    """The named arrays (None skipped) must be floating point and (one_dtype) all of one dtype: bool or
    integer data, or float32 mixed with float64, is refused rather than silently promoted."""
    first, mixed = None, False
    for name, a in arrays.items():
        if a is None:
            continue
        dtype = a.dtype
        if dtype.kind != "f":
            raise TypeError(f"{op}: {name} must be a floating-point array, got dtype {dtype}")
        if first is None:
            first = dtype
        elif dtype != first:
            mixed = True
    if one_dtype and mixed:
        dtypes = ", ".join(f"{name} {a.dtype}" for name, a in arrays.items() if a is not None)
        raise TypeError(f"{op}: the inputs must have one dtype, got {dtypes} (convert them first, e.g. with .astype)")


def _check_rows(op, x):
    """x must have a last axis to work along, and a non-empty one."""
    if x.ndim < 1 or x.shape[-1] == 0:
        raise ValueError(f"{op}: input must have at least 1 dimension with a non-empty last axis, got shape {x.shape}")


# ----------------------------------------------------------------------------- linear
def _check_linear(op, x, weight, bias):
    _check_floats(op, input=x, weight=weight, bias=bias)
    if x.ndim < 1:
        raise ValueError(f"{op}: input must have at least 1 dimension (..., in), got a 0-d array")
    if weight.ndim != 2 or x.shape[-1] != weight.shape[1]:
        raise ValueError(f"{op}: input {x.shape} does not match weight (out, in) = {weight.shape}")
    if bias is not None and bias.shape != (weight.shape[0],):
        raise ValueError(f"{op}: bias must have shape ({weight.shape[0]},), got {bias.shape}")


class Linear(Function):
    op = "linear"  # the kernel op (LinearGELU reuses everything under "linear_gelu")

    @classmethod
    def forward(cls, ctx, x, weight, bias=None):
        _check_linear(cls.op, x, weight, bias)
        x = _contiguous(x)
        ctx.kernel = kernels.select(cls.op, x, weight, bias)
        y, saved = ctx.kernel.forward(x, weight, bias)
        ctx.save_for_backward(x, weight, saved)
        ctx.has_bias = bias is not None
        return y

    @staticmethod
    def backward(ctx, g):
        x, weight, saved = ctx.saved
        gx, gw, gb = ctx.kernel.backward(_contiguous(g), x, weight, ctx.has_bias, saved)
        return gx, gw, gb


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """y = x @ weight.T + bias, weight of shape (out, in) as PyTorch."""
    return Linear.apply(x, weight, bias)


class LinearGELU(Linear):
    """gelu_tanh(linear(x)): same arguments, saved values and backward shape as Linear."""
    op = "linear_gelu"


def linear_gelu(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """gelu(x @ weight.T + bias, approximate='tanh') in one fused op (the MLP's c_fc + GELU)."""
    return LinearGELU.apply(x, weight, bias)


# ----------------------------------------------------------------------------- embedding
def _check_range(kernel, bad, error) -> None:  # kernel: the Kernel that will run, or None
    """Raise error() when any of `bad` (a bool array over the ids) is set. Under the CUDA kernels the
    test stays on the device and is read with the next host read (backend.defer_check), so it never
    stalls a step: those kernels stay in bounds meanwhile (a NaN row / a NaN loss, never a stray read).
    The reference indexes with the ids, so it is checked first (on the GPU that waits for it)."""
    if kernel is not None and kernel.name == "native-cuda":
        backend.defer_check(bad.any(), error)
    elif bad.any():
        raise error()


def _check_ids(op, ids, n, kernel=None):
    if ids.dtype.kind not in "iu":
        raise TypeError(f"{op}: token ids must be integers, got dtype {ids.dtype}")
    if not ids.size:
        return

    def error():
        xp = array_module(ids)
        bad = xp.argwhere((ids < 0) | (ids >= n))
        if not len(bad):  # deferred, and the array was overwritten since
            return ValueError(f"{op}: a token id was out of range [0, {n})")
        pos = tuple(int(i) for i in bad[0])
        return ValueError(f"{op}: token id {int(ids[pos])} at position {pos} is out of range [0, {n})")

    _check_range(kernel, (ids < 0) | (ids >= n), error)


class Embedding(Function):
    @staticmethod
    def forward(ctx, ids, weight):
        ctx.kernel = kernels.select("embedding", ids, weight)
        _check_ids("embedding", ids, weight.shape[0], ctx.kernel)
        out, saved = ctx.kernel.forward(ids, weight)
        ctx.save_for_backward(ids, saved)
        ctx.weight_shape = weight.shape
        return out

    @staticmethod
    def backward(ctx, g):
        ids, saved = ctx.saved
        return None, ctx.kernel.backward(_contiguous(g), ids, ctx.weight_shape, saved)


def embedding(ids, weight: Tensor) -> Tensor:
    """Rows of `weight` (V, C) at integer `ids` (any shape) -> (*ids.shape, C)."""
    ids = ids.data if isinstance(ids, Tensor) else weight.xp.asarray(ids) if not hasattr(ids, "dtype") else ids
    return Embedding.apply(ids, weight)


# ----------------------------------------------------------------------------- layer_norm
class LayerNorm(Function):
    @staticmethod
    def forward(ctx, x, weight, bias, eps=1e-5):
        _check_floats("layer_norm", one_dtype=False, input=x, weight=weight, bias=bias)
        _check_rows("layer_norm", x)
        C = x.shape[-1]
        for name, p in (("weight", weight), ("bias", bias)):
            if p is not None and p.shape != (C,):
                raise ValueError(f"layer_norm: {name} must have shape ({C},) for input {x.shape}, got {p.shape}")
        x = _contiguous(x)
        ctx.kernel = kernels.select("layer_norm", x, weight, bias)
        y, saved = ctx.kernel.forward(x, weight, bias, eps)
        ctx.save_for_backward(x, weight, saved)
        return y

    @staticmethod
    def backward(ctx, g):
        x, weight, saved = ctx.saved
        gx, gw, gb = ctx.kernel.backward(_contiguous(g), x, weight, saved)
        return gx, gw, gb if ctx.needs_input_grad[2] else None


def layer_norm(x: Tensor, weight: Tensor | None = None, bias: Tensor | None = None, eps: float = 1e-5) -> Tensor:
    """LayerNorm over the last axis: (x - mean) / sqrt(var + eps) * weight + bias."""
    return LayerNorm.apply(x, weight, bias, eps=eps)


class AddLayerNorm(Function):
    """s = x + residual and y = layer_norm(s) in one pass; a two-output Function.

    `forward` returns the tuple (s, y), so `apply` returns two Tensors and `backward` gets
    (grad_s, grad_y) once both are complete (see the multi-output note in autograd.py).
    Either may be None: no gradient reached that output.
    """

    @staticmethod
    def forward(ctx, x, residual, weight, bias, eps=1e-5):
        if x.shape != residual.shape:
            raise ValueError(f"add_layer_norm: x {x.shape} and residual {residual.shape} must have the same shape")
        _check_floats("add_layer_norm", one_dtype=False, x=x, residual=residual, weight=weight, bias=bias)
        _check_rows("add_layer_norm", x)
        C = x.shape[-1]
        for name, p in (("weight", weight), ("bias", bias)):
            if p is not None and p.shape != (C,):
                raise ValueError(f"add_layer_norm: {name} must have shape ({C},) for input {x.shape}, got {p.shape}")
        x, residual = _contiguous(x), _contiguous(residual)
        ctx.kernel = kernels.select("add_layer_norm", x, residual, weight, bias)
        (s, y), saved = ctx.kernel.forward(x, residual, weight, bias, eps)
        ctx.save_for_backward(x, residual, weight, saved)
        return s, y

    @staticmethod
    def backward(ctx, grad_s, grad_y):
        x, residual, weight, saved = ctx.saved
        if grad_y is None:  # only the sum was used: d(x + residual) passes grad_s through
            return grad_s, grad_s, None, None
        gs = None if grad_s is None else _contiguous(grad_s)
        dx, dres, gw, gb = ctx.kernel.backward(gs, _contiguous(grad_y), x, residual, weight, saved)
        return dx, dres, gw, gb if ctx.needs_input_grad[3] else None


def add_layer_norm(x: Tensor, residual: Tensor, weight: Tensor | None = None, bias: Tensor | None = None,
                   eps: float = 1e-5) -> tuple[Tensor, Tensor]:
    """(x + residual, layer_norm(x + residual, weight, bias, eps)) as one fused op.

    The pre-norm block's `x = x + attn(...); h = ln_2(x)` in one pass over memory.
    """
    return AddLayerNorm.apply(x, residual, weight, bias, eps=eps)


# ----------------------------------------------------------------------------- gelu
class GELU(Function):
    @staticmethod
    def forward(ctx, x, approximate="tanh"):
        x = _contiguous(x)
        ctx.kernel = kernels.select("gelu", x)
        y, saved = ctx.kernel.forward(x, approximate)
        ctx.save_for_backward(x, saved)
        ctx.approximate = approximate
        return y

    @staticmethod
    def backward(ctx, g):
        x, saved = ctx.saved
        return ctx.kernel.backward(_contiguous(g), x, ctx.approximate, saved)


def gelu(x: Tensor, approximate: str = "tanh") -> Tensor:
    """GELU; approximate='tanh' (GPT-2's) or 'none' (exact, with erf)."""
    if approximate not in ("tanh", "none"):
        raise ValueError(f"gelu: approximate must be 'tanh' or 'none', got {approximate!r}")
    return GELU.apply(x, approximate=approximate)


# ----------------------------------------------------------------------------- softmax
def _last_axis(x, axis):
    """Whether `axis` is x's last axis: the only one the native (log_)softmax kernels handle."""
    return x.ndim > 0 and axis in (-1, x.ndim - 1)


class Softmax(Function):
    @staticmethod
    def forward(ctx, x, axis=-1):
        ctx.kernel = kernels.select("softmax", x, native_ok=_last_axis(x, axis))
        y, saved = ctx.kernel.forward(x, axis)
        ctx.save_for_backward(y, saved)
        ctx.axis = axis
        return y

    @staticmethod
    def backward(ctx, g):
        y, saved = ctx.saved
        return ctx.kernel.backward(_contiguous(g), y, ctx.axis, saved)


class LogSoftmax(Function):
    @staticmethod
    def forward(ctx, x, axis=-1):
        ctx.kernel = kernels.select("log_softmax", x, native_ok=_last_axis(x, axis))
        y, saved = ctx.kernel.forward(x, axis)
        ctx.save_for_backward(y, saved)
        ctx.axis = axis
        return y

    @staticmethod
    def backward(ctx, g):
        y, saved = ctx.saved
        return ctx.kernel.backward(_contiguous(g), y, ctx.axis, saved)


def softmax(x: Tensor, axis: int = -1) -> Tensor:
    return Softmax.apply(x, axis=axis)


def log_softmax(x: Tensor, axis: int = -1) -> Tensor:
    """log(softmax(x)), computed stably (finite for logits of magnitude 1e4 and beyond)."""
    return LogSoftmax.apply(x, axis=axis)


# ----------------------------------------------------------------------------- cross-entropy
def _check_targets(kernel, t, V, ignore_index):
    def error():
        now = (t != ignore_index) & ((t < 0) | (t >= V))
        if not bool(now.any()):  # deferred, and the array was overwritten since
            return ValueError(f"cross_entropy: a target was out of range [0, {V})")
        i = int(array_module(t).argmax(now))
        return ValueError(f"cross_entropy: target {int(t[i])} at flat position {i} is out of range [0, {V})")

    _check_range(kernel, (t != ignore_index) & ((t < 0) | (t >= V)), error)


class CrossEntropy(Function):
    @staticmethod
    def forward(ctx, logits, targets, ignore_index=-1):
        logits = _contiguous(logits)
        ctx.kernel = kernels.select("cross_entropy", logits, targets)
        _check_targets(ctx.kernel, targets, logits.shape[-1], ignore_index)
        loss, saved = ctx.kernel.forward(logits, targets, ignore_index)
        ctx.save_for_backward(logits, targets, saved)
        return loss

    @staticmethod
    def backward(ctx, g):
        logits, targets, saved = ctx.saved
        return ctx.kernel.backward(g, logits, targets, saved), None


def cross_entropy(logits: Tensor, targets, ignore_index: int = -1) -> Tensor:
    """Mean cross-entropy of logits (..., V) against integer targets (...), skipping ignore_index.

    When every target is ignore_index (a batch of padding only) the mean has no terms: the loss is
    nan, as PyTorch's, so the batch cannot pass for a perfect prediction in a log, and its gradient
    is exactly 0, also as PyTorch's, so backward and an optimiser step leave the weights finite
    (AdamW then only applies weight decay).
    """
    t = targets.data if isinstance(targets, Tensor) else targets
    t = t if hasattr(t, "dtype") else logits.xp.asarray(t)  # a list: onto the logits' device
    V = logits.shape[-1]
    if t.shape != logits.shape[:-1]:
        raise ValueError(f"cross_entropy: targets {t.shape} must have the shape of logits {logits.shape} without the last axis")
    if t.dtype.kind not in "iu":
        raise TypeError(f"cross_entropy: targets must be integers, got dtype {t.dtype}")
    t = t.reshape(-1)
    return CrossEntropy.apply(logits.reshape(-1, V), t.astype(np.int64, copy=False), ignore_index=ignore_index)


# ----------------------------------------------------------------------------- dropout
class Dropout(Function):
    @staticmethod
    def forward(ctx, x, p, seed):
        ctx.kernel = kernels.select("dropout", x)
        y, saved = ctx.kernel.forward(x, p, seed)
        ctx.saved = saved
        ctx.p = p
        return y

    @staticmethod
    def backward(ctx, g):
        return ctx.kernel.backward(g, ctx.p, ctx.saved), None, None


def _draw_seed(mask_shape) -> int:
    """One seed per dropout call from the global generator; inside `random.batch_rows(r0)` shifted so that
    a batch slice starting at global row r0 draws the global batch's mask rows (leading axis: batch)."""
    seed = int(_random.generator().integers(0, 2**63 - 1))
    offset = _random.row_offset()
    return seed if offset == 0 else reference.dropout_seed_for_rows(seed, mask_shape, offset)


def dropout(x: Tensor, p: float = 0.5, training: bool = True) -> Tensor:
    """Inverted dropout: zero each element with probability p, scale the rest by 1/(1-p).

    Each call draws one seed from the global generator (tg.manual_seed), and the mask is a
    function of that seed alone, so runs are reproducible.
    """
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout: p must be in [0, 1], got {p}")
    if not training or p == 0.0:
        return x
    if p == 1.0:
        return x * 0.0
    return Dropout.apply(x, p, _draw_seed(x.shape))


# ----------------------------------------------------------------------------- attention
class Attention(Function):
    @staticmethod
    def forward(ctx, q, k, v, causal=True, window=None, dropout_p=0.0, seed=0, scale=1.0):
        q, k, v = _contiguous(q), _contiguous(k), _contiguous(v)
        ctx.kernel = kernels.select("attention", q, k, v)
        out, saved = ctx.kernel.forward(q, k, v, causal, window, dropout_p, seed, scale)
        ctx.save_for_backward(q, k, v, saved)
        ctx.dropout_p, ctx.scale = dropout_p, scale
        return out

    @staticmethod
    def backward(ctx, g):
        q, k, v, saved = ctx.saved
        return ctx.kernel.backward(_contiguous(g), q, k, v, ctx.dropout_p, ctx.scale, saved)


class QKVAttention(Function):
    """Attention on c_attn's packed output: qkv (B, T, 3C) -> y (B, T, C), heads split and merged inside."""

    @staticmethod
    def forward(ctx, qkv, n_head, causal=True, window=None, dropout_p=0.0, seed=0, scale=1.0):
        qkv = _contiguous(qkv)
        ctx.kernel = kernels.select("qkv_attention", qkv)
        out, saved = ctx.kernel.forward(qkv, n_head, causal, window, dropout_p, seed, scale)
        ctx.save_for_backward(qkv, saved)
        ctx.n_head, ctx.dropout_p, ctx.scale = n_head, dropout_p, scale
        return out

    @staticmethod
    def backward(ctx, g):
        qkv, saved = ctx.saved
        return ctx.kernel.backward(_contiguous(g), qkv, ctx.n_head, ctx.dropout_p, ctx.scale, saved)


def qkv_attention(qkv: Tensor, n_head: int, causal: bool = True, dropout_p: float = 0.0, window: int | None = None,
                  scale: float | None = None) -> Tensor:
    """Multi-head self-attention on c_attn's output: qkv (B, T, 3C) holds q, k, v side by side.

    The same numbers as splitting qkv into (B, nh, T, hs) heads, scaled_dot_product_attention and
    merging the heads back into (B, T, C); the native CPU kernel reads q, k, v in place and writes
    the merged output directly, so neither the split nor the merge (nor their backward) copies.
    """
    if qkv.ndim != 3:
        raise ValueError(f"qkv_attention: qkv must be (B, T, 3 * n_embd), got shape {qkv.shape}")
    _check_floats("qkv_attention", qkv=qkv)
    if not isinstance(n_head, (int, np.integer)) or n_head < 1 or qkv.shape[-1] % (3 * n_head):
        raise ValueError(f"qkv_attention: qkv's last dim {qkv.shape[-1]} must be 3 * n_embd with n_embd "
                         f"divisible by n_head {n_head!r}")
    B, T = qkv.shape[0], qkv.shape[1]
    options = _attention_options("qkv_attention", window, dropout_p, scale, qkv.shape[-1] // (3 * n_head),
                                 (B, int(n_head), T, T))
    return QKVAttention.apply(qkv, n_head=int(n_head), causal=causal, **options)


def kv_attention(qkv: Tensor, k_cache, v_cache, start: int, n_head: int, dropout_p: float = 0.0,
                 window: int | None = None, scale: float | None = None) -> Tensor:
    """Causal attention of T new tokens against a KV cache (inference only: no gradient).

    qkv (B, T, 3C) is c_attn's output for positions start..start+T-1. Their keys and values are stored
    in k_cache, v_cache (B, n_head, max_length, hs) arrays in place; then the queries attend over
    positions 0..start+T-1 (within `window` for a banded layer). Returns (B, T, C), heads merged: the
    numbers of qkv_attention over the whole sequence, for the last T queries. The native CPU kernel
    reads the cache in place, so a step copies only the new rows (models.generation.KVCache uses it).
    """
    if isinstance(qkv, Tensor) and qkv.requires_grad and is_grad_enabled():
        raise RuntimeError("kv_attention: inference only (no gradient flows through the cache): run it under "
                           "tg.no_grad()")
    data = qkv.data if isinstance(qkv, Tensor) else qkv
    if data.ndim != 3:
        raise ValueError(f"kv_attention: qkv must be (B, T, 3 * n_embd), got shape {data.shape}")
    _check_floats("kv_attention", qkv=data, k_cache=k_cache, v_cache=v_cache)
    B, T, C3 = data.shape
    if not isinstance(n_head, (int, np.integer)) or n_head < 1 or C3 % (3 * n_head):
        raise ValueError(f"kv_attention: qkv's last dim {C3} must be 3 * n_embd with n_embd divisible by n_head "
                         f"{n_head!r}")
    hs = C3 // (3 * n_head)
    for name, c in (("k_cache", k_cache), ("v_cache", v_cache)):
        if c.ndim != 4 or c.shape[0] != B or c.shape[1] != n_head or c.shape[3] != hs:
            raise ValueError(f"kv_attention: {name} must be (B {B}, n_head {n_head}, max_length, head size {hs}), "
                             f"got shape {c.shape}")
        if backend.array_device(c) != backend.array_device(data):
            raise ValueError(f"kv_attention: {name} is on {backend.array_device(c)}, qkv on "
                             f"{backend.array_device(data)}")
    if v_cache.shape != k_cache.shape:
        raise ValueError(f"kv_attention: v_cache must have k_cache's shape {k_cache.shape}, got {v_cache.shape}")
    if not isinstance(start, (int, np.integer)) or start < 0 or start + T > k_cache.shape[2]:
        raise ValueError(f"kv_attention: {T} new tokens at position {start!r} do not fit the cache's "
                         f"{k_cache.shape[2]} positions")
    options = _attention_options("kv_attention", window, dropout_p, scale, hs, (B, int(n_head), T, int(start) + T))
    out = kernels.kv_attention(_contiguous(data), k_cache, v_cache, int(start), int(n_head), **options)
    return Tensor._wrap(out)


def scaled_dot_product_attention(q: Tensor, k: Tensor, v: Tensor, causal: bool = True, dropout_p: float = 0.0,
                                 window: int | None = None, scale: float | None = None) -> Tensor:
    """softmax(q k^T / sqrt(hs) + mask) v over (B, nh, T, hs) tensors.

    causal: each query sees only keys at or before its position (queries are aligned to the
    last positions when k is longer than q, as with a KV cache). window: also only the
    `window` most recent keys (GPT-3's local banded attention). dropout_p: dropout on the
    attention weights (pass 0 in evaluation).
    """
    if q.ndim < 2 or q.ndim != k.ndim or k.ndim != v.ndim:
        raise ValueError(f"scaled_dot_product_attention: q {q.shape}, k {k.shape}, v {v.shape} must all be (..., T, hs)")
    if q.shape[:-2] != k.shape[:-2] or k.shape[:-1] != v.shape[:-1] or q.shape[-1] != k.shape[-1]:
        raise ValueError(
            f"scaled_dot_product_attention: shapes q {q.shape}, k {k.shape}, v {v.shape} do not match "
            "(need the same batch/head dims, q and k the same head size, k and v the same length)"
        )
    _check_floats("scaled_dot_product_attention", q=q, k=k, v=v)
    if causal and q.shape[-2] > k.shape[-2]:
        raise ValueError(f"scaled_dot_product_attention: causal attention needs Tq <= Tk, got {q.shape[-2]} > {k.shape[-2]}")
    options = _attention_options("scaled_dot_product_attention", window, dropout_p, scale, q.shape[-1],
                                 q.shape[:-1] + (k.shape[-2],))
    return Attention.apply(q, k, v, causal=causal, **options)


def _attention_options(op, window, dropout_p, scale, hs, mask_shape) -> dict:
    """The checked window, dropout_p, scale (default 1/sqrt(hs)) and a drawn dropout seed of an attention call
    (whose mask has `mask_shape`, (..., Tq, Tk))."""
    if hs < 1 and scale is None:  # size-0 heads: every score is 0, fine with a given scale
        raise ValueError(f"{op}: the head size is 0, so the default scale 1/sqrt(head size) is undefined; "
                         "use a head size >= 1 (n_embd >= n_head) or pass scale")
    if window is not None and (not isinstance(window, (int, np.integer)) or window < 1):
        raise ValueError(f"{op}: window must be a positive int, got {window!r}")
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"{op}: dropout_p must be in [0, 1), got {dropout_p}")
    return dict(window=None if window is None else int(window), dropout_p=float(dropout_p),
                seed=_draw_seed(mask_shape) if dropout_p > 0.0 else 0,
                scale=1.0 / math.sqrt(hs) if scale is None else float(scale))
