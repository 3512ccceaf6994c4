"""embedding on CuPy arrays (csrc/cuda/embedding.cu). The backward is deterministic: grad rows are
summed per id in position order (bit for bit numpy.add.at and the CPU kernel), through a sort of
(id, position) keys instead of cupyx.scatter_add's float atomics."""
from __future__ import annotations

import numpy as np

from ... import backend
from . import arg, empty, integer, launch

LAUNCHERS = {"embedding": ("embedding_forward", "embedding_keys", "embedding_backward")}


def _ids64(op, ids):
    """The ids as a C-contiguous int64 cupy array (a copy only when they are another integer type)."""
    cp = backend.cupy()
    if not isinstance(ids, cp.ndarray):
        raise TypeError(f"{op}: ids must be a cupy integer array, got {type(ids).__name__}")
    if ids.dtype.kind not in "iu":
        raise TypeError(f"{op}: ids must have an integer dtype, got {ids.dtype}")
    if ids.dtype == np.uint64 and ids.size and int(ids.max()) > np.iinfo(np.int64).max:
        raise ValueError(f"{op}: id {int(ids.max())} does not fit in int64")
    return arg(f"{op}: ids", cp.ascontiguousarray(ids, dtype=np.int64), dtype=np.int64)  # device check


def embedding_forward(ids, weight):
    """out = weight[ids] for weight (V, C) and integer ids of any shape; returns (out, ()).
    F.embedding has range-checked the ids; an id outside [0, V) here gives a NaN row (never a stray read)."""
    op = "embedding_forward"
    arg(f"{op}: weight", weight, ndim=2)
    V, C = weight.shape
    ids64 = _ids64(op, ids)
    out = empty(tuple(ids.shape) + (C,))
    launch(op, out, weight, ids64, ids64.size, V, C)
    return out, ()


def embedding_backward(grad, ids, weight_shape, saved):
    """dW (V, C): grad (*ids.shape, C) rows summed per id in position order (deterministic)."""
    op = "embedding_backward"
    if len(weight_shape) != 2:
        raise ValueError(f"{op}: weight_shape must be (V, C), got {tuple(weight_shape)}")
    V, C = (integer(f"{op}: weight_shape", d) for d in weight_shape)
    if V < 1 or C < 1:
        raise ValueError(f"{op}: weight_shape must be (V, C) with V, C >= 1, got {(V, C)}")
    ids64 = _ids64(op, ids)
    arg(f"{op}: grad", grad, shape=tuple(ids.shape) + (C,))
    n = ids64.size
    dw = empty((V, C))
    keys = empty((n,), np.int64)
    if n:
        launch("embedding_keys", keys, ids64, n, V)
        keys.sort()  # in place (CuPy: a CUB radix sort): each id's positions, in position order
    launch(op, dw, grad, keys, n, V, C)
    return dw
