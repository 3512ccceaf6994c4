"""CUDA kernels behind the reference signatures, for CuPy arrays.

`tinygpt.kernels.select(op, *arrays)` hands cupy arrays to `<op>_forward` / `<op>_backward`
here when `tinygpt._C.cuda` has the launchers they need; these functions have exactly the
signatures of `reference.<op>_forward` / `reference.<op>_backward` (arrays in, `(out, saved)`
out), so a Function never knows which implementation ran.

Every wrapper (one section per kernel family, same order as csrc/cuda/<family>.cu):
  1. checks its arrays with `_arg` (device, dtype, shape, C-contiguity; the error names the
     argument),
  2. allocates outputs and workspaces with `_empty` (CuPy's memory pool; the C++/CUDA side
     never allocates),
  3. calls the launcher in `tinygpt._C.cuda` with raw device pointers (`a.data.ptr`) and CuPy's
     current stream (`_stream()`): nothing synchronises, the launcher checks the launch error.
"""
from __future__ import annotations

import numbers
import operator

import numpy as np

from .. import backend

try:
    from .. import _C as _native  # noqa: F401 - optional extension
    _cuda = getattr(_native, "cuda", None)
except ImportError:
    _cuda = None

# op name -> the launchers in tinygpt._C.cuda its wrappers call; an op is offered to the
# dispatcher only when the extension was built with all of them (see `has`).
LAUNCHERS: dict[str, tuple[str, ...]] = {}


def has(op: str) -> bool:
    """True when `op` has CUDA wrappers here and the extension has every launcher they use."""
    names = LAUNCHERS.get(op)
    return bool(names) and _cuda is not None and all(hasattr(_cuda, n) for n in names)


def _stream() -> int:
    """CuPy's current stream as the raw handle the launchers take."""
    return backend.cupy().cuda.get_current_stream().ptr


def _empty(shape, dtype=np.float32):
    """An uninitialised device array from CuPy's memory pool."""
    return backend.cupy().empty(shape, dtype=dtype)


def _arg(name: str, a, *, shape=None, dtype=np.float32, ndim=None) -> int:
    """Check one argument and return its device pointer; errors name the argument."""
    cp = backend.cupy()
    if not isinstance(a, cp.ndarray):
        raise TypeError(f"{name}: expected a cupy array on the GPU, got {type(a).__name__}")
    if dtype is not None and a.dtype != np.dtype(dtype):
        raise TypeError(f"{name}: expected dtype {np.dtype(dtype)}, got {a.dtype}")
    if ndim is not None and a.ndim != ndim:
        raise ValueError(f"{name}: expected {ndim} dimensions, got shape {tuple(a.shape)}")
    if shape is not None and tuple(a.shape) != tuple(shape):
        raise ValueError(f"{name}: expected shape {tuple(shape)}, got {tuple(a.shape)}")
    if not a.flags.c_contiguous:
        raise ValueError(f"{name}: expected a C-contiguous array")
    if a.device.id != cp.cuda.Device().id:
        raise ValueError(f"{name}: array is on GPU {a.device.id}, the current device is {cp.cuda.Device().id}")
    return a.data.ptr


# ----------------------------------------------------------------------------- kernel families
# (each family appends its section below: LAUNCHERS["<op>"] = (...), <op>_forward, <op>_backward)


# ----------------------------------------------------------------------------- shared argument helpers (cuattn)
def _int(name: str, value) -> int:
    """A Python integer from anything with __index__; errors name the argument."""
    try:
        return operator.index(value)
    except TypeError:
        raise TypeError(f"{name}: expected an int, got {type(value).__name__}") from None


def _seed64(name: str, seed) -> int:
    """The seed taken mod 2^64, as reference.dropout_mask does."""
    return _int(name, seed) % (1 << 64)


def _probability(name: str, p) -> float:
    p = float(p)
    if not 0.0 <= p < 1.0:
        raise ValueError(f"{name}: must be in [0, 1), got {p}")
    return p


# ----------------------------------------------------------------------------- softmax (csrc/cuda/softmax.cu)
LAUNCHERS["softmax"] = ("softmax_forward", "softmax_backward")
LAUNCHERS["log_softmax"] = ("log_softmax_forward", "log_softmax_backward")


def _rows(op: str, what: str, x, axis) -> tuple[int, int, int]:
    """(pointer, rows, C) of x viewed as (rows, C); only the last axis is supported."""
    ptr = _arg(f"{op}: {what}", x)
    if x.ndim < 1:
        raise ValueError(f"{op}: {what} must have at least 1 dimension, got shape {tuple(x.shape)}")
    if axis not in (-1, x.ndim - 1):
        raise ValueError(f"{op}: axis must be the last axis (-1 or {x.ndim - 1}), got {axis} "
                         "(tinygpt.kernels.select sends other axes to the reference)")
    C = x.shape[-1]
    return ptr, (x.size // C if C else 0), C


def _softmax_fwd(op, x, axis):
    xp, rows, C = _rows(op, "x", x, axis)
    y = _empty(x.shape)
    getattr(_cuda, op)(y.data.ptr, xp, rows, C, _stream())
    return y, ()


def _softmax_bwd(op, grad, y, axis):
    yp, rows, C = _rows(op, "y", y, axis)
    gp = _arg(f"{op}: grad", grad, shape=y.shape)
    dx = _empty(y.shape)
    getattr(_cuda, op)(dx.data.ptr, gp, yp, rows, C, _stream())
    return dx


def softmax_forward(x, axis):
    return _softmax_fwd("softmax_forward", x, axis)


def softmax_backward(grad, y, axis, saved):
    return _softmax_bwd("softmax_backward", grad, y, axis)


def log_softmax_forward(x, axis):
    return _softmax_fwd("log_softmax_forward", x, axis)


def log_softmax_backward(grad, y, axis, saved):
    return _softmax_bwd("log_softmax_backward", grad, y, axis)


# ----------------------------------------------------------------------------- cross-entropy (csrc/cuda/cross_entropy.cu)
LAUNCHERS["cross_entropy"] = ("cross_entropy_forward", "cross_entropy_backward")


def cross_entropy_forward(logits, targets, ignore_index):
    """Mean NLL of logits (N, V) float32 against int64 targets (N,), skipping ignore_index.

    Returns (loss 0-d float32, saved = (row_max, row_logsum, ignore_index, count)); count is a
    0-d int64 device array, so nothing waits for the GPU. Targets outside [0, V) that are not
    ignore_index make the loss nan (F.cross_entropy rejects them before any kernel runs).
    """
    op = "cross_entropy_forward"
    lp = _arg(f"{op}: logits", logits, ndim=2)
    N, V = logits.shape
    if V < 1:
        raise ValueError(f"{op}: logits must have at least one class, got shape {tuple(logits.shape)}")
    tp = _arg(f"{op}: targets", targets, shape=(N,), dtype=np.int64)
    ignore = _int(f"{op}: ignore_index", ignore_index)
    loss, count = _empty(()), _empty((), np.int64)
    row_max, row_logsum = _empty((N,)), _empty((N,))
    row_loss = _empty((max(N, 1),), np.float64)  # workspace: per-row losses, summed in a fixed order
    _cuda.cross_entropy_forward(loss.data.ptr, count.data.ptr, row_max.data.ptr, row_logsum.data.ptr,
                                row_loss.data.ptr, lp, tp, N, V, ignore, _stream())
    return loss, (row_max, row_logsum, ignore, count)


def cross_entropy_backward(grad, logits, targets, saved):
    op = "cross_entropy_backward"
    cp = backend.cupy()
    real = isinstance(grad, numbers.Real) or getattr(getattr(grad, "dtype", None), "kind", "") in ("f", "i", "u")
    # a cupy 0-d array stays on the device (no host round trip); numbers are copied up. (No
    # ascontiguousarray: NumPy's turns 0-d into 1-d, and a 0-d array is contiguous anyway.)
    g = cp.asarray(grad, dtype=cp.float64) if real else None
    if g is None or g.ndim != 0:
        raise ValueError(f"{op}: grad must be a 0-d real array or number (the loss's gradient), "
                         f"got {type(grad).__name__} of shape {getattr(grad, 'shape', ())}")
    lp = _arg(f"{op}: logits", logits, ndim=2)
    N, V = logits.shape
    tp = _arg(f"{op}: targets", targets, shape=(N,), dtype=np.int64)
    if not isinstance(saved, tuple) or len(saved) != 4:
        raise ValueError(f"{op}: saved must be the 4-tuple cross_entropy_forward returned")
    row_max, row_logsum, ignore, count = saved
    mp = _arg(f"{op}: saved[0] (row max)", row_max, shape=(N,))
    sp = _arg(f"{op}: saved[1] (row log-sum)", row_logsum, shape=(N,))
    cntp = _arg(f"{op}: saved[3] (count)", count, shape=(), dtype=np.int64)
    dlogits = _empty((N, V))
    _cuda.cross_entropy_backward(dlogits.data.ptr, lp, tp, mp, sp, g.data.ptr, cntp, N, V,
                                 _int(f"{op}: saved[2] (ignore_index)", ignore), _stream())
    return dlogits


# ----------------------------------------------------------------------------- dropout (csrc/cuda/dropout.cu)
LAUNCHERS["dropout"] = ("dropout_forward", "dropout_backward")


def dropout_forward(x, p, seed):
    """Inverted dropout; saved = (seed mod 2^64, shape): backward regenerates the mask."""
    op = "dropout_forward"
    xp = _arg(f"{op}: x", x)
    p = _probability(f"{op}: p", p)
    s = _seed64(f"{op}: seed", seed)
    y = _empty(x.shape)
    _cuda.dropout_forward(y.data.ptr, xp, x.size, p, s, _stream())
    return y, (s, tuple(x.shape))


def dropout_backward(grad, p, saved):
    op = "dropout_backward"
    if not isinstance(saved, tuple) or len(saved) != 2:
        raise ValueError(f"{op}: saved must be the (seed, shape) from dropout_forward")
    seed, shape = saved
    gp = _arg(f"{op}: grad", grad, shape=shape)
    p = _probability(f"{op}: p", p)
    dx = _empty(grad.shape)
    _cuda.dropout_backward(dx.data.ptr, gp, grad.size, p, _seed64(f"{op}: saved seed", seed), _stream())
    return dx


# ----------------------------------------------------------------------------- attention (csrc/cuda/attention.cu)
LAUNCHERS["attention"] = ("attention_forward", "attention_backward")
ATTENTION_MAX_HEAD = 256  # largest q/k or v head size the CUDA kernels take


def _attention_dims(op, q, k, v):
    """Checks q (..., Tq, D), k (..., Tk, D), v (..., Tk, Dv); returns (lead, BH, Tq, Tk, D, Dv)."""
    for name, a in (("q", q), ("k", k), ("v", v)):
        _arg(f"{op}: {name}", a)
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
    if max(D, Dv) > ATTENTION_MAX_HEAD:
        raise ValueError(f"{op}: head sizes up to {ATTENTION_MAX_HEAD} are supported on CUDA, got q/k {D}, v {Dv}")
    return lead, int(np.prod(lead, dtype=np.int64)), Tq, Tk, D, Dv


def _window(op, window):
    if window is None:
        return None
    w = _int(f"{op}: window", window)
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


def attention_forward(q, k, v, causal, window, dropout_p, seed, scale):
    """Flash attention; saved = (out, row max, row sum, causal, window, seed), as the CPU kernel."""
    op = "attention_forward"
    lead, BH, Tq, Tk, D, Dv = _attention_dims(op, q, k, v)
    causal = bool(causal)
    w = _window(op, window)
    p = _probability(f"{op}: dropout_p", dropout_p)
    s = _seed64(f"{op}: seed", seed)
    _check_key_spans(op, Tq, Tk, causal, w)
    out = _empty(lead + (Tq, Dv))  # (..., Tq, Dv)
    row_max, row_sum = _empty(lead + (Tq,)), _empty(lead + (Tq,))
    _cuda.attention_forward(out.data.ptr, row_max.data.ptr, row_sum.data.ptr, q.data.ptr, k.data.ptr, v.data.ptr,
                            BH, Tq, Tk, D, Dv, causal, w or 0, p, s, float(scale), _stream())
    return out, (out, row_max, row_sum, causal, w, s)


def attention_backward(grad, q, k, v, dropout_p, scale, saved):
    op = "attention_backward"
    lead, BH, Tq, Tk, D, Dv = _attention_dims(op, q, k, v)
    if not isinstance(saved, tuple) or len(saved) != 6:
        raise ValueError(f"{op}: saved must be the 6-tuple attention_forward returned")
    out, row_max, row_sum, causal, window, seed = saved
    gp = _arg(f"{op}: grad", grad, shape=lead + (Tq, Dv))
    op_ = _arg(f"{op}: saved out", out, shape=lead + (Tq, Dv))
    mp = _arg(f"{op}: saved row max", row_max, shape=lead + (Tq,))
    lp = _arg(f"{op}: saved row sum", row_sum, shape=lead + (Tq,))
    causal = bool(causal)
    w = _window(op, window)
    p = _probability(f"{op}: dropout_p", dropout_p)
    s = _seed64(f"{op}: saved seed", seed)
    _check_key_spans(op, Tq, Tk, causal, w)
    dq = _empty(lead + (Tq, D))  # (..., Tq, D)
    dk = _empty(lead + (Tk, D))  # (..., Tk, D)
    dv = _empty(lead + (Tk, Dv))  # (..., Tk, Dv)
    drow = _empty((max(BH * Tq, 1),))  # workspace: D = rowsum(grad * out)
    _cuda.attention_backward(dq.data.ptr, dk.data.ptr, dv.data.ptr, drow.data.ptr, gp, q.data.ptr, k.data.ptr,
                             v.data.ptr, op_, mp, lp, BH, Tq, Tk, D, Dv, causal, w or 0, p, s, float(scale),
                             _stream())
    return dq, dk, dv
