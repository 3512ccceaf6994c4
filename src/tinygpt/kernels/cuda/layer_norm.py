"""layer_norm and add_layer_norm on CuPy arrays (csrc/cuda/layer_norm.cu: one forward kernel that
also adds the residual, one backward kernel that also adds grad_s)."""
from __future__ import annotations

from ... import backend
from . import arg, empty, launch, optional, saved_tuple, size

LAUNCHERS = {"layer_norm": ("layer_norm_forward", "layer_norm_backward")}
LAUNCHERS["add_layer_norm"] = LAUNCHERS["layer_norm"]


def _dims(op, x):
    cp = backend.cupy()
    if not isinstance(x, cp.ndarray) or x.ndim < 1 or x.shape[-1] == 0:
        raise ValueError(f"{op}: x must be a cupy array (..., C) with C >= 1, got "
                         f"{type(x).__name__} {getattr(x, 'shape', '')}")
    C = x.shape[-1]
    N = x.size // C
    size(f"{op}: x", N)
    return N, C


def backward_chunks(N: int) -> int:
    """Row blocks of the backward (>= 8 rows each, at most 512): the dweight/dbias workspace."""
    return max(1, min(512, -(-N // 8)))


def _stats(op, saved, first, N):
    """The (mean, rstd) of a saved tuple from item `first` on, checked."""
    saved_tuple(op, saved, first + 2, f"the tuple its forward returned ({first + 2} items)")
    return (arg(f"{op}: saved mean", saved[first], shape=(N,)),
            arg(f"{op}: saved rstd", saved[first + 1], shape=(N,)))


def _backward(op, grad, xs, weight, mean, rstd, grad_s, N, C):
    dx = empty(xs.shape)
    dw = None if weight is None else empty((C,))
    db = empty((C,))
    chunks = backward_chunks(N)
    partial = empty((chunks * C * (1 if weight is None else 2),))
    launch("layer_norm_backward", dx, dw, db, partial, grad, xs, optional(f"{op}: weight", weight, shape=(C,)),
           mean, rstd, grad_s, N, C, chunks)
    return dx, dw, db


def layer_norm_forward(x, weight, bias, eps):
    """Normalise over the last axis; returns (y, (mean, rstd)) with mean, rstd float32 (N,)."""
    op = "layer_norm_forward"
    N, C = _dims(op, x)
    arg(f"{op}: x", x)
    optional(f"{op}: weight", weight, shape=(C,))
    optional(f"{op}: bias", bias, shape=(C,))
    y, mean, rstd = empty(x.shape), empty((N,)), empty((N,))
    launch("layer_norm_forward", y, None, mean, rstd, x, None, weight, bias, N, C, float(eps))
    return y, (mean, rstd)


def layer_norm_backward(grad, x, weight, saved):
    """(dx, dweight | None, dbias) of layer_norm_forward."""
    op = "layer_norm_backward"
    N, C = _dims(op, x)
    arg(f"{op}: x", x)
    arg(f"{op}: grad", grad, shape=x.shape)
    mean, rstd = _stats(op, saved, 0, N)
    return _backward(op, grad, x, weight, mean, rstd, None, N, C)


def add_layer_norm_forward(x, residual, weight, bias, eps):
    """s = x + residual, y = layer_norm(s); returns ((s, y), (s, mean, rstd))."""
    op = "add_layer_norm_forward"
    N, C = _dims(op, x)
    arg(f"{op}: x", x)
    arg(f"{op}: residual", residual, shape=x.shape)
    optional(f"{op}: weight", weight, shape=(C,))
    optional(f"{op}: bias", bias, shape=(C,))
    s, y, mean, rstd = empty(x.shape), empty(x.shape), empty((N,)), empty((N,))
    launch("layer_norm_forward", y, s, mean, rstd, x, residual, weight, bias, N, C, float(eps))
    return (s, y), (s, mean, rstd)


def add_layer_norm_backward(grad_s, grad_y, x, residual, weight, saved):
    """(dx, dresidual, dweight | None, dbias), dx is dresidual (the same array); grad_s may be None."""
    op = "add_layer_norm_backward"
    N, C = _dims(op, x)
    arg(f"{op}: x", x)
    arg(f"{op}: residual", residual, shape=x.shape)
    arg(f"{op}: grad_y", grad_y, shape=x.shape)
    optional(f"{op}: grad_s", grad_s, shape=x.shape)
    saved_tuple(op, saved, 3, "the tuple its forward returned (3 items)")
    s = arg(f"{op}: saved s", saved[0], shape=x.shape)
    mean, rstd = _stats(op, saved, 1, N)
    dx, dw, db = _backward(op, grad_y, s, weight, mean, rstd, grad_s, N, C)
    return dx, dx, dw, db
