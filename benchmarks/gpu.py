"""tinygpt on the GPU vs PyTorch on the same GPU, in one run: training steps, MFU and every kernel.

Part 1, training step (forward + backward + grad-norm clip 1.0 + AdamW, as examples/train_shakespeare.py)
for nanoGPT's Shakespeare configuration (6x6x384, block 256, batch 64, vocab 65) and GPT-2 124M
(12x12x768, block 1024, batch 8, vocab 50257), all contenders starting from the same weights:
  tinygpt-cuda   tinygpt with the native CUDA kernels (the ops tinygpt.kernels.cuda_ops() lists;
                 the reference on CuPy for the rest)
  tinygpt-ref    tinygpt with the reference kernels only (array code on CuPy: cuBLAS + CuPy kernels)
  torch          the same model in PyTorch, eager (scaled_dot_product_attention, fused by PyTorch)
  torch-compile  the same, under torch.compile (skipped with the reason when it does not work)
  torch-bf16     (--torch-bf16) eager under bf16 autocast, for scale
Reported: median ms/iter with the interquartile range, tokens/s, and MFU = model FLOPs (6N + 12LHQT
per token, PaLM appendix B, as nanoGPT) per second over the GPU's dense peaks for FP32 (no tensor
cores), TF32 and BF16 (nanoGPT quotes MFU against BF16). Both frameworks compute in float32; cuBLAS
uses TF32 only with --tf32, which also sets tinygpt's own GEMM to TF32 (its default 'fp32' mode
runs 3xTF32 on tensor cores, so it can pass the FP32 non-tensor peak). The GPU is detected by
name (H100 SXM/PCIe/NVL, H200, A100); --peak-tflops overrides. Step 0's loss (eval mode, same batch) is
printed for every contender as a parity check.

Part 2, kernels: each fused op at the shapes of both configurations, the native CUDA kernel vs the
reference on CuPy (and PyTorch where it has the op), forward and backward separately:
memory-bound ops as GB/s (bytes that must move / time) against a measured device-to-device copy
bandwidth; linear layers as TFLOP/s against cupy.matmul (cuBLAS) on the same products; attention
as TFLOP/s against torch's scaled_dot_product_attention. The native output is checked against the
reference (max error relative to the largest reference value).

Timing: CUDA events around each call (or each step) after warmup, medians over repetitions; each
contender runs alone (its memory freed before the next) so the two memory pools never compete.

    python benchmarks/gpu.py                         # everything, both configurations
    python benchmarks/gpu.py --config shakespeare --no-compile --json out/gpu.json
    python benchmarks/gpu.py --part kernels --quick
"""
from __future__ import annotations

import argparse
import datetime
import gc
import json
import math
import os
import platform
import sys
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

CONFIGS = {
    # nanoGPT config/train_shakespeare_char.py
    "shakespeare": dict(vocab_size=65, block_size=256, n_layer=6, n_head=6, n_embd=384, batch_size=64, dropout=0.2),
    # GPT-2 small
    "gpt2": dict(vocab_size=50257, block_size=1024, n_layer=12, n_head=12, n_embd=768, batch_size=8, dropout=0.0),
}
LR, BETAS, WEIGHT_DECAY, GRAD_CLIP, EPS = 1e-3, (0.9, 0.99), 0.1, 1.0, 1e-8

# Peak dense throughput (TFLOP/s) and HBM bandwidth (GB/s) from NVIDIA's datasheets (the sparse
# figures halved). FP32 is the non-tensor-core rate (what float32 cuBLAS reaches without TF32).
PEAKS = [
    # (substrings that must all be in the name, label, fp32, tf32, bf16, hbm GB/s)
    (("H200", "NVL"), "H200 NVL", 60.0, 417.5, 835.5, 4800),
    (("H200",), "H200 SXM", 66.9, 494.7, 989.4, 4800),
    (("H100", "PCIE"), "H100 PCIe", 51.2, 378.0, 756.0, 2000),
    (("H100", "NVL"), "H100 NVL", 60.0, 417.5, 835.5, 3900),
    (("H100",), "H100 SXM", 66.9, 494.7, 989.4, 3350),
    (("A100", "PCIE"), "A100 PCIe", 19.5, 156.0, 312.0, 1935),
    (("A100",), "A100 SXM", 19.5, 156.0, 312.0, 2039),
]


def gpu_peaks(name: str):
    """The PEAKS row for a device name (case-insensitive), as a dict, or None when unknown."""
    upper = name.upper()
    for keys, label, fp32, tf32, bf16, hbm in PEAKS:
        if all(k in upper for k in keys):
            return {"label": label, "fp32": fp32 * 1e12, "tf32": tf32 * 1e12, "bf16": bf16 * 1e12, "hbm": hbm * 1e9}
    return None


# ============================================================================ timing
class Timer:
    """CUDA-event timing of a callable: warmup, then `reps` measurements of `inner` back-to-back calls."""

    def __init__(self, cp):
        self.cp = cp

    def sync(self):
        self.cp.cuda.Device().synchronize()  # the whole device: CuPy's and torch's streams alike

    def __call__(self, fn, reps: int, warmup: int = 2, inner: int = 1) -> dict:
        cp = self.cp
        for _ in range(warmup):
            fn()
        self.sync()
        times = []
        for _ in range(reps):
            start, end = cp.cuda.Event(), cp.cuda.Event()
            start.record()
            for _ in range(inner):
                fn()
            end.record()
            end.synchronize()
            self.sync()  # work torch queued on its own stream, if any, is done too
            times.append(cp.cuda.get_elapsed_time(start, end) / 1e3 / inner)  # ms -> s
        return common.stats(times)


def wall_timed(timer, fn, reps, warmup):
    """As Timer, but for a callable that uses PyTorch: host clock around fn + a device sync
    (torch's default stream and CuPy's are both the legacy default stream, but the sync makes
    the measurement independent of that)."""
    for _ in range(warmup):
        fn()
    timer.sync()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        timer.sync()
        times.append(time.perf_counter() - t0)
    return common.stats(times)


def free_memory(cp, torch=None, collect=False):
    if collect:
        gc.collect()  # drop unreachable graphs (reference cycles) before handing their blocks back
    cp.get_default_memory_pool().free_all_blocks()
    if torch is not None:
        torch.cuda.empty_cache()


# ============================================================================ device info
def device_info(cp, torch) -> dict:
    dev = cp.cuda.Device()
    props = cp.cuda.runtime.getDeviceProperties(dev.id)
    name = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
    free, total = dev.mem_info
    info = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "gpu": name,
        "gpu_index": dev.id,
        "compute_capability": f"{props.get('major')}.{props.get('minor')}",
        "sms": props.get("multiProcessorCount"),
        "memory_gib": round(total / 2**30, 1),
        "memory_free_gib": round(free / 2**30, 1),
        "cuda_runtime": cp.cuda.runtime.runtimeGetVersion(),
        "cuda_driver": cp.cuda.runtime.driverGetVersion(),
        "cupy": cp.__version__,
        "cupy_tf32": os.environ.get("CUPY_TF32", "0"),
        "cpu": common.cpu_model(),
        "python": platform.python_version(),
        "torch": getattr(torch, "__version__", None),
        "torch_cuda": bool(torch is not None and torch.cuda.is_available()),
    }
    return info


def copy_bandwidth(cp, timer, nbytes=1 << 30) -> dict:
    """Device-to-device copy of `nbytes` (a copy kernel and cudaMemcpy): (read + write) bytes / time."""
    src = cp.ones(nbytes // 4, dtype=cp.float32)
    dst = cp.empty_like(src)
    kernel = timer(lambda: cp.copyto(dst, src), reps=20, warmup=3)
    memcpy = timer(lambda: dst.data.copy_from_device_async(src.data, src.nbytes), reps=20, warmup=3)
    return {"copy_kernel_gbps": 2 * nbytes / (kernel["median_ms"] / 1e3) / 1e9,
            "memcpy_gbps": 2 * nbytes / (memcpy["median_ms"] / 1e3) / 1e9}


# ============================================================================ part 1: training steps
def bench_model(name: str, args, tg, np, cp, torch, timer, peaks) -> dict:
    spec = dict(CONFIGS[name])
    batch = args.batch_size or spec.pop("batch_size")
    spec.pop("batch_size", None)
    if args.dropout is not None:
        spec["dropout"] = args.dropout
    config = tg.GPTConfig(bias=True, **spec)
    B, T = batch, config.block_size
    tokens = B * T
    tg.manual_seed(args.seed)
    base = tg.GPT(config)  # on the host: the one set of initial weights every contender copies
    weights = {k: np.array(v, copy=True) for k, v in base.state_dict().items()}
    flops_per_token = base.flops_per_token()
    rng = np.random.default_rng(args.seed)
    batches = []
    for _ in range(4):
        seq = rng.integers(0, config.vocab_size, size=(B, T + 1), dtype=np.int64)
        batches.append((np.ascontiguousarray(seq[:, :-1]), np.ascontiguousarray(seq[:, 1:])))
    steps, warmup = args.steps or (20 if name == "shakespeare" else 10), args.warmup
    result = {"config": name, **spec, "batch_size": B, "tokens_per_step": tokens, "params": base.num_params(),
              "flops_per_token": flops_per_token, "steps": steps, "warmup": warmup,
              "initial_loss": {}, "results": {}, "errors": {}}
    del base
    print(f"\n[{name}] {config.n_layer} layers, {config.n_head} heads, {config.n_embd} channels, block {T}, "
          f"batch {B} = {tokens} tokens/step, vocab {config.vocab_size}, dropout {config.dropout}, "
          f"{result['params']:,} params, {flops_per_token * tokens / 1e12:.2f} TFLOP/step", flush=True)

    contenders = []
    if tg.kernels.cuda_ops():
        contenders.append(("tinygpt-cuda", "tinygpt", True))
    else:
        print(f"[{name}] note: no native CUDA kernels in this build (tinygpt.kernels.cuda_ops() is empty): "
              "timing the reference on CuPy only")
    if not (args.no_ref and contenders):
        contenders.append(("tinygpt-ref", "tinygpt", False))
    if torch is not None and not args.no_torch:
        contenders.append(("torch", "torch", "eager"))
        if not args.no_compile:
            contenders.append(("torch-compile", "torch", "compile"))
        if args.torch_bf16:
            contenders.append(("torch-bf16", "torch", "bf16"))

    for label, framework, mode in contenders:
        try:
            t_setup = time.perf_counter()
            if framework == "tinygpt":
                step, loss0 = _tiny_contender(tg, cp, config, weights, batches, native=mode)
            else:
                step, loss0 = _torch_contender(torch, config, weights, batches, mode)
            result["initial_loss"][label] = loss0
            setup_s = time.perf_counter() - t_setup
            t0 = time.perf_counter()
            if framework == "tinygpt":
                s = timer(step, reps=steps, warmup=warmup)
            else:
                s = wall_timed(timer, step, reps=steps, warmup=warmup)
            s["elapsed_s"] = time.perf_counter() - t0
            s["setup_s"] = setup_s
            sec = s["median_ms"] / 1e3
            s["tokens_per_s"] = tokens / sec
            s["tflops"] = flops_per_token * tokens / sec / 1e12
            s["precision"] = "bf16" if mode == "bf16" else ("tf32" if args.tf32 else "fp32")
            if peaks is not None:  # against each dense peak: which one is "the" peak depends on the matmul mode
                s["mfu"] = {prec: s["tflops"] * 1e12 / peaks[prec] for prec in ("fp32", "tf32", "bf16")}
            result["results"][label] = s
            print(f"[{name}] {label:14s} {s['median_ms']:9.2f} ms/iter (IQR {s['q1_ms']:.2f}-{s['q3_ms']:.2f}), "
                  f"{s['tokens_per_s']:12,.0f} tok/s, {s['tflops']:7.2f} TFLOP/s"
                  + (", MFU " + " / ".join(f"{100 * v:.1f}% {k}" for k, v in s["mfu"].items()) if "mfu" in s else "")
                  + f"; step-0 loss {loss0:.6f}", flush=True)
        except Exception as exc:  # one failing contender must not lose the others' numbers
            result["errors"][label] = f"{type(exc).__name__}: {exc}"
            print(f"[{name}] {label}: FAILED ({type(exc).__name__}: {exc})", flush=True)
            if args.verbose:
                traceback.print_exc()
        finally:
            step = None
            free_memory(cp, torch, collect=True)
    ref = result["initial_loss"].get("torch")
    if ref is not None:
        diffs = {k: abs(v - ref) for k, v in result["initial_loss"].items() if k != "torch"}
        result["initial_loss_abs_diff_vs_torch"] = diffs
        print(f"[{name}] step-0 loss parity vs torch (fp32, eval mode, same weights and batch): "
              + ", ".join(f"{k} {d:.2e}" for k, d in diffs.items()))
    return result


def _tiny_contender(tg, cp, config, weights, batches, native: bool):
    from tinygpt.nn.utils import clip_grad_norm_  # noqa: PLC0415

    model = tg.GPT(config)
    model.load_state_dict(weights)
    model.to("cuda")
    opt = model.configure_optimizers(WEIGHT_DECAY, LR, betas=BETAS, eps=EPS)
    params = model.parameters()
    data = [(cp.asarray(x), cp.asarray(y)) for x, y in batches]
    with tg.kernels.use_native(native), tg.no_grad():
        model.eval()
        loss0 = model(*data[0])[1].item()
        model.train()
    state = {"i": 0}

    def step():
        x, y = data[state["i"] % len(data)]
        state["i"] += 1
        with tg.kernels.use_native(native):
            _, loss = model(x, y)
            opt.zero_grad()
            loss.backward()
            clip_grad_norm_(params, GRAD_CLIP)
            opt.step()

    return step, loss0


def _torch_contender(torch, config, weights, batches, mode: str):
    model = common.torch_gpt_copy(torch, weights, config).cuda()
    params = list(model.parameters())
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": WEIGHT_DECAY},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=LR, betas=BETAS, eps=EPS)
    data = [(torch.from_numpy(x).cuda(), torch.from_numpy(y).cuda()) for x, y in batches]
    with torch.no_grad():
        model.eval()
        loss0 = model(*data[0])[1].item()
        model.train()
    run = torch.compile(model) if mode == "compile" else model
    state = {"i": 0}

    def step():
        x, y = data[state["i"] % len(data)]
        state["i"] += 1
        if mode == "bf16":
            with torch.autocast("cuda", dtype=torch.bfloat16):
                _, loss = run(x, y)
        else:
            _, loss = run(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, GRAD_CLIP)
        opt.step()

    if mode == "compile":  # compile outside the timed region (the warmup would also do it)
        t0 = time.perf_counter()
        step()
        torch.cuda.synchronize()
        print(f"    (torch.compile: first step {time.perf_counter() - t0:.1f} s)", flush=True)
    return step, loss0


# ============================================================================ part 2: kernels
def kernel_cases(np, cp, config_name: str, batch=None):
    """(label, op, shape text, forward args, kind, fwd work, bwd work, extra) per fused op at a config's shapes.

    kind 'mem': work = bytes that must move; 'flop': work = FLOPs.
    """
    c = CONFIGS[config_name]
    B, T, C, nh, V = batch or c["batch_size"], c["block_size"], c["n_embd"], c["n_head"], c["vocab_size"]
    N, hs = B * T, C // nh
    rng = np.random.default_rng(0)

    def rnd(*shape, scale=1.0):
        return cp.asarray((rng.standard_normal(shape) * scale).astype(np.float32))

    x, w, b = rnd(N, C), rnd(C, scale=0.1) + 1.0, rnd(C, scale=0.1)
    cases = [
        ("linear c_attn", "linear", f"({N},{C})x({3 * C},{C})", (x, rnd(3 * C, C, scale=0.02), rnd(3 * C)),
         "flop", 2 * N * C * 3 * C, 4 * N * C * 3 * C, None),
        ("linear_gelu c_fc", "linear_gelu", f"({N},{C})x({4 * C},{C})", (x, rnd(4 * C, C, scale=0.02), rnd(4 * C)),
         "flop", 2 * N * C * 4 * C, 4 * N * C * 4 * C, None),
        ("linear mlp.c_proj", "linear", f"({N},{4 * C})x({C},{4 * C})",
         (rnd(N, 4 * C), rnd(C, 4 * C, scale=0.02), rnd(C)), "flop", 2 * N * 4 * C * C, 4 * N * 4 * C * C, None),
        ("linear lm_head", "linear", f"({N},{C})x({V},{C})", (x, rnd(V, C, scale=0.02), None),
         "flop", 2 * N * C * V, 4 * N * C * V, None),
        ("layer_norm", "layer_norm", f"({N},{C})", (x, w, b, 1e-5), "mem", 8 * N * C, 12 * N * C, None),
        ("add_layer_norm", "add_layer_norm", f"({N},{C})", (x, rnd(N, C), w, b, 1e-5), "mem", 16 * N * C, 20 * N * C,
         None),
        ("gelu", "gelu", f"({N},{4 * C})", (rnd(N, 4 * C), "tanh"), "mem", 8 * N * 4 * C, 12 * N * 4 * C, None),
        ("softmax", "softmax", f"({B * nh * T},{T})", (rnd(B * nh * T, T), -1), "mem", 8 * B * nh * T * T,
         12 * B * nh * T * T, None),
        ("log_softmax", "log_softmax", f"({B * nh * T},{T})", (rnd(B * nh * T, T), -1), "mem", 8 * B * nh * T * T,
         12 * B * nh * T * T, None),
        ("cross_entropy", "cross_entropy", f"({N},{V})",
         (rnd(N, V), cp.asarray(rng.integers(0, V, N).astype(np.int64)), -1), "mem", 4 * N * V + 8 * N,
         8 * N * V + 8 * N, None),
        ("dropout p=0.2", "dropout", f"({N},{C})", (x, 0.2, 1234), "mem", 8 * N * C, 8 * N * C, None),
        ("embedding", "embedding", f"ids ({B},{T}), ({V},{C})",
         (cp.asarray(rng.integers(0, V, (B, T)).astype(np.int64)), rnd(V, C)), "mem", 8 * N * C + 8 * N,
         8 * N * C + 8 * N + 4 * V * C, None),
    ]
    q, k, v = rnd(B, nh, T, hs), rnd(B, nh, T, hs), rnd(B, nh, T, hs)
    att_flops = 2 * B * nh * T * T * hs  # causal: half of the two (T x T x hs) products' 4 B nh T^2 hs
    cases.append(("attention causal", "attention", f"({B},{nh},{T},{hs})",
                  (q, k, v, True, None, 0.0, 0, 1.0 / math.sqrt(hs)), "flop", att_flops, int(2.5 * att_flops), None))
    L = c["n_layer"]
    n_adam = V * C + T * C + L * (12 * C * C + 13 * C) + 2 * C  # the model's parameter count (with biases)
    p = rnd(n_adam, scale=0.02)
    cases.append(("adamw_step", "adamw_step", f"({n_adam},)", (p, rnd(n_adam, scale=1e-3), cp.zeros_like(p),
                                                              cp.zeros_like(p)), "mem", 28 * n_adam, 0, None))
    return cases


def _backward_args(op, fwd_args, out, saved, cp):
    """The arguments of <op>_backward after <op>_forward(*fwd_args) returned (out, saved)."""
    if op in ("linear", "linear_gelu"):
        x, weight, bias = fwd_args
        return (cp.ones_like(out), x, weight, bias is not None, saved)
    if op == "layer_norm":
        return (cp.ones_like(out), fwd_args[0], fwd_args[1], saved)
    if op == "add_layer_norm":
        s, y = out
        return (cp.ones_like(s), cp.ones_like(y), fwd_args[0], fwd_args[1], fwd_args[2], saved)
    if op == "gelu":
        return (cp.ones_like(out), fwd_args[0], fwd_args[1], saved)
    if op in ("softmax", "log_softmax"):
        return (cp.ones_like(out), out, fwd_args[1], saved)
    if op == "cross_entropy":
        return (cp.ones((), dtype=cp.float32), fwd_args[0], fwd_args[1], saved)
    if op == "dropout":
        return (cp.ones_like(out), fwd_args[1], saved)
    if op == "embedding":
        return (cp.ones_like(out), fwd_args[0], fwd_args[1].shape, saved)
    if op == "attention":
        q, k, v, _, _, dropout_p, _, scale = fwd_args
        return (cp.ones_like(out), q, k, v, dropout_p, scale, saved)
    raise KeyError(op)


def _max_rel_err(cp, a, b) -> float:
    if isinstance(a, tuple):
        return max(_max_rel_err(cp, x, y) for x, y in zip(a, b))
    if a is None or b is None:
        return 0.0
    scale = float(cp.abs(b).max()) or 1.0
    return float(cp.abs(a.astype(cp.float64) - b.astype(cp.float64)).max()) / scale


def _torch_ops(torch):
    """PyTorch's forward of the same op, on torch tensors made from the case's arrays (None: no peer)."""
    F = torch.nn.functional
    return {
        "layer_norm": lambda x, w, b, eps: F.layer_norm(x, (x.shape[-1],), w, b, eps),
        "gelu": lambda x, approx: F.gelu(x, approximate=approx),
        "softmax": lambda x, axis: torch.softmax(x, axis),
        "log_softmax": lambda x, axis: torch.log_softmax(x, axis),
        "cross_entropy": lambda logits, t, ii: F.cross_entropy(logits, t, ignore_index=ii),
        "dropout": lambda x, p, seed: F.dropout(x, p, True),
        "embedding": lambda ids, w: F.embedding(ids, w),
        "linear": lambda x, w, b: F.linear(x, w, b),
        "linear_gelu": lambda x, w, b: F.gelu(F.linear(x, w, b), approximate="tanh"),
    }


def bench_kernels(config_name, args, tg, np, cp, torch, timer, copy_gbps) -> list[dict]:
    from tinygpt.kernels import reference as R  # noqa: PLC0415

    rows = []
    reps = 5 if args.quick else 20
    cases = kernel_cases(np, cp, config_name, args.batch_size if config_name == "gpt2" else None)
    torch_ops = _torch_ops(torch) if torch is not None and not args.no_torch else {}

    def to_torch(a):
        if a is None or not hasattr(a, "shape"):
            return a
        return torch.from_numpy(cp.asnumpy(a)).cuda()

    for label, op, shape, fwd_args, kind, fwd_work, bwd_work, _ in cases:
        row = {"config": config_name, "kernel": label, "op": op, "shape": shape, "kind": kind,
               "fwd_work": fwd_work, "bwd_work": bwd_work, "impls": {}}
        try:
            arrays = [a for a in fwd_args if hasattr(a, "shape")]
            if op == "adamw_step":
                h = dict(lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.1, step=1)
                native_fn = tg.kernels.implementation("adamw_step", "cuda") if tg.kernels.native_enabled() else None
                impls = {"reference": R.adamw_step}
                if native_fn is not None and native_fn is not R.adamw_step:
                    impls = {"native": native_fn, **impls}
                for impl, fn in impls.items():
                    copies = [a.copy() for a in fwd_args]
                    s = timer(lambda: fn(*copies, **h), reps=reps, warmup=2)
                    row["impls"][impl] = {"fwd": s}
                if "native" in impls:  # one step from the same state, both implementations
                    a1, a2 = [a.copy() for a in fwd_args], [a.copy() for a in fwd_args]
                    impls["native"](*a1, **h)
                    R.adamw_step(*a2, **h)
                    row["max_rel_err"] = _max_rel_err(cp, a1[0], a2[0])
                if torch_ops:  # torch.optim.AdamW's fused single-tensor update on the same vector
                    tp = torch.nn.Parameter(to_torch(fwd_args[0]))
                    tp.grad = to_torch(fwd_args[1])
                    topt = torch.optim.AdamW([tp], lr=1e-3, weight_decay=0.1, fused=True)
                    row["impls"]["torch"] = {"fwd": wall_timed(timer, topt.step, reps, 2)}
            else:
                _bench_fused(op, fwd_args, arrays, row, tg, R, cp, torch_ops, timer, reps, to_torch)
        except Exception as exc:
            row["error"] = f"{type(exc).__name__}: {exc}"
            if args.verbose:
                traceback.print_exc()
        finally:
            free_memory(cp, torch if torch_ops else None)
        rows.append(row)
        _print_kernel_row(row, copy_gbps)
    return rows


def _bench_fused(op, fwd_args, arrays, row, tg, R, cp, torch_ops, timer, reps, to_torch):
    """Forward and backward of one fused op: native CUDA (when dispatched), reference, and peers."""
    torch = None
    if torch_ops:
        import torch  # noqa: PLC0415
    with tg.kernels.use_native(True):
        kernel = tg.kernels.select(op, *arrays)
    impls = {"reference": (R.__dict__[f"{op}_forward"], R.__dict__[f"{op}_backward"])}
    if kernel.name == "native-cuda":
        impls = {"native": (kernel.forward, kernel.backward), **impls}
    outs = {}
    kc = tg.kernels.policy
    for impl, (fwd, bwd) in impls.items():
        # 'native' linear layers: our GEMM (not what 'auto' would pick: cuBLAS is timed on its own below)
        old = kc.set_matmul_backend("ours") if impl == "native" and op in ("linear", "linear_gelu") else None
        try:
            out, saved = fwd(*fwd_args)
            outs[impl] = out
            bargs = _backward_args(op, fwd_args, out, saved, cp)
            row["impls"][impl] = {"fwd": timer(lambda: fwd(*fwd_args), reps=reps, warmup=2),
                                  "bwd": timer(lambda: bwd(*bargs), reps=reps, warmup=2)}
        finally:
            if old is not None:
                kc.set_matmul_backend(old)
    if "native" in outs:
        row["max_rel_err"] = _max_rel_err(cp, outs["native"], outs["reference"])
    del outs
    if op == "linear" or op == "linear_gelu":  # cuBLAS on the same products
        x, weight, _ = fwd_args
        g = cp.ones((x.shape[0], weight.shape[0]), dtype=cp.float32)
        row["impls"]["cublas"] = {"fwd": timer(lambda: cp.matmul(x, weight.T), reps=reps),
                                  "bwd": timer(lambda: (cp.matmul(g, weight), cp.matmul(g.T, x)), reps=reps)}
        del g
    if op in torch_ops:
        targs = [to_torch(a) for a in fwd_args]
        tfn = torch_ops[op]
        row["impls"]["torch"] = {"fwd": wall_timed(timer, lambda: tfn(*targs), reps, 2)}
        del targs
    if op == "attention" and torch_ops:  # torch SDPA, forward and forward + backward
        tq, tk, tv = (to_torch(a).requires_grad_(True) for a in fwd_args[:3])
        sdpa = torch.nn.functional.scaled_dot_product_attention
        fwd_s = wall_timed(timer, lambda: sdpa(tq, tk, tv, is_causal=True), reps, 2)
        gout = torch.ones_like(tq)

        def fwd_bwd():
            sdpa(tq, tk, tv, is_causal=True).backward(gout)

        both = wall_timed(timer, fwd_bwd, reps, 2)
        bwd_ms = max(both["median_ms"] - fwd_s["median_ms"], 1e-6)
        row["impls"]["torch"] = {"fwd": fwd_s, "bwd": {**both, "median_ms": bwd_ms}}
        del tq, tk, tv, gout


def matmul_choices(tg):
    """What tinygpt's 'auto' GEMM dispatch measured during the model runs (tinygpt/kernels/policy.py), one
    dict per shape class: our GEMM vs cuBLAS on that layer's own arguments, and which one then ran."""
    rows = []
    for (_, op, direction, rows_class, n_in, n_out, precision), c in sorted(tg.kernels.policy.matmul_choices().items()):
        rows.append({"op": op, "direction": direction, "rows_up_to": rows_class, "n_in": n_in, "n_out": n_out,
                     "precision": precision, "ours_ms": c.ours_ms, "cublas_ms": c.cublas_ms,
                     "choice": "ours" if c.ours else "cublas"})
    return rows


def choices_table(choices):
    body = [[c["op"], c["direction"], f"<= {c['rows_up_to']}", f"{c['n_in']} -> {c['n_out']}", c["precision"],
             f"{c['ours_ms']:.3f}", f"{c['cublas_ms']:.3f}", c["choice"],
             f"{max(c['ours_ms'], c['cublas_ms']) / max(min(c['ours_ms'], c['cublas_ms']), 1e-9):.2f}x"]
            for c in choices]
    return ("GEMM dispatch ('auto': both timed on each layer's first call, the faster kept)\n"
            + common.table(["op", "pass", "rows", "in -> out", "precision", "ours ms", "cuBLAS ms", "runs", "margin"],
                           body))


def _rate(kind, work, ms, copy_gbps):
    if not work or not ms:
        return "-"
    per_s = work / (ms / 1e3)
    if kind == "mem":
        return f"{per_s / 1e9:.0f} GB/s ({100 * per_s / 1e9 / copy_gbps:.0f}% copy)"
    return f"{per_s / 1e12:.1f} TFLOP/s"


def _print_kernel_row(row, copy_gbps):
    if "error" in row:
        print(f"  {row['config']:11s} {row['kernel']:18s} FAILED: {row['error']}", flush=True)
        return
    for pas in ("fwd", "bwd"):
        work = row["fwd_work"] if pas == "fwd" else row["bwd_work"]
        cells = []
        for impl in ("native", "reference", "cublas", "torch"):
            s = row["impls"].get(impl, {}).get(pas)
            if s is not None:
                cells.append(f"{impl} {s['median_ms']:.3f} ms = {_rate(row['kind'], work, s['median_ms'], copy_gbps)}")
        if cells:
            err = f"  [native vs reference: max rel err {row['max_rel_err']:.1e}]" if pas == "fwd" and "max_rel_err" in row else ""
            print(f"  {row['config']:11s} {row['kernel']:18s} {pas}  " + " | ".join(cells) + err, flush=True)


def kernel_table(rows, copy_gbps) -> str:
    out = []
    for r in rows:
        if "error" in r:
            out.append([r["config"], r["kernel"], r["shape"], "-", "FAILED", "-", "-", "-", "-", r["error"][:40]])
            continue
        for pas in ("fwd", "bwd"):
            work = r["fwd_work"] if pas == "fwd" else r["bwd_work"]

            def ms(impl):
                s = r["impls"].get(impl, {}).get(pas)
                return s["median_ms"] if s else None

            nat, ref = ms("native"), ms("reference")
            peer = ms("cublas") if r["op"] in ("linear", "linear_gelu") else ms("torch")
            if nat is None and ref is None:
                continue
            best = nat if nat is not None else ref
            out.append([r["config"], r["kernel"], r["shape"], pas,
                        f"{nat:.3f}" if nat else "-", f"{ref:.3f}" if ref else "-", f"{peer:.3f}" if peer else "-",
                        f"{ref / nat:.2f}x" if nat and ref else "-", f"{peer / best:.2f}x" if peer and best else "-",
                        _rate(r["kind"], work, best, copy_gbps)])
    return common.table(["config", "kernel", "shape", "pass", "native ms", "reference ms", "peer ms",
                         "ref/native", "peer/ours", "ours achieved"], out)


def model_table(results) -> str:
    rows = []
    for r in results:
        ref = r["results"].get("torch")
        for label, s in r["results"].items():
            rows.append([r["config"], label, f"{s['median_ms']:.2f}", f"{s['q1_ms']:.2f}-{s['q3_ms']:.2f}",
                         f"{s['tokens_per_s']:,.0f}", f"{s['tflops']:.2f}", s["precision"],
                         " / ".join(f"{100 * s['mfu'][k]:.1f}%" for k in ("fp32", "tf32", "bf16")) if "mfu" in s else "-",
                         f"{s['median_ms'] / ref['median_ms']:.2f}x" if ref else "-",
                         f"{r['initial_loss'].get(label, float('nan')):.6f}"])
        for label, err in r["errors"].items():
            rows.append([r["config"], label, "FAILED", "-", "-", "-", "-", "-", "-", err[:50]])
    return common.table(["config", "contender", "ms/iter", "IQR", "tokens/s", "TFLOP/s", "matmul", "MFU vs FP32 / TF32 / BF16 peak",
                         "vs torch", "step-0 loss"], rows)


# ============================================================================ main
def build_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", choices=("shakespeare", "gpt2", "both"), default="both")
    p.add_argument("--part", choices=("model", "kernels", "all"), default="all")
    p.add_argument("--steps", type=int, default=None, help="timed steps per contender (default 20 / 10 for gpt2)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    p.add_argument("--batch-size", type=int, default=None, help="override the batch size (GPT-2 default 8)")
    p.add_argument("--dropout", type=float, default=None, help="override the dropout (default 0.2 / 0.0 for gpt2)")
    p.add_argument("--no-torch", action="store_true", help="time tinygpt alone")
    p.add_argument("--no-ref", action="store_true",
                   help="skip tinygpt-ref (the reference on CuPy) when the CUDA kernels are there")
    p.add_argument("--tiny", action="store_true",
                   help="tiny stand-ins for both configurations (rehearsing the script on the CUDA emulator)")
    p.add_argument("--no-compile", action="store_true", help="skip torch.compile (its compilation takes minutes)")
    p.add_argument("--torch-bf16", action="store_true", help="also time PyTorch under bf16 autocast")
    p.add_argument("--tf32", action="store_true",
                   help="let cuBLAS use TF32 in float32 matmuls (CUPY_TF32=1, torch allow_tf32); MFU vs the TF32 peak")
    p.add_argument("--peak-tflops", type=float, default=None,
                   help="peak TFLOP/s for MFU (default: from the GPU's name, for the precision used)")
    p.add_argument("--quick", action="store_true", help="fewer repetitions in the kernel part")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--copy-mib", type=int, default=1024, help="size of the copy-bandwidth measurement")
    p.add_argument("--json", default=None, metavar="PATH", help="save device info and every result as JSON")
    p.add_argument("--verbose", action="store_true", help="print tracebacks of failures")
    return p


def _write_json(path, payload):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(payload, f, indent=1, default=lambda o: o.item() if hasattr(o, "item") else str(o))
    print(f"saved {path}")


# --tiny: the same code paths at sizes the CUDA emulator runs in seconds (benchmarks/gpu_session.sh --smoke)
TINY_CONFIGS = {"shakespeare": dict(vocab_size=11, block_size=16, n_layer=1, n_head=2, n_embd=8, batch_size=2, dropout=0.2),
                "gpt2": dict(vocab_size=50, block_size=32, n_layer=1, n_head=2, n_embd=16, batch_size=2, dropout=0.0)}


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.tiny:
        CONFIGS.update(TINY_CONFIGS)
    if args.tf32:
        os.environ["CUPY_TF32"] = "1"  # read by CuPy when it loads (tinygpt imports it lazily, below)
    import numpy as np  # noqa: PLC0415

    import tinygpt as tg  # noqa: PLC0415

    if not tg.backend.cuda_available():
        try:
            tg.backend.cupy()
            reason = "no CUDA GPU"
        except RuntimeError as exc:
            reason = str(exc)
        print(f"benchmarks/gpu.py: no GPU here, nothing to benchmark ({reason}).")
        print("Run it on a machine with an NVIDIA GPU and CuPy: pip install \".[cuda]\"")
        if args.json:
            _write_json(args.json, {"error": f"no GPU: {reason}"})
        return 2
    cp = tg.backend.cupy()
    torch = None
    if not args.no_torch:
        try:
            import torch  # noqa: PLC0415

            if not torch.cuda.is_available():
                print(f"note: torch {torch.__version__} has no CUDA here; timing tinygpt alone")
                torch = None
        except ImportError:
            print("note: torch is not installed; timing tinygpt alone")
    if torch is not None:
        torch.manual_seed(args.seed)
        torch.backends.cuda.matmul.allow_tf32 = bool(args.tf32)
        torch.backends.cudnn.allow_tf32 = bool(args.tf32)

    info = device_info(cp, torch)
    peaks = gpu_peaks(info["gpu"])
    if args.peak_tflops:
        peaks = {"label": "--peak-tflops", **{k: args.peak_tflops * 1e12 for k in ("fp32", "tf32", "bf16")},
                 "hbm": None}
    info["peaks"] = peaks
    info["tinygpt"] = tg.__version__
    info["tinygpt_cuda_ops"] = tg.kernels.cuda_ops()
    info["tinygpt_native_enabled"] = tg.kernels.native_enabled()
    kc = tg.kernels.policy  # the CUDA GEMM's precision and the 'auto' backend's measurements
    if args.tf32:
        kc.set_matmul_precision("tf32")
    info["tinygpt_matmul_precision"] = kc.get_matmul_precision()
    kc.clear_matmul_choices()  # this run's own GEMM measurements (matmul_choices below)
    timer = Timer(cp)
    bw = copy_bandwidth(cp, timer, args.copy_mib << 20)
    free_memory(cp)
    info.update(bw)
    copy_gbps = bw["copy_kernel_gbps"]

    print("tinygpt GPU benchmark (training step and kernels; tinygpt vs PyTorch on the same GPU)")
    print(f"date        {info['date']}")
    print(f"gpu         {info['gpu']} (cc {info['compute_capability']}, {info['sms']} SMs, {info['memory_gib']} GiB); "
          f"CUDA runtime {info['cuda_runtime']}, driver {info['cuda_driver']}; CuPy {info['cupy']}; torch {info['torch']}")
    if peaks is not None:
        print(f"peak        {peaks['label']}: FP32 {peaks['fp32'] / 1e12:.1f}, TF32 {peaks['tf32'] / 1e12:.1f}, "
              f"BF16 {peaks['bf16'] / 1e12:.1f} TFLOP/s dense"
              + (f"; HBM {peaks['hbm'] / 1e9:.0f} GB/s" if peaks.get("hbm") else ""))
    else:
        print(f"peak        unknown GPU '{info['gpu']}': no MFU (pass --peak-tflops)")
    print(f"copy        {copy_gbps:.0f} GB/s (copy kernel, read + write), {bw['memcpy_gbps']:.0f} GB/s (cudaMemcpy D2D)")
    print(f"tinygpt     {tg.__version__}; CUDA kernels: {', '.join(info['tinygpt_cuda_ops']) or 'none (reference only)'}"
          f"; cuBLAS {'TF32' if args.tf32 else 'FP32'}, tinygpt GEMM {info['tinygpt_matmul_precision'] or '-'}")

    names = ["shakespeare", "gpt2"] if args.config == "both" else [args.config]
    model_results, kernel_rows = [], []
    if args.part in ("model", "all"):
        for name in names:
            model_results.append(bench_model(name, args, tg, np, cp, torch, timer, peaks))
        print("\n" + model_table(model_results))
        choices = matmul_choices(tg)
        if choices:
            print("\n" + choices_table(choices))
    if args.part in ("kernels", "all"):
        print("\nkernels (CUDA events, median of repetitions; 'peer' = cuBLAS for linear, torch otherwise; "
              "'ours achieved' = the native kernel when there is one, else the reference)")
        for name in names:
            kernel_rows += bench_kernels(name, args, tg, np, cp, torch, timer, copy_gbps)
        print("\n" + kernel_table(kernel_rows, copy_gbps))
    if args.json:
        _write_json(args.json, {"device": info, "args": vars(args), "model": model_results, "kernels": kernel_rows,
                                "matmul_choices": matmul_choices(tg) if args.part in ("model", "all") else []})
    return 0


if __name__ == "__main__":
    sys.exit(main())
