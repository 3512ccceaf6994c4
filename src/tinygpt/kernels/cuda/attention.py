"""attention and qkv_attention on CuPy arrays (csrc/cuda/attention.cu: flash attention, forward and
backward; the qkv variant reads c_attn's packed (B, T, 3C) output in place and writes the merged
(B, T, C) output and the packed dqkv directly, no split or merge copies)."""
from __future__ import annotations

import numpy as np

from . import arg, empty, integer, launch, probability, saved_tuple, seed64

LAUNCHERS = {"attention": ("attention_forward", "attention_backward"),
             "qkv_attention": ("qkv_attention_forward", "qkv_attention_backward")}
MAX_HEAD = 256  # largest q/k or v head size the CUDA kernels take


def _dims(op, q, k, v):
    """Checks q (..., Tq, D), k (..., Tk, D), v (..., Tk, Dv); returns (lead, BH, Tq, Tk, D, Dv)."""
    for name, a in (("q", q), ("k", k), ("v", v)):
        arg(f"{op}: {name}", a)
    if q.ndim < 2:
        raise ValueError(f"{op}: q must be (..., Tq, hs), got shape {tuple(q.shape)}")
    if k.ndim != q.ndim or k.shape[:-2] != q.shape[:-2] or k.shape[-1] != q.shape[-1]:
        raise ValueError(f"{op}: k must be (..., Tk, hs) with q's leading dims and head size, "
                         f"got q {tuple(q.shape)}, k {tuple(k.shape)}")
    if v.ndim != k.ndim or v.shape[:-1] != k.shape[:-1]:
        raise ValueError(f"{op}: v must match k {tuple(k.shape)} except in the last dim, got {tuple(v.shape)}")
    lead = tuple(q.shape[:-2])
    Tq, D = q.shape[-2:]
    Tk, Dv = k.shape[-2], v.shape[-1]
    if max(D, Dv) > MAX_HEAD:
        raise ValueError(f"{op}: head sizes up to {MAX_HEAD} are supported on CUDA, got q/k {D}, v {Dv}")
    return lead, int(np.prod(lead, dtype=np.int64)), Tq, Tk, D, Dv


def _qkv_dims(op, qkv, n_head):
    """Checks qkv (B, T, 3C); returns (B, T, n_head, hs)."""
    arg(f"{op}: qkv", qkv, ndim=3)
    n_head = integer(f"{op}: n_head", n_head)
    B, T, C3 = qkv.shape
    if n_head < 1 or C3 % (3 * n_head):
        raise ValueError(f"{op}: qkv's last dim {C3} must be 3 * n_embd with n_embd divisible by n_head {n_head}")
    hs = C3 // (3 * n_head)
    if hs > MAX_HEAD:
        raise ValueError(f"{op}: head sizes up to {MAX_HEAD} are supported on CUDA, got {hs}")
    return B, T, n_head, hs


def _window(op, window):
    if window is None:
        return None
    w = integer(f"{op}: window", window)
    if w < 1:
        raise ValueError(f"{op}: window must be None or a positive int, got {w}")
    return w


def _check_key_spans(op, Tq, Tk, causal, window):
    """Every query must see a key (reference.attention_mask); spans are monotone, so the first
    query (fewest keys behind it) and the last decide."""
    for i in sorted({0, Tq - 1}) if Tq > 0 else ():
        pos = Tk - Tq + i
        lo, hi = 0, Tk
        if causal:
            hi = min(hi, pos + 1)
        if window is not None:
            lo = max(lo, pos - window + 1)
            if not causal:
                hi = min(hi, pos + window)
        if lo >= hi:
            raise ValueError(f"{op}: query {i} (position {pos} of {Tk} keys) sees no key"
                             f"{' (causal attention needs Tq <= Tk)' if causal else ''}; its softmax would be undefined")


def _flags(op, Tq, Tk, causal, window, dropout_p, seed, seed_name="seed"):
    """(causal, window or None, dropout p, seed mod 2^64), checked; every query must see a key."""
    causal = bool(causal)
    w = _window(op, window)
    p = probability(f"{op}: dropout_p", dropout_p)
    s = seed64(f"{op}: {seed_name}", seed)
    _check_key_spans(op, Tq, Tk, causal, w)
    return causal, w, p, s


def _saved(op, grad, saved, out_shape, row_shape, Tq, Tk, dropout_p):
    """Backward's inputs from forward's saved 6-tuple: (out, row max, row sum), each checked against its
    shape (and grad against out's), and the flags."""
    out, row_max, row_sum, causal, window, seed = saved_tuple(
        op, saved, 6, f"the 6-tuple {op.replace('backward', 'forward')} returned")
    arg(f"{op}: grad", grad, shape=out_shape)
    arrays = (arg(f"{op}: saved out", out, shape=out_shape), arg(f"{op}: saved row max", row_max, shape=row_shape),
              arg(f"{op}: saved row sum", row_sum, shape=row_shape))
    return arrays, _flags(op, Tq, Tk, causal, window, dropout_p, seed, "saved seed")


def attention_forward(q, k, v, causal, window, dropout_p, seed, scale):
    """Flash attention; saved = (out, row max, row sum, causal, window, seed), as the CPU kernel."""
    op = "attention_forward"
    lead, BH, Tq, Tk, D, Dv = _dims(op, q, k, v)
    causal, w, p, s = _flags(op, Tq, Tk, causal, window, dropout_p, seed)
    out = empty(lead + (Tq, Dv))  # (..., Tq, Dv)
    row_max, row_sum = empty(lead + (Tq,)), empty(lead + (Tq,))
    launch(op, out, row_max, row_sum, q, k, v, BH, Tq, Tk, D, Dv, causal, w or 0, p, s, float(scale))
    return out, (out, row_max, row_sum, causal, w, s)


def attention_backward(grad, q, k, v, dropout_p, scale, saved):
    op = "attention_backward"
    lead, BH, Tq, Tk, D, Dv = _dims(op, q, k, v)
    (out, row_max, row_sum), (causal, w, p, s) = _saved(op, grad, saved, lead + (Tq, Dv), lead + (Tq,), Tq, Tk,
                                                        dropout_p)
    dq = empty(lead + (Tq, D))  # (..., Tq, D)
    dk = empty(lead + (Tk, D))  # (..., Tk, D)
    dv = empty(lead + (Tk, Dv))  # (..., Tk, Dv)
    drow = empty((max(BH * Tq, 1),))  # workspace: D = rowsum(grad * out)
    launch(op, dq, dk, dv, drow, grad, q, k, v, out, row_max, row_sum, BH, Tq, Tk, D, Dv, causal, w or 0, p, s,
           float(scale))
    return dq, dk, dv


def qkv_attention_forward(qkv, n_head, causal, window, dropout_p, seed, scale):
    """Flash attention on packed qkv; saved = (out, row max, row sum, causal, window, seed)."""
    op = "qkv_attention_forward"
    B, T, nh, hs = _qkv_dims(op, qkv, n_head)
    causal, w, p, s = _flags(op, T, T, causal, window, dropout_p, seed)
    out = empty((B, T, nh * hs))
    row_max, row_sum = empty((B, nh, T)), empty((B, nh, T))
    launch(op, out, row_max, row_sum, qkv, B, T, nh, hs, causal, w or 0, p, s, float(scale))
    return out, (out, row_max, row_sum, causal, w, s)


def qkv_attention_backward(grad, qkv, n_head, dropout_p, scale, saved):
    op = "qkv_attention_backward"
    B, T, nh, hs = _qkv_dims(op, qkv, n_head)
    (out, row_max, row_sum), (causal, w, p, s) = _saved(op, grad, saved, (B, T, nh * hs), (B, nh, T), T, T,
                                                        dropout_p)
    dqkv = empty(qkv.shape)
    drow = empty((max(B * nh * T, 1),))  # workspace: D = rowsum(grad * out)
    launch(op, dqkv, drow, grad, qkv, out, row_max, row_sum, B, T, nh, hs, causal, w or 0, p, s, float(scale))
    return dqkv
