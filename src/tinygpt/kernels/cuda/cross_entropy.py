"""cross_entropy on CuPy arrays (csrc/cuda/cross_entropy.cu): log-softmax + NLL over the vocabulary."""
from __future__ import annotations

import numbers

import numpy as np

from ... import backend
from . import arg, empty, integer, launch, saved_tuple

LAUNCHERS = {"cross_entropy": ("cross_entropy_forward", "cross_entropy_backward")}


def cross_entropy_forward(logits, targets, ignore_index):
    """Mean NLL of logits (N, V) float32 against int64 targets (N,), skipping ignore_index.

    Returns (loss 0-d float32, saved = (row_max, row_logsum, ignore_index, count)); count is a
    0-d int64 device array, so nothing waits for the GPU. Targets outside [0, V) that are not
    ignore_index make the loss nan (F.cross_entropy rejects them before any kernel runs).
    """
    op = "cross_entropy_forward"
    arg(f"{op}: logits", logits, ndim=2)
    N, V = logits.shape
    if V < 1:
        raise ValueError(f"{op}: logits must have at least one class, got shape {tuple(logits.shape)}")
    arg(f"{op}: targets", targets, shape=(N,), dtype=np.int64)
    ignore = integer(f"{op}: ignore_index", ignore_index)
    loss, count = empty(()), empty((), np.int64)
    row_max, row_logsum = empty((N,)), empty((N,))
    row_loss = empty((max(N, 1),), np.float64)  # workspace: per-row losses, summed in a fixed order
    launch(op, loss, count, row_max, row_logsum, row_loss, logits, targets, N, V, ignore)
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
    arg(f"{op}: logits", logits, ndim=2)
    N, V = logits.shape
    arg(f"{op}: targets", targets, shape=(N,), dtype=np.int64)
    row_max, row_logsum, ignore, count = saved_tuple(op, saved, 4, "the 4-tuple cross_entropy_forward returned")
    arg(f"{op}: saved[0] (row max)", row_max, shape=(N,))
    arg(f"{op}: saved[1] (row log-sum)", row_logsum, shape=(N,))
    arg(f"{op}: saved[3] (count)", count, shape=(), dtype=np.int64)
    dlogits = empty((N, V))
    launch(op, dlogits, logits, targets, row_max, row_logsum, g, count, N, V,
           integer(f"{op}: saved[2] (ignore_index)", ignore))
    return dlogits
