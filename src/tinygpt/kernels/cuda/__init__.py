"""CUDA kernels for CuPy arrays, one module per op family: kernels/cuda/<family>.py wraps csrc/cuda/<family>.cu.

Each op here has the reference's signature (arrays in, `(out, saved)` out, or the same in-place
update), so a Function never knows which implementation ran. Every wrapper follows one convention:
  1. check its arrays with `arg` (device, dtype, shape, C-contiguity; errors name the argument),
  2. allocate outputs and workspaces with `empty` (CuPy's memory pool: the C++/CUDA side never
     allocates),
  3. `launch(name, *args)`: the launcher tinygpt._C.cuda.<name>, with arrays passed as their device
     pointers (None as 0) and CuPy's current stream appended; nothing synchronises.
A family module lists the launchers each of its ops needs in LAUNCHERS: an op is offered to the
dispatcher only when the extension has all of them (`has`).
"""
from __future__ import annotations

import importlib
import operator

import numpy as np

from ... import backend

try:
    from ... import _C as _native  # noqa: F401 - optional extension
    _cuda = getattr(_native, "cuda", None)
except ImportError:
    _cuda = None

INT_MAX = 2**31 - 1


def module(op: str):
    """The module of op's family (kernels/cuda/<family>.py)."""
    from .. import OPS  # the op table: tinygpt/kernels/__init__.py

    return importlib.import_module(f"{__name__}.{OPS[op].family}")


def has(op: str) -> bool:
    """True when the extension has every launcher that op's CUDA wrappers use."""
    if _cuda is None:
        return False
    names = getattr(module(op), "LAUNCHERS", {}).get(op)
    return bool(names) and all(hasattr(_cuda, n) for n in names)


def launcher(name: str):
    """tinygpt._C.cuda.<name>, or an error saying how to build it."""
    fn = getattr(_cuda, name, None)
    if fn is None:
        raise RuntimeError(f"tinygpt._C.cuda has no {name}: the extension was built without the CUDA kernels "
                           "(rebuild with TINYGPT_CUDA=ON)")
    return fn


def stream() -> int:
    """CuPy's current stream as the raw handle the launchers take."""
    return backend.cupy().cuda.get_current_stream().ptr


def launch(name: str, *args) -> None:
    """Launch tinygpt._C.cuda.<name>(*args, stream): device arrays become pointers, None becomes 0."""
    cp = backend.cupy()
    ptrs = [0 if a is None else a.data.ptr if isinstance(a, cp.ndarray) else a for a in args]
    launcher(name)(*ptrs, stream())


def empty(shape, dtype=np.float32):
    """An uninitialised device array from CuPy's memory pool."""
    return backend.cupy().empty(shape, dtype=dtype)


# ----------------------------------------------------------------------------- argument checks
def arg(name: str, a, *, shape=None, dtype=np.float32, ndim=None):
    """Check one device array argument and return it; errors name the argument."""
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
    if a.data.ptr % a.dtype.itemsize:
        raise ValueError(f"{name}: expected an array aligned to {a.dtype.itemsize} bytes (its data starts at an "
                         "odd address); copy it first")
    if a.device.id != cp.cuda.Device().id:
        raise ValueError(f"{name}: array is on GPU {a.device.id}, the current device is {cp.cuda.Device().id}")
    return a


def optional(name: str, a, **checks):
    """arg() for an argument that may be None."""
    return None if a is None else arg(name, a, **checks)


def size(name: str, n: int) -> int:
    """n, which must fit the kernels' 32-bit indices."""
    if n > INT_MAX:
        raise ValueError(f"{name}: size {n} exceeds the CUDA kernels' 32-bit index range")
    return int(n)


def integer(name: str, value) -> int:
    """A Python integer from anything with __index__ that fits int64 (what the launchers take); errors
    name the argument."""
    try:
        value = operator.index(value)
    except TypeError:
        raise TypeError(f"{name}: expected an int, got {type(value).__name__}") from None
    if not -(2**63) <= value < 2**63:
        raise ValueError(f"{name}: {value} is out of range: it must fit a signed 64-bit integer")
    return value


def seed64(name: str, seed) -> int:
    """The seed taken mod 2^64, as reference.dropout_mask does."""
    try:
        return operator.index(seed) % (1 << 64)
    except TypeError:
        raise TypeError(f"{name}: expected an int, got {type(seed).__name__}") from None


def probability(name: str, p) -> float:
    p = float(p)
    if not 0.0 <= p < 1.0:
        raise ValueError(f"{name}: must be in [0, 1), got {p}")
    return p


def saved_tuple(op: str, saved, n: int, what: str) -> tuple:
    """The `saved` a forward returned, checked to be a tuple of n items."""
    if not isinstance(saved, tuple) or len(saved) != n:
        raise ValueError(f"{op}: saved must be {what}")
    return saved


# ----------------------------------------------------------------------------- multi-tensor launches
_tables: dict = {}  # (rows, chunk) -> the device table: the last few, most recently used last
_MAX_TABLES = 8


def tensor_table(rows, chunk):
    """The device table of a multi-tensor launch: rows (pointers..., n) as int64 (T, len(row)), the
    first block of each tensor (cumulative ceil(n / chunk)), and the total block count.
    The table is a function of (rows, chunk) alone, so the last _MAX_TABLES are kept and reused when
    they repeat: a training step's grad_norm / grad_clip and AdamW tables describe the same arrays
    every step (CuPy's pool hands the gradients the same addresses), so no table is copied up again."""
    key = (tuple(rows), chunk)
    result = _tables.pop(key, None)
    if result is None:
        table = np.array(rows, dtype=np.int64).reshape(len(rows), -1)
        starts = np.zeros(len(rows) + 1, dtype=np.int64)
        np.cumsum(-(-table[:, -1] // chunk), out=starts[1:])
        cp = backend.cupy()
        # copied on the current stream, so ordered before the launch that reads them
        result = cp.asarray(table), cp.asarray(starts), int(starts[-1])
        if len(_tables) >= _MAX_TABLES:
            del _tables[next(iter(_tables))]  # the least recently used
    _tables[key] = result
    return result


# The family modules (each imports the helpers above).
from . import adamw, attention, cross_entropy, dropout, embedding, gelu, grad_norm, layer_norm, linear  # noqa: E402
from . import softmax  # noqa: E402
