"""softmax and log_softmax over the last axis of CuPy arrays (csrc/cuda/softmax.cu)."""
from __future__ import annotations

from . import arg, empty, launch

LAUNCHERS = {"softmax": ("softmax_forward", "softmax_backward"),
             "log_softmax": ("log_softmax_forward", "log_softmax_backward")}


def _rows(op: str, what: str, x, axis) -> tuple[int, int]:
    """(rows, C) of x viewed as (rows, C); only the last axis is supported."""
    arg(f"{op}: {what}", x)
    if x.ndim < 1:
        raise ValueError(f"{op}: {what} must have at least 1 dimension, got shape {tuple(x.shape)}")
    if axis not in (-1, x.ndim - 1):
        raise ValueError(f"{op}: axis must be the last axis (-1 or {x.ndim - 1}), got {axis} "
                         "(tinygpt.kernels.select sends other axes to the reference)")
    C = x.shape[-1]
    return (x.size // C if C else 0), C


def _forward(op, x, axis):
    rows, C = _rows(op, "x", x, axis)
    y = empty(x.shape)
    launch(op, y, x, rows, C)
    return y, ()


def _backward(op, grad, y, axis):
    rows, C = _rows(op, "y", y, axis)
    arg(f"{op}: grad", grad, shape=y.shape)
    dx = empty(y.shape)
    launch(op, dx, grad, y, rows, C)
    return dx


def softmax_forward(x, axis):
    return _forward("softmax_forward", x, axis)


def softmax_backward(grad, y, axis, saved):
    return _backward("softmax_backward", grad, y, axis)


def log_softmax_forward(x, axis):
    return _forward("log_softmax_forward", x, axis)


def log_softmax_backward(grad, y, axis, saved):
    return _backward("log_softmax_backward", grad, y, axis)
