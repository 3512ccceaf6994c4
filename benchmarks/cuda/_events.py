"""Shared GPU timing for benchmarks/cuda/*.py: CUDA-event medians and the device-to-device copy rate.

Each benchmark imports it as `_events` (this folder is on sys.path when a file here runs as a script,
and benchmarks/cuda_kernels.py puts it there).
"""
from __future__ import annotations

from tinygpt.kernels import policy as _policy


def time_ms(cp, fns: dict, reps: int, warmup: int = 3) -> dict:
    """Median milliseconds per call of each function (CUDA events around each call), rounds interleaved:
    the timer tinygpt's GEMM dispatch measures with (tinygpt.kernels.policy.median_ms)."""
    return _policy.median_ms(fns, reps, warmup)


def copy_gbps(cp, reps: int, nbytes: int = 1 << 30) -> float:
    """Device-to-device copy of `nbytes` (float32): bytes read + written per second, in GB/s."""
    n = nbytes // 4
    src, dst = cp.ones(n, cp.float32), cp.empty(n, cp.float32)
    ms = time_ms(cp, {"copy": lambda: cp.copyto(dst, src)}, reps)["copy"]
    return 2 * 4 * n / ms / 1e6
