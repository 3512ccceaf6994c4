"""Quantized inference speed on GPT-2 124M (random weights): fp32 vs int8 vs int4, with the bound beside each.

Per weight format, in one process (--threads N, set before numpy loads), interleaved within every
repetition (the formats alternate, so a load change hits all of them):
  decode b1    greedy cached decode, batch 1: --new steps after a 16-token prompt (the prompt is not timed,
               as llama-bench -p 0 -n 64 times generation only)
  decode b8    the same with 8 sequences: tokens/s counts all 8
  prefill 512  one forward of 512 tokens into an empty cache plus the head on the last one (llama-bench -p 512)
The bound column is the weight-streaming bound of a decode step: measured copy bandwidth (read + write bytes
of numpy copies on --threads threads at once) / the weight bytes a token streams (every table once: the
tied int8 / int4 head is the embedding table; one wpe row). Prefill is compute-bound: its bound is not shown.

    python benchmarks/quantized_decode.py --threads 2
    python benchmarks/quantized_decode.py --threads 1 --new 32 --reps 3
    python benchmarks/quantized_decode.py --error      # W8A8 vs W8A16 error of the decode GEMV
    python benchmarks/quantized_decode.py --tests b1 --paths --breakdown   # the decode paths; time by op
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402 - must run before numpy loads (thread environment)

THREADS = common.preparse_int(sys.argv[1:], "--threads", 1)
common.set_thread_env(THREADS)

import argparse  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

import tinygpt as tg  # noqa: E402
from tinygpt.models.generation import KVCache, next_logits  # noqa: E402
from tinygpt.quantize import quantize, weight_memory  # noqa: E402

GPT2 = dict(vocab_size=50257, block_size=1024, n_layer=12, n_head=12, n_embd=768)


def token_bytes(model) -> int:
    """Weight bytes one decode step reads: every array once, but a single row of the position table."""
    wpe = model.transformer.wpe
    tables = [wpe.qweight, wpe.scale] if hasattr(wpe, "qweight") else [wpe.weight.data]  # int8 or float positions
    rows = tables[0].shape[0]
    return weight_memory(model)["total"] - sum(a.nbytes for a in tables) * (rows - 1) // rows


def decode(model, batch: int, new: int, rng, on_start=None) -> float:
    """Seconds for `new` greedy cached decode steps of `batch` sequences after a 16-token prompt (untimed), each
    step what GPT.generate runs per token (generation.next_logits: the cached step, float64 logits of the last
    position), then its argmax."""
    ids = rng.integers(0, GPT2["vocab_size"], size=(batch, 16))
    cache, state = KVCache.for_model(model, batch), {"start": 0}
    ids = np.concatenate([ids, next_logits(model, ids, cache, state).argmax(-1)[:, None]], axis=1)
    if on_start is not None:  # breakdown: forget what the prompt cost
        on_start()
    t0 = time.perf_counter()
    for _ in range(new):
        ids = np.concatenate([ids, next_logits(model, ids, cache, state).argmax(-1)[:, None]], axis=1)
    return time.perf_counter() - t0


def prefill(model, n: int, rng) -> float:
    prompt = rng.integers(0, GPT2["vocab_size"], size=(1, n))
    cache = KVCache.for_model(model, 1)
    with tg.no_grad():
        t0 = time.perf_counter()
        h = model.hidden_states(prompt, kv_cache=cache)
        model.lm_head(h[:, -1:])
        return time.perf_counter() - t0


def breakdown(model, new: int, rng) -> tuple[float, dict]:
    """(seconds per decode step, {kernel op: seconds per step}) for batch 1: every kernel that
    tinygpt.kernels.select hands out (native or reference), kv_attention and the native steps (cached_logits:
    ids to logits, every kernel of the step in one call; cached_blocks: the blocks) timed; what is left is
    Python glue (dispatch, module and op layers, the embeddings' indexing, argmax)."""
    from tinygpt import kernels  # noqa: PLC0415

    spent = {}

    def timed(name, fn):
        def run(*a, **k):
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                spent[name] = spent.get(name, 0.0) + time.perf_counter() - t0
        return run

    select, kv, implementation = kernels.select, kernels.kv_attention, kernels.implementation

    def timed_select(op, *arrays, **k):
        kernel = select(op, *arrays, **k)
        return kernel._replace(forward=timed(op, kernel.forward))

    def timed_implementation(op, device):  # the native decode steps: every kernel of the step in one call
        fn = implementation(op, device)
        return timed(op, fn) if op in ("cached_blocks", "cached_logits") and fn is not None else fn

    kernels.select, kernels.kv_attention = timed_select, timed("kv_attention", kv)
    kernels.implementation = timed_implementation
    try:
        total = decode(model, 1, new, rng, on_start=spent.clear)
    finally:
        kernels.select, kernels.kv_attention, kernels.implementation = select, kv, implementation
    return total / new, {k: v / new for k, v in spent.items()}


# The paths a cached decode step can take (models/fastpath.py), each forced by turning the ones before it off.
PATHS = ("logits", "blocks", "per-op", "modules")


def force_path(path: str):
    """A context that makes decode steps take `path`: 'logits' (cached_logits: one native call, ids to logits),
    'blocks' (hidden_states with the blocks in one native call), 'per-op' (the blocks op by op on arrays) or
    'modules' (Module -> functional -> Function.apply, as before the fast paths)."""
    import contextlib  # noqa: PLC0415

    from tinygpt.models import fastpath  # noqa: PLC0415
    from tinygpt.models import gpt as gpt_module  # noqa: PLC0415

    off = {"logits": (), "blocks": ("cached_logits",), "per-op": ("cached_logits", "_native_step"),
           "modules": ("cached_logits", "_native_step", "cached_blocks")}[path]

    @contextlib.contextmanager
    def forced():
        saved = {(fastpath, "cached_logits"): fastpath.cached_logits, (fastpath, "_native_step"): fastpath._native_step,
                 (gpt_module, "cached_blocks"): gpt_module.cached_blocks}
        try:
            for (module, name) in saved:
                if name in off:
                    setattr(module, name, lambda *a: None)
            yield
        finally:
            for (module, name), fn in saved.items():
                setattr(module, name, fn)
    return forced()


def compare_paths(models: dict, new: int, reps: int, rng) -> None:
    """ms per decode step (batch 1) of each format on each path, the paths alternated within every repetition."""
    times = {(f, p): [] for f in models for p in PATHS}
    for rep in range(reps):
        for name, m in models.items():
            for path in PATHS if rep % 2 == 0 else PATHS[::-1]:
                with force_path(path):
                    times[name, path].append(1e3 * decode(m, 1, new, rng) / new)
    print(f"\n# ms per decode step (batch 1) by path, medians of {reps} (min-max); logits = what generate runs")
    print(f"{'weights':8}" + "".join(f"{p:>22}" for p in PATHS))
    for name in models:
        print(f"{name:8}" + "".join(f"{statistics.median(v):9.2f} ({min(v):5.2f}-{max(v):5.2f})"
                                    for v in (times[name, p] for p in PATHS)))


def gemv_error() -> None:
    """Error of the decode GEMV's int8 activations (W8A8: x quantized per block of 32, integer dots) against
    float activations (W8A16-style: the dequantized weight times float x, float32 sums), on GPT-2's c_attn
    shape (768 -> 2304, 8 rows, t-distributed weights, a few activation channels x20 as GPT-2's outliers).
    Every error is max |y - y_ref| / max |y_ref|, y_ref the float64 product of the *dequantized* weight, so
    the weight quantization itself is not in it; its own error (vs the float weight) is the last column."""
    from tinygpt.quantize import dequantize_int4, quantize_absmax, quantize_int4  # noqa: PLC0415

    cpu = getattr(tg.kernels._native, "cpu", None)
    rng = np.random.default_rng(0)
    n_in, n_out = 768, 2304
    w = (rng.standard_t(4, (n_out, n_in)) * 0.02).astype(np.float32)
    x = rng.standard_normal((8, n_in)).astype(np.float32)
    x[:, rng.integers(0, n_in, 12)] *= 20
    isas = []
    before = cpu.isa() if cpu is not None else None
    for i in ("avx512", "avx2", "baseline") if cpu is not None else ():
        try:
            cpu.set_isa(i)  # ValueError where this CPU lacks it
            isas.append(i)
        except ValueError:
            pass
    print("\n# decode GEMV error, GPT-2 c_attn (768 -> 2304), 8 rows: max |error| / max |y|")
    print(f"{'weights':8} " + "".join(f"{'W8A8 ' + i:>16}" for i in isas) + f"{'W8A16 (float)':>16}{'weight quant.':>16}")
    for name, (q, s) in (("int8", quantize_absmax(w, axis=1)), ("int4", quantize_int4(w, 32))):
        if q.dtype == np.uint8:
            W = dequantize_int4(q, s, np.float64)
        else:
            W = q.astype(np.float64) * s.astype(np.float64)[:, None]
        ref = x.astype(np.float64) @ W.T
        top = np.abs(ref).max()
        cells = []
        try:
            for i in isas:
                cpu.set_isa(i)
                cells.append(np.abs(cpu.quantized_linear_forward(x, q, s, None)[0] - ref).max() / top)
        finally:
            if cpu is not None:
                cpu.set_isa(before)
        flt = np.abs(x @ W.astype(np.float32).T - ref).max() / top
        wq = np.abs(x.astype(np.float64) @ w.T.astype(np.float64) - ref).max() / top
        print(f"{name:8} " + "".join(f"{c:16.2e}" for c in cells) + f"{flt:16.2e}{wq:16.2e}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--new", type=int, default=64, help="decode steps timed per run (llama-bench -n 64)")
    p.add_argument("--prefill", type=int, default=512)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--tests", default="b1,b8,prefill", help="comma list of b1, b8, prefill")
    p.add_argument("--formats", default="fp32,int8,int4")
    p.add_argument("--breakdown", action="store_true", help="also print the time per decode step by op (batch 1)")
    p.add_argument("--paths", action="store_true",
                   help="also time batch-1 decode on each fast path: logits, blocks, per-op, modules")
    p.add_argument("--error", action="store_true", help="only print the GEMV's activation-quantization error")
    args = p.parse_args(argv)
    if args.error:
        gemv_error()
        return
    tests = args.tests.split(",")
    tg.manual_seed(0)
    base = tg.GPT(tg.GPTConfig(**GPT2)).eval()
    models = {}
    for name in args.formats.split(","):
        if name == "fp32":
            models[name] = base
            continue
        m = tg.GPT(tg.GPTConfig(**GPT2)).eval()
        m.load_state_dict(base.state_dict())
        models[name] = quantize(m, bits={"int8": 8, "int4": 4}[name])
    bw = common.copy_bandwidth(args.threads)
    print(f"# {common.cpu_model()}, threads {args.threads}, "
          f"copy bandwidth {bw:.1f} GB/s (read + write), {time.strftime('%Y-%m-%d %H:%M:%S')}, "
          f"load {os.getloadavg()[0]:.2f}")
    times = {(f, t): [] for f in models for t in tests}
    rng = np.random.default_rng(0)
    for name, m in models.items():  # warm-up: first-call allocations, thread pools
        decode(m, 1, 2, rng)
    for rep in range(args.reps):
        order = list(models) if rep % 2 == 0 else list(models)[::-1]
        for t in tests:
            for name in order:
                m = models[name]
                if t == "b1":
                    times[name, t].append(args.new / decode(m, 1, args.new, rng))
                elif t == "b8":
                    times[name, t].append(8 * args.new / decode(m, 8, args.new, rng))
                elif t == "prefill":
                    times[name, t].append(args.prefill / prefill(m, args.prefill, rng))
                else:
                    raise SystemExit(f"unknown test {t!r}: use b1, b8, prefill")
    print(f"# load after: {os.getloadavg()[0]:.2f}; medians of {args.reps} (min-max)")
    print(f"{'weights':8} {'MB/token':>9} {'bound tok/s':>11}  " + "  ".join(f"{t + ' tok/s':>22}" for t in tests)
          + "  vs fp32 (b1)")
    fp32_b1 = statistics.median(times["fp32", "b1"]) if ("fp32", "b1") in times else None
    for name, m in models.items():
        nbytes = token_bytes(m)
        cells = []
        for t in tests:
            v = times[name, t]
            cells.append(f"{statistics.median(v):8.1f} ({min(v):6.1f}-{max(v):6.1f})")
        ratio = f"{statistics.median(times[name, 'b1']) / fp32_b1:.2f}x" if fp32_b1 and "b1" in tests else ""
        print(f"{name:8} {nbytes / 1e6:9.1f} {bw * 1e9 / nbytes:11.1f}  " + "  ".join(f"{c:>22}" for c in cells)
              + f"  {ratio}")
    if args.paths:
        compare_paths(models, args.new, args.reps, rng)
    if args.breakdown:
        print("\n# time per decode step (batch 1) by kernel op, ms (glue = Python outside the kernels)")
        parts = {name: breakdown(m, args.new, rng) for name, m in models.items()}
        ops = sorted({op for _, d in parts.values() for op in d}, key=lambda op: -max(d.get(op, 0) for _, d in parts.values()))
        print(f"{'op':16}" + "".join(f"{name:>10}" for name in parts))
        for op in ops:
            print(f"{op:16}" + "".join(f"{1e3 * d.get(op, 0.0):10.2f}" for _, d in parts.values()))
        print(f"{'glue':16}" + "".join(f"{1e3 * (t - sum(d.values())):10.2f}" for t, d in parts.values()))
        print(f"{'total':16}" + "".join(f"{1e3 * t:10.2f}" for t, _ in parts.values()))


if __name__ == "__main__":
    main()
