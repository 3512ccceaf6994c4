"""gelu on CuPy arrays (csrc/cuda/gelu.cu), 'tanh' (GPT-2) or 'none' (exact, erf)."""
from __future__ import annotations

from . import arg, empty, launch

LAUNCHERS = {"gelu": ("gelu_forward", "gelu_backward")}


def _is_tanh(op, approximate):
    if approximate not in ("tanh", "none"):
        raise ValueError(f"{op}: approximate must be 'tanh' or 'none', got {approximate!r}")
    return approximate == "tanh"


def gelu_forward(x, approximate):
    """GELU of float32 x (any shape): (y, ())."""
    tanh = _is_tanh("gelu_forward", approximate)
    arg("gelu_forward: x", x)
    y = empty(x.shape)
    launch("gelu_forward", y, x, x.size, tanh)
    return y, ()


def gelu_backward(grad, x, approximate, saved):
    """grad * gelu'(x) (nothing saved: recomputed from x)."""
    tanh = _is_tanh("gelu_backward", approximate)
    arg("gelu_backward: x", x)
    arg("gelu_backward: grad", grad, shape=x.shape)
    dx = empty(x.shape)
    launch("gelu_backward", dx, grad, x, x.size, tanh)
    return dx
