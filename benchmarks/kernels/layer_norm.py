"""Benchmark: LayerNorm and the fused residual add + LayerNorm (native vs NumPy reference vs PyTorch).

    python benchmarks/kernels/layer_norm.py [--quick]   (OMP_NUM_THREADS=N to set the threads)

`rows(quick)` returns one dict per (kernel, shape, impl, pass): median_ms over many runs with
the implementations interleaved round by round (and min_ms, the best run: on a loaded
machine the closer to the uncontended speed), and gbps = the bytes the op must move at the
least (read + written) / time, to compare with this machine's copy bandwidth (a row with
kernel 'copy': numpy.copyto of 256 MB, read + written); pct_copy = gbps / that.

Implementations, each called at the kernel level (no autograd, so no graph overhead):
  native     tinygpt._C.cpu.layer_norm_forward / _backward (add_layer_norm_*)
  reference  tinygpt.kernels.reference (NumPy, float32)
  torch      torch.ops.aten.native_layer_norm / native_layer_norm_backward; for the fused op
             (no PyTorch equivalent) s = x + r, native_layer_norm(s), and dx = dln + grad_s.
Bytes: layernorm fwd 2NC floats (x, y), bwd 3NC (g, x, dx); add_layer_norm fwd 4NC (x, r, s, y),
bwd 4NC (grad_s, grad_y, s, dx); weights and row statistics are negligible.
"""
from __future__ import annotations


import numpy as np

SHAPES = [(768, 128), (4096, 384), (8192, 768), (16384, 768)]  # (B*T, C)
QUICK_SHAPES = [(768, 128), (16384, 768)]
EPS = 1e-5


import _timing  # noqa: E402
from _timing import copy_row, interleaved_median_min as _interleaved, reps_for, threads as _threads  # noqa: E402


def _reps(nbytes: int, quick: bool) -> int:
    return reps_for(nbytes, quick, full=25)


def rows(quick: bool = False, threads: int | None = None) -> list[dict]:
    """The table. threads=None: torch.set_num_threads(os.cpu_count()) and OpenMP (native) at its
    default, both overridden by OMP_NUM_THREADS when it is set; threads=k pins both to k."""
    import torch  # noqa: PLC0415

    from tinygpt import kernels  # noqa: PLC0415
    from tinygpt.kernels import reference as ref  # noqa: PLC0415

    restore_threads = _timing.pin_threads(threads)
    cpu = getattr(kernels._native, "cpu", None)
    has_native = hasattr(cpu, "layer_norm_forward") and hasattr(cpu, "add_layer_norm_forward")
    aten = torch.ops.aten
    copy, row = copy_row()
    out = [row]
    rng = np.random.default_rng(0)
    for N, C in QUICK_SHAPES if quick else SHAPES:
        x, r, g, gs = (rng.standard_normal((N, C), dtype=np.float32) for _ in range(4))
        w = (1 + 0.1 * rng.standard_normal(C)).astype(np.float32)
        b = (0.1 * rng.standard_normal(C)).astype(np.float32)
        tx, tr, tg, tgs, tw, tb = (torch.from_numpy(a) for a in (x, r, g, gs, w, b))
        mask = [True, True, True]

        def t_ln():
            return aten.native_layer_norm(tx, [C], tw, tb, EPS)

        def t_ln_fb():
            y, mean, rstd = aten.native_layer_norm(tx, [C], tw, tb, EPS)
            return aten.native_layer_norm_backward(tg, tx, [C], mean, rstd, tw, tb, mask)

        def t_add():
            s = tx + tr
            return s, aten.native_layer_norm(s, [C], tw, tb, EPS)

        def t_add_fb():
            s = tx + tr
            y, mean, rstd = aten.native_layer_norm(s, [C], tw, tb, EPS)
            dx, dw, db = aten.native_layer_norm_backward(tg, s, [C], mean, rstd, tw, tb, mask)
            return dx + tgs, dw, db

        def fwd_bwd(mod, name):
            def ln():
                y, saved = getattr(mod, f"{name}_forward")(x, w, b, EPS)
                return getattr(mod, f"{name}_backward")(g, x, w, saved)

            def add():
                (s, y), saved = getattr(mod, f"{name}_forward")(x, r, w, b, EPS)
                return getattr(mod, f"{name}_backward")(gs, g, x, r, w, saved)

            return ln if name == "layer_norm" else add

        cases = {
            ("layer_norm", "fwd"): ({"reference": lambda: ref.layer_norm_forward(x, w, b, EPS), "torch": t_ln},
                                   (lambda: cpu.layer_norm_forward(x, w, b, EPS)) if has_native else None, 2),
            ("layer_norm", "fwd+bwd"): ({"reference": fwd_bwd(ref, "layer_norm"), "torch": t_ln_fb},
                                       fwd_bwd(cpu, "layer_norm") if has_native else None, 5),
            ("add_layer_norm", "fwd"): ({"reference": lambda: ref.add_layer_norm_forward(x, r, w, b, EPS),
                                        "torch": t_add},
                                       (lambda: cpu.add_layer_norm_forward(x, r, w, b, EPS)) if has_native else None, 4),
            ("add_layer_norm", "fwd+bwd"): ({"reference": fwd_bwd(ref, "add_layer_norm"), "torch": t_add_fb},
                                           fwd_bwd(cpu, "add_layer_norm") if has_native else None, 8),
        }
        for (kernel, pas), (fns, native, floats) in cases.items():
            if native is not None:
                fns = {"native": native, **fns}
            nbytes = floats * N * C * 4
            with torch.inference_mode():
                med = _interleaved(fns, _reps(nbytes, quick))
            for impl, (t, t_min) in med.items():
                gbps = nbytes / t / 1e9
                out.append({"kernel": kernel, "shape": f"({N}, {C})", "impl": impl, "pass": pas,
                            "median_ms": t * 1e3, "min_ms": t_min * 1e3, "gbps": gbps,
                            "pct_copy": 100 * gbps / copy, "threads": threads or _threads()})
    restore_threads()
    return out




if __name__ == "__main__":
    _timing.main(__file__)
