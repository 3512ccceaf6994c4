"""linear and linear_gelu on CuPy arrays (csrc/cuda/linear.cu: the tensor-core GEMM of gemm.cuh with
bias / GELU epilogues, the backward products, the column sums for dbias).

Each product runs on our GEMM or on cuBLAS (cupy.matmul), as kernels/policy.py decides (precision,
backend, the per-shape-class autotuner).
"""
from __future__ import annotations

import math

from ... import backend
from .. import policy
from . import arg, empty, launch, launcher, optional, saved_tuple, size

LAUNCHERS = {"linear": ("linear_forward", "linear_backward_dx", "linear_backward_dw", "linear_dw_splits",
                        "column_sums")}
LAUNCHERS["linear_gelu"] = LAUNCHERS["linear"] + ("gelu_forward", "gelu_backward")

_dw_splits: int | None = None  # tests force a split-K count here (None: linear_dw_splits decides)


def column_sum_chunks(rows: int) -> int:
    """Row chunks of the deterministic column sum (>= 32 rows each, at most 256 chunks)."""
    return max(1, min(256, -(-rows // 32)))


def _dims(op, x, weight):
    cp = backend.cupy()
    if not isinstance(x, cp.ndarray) or x.ndim < 1:
        raise ValueError(f"{op}: x must be a cupy array with at least 1 dimension (..., in), "
                         f"got {type(x).__name__} {getattr(x, 'shape', '')}")
    arg(f"{op}: weight", weight, ndim=2)
    n_in = x.shape[-1]
    if weight.shape[1] != n_in:
        raise ValueError(f"{op}: weight must have shape (out, {n_in}) to match x {tuple(x.shape)}, "
                         f"got {tuple(weight.shape)}")
    rows = math.prod(x.shape[:-1])
    n_out = weight.shape[0]
    for what, n in (("rows", rows), ("in_features", n_in), ("out_features", n_out)):
        size(f"{op}: {what}", n)
    return rows, n_in, n_out


def _forward(op, x, weight, bias, gelu):
    """(h, y): h = x @ weight.T + bias and y = gelu_tanh(h) (y is h when not gelu)."""
    rows, n_in, n_out = _dims(op, x, weight)
    arg(f"{op}: x", x)
    optional(f"{op}: bias", bias, shape=(n_out,))
    out_shape = tuple(x.shape[:-1]) + (n_out,)
    h = empty(out_shape)
    y = empty(out_shape) if gelu else h

    def ours():
        launch("linear_forward", h, y if gelu else None, x, weight, bias, rows, n_in, n_out, policy.precision_code())

    def cublas():  # (rows, in) @ (in, out), then the epilogue as separate passes
        cp = backend.cupy()
        cp.matmul(x.reshape(rows, n_in), weight.T, out=h.reshape(rows, n_out))
        if bias is not None:
            cp.add(h, bias, out=h)
        if gelu:
            launch("gelu_forward", y, h, h.size, True)

    policy.run_gemm("linear_gelu" if gelu else "linear", "forward", rows, n_in, n_out, ours, cublas)
    return h, y


def _grads(op, g, x, weight, has_bias, rows, n_in, n_out):
    """(dx, dweight, dbias | None) for g (rows, n_out) given as a C-contiguous cupy array."""
    dx = empty(x.shape)
    dw = empty(weight.shape)
    db = empty((n_out,)) if has_bias else None

    def ours():
        launch("linear_backward_dx", dx, g, weight, rows, n_in, n_out, policy.precision_code())
        # split-K over rows when dW has few output tiles (the launcher's device-aware choice)
        splits = _dw_splits if _dw_splits is not None else launcher("linear_dw_splits")(rows, n_in, n_out)
        ws = empty((splits * n_out * n_in,)) if splits > 1 else None
        launch("linear_backward_dw", dw, g, x, ws, rows, n_in, n_out, splits, policy.precision_code())

    def cublas():
        cp = backend.cupy()
        g2 = g.reshape(rows, n_out)
        cp.matmul(g2, weight, out=dx.reshape(rows, n_in))  # (rows, out) @ (out, in)
        cp.matmul(g2.T, x.reshape(rows, n_in), out=dw)  # (out, rows) @ (rows, in)

    policy.run_gemm(op, "backward", rows, n_in, n_out, ours, cublas)
    if has_bias:
        chunks = column_sum_chunks(rows)
        launch("column_sums", db, g, empty((chunks * n_out,)), rows, n_out, chunks)
    return dx, dw, db


def _check_grad(op, name, g, x, n_out):
    arg(f"{op}: {name}", g, shape=tuple(x.shape[:-1]) + (n_out,))


def linear_forward(x, weight, bias):
    """y = x @ weight.T + bias for x (..., in), weight (out, in), bias (out,) or None; (y, ())."""
    y, _ = _forward("linear_forward", x, weight, bias, False)
    return y, ()


def linear_backward(grad, x, weight, has_bias, saved):
    """(dx, dweight, dbias | None) = (grad @ weight, grad^T @ x, grad summed over rows)."""
    op = "linear_backward"
    rows, n_in, n_out = _dims(op, x, weight)
    arg(f"{op}: x", x)
    _check_grad(op, "grad", grad, x, n_out)
    return _grads("linear", grad, x, weight, has_bias, rows, n_in, n_out)


def linear_gelu_forward(x, weight, bias):
    """y = gelu_tanh(x @ weight.T + bias), fused; returns (y, (h,)) with h the pre-activation."""
    h, y = _forward("linear_gelu_forward", x, weight, bias, True)
    return y, (h,)


def linear_gelu_backward(grad, x, weight, has_bias, saved):
    """dh = grad * gelu'(h) (h saved by forward), then linear's gradients with dh."""
    op = "linear_gelu_backward"
    rows, n_in, n_out = _dims(op, x, weight)
    arg(f"{op}: x", x)
    _check_grad(op, "grad", grad, x, n_out)
    (h,) = saved_tuple(op, saved, 1, "the (h,) tuple linear_gelu_forward returned")
    _check_grad(op, "saved h", h, x, n_out)
    dh = empty(h.shape)
    launch("gelu_backward", dh, grad, h, h.size, True)
    return _grads("linear_gelu", dh, x, weight, has_bias, rows, n_in, n_out)
