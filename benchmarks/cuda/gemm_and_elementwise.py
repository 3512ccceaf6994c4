"""CUDA kernels (csrc/cuda/{gemm.cuh,linear,layer_norm,gelu,adamw}.cu) vs cuBLAS / CuPy, timed with CUDA events.

    python benchmarks/cuda_kernels.py [--quick] [--only matmul,layernorm,gelu,adamw]   (or this file directly, --json out.json)

--smoke runs every code path once on tiny shapes (what the tests do on the CPU emulator); its
timings mean nothing.

matmul: our GEMM in each precision vs cupy.matmul (cuBLAS; fp32, or TF32 when CuPy runs with
CUPY_TF32=1) on the products of a GPT training step (rows = B*T up to 16384; C in 384..1536; the
4C MLP; the 50257-wide logits), forward (x W^T), dX (dY W) and dW (dY^T X), in TFLOP/s. (The
library itself does not use a table built from these: its default 'auto' dispatch times both GEMMs
on each layer's first call, tinygpt/kernels/policy.py.) Memory-bound kernels: GB/s (bytes read + written / time) next to a
device-to-device copy of the same size (the target is >= 80% of it).
Needs CuPy and a GPU; prints why and exits 0 otherwise.
"""
from __future__ import annotations

import argparse
import json
import sys

from _events import copy_gbps, time_ms

from tinygpt.kernels import policy


def timer(cp, fn, reps):
    """Median milliseconds of fn() (CUDA events around each call)."""
    return time_ms(cp, {"fn": fn}, reps)["fn"]


def bench_matmul(cp, k, quick, smoke=False):
    reps = 1 if smoke else 5 if quick else 20
    shapes = [(70, 33, 45)] if smoke else [(4096, 768, 768), (4096, 768, 3072), (4096, 3072, 768)] if quick else [
        (768, 384, 384), (4096, 384, 1536), (4096, 768, 768), (4096, 768, 2304), (4096, 768, 3072),
        (4096, 3072, 768), (16384, 768, 3072), (16384, 3072, 768), (16384, 1024, 4096), (16384, 1536, 6144),
        (8192, 768, 50257)]
    rows = []
    for M, n_in, n_out in shapes:
        x = cp.random.standard_normal((M, n_in), dtype=cp.float32)
        w = cp.random.standard_normal((n_out, n_in), dtype=cp.float32)
        g = cp.random.standard_normal((M, n_out), dtype=cp.float32)
        flop = 2.0 * M * n_in * n_out
        shape = f"{M}x{n_in}->{n_out}"
        # outputs (and dW's split-K workspace, with the split count the wrapper would use) allocated once
        y, dx, dw = (cp.empty(s, cp.float32) for s in ((M, n_out), (M, n_in), (n_out, n_in)))
        splits = k._cuda.linear_dw_splits(M, n_in, n_out)
        ws = cp.empty(splits * n_out * n_in, cp.float32) if splits > 1 else None
        products = {
            "fwd": (lambda p: lambda: k._cuda.linear_forward(
                        y.data.ptr, 0, x.data.ptr, w.data.ptr, 0, M, n_in, n_out, p, k.stream()),
                    lambda: cp.matmul(x, w.T)),
            "dx": (lambda p: lambda: k._cuda.linear_backward_dx(
                       dx.data.ptr, g.data.ptr, w.data.ptr, M, n_in, n_out, p, k.stream()),
                   lambda: cp.matmul(g, w)),
            "dw": (lambda p: lambda: k._cuda.linear_backward_dw(
                       dw.data.ptr, g.data.ptr, x.data.ptr, 0 if ws is None else ws.data.ptr, M, n_in, n_out, splits,
                       p, k.stream()),
                   lambda: cp.matmul(g.T, x)),
        }
        for pas, (ours, cublas) in products.items():
            ms = timer(cp, cublas, reps)
            rows.append(dict(kernel="matmul", shape=shape, impl="cublas", **{"pass": pas}, median_ms=ms,
                             tflops=flop / ms / 1e9))
            for name, p in policy.PRECISIONS.items():
                ms = timer(cp, ours(p), reps)
                rows.append(dict(kernel="matmul", shape=shape, impl=f"ours-{name}", **{"pass": pas}, median_ms=ms,
                                 tflops=flop / ms / 1e9))
        # the fused epilogue vs cuBLAS + bias + a separate GELU pass
        b = cp.random.standard_normal(n_out, dtype=cp.float32)
        old_backend = policy.set_matmul_backend("ours")
        for name in policy.PRECISIONS:
            old = policy.set_matmul_precision(name)
            ms = timer(cp, lambda: k.linear.linear_gelu_forward(x, w, b), reps)
            policy.set_matmul_precision(old)
            rows.append(dict(kernel="linear_gelu", shape=shape, impl=f"ours-{name}", **{"pass": "fwd"},
                             median_ms=ms, tflops=flop / ms / 1e9))
        policy.set_matmul_backend("cublas")
        ms = timer(cp, lambda: k.linear.linear_gelu_forward(x, w, b), reps)
        policy.set_matmul_backend(old_backend)
        rows.append(dict(kernel="linear_gelu", shape=shape, impl="cublas+gelu", **{"pass": "fwd"}, median_ms=ms,
                         tflops=flop / ms / 1e9))
    return rows


def bench_memory_bound(cp, k, quick, only, smoke=False):
    reps = 1 if smoke else 10 if quick else 50
    rows = []
    shapes = [(37, 64)] if smoke else [(4096, 768)] if quick else [(768, 384), (4096, 768), (16384, 768), (16384, 1024), (16384, 1536),
                                          (8192, 3072)]
    for N, C in shapes:
        x = cp.random.standard_normal((N, C), dtype=cp.float32)
        r = cp.random.standard_normal((N, C), dtype=cp.float32)
        g = cp.random.standard_normal((N, C), dtype=cp.float32)
        w = cp.random.standard_normal(C, dtype=cp.float32)
        bias = cp.random.standard_normal(C, dtype=cp.float32)
        nb = N * C * 4
        copy = copy_gbps(cp, reps, nb)
        cases = []
        if "layer_norm" in only:
            _, saved = k.layer_norm.layer_norm_forward(x, w, bias, 1e-5)
            (s, _), asaved = k.layer_norm.add_layer_norm_forward(x, r, w, bias, 1e-5)
            cases += [("layer_norm", "fwd", lambda: k.layer_norm.layer_norm_forward(x, w, bias, 1e-5), 2 * nb),
                      ("layer_norm", "bwd", lambda: k.layer_norm.layer_norm_backward(g, x, w, saved), 3 * nb),
                      ("add_layer_norm", "fwd", lambda: k.layer_norm.add_layer_norm_forward(x, r, w, bias, 1e-5), 4 * nb),
                      ("add_layer_norm", "bwd", lambda: k.layer_norm.add_layer_norm_backward(g, g, x, r, w, asaved), 4 * nb)]
        if "gelu" in only:
            for approx in ("tanh", "none"):
                cases += [(f"gelu-{approx}", "fwd", lambda a=approx: k.gelu.gelu_forward(x, a), 2 * nb),
                          (f"gelu-{approx}", "bwd", lambda a=approx: k.gelu.gelu_backward(g, x, a, ()), 3 * nb)]
        if "adamw" in only:
            m, v = cp.zeros_like(x), cp.zeros_like(x)
            p = x.copy()
            cases += [("adamw_step", "step", lambda: k.adamw.adamw_step(p, g, m, v, lr=1e-4, beta1=0.9, beta2=0.95,
                                                                 eps=1e-8, weight_decay=0.1, step=1), 7 * nb)]
        for kernel, pas, fn, nbytes in cases:
            ms = timer(cp, fn, reps)
            gbps = nbytes / ms / 1e6
            rows.append(dict(kernel=kernel, shape=f"{N}x{C}", impl="ours", **{"pass": pas}, median_ms=ms, gbps=gbps,
                             copy_gbps=copy, of_copy=gbps / copy))
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--smoke", action="store_true", help="tiny shapes, one repetition: code paths only")
    ap.add_argument("--only", default="matmul,layernorm,gelu,adamw")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    import tinygpt

    try:
        cp = tinygpt.backend.cupy()
    except RuntimeError as exc:
        print(f"skipped: {exc}")
        return 0
    from tinygpt.kernels import cuda as k

    if not k.has("linear"):
        print("skipped: tinygpt._C has no CUDA kernels (build with TINYGPT_CUDA=ON)")
        return 0
    only = set(args.only.split(","))
    props = cp.cuda.runtime.getDeviceProperties(cp.cuda.Device().id)
    print(f"device: {props['name'].decode() if isinstance(props['name'], bytes) else props['name']}")
    rows = bench_matmul(cp, k, args.quick, args.smoke) if "matmul" in only else []
    rows += bench_memory_bound(cp, k, args.quick, only, args.smoke)
    for r in rows:
        rate = f"{r['tflops']:.1f} TFLOP/s" if "tflops" in r else \
            f"{r['gbps']:.0f} GB/s ({100 * r['of_copy']:.0f}% of copy {r['copy_gbps']:.0f})"
        print(f"{r['kernel']:14s} {r['shape']:22s} {r['pass']:5s} {r['impl']:12s} {r['median_ms']:9.3f} ms  {rate}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
