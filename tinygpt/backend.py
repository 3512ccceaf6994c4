"""Devices and array modules: 'cpu' -> numpy, 'cuda' -> cupy.

This is the only module that imports cupy, and only when a CUDA array is asked for, so
`import tinygpt` never needs CuPy, a driver or a GPU.
"""
from __future__ import annotations

import numpy as np

_cupy = None
_cupy_error: str | None = None


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
    cp = _load_cupy()
    if cp is None:
        return False
    try:
        return cp.cuda.runtime.getDeviceCount() > 0
    except Exception:
        return False


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
    if isinstance(array, np.ndarray) or _cupy is None:
        return np
    return _cupy.get_array_module(array)


def device_of(array) -> str:
    """'cpu' for numpy arrays, 'cuda' for cupy arrays."""
    return "cpu" if xp(array) is np else "cuda"


def module_for(device: str):
    """The array module for a device name."""
    return np if normalize_device(device) == "cpu" else cupy()


def to_device(array, device: str):
    """Move an array to a device (a no-op when it is already there)."""
    device = normalize_device(device)
    if device_of(array) == device:
        return array
    if device == "cpu":
        return array.get()
    return cupy().asarray(array)


def to_numpy(array) -> np.ndarray:
    """A host numpy array (copies from the GPU when needed)."""
    return array if isinstance(array, np.ndarray) else array.get()
