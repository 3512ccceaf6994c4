"""Benchmark: GELU, tanh and exact (native vs NumPy reference vs PyTorch).

    python benchmarks/kernels/gelu.py [--quick]   (OMP_NUM_THREADS=N to set the threads)

`rows(quick)` returns one dict per (kernel, shape, impl, pass): median_ms over many runs with
the implementations interleaved round by round (and min_ms, the best run: on a loaded
machine the closer to the uncontended speed), and gbps = the bytes the op must move at the
least (read + written) / time, to compare with this machine's copy bandwidth (a row with
kernel 'copy': numpy.copyto of 256 MB, read + written); pct_copy = gbps / that.
Shapes are the MLP hidden activations (B*T, 4C).

Implementations, each called at the kernel level (no autograd, so no graph overhead):
  native     tinygpt._C.cpu.gelu_forward / gelu_backward
  reference  tinygpt.kernels.reference (NumPy, float32)
  torch      torch.ops.aten.gelu / gelu_backward
Bytes: fwd 2n floats (x, y), bwd 3n (grad, x, dx).
"""
from __future__ import annotations


import numpy as np

SHAPES = [(768, 512), (4096, 1536), (8192, 3072)]  # (B*T, 4C)
QUICK_SHAPES = [(768, 512), (4096, 1536)]


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
    has_native = hasattr(cpu, "gelu_forward")
    aten = torch.ops.aten
    copy, row = copy_row()
    out = [row]
    rng = np.random.default_rng(0)
    for N, H in QUICK_SHAPES if quick else SHAPES:
        x, g = (rng.standard_normal((N, H), dtype=np.float32) for _ in range(2))
        tx, tg = torch.from_numpy(x), torch.from_numpy(g)
        for approx in ("tanh", "none"):
            def n_fb(approx=approx):
                y, saved = cpu.gelu_forward(x, approx)
                return cpu.gelu_backward(g, x, approx, saved)

            def r_fb(approx=approx):
                y, saved = ref.gelu_forward(x, approx)
                return ref.gelu_backward(g, x, approx, saved)

            def t_fb(approx=approx):
                aten.gelu(tx, approximate=approx)
                return aten.gelu_backward(tg, tx, approximate=approx)

            cases = {
                "fwd": ({"reference": lambda approx=approx: ref.gelu_forward(x, approx),
                         "torch": lambda approx=approx: aten.gelu(tx, approximate=approx)},
                        (lambda approx=approx: cpu.gelu_forward(x, approx)) if has_native else None, 2),
                "fwd+bwd": ({"reference": r_fb, "torch": t_fb}, n_fb if has_native else None, 5),
            }
            for pas, (fns, native, floats) in cases.items():
                if native is not None:
                    fns = {"native": native, **fns}
                nbytes = floats * N * H * 4
                with torch.inference_mode():
                    med = _interleaved(fns, _reps(nbytes, quick))
                for impl, (t, t_min) in med.items():
                    gbps = nbytes / t / 1e9
                    out.append({"kernel": f"gelu_{approx}", "shape": f"({N}, {H})", "impl": impl, "pass": pas,
                                "median_ms": t * 1e3, "min_ms": t_min * 1e3, "gbps": gbps, "pct_copy": 100 * gbps / copy, "threads": threads or _threads()})
    restore_threads()
    return out




if __name__ == "__main__":
    _timing.main(__file__)
