"""dropout on CuPy arrays (csrc/cuda/dropout.cu): the counter-based mask of reference.dropout_mask."""
from __future__ import annotations

from . import arg, empty, launch, probability, saved_tuple, seed64

LAUNCHERS = {"dropout": ("dropout_forward", "dropout_backward")}


def dropout_forward(x, p, seed):
    """Inverted dropout; saved = (seed mod 2^64, shape): backward regenerates the mask."""
    op = "dropout_forward"
    arg(f"{op}: x", x)
    p = probability(f"{op}: p", p)
    s = seed64(f"{op}: seed", seed)
    y = empty(x.shape)
    launch(op, y, x, x.size, p, s)
    return y, (s, tuple(x.shape))


def dropout_backward(grad, p, saved):
    op = "dropout_backward"
    seed, shape = saved_tuple(op, saved, 2, "the (seed, shape) from dropout_forward")
    arg(f"{op}: grad", grad, shape=shape)
    p = probability(f"{op}: p", p)
    dx = empty(grad.shape)
    launch(op, dx, grad, grad.size, p, seed64(f"{op}: saved seed", seed))
    return dx
