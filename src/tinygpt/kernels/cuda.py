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

import numbers
import operator
from typing import NamedTuple

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


# ============================================================================= cugemm families
# matmul, layernorm, gelu, adamw (csrc/cuda/{matmul,layernorm,gelu,adamw}.cu).
import math as _math  # noqa: E402 - kept inside this block to ease merging
import os as _os  # noqa: E402

_INT_MAX = 2**31 - 1


def _size(name: str, n: int) -> int:
    if n > _INT_MAX:
        raise ValueError(f"{name}: size {n} exceeds the CUDA kernels' 32-bit index range")
    return int(n)


def _launch(name: str):
    fn = getattr(_cuda, name, None)
    if fn is None:
        raise RuntimeError(f"tinygpt._C.cuda has no {name}: the extension was built without the CUDA kernels "
                           "(rebuild with TINYGPT_CUDA=ON)")
    return fn


# ----------------------------------------------------------------------------- matmul: precision
# Which inputs the tensor-core GEMM may use, like torch.set_float32_matmul_precision:
#   'fp32' (default)  "3xTF32": each operand split as hi + lo TF32 parts, three MMAs per product;
#                     ~fp32 accuracy (~2^-21 relative per product), ~1/3 of the TF32 rate.
#   'tf32'            inputs rounded to TF32 (10-bit mantissa, relative 2^-11): the fastest for fp32
#                     arrays; what nanoGPT turns on (torch.backends.cuda.matmul.allow_tf32 = True).
#   'bf16'            inputs rounded to bfloat16 (7-bit mantissa, relative 2^-8) in shared memory;
#                     the arrays stay float32 (no bf16 array support: the model keeps fp32).
# All accumulate in fp32. Why fp32 by default: PyTorch's default is also full fp32 ('highest',
# allow_tf32 off), and with it a GPU run matches the CPU kernels to float32 accuracy (the same
# loss curves and test tolerances); TF32 is one call (or TINYGPT_MATMUL_PRECISION=tf32) away for
# speed. The setting is an allowance, like allow_tf32: products that the policy below sends to
# cuBLAS (cupy.matmul) run in cuBLAS's fp32 (or TF32 if CuPy was started with CUPY_TF32=1).
_PRECISIONS = {"tf32": 0, "fp32": 1, "bf16": 2}


def _check_precision(name):
    if name not in _PRECISIONS:
        raise ValueError(f"matmul precision must be one of {sorted(_PRECISIONS)}, got {name!r}")
    return name


try:
    _matmul_precision = _check_precision(_os.environ.get("TINYGPT_MATMUL_PRECISION", "fp32").strip().lower())
except ValueError as _exc:
    raise ValueError(f"TINYGPT_MATMUL_PRECISION: {_exc}") from None


def set_matmul_precision(name: str) -> str:
    """Set the tensor-core GEMM's input precision ('fp32' | 'tf32' | 'bf16'); returns the previous one."""
    global _matmul_precision
    previous, _matmul_precision = _matmul_precision, _check_precision(name)
    return previous


def get_matmul_precision() -> str:
    return _matmul_precision


# ----------------------------------------------------------------------------- matmul: cuBLAS or ours
# Which GEMM runs each product: ours (csrc/cuda/matmul.cu) or cuBLAS through cupy.matmul. Neither wins
# everywhere (cuBLAS has per-shape heuristics and split-K; ours fuses the bias + GELU epilogue, saving a
# read and a write of the (rows, 4C) activation and two launches), and the answer depends on the GPU,
# so by default ('auto') it is measured on the GPU at hand, like torch.backends.cudnn.benchmark:
# the first product of each shape class runs both implementations on its own arguments (one warm-up
# each, then _TUNE_REPS timed runs, interleaved, timed with CUDA events), and the one with the lower
# median runs that class from then on. A shape class is (device, op, direction, rows rounded up to a
# power of two, in_features, out_features, precision): the forward and the backward (dx + dW) of a
# layer are measured separately, and generation's changing row counts reuse a handful of classes.
# Measuring waits on the GPU after each timed run (once per class, in the first step); `matmul_choices()`
# lists what was measured (benchmarks/gpu.py prints it). The choice can differ between processes when
# the two are within noise, and the two GEMMs round differently (both within the fp32 / TF32 bounds);
# for bit-reproducible runs across processes pin one with TINYGPT_CUDA_MATMUL=ours|cublas (or
# set_matmul_backend), which also never synchronises.
_TUNE_REPS = 3
_BACKENDS = ("auto", "ours", "cublas")
_matmul_backend = _os.environ.get("TINYGPT_CUDA_MATMUL", "auto").strip().lower()
if _matmul_backend not in _BACKENDS:
    raise ValueError(f"TINYGPT_CUDA_MATMUL must be 'auto', 'ours' or 'cublas', got {_matmul_backend!r}")


class MatmulChoice(NamedTuple):
    ours: bool        # True: our GEMM runs this shape class, False: cuBLAS
    ours_ms: float    # median of the timed runs
    cublas_ms: float


_matmul_choices: dict[tuple, MatmulChoice] = {}


def set_matmul_backend(name: str) -> str:
    """'auto' (measured per shape class), 'ours' or 'cublas' for every linear / linear_gelu; returns the previous."""
    global _matmul_backend
    if name not in _BACKENDS:
        raise ValueError(f"matmul backend must be 'auto', 'ours' or 'cublas', got {name!r}")
    previous, _matmul_backend = _matmul_backend, name
    return previous


def get_matmul_backend() -> str:
    return _matmul_backend


def _shape_class(op: str, direction: str, rows: int, n_in: int, n_out: int) -> tuple:
    if direction not in ("forward", "backward"):
        raise ValueError(f"direction must be 'forward' or 'backward', got {direction!r}")
    bucket = 1 << max(0, rows - 1).bit_length()  # rows rounded up to a power of two
    return (backend.cupy().cuda.Device().id, op, direction, bucket, n_in, n_out, _matmul_precision)


def matmul_policy(op: str, rows: int, n_in: int, n_out: int, direction: str = "forward") -> bool | None:
    """True when our GEMM runs `op` ('linear' | 'linear_gelu') on x (rows, n_in), weight (n_out, n_in) in
    that direction, False for cuBLAS; None when the backend is 'auto' and that class is not measured yet."""
    if _matmul_backend != "auto":
        return _matmul_backend == "ours"
    choice = _matmul_choices.get(_shape_class(op, direction, rows, n_in, n_out))
    return None if choice is None else choice.ours


def matmul_choices() -> dict[tuple, MatmulChoice]:
    """What 'auto' measured so far: {(device, op, direction, rows class, n_in, n_out, precision): MatmulChoice}."""
    return dict(_matmul_choices)


def clear_matmul_choices() -> None:
    """Forget the measurements (the next product of each class is measured again)."""
    _matmul_choices.clear()


def _median_ms(fns: dict, reps: int, warmup: int = 1) -> dict:
    """Median GPU time in ms of each callable, timed with CUDA events on the current stream: `warmup`
    calls each, then `reps` rounds, interleaved (every other round in reverse order, so neither goes
    first every time). Also what benchmarks/cuda/_events.py times with."""
    cp = backend.cupy()
    stream = cp.cuda.get_current_stream()
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    stream.synchronize()
    names = list(fns)
    start, end = cp.cuda.Event(), cp.cuda.Event()
    times = {name: [] for name in names}
    for r in range(reps):
        for name in names if r % 2 == 0 else names[::-1]:
            start.record(stream)
            fns[name]()
            end.record(stream)
            end.synchronize()
            times[name].append(cp.cuda.get_elapsed_time(start, end))
    return {name: float(np.median(t)) for name, t in times.items()}


def _run_gemm(op, direction, rows, n_in, n_out, ours, cublas) -> None:
    """Run `ours()` or `cublas()` (each computes the same outputs in place) as the policy says, measuring
    the class first when it has no choice yet."""
    use = matmul_policy(op, rows, n_in, n_out, direction)
    if use is None:  # once per class: the key is built a second time only here
        t = _median_ms({"ours": ours, "cublas": cublas}, _TUNE_REPS)
        choice = MatmulChoice(t["ours"] < t["cublas"], t["ours"], t["cublas"])
        _matmul_choices[_shape_class(op, direction, rows, n_in, n_out)] = choice
        use = choice.ours
    (ours if use else cublas)()


_dw_splits: int | None = None  # tests force a split-K count here (None: linear_dw_splits decides)


def _colsum_chunks(rows: int) -> int:
    """Row chunks of the deterministic column sum (>= 32 rows each, at most 256 chunks)."""
    return max(1, min(256, -(-rows // 32)))


def _linear_dims(op, x, weight):
    cp = backend.cupy()
    if not isinstance(x, cp.ndarray) or x.ndim < 1:
        raise ValueError(f"{op}: x must be a cupy array with at least 1 dimension (..., in), "
                         f"got {type(x).__name__} {getattr(x, 'shape', '')}")
    _arg(f"{op}: weight", weight, ndim=2)
    n_in = x.shape[-1]
    if weight.shape[1] != n_in:
        raise ValueError(f"{op}: weight must have shape (out, {n_in}) to match x {tuple(x.shape)}, "
                         f"got {tuple(weight.shape)}")
    rows = _math.prod(x.shape[:-1])
    n_out = weight.shape[0]
    for what, n in (("rows", rows), ("in_features", n_in), ("out_features", n_out)):
        _size(f"{op}: {what}", n)
    return rows, n_in, n_out


def _linear_out(op, x, weight, bias, gelu):
    rows, n_in, n_out = _linear_dims(op, x, weight)
    xptr = _arg(f"{op}: x", x)
    wptr = weight.data.ptr
    bptr = 0 if bias is None else _arg(f"{op}: bias", bias, shape=(n_out,))
    out_shape = tuple(x.shape[:-1]) + (n_out,)
    h = _empty(out_shape)
    y = _empty(out_shape) if gelu else h
    stream = _stream()

    def ours():
        _launch("linear_forward_launch")(h.data.ptr, y.data.ptr if gelu else 0, xptr, wptr, bptr, rows,
                                         n_in, n_out, _PRECISIONS[_matmul_precision], stream)

    def cublas():  # (rows, in) @ (in, out), then the epilogue as separate passes
        cp = backend.cupy()
        cp.matmul(x.reshape(rows, n_in), weight.T, out=h.reshape(rows, n_out))
        if bias is not None:
            cp.add(h, bias, out=h)
        if gelu:
            _launch("gelu_forward_launch")(y.data.ptr, h.data.ptr, h.size, True, stream)

    _run_gemm("linear_gelu" if gelu else "linear", "forward", rows, n_in, n_out, ours, cublas)
    return h, y


def _linear_grads(op, g, x, weight, has_bias, rows, n_in, n_out):
    """(dx, dweight, dbias | None) for g (rows, n_out) given as a C-contiguous cupy array."""
    dx = _empty(x.shape)
    dw = _empty(weight.shape)
    db = _empty((n_out,)) if has_bias else None
    prec, stream = _PRECISIONS[_matmul_precision], _stream()

    def ours():
        _launch("linear_backward_dx_launch")(dx.data.ptr, g.data.ptr, weight.data.ptr, rows, n_in, n_out,
                                             prec, stream)
        # split-K over rows when dW has few output tiles (the launcher's device-aware choice)
        splits = _dw_splits if _dw_splits is not None else _launch("linear_dw_splits")(rows, n_in, n_out)
        ws = _empty((splits * n_out * n_in,)) if splits > 1 else None
        _launch("linear_backward_dw_launch")(dw.data.ptr, g.data.ptr, x.data.ptr, 0 if ws is None else ws.data.ptr,
                                             rows, n_in, n_out, splits, prec, stream)

    def cublas():
        cp = backend.cupy()
        g2 = g.reshape(rows, n_out)
        cp.matmul(g2, weight, out=dx.reshape(rows, n_in))  # (rows, out) @ (out, in)
        cp.matmul(g2.T, x.reshape(rows, n_in), out=dw)  # (out, rows) @ (rows, in)

    _run_gemm(op, "backward", rows, n_in, n_out, ours, cublas)
    if has_bias:
        chunks = _colsum_chunks(rows)
        partial = _empty((chunks * n_out,))
        _launch("colsum_launch")(db.data.ptr, g.data.ptr, partial.data.ptr, rows, n_out, chunks, _stream())
    return dx, dw, db


def _check_grad(op, name, g, x, n_out):
    want = tuple(x.shape[:-1]) + (n_out,)
    _arg(f"{op}: {name}", g, shape=want)


LAUNCHERS["linear"] = ("linear_forward_launch", "linear_backward_dx_launch", "linear_backward_dw_launch",
                       "linear_dw_splits", "colsum_launch")
LAUNCHERS["linear_gelu"] = LAUNCHERS["linear"] + ("gelu_forward_launch", "gelu_backward_launch")


def linear_forward(x, weight, bias):
    """y = x @ weight.T + bias for x (..., in), weight (out, in), bias (out,) or None; (y, ())."""
    y, _ = _linear_out("linear_forward", x, weight, bias, False)
    return y, ()


def linear_backward(grad, x, weight, has_bias, saved):
    """(dx, dweight, dbias | None) = (grad @ weight, grad^T @ x, grad summed over rows)."""
    rows, n_in, n_out = _linear_dims("linear_backward", x, weight)
    _arg("linear_backward: x", x)
    _check_grad("linear_backward", "grad", grad, x, n_out)
    return _linear_grads("linear", grad, x, weight, has_bias, rows, n_in, n_out)


def linear_gelu_forward(x, weight, bias):
    """y = gelu_tanh(x @ weight.T + bias), fused; returns (y, (h,)) with h the pre-activation."""
    h, y = _linear_out("linear_gelu_forward", x, weight, bias, True)
    return y, (h,)


def linear_gelu_backward(grad, x, weight, has_bias, saved):
    """dh = grad * gelu'(h) (h saved by forward), then linear's gradients with dh."""
    op = "linear_gelu_backward"
    rows, n_in, n_out = _linear_dims(op, x, weight)
    _arg(f"{op}: x", x)
    _check_grad(op, "grad", grad, x, n_out)
    if not (isinstance(saved, tuple) and len(saved) == 1):
        raise ValueError(f"{op}: saved must be the (h,) tuple linear_gelu_forward returned")
    (h,) = saved
    _check_grad(op, "saved h", h, x, n_out)
    dh = _empty(h.shape)
    _launch("gelu_backward_launch")(dh.data.ptr, grad.data.ptr, h.data.ptr, h.size, True, _stream())
    return _linear_grads("linear_gelu", dh, x, weight, has_bias, rows, n_in, n_out)


# ----------------------------------------------------------------------------- layernorm
LAUNCHERS["layernorm"] = ("layernorm_forward_launch", "layernorm_backward_launch")
LAUNCHERS["add_layernorm"] = LAUNCHERS["layernorm"]


def _ln_dims(op, x):
    cp = backend.cupy()
    if not isinstance(x, cp.ndarray) or x.ndim < 1 or x.shape[-1] == 0:
        raise ValueError(f"{op}: x must be a cupy array (..., C) with C >= 1, got "
                         f"{type(x).__name__} {getattr(x, 'shape', '')}")
    C = x.shape[-1]
    N = x.size // C
    _size(f"{op}: x", N)
    return N, C


def _ln_chunks(N: int) -> int:
    """Row blocks of the layernorm backward (>= 8 rows each, at most 512): the dweight/dbias workspace."""
    return max(1, min(512, -(-N // 8)))


def _opt(op, name, a, C):
    return 0 if a is None else _arg(f"{op}: {name}", a, shape=(C,))


def _saved_stats(op, saved, first, N):
    if not isinstance(saved, tuple) or len(saved) != first + 2:
        raise ValueError(f"{op}: saved must be the tuple its forward returned ({first + 2} items)")
    return (_arg(f"{op}: saved mean", saved[first], shape=(N,)),
            _arg(f"{op}: saved rstd", saved[first + 1], shape=(N,)))


def _ln_backward(op, grad, xs, weight, mptr, rptr, grad_s, N, C):
    dx = _empty(xs.shape)
    dw = None if weight is None else _empty((C,))
    db = _empty((C,))
    chunks = _ln_chunks(N)
    partial = _empty((chunks * C * (1 if weight is None else 2),))
    _launch("layernorm_backward_launch")(
        dx.data.ptr, 0 if dw is None else dw.data.ptr, db.data.ptr, partial.data.ptr, grad.data.ptr,
        xs.data.ptr, _opt(op, "weight", weight, C), mptr, rptr, 0 if grad_s is None else grad_s.data.ptr,
        N, C, chunks, _stream())
    return dx, dw, db


def layernorm_forward(x, weight, bias, eps):
    """Normalise over the last axis; returns (y, (mean, rstd)) with mean, rstd float32 (N,)."""
    op = "layernorm_forward"
    N, C = _ln_dims(op, x)
    xptr = _arg(f"{op}: x", x)
    wptr, bptr = _opt(op, "weight", weight, C), _opt(op, "bias", bias, C)
    y, mean, rstd = _empty(x.shape), _empty((N,)), _empty((N,))
    _launch("layernorm_forward_launch")(y.data.ptr, 0, mean.data.ptr, rstd.data.ptr, xptr, 0, wptr, bptr,
                                        N, C, float(eps), _stream())
    return y, (mean, rstd)


def layernorm_backward(grad, x, weight, saved):
    """(dx, dweight | None, dbias) of layernorm_forward."""
    op = "layernorm_backward"
    N, C = _ln_dims(op, x)
    _arg(f"{op}: x", x)
    _arg(f"{op}: grad", grad, shape=x.shape)
    mptr, rptr = _saved_stats(op, saved, 0, N)
    return _ln_backward(op, grad, x, weight, mptr, rptr, None, N, C)


def add_layernorm_forward(x, residual, weight, bias, eps):
    """s = x + residual, y = layernorm(s); returns ((s, y), (s, mean, rstd))."""
    op = "add_layernorm_forward"
    N, C = _ln_dims(op, x)
    xptr = _arg(f"{op}: x", x)
    rptr = _arg(f"{op}: residual", residual, shape=x.shape)
    wptr, bptr = _opt(op, "weight", weight, C), _opt(op, "bias", bias, C)
    s, y, mean, rstd = _empty(x.shape), _empty(x.shape), _empty((N,)), _empty((N,))
    _launch("layernorm_forward_launch")(y.data.ptr, s.data.ptr, mean.data.ptr, rstd.data.ptr, xptr, rptr,
                                        wptr, bptr, N, C, float(eps), _stream())
    return (s, y), (s, mean, rstd)


def add_layernorm_backward(grad_s, grad_y, x, residual, weight, saved):
    """(dx, dresidual, dweight | None, dbias), dx is dresidual (the same array); grad_s may be None."""
    op = "add_layernorm_backward"
    N, C = _ln_dims(op, x)
    _arg(f"{op}: x", x)
    _arg(f"{op}: residual", residual, shape=x.shape)
    _arg(f"{op}: grad_y", grad_y, shape=x.shape)
    if grad_s is not None:
        _arg(f"{op}: grad_s", grad_s, shape=x.shape)
    if not isinstance(saved, tuple) or len(saved) != 3:
        raise ValueError(f"{op}: saved must be the tuple its forward returned (3 items)")
    s = saved[0]
    _arg(f"{op}: saved s", s, shape=x.shape)
    mptr, rptr = _saved_stats(op, saved, 1, N)
    dx, dw, db = _ln_backward(op, grad_y, s, weight, mptr, rptr, grad_s, N, C)
    return dx, dx, dw, db


# ----------------------------------------------------------------------------- gelu
LAUNCHERS["gelu"] = ("gelu_forward_launch", "gelu_backward_launch")


def _is_tanh(op, approximate):
    if approximate not in ("tanh", "none"):
        raise ValueError(f"{op}: approximate must be 'tanh' or 'none', got {approximate!r}")
    return approximate == "tanh"


def gelu_forward(x, approximate):
    """GELU of float32 x (any shape): (y, ()); 'tanh' (GPT-2) or 'none' (exact, erf)."""
    tanh = _is_tanh("gelu_forward", approximate)
    xptr = _arg("gelu_forward: x", x)
    y = _empty(x.shape)
    _launch("gelu_forward_launch")(y.data.ptr, xptr, x.size, tanh, _stream())
    return y, ()


def gelu_backward(grad, x, approximate, saved):
    """grad * gelu'(x) (nothing saved: recomputed from x)."""
    tanh = _is_tanh("gelu_backward", approximate)
    xptr = _arg("gelu_backward: x", x)
    gptr = _arg("gelu_backward: grad", grad, shape=x.shape)
    dx = _empty(x.shape)
    _launch("gelu_backward_launch")(dx.data.ptr, gptr, xptr, x.size, tanh, _stream())
    return dx


# ----------------------------------------------------------------------------- adamw
LAUNCHERS["adamw_step"] = ("adamw_step_launch",)
LAUNCHERS["adamw"] = LAUNCHERS["adamw_step"]
LAUNCHERS["adamw_multi_step"] = ("adamw_multi_step_launch", "adamw_multi_chunk")


def _adamw_state(op, param, grad, exp_avg, exp_avg_sq):
    pp = _arg(f"{op}: param", param)
    n = param.size
    ptrs = [pp]
    for name, a in (("grad", grad), ("exp_avg", exp_avg), ("exp_avg_sq", exp_avg_sq)):
        _arg(f"{op}: {name}", a)
        if a.size != n:
            raise ValueError(f"{op}: {name} must have param's size {n}, got shape {tuple(a.shape)}")
        ptrs.append(a.data.ptr)
    return ptrs, n


def _adamw_step_check(op, step):
    if int(step) < 1:
        raise ValueError(f"{op}: step must be >= 1 (it counts from 1), got {step}")


def adamw_step(param, grad, exp_avg, exp_avg_sq, *, lr, beta1, beta2, eps, weight_decay, step):
    """In-place AdamW update of float32 param, exp_avg, exp_avg_sq from grad (reference.adamw_step)."""
    op = "adamw_step"
    _adamw_step_check(op, step)
    ptrs, n = _adamw_state(op, param, grad, exp_avg, exp_avg_sq)
    _launch("adamw_step_launch")(*ptrs, n, float(lr), float(beta1), float(beta2), float(eps),
                                 float(weight_decay), int(step), _stream())


def adamw_multi_step(params, grads, exp_avgs, exp_avg_sqs, *, lr, beta1, beta2, eps, weight_decay, step):
    """adamw_step on every (param, grad, exp_avg, exp_avg_sq) of the lists, in one launch (one param
    group: the scalars are shared)."""
    op = "adamw_multi_step"
    _adamw_step_check(op, step)
    lists = (params, grads, exp_avgs, exp_avg_sqs)
    if len({len(a) for a in lists}) != 1:
        raise ValueError(f"{op}: params, grads, exp_avgs and exp_avg_sqs must have the same length, got "
                         f"{[len(a) for a in lists]}")
    if not params:
        return
    rows = []
    for i, arrays in enumerate(zip(*lists)):
        ptrs, n = _adamw_state(f"{op}: tensor {i}", *arrays)
        rows.append((*ptrs, n))
    table_d, starts_d, blocks = _tensor_table(rows, _launch("adamw_multi_chunk")())
    _launch("adamw_multi_step_launch")(table_d.data.ptr, starts_d.data.ptr, len(params), blocks,
                                       float(lr), float(beta1), float(beta2), float(eps), float(weight_decay),
                                       int(step), _stream())


_last_table: tuple = ((), None)  # (key, result) of the last _tensor_table call


def _tensor_table(rows, chunk):
    """The device table of a multi-tensor launch: rows (pointers..., n) as int64 (T, len(row)), the
    first block of each tensor (cumulative ceil(n / chunk)), and the total block count.
    The table is a function of (rows, chunk) alone, so the last one is reused when they repeat
    (clip_grad_norm_'s norm and scale launches describe the same gradients)."""
    global _last_table
    key = (tuple(rows), chunk)
    if _last_table[0] == key:
        return _last_table[1]
    table = np.array(rows, dtype=np.int64).reshape(len(rows), -1)
    starts = np.zeros(len(rows) + 1, dtype=np.int64)
    np.cumsum(-(-table[:, -1] // chunk), out=starts[1:])
    cp = backend.cupy()
    # copied on the current stream, so ordered before the launch that reads them
    result = cp.asarray(table), cp.asarray(starts), int(starts[-1])
    _last_table = (key, result)
    return result


# ----------------------------------------------------------------------------- grad norm (csrc/cuda/grad_norm.cu)
# clip_grad_norm_'s two passes over every gradient, each one launch for the whole list.
LAUNCHERS["grad_norm"] = ("grad_norm_launch", "grad_scale_launch", "grad_norm_chunk")


def _grad_rows(op, grads):
    rows = []
    for i, g in enumerate(grads):
        rows.append((_arg(f"{op}: tensor {i}", g), g.size))
    if not rows:
        raise ValueError(f"{op}: need at least one tensor")
    return rows


def grad_norm(grads, norm_type):
    """0-d float64 device array: sum of g^2 over every float32 array of the list (norm_type 2), or
    max |g| (norm_type inf); NaN propagates. Deterministic (fixed reduction order)."""
    op = "grad_norm"
    norm_type = float(norm_type)
    if norm_type not in (2.0, float("inf")):
        raise ValueError(f"{op}: norm_type must be 2 or inf, got {norm_type}")
    table_d, starts_d, blocks = _tensor_table(_grad_rows(op, grads), _launch("grad_norm_chunk")())
    out, partial = _empty((), np.float64), _empty((max(blocks, 1),), np.float64)
    _launch("grad_norm_launch")(out.data.ptr, partial.data.ptr, table_d.data.ptr, starts_d.data.ptr, len(grads),
                                blocks, norm_type != 2.0, _stream())
    return out


def grad_scale_(grads, scale):
    """Every float32 array of the list *= float32(scale), in place, in one launch."""
    op = "grad_scale_"
    table_d, starts_d, blocks = _tensor_table(_grad_rows(op, grads), _launch("grad_norm_chunk")())
    _launch("grad_scale_launch")(table_d.data.ptr, starts_d.data.ptr, len(grads), blocks, float(scale), _stream())

# ============================================================================= end cugemm


# ----------------------------------------------------------------------------- shared argument helpers (cuattn)
def _int(name: str, value) -> int:
    """A Python integer from anything with __index__; errors name the argument."""
    try:
        return operator.index(value)
    except TypeError:
        raise TypeError(f"{name}: expected an int, got {type(value).__name__}") from None


def _seed64(name: str, seed) -> int:
    """The seed taken mod 2^64, as reference.dropout_mask does."""
    return _int(name, seed) % (1 << 64)


def _probability(name: str, p) -> float:
    p = float(p)
    if not 0.0 <= p < 1.0:
        raise ValueError(f"{name}: must be in [0, 1), got {p}")
    return p


# ----------------------------------------------------------------------------- softmax (csrc/cuda/softmax.cu)
LAUNCHERS["softmax"] = ("softmax_forward", "softmax_backward")
LAUNCHERS["log_softmax"] = ("log_softmax_forward", "log_softmax_backward")


def _rows(op: str, what: str, x, axis) -> tuple[int, int, int]:
    """(pointer, rows, C) of x viewed as (rows, C); only the last axis is supported."""
    ptr = _arg(f"{op}: {what}", x)
    if x.ndim < 1:
        raise ValueError(f"{op}: {what} must have at least 1 dimension, got shape {tuple(x.shape)}")
    if axis not in (-1, x.ndim - 1):
        raise ValueError(f"{op}: axis must be the last axis (-1 or {x.ndim - 1}), got {axis} "
                         "(tinygpt.kernels.select sends other axes to the reference)")
    C = x.shape[-1]
    return ptr, (x.size // C if C else 0), C


def _softmax_fwd(op, x, axis):
    xp, rows, C = _rows(op, "x", x, axis)
    y = _empty(x.shape)
    getattr(_cuda, op)(y.data.ptr, xp, rows, C, _stream())
    return y, ()


def _softmax_bwd(op, grad, y, axis):
    yp, rows, C = _rows(op, "y", y, axis)
    gp = _arg(f"{op}: grad", grad, shape=y.shape)
    dx = _empty(y.shape)
    getattr(_cuda, op)(dx.data.ptr, gp, yp, rows, C, _stream())
    return dx


def softmax_forward(x, axis):
    return _softmax_fwd("softmax_forward", x, axis)


def softmax_backward(grad, y, axis, saved):
    return _softmax_bwd("softmax_backward", grad, y, axis)


def log_softmax_forward(x, axis):
    return _softmax_fwd("log_softmax_forward", x, axis)


def log_softmax_backward(grad, y, axis, saved):
    return _softmax_bwd("log_softmax_backward", grad, y, axis)


# ----------------------------------------------------------------------------- cross-entropy (csrc/cuda/cross_entropy.cu)
LAUNCHERS["cross_entropy"] = ("cross_entropy_forward", "cross_entropy_backward")


def cross_entropy_forward(logits, targets, ignore_index):
    """Mean NLL of logits (N, V) float32 against int64 targets (N,), skipping ignore_index.

    Returns (loss 0-d float32, saved = (row_max, row_logsum, ignore_index, count)); count is a
    0-d int64 device array, so nothing waits for the GPU. Targets outside [0, V) that are not
    ignore_index make the loss nan (F.cross_entropy rejects them before any kernel runs).
    """
    op = "cross_entropy_forward"
    lp = _arg(f"{op}: logits", logits, ndim=2)
    N, V = logits.shape
    if V < 1:
        raise ValueError(f"{op}: logits must have at least one class, got shape {tuple(logits.shape)}")
    tp = _arg(f"{op}: targets", targets, shape=(N,), dtype=np.int64)
    ignore = _int(f"{op}: ignore_index", ignore_index)
    loss, count = _empty(()), _empty((), np.int64)
    row_max, row_logsum = _empty((N,)), _empty((N,))
    row_loss = _empty((max(N, 1),), np.float64)  # workspace: per-row losses, summed in a fixed order
    _cuda.cross_entropy_forward(loss.data.ptr, count.data.ptr, row_max.data.ptr, row_logsum.data.ptr,
                                row_loss.data.ptr, lp, tp, N, V, ignore, _stream())
    return loss, (row_max, row_logsum, ignore, count)


def cross_entropy_backward(grad, logits, targets, saved):
    op = "cross_entropy_backward"
    cp = backend.cupy()
    real = isinstance(grad, numbers.Real) or getattr(getattr(grad, "dtype", None), "kind", "") in ("f", "i", "u")
    # a cupy 0-d array stays on the device (no host round trip); numbers are copied up. (No
    # ascontiguousarray: NumPy's turns 0-d into 1-d, and a 0-d array is contiguous anyway.)
    g = cp.asarray(grad, dtype=cp.float64) if real else None
    if g is None or g.ndim != 0:
        raise ValueError(f"{op}: grad must be a 0-d real array or number (the loss's gradient), "
                         f"got {type(grad).__name__} of shape {getattr(grad, 'shape', ())}")
    lp = _arg(f"{op}: logits", logits, ndim=2)
    N, V = logits.shape
    tp = _arg(f"{op}: targets", targets, shape=(N,), dtype=np.int64)
    if not isinstance(saved, tuple) or len(saved) != 4:
        raise ValueError(f"{op}: saved must be the 4-tuple cross_entropy_forward returned")
    row_max, row_logsum, ignore, count = saved
    mp = _arg(f"{op}: saved[0] (row max)", row_max, shape=(N,))
    sp = _arg(f"{op}: saved[1] (row log-sum)", row_logsum, shape=(N,))
    cntp = _arg(f"{op}: saved[3] (count)", count, shape=(), dtype=np.int64)
    dlogits = _empty((N, V))
    _cuda.cross_entropy_backward(dlogits.data.ptr, lp, tp, mp, sp, g.data.ptr, cntp, N, V,
                                 _int(f"{op}: saved[2] (ignore_index)", ignore), _stream())
    return dlogits


# ----------------------------------------------------------------------------- dropout (csrc/cuda/dropout.cu)
LAUNCHERS["dropout"] = ("dropout_forward", "dropout_backward")


def dropout_forward(x, p, seed):
    """Inverted dropout; saved = (seed mod 2^64, shape): backward regenerates the mask."""
    op = "dropout_forward"
    xp = _arg(f"{op}: x", x)
    p = _probability(f"{op}: p", p)
    s = _seed64(f"{op}: seed", seed)
    y = _empty(x.shape)
    _cuda.dropout_forward(y.data.ptr, xp, x.size, p, s, _stream())
    return y, (s, tuple(x.shape))


def dropout_backward(grad, p, saved):
    op = "dropout_backward"
    if not isinstance(saved, tuple) or len(saved) != 2:
        raise ValueError(f"{op}: saved must be the (seed, shape) from dropout_forward")
    seed, shape = saved
    gp = _arg(f"{op}: grad", grad, shape=shape)
    p = _probability(f"{op}: p", p)
    dx = _empty(grad.shape)
    _cuda.dropout_backward(dx.data.ptr, gp, grad.size, p, _seed64(f"{op}: saved seed", seed), _stream())
    return dx


# ----------------------------------------------------------------------------- attention (csrc/cuda/attention.cu)
LAUNCHERS["attention"] = ("attention_forward", "attention_backward")
ATTENTION_MAX_HEAD = 256  # largest q/k or v head size the CUDA kernels take


def _attention_dims(op, q, k, v):
    """Checks q (..., Tq, D), k (..., Tk, D), v (..., Tk, Dv); returns (lead, BH, Tq, Tk, D, Dv)."""
    for name, a in (("q", q), ("k", k), ("v", v)):
        _arg(f"{op}: {name}", a)
    if q.ndim < 2:
        raise ValueError(f"{op}: q must be (..., Tq, hs), got shape {tuple(q.shape)}")
    if k.ndim != q.ndim or k.shape[:-2] != q.shape[:-2] or k.shape[-1] != q.shape[-1]:
        raise ValueError(f"{op}: k must be (..., Tk, hs) with q's leading dims and head size, "
                         f"got q {tuple(q.shape)}, k {tuple(k.shape)}")
    if v.ndim != k.ndim or v.shape[:-1] != k.shape[:-1]:
        raise ValueError(f"{op}: v must match k {tuple(k.shape)} except in the last dim, got {tuple(v.shape)}")
    lead = tuple(q.shape[:-2])
    Tq, D = q.shape[-2:]
    Tk, Dv = k.shape[-2], v.shape[-1]
    if max(D, Dv) > ATTENTION_MAX_HEAD:
        raise ValueError(f"{op}: head sizes up to {ATTENTION_MAX_HEAD} are supported on CUDA, got q/k {D}, v {Dv}")
    return lead, int(np.prod(lead, dtype=np.int64)), Tq, Tk, D, Dv


def _window(op, window):
    if window is None:
        return None
    w = _int(f"{op}: window", window)
    if w < 1:
        raise ValueError(f"{op}: window must be None or a positive int, got {w}")
    return w


def _check_key_spans(op, Tq, Tk, causal, window):
    """Every query must see a key (reference.attention_mask); spans are monotone, so the first
    query (fewest keys behind it) and the last decide."""
    for i in sorted({0, Tq - 1}) if Tq > 0 else ():
        pos = Tk - Tq + i
        lo, hi = 0, Tk
        if causal:
            hi = min(hi, pos + 1)
        if window is not None:
            lo = max(lo, pos - window + 1)
            if not causal:
                hi = min(hi, pos + window)
        if lo >= hi:
            raise ValueError(f"{op}: query {i} (position {pos} of {Tk} keys) sees no key"
                             f"{' (causal attention needs Tq <= Tk)' if causal else ''}; its softmax would be undefined")


def _attention_flags(op, Tq, Tk, causal, window, dropout_p, seed, seed_name="seed"):
    """(causal, window or None, dropout p, seed mod 2^64), checked; every query must see a key."""
    causal = bool(causal)
    w = _window(op, window)
    p = _probability(f"{op}: dropout_p", dropout_p)
    s = _seed64(f"{op}: {seed_name}", seed)
    _check_key_spans(op, Tq, Tk, causal, w)
    return causal, w, p, s


def _attention_saved(op, grad, saved, out_shape, row_shape, Tq, Tk, dropout_p):
    """Backward's inputs from forward's saved 6-tuple: pointers (grad, out, row max, row sum), each
    checked against its shape, and the flags."""
    if not isinstance(saved, tuple) or len(saved) != 6:
        raise ValueError(f"{op}: saved must be the 6-tuple {op.replace('backward', 'forward')} returned")
    out, row_max, row_sum, causal, window, seed = saved
    ptrs = (_arg(f"{op}: grad", grad, shape=out_shape), _arg(f"{op}: saved out", out, shape=out_shape),
            _arg(f"{op}: saved row max", row_max, shape=row_shape),
            _arg(f"{op}: saved row sum", row_sum, shape=row_shape))
    return ptrs, _attention_flags(op, Tq, Tk, causal, window, dropout_p, seed, "saved seed")


def attention_forward(q, k, v, causal, window, dropout_p, seed, scale):
    """Flash attention; saved = (out, row max, row sum, causal, window, seed), as the CPU kernel."""
    op = "attention_forward"
    lead, BH, Tq, Tk, D, Dv = _attention_dims(op, q, k, v)
    causal, w, p, s = _attention_flags(op, Tq, Tk, causal, window, dropout_p, seed)
    out = _empty(lead + (Tq, Dv))  # (..., Tq, Dv)
    row_max, row_sum = _empty(lead + (Tq,)), _empty(lead + (Tq,))
    _cuda.attention_forward(out.data.ptr, row_max.data.ptr, row_sum.data.ptr, q.data.ptr, k.data.ptr, v.data.ptr,
                            BH, Tq, Tk, D, Dv, causal, w or 0, p, s, float(scale), _stream())
    return out, (out, row_max, row_sum, causal, w, s)


def attention_backward(grad, q, k, v, dropout_p, scale, saved):
    op = "attention_backward"
    lead, BH, Tq, Tk, D, Dv = _attention_dims(op, q, k, v)
    (gp, op_, mp, lp), (causal, w, p, s) = _attention_saved(op, grad, saved, lead + (Tq, Dv), lead + (Tq,), Tq, Tk,
                                                            dropout_p)
    dq = _empty(lead + (Tq, D))  # (..., Tq, D)
    dk = _empty(lead + (Tk, D))  # (..., Tk, D)
    dv = _empty(lead + (Tk, Dv))  # (..., Tk, Dv)
    drow = _empty((max(BH * Tq, 1),))  # workspace: D = rowsum(grad * out)
    _cuda.attention_backward(dq.data.ptr, dk.data.ptr, dv.data.ptr, drow.data.ptr, gp, q.data.ptr, k.data.ptr,
                             v.data.ptr, op_, mp, lp, BH, Tq, Tk, D, Dv, causal, w or 0, p, s, float(scale),
                             _stream())
    return dq, dk, dv


# ----------------------------------------------------------------------------- attention on packed qkv
# c_attn's (B, T, 3C) output read in place (the kernels above with strided row addressing): no split
# into heads, and the output written merged (B, T, C); the backward writes dqkv (B, T, 3C) directly.
LAUNCHERS["attention_qkv"] = ("attention_qkv_forward", "attention_qkv_backward")


def _qkv_dims(op, qkv, n_head):
    """Checks qkv (B, T, 3C); returns (B, T, n_head, hs)."""
    _arg(f"{op}: qkv", qkv, ndim=3)
    n_head = _int(f"{op}: n_head", n_head)
    B, T, C3 = qkv.shape
    if n_head < 1 or C3 % (3 * n_head):
        raise ValueError(f"{op}: qkv's last dim {C3} must be 3 * n_embd with n_embd divisible by n_head {n_head}")
    hs = C3 // (3 * n_head)
    if hs > ATTENTION_MAX_HEAD:
        raise ValueError(f"{op}: head sizes up to {ATTENTION_MAX_HEAD} are supported on CUDA, got {hs}")
    return B, T, n_head, hs


def attention_qkv_forward(qkv, n_head, causal, window, dropout_p, seed, scale):
    """Flash attention on packed qkv; saved = (out, row max, row sum, causal, window, seed)."""
    op = "attention_qkv_forward"
    B, T, nh, hs = _qkv_dims(op, qkv, n_head)
    causal, w, p, s = _attention_flags(op, T, T, causal, window, dropout_p, seed)
    out = _empty((B, T, nh * hs))
    row_max, row_sum = _empty((B, nh, T)), _empty((B, nh, T))
    _launch("attention_qkv_forward")(out.data.ptr, row_max.data.ptr, row_sum.data.ptr, qkv.data.ptr, B, T, nh, hs,
                                     causal, w or 0, p, s, float(scale), _stream())
    return out, (out, row_max, row_sum, causal, w, s)


def attention_qkv_backward(grad, qkv, n_head, dropout_p, scale, saved):
    op = "attention_qkv_backward"
    B, T, nh, hs = _qkv_dims(op, qkv, n_head)
    (gp, op_, mp, lp), (causal, w, p, s) = _attention_saved(op, grad, saved, (B, T, nh * hs), (B, nh, T), T, T,
                                                            dropout_p)
    dqkv = _empty(qkv.shape)
    drow = _empty((max(B * nh * T, 1),))  # workspace: D = rowsum(grad * out)
    _launch("attention_qkv_backward")(dqkv.data.ptr, drow.data.ptr, gp, qkv.data.ptr, op_, mp, lp, B, T, nh, hs,
                                      causal, w or 0, p, s, float(scale), _stream())
    return dqkv


# ----------------------------------------------------------------------------- embedding (csrc/cuda/embedding.cu)
# The backward is deterministic: grad rows are summed per id in position order (bit for bit numpy.add.at
# and the CPU kernel), through a sort of (id, position) keys instead of cupyx.scatter_add's float atomics.
LAUNCHERS["embedding"] = ("embedding_forward_launch", "embedding_keys_launch", "embedding_backward_launch")


def _ids64(op, ids):
    """The ids as a C-contiguous int64 cupy array (a copy only when they are another integer type)."""
    cp = backend.cupy()
    if not isinstance(ids, cp.ndarray):
        raise TypeError(f"{op}: ids must be a cupy integer array, got {type(ids).__name__}")
    if ids.dtype.kind not in "iu":
        raise TypeError(f"{op}: ids must have an integer dtype, got {ids.dtype}")
    if ids.dtype == np.uint64 and ids.size and int(ids.max()) > np.iinfo(np.int64).max:
        raise ValueError(f"{op}: id {int(ids.max())} does not fit in int64")
    out = cp.ascontiguousarray(ids, dtype=np.int64)
    _arg(f"{op}: ids", out, dtype=np.int64)  # device check
    return out


def embedding_forward(ids, weight):
    """out = weight[ids] for weight (V, C) and integer ids of any shape; returns (out, ()).
    F.embedding has range-checked the ids; an id outside [0, V) here gives a NaN row (never a stray read)."""
    op = "embedding_forward"
    wp = _arg(f"{op}: weight", weight, ndim=2)
    V, C = weight.shape
    ids64 = _ids64(op, ids)
    out = _empty(tuple(ids.shape) + (C,))
    _launch("embedding_forward_launch")(out.data.ptr, wp, ids64.data.ptr, ids64.size, V, C, _stream())
    return out, ()


def embedding_backward(grad, ids, weight_shape, saved):
    """dW (V, C): grad (*ids.shape, C) rows summed per id in position order (deterministic)."""
    op = "embedding_backward"
    if len(weight_shape) != 2:
        raise ValueError(f"{op}: weight_shape must be (V, C), got {tuple(weight_shape)}")
    V, C = (_int(f"{op}: weight_shape", d) for d in weight_shape)
    if V < 1 or C < 1:
        raise ValueError(f"{op}: weight_shape must be (V, C) with V, C >= 1, got {(V, C)}")
    ids64 = _ids64(op, ids)
    gp = _arg(f"{op}: grad", grad, shape=tuple(ids.shape) + (C,))
    n = ids64.size
    dw = _empty((V, C))
    keys = _empty((n,), np.int64)
    if n:
        _launch("embedding_keys_launch")(keys.data.ptr, ids64.data.ptr, n, V, _stream())
        keys.sort()  # in place (CuPy: a CUB radix sort): each id's positions, in position order
    _launch("embedding_backward_launch")(dw.data.ptr, gp, keys.data.ptr, n, V, C, _stream())
    return dw
