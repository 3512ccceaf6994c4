"""Benchmark of the matmul family: the native packed SGEMM (tinygpt._C.cpu) vs NumPy's matmul
(OpenBLAS, what the reference `linear` runs) vs PyTorch CPU, in one run, implementations interleaved.

Parts:
  * peak: a 2048^3 product, the machine's practical SGEMM peak (best of each implementation);
  * products: every GEMM of a GPT training step, per layer: the forward y = x W^T and the two
    backward products dx = g W and dW = g^T x, for the two training configurations
    (B*T = 768, C = 128 and B*T = 4096, C = 384, vocab 65);
  * ops: `linear` (forward with bias; forward+backward = y, dx, dW, db) and the fused `linear_gelu`
    vs reference linear + gelu vs torch linear + gelu(approximate='tanh') at those shapes and (not
    quick) a larger GPT one, B*T 16384 and C 768;
  * grid (--grid, or rows(grid=True)): `linear` forward for 1..32 rows, the few-row shapes
    (generation) where OpenBLAS's GEMV / small-matrix paths win; the data behind
    tinygpt.kernels.policy.linear_policy.

rows(quick) returns dicts with kernel, shape, impl ('native' | 'reference' | 'torch'), pass
('fwd' | 'fwd+bwd'; a backward product counts as 'fwd' of its own GEMM and says which in `role`),
median_ms, best_ms, gflops (from the median; 2 M N K per product, bias and GELU not counted) and
pct_peak (median GFLOP/s over the measured peak).

    python benchmarks/kernels/linear.py [--quick] [--grid] [--threads N] [--cpu-time] [--interleaved]

By default each library's calls are timed as one block (after a 0.3 s pause and warm-up calls), the
libraries one after another in the same run. --interleaved alternates the three libraries call by
call instead. With 2 threads on 2 cores that measures mostly interference: after a call returns,
that library's workers keep spinning (OpenBLAS's pool for ~0.1 s, libgomp's for native and torch),
and the next library's 2-thread call then waits scheduler ticks for its own worker (a 0.5 ms native
product measured 6 ms right after OpenBLAS calls). A training step runs consecutive native GEMMs,
which the block timing matches (see BENCHMARKS.md).

--threads N pins OpenMP, OpenBLAS and torch to N threads (set before they load); --cpu-time (with
--threads 1) times with the thread's CPU clock instead of the wall clock, which a busy machine
(other processes time-slicing the cores) does not inflate. On a shared 2-core machine the default
2-thread wall-clock medians mostly measure the scheduler: with more runnable threads than cores a
2-thread call waits whole ticks (4-12 ms) for a preempted worker, whichever library it is (libgomp's
spinning barrier for native and torch; OMP_WAIT_POLICY=passive helps those); compare best_ms there,
or the single-thread CPU-clock run.
"""
from __future__ import annotations

import os
import statistics
import sys
import time

if __name__ == "__main__" and "--threads" in sys.argv:  # before numpy / torch / the extension load
    _n = sys.argv[sys.argv.index("--threads") + 1]
    for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[_var] = _n

import numpy as np  # noqa: E402

VOCAB = 65
# (B*T, C) of the two training configurations: n_layer 4, n_head 4, n_embd 128, block 64, batch 12;
# n_layer 6, n_head 6, n_embd 384, block 256, batch 16.
TRAIN_CONFIGS = ((768, 128), (4096, 384))
LARGER = ((16384, 768),)  # GPT-2 small width at a long batch (not quick)
_clock = time.perf_counter
_SEQUENTIAL = True  # time each library's calls in one block (False: --interleaved, call by call)
# the block timing pauses this long before each library's block: OpenBLAS's workers spin for ~0.1 s
# (2^28 cycles) after a call, and while they do, a 2-thread native call on 2 cores waits up to two
# scheduler ticks (~8 ms instead of 0.6 ms) for its own worker; libgomp's (native, torch) spin less.
_SETTLE_S = 0.3


def _torch():
    try:
        import torch  # noqa: PLC0415
    except ImportError:
        return None
    threads = os.environ.get("OMP_NUM_THREADS")
    torch.set_num_threads(int(threads) if threads else (os.cpu_count() or 1))
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
        t = _clock()
        fn()
        dt = _clock() - t
        inner[name] = max(1, int(min_s / max(dt, 1e-7)))
    samples = {name: [] for name in fns}
    names = list(fns)
    if _SEQUENTIAL:  # one library at a time: its calls back to back, after two more warm-up calls
        for name in names:
            time.sleep(_SETTLE_S)  # let the previous library's thread pool stop spinning
            fns[name]()
            fns[name]()
            for _ in range(reps):
                t = _clock()
                for _ in range(inner[name]):
                    fns[name]()
                samples[name].append((_clock() - t) / inner[name])
        return {name: (statistics.median(s), min(s)) for name, s in samples.items()}
    for r in range(reps):
        for name in names[r % len(names):] + names[: r % len(names)]:
            n = inner[name]
            t = _clock()
            for _ in range(n):
                fns[name]()
            samples[name].append((_clock() - t) / n)
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
    return {"kernel": kernel, "shape": shape, "impl": impl, "pass": pass_, "median_ms": med * 1e3,
            "best_ms": best * 1e3, "gflops": gf, "pct_peak": 100.0 * gf / peak if peak else None, **extra}


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


def _linear_impls(kernel, x, w, bias, g, native, torch):
    """{impl: (forward fn, forward+backward fn)} for `linear` or `linear_gelu` at these arrays."""
    from tinygpt.kernels import reference as ref  # noqa: PLC0415

    rf, rb = getattr(ref, f"{kernel}_forward"), getattr(ref, f"{kernel}_backward")
    impls = {"reference": (rf, rb)}
    if native is not None:
        impls["native"] = (getattr(native, f"{kernel}_forward"), getattr(native, f"{kernel}_backward"))
    out = {}
    for impl, (f, bwd) in impls.items():
        out[impl] = (lambda f=f: f(x, w, bias),
                     lambda f=f, bwd=bwd: bwd(g, x, w, bias is not None, f(x, w, bias)[1]))
    if torch is not None:
        tF = torch.nn.functional
        act = (lambda y: tF.gelu(y, approximate="tanh")) if kernel == "linear_gelu" else (lambda y: y)
        tx, tw, tg_ = torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(g)
        tb = None if bias is None else torch.from_numpy(bias)

        def torch_both():
            xx, ww = tx.detach().requires_grad_(), tw.detach().requires_grad_()
            bb = None if tb is None else tb.detach().requires_grad_()
            act(tF.linear(xx, ww, bb)).backward(tg_)

        out["torch"] = (lambda: act(tF.linear(tx, tw, tb)), torch_both)
    return out


def op_rows(configs, reps, native, torch, rng, peak):
    rows = []
    for BT, C in configs:
        for name, fin, fout in layers(C):
            x = rng.standard_normal((BT, fin), dtype=np.float32)
            w = (rng.standard_normal((fout, fin), dtype=np.float32) * 0.02).astype(np.float32)
            bias = None if name == "lm_head" else rng.standard_normal(fout, dtype=np.float32)
            g = rng.standard_normal((BT, fout), dtype=np.float32)
            kernels = ("linear", "linear_gelu") if name == "mlp.c_fc" else ("linear",)
            for kernel in kernels:
                impls = _linear_impls(kernel, x, w, bias, g, native, torch)
                shape = f"({BT},{fin})->({BT},{fout}) {name}"
                flops = 2.0 * BT * fin * fout
                for p, (pass_, mult) in enumerate((("fwd", 1), ("fwd+bwd", 3))):
                    fns = {impl: fs[p] for impl, fs in impls.items()}
                    for impl, (med, best) in _time(fns, reps).items():
                        rows.append(_row(kernel, shape, impl, pass_, med, best, mult * flops, peak))
    return rows


def grid_rows(reps, native, torch, rng, peak):
    """`linear` forward at 1..32 rows (generation-sized), with what linear_policy picks."""
    try:
        from tinygpt.kernels.policy import linear_policy  # noqa: PLC0415
    except ImportError:
        linear_policy = None
    rows = []
    for fin in (128, 384, 1536):
        for fout in (65, 128, 384, 1152, 3072):
            for n in (1, 2, 4, 8, 12, 16, 24, 32):
                x = rng.standard_normal((n, fin), dtype=np.float32)
                w = rng.standard_normal((fout, fin), dtype=np.float32)
                b = rng.standard_normal(fout, dtype=np.float32)
                impls = _linear_impls("linear", x, w, b, np.zeros((n, fout), np.float32), native, None)
                t = _time({impl: fs[0] for impl, fs in impls.items()}, reps, min_s=5e-4)
                pick = None if linear_policy is None else ("native" if linear_policy(n, fin, fout) else "reference")
                for impl, (med, best) in t.items():
                    rows.append(_row("linear", f"({n},{fin})->({n},{fout})", impl, "fwd", med, best,
                                     2.0 * n * fin * fout, peak, role="grid", policy=pick))
    return rows


def rows(quick: bool = False, grid: bool = False) -> list[dict]:
    native, torch = _native(), _torch()
    rng = np.random.default_rng(0)
    reps = 15 if quick else 31
    out, peak = peak_rows(7 if quick else 11, native, torch, rng)
    out += product_rows(TRAIN_CONFIGS, reps, native, torch, rng, peak)
    out += op_rows(TRAIN_CONFIGS, 9 if quick else 15, native, torch, rng, peak)
    if not quick:  # ~60 GFLOP per product: a few rounds
        out += op_rows(LARGER, 3, native, torch, rng, peak)
    if grid:
        out += grid_rows(9, native, torch, rng, peak)
    return out


def _print(rs):
    print(f"# matmul benchmark: {os.cpu_count()} CPUs, load {' '.join(f'{x:.2f}' for x in os.getloadavg())}, "
          f"clock {'thread CPU time' if _clock is time.thread_time else 'wall'}, "
          f"threads {os.environ.get('OMP_NUM_THREADS', 'default')}")
    native = _native()
    print(f"# native micro-kernel: {native.isa() if native else 'not built'}, "
          f"OpenMP threads {native.get_num_threads() if native else '-'}")
    by = {}
    for r in rs:
        by.setdefault((r["kernel"], r["shape"], r.get("role", ""), r["pass"]), {})[r["impl"]] = r
    print("\n## peak (2048^3 product): GFLOP/s best (median)")
    for r in rs:
        if r.get("role") == "peak":
            print(f"  {r['impl']:9s} {2 * 2048**3 / r['best_ms'] / 1e6:7.1f} ({r['gflops']:6.1f})")

    def cell(r):
        return f"{r['median_ms']:8.3f} {r['gflops']:5.0f} {r['pct_peak']:3.0f}%" if r else "-"

    print("\n## GEMM products: median ms, GFLOP/s, % of peak; nat/np = numpy time / native time")
    print(f"{'role':42s} {'product':22s} {'native':>19s} {'numpy':>19s} {'torch':>19s}  winner  nat/np")
    for (kernel, shape, role, _), d in by.items():
        if kernel != "sgemm" or role == "peak":
            continue
        nat, ref = d.get("native"), d.get("reference")
        ratio = ref["median_ms"] / nat["median_ms"] if nat and ref else float("nan")
        print(f"{role:42s} {shape:22s} {cell(nat):>19s} {cell(ref):>19s} {cell(d.get('torch')):>19s}  "
              f"{'native' if ratio > 1 else 'numpy':6s}  {ratio:5.2f}")
    print("\n## ops: median ms (GFLOP/s; fwd+bwd counts the 3 products)")
    for (kernel, shape, role, pass_), d in by.items():
        if kernel == "sgemm" or role == "grid":
            continue
        cells = "  ".join(f"{impl} {d[impl]['median_ms']:8.3f} ({d[impl]['gflops']:5.0f})"
                          for impl in ("native", "reference", "torch") if impl in d)
        print(f"{kernel:12s} {shape:38s} {pass_:8s} {cells}")
    grid = [(k, d) for k, d in by.items() if k[2] == "grid"]
    if grid:
        print("\n## few-row linear forward: numpy time / native time (policy's pick)")
        for (kernel, shape, role, pass_), d in grid:
            nat, ref = d.get("native"), d.get("reference")
            ratio = ref["median_ms"] / nat["median_ms"] if nat and ref else float("nan")
            faster = "native" if ratio > 1 else "reference"
            pick = nat.get("policy") if nat else None
            flag = "" if pick is None or pick == faster or abs(ratio - 1) < 0.1 else "  (policy misses)"
            print(f"  {shape:22s} {ratio:5.2f}  policy: {pick}{flag}")


if __name__ == "__main__":
    if "--cpu-time" in sys.argv:
        if os.environ.get("OMP_NUM_THREADS") != "1":
            sys.exit("--cpu-time needs --threads 1 (the thread CPU clock sees only the calling thread)")
        _clock = time.thread_time
    _SEQUENTIAL = "--interleaved" not in sys.argv
    _print(rows(quick="--quick" in sys.argv, grid="--grid" in sys.argv))
