"""GPU benchmark of the CUDA attention / softmax / cross-entropy / dropout kernels (csrc/cuda).

Times each kernel with CUDA events (median of interleaved repetitions, after warm-up) and prints
it with its napkin math:
  - memory-bound kernels (dropout, softmax, log_softmax, cross_entropy, embedding): useful bytes per
    pass (dropout 8 B/element each pass; softmax 8 B fwd, 12 B bwd; cross-entropy 4 B fwd, 8 B bwd;
    embedding 8 B per gathered float fwd, the gradient read and dW written bwd, vs cupy.add.at)
    over the time, as GB/s and as % of the device-to-device copy bandwidth measured in the same
    run (cupy copy of a 1 GiB buffer, 2 bytes moved per byte copied). The goal is >= 80%.
  - attention: TFLOP/s (forward 4 B nh Tq Tk hs, halved for causal; backward 2.5x forward, the
    FlashAttention-2 convention, though the dQ kernel recomputes two matmuls) against PyTorch's
    F.scaled_dot_product_attention on float32 CUDA tensors (when torch with CUDA is installed)
    and the CuPy reference (reference.attention_*, which materialises the T x T matrix).

    python benchmarks/cuda_kernels.py [--quick] [--only attention,softmax]   (or this file directly)

--smoke runs every code path once on tiny shapes (what the tests do on the CPU emulator).

Needs CuPy, a GPU, and tinygpt._C built with TINYGPT_CUDA=ON; exits with a message otherwise.
"""
from __future__ import annotations

import argparse
import math
import sys

from _events import copy_gbps, time_ms


def _setup():
    import tinygpt as tg
    from tinygpt.kernels import cuda as K

    if not tg.backend.cuda_available():
        sys.exit("cuda_kernels.py needs CuPy and a CUDA GPU")
    missing = [op for op in ("attention", "softmax", "log_softmax", "cross_entropy", "dropout", "embedding")
               if not K.has(op)]
    if missing:
        sys.exit(f"tinygpt._C has no CUDA kernels for {missing}: rebuild with TINYGPT_CUDA=ON")
    return tg.backend.cupy(), K


def _row(name, shape, pass_, ms, nbytes=None, copy=None, flops=None, ref_ms=None):
    extra = ""
    if nbytes is not None:
        gbps = nbytes / ms / 1e6
        extra = f"{gbps:8.0f} GB/s  {100 * gbps / copy:5.1f}% of copy"
    if flops is not None:
        extra = f"{flops / ms / 1e9:8.2f} TFLOP/s"
    if ref_ms is not None:
        extra += f"   (other {ref_ms:.3f} ms, x{ref_ms / ms:.2f})"
    print(f"{name:14s} {str(shape):22s} {pass_:4s} {ms:9.3f} ms  {extra}")


def bench_dropout(cp, K, copy, reps, quick, smoke=False):
    for n in ([1000] if smoke else [1 << 24] if quick else [1 << 24, 1 << 28]):
        x = cp.random.standard_normal(n, dtype=cp.float32)
        y, saved = K.dropout.dropout_forward(x, 0.1, 1)
        t = time_ms(cp, {"fwd": lambda: K.dropout.dropout_forward(x, 0.1, 1), "bwd": lambda: K.dropout.dropout_backward(y, 0.1, saved)}, reps)
        _row("dropout", (n,), "fwd", t["fwd"], 8 * n, copy)
        _row("dropout", (n,), "bwd", t["bwd"], 8 * n, copy)


def bench_softmax(cp, K, copy, reps, quick, smoke=False):
    shapes = [(37, 65)] if smoke else [(8 * 12 * 1024, 1024)] if quick else [(8 * 12 * 1024, 1024), (8 * 1024, 50304), (8 * 1024, 50257), (65536, 65)]
    for op in ("softmax", "log_softmax"):
        fwd, bwd = getattr(K.softmax, f"{op}_forward"), getattr(K.softmax, f"{op}_backward")
        for shape in shapes:
            x = cp.random.standard_normal(shape, dtype=cp.float32)
            y, _ = fwd(x, -1)
            g = cp.random.standard_normal(shape, dtype=cp.float32)
            t = time_ms(cp, {"fwd": lambda: fwd(x, -1), "bwd": lambda: bwd(g, y, -1, ())}, reps)
            n = x.size
            _row(op, shape, "fwd", t["fwd"], 8 * n, copy)
            _row(op, shape, "bwd", t["bwd"], 12 * n, copy)


def bench_cross_entropy(cp, K, copy, reps, quick, smoke=False):
    shapes = [(37, 65)] if smoke else [(8 * 1024, 50304)] if quick else [(8 * 1024, 50304), (8 * 1024, 50257), (65536, 65)]
    for N, V in shapes:
        x = cp.random.standard_normal((N, V), dtype=cp.float32)
        t_ = cp.random.randint(0, V, N).astype(cp.int64)
        loss, saved = K.cross_entropy.cross_entropy_forward(x, t_, -1)
        one = cp.ones((), cp.float32)
        t = time_ms(cp, {"fwd": lambda: K.cross_entropy.cross_entropy_forward(x, t_, -1),
                          "bwd": lambda: K.cross_entropy.cross_entropy_backward(one, x, t_, saved)}, reps)
        _row("cross_entropy", (N, V), "fwd", t["fwd"], 4 * N * V, copy)
        _row("cross_entropy", (N, V), "bwd", t["bwd"], 8 * N * V, copy)


def bench_embedding(cp, K, copy, reps, quick, smoke=False):
    """Forward gather (reads and writes n * C floats) and the deterministic backward (reads the n * C
    gradient, writes dW; plus the key sort), the backward against the reference's cupy.add.at (atomics)."""
    from tinygpt.kernels import reference as R

    shapes = [(37, 5, 12)] if smoke else [(64 * 256, 65, 384)] if quick else [(64 * 256, 65, 384), (8 * 1024, 50257, 768)]
    for n, V, C in shapes:
        w = cp.random.standard_normal((V, C), dtype=cp.float32)
        ids = cp.random.randint(0, V, n).astype(cp.int64)
        g = cp.random.standard_normal((n, C), dtype=cp.float32)
        t = time_ms(cp, {"fwd": lambda: K.embedding.embedding_forward(ids, w), "bwd": lambda: K.embedding.embedding_backward(g, ids, (V, C), ()),
                         "ref": lambda: R.embedding_backward(g, ids, (V, C), ())}, reps)
        _row("embedding", (n, V, C), "fwd", t["fwd"], 8 * n * C, copy)
        _row("embedding", (n, V, C), "bwd", t["bwd"], 4 * (n + V) * C, copy, ref_ms=t["ref"])


def bench_attention(cp, K, reps, quick, smoke=False):
    from tinygpt.kernels import reference as R

    try:
        import torch
        torch_ok = torch.cuda.is_available()
    except ImportError:
        torch, torch_ok = None, False
    configs = [(1, 2, 70, 32, True), (1, 2, 70, 32, False)] if smoke else [(8, 12, 1024, 64, True)] if quick else [(8, 12, 1024, 64, True), (4, 16, 2048, 128, True),
                                                        (8, 12, 1024, 64, False), (16, 12, 256, 64, True)]
    for B, nh, T, hs, causal in configs:
        shape = (B, nh, T, hs)
        q, k, v, g = (cp.random.standard_normal(shape, dtype=cp.float32) for _ in range(4))
        scale = 1.0 / math.sqrt(hs)
        out, saved = K.attention.attention_forward(q, k, v, causal, None, 0.0, 0, scale)
        fl = 4.0 * B * nh * T * T * hs * (0.5 if causal else 1.0)
        fns = {"fwd": lambda: K.attention.attention_forward(q, k, v, causal, None, 0.0, 0, scale),
               "bwd": lambda: K.attention.attention_backward(g, q, k, v, 0.0, scale, saved)}
        other = {}
        if torch_ok:
            tq, tk, tv, tg_ = (torch.as_tensor(a, device="cuda") for a in (q, k, v, g))
            tq.requires_grad_(True)
            tk.requires_grad_(True)
            tv.requires_grad_(True)
            F = torch.nn.functional
            to = F.scaled_dot_product_attention(tq, tk, tv, is_causal=causal)
            fns["torch fwd"] = lambda: F.scaled_dot_product_attention(tq, tk, tv, is_causal=causal)
            fns["torch bwd"] = lambda: torch.autograd.grad(to, (tq, tk, tv), tg_, retain_graph=True)
            other = {"fwd": "torch fwd", "bwd": "torch bwd"}
        elif T <= 1024:  # the reference holds B nh T T floats (x3 in backward)
            ro, rs = R.attention_forward(q, k, v, causal, None, 0.0, 0, scale)
            fns["ref fwd"] = lambda: R.attention_forward(q, k, v, causal, None, 0.0, 0, scale)
            fns["ref bwd"] = lambda: R.attention_backward(g, q, k, v, 0.0, scale, rs)
            other = {"fwd": "ref fwd", "bwd": "ref bwd"}
        # the packed op CausalSelfAttention runs: c_attn's (B, T, 3C) read in place, merged output,
        # against the same kernels on heads split and merged by copies
        qkv = cp.random.standard_normal((B, T, 3 * nh * hs), dtype=cp.float32)
        gm = cp.random.standard_normal((B, T, nh * hs), dtype=cp.float32)
        _, psaved = K.attention.qkv_attention_forward(qkv, nh, causal, None, 0.0, 0, scale)

        def split_fwd(qkv, nh, *args):  # the reference's qkv_attention composition on the CUDA kernels
            out, saved = K.attention.attention_forward(*R.split_qkv(qkv, nh), *args)
            return R.merge_heads(out), saved

        def split_bwd(gm, qkv, nh, p, scale, saved):
            grads = K.attention.attention_backward(R.split_heads(gm, nh), *R.split_qkv(qkv, nh), p, scale, saved)
            return R.merge_qkv(*grads)

        _, ssaved = split_fwd(qkv, nh, causal, None, 0.0, 0, scale)
        fns["qkv fwd"] = lambda: K.attention.qkv_attention_forward(qkv, nh, causal, None, 0.0, 0, scale)
        fns["qkv bwd"] = lambda: K.attention.qkv_attention_backward(gm, qkv, nh, 0.0, scale, psaved)
        fns["split fwd"] = lambda: split_fwd(qkv, nh, causal, None, 0.0, 0, scale)
        fns["split bwd"] = lambda: split_bwd(gm, qkv, nh, 0.0, scale, ssaved)
        t = time_ms(cp, fns, reps)
        name = "attention" + ("" if causal else " full")
        _row(name, shape, "fwd", t["fwd"], flops=fl, ref_ms=t.get(other.get("fwd")))
        _row(name, shape, "bwd", t["bwd"], flops=2.5 * fl, ref_ms=t.get(other.get("bwd")))
        _row("qkv_attention", (B, T, 3 * nh * hs), "fwd", t["qkv fwd"], flops=fl, ref_ms=t["split fwd"])
        _row("qkv_attention", (B, T, 3 * nh * hs), "bwd", t["qkv bwd"], flops=2.5 * fl, ref_ms=t["split bwd"])
    if torch_ok:
        print("(other = torch F.scaled_dot_product_attention, float32, its own backend choice)")
    else:
        print("(other = CuPy reference; torch with CUDA not installed)")
    print("(attention_qkv: other = the same kernels on heads split and merged by CuPy copies)")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--only", default="", help="comma-separated: dropout,softmax,cross_entropy,embedding,attention")
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--smoke", action="store_true", help="tiny shapes, one repetition: code paths only")
    args = ap.parse_args(argv)
    cp, K = _setup()
    only = set(filter(None, args.only.split(",")))
    reps = 1 if args.smoke else args.reps
    dev = cp.cuda.runtime.getDeviceProperties(cp.cuda.Device().id)
    copy = copy_gbps(cp, reps, 1 << 16) if args.smoke else copy_gbps(cp, reps)
    print(f"device: {dev['name'].decode()}; device-to-device copy {copy:.0f} GB/s")
    for name, fn in [("dropout", bench_dropout), ("softmax", bench_softmax), ("cross_entropy", bench_cross_entropy),
                     ("embedding", bench_embedding)]:
        if not only or name in only:
            fn(cp, K, copy, reps, args.quick, args.smoke)
    if not only or "attention" in only:
        bench_attention(cp, K, reps, args.quick, args.smoke)


if __name__ == "__main__":
    main()
