"""Benchmark: fused cross-entropy over the vocabulary (native vs NumPy reference vs PyTorch).

    python benchmarks/kernels/cross_entropy.py [--quick]

`rows(quick)` returns one dict per (kernel, shape, impl, pass): median_ms over many runs with
the implementations interleaved round by round (so background load hits them alike), and
gbps = the bytes the op must move at the least / time, to compare with this machine's copy
bandwidth (the row with kernel 'copy': numpy.copyto of 256 MB, bytes read + written).

Implementations, at the kernel level (no tinygpt autograd graph):
  native     tinygpt._C.cpu.cross_entropy_forward / _backward
  reference  tinygpt.kernels.reference.cross_entropy_* (NumPy, float32)
  torch      torch.nn.functional.cross_entropy (fwd under no_grad; fwd+bwd = loss.backward()
             on a leaf whose .grad is reset each run, so dlogits is written, not accumulated)
Bytes: fwd reads the logits once (4NV; targets and row statistics are negligible); fwd+bwd
reads them twice and writes dlogits (12NV).

Shared machines: with more runnable processes than cores, libgomp's spinning barrier (the
default OMP_WAIT_POLICY) makes every 2-thread call wait a scheduler tick or two (8-16 ms,
seen here at load 3-8 on 2 cores, for torch and tinygpt._C alike); run with
OMP_WAIT_POLICY=passive or OMP_NUM_THREADS=1 there, or at a quiet time.
"""
from __future__ import annotations


import numpy as np

# (B*T, V): character-level (V = 65) and GPT-2 (V = 50257) vocabularies.
SHAPES = [(768, 65), (4096, 65), (16384, 65), (768, 50257), (2048, 50257)]
QUICK_SHAPES = [(16384, 65), (768, 50257)]


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
    has_native = hasattr(cpu, "cross_entropy_forward")
    copy, row = copy_row()
    out = [row]
    rng = np.random.default_rng(0)
    for N, V in QUICK_SHAPES if quick else SHAPES:
        logits = rng.standard_normal((N, V), dtype=np.float32) * 2
        targets = rng.integers(0, V, N)
        targets[::17] = -1  # some ignored rows, as padding would give
        g = np.array(1.0, np.float32)
        tx = torch.from_numpy(logits)
        tt = torch.from_numpy(targets)
        leaf = tx.clone().requires_grad_(True)

        def torch_fwd():
            with torch.no_grad():
                torch.nn.functional.cross_entropy(tx, tt, ignore_index=-1)

        def torch_fwd_bwd():
            leaf.grad = None
            torch.nn.functional.cross_entropy(leaf, tt, ignore_index=-1).backward()

        def ref_fwd_bwd():
            loss, saved = ref.cross_entropy_forward(logits, targets, -1)
            ref.cross_entropy_backward(g, logits, targets, saved)

        fwd = {"reference": lambda: ref.cross_entropy_forward(logits, targets, -1), "torch": torch_fwd}
        both = {"reference": ref_fwd_bwd, "torch": torch_fwd_bwd}
        if has_native:
            def native_fwd_bwd():
                loss, saved = cpu.cross_entropy_forward(logits, targets, -1)
                cpu.cross_entropy_backward(g, logits, targets, saved)

            fwd["native"] = lambda: cpu.cross_entropy_forward(logits, targets, -1)
            both["native"] = native_fwd_bwd
        shape = f"({N}, {V})"
        for pas, fns, nbytes in (("fwd", fwd, 4 * N * V), ("fwd+bwd", both, 12 * N * V)):
            for impl, t in _interleaved(fns, _reps(nbytes, quick)).items():
                gbps = nbytes / t / 1e9
                out.append(dict(kernel="cross_entropy", shape=shape, impl=impl, **{"pass": pas},
                                median_ms=t * 1e3, gbps=gbps, pct_copy=100 * gbps / copy))
        del leaf, tx, logits
    return out




if __name__ == "__main__":
    _timing.main(__file__)
