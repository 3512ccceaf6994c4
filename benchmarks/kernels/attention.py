"""Causal attention at GPT shapes: native flash kernel vs NumPy reference vs PyTorch CPU, one run.

`rows(quick)` returns one dict per (shape, impl, pass) with the median over interleaved runs.
FLOP convention (compute-bound, so gflops, not gbps): forward = 4 * B * nh * T^2 * hs / 2 (two
T x T x hs matmuls, halved for the causal mask), backward = 2.5 x forward (five matmuls), so
'fwd+bwd' = 3.5 x forward. Every implementation is credited with the same FLOPs whatever it
actually computes (the reference and the masked parts of tiles do more).
  native:    tinygpt._C.cpu.attention_forward / _backward called directly (float32)
  reference: tinygpt.kernels.reference.attention_forward / _backward (NumPy, float32)
  torch:     torch.nn.functional.scaled_dot_product_attention(is_causal=True) (+ autograd backward)
Kernel 'qkv_attention' is the whole op as a model runs it, from c_attn's output qkv (B, T, 3C) to
c_proj's input (B, T, C): native cpu.attention_qkv_* (heads read and written in place), the
reference's split / attention / merge, and torch's split + view + transpose, SDPA, transpose +
contiguous (nanoGPT's CausalSelfAttention), each with its backward to qkv.
Threads: torch.set_num_threads(os.cpu_count()) and OpenMP (native) at its default, both overridden
by OMP_NUM_THREADS when it is set (OMP_NUM_THREADS=1 gives a single-core comparison).
Run directly for a table: python benchmarks/kernels/attention.py [--quick]
"""
from __future__ import annotations

import math
import statistics
import time

SHAPES = [(12, 4, 64, 32), (16, 6, 256, 64), (4, 12, 1024, 64)]  # (B, nh, T, hs)
DROPOUT_SHAPE = (16, 6, 256, 64)


def _time(contenders: dict, steps: int, warmup: int, budget_s: float) -> dict:
    """Median seconds per contender; rounds interleave them (alternating order). A contender
    stops early once it has used budget_s (the slow NumPy reference at T=1024), after >= 3 runs."""
    names = list(contenders)
    for _ in range(warmup):
        for n in names:
            contenders[n]()
    times = {n: [] for n in names}
    for r in range(steps):
        for n in (names if r % 2 == 0 else names[::-1]):
            if len(times[n]) >= 3 and sum(times[n]) > budget_s:
                continue
            t0 = time.perf_counter()
            contenders[n]()
            times[n].append(time.perf_counter() - t0)
    return {n: statistics.median(t) for n, t in times.items()}


import _timing  # noqa: E402
from _timing import native_cpu, torch_or_none  # noqa: E402


def rows(quick: bool = False) -> list[dict]:
    import numpy as np

    from tinygpt.kernels import reference as R

    cpu = native_cpu("attention")
    torch = torch_or_none()
    sdpa = None if torch is None else torch.nn.functional.scaled_dot_product_attention
    steps, warmup, budget = (5, 1, 1.5) if quick else (21, 2, 6.0)
    out = []
    cases = [(s, 0.0) for s in SHAPES] + [(DROPOUT_SHAPE, 0.1)]
    for (B, nh, T, hs), p in cases:
        rng = np.random.default_rng(0)
        q, k, v, g = (rng.standard_normal((B, nh, T, hs)).astype(np.float32) for _ in range(4))
        scale = 1.0 / math.sqrt(hs)
        fwd = {
            "native": lambda: cpu.attention_forward(q, k, v, True, None, p, 1, scale),
            "reference": lambda: R.attention_forward(q, k, v, True, None, p, 1, scale),
        }

        def native_fb():
            o, saved = cpu.attention_forward(q, k, v, True, None, p, 1, scale)
            cpu.attention_backward(g, q, k, v, p, scale, saved)

        def reference_fb():
            o, saved = R.attention_forward(q, k, v, True, None, p, 1, scale)
            R.attention_backward(g, q, k, v, p, scale, saved)

        fb = {"native": native_fb, "reference": reference_fb}
        if torch is not None:
            tq, tk, tv = (torch.from_numpy(a) for a in (q, k, v))
            gq, gk, gv = (torch.from_numpy(a.copy()).requires_grad_() for a in (q, k, v))
            tg_ = torch.from_numpy(g)

            def torch_f():
                with torch.no_grad():
                    sdpa(tq, tk, tv, is_causal=True, dropout_p=p)

            def torch_fb():
                gq.grad = gk.grad = gv.grad = None
                sdpa(gq, gk, gv, is_causal=True, dropout_p=p).backward(tg_)

            fwd["torch"], fb["torch"] = torch_f, torch_fb
        flops_f = 4.0 * B * nh * T * T * hs / 2
        kernel = "attention" if p == 0.0 else f"attention_dropout{p}"
        families = [(kernel, fwd, fb)]
        if p == 0.0:
            families.append(("qkv_attention",) + _packed_contenders(cpu, R, torch, B, nh, T, hs, scale))
        for name, f_, fb_ in families:
            for pass_, contenders, flops in (("fwd", f_, flops_f), ("fwd+bwd", fb_, 3.5 * flops_f)):
                med = _time(contenders, steps, warmup, budget)
                for impl, s in med.items():
                    out.append(dict(kernel=name, shape=f"B={B} nh={nh} T={T} hs={hs}", impl=impl, pass_=pass_,
                                    median_ms=s * 1e3, gflops=flops / s / 1e9))
    for r in out:
        r["pass"] = r.pop("pass_")
    return out


def _packed_contenders(cpu, R, torch, B, nh, T, hs, scale):
    """(forward, forward+backward) contenders for attention on a packed qkv (B, T, 3C)."""
    import numpy as np

    C = nh * hs
    rng = np.random.default_rng(1)
    qkv = rng.standard_normal((B, T, 3 * C)).astype(np.float32)
    g = rng.standard_normal((B, T, C)).astype(np.float32)

    def native_fb():
        y, saved = cpu.qkv_attention_forward(qkv, nh, True, None, 0.0, 1, scale)
        cpu.qkv_attention_backward(g, qkv, nh, 0.0, scale, saved)

    def reference_fb():
        y, saved = R.qkv_attention_forward(qkv, nh, True, None, 0.0, 1, scale)
        R.qkv_attention_backward(g, qkv, nh, 0.0, scale, saved)

    fwd = {"native": lambda: cpu.qkv_attention_forward(qkv, nh, True, None, 0.0, 1, scale),
           "reference": lambda: R.qkv_attention_forward(qkv, nh, True, None, 0.0, 1, scale)}
    fb = {"native": native_fb, "reference": reference_fb}
    if torch is not None:
        sdpa = torch.nn.functional.scaled_dot_product_attention
        tqkv, tg_ = torch.from_numpy(qkv.copy()).requires_grad_(), torch.from_numpy(g)

        def torch_attn(x):
            q, k, v = (t.view(B, T, nh, hs).transpose(1, 2) for t in x.split(C, dim=2))
            return sdpa(q, k, v, is_causal=True).transpose(1, 2).contiguous().view(B, T, C)

        def torch_f():
            with torch.no_grad():
                torch_attn(tqkv)

        def torch_fb():
            tqkv.grad = None
            torch_attn(tqkv).backward(tg_)

        fwd["torch"], fb["torch"] = torch_f, torch_fb
    return fwd, fb




if __name__ == "__main__":
    _timing.main(__file__)
