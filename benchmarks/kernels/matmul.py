"""Benchmark of the matmul family: the native packed SGEMM (tinygpt._C.cpu) vs NumPy's matmul
(OpenBLAS, what the reference `linear` runs) vs PyTorch CPU, in one run, implementations interleaved.

Three parts:
  * peak: a 2048^3 product, the machine's practical SGEMM peak (best of each implementation);
  * products: every GEMM a GPT training step runs, per layer: the forward y = x W^T and the two
    backward products dx = g W and dW = g^T x, for the two training configurations
    (B*T = 768, C = 128 and B*T = 4096, C = 384, vocab 65) - the data behind the `linear` dispatch
    policy in tinygpt/kernels/__init__.py;
  * ops: `linear` (forward with bias; forward+backward = y, dx, dW, db) and the fused `linear_gelu`
    vs reference linear + gelu vs torch linear + gelu(approximate='tanh'), at those shapes and (not
    quick) larger GPT ones, B*T up to 16384 and C up to 768.

rows(quick) returns dicts with kernel, shape, impl ('native' | 'reference' | 'torch'), pass
('fwd' | 'fwd+bwd'; a backward product counts as 'fwd' of its own GEMM and says which in `role`),
median_ms, best_ms, gflops (from the median; FLOPs = 2 M N K per product, plus nothing for bias or
GELU), and pct_peak (median GFLOP/s over the measured peak). Run directly for the tables:
    python benchmarks/kernels/matmul.py [--quick]
"""
from __future__ import annotations

import os
import statistics
import sys
import time

import numpy as np

VOCAB = 65
# (B*T, C) of the two training configurations: n_layer 4, n_head 4, n_embd 128, block 64, batch 12;
# n_layer 6, n_head 6, n_embd 384, block 256, batch 16.
TRAIN_CONFIGS = ((768, 128), (4096, 384))
LARGER = ((16384, 768),)  # GPT-2 small width at a long batch (not quick)


def _torch():
    try:
        import torch  # noqa: PLC0415
    except ImportError:
        return None
    torch.set_num_threads(os.cpu_count() or 1)
    return torch


def _native():
    try:
        from tinygpt._C import cpu  # noqa: PLC0415
    except ImportError:
        return None
    return cpu if hasattr(cpu, "linear_forward") else None


def layers(C, V=VOCAB):
    """(name, in_features, out_features) of every Linear in a GPT block, plus the lm_head."""
    return (("c_attn", C, 3 * C), ("attn.c_proj", C, C), ("mlp.c_fc", C, 4 * C), ("mlp.c_proj", 4 * C, C),
            ("lm_head", C, V))


def products(BT, C):
    """Every GEMM of a training step as (layer, role, M, N, K, transpose_a, transpose_b): C = op(A) op(B)."""
    out = []
    for name, fin, fout in layers(C):
        out.append((name, "fwd y=xW^T", BT, fout, fin, False, True))   # x (BT, in) @ W^T
        out.append((name, "bwd dx=gW", BT, fin, fout, False, False))   # g (BT, out) @ W (out, in)
        out.append((name, "bwd dW=g^Tx", fout, fin, BT, True, False))  # g^T (out, BT) @ x (BT, in)
    return out


def _time(fns, reps, min_s=2e-3):
    """Median and best seconds per call of each fn, interleaved (the order rotates every round).

    Each sample runs a call enough times to last ~min_s (short calls average over a few)."""
    inner = {}
    for name, fn in fns.items():
        fn()  # warm-up (allocations, thread pools, packing buffers)
        t = time.perf_counter()
        fn()
        dt = time.perf_counter() - t
        inner[name] = max(1, int(min_s / max(dt, 1e-7)))
    samples = {name: [] for name in fns}
    names = list(fns)
    for r in range(reps):
        for name in names[r % len(names):] + names[: r % len(names)]:
            n = inner[name]
            t = time.perf_counter()
            for _ in range(n):
                fns[name]()
            samples[name].append((time.perf_counter() - t) / n)
    return {name: (statistics.median(s), min(s)) for name, s in samples.items()}


def _operands(M, N, K, ta, tb, rng):
    a = rng.standard_normal((K, M) if ta else (M, K), dtype=np.float32)
    b = rng.standard_normal((N, K) if tb else (K, N), dtype=np.float32)
    return a, b


def _product_fns(a, b, ta, tb, native, torch):
    a_op, b_op = (a.T if ta else a), (b.T if tb else b)
    fns = {"reference": lambda: a_op @ b_op}
    if native is not None:
        fns["native"] = lambda: native.sgemm(a, b, ta, tb)
    if torch is not None:
        ta_t, tb_t = torch.from_numpy(a_op), torch.from_numpy(b_op)  # views: no copies
        fns["torch"] = lambda: torch.matmul(ta_t, tb_t)
    return fns


def _row(kernel, shape, impl, pass_, med, best, flops, peak, **extra):
    gf = flops / med / 1e9
    return dict(kernel=kernel, shape=shape, impl=impl, pass_=pass_, median_ms=med * 1e3, best_ms=best * 1e3,
                gflops=gf, pct_peak=100.0 * gf / peak if peak else None, **extra)


def _fix(rows):
    for r in rows:
        r["pass"] = r.pop("pass_")
    return rows


def peak_rows(reps, native, torch, rng):
    n = 2048
    a, b = _operands(n, n, n, False, False, rng)
    t = _time(_product_fns(a, b, False, False, native, torch), reps)
    flops = 2.0 * n**3
    peak = max(flops / best / 1e9 for _, best in t.values())
    rows = [_row("sgemm", f"{n}x{n}x{n}", impl, "fwd", med, best, flops, peak, role="peak")
            for impl, (med, best) in t.items()]
    return rows, peak


def product_rows(configs, reps, native, torch, rng, peak):
    rows = []
    for BT, C in configs:
        for layer, role, M, N, K, ta, tb in products(BT, C):
            a, b = _operands(M, N, K, ta, tb, rng)
            t = _time(_product_fns(a, b, ta, tb, native, torch), reps)
            shape = f"{M}x{K} @ {K}x{N}"
            for impl, (med, best) in t.items():
                rows.append(_row("sgemm", shape, impl, "fwd", med, best, 2.0 * M * N * K, peak,
                                 role=f"BT={BT} C={C} {layer} {role}"))
    return rows


def op_rows(configs, reps, native, torch, rng, peak):
    from tinygpt.kernels import reference as ref  # noqa: PLC0415

    rows = []
    for BT, C in configs:
        for name, fin, fout in layers(C):
            x = rng.standard_normal((BT, fin), dtype=np.float32)
            w = (rng.standard_normal((fout, fin), dtype=np.float32) * 0.02).astype(np.float32)
            bias = None if name == "lm_head" else rng.standard_normal(fout, dtype=np.float32)
            g = rng.standard_normal((BT, fout), dtype=np.float32)
            fused = name == "mlp.c_fc"
            ops = [("linear", ref.linear_forward, ref.linear_backward, "linear_forward", "linear_backward")]
            if fused:
                ops.append(("linear_gelu", ref.linear_gelu_forward, ref.linear_gelu_backward,
                            "linear_gelu_forward", "linear_gelu_backward"))
            for kernel, rf, rb, nf, nb in ops:
                impls = {"reference": (rf, rb)}
                if native is not None:
                    impls["native"] = (getattr(native, nf), getattr(native, nb))
                fwd, both = {}, {}
                for impl, (f, bwd) in impls.items():
                    fwd[impl] = lambda f=f: f(x, w, bias)
                    both[impl] = lambda f=f, bwd=bwd: bwd(g, x, w, bias is not None, f(x, w, bias)[1])
                if torch is not None:
                    tF = torch.nn.functional
                    act = (lambda y: tF.gelu(y, approximate="tanh")) if kernel == "linear_gelu" else (lambda y: y)
                    tx, tw = torch.from_numpy(x), torch.from_numpy(w)
                    tb = None if bias is None else torch.from_numpy(bias)
                    tg_ = torch.from_numpy(g)
                    fwd["torch"] = lambda: act(tF.linear(tx, tw, tb))

                    def torch_both():
                        xx = tx.detach().requires_grad_()
                        ww = tw.detach().requires_grad_()
                        bb = None if tb is None else tb.detach().requires_grad_()
                        act(tF.linear(xx, ww, bb)).backward(tg_)

                    both["torch"] = torch_both
                shape = f"({BT},{fin})->({BT},{fout}) {name}"
                flops = 2.0 * BT * fin * fout
                for pass_, fns, mult in (("fwd", fwd, 1), ("fwd+bwd", both, 3)):
                    for impl, (med, best) in _time(fns, reps).items():
                        rows.append(_row(kernel, shape, impl, pass_, med, best, mult * flops, peak))
    return rows


def rows(quick: bool = False) -> list[dict]:
    native, torch = _native(), _torch()
    rng = np.random.default_rng(0)
    reps = 15 if quick else 41
    peak_r, peak = peak_rows(7 if quick else 15, native, torch, rng)
    out = peak_r
    out += product_rows(TRAIN_CONFIGS, reps, native, torch, rng, peak)
    out += op_rows(TRAIN_CONFIGS if quick else TRAIN_CONFIGS + LARGER, reps if quick else 15, native, torch, rng,
                   peak)
    return _fix(out)


def _print(rs):
    import platform  # noqa: PLC0415

    print(f"# matmul benchmark: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"load {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    try:
        from tinygpt._C import cpu  # noqa: PLC0415

        print(f"# native micro-kernel: {cpu.gemm_isa()}, threads {cpu.get_num_threads()}")
    except ImportError:
        print("# native: not built")
    by = {}
    for r in rs:
        by.setdefault((r["kernel"], r["shape"], r.get("role", ""), r["pass"]), {})[r["impl"]] = r
    peak = [r for r in rs if r.get("role") == "peak"]
    print("\n## peak (2048^3): best / median GFLOP/s")
    for r in peak:
        print(f"  {r['impl']:9s} best {2 * 2048**3 / r['best_ms'] / 1e6:7.1f}  median {r['gflops']:7.1f}")
    hdr = f"{'role':44s} {'product':22s} {'native':>14s} {'numpy':>14s} {'torch':>14s}  {'winner':9s} {'nat/np':>6s}"
    print("\n## GEMM products: median ms (GFLOP/s, % of peak)")
    print(hdr)
    for (kernel, shape, role, pass_), d in by.items():
        if kernel != "sgemm" or role == "peak":
            continue
        cells = []
        for impl in ("native", "reference", "torch"):
            r = d.get(impl)
            cells.append(f"{r['median_ms']:6.3f} ({r['gflops']:5.0f},{r['pct_peak']:3.0f}%)" if r else "-")
        nat, ref = d.get("native"), d.get("reference")
        ratio = ref["median_ms"] / nat["median_ms"] if nat and ref else float("nan")
        winner = "native" if ratio > 1 else "numpy"
        print(f"{role:44s} {shape:22s} {cells[0]:>14s} {cells[1]:>14s} {cells[2]:>14s}  {winner:9s} {ratio:6.2f}")
    print("\n## ops: median ms (GFLOP/s)")
    for (kernel, shape, role, pass_), d in by.items():
        if kernel == "sgemm":
            continue
        cells = [f"{impl} {d[impl]['median_ms']:8.3f} ({d[impl]['gflops']:5.0f})" for impl in
                 ("native", "reference", "torch") if impl in d]
        print(f"{kernel:12s} {shape:38s} {pass_:8s} " + "  ".join(cells))


if __name__ == "__main__":
    _print(rows(quick="--quick" in sys.argv))
