"""grad_norm and grad_scale_ on lists of CuPy arrays (csrc/cuda/grad_norm.cu): clip_grad_norm_'s two
passes over every gradient, each one launch for the whole list."""
from __future__ import annotations

import numpy as np

from . import arg, empty, launch, launcher, tensor_table

LAUNCHERS = {"grad_norm": ("grad_norm", "grad_norm_chunk"), "grad_scale_": ("grad_scale", "grad_norm_chunk"),
             "grad_clip_": ("grad_clip", "grad_norm_chunk")}


def _rows(op, grads):
    rows = [(arg(f"{op}: tensor {i}", g).data.ptr, g.size) for i, g in enumerate(grads)]
    if not rows:
        raise ValueError(f"{op}: need at least one tensor")
    return rows


def grad_norm(grads, norm_type):
    """0-d float64 device array: sum of g^2 over every float32 array of the list (norm_type 2), or
    max |g| (norm_type inf); NaN propagates. Deterministic (fixed reduction order)."""
    op = "grad_norm"
    norm_type = float(norm_type)
    if norm_type not in (2.0, float("inf")):
        raise ValueError(f"{op}: norm_type must be 2 or inf, got {norm_type}")
    table, starts, blocks = tensor_table(_rows(op, grads), launcher("grad_norm_chunk")())
    out, partial = empty((), np.float64), empty((max(blocks, 1),), np.float64)
    launch(op, out, partial, table, starts, len(grads), blocks, norm_type != 2.0)
    return out


def grad_scale_(grads, scale):
    """Every float32 array of the list *= float32(scale), in place, in one launch."""
    op = "grad_scale_"
    table, starts, blocks = tensor_table(_rows(op, grads), launcher("grad_norm_chunk")())
    launch("grad_scale", table, starts, len(grads), blocks, float(scale))


def grad_clip_(grads, norm, max_norm, norm_type):
    """clip_grad_norm_'s scaling with the norm on the device: `norm` is grad_norm's 0-d float64 result
    for these grads (sum of squares for norm_type 2, max |g| for inf); every array *= float32(max_norm /
    (total + 1e-6)) when that is below 1 (NaN included), in one launch and without reading the norm."""
    op = "grad_clip_"
    norm_type = float(norm_type)
    if norm_type not in (2.0, float("inf")):
        raise ValueError(f"{op}: norm_type must be 2 or inf, got {norm_type}")
    arg(f"{op}: norm", norm, shape=(), dtype=np.float64)
    table, starts, blocks = tensor_table(_rows(op, grads), launcher("grad_norm_chunk")())
    launch("grad_clip", table, starts, len(grads), blocks, norm, float(max_norm), norm_type != 2.0)
