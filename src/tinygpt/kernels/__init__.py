"""Kernel dispatch: the one place that picks a native kernel or the reference for each fused op.

For an op `name`, `select(name, *arrays)` returns a `Kernel` whose `forward`/`backward`
come from a native implementation when there is one and the arrays qualify (all on one
device, float32, C-contiguous), and from `reference.py` otherwise:
  numpy arrays -> `tinygpt._C.cpu.<name>_forward` / `<name>_backward` (the pybind11 bindings),
  cupy arrays  -> `tinygpt.kernels.cuda.<name>_forward` / `<name>_backward` (Python wrappers
                  around the launchers in `tinygpt._C.cuda`), when `kernels.cuda.has(name)`.
The reference is array code through `xp`, so it runs on numpy and on cupy alike. The caller
keeps the Kernel in its autograd context so backward always runs the implementation that
ran forward.

`TINYGPT_NATIVE=0` in the environment (or `use_native(False)`) forces the reference.
"""
from __future__ import annotations

import contextlib
import importlib
import os
from typing import Callable, NamedTuple

import numpy as np

from .. import backend
from . import cuda as _cuda_kernels
from . import reference

try:  # the extension is optional: `import tinygpt` works without a compiler or CUDA
    _native = importlib.import_module("tinygpt._C")
    _native_error = None
except ImportError as exc:
    _native = None
    _native_error = str(exc)

_enabled = os.environ.get("TINYGPT_NATIVE", "1").strip().lower() not in ("0", "false", "off", "no")


class Kernel(NamedTuple):
    name: str  # 'reference', 'native-cpu' or 'native-cuda'
    forward: Callable
    backward: Callable


_REFERENCE = {}
_NATIVE = {}


def _submodule(device):
    return getattr(_native, device, None) if _native is not None else None


def _native_kernel(op, device):
    key = (op, device)
    if key not in _NATIVE:
        mod = _submodule(device)
        fwd = getattr(mod, f"{op}_forward", None)
        bwd = getattr(mod, f"{op}_backward", None)
        _NATIVE[key] = Kernel(f"native-{device}", fwd, bwd) if fwd is not None and bwd is not None else None
    return _NATIVE[key]


def _reference_kernel(op):
    if op not in _REFERENCE:
        _REFERENCE[op] = Kernel("reference", getattr(reference, f"{op}_forward"), getattr(reference, f"{op}_backward"))
    return _REFERENCE[op]


def _cuda_kernel(op):
    """The CUDA wrappers for `op` (tinygpt/kernels/cuda.py), or None when the build lacks them."""
    if not _cuda_kernels.has(op):
        return None
    fwd = getattr(_cuda_kernels, f"{op}_forward", None)
    bwd = getattr(_cuda_kernels, f"{op}_backward", None)
    return Kernel("native-cuda", fwd, bwd) if fwd is not None and bwd is not None else None


def _qualifies(arrays):
    """The device all arrays share if every float array is float32 and C-contiguous, else None."""
    device = None
    for a in arrays:
        if a is None:
            continue
        dev = "cpu" if isinstance(a, np.ndarray) and not backend.is_cupy_array(a) else "cuda"
        if device is not None and dev != device:
            return None
        device = dev
        if a.dtype.kind == "f" and a.dtype != np.float32:
            return None
        if not a.flags.c_contiguous:
            return None
    return device


# ----------------------------------------------------------------------------- shape-class policy
# Where a native CPU kernel is not faster than the reference on every shape, _CPU_POLICY[op](*arrays)
# says whether to use it; ops not listed always take the native kernel when it qualifies.
#
# linear / linear_gelu: the native packed SGEMM vs NumPy's matmul (OpenBLAS 0.3.31), measured with
# `benchmarks/kernels/matmul.py --grid --threads 1 --cpu-time` on the 2-core Zen 4 (one thread, CPU
# clock: the machine is shared, and 2-thread wall-clock timings there swing 2-10x with the load).
# Every GEMM of a training step (B*T = 768 and 4096): native faster on 28 of 30 products and within
# 3% on the other two (0.97-1.11x NumPy's time); linear ops 1.02-1.09x, linear_gelu 1.3x (fwd+bwd).
# Few rows (generation): the SGEMM packs W (in x out floats) first, which a handful of rows cannot
# amortise, while OpenBLAS has GEMV / small-matrix paths: NumPy is 1.0-3.5x faster for one row and
# up to 2.9x for a few rows with few outputs. From ~1300 outputs (rows x out; ~650 when in > 512) the
# native one wins every measured shape, by 1.24-3.4x in the 2-32 row band where OpenBLAS switches to
# an unblocked GEMM. Below the line native is at most 1.09x faster (in = 128, out <= 128).
# With 2 threads (`matmul.py --quick`, each library timed in a block), native is within 6% of
# OpenBLAS or faster on all 30 training products (0.94-1.82x NumPy's speed, BENCHMARKS.md). Mixing
# the two inside a step costs more than any shape could gain: OpenBLAS's pool keeps spinning ~0.1 s
# after a call and the native workers then wait scheduler ticks (sending the 4096-row products to
# OpenBLAS made the medium step 1.36x slower, 2424 vs 1782 ms). So the policy ignores the thread count.
_LINEAR_SMALL = ((512, 1280), (None, 640))  # (in_features up to, rows * out below which NumPy wins)


def linear_policy(rows: int, n_in: int, n_out: int) -> bool:
    """True when the native SGEMM should run linear for x (rows, n_in) and weight (n_out, n_in)."""
    if rows <= 1:  # a GEMV: OpenBLAS streams W once, the SGEMM would pack it first
        return False
    limit = next(lim for max_in, lim in _LINEAR_SMALL if max_in is None or n_in <= max_in)
    return rows * n_out >= limit


def _linear_arrays_policy(x, weight, *rest):
    rows = x.size // x.shape[-1] if x.shape[-1] else int(np.prod(x.shape[:-1]))
    return linear_policy(rows, weight.shape[1], weight.shape[0])


_CPU_POLICY = {"linear": _linear_arrays_policy, "linear_gelu": _linear_arrays_policy}


def select(op: str, *arrays, native_ok: bool = True) -> Kernel:
    """The kernel to run fused op `op` on these arrays (native when possible).

    `native_ok=False` is the caller's veto for arguments that are not arrays and that the native
    kernel does not cover (softmax over an axis other than the last, say): the reference runs.
    On the CPU an op listed in _CPU_POLICY also asks its shape-class policy (native only where faster).
    On the GPU the reference (array code on cupy) runs every op the CUDA wrappers do not cover.
    """
    if native_ok and _enabled:
        device = _qualifies(arrays)
        if device == "cuda":
            kernel = _cuda_kernel(op)
            if kernel is not None:
                return kernel
        elif device == "cpu" and _native is not None:
            kernel = _native_kernel(op, device)
            if kernel is not None and (op not in _CPU_POLICY or _CPU_POLICY[op](*arrays)):
                return kernel
    return _reference_kernel(op)


def _adamw_fn(arrays):
    """The AdamW update that runs on these arrays: native CPU / CUDA when it qualifies, else the reference."""
    if _enabled:
        device = _qualifies(arrays)
        if device == "cuda" and _cuda_kernels.has("adamw_step"):
            return getattr(_cuda_kernels, "adamw_step", None) or reference.adamw_step
        if device == "cpu" and _native is not None:
            return getattr(_submodule("cpu"), "adamw_step", None) or reference.adamw_step
    return reference.adamw_step


def adamw_step(param, grad, exp_avg, exp_avg_sq, *, lr, beta1, beta2, eps, weight_decay, step):
    """Fused in-place AdamW update of one parameter (see reference.adamw_step)."""
    fn = _adamw_fn((param, grad, exp_avg, exp_avg_sq))
    fn(param, grad, exp_avg, exp_avg_sq, lr=lr, beta1=beta1, beta2=beta2, eps=eps,
       weight_decay=weight_decay, step=step)


def adamw_multi_step(params, grads, exp_avgs, exp_avg_sqs, *, lr, beta1, beta2, eps, weight_decay, step):
    """adamw_step on every (param, grad, exp_avg, exp_avg_sq) of the lists, which share the scalars and
    the step count (one param group). On the GPU that is one multi-tensor launch instead of one per
    parameter (the launches dominate for a small model's many small tensors); elsewhere, or if any
    array does not qualify, one adamw_step per parameter (the same arithmetic either way)."""
    hyper = dict(lr=lr, beta1=beta1, beta2=beta2, eps=eps, weight_decay=weight_decay, step=step)
    lists = (params, grads, exp_avgs, exp_avg_sqs)
    if (_enabled and params and _cuda_kernels.has("adamw_multi_step")
            and _qualifies([a for arrays in lists for a in arrays]) == "cuda"):
        _cuda_kernels.adamw_multi_step(*lists, **hyper)
        return
    for arrays in zip(*lists):
        adamw_step(*arrays, **hyper)


def grad_norm(grads, norm_type):
    """For clip_grad_norm_: the sum of g^2 (norm_type 2) or max |g| (inf) over a list of float32 CuPy
    arrays as a 0-d float64 device array, from one multi-tensor CUDA launch; None when that kernel
    does not apply (CPU arrays, other dtypes or norms, no CUDA build): the caller then reduces per array."""
    norm_type = float(norm_type)
    if (_enabled and grads and norm_type in (2.0, float("inf")) and _cuda_kernels.has("grad_norm")
            and _qualifies(grads) == "cuda"):
        return _cuda_kernels.grad_norm(grads, norm_type)
    return None


def grad_scale_(grads, scale: float) -> None:
    """Every array of the list *= scale in place (one CUDA launch for float32 CuPy arrays)."""
    if _enabled and grads and _cuda_kernels.has("grad_norm") and _qualifies(grads) == "cuda":
        _cuda_kernels.grad_scale_(grads, scale)
        return
    for g in grads:
        g *= scale


def native_enabled() -> bool:
    """True when native kernels are on (TINYGPT_NATIVE, use_native) and tinygpt._C is built."""
    return _enabled and _native is not None


def cuda_enabled() -> bool:
    """True when native kernels are on and select() has CUDA kernels for CuPy arrays (cuda_ops())."""
    return _enabled and bool(cuda_ops())


@contextlib.contextmanager
def use_native(enabled: bool):
    """Temporarily turn native kernels on or off (tests compare both in one process)."""
    global _enabled
    previous = _enabled
    _enabled = bool(enabled)
    try:
        yield
    finally:
        _enabled = previous


def cuda_ops() -> list:
    """The ops select() / adamw_step() send to CUDA kernels in this build: the tinygpt/kernels/cuda.py
    wrappers (forward and backward, or adamw_step) whose launchers the extension has."""
    return sorted(op for op in _cuda_kernels.LAUNCHERS
                  if (_cuda_kernel(op) is not None if op != "adamw_step"
                      else _cuda_kernels.has(op) and hasattr(_cuda_kernels, "adamw_step")))


def available() -> dict:
    """What was built: the extension, its build info and the native kernels per device.

    'cpu' lists the ops of tinygpt._C.cpu; 'cuda' those that select() sends to the CUDA
    kernels for cupy arrays (every other op runs the reference on cupy).
    """
    if _native is None:
        return {"native": False, "enabled": False, "reason": f"tinygpt._C is not built ({_native_error})",
                "cpu": [], "cuda": cuda_ops()}
    info = _native.build_info()
    mod = _submodule("cpu")
    names = dir(mod) if mod is not None else []
    cpu = sorted(n[: -len("_forward")] for n in names if n.endswith("_forward")) + (
        ["adamw_step"] if "adamw_step" in names else [])
    return {"native": True, "enabled": _enabled, "build_info": info, "cpu": cpu, "cuda": cuda_ops()}
