"""Benchmark: softmax and log_softmax over the last axis (native vs NumPy reference vs PyTorch).

    python benchmarks/kernels/softmax.py [--quick]

`rows(quick)` returns one dict per (kernel, shape, impl, pass): median_ms over many runs with
the implementations interleaved round by round (so background load hits them alike), and
gbps = the bytes the op must move at the least / time, to compare with this machine's copy
bandwidth (the row with kernel 'copy': numpy.copyto of 256 MB, bytes read + written).

Implementations, at the kernel level (no autograd graph on either side):
  native     tinygpt._C.cpu.(log_)softmax_forward / _backward
  reference  tinygpt.kernels.reference.(log_)softmax_* (NumPy, float32)
  torch      torch.softmax / torch.log_softmax and aten._(log_)softmax_backward_data
Bytes: fwd reads x and writes y (8 bytes per element); bwd reads grad and y and writes dx
(12), so fwd+bwd moves 20 bytes per element.

Shared machines: with more runnable processes than cores, libgomp's spinning barrier (the
default OMP_WAIT_POLICY) makes every 2-thread call wait a scheduler tick or two (8-16 ms,
seen here at load 3-8 on 2 cores, for torch and tinygpt._C alike); run with
OMP_WAIT_POLICY=passive or OMP_NUM_THREADS=1 there, or at a quiet time.
"""
from __future__ import annotations


import numpy as np

# (rows, C): activations (B*T, C) at GPT widths; attention scores (B*nh*T, T) for T = 256 and
# 1024 (B*nh = 48 and 12); a GPT-2 vocabulary row block as sampling would use.
SHAPES = [(768, 128), (16384, 768), (12288, 256), (12288, 1024), (64, 50257)]
QUICK_SHAPES = [(16384, 768), (12288, 1024)]


import _timing  # noqa: E402
from _timing import threads as _timing_threads, copy_row, interleaved_median as _interleaved, reps_for  # noqa: E402


def _reps(nbytes: int, quick: bool) -> int:
    return reps_for(nbytes, quick, full=21)


def rows(quick: bool = False) -> list[dict]:
    import torch  # noqa: PLC0415

    from tinygpt import kernels  # noqa: PLC0415
    from tinygpt.kernels import reference as ref  # noqa: PLC0415

    # the same cores for both: OMP_NUM_THREADS when set (it also sizes our OpenMP pool)
    torch.set_num_threads(_timing_threads())
    cpu = getattr(kernels._native, "cpu", None)
    aten = torch.ops.aten
    copy, row = copy_row()
    out = [row]
    rng = np.random.default_rng(0)
    torch_ops = {"softmax": (torch.softmax, aten._softmax_backward_data),
                 "log_softmax": (torch.log_softmax, aten._log_softmax_backward_data)}
    for N, C in QUICK_SHAPES if quick else SHAPES:
        x = rng.standard_normal((N, C), dtype=np.float32) * 3
        g = rng.standard_normal((N, C), dtype=np.float32)
        tx, tg = torch.from_numpy(x), torch.from_numpy(g)
        for op in ("softmax", "log_softmax"):
            r_fwd, r_bwd = getattr(ref, f"{op}_forward"), getattr(ref, f"{op}_backward")
            t_fwd, t_bwd = torch_ops[op]
            fwd = {"reference": lambda: r_fwd(x, -1), "torch": lambda: t_fwd(tx, -1)}

            def ref_both(r_fwd=r_fwd, r_bwd=r_bwd):
                y, saved = r_fwd(x, -1)
                r_bwd(g, y, -1, saved)

            def torch_both(t_fwd=t_fwd, t_bwd=t_bwd):
                t_bwd(tg, t_fwd(tx, -1), -1, torch.float32)

            both = {"reference": ref_both, "torch": torch_both}
            if hasattr(cpu, f"{op}_forward"):
                n_fwd, n_bwd = getattr(cpu, f"{op}_forward"), getattr(cpu, f"{op}_backward")

                def native_both(n_fwd=n_fwd, n_bwd=n_bwd):
                    y, saved = n_fwd(x, -1)
                    n_bwd(g, y, -1, saved)

                fwd["native"] = lambda n_fwd=n_fwd: n_fwd(x, -1)
                both["native"] = native_both
            for pas, fns, nbytes in (("fwd", fwd, 8 * N * C), ("fwd+bwd", both, 20 * N * C)):
                for impl, t in _interleaved(fns, _reps(nbytes, quick)).items():
                    gbps = nbytes / t / 1e9
                    out.append(dict(kernel=op, shape=f"({N}, {C})", impl=impl, **{"pass": pas},
                                    median_ms=t * 1e3, gbps=gbps, pct_copy=100 * gbps / copy))
    return out




if __name__ == "__main__":
    _timing.main(__file__)
