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
import time
import types

import numpy as np


class _MemoryPointer:
    """The bits of cupy.cuda.MemoryPointer the benchmark uses (an array's `.data`)."""

    def __init__(self, array):
        self.array, self.ptr = array, array.__array_interface__["data"][0]

    def copy_from_device_async(self, src, size, stream=None):
        np.asarray(self.array).reshape(-1).view(np.uint8)[:size] = np.asarray(src.array).reshape(-1).view(np.uint8)[:size]


class GpuArray(np.ndarray):
    """A 'device' array: numpy storage, but tinygpt sees it as a cupy array."""

    def __array_wrap__(self, arr, context=None, return_scalar=False):
        return np.asarray(arr).view(GpuArray)  # reductions stay 0-d device arrays, as in CuPy

    def get(self):
        """Device -> host copy (a plain numpy array), as cupy.ndarray.get."""
        return np.array(np.asarray(self), copy=True)

    @property
    def data(self):  # cupy: a MemoryPointer (numpy's C code does not go through this property)
        return _MemoryPointer(self)


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


class _Event:
    """cupy.cuda.Event on the host clock (the stand-in runs synchronously)."""

    def record(self, stream=None):
        self.t = time.perf_counter()

    def synchronize(self):
        pass


class _Device:
    id = 0
    mem_info = (8 << 30, 16 << 30)

    def __init__(self, *args):
        pass

    def synchronize(self):
        pass


class _Pool:
    def free_all_blocks(self):
        pass


class FakeCupy(types.ModuleType):
    """numpy's functions, results as GpuArrays; types, ufuncs and constants unchanged."""

    ndarray = GpuArray
    __version__ = "0.0-fake"

    def __init__(self):
        super().__init__("cupy")
        props = {"name": b"Fake GPU (numpy)", "major": 0, "minor": 0, "multiProcessorCount": 1}
        self.cuda = types.SimpleNamespace(
            runtime=types.SimpleNamespace(getDeviceCount=lambda: 1, getDeviceProperties=lambda i: props,
                                          runtimeGetVersion=lambda: 0, driverGetVersion=lambda: 0),
            get_current_stream=lambda: _Stream(), Device=_Device, Event=_Event,
            get_elapsed_time=lambda a, b: (b.t - a.t) * 1e3)
        self.get_default_memory_pool = lambda: _Pool()

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
