"""quantized_linear on CuPy arrays (csrc/cuda/quantized_linear.cu): the decode GEMV straight from the int8 /
packed int4 tables for up to 8 rows; more rows (prefill), shapes the GEMV does not cover (in % 32 != 0,
int4 groups not a multiple of 32) and the input gradient run the reference on CuPy arrays: dequantized
blocks of output channels multiplied by cuBLAS. quantized_linear_gelu is that product followed by the gelu
kernel (csrc/cuda/gelu.cu)."""
from __future__ import annotations

import math

import numpy as np

from .. import reference
from . import arg, empty, gelu, launch, optional, size

LAUNCHERS = {"quantized_linear": ("quantized_gemv",), "quantized_linear_gelu": ("quantized_gemv", "gelu_forward",
                                                                               "gelu_backward")}
GEMV_ROWS = 8


def quantized_linear_forward(x, q, scale, bias):
    """y = x @ (q * scale).T + bias; returns (y, ())."""
    op = "quantized_linear_forward"
    int4 = q.dtype == np.uint8
    arg(f"{op}: q", q, dtype=q.dtype if int4 else np.int8, ndim=2)
    out_f, in_f = q.shape[0], q.shape[1] * (2 if int4 else 1)
    arg(f"{op}: x", x)
    if x.ndim < 1 or x.shape[-1] != in_f:
        raise ValueError(f"{op}: x must have shape (..., {in_f}) to match q {tuple(q.shape)}, got {tuple(x.shape)}")
    arg(f"{op}: scale", scale, shape=(out_f, scale.shape[1]) if int4 and scale.ndim == 2 else (out_f,))
    optional(f"{op}: bias", bias, shape=(out_f,))
    rows = math.prod(x.shape[:-1])
    group = in_f // scale.shape[1] if int4 else 0
    if rows > GEMV_ROWS or in_f % 32 or (int4 and group % 32) or x.data.ptr % 16:
        return reference.quantized_linear_forward(x, q, scale, bias)
    y = empty(tuple(x.shape[:-1]) + (out_f,))
    launch("quantized_gemv", y, x, q, scale, bias, rows, size(f"{op}: in_features", in_f),
           size(f"{op}: out_features", out_f), 4 if int4 else 8, group)
    return y, ()


def quantized_linear_backward(grad, q, scale):
    """dx = grad @ (q * scale) (the input gradient), through the reference's dequantized blocks."""
    return reference.quantized_linear_backward(grad, q, scale)


def quantized_linear_gelu_forward(x, q, scale, bias):
    """y = gelu_tanh(h) for h = x @ (q * scale).T + bias; returns (y, (h,))."""
    h, _ = quantized_linear_forward(x, q, scale, bias)
    return gelu.gelu_forward(h, "tanh")[0], (h,)


def quantized_linear_gelu_backward(grad, q, scale, saved):
    """dx = (grad * gelu_tanh'(h)) @ (q * scale) for saved = (h,)."""
    (h,) = saved
    return quantized_linear_backward(gelu.gelu_backward(grad, h, "tanh", ()), q, scale)
