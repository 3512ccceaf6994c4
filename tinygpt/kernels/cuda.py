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
