"""Which implementation runs where more than one could: every such choice lives here.

CPU    `cpu_native(op, *arrays)`: the native kernel or the reference, per shape class, for the ops
       whose native kernel is not faster everywhere (linear, linear_gelu: `linear_policy`).
CUDA   the tensor-core GEMM's input precision (`set_matmul_precision`: fp32 | tf32 | bf16; a training
       run's default: `training_matmul_precision`, TF32 on the GPU), cuBLAS's in the same (`cublas_precision`), and which
       GEMM runs each linear product (`set_matmul_backend`: ours | cublas | auto, measured per shape
       class by `run_gemm`, the autotuner).
The kernels themselves never decide: tinygpt.kernels.select asks cpu_native, and the CUDA linear
wrappers (kernels/cuda/linear.py) ask precision_code and run_gemm.
"""
from __future__ import annotations

import contextlib
import importlib
import os
from typing import NamedTuple

import numpy as np

from .. import backend

# ----------------------------------------------------------------------------- CPU: linear shape classes
# linear / linear_gelu: the native packed SGEMM vs NumPy's matmul (OpenBLAS), measured with
# `benchmarks/kernels/linear.py --grid --threads 1 --cpu-time` (figures in BENCHMARKS.md). The native
# GEMM wins every training product; with few rows (generation) it packs W first, which a handful of
# rows cannot amortise, while OpenBLAS has GEMV / small-matrix paths. Mixing the two libraries inside
# a step costs more than any shape could gain (OpenBLAS's pool keeps spinning after a call), so the
# policy ignores the thread count.
# One row (decode) runs the native GEMV (csrc/cpu/gemm_tiles.h: gemv_row), which streams each weight row
# in order with no packing: from memory (decode of a real model: every weight comes from L3 or DRAM) it
# is 1.3-2.2x OpenBLAS's GEMV at GPT-2's shapes; in cache 0.86-2.25x for in_features >= 384 (0.64-0.87x at
# 64-128 inputs times more than 1,000 outputs). BENCHMARKS.md, issue 15. 2-8 rows (batched decode) run the
# native GEMV too (gemv_rows, no packing); the small-shape rule below was measured when they were packed, so
# it still sends small products of 2-8 rows to NumPy (not re-measured).
_LINEAR_SMALL = ((512, 1280), (None, 640))  # (in_features up to, rows * out below which NumPy wins)


def linear_policy(rows: int, n_in: int, n_out: int) -> bool:
    """True when the native SGEMM should run linear for x (rows, n_in) and weight (n_out, n_in)."""
    if rows <= 1:  # a GEMV (see above)
        return True
    limit = next(lim for max_in, lim in _LINEAR_SMALL if max_in is None or n_in <= max_in)
    return rows * n_out >= limit


def _linear_arrays(x, weight, *rest):
    rows = x.size // x.shape[-1] if x.shape[-1] else int(np.prod(x.shape[:-1]))
    return linear_policy(rows, weight.shape[1], weight.shape[0])


_CPU = {"linear": _linear_arrays, "linear_gelu": _linear_arrays}


def cpu_native(op: str, *arrays) -> bool:
    """Whether the native CPU kernel should run `op` on these (qualifying) arrays; True for ops without a policy."""
    rule = _CPU.get(op)
    return rule is None or rule(*arrays)


# ----------------------------------------------------------------------------- CUDA: GEMM precision
# Which inputs the tensor-core GEMM may use, like torch.set_float32_matmul_precision:
#   'fp32' (default)  "3xTF32": each operand split as hi + lo TF32 parts, three MMAs per product;
#                     ~fp32 accuracy (~2^-21 relative per product), ~1/3 of the TF32 rate.
#   'tf32'            inputs rounded to TF32 (10-bit mantissa, relative 2^-11): the fastest for fp32
#                     arrays; what nanoGPT turns on (torch.backends.cuda.matmul.allow_tf32 = True).
#   'bf16'            inputs rounded to bfloat16 (7-bit mantissa, relative 2^-8) in shared memory;
#                     the arrays stay float32 (no bf16 array support: the model keeps fp32).
# All accumulate in fp32. The library's default is fp32, as PyTorch's ('highest', allow_tf32 off):
# a GPU result then matches the CPU kernels to float32 accuracy (what the GPU tests compare). Training
# on the GPU defaults to TF32 instead (`training_matmul_precision`, the train CLI's --matmul-precision),
# as nanoGPT and PyTorch's recommended settings do (docs/gpu.md argues it from published figures).
# Products that the backend choice below sends to cuBLAS (cupy.matmul) run in the same precision
# (`cublas_precision`: CuPy's float32 compute type, i.e. cublasGemmEx's compute type), so the
# autotuner compares like with like.
PRECISIONS = {"tf32": 0, "fp32": 1, "bf16": 2}  # the `precision` argument of csrc/cuda/linear.cu
# cuBLAS's float32 products in each precision: CuPy's compute types (cupy/_core/_routines_linalg):
# DEFAULT = CUBLAS_COMPUTE_32F (full fp32), TF32 = CUBLAS_COMPUTE_32F_FAST_TF32, BF16 = _FAST_16BF.
CUBLAS_COMPUTE = {"fp32": "COMPUTE_TYPE_DEFAULT", "tf32": "COMPUTE_TYPE_TF32", "bf16": "COMPUTE_TYPE_BF16"}


def _check_precision(name):
    if name not in PRECISIONS:
        raise ValueError(f"matmul precision must be one of {sorted(PRECISIONS)}, got {name!r}")
    return name


try:
    _matmul_precision = _check_precision(os.environ.get("TINYGPT_MATMUL_PRECISION", "fp32").strip().lower())
except ValueError as _exc:
    raise ValueError(f"TINYGPT_MATMUL_PRECISION: {_exc}") from None


def set_matmul_precision(name: str) -> str:
    """Set the tensor-core GEMM's input precision ('fp32' | 'tf32' | 'bf16'); returns the previous one."""
    global _matmul_precision
    previous, _matmul_precision = _matmul_precision, _check_precision(name)
    return previous


def get_matmul_precision() -> str:
    return _matmul_precision


def precision_code() -> int:
    """The current precision as the launchers' integer code."""
    return PRECISIONS[_matmul_precision]


def training_matmul_precision(device: str, requested: str | None = None) -> str:
    """The GEMM precision of a training run: `requested` when given, else TINYGPT_MATMUL_PRECISION when
    set, else 'tf32' on the GPU (nanoGPT's torch.backends.cuda.matmul.allow_tf32 = True) and 'fp32' on
    the CPU (whose kernels are fp32 whatever the setting)."""
    if requested is not None:
        return _check_precision(requested)
    if os.environ.get("TINYGPT_MATMUL_PRECISION", "").strip():
        return _matmul_precision  # checked at import
    return "tf32" if device == "cuda" else "fp32"


def _linalg():
    """cupy._core._routines_linalg: where CuPy keeps cupy.matmul's compute type per dtype."""
    cp = backend.cupy()
    linalg = getattr(getattr(cp, "_core", None), "_routines_linalg", None)
    return linalg if linalg is not None else importlib.import_module("cupy._core._routines_linalg")


def _set_cublas(name: str):
    """Set CuPy's float32 compute type to `name`'s; returns the previous compute type."""
    linalg = _linalg()
    previous = linalg.get_compute_type(np.float32)
    want = getattr(linalg, CUBLAS_COMPUTE[name])
    if previous != want:
        linalg.set_compute_type(np.float32, want)
    return previous


@contextlib.contextmanager
def cublas_precision(name: str | None = None):
    """cupy.matmul / cuBLAS on float32 arrays in `name`'s precision (default: the current GEMM
    precision) inside the block, CuPy's previous compute type restored after."""
    linalg = _linalg()
    previous = _set_cublas(_check_precision(name or _matmul_precision))
    try:
        yield
    finally:
        if linalg.get_compute_type(np.float32) != previous:
            linalg.set_compute_type(np.float32, previous)


@contextlib.contextmanager
def matmul_precision(name: str, device: str = "cuda"):
    """Inside the block our GEMM uses `name` and, on the GPU, so does every cuBLAS float32 product
    (the reference array code's included); both settings are restored after (a training run)."""
    previous = set_matmul_precision(name)
    try:
        if device == "cuda":
            with cublas_precision(name):
                yield
        else:
            yield
    finally:
        set_matmul_precision(previous)


# ----------------------------------------------------------------------------- CUDA: our GEMM or cuBLAS
# Neither wins everywhere (cuBLAS has per-shape heuristics and split-K; ours fuses the bias + GELU
# epilogue, saving a read and a write of the (rows, 4C) activation and two launches), and the answer
# depends on the GPU, so by default ('auto') it is measured on the GPU at hand, like
# torch.backends.cudnn.benchmark: the first product of each shape class runs both implementations on
# its own arguments (one warm-up each, then _TUNE_REPS timed runs, interleaved, timed with CUDA
# events), and the one with the lower median runs that class from then on. A shape class is (device,
# op, direction, rows rounded up to a power of two, in_features, out_features, precision): a layer's
# forward and backward (dx + dW) are measured separately, and generation's changing row counts reuse
# a handful of classes. Measuring waits on the GPU after each timed run (once per class, in the first
# step); `matmul_choices()` lists what was measured. The two GEMMs round differently (both within the
# fp32 / TF32 bounds), so for bit-reproducible runs across processes pin one with
# TINYGPT_CUDA_MATMUL=ours|cublas (or set_matmul_backend), which also never synchronises.
_TUNE_REPS = 3
BACKENDS = ("auto", "ours", "cublas")
_matmul_backend = os.environ.get("TINYGPT_CUDA_MATMUL", "auto").strip().lower()
if _matmul_backend not in BACKENDS:
    raise ValueError(f"TINYGPT_CUDA_MATMUL must be 'auto', 'ours' or 'cublas', got {_matmul_backend!r}")


class MatmulChoice(NamedTuple):
    ours: bool        # True: our GEMM runs this shape class, False: cuBLAS
    ours_ms: float    # median of the timed runs
    cublas_ms: float


_matmul_choices: dict[tuple, MatmulChoice] = {}


def set_matmul_backend(name: str) -> str:
    """'auto' (measured per shape class), 'ours' or 'cublas' for every linear / linear_gelu; returns the previous."""
    global _matmul_backend
    if name not in BACKENDS:
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


def median_ms(fns: dict, reps: int, warmup: int = 1) -> dict:
    """Median GPU time in ms of each callable, timed with CUDA events on the current stream: `warmup`
    calls each, then `reps` rounds, interleaved (every other round in reverse order, so neither goes
    first every time). The benchmarks time with it too (benchmarks/cuda/_events.py)."""
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


def run_gemm(op, direction, rows, n_in, n_out, ours, cublas) -> None:
    """Run `ours()` or `cublas()` (each computes the same outputs in place) as the backend setting says,
    measuring the shape class first when 'auto' has no choice for it yet."""
    use = matmul_policy(op, rows, n_in, n_out, direction)

    def cublas_alike():  # cuBLAS in our GEMM's precision: TF32 against TF32, fp32 against fp32
        with cublas_precision():
            cublas()

    if use is None:  # once per class: the key is built a second time only here
        t = median_ms({"ours": ours, "cublas": cublas_alike}, _TUNE_REPS)
        choice = MatmulChoice(t["ours"] < t["cublas"], t["ours"], t["cublas"])
        _matmul_choices[_shape_class(op, direction, rows, n_in, n_out)] = choice
        use = choice.ours
    (ours if use else cublas_alike)()
