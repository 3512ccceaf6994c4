"""Dropout at GPT activation shapes: native vs NumPy reference vs PyTorch CPU, one run.

`rows(quick)` returns one dict per (shape, impl, pass), median over interleaved runs. Memory-bound,
so gbps: every implementation is credited with the same useful traffic, 8 bytes per element
per pass (read x, write y forward; read grad, write dx backward), so 'fwd+bwd' moves 16 bytes
per element (torch also writes and reads a mask; the native kernel stores nothing and
regenerates its counter-based mask in backward).
  native:    tinygpt._C.cpu.dropout_forward / _backward (float32)
  reference: tinygpt.kernels.reference.dropout_forward / _backward (NumPy)
  torch:     torch.nn.functional.dropout(training=True) (+ autograd backward)
Run directly for a table: python benchmarks/kernels/dropout.py [--quick]
"""
from __future__ import annotations

import statistics
import time

SHAPES = [(768, 128), (4096, 384), (16384, 768)]  # (B*T, C)
P = 0.1


def _time(contenders: dict, steps: int, warmup: int) -> dict:
    names = list(contenders)
    for _ in range(warmup):
        for n in names:
            contenders[n]()
    times = {n: [] for n in names}
    for r in range(steps):
        for n in (names if r % 2 == 0 else names[::-1]):
            t0 = time.perf_counter()
            contenders[n]()
            times[n].append(time.perf_counter() - t0)
    return {n: statistics.median(t) for n, t in times.items()}


import _timing  # noqa: E402
from _timing import native_cpu, torch_or_none  # noqa: E402


def rows(quick: bool = False) -> list[dict]:
    import numpy as np

    from tinygpt.kernels import reference as R

    cpu = native_cpu("dropout")
    torch = torch_or_none()
    out = []
    for N, C in SHAPES:
        steps = 7 if quick else (41 if N * C < 4e6 else 21)
        rng = np.random.default_rng(0)
        x, g = (rng.standard_normal((N, C)).astype(np.float32) for _ in range(2))
        fwd = {"native": lambda: cpu.dropout_forward(x, P, 7), "reference": lambda: R.dropout_forward(x, P, 7)}

        def native_fb():
            y, saved = cpu.dropout_forward(x, P, 7)
            cpu.dropout_backward(g, P, saved)

        def reference_fb():
            y, saved = R.dropout_forward(x, P, 7)
            R.dropout_backward(g, P, saved)

        fb = {"native": native_fb, "reference": reference_fb}
        if torch is not None:
            tx = torch.from_numpy(x)
            gx = torch.from_numpy(x.copy()).requires_grad_()
            tgr = torch.from_numpy(g)

            def torch_f():
                with torch.no_grad():
                    torch.nn.functional.dropout(tx, P, training=True)

            def torch_fb():
                gx.grad = None
                torch.nn.functional.dropout(gx, P, training=True).backward(tgr)

            fwd["torch"], fb["torch"] = torch_f, torch_fb
        for pass_, contenders, nbytes in (("fwd", fwd, 8 * N * C), ("fwd+bwd", fb, 16 * N * C)):
            for impl, s in _time(contenders, steps, 2).items():
                out.append({"kernel": "dropout", "shape": f"N={N} C={C}", "impl": impl, "pass": pass_,
                            "median_ms": s * 1e3, "gbps": nbytes / s / 1e9})
    return out




if __name__ == "__main__":
    _timing.main(__file__)
