"""Kernel dispatch: the one place that picks a native kernel or the reference for each fused op.

OPS below lists every op. An op `name` of family `fam` is, in every layer:
  reference.py               <name>_forward / <name>_backward (the ground truth, NumPy or CuPy via xp)
  csrc/cpu/<fam>.cpp         tinygpt._C.cpu.<name>_forward / _backward (checks arguments, returns what
                             the reference returns)
  csrc/cuda/<fam>.cu +       tinygpt.kernels.cuda.<fam>.<name>_forward / _backward for CuPy arrays
  kernels/cuda/<fam>.py      (check, allocate, launch tinygpt._C.cuda.<name>_*)
  tests/ops/test_<fam>.py    one test file, parametrised over the implementations present
An "update" op (adamw_step, kv_attention, ...) is one call `<name>` that changes arrays in place, instead of
a forward/backward pair.

`select(name, *arrays)` returns a `Kernel` whose forward/backward come from the native
implementation when there is one and the arrays qualify (all on one device, float32,
C-contiguous; on the CPU also `policy.cpu_native`), and from `reference.py` otherwise. The caller
keeps the Kernel in its autograd context so backward runs the implementation that ran forward.
`TINYGPT_NATIVE=0` in the environment (or `use_native(False)`) forces the reference.
"""
from __future__ import annotations

import contextlib
import importlib
import os
from typing import Callable, NamedTuple

import numpy as np

from .. import backend
from . import cuda, policy, reference

try:  # the extension is optional: `import tinygpt` works without a compiler or CUDA
    _native = importlib.import_module("tinygpt._C")
    _native_error = None
except ImportError as exc:
    _native = None
    _native_error = str(exc)

_enabled = os.environ.get("TINYGPT_NATIVE", "1").strip().lower() not in ("0", "false", "off", "no")


class Op(NamedTuple):
    family: str             # the file name of its kernels and tests (see the module docstring)
    kind: str = "function"  # "function": a <name>_forward / <name>_backward pair; "update": one call <name>
    cpu: bool = True        # tinygpt._C.cpu implements it (else the CPU runs the reference or a loop)
    cuda: bool = True       # kernels/cuda/<family>.py may wrap it (False: CPU only, no CUDA module to ask)


OPS: dict[str, Op] = {
    "linear": Op("linear"),
    "linear_gelu": Op("linear"),
    "quantized_linear": Op("quantized_linear"),
    "quantized_linear_gelu": Op("quantized_linear"),
    "embedding": Op("embedding"),
    "layer_norm": Op("layer_norm"),
    "add_layer_norm": Op("layer_norm"),
    "gelu": Op("gelu"),
    "softmax": Op("softmax"),
    "log_softmax": Op("softmax"),
    "cross_entropy": Op("cross_entropy"),
    "dropout": Op("dropout"),
    "attention": Op("attention"),
    "qkv_attention": Op("attention"),
    "kv_attention": Op("attention", "update"),  # decoding; no CUDA kernel: CuPy runs the reference
    # a whole cached inference step: through the blocks, or from token ids to the last logits (models/fastpath.py)
    "cached_blocks": Op("decode", "update", cuda=False),
    "cached_logits": Op("decode", "update", cuda=False),
    "adamw_step": Op("adamw", "update"),
    "adamw_multi_step": Op("adamw", "update", cpu=False),  # the CPU runs adamw_step per tensor
    "grad_norm": Op("grad_norm", "update", cpu=False),     # the CPU reduces per array (nn.utils)
    "grad_scale_": Op("grad_norm", "update", cpu=False),
    "grad_clip_": Op("grad_norm", "update", cpu=False),
}


class Kernel(NamedTuple):
    name: str  # 'reference', 'native-cpu' or 'native-cuda'
    forward: Callable
    backward: Callable


def _spec(op: str) -> Op:
    try:
        return OPS[op]
    except KeyError:
        raise ValueError(f"unknown kernel op {op!r}; the ops are {sorted(OPS)}") from None


def _functions(module, op: str) -> tuple | None:
    """The callables of `op` in `module` (forward, backward) or (update,), or None when one is missing."""
    names = (f"{op}_forward", f"{op}_backward") if OPS[op].kind == "function" else (op,)
    fns = tuple(getattr(module, n, None) for n in names)
    return None if module is None or None in fns else fns


_CPU = {}  # op -> Kernel or None: the extension does not change while the process runs


def implementation(op: str, device: str):
    """The native functions of `op` on 'cpu' or 'cuda' (a Kernel for a forward/backward op, the update
    callable otherwise), or None when this build has none."""
    spec = _spec(op)
    if device == "cpu":
        if op not in _CPU:
            fns = _functions(getattr(_native, "cpu", None), op) if spec.cpu else None
            _CPU[op] = fns and (Kernel("native-cpu", *fns) if spec.kind == "function" else fns[0])
        return _CPU[op]
    if device != "cuda":
        raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
    fns = _functions(cuda.module(op), op) if spec.cuda and cuda.has(op) else None
    return fns and (Kernel("native-cuda", *fns) if spec.kind == "function" else fns[0])


def _reference_kernel(op):
    return Kernel("reference", getattr(reference, f"{op}_forward"), getattr(reference, f"{op}_backward"))


def _qualifies(arrays):
    """The device all arrays share if every float array is float32, C-contiguous and aligned, else None.

    Unaligned arrays (np.frombuffer at an odd offset, a field of a packed structured array) are legal
    NumPy that the native kernels refuse (they read through float*): the reference runs on them."""
    device = None
    for a in arrays:
        if a is None:
            continue
        # type() first: the common case costs one comparison (this runs for every op call)
        cpu = type(a) is np.ndarray or (isinstance(a, np.ndarray) and not backend.is_cupy_array(a))
        dev = "cpu" if cpu else "cuda"
        if device is not None and dev != device:
            return None
        device = dev
        dtype, flags = a.dtype, a.flags
        if dtype.kind == "f" and dtype.char != "f":  # a float other than float32
            return None
        if not flags.c_contiguous or not getattr(flags, "aligned", True):
            return None
    return device


def _native_for(op, arrays):
    """The native implementation of `op` for these arrays, or None (native off, no kernel, not qualifying)."""
    if not _enabled:
        return None
    device = _qualifies(arrays)
    if device == "cpu" and _native is None:
        return None
    return implementation(op, device) if device is not None else None


def select(op: str, *arrays, native_ok: bool = True) -> Kernel:
    """The kernel to run fused op `op` on these arrays (native when possible).

    `native_ok=False` is the caller's veto for arguments that are not arrays and that the native
    kernel does not cover (softmax over an axis other than the last, say): the reference runs.
    On the CPU the shape-class policy (policy.cpu_native) may also prefer the reference.
    On the GPU the reference (array code on cupy) runs every op without a CUDA kernel.
    """
    if _spec(op).kind != "function":
        raise ValueError(f"select: {op!r} is an update op, not a forward/backward pair")
    if native_ok:
        kernel = _native_for(op, arrays)
        if kernel is not None and (kernel.name != "native-cpu" or policy.cpu_native(op, *arrays)):
            return kernel
    return _reference_kernel(op)


# ----------------------------------------------------------------------------- update ops
def adamw_step(param, grad, exp_avg, exp_avg_sq, *, lr, beta1, beta2, eps, weight_decay, step):
    """Fused in-place AdamW update of one parameter (see reference.adamw_step)."""
    fn = _native_for("adamw_step", (param, grad, exp_avg, exp_avg_sq)) or reference.adamw_step
    fn(param, grad, exp_avg, exp_avg_sq, lr=lr, beta1=beta1, beta2=beta2, eps=eps,
       weight_decay=weight_decay, step=step)


def adamw_multi_step(params, grads, exp_avgs, exp_avg_sqs, *, lr, beta1, beta2, eps, weight_decay, step):
    """adamw_step on every (param, grad, exp_avg, exp_avg_sq) of the lists, which share the scalars and
    the step count (one param group). On the GPU that is one multi-tensor launch instead of one per
    parameter (the launches dominate for a small model's many small tensors); elsewhere, or if any
    array does not qualify, one adamw_step per parameter (the same arithmetic either way)."""
    hyper = dict(lr=lr, beta1=beta1, beta2=beta2, eps=eps, weight_decay=weight_decay, step=step)
    lists = (params, grads, exp_avgs, exp_avg_sqs)
    fn = _native_for("adamw_multi_step", [a for arrays in lists for a in arrays]) if params else None
    if fn is not None:
        fn(*lists, **hyper)
        return
    for arrays in zip(*lists):
        adamw_step(*arrays, **hyper)


def kv_attention(qkv, k_cache, v_cache, start, n_head, *, window, dropout_p, seed, scale):
    """Attention of the next tokens against a KV cache: stores their keys and values in place and returns
    out (B, T, C) (see reference.kv_attention)."""
    fn = _native_for("kv_attention", (qkv, k_cache, v_cache)) or reference.kv_attention
    return fn(qkv, k_cache, v_cache, start, n_head, window, dropout_p, seed, scale)


def grad_norm(grads, norm_type):
    """For clip_grad_norm_: the sum of g^2 (norm_type 2) or max |g| (inf) over a list of float32 CuPy
    arrays as a 0-d float64 device array, from one multi-tensor CUDA launch; None when that kernel
    does not apply (CPU arrays, other dtypes or norms, no CUDA build): the caller then reduces per array."""
    norm_type = float(norm_type)
    fn = _native_for("grad_norm", grads) if grads and norm_type in (2.0, float("inf")) else None
    return None if fn is None else fn(grads, norm_type)


def grad_clip_(grads, norm, max_norm: float, norm_type) -> bool:
    """clip_grad_norm_'s scale from grad_norm's device result `norm`, in one CUDA launch that never reads
    it on the host; False (nothing done) when that kernel does not apply: the caller scales another way."""
    fn = _native_for("grad_clip_", grads) if grads and float(norm_type) in (2.0, float("inf")) else None
    if fn is None:
        return False
    fn(grads, norm, max_norm, norm_type)
    return True


def grad_scale_(grads, scale: float) -> None:
    """Every array of the list *= scale in place (one CUDA launch for float32 CuPy arrays)."""
    fn = _native_for("grad_scale_", grads) if grads else None
    if fn is not None:
        fn(grads, scale)
        return
    for g in grads:
        g *= scale


# ----------------------------------------------------------------------------- switches and reports
def native_enabled() -> bool:
    """True when native kernels are on (TINYGPT_NATIVE, use_native) and tinygpt._C is built."""
    return _enabled and _native is not None


def cuda_enabled() -> bool:
    """True when native kernels are on and CuPy arrays have CUDA kernels (cuda_ops())."""
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
    """The ops of OPS that run a CUDA kernel on CuPy arrays in this build."""
    return sorted(op for op in OPS if implementation(op, "cuda") is not None)


def available() -> dict:
    """What was built: the extension, its build info and the ops with a native kernel per device.

    'cpu' lists the ops of OPS that tinygpt._C.cpu implements; 'cuda' those with a CUDA kernel for
    cupy arrays (every other op runs the reference on cupy).
    """
    if _native is None:
        return {"native": False, "enabled": False, "reason": f"tinygpt._C is not built ({_native_error})",
                "cpu": [], "cuda": cuda_ops()}
    cpu = sorted(op for op in OPS if implementation(op, "cpu") is not None)
    return {"native": True, "enabled": _enabled, "build_info": _native.build_info(), "cpu": cpu, "cuda": cuda_ops()}
