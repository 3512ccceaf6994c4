"""Timing helpers shared by the kernel benchmarks in this folder (not a benchmark itself).

Each benchmark imports it as `_timing` (this folder is on sys.path when a module runs as a
script, and benchmarks/kernels.py adds it when it loads them).
"""
from __future__ import annotations

import functools
import os
import statistics
import time

import numpy as np


def threads() -> int:
    """os.cpu_count(), or OMP_NUM_THREADS when set (then the native kernels use that many too)."""
    return int(os.environ.get("OMP_NUM_THREADS") or os.cpu_count())


def pin_threads(n: int | None):
    """torch and the native kernels on n threads (None: torch on threads(), native at its default);
    returns a function that restores the native kernels' thread count."""
    import torch  # noqa: PLC0415

    from tinygpt import kernels  # noqa: PLC0415

    torch.set_num_threads(n or threads())
    cpu = getattr(kernels._native, "cpu", None)
    before = cpu.get_num_threads() if cpu is not None else None
    if n and cpu is not None:
        cpu.set_num_threads(n)
    return lambda: None if before is None else cpu.set_num_threads(before)


def native_cpu(op: str):
    """tinygpt._C.cpu, which must have `<op>_forward` (a benchmark of that kernel cannot run without it)."""
    from tinygpt import kernels

    cpu = getattr(kernels._native, "cpu", None)
    if not hasattr(cpu, f"{op}_forward"):
        raise RuntimeError(f"tinygpt._C.cpu.{op}_forward is not built")
    return cpu


def torch_or_none():
    """torch with threads() threads (the native kernels' count), or None when it is not installed."""
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(threads())
    return torch


def interleaved_median(fns: dict, reps: int, warmup: int = 1) -> dict:
    """Median seconds per implementation over `reps` rounds, the order alternating each round.

    In a round each implementation runs once untimed, then once timed: torch and tinygpt._C
    each have their own OpenMP pool, and the untimed call lets the previous contender's
    spinning workers go quiet and wakes this one's, so the timed call sees the steady state
    of back-to-back use (as in a training loop) rather than the other library's leftovers.
    """
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    names = list(fns)
    times = {name: [] for name in names}
    for r in range(reps):
        for name in names if r % 2 == 0 else names[::-1]:
            fns[name]()
            t0 = time.perf_counter()
            fns[name]()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(ts) for name, ts in times.items()}


def interleaved_median_min(fns: dict, reps: int, budget_s: float = 3.0) -> dict:
    """(median, min) seconds per implementation, run round by round (one call each per round,
    order rotated) so background load hits them alike; a slow one stops after budget_s (>= 3 runs)."""
    first = {}
    for name, fn in fns.items():  # warm-up call, also sizes the repetitions
        t0 = time.perf_counter()
        fn()
        first[name] = time.perf_counter() - t0
    want = {name: max(3, min(reps, int(budget_s / max(t, 1e-9)))) for name, t in first.items()}
    times = {name: [] for name in fns}
    names = list(fns)
    for k in range(max(want.values())):
        # rotate the order each round: what ran just before (its frees, malloc trimming, cache
        # contents) then affects every implementation alike
        for name in names[k % len(names):] + names[:k % len(names)]:
            if len(times[name]) < want[name]:
                t0 = time.perf_counter()
                fns[name]()
                times[name].append(time.perf_counter() - t0)
    return {name: (statistics.median(ts), min(ts)) for name, ts in times.items()}


@functools.lru_cache(maxsize=None)
def copy_bandwidth_gbps(reps: int = 15) -> float:
    """numpy.copyto of a 256 MB float32 array: (bytes read + written) / median time.

    Measured once per process: benchmarks/kernels.py runs every family against the same figure."""
    src = np.ones(64 * 2**20, dtype=np.float32)
    dst = np.empty_like(src)
    t = interleaved_median({"copy": lambda: np.copyto(dst, src)}, reps)["copy"]
    return 2 * src.nbytes / t / 1e9


def copy_row(pass_: str = "copy") -> tuple[float, dict]:
    """The copy bandwidth and the `copy` row a family puts first in its results (its pct_copy base)."""
    gbps = copy_bandwidth_gbps()
    return gbps, {"kernel": "copy", "shape": "256 MB", "impl": "numpy", "pass": pass_, "median_ms": float("nan"),
                  "min_ms": float("nan"), "gbps": gbps, "pct_copy": 100.0}


def reps_for(nbytes: int, quick: bool, full: int) -> int:
    """Repetitions scaled so each measurement moves ~64 MB x base (7 quick, `full` otherwise)."""
    base = 7 if quick else full
    return max(base, min(200, int(base * 64e6 / max(nbytes, 1))))


def main(module_file: str) -> None:
    """The `__main__` of a family module: benchmarks/kernels.py --only <family> [its arguments], so
    every family prints the same table (ratios to the reference, torch and this machine's ceilings)."""
    import pathlib  # noqa: PLC0415
    import runpy  # noqa: PLC0415
    import sys  # noqa: PLC0415

    family = pathlib.Path(module_file).stem
    driver = pathlib.Path(module_file).resolve().parents[1] / "kernels.py"
    sys.argv = [str(driver), "--only", family, *sys.argv[1:]]
    runpy.run_path(str(driver), run_name="__main__")
