"""A NumPy-backed stand-in for CuPy, to run the GPU tests' code paths on a machine without a GPU.

`GpuArray` (a numpy subclass) plays `cupy.ndarray` and `FakeCupy` the `cupy` module: its
functions are numpy's with the results marked as device arrays. `install(monkeypatch)` makes
`tinygpt.backend` load it as CuPy and report a GPU. tinygpt then treats GpuArrays exactly as
cupy arrays (device 'cuda', the cupy branch of every `xp`), so a host array that leaks into
the GPU path shows up as a mixed-device error, as it would on a real GPU.

With `install(monkeypatch, kernels=...)` the CUDA kernels run too, on the CPU emulator
(tests/cuda_emu: csrc/cuda compiled for the host, see tests/cuda_emu/include/tg_emu.h):
`kernels.cuda` then calls its launchers with the GpuArrays' host pointers. Arrays from `empty`
/ `zeros` then come from guarded buffers: 256-byte aligned like CuPy's pool, `empty` filled
with 0xFF bytes (NaN as floats, so a kernel that leaves part of an output unwritten poisons
the result), and canaries on both sides that are checked after every launch (a write out of
bounds fails the launch, naming the array's shape).

Where CuPy is installed (it imports without a GPU; CI installs it for the emulator pass), the
stand-in offers only the functions and array attributes that CuPy has, so the GPU path cannot
lean on a NumPy-only one unnoticed.

What this does NOT check: CuPy's numerics and argument conventions (the arithmetic is numpy's), streams and
synchronisation, and whatever the emulator cannot (timing, the hardware's MMA accumulation
order). Those need tests/test_gpu.py and tests/test_cuda_*.py on a real GPU.
"""
import os
import sys
import time
import types
import weakref

import numpy as np

try:  # CuPy imports without a GPU; when it is installed the stand-in only offers what CuPy has
    import cupy as _real_cupy
except Exception:  # not installed, or a broken CUDA install
    _real_cupy = None
_REAL_ARRAY_NAMES = None if _real_cupy is None else frozenset(dir(_real_cupy.ndarray))


class _MemoryPointer:
    """The bits of cupy.cuda.MemoryPointer the benchmark uses (an array's `.data`)."""

    def __init__(self, array):
        self.array, self.ptr = array, array.__array_interface__["data"][0]

    def copy_from_device_async(self, src, size, stream=None):
        np.asarray(self.array).reshape(-1).view(np.uint8)[:size] = np.asarray(src.array).reshape(-1).view(np.uint8)[:size]


class GpuArray(np.ndarray):
    """A 'device' array: numpy storage, but tinygpt sees it as a cupy array."""

    if _REAL_ARRAY_NAMES is not None:
        def __getattribute__(self, name):
            if name[0] != "_" and name not in _REAL_ARRAY_NAMES:
                raise AttributeError(f"cupy.ndarray has no attribute {name!r} (the GPU path would fail here)")
            return super().__getattribute__(name)

    def __array_wrap__(self, arr, context=None, return_scalar=False):
        return np.asarray(arr).view(GpuArray)  # reductions stay 0-d device arrays, as in CuPy

    def get(self):
        """Device -> host copy (a plain numpy array), as cupy.ndarray.get."""
        return np.array(np.asarray(self), copy=True)

    @property
    def data(self):  # cupy: a MemoryPointer (numpy's C code does not go through this property)
        return _MemoryPointer(self)

    @property
    def device(self):  # cupy: the array's Device
        return _Device()

    @property
    def base(self):
        """As CuPy: None for a fresh result (here the whole of a numpy result this array views)."""
        b = np.ndarray.base.__get__(self)
        if self.__dict__.get("owns_memory") or (type(b) is np.ndarray and b.base is None and b.size == self.size
                and b.__array_interface__["data"][0] == self.__array_interface__["data"][0]):
            return None
        return b


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


class _Random:
    """cupy.random's legacy API (seed, and dtype= on the samplers, which numpy's lacks)."""

    def __init__(self):
        self._rng = np.random.default_rng(0)

    def seed(self, seed=None):
        self._rng = np.random.default_rng(seed)

    def standard_normal(self, size=None, dtype=np.float64):
        return self._rng.standard_normal(size).astype(dtype).view(GpuArray)

    def randint(self, low, high=None, size=None, dtype=np.int64):
        return self._rng.integers(low, high, size, dtype=dtype).view(GpuArray)


class _Linalg:
    """cupy._core._routines_linalg's float32 compute-type switch (the products stay numpy's; tests read
    which compute type a cupy.matmul ran under). Constants as CuPy's."""

    COMPUTE_TYPE_DEFAULT, COMPUTE_TYPE_PEDANTIC, COMPUTE_TYPE_FP32, COMPUTE_TYPE_BF16, COMPUTE_TYPE_TF32 = 1, 2, 4, 6, 7

    def __init__(self):
        self.types = {}

    def get_compute_type(self, dtype):
        return self.types.get(np.dtype(dtype), self.COMPUTE_TYPE_DEFAULT)

    def set_compute_type(self, dtype, compute_type):
        self.types[np.dtype(dtype)] = compute_type


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
        self.random = _Random()
        self._core = types.SimpleNamespace(_routines_linalg=_Linalg())

    def __getattr__(self, name):
        if _real_cupy is not None and not hasattr(_real_cupy, name):
            raise AttributeError(f"cupy has no {name!r} (the GPU path would fail here)")
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


# ----------------------------------------------------------------------------- guarded buffers
_GUARD = 256  # bytes of canary on each side, also CuPy's allocation alignment
_CANARY = 0xA5
_guarded = weakref.WeakValueDictionary()  # id -> the full buffer (alive while any view is)


class _Buffer(np.ndarray):
    """The uint8 buffer behind a guarded array (a subclass only so that it can be weakly referenced)."""


def _guarded_empty(shape, dtype=np.float32, fill=0xFF):
    dtype = np.dtype(dtype)
    shape = (shape,) if isinstance(shape, (int, np.integer)) else tuple(shape)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    raw = np.empty(nbytes + 3 * _GUARD, np.uint8).view(_Buffer)
    start = _GUARD + (-(raw.ctypes.data + _GUARD)) % _GUARD  # the array 256-byte aligned
    raw[:] = _CANARY
    raw[start:start + nbytes] = fill
    raw.tg_span = (start, start + nbytes, shape, dtype)
    _guarded[id(raw)] = raw
    out = raw[start:start + nbytes].view(dtype).reshape(shape).view(GpuArray)
    out.owns_memory = True  # as cupy.empty's arrays (its views are not)
    return out


def check_guards(what="a kernel launch"):
    """Raise if any live guarded array's canaries were overwritten (then re-arm them)."""
    for raw in list(_guarded.values()):
        start, end, shape, dtype = raw.tg_span
        if (raw[:start] != _CANARY).any() or (raw[end:] != _CANARY).any():
            raw[:start] = _CANARY
            raw[end:] = _CANARY
            raise RuntimeError(f"{what} wrote outside a device array of shape {shape} ({dtype})")


class EmulatedKernels:
    """tinygpt._C.cuda played by the emulator's module; every launcher call checks the guards."""

    def __init__(self, module):
        self._module = module

    def __getattr__(self, name):
        fn = getattr(self._module, name)
        if not callable(fn):
            return fn

        def launch(*args, **kwargs):
            out = fn(*args, **kwargs)
            check_guards(f"tinygpt._C.cuda.{name} (emulated)")
            return out

        return launch


def install(monkeypatch, kernels=None):
    """Make tinygpt.backend use FakeCupy as CuPy (with a 'GPU'); returns the fake module.

    kernels: None (the CUDA kernels are switched off), or the emulator's module
    (tests/cuda_emu/build.py load()), which then plays tinygpt._C.cuda.
    """
    from tinygpt import backend
    from tinygpt.kernels import cuda as kcuda
    from tinygpt.kernels import reference

    fake = FakeCupy()
    monkeypatch.setattr(backend, "_cupy", fake)
    monkeypatch.setattr(backend, "_cuda_ok", True)
    monkeypatch.setattr(backend, "erf", lambda x: reference.erf(np.asarray(x)).view(GpuArray))
    if kernels is None:
        monkeypatch.setattr(kcuda, "has", lambda op: False)  # no real CUDA kernels for fake arrays
    else:
        monkeypatch.setattr(kcuda, "_cuda", EmulatedKernels(kernels))
        monkeypatch.setattr(fake, "empty", lambda shape, dtype=np.float32: _guarded_empty(shape, dtype))
        monkeypatch.setattr(fake, "zeros", lambda shape, dtype=np.float32: _guarded_empty(shape, dtype, 0))
    return fake


def install_emulator(monkeypatch):
    """install() with the CUDA emulator (tests/cuda_emu, built or reused) playing tinygpt._C.cuda."""
    emu = os.path.join(os.path.dirname(os.path.abspath(__file__)), "cuda_emu")
    if emu not in sys.path:
        sys.path.insert(0, emu)
    import build  # noqa: PLC0415 - tests/cuda_emu/build.py

    return install(monkeypatch, kernels=build.load())
