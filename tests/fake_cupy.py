"""A NumPy-backed stand-in for CuPy, to run the GPU tests' code paths on a machine without a GPU.

`GpuArray` (a numpy subclass) plays `cupy.ndarray` and `FakeCupy` the `cupy` module: its
functions are numpy's with the results marked as device arrays. `install(monkeypatch)` makes
`tinygpt.backend` load it as CuPy and report a GPU. tinygpt then treats GpuArrays exactly as
cupy arrays (device 'cuda', the cupy branch of every `xp`), so a host array that leaks into
the GPU path shows up as a mixed-device error, as it would on a real GPU.

What this does NOT check: CuPy's own API and numerics (the arithmetic is numpy's), the CUDA
kernels (kernels.cuda is switched off), streams and synchronisation. Those need tests/test_gpu.py
on a real GPU.
"""
import types

import numpy as np


class GpuArray(np.ndarray):
    """A 'device' array: numpy storage, but tinygpt sees it as a cupy array."""

    def __array_wrap__(self, arr, context=None, return_scalar=False):
        return np.asarray(arr).view(GpuArray)  # reductions stay 0-d device arrays, as in CuPy

    def get(self):
        """Device -> host copy (a plain numpy array), as cupy.ndarray.get."""
        return np.array(np.asarray(self), copy=True)


def _to_gpu(r):
    if isinstance(r, np.ndarray) and not isinstance(r, GpuArray):
        return r.view(GpuArray)
    if isinstance(r, np.generic):
        return np.asarray(r).view(GpuArray)
    if isinstance(r, (tuple, list)):
        return type(r)(_to_gpu(x) for x in r)
    return r


class _Stream:
    ptr = 0

    def synchronize(self):
        pass


class FakeCupy(types.ModuleType):
    """numpy's functions, results as GpuArrays; types, ufuncs and constants unchanged."""

    ndarray = GpuArray
    __version__ = "0.0-fake"

    def __init__(self):
        super().__init__("cupy")
        self.cuda = types.SimpleNamespace(
            runtime=types.SimpleNamespace(getDeviceCount=lambda: 1),
            get_current_stream=lambda: _Stream(),
            Device=lambda *a: types.SimpleNamespace(synchronize=lambda: None, id=0))

    def __getattr__(self, name):
        obj = getattr(np, name)
        if isinstance(obj, (type, np.ufunc)) or not callable(obj):
            return obj

        def wrapped(*args, **kwargs):
            return _to_gpu(obj(*args, **kwargs))

        return wrapped

    def get_array_module(self, *arrays):
        return self if any(isinstance(a, GpuArray) for a in arrays) else np

    @staticmethod
    def asarray(x, dtype=None):
        if isinstance(x, GpuArray) and (dtype is None or x.dtype == np.dtype(dtype)):
            return x
        return np.array(x, dtype=dtype, copy=True).view(GpuArray)  # host -> device is a copy

    @staticmethod
    def array(x, dtype=None, copy=True):
        return np.array(x, dtype=dtype, copy=True).view(GpuArray)

    @staticmethod
    def asnumpy(x):
        return np.array(np.asarray(x), copy=True)


def install(monkeypatch):
    """Make tinygpt.backend use FakeCupy as CuPy (with a 'GPU'); returns the fake module."""
    from tinygpt import backend
    from tinygpt.kernels import cuda as kcuda
    from tinygpt.kernels import reference

    fake = FakeCupy()
    monkeypatch.setattr(backend, "_cupy", fake)
    monkeypatch.setattr(backend, "_cuda_ok", True)
    monkeypatch.setattr(backend, "erf", lambda x: reference.erf(np.asarray(x)).view(GpuArray))
    monkeypatch.setattr(kcuda, "has", lambda op: False)  # no real CUDA kernels for fake arrays
    return fake
