"""Decode GEMV of quantized_linear at GPT-2's shapes: GB/s of weights streamed, beside the copy bandwidth.

One row of x (batch-1 decode) against int8 (per-channel) and int4 (groups of 32) tables of GPT-2 124M's
products, native kernel only (tinygpt._C.cpu.quantized_linear_forward), 1 and 2 threads. gbps = bytes of
q + scales read per call / median time; `copy` is numpy's copy of 256 MB (read + write bytes) on the same
thread count, the memory ceiling. Each timed call reads the next of enough copies of the table to fill
64 MB (more than the caches), so every call streams its weights from memory as decode does.
Run directly (= python benchmarks/kernels.py --only quantized_linear): python benchmarks/kernels/quantized_linear.py [--quick]
"""
from __future__ import annotations

import os
import statistics
import sys
import time

import _timing  # noqa: E402
from _timing import native_cpu, pin_threads

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import common  # noqa: E402 - benchmarks/common.py: copy_bandwidth

# (name, in, out): attention qkv and proj, MLP fc and proj, the tied head
SHAPES = [("attn.c_attn", 768, 2304), ("attn.c_proj", 768, 768), ("mlp.c_fc", 768, 3072),
          ("mlp.c_proj", 3072, 768), ("lm_head", 768, 50257)]
COLD_BYTES = 64 << 20


def rows(quick: bool = False, threads=(1, 2)) -> list[dict]:
    import numpy as np

    from tinygpt.quantize import quantize_absmax, quantize_int4

    cpu = native_cpu("quantized_linear")
    out = []
    for nt in threads:
        restore = pin_threads(nt)
        out.append(dict(kernel="copy", threads=nt, gbps=round(common.copy_bandwidth(nt), 2)))
        restore()
    rng = np.random.default_rng(0)
    reps = 7 if quick else 31
    for name, n_in, n_out in SHAPES:
        w = (rng.standard_normal((n_out, n_in)) * 0.02).astype(np.float32)
        x = rng.standard_normal((1, n_in)).astype(np.float32)
        b = rng.standard_normal(n_out).astype(np.float32)
        for fmt, (q, s) in (("int8", quantize_absmax(w, axis=1)), ("int4", quantize_int4(w, 32))):
            nbytes = q.nbytes + s.nbytes
            copies = [(q.copy(), s.copy()) for _ in range(-(-COLD_BYTES // nbytes))]
            for nt in threads:
                restore = pin_threads(nt)
                try:
                    for qq, ss in copies:  # warm-up: page faults, the thread pool
                        cpu.quantized_linear_forward(x, qq, ss, b)
                    ts = []
                    for i in range(reps):
                        qq, ss = copies[i % len(copies)]
                        t0 = time.perf_counter()
                        cpu.quantized_linear_forward(x, qq, ss, b)
                        ts.append(time.perf_counter() - t0)
                finally:
                    restore()
                med = statistics.median(ts)
                out.append(dict(kernel=f"{fmt} gemv", shape=f"{name} ({n_out},{n_in})", role=f"{nt} thr",
                                impl="native", threads=nt, median_ms=round(med * 1e3, 4),
                                min_ms=round(min(ts) * 1e3, 4), gbps=round(nbytes / med / 1e9, 2), **{"pass": "fwd"}))
    return out


if __name__ == "__main__":
    _timing.main(__file__)
