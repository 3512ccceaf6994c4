"""Token embedding at GPT shapes: native vs NumPy reference vs PyTorch CPU, one run.

`rows(quick)` returns one dict per (shape, impl, pass), median over interleaved runs. Memory-bound,
so gbps, every implementation credited with the same useful traffic: forward reads and writes N x C
floats (8 N C bytes); forward+backward adds reading the N x C gradient and writing the V x C weight
gradient (16 N C + 4 V C bytes in all).
  native:    tinygpt._C.cpu.embedding_forward / _backward (gather; index-order scatter-add)
  reference: tinygpt.kernels.reference.embedding_forward / _backward (weight[ids]; numpy.add.at)
  torch:     torch.nn.functional.embedding (+ autograd backward, dense gradient)
Run directly for a table: python benchmarks/kernels/embedding.py [--quick]
"""
from __future__ import annotations


import _timing  # noqa: E402
from _timing import interleaved_median
from _timing import native_cpu, torch_or_none

SHAPES = [(65, 768, 128), (65, 4096, 384), (50257, 8192, 768)]  # (vocab V, tokens N = B*T, C)


def rows(quick: bool = False) -> list[dict]:
    import numpy as np

    from tinygpt.kernels import reference as R

    cpu = native_cpu("embedding")
    torch = torch_or_none()
    out = []
    for V, N, C in SHAPES:
        reps = 5 if quick else (21 if V * C < 1e7 else 7)
        rng = np.random.default_rng(0)
        ids = rng.integers(0, V, size=N)
        w = rng.standard_normal((V, C)).astype(np.float32)
        g = rng.standard_normal((N, C)).astype(np.float32)
        fwd = {"native": lambda: cpu.embedding_forward(ids, w), "reference": lambda: R.embedding_forward(ids, w)}

        def native_fb():
            y, saved = cpu.embedding_forward(ids, w)
            cpu.embedding_backward(g, ids, (V, C), saved)

        def reference_fb():
            y, saved = R.embedding_forward(ids, w)
            R.embedding_backward(g, ids, (V, C), saved)

        fb = {"native": native_fb, "reference": reference_fb}
        if torch is not None:
            tids, tw, tg_ = torch.from_numpy(ids), torch.from_numpy(w.copy()).requires_grad_(), torch.from_numpy(g)

            def torch_f():
                with torch.no_grad():
                    torch.nn.functional.embedding(tids, tw)

            def torch_fb():
                tw.grad = None
                torch.nn.functional.embedding(tids, tw).backward(tg_)

            fwd["torch"], fb["torch"] = torch_f, torch_fb
        for pass_, contenders, nbytes in (("fwd", fwd, 8 * N * C), ("fwd+bwd", fb, 16 * N * C + 4 * V * C)):
            for impl, s in interleaved_median(contenders, reps).items():
                out.append({"kernel": "embedding", "shape": f"V={V} N={N} C={C}", "impl": impl, "pass": pass_,
                            "median_ms": s * 1e3, "gbps": nbytes / s / 1e9})
    return out


if __name__ == "__main__":
    _timing.main(__file__)
