"""Devices and array modules: 'cpu' -> numpy, 'cuda' -> cupy.

This is the only module that imports cupy, and only when a CUDA array is asked for, so
`import tinygpt` never needs CuPy, a driver or a GPU.
"""
from __future__ import annotations

import numpy as np

_cupy = None
_cupy_error: str | None = None
_cuda_ok = False  # a GPU was seen once (it does not go away while the process runs)


def _load_cupy():
    """Import cupy once; return the module or None (with the reason kept for messages)."""
    global _cupy, _cupy_error
    if _cupy is None and _cupy_error is None:
        try:
            import cupy  # noqa: PLC0415 - optional dependency, imported lazily

            _cupy = cupy
        except Exception as exc:  # ImportError, or a broken CUDA install
            _cupy_error = f"{type(exc).__name__}: {exc}"
    return _cupy


def cuda_available() -> bool:
    """True when CuPy imports and sees at least one GPU."""
    global _cuda_ok
    if _cuda_ok:
        return True
    cp = _load_cupy()
    if cp is None:
        return False
    try:
        _cuda_ok = cp.cuda.runtime.getDeviceCount() > 0
    except Exception:  # CUDARuntimeError without a driver, or a broken install
        return False
    return _cuda_ok


def cupy():
    """The cupy module, or a clear error saying what is missing and how to get it."""
    cp = _load_cupy()
    if cp is None:
        raise RuntimeError(
            "device 'cuda' needs CuPy: install it with `pip install \".[cuda]\"` "
            f"(cupy-cuda13x) on a machine with an NVIDIA GPU ({_cupy_error})"
        )
    if not cuda_available():
        raise RuntimeError("device 'cuda': CuPy is installed but no CUDA GPU or driver was found")
    return cp


def nccl():
    """cupy.cuda.nccl (for tinygpt.distributed's GPU collectives), or a clear error saying what is missing."""
    cupy()
    try:
        from cupy.cuda import nccl as module  # noqa: PLC0415 - optional, needs CuPy built with NCCL
    except Exception as exc:
        raise RuntimeError("the NCCL backend needs CuPy with NCCL support (pip install \".[cuda]\" and the NCCL "
                           f"runtime, e.g. nvidia-nccl-cu13): {type(exc).__name__}: {exc}") from exc
    if not getattr(module, "available", True):
        raise RuntimeError("the NCCL backend: this CuPy was built without NCCL")
    return module


def normalize_device(device) -> str:
    """'cpu' | 'cuda' (also accepts 'cuda:0'-style strings, mapping them to 'cuda')."""
    if device is None:
        return "cpu"
    name = str(device)
    if name == "cpu":
        return "cpu"
    if name == "cuda" or name.startswith("cuda:"):
        return "cuda"
    raise ValueError(f"unknown device {device!r}: expected 'cpu' or 'cuda'")


def xp(array):
    """The array module (numpy or cupy) that owns `array`."""
    if _cupy is None or isinstance(array, np.ndarray) and not isinstance(array, _cupy.ndarray):
        return np
    return _cupy.get_array_module(array)


def device_of(array) -> str:
    """'cpu' for numpy arrays, 'cuda' for cupy arrays."""
    return "cpu" if xp(array) is np else "cuda"


def module_for(device: str):
    """The array module for a device name."""
    return np if normalize_device(device) == "cpu" else cupy()


def is_cupy_array(array) -> bool:
    """True for a cupy.ndarray (False without touching CuPy when it was never loaded)."""
    return _cupy is not None and isinstance(array, _cupy.ndarray)


def array_device(a):
    """'cpu' for a numpy array, 'cuda' for a cupy array, None for anything else (scalars, tuples)."""
    if is_cupy_array(a):
        return "cuda"
    return "cpu" if isinstance(a, np.ndarray) else None


def to_device(array, device: str):
    """Move an array to a device (a no-op when it is already there)."""
    device = normalize_device(device)
    if device_of(array) == device:
        return array
    if device == "cpu":
        return array.get()
    return cupy().asarray(array)


def to_numpy(array) -> np.ndarray:
    """A host numpy array (copies from the GPU when needed; other array-likes via np.asarray).
    A copy from the GPU first settles the deferred checks (check_pending)."""
    if is_cupy_array(array):
        check_pending()
        return array.get()
    if isinstance(array, np.ndarray):
        return array
    return np.asarray(array)


# ----------------------------------------------------------------------------- deferred device checks
# A check of GPU data (token ids in range, say) read back at once would stall the host on every call
# until the GPU caught up. Instead its outcome stays on the device as a 0-d bool and is read with the
# next copy to the host (to_numpy, Tensor.item: the training loop reads its loss once per step), all
# pending outcomes in one transfer; the first failed check raises its error there. Bounded: every
# _MAX_PENDING checks they are settled anyway.
_pending: list = []  # (0-d bool device array: True when the check failed, callable returning the exception)
_MAX_PENDING = 256


def defer_check(failed, error) -> None:
    """Queue a check whose outcome `failed` (a 0-d bool cupy array) is read later; `error()` builds the
    exception to raise when it is True (it may read the GPU: it only runs when the check failed)."""
    _pending.append((failed, error))
    if len(_pending) >= _MAX_PENDING:
        check_pending()


def check_pending() -> None:
    """Read every deferred check's outcome (one device -> host copy) and raise the first failure's error."""
    if not _pending:
        return
    checks = _pending[:]
    _pending.clear()
    failed = cupy().stack([f for f, _ in checks]).get()
    for (_, error), bad in zip(checks, failed):
        if bad:
            raise error()


def synchronize() -> None:
    """Wait for the GPU's queued work (a no-op when CuPy was never used)."""
    if _cupy is not None and _cuda_ok:
        _cupy.cuda.get_current_stream().synchronize()


def scatter_add(target, index, values) -> None:
    """target[index] += values in place, repeated indices accumulating (numpy.add.at / cupy.add.at)."""
    xp_ = xp(target)
    at = getattr(xp_.add, "at", None)
    if at is not None:  # numpy, and CuPy >= 12
        at(target, index, values)
        return
    import cupyx  # noqa: PLC0415 - older CuPy: the same operation under its former name

    cupyx.scatter_add(target, index, values)


def erf(x):
    """The error function of a cupy array (cupyx.scipy.special.erf); numpy arrays use reference.erf."""
    import cupyx.scipy.special  # noqa: PLC0415 - only reached with cupy arrays

    return cupyx.scipy.special.erf(x)
