"""Shared GPU timing for benchmarks/cuda/*.py: CUDA-event medians and the device-to-device copy rate.

Each benchmark imports it as `_events` (this folder is on sys.path when a file here runs as a script,
and benchmarks/cuda_kernels.py puts it there).
"""
from __future__ import annotations

import statistics


def time_ms(cp, fns: dict, reps: int, warmup: int = 3) -> dict:
    """Median milliseconds per call of each function (CUDA events around each call), rounds interleaved."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    cp.cuda.get_current_stream().synchronize()
    times = {n: [] for n in fns}
    names = list(fns)
    start, stop = cp.cuda.Event(), cp.cuda.Event()
    for r in range(reps):
        for n in names if r % 2 == 0 else names[::-1]:
            start.record()
            fns[n]()
            stop.record()
            stop.synchronize()
            times[n].append(cp.cuda.get_elapsed_time(start, stop))
    return {n: statistics.median(t) for n, t in times.items()}


def copy_gbps(cp, reps: int, nbytes: int = 1 << 30) -> float:
    """Device-to-device copy of `nbytes` (float32): bytes read + written per second, in GB/s."""
    n = nbytes // 4
    src, dst = cp.ones(n, cp.float32), cp.empty(n, cp.float32)
    ms = time_ms(cp, {"copy": lambda: cp.copyto(dst, src)}, reps)["copy"]
    return 2 * 4 * n / ms / 1e6
