"""One full GPT training step on the CPU: tinygpt vs PyTorch, same model, same numbers.

A step is forward + backward + global grad-norm clip (1.0) + AdamW (lr 1e-3, betas 0.9/0.99,
weight decay 0.1 on 2-D weights), as in examples/train_shakespeare.py. The PyTorch model
below has tinygpt's structure exactly (learned positions, pre-norm blocks, tanh GELU, a
tied LM head, biases) and starts from tinygpt's initial weights, so the two run the same
arithmetic on the same batches; the first-step losses are printed as a check.

Timing: the frameworks alternate step by step (ABBA order within rounds), so machine noise
falls on both alike; the table shows the median ms per step and the interquartile range.
Both use the same thread count (--threads, default all cores), set before numpy and torch
load: OMP/OpenBLAS/MKL_NUM_THREADS and torch.set_num_threads.

    python benchmarks/train_step.py --config both
    python benchmarks/train_step.py --config small --kernels both --json out/bench.json
    python benchmarks/train_step.py --config small --profile      # where tinygpt's time goes
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402 - must run before numpy/torch load (thread environment)

THREADS = common.preparse_int(sys.argv[1:], "--threads", os.cpu_count() or 1)
common.set_thread_env(THREADS)

import argparse  # noqa: E402
import cProfile  # noqa: E402
import contextlib  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import pstats  # noqa: E402
import time  # noqa: E402
from collections import defaultdict  # noqa: E402

import numpy as np  # noqa: E402

import tinygpt as tg  # noqa: E402
from tinygpt.nn.utils import clip_grad_norm_  # noqa: E402

try:
    import torch
except ImportError:  # the benchmark still times tinygpt alone
    torch = None

VOCAB = 65  # Tiny Shakespeare's characters
CONFIGS = {
    # nanoGPT's CPU Shakespeare config
    "small": dict(n_layer=4, n_head=4, n_embd=128, block_size=64, batch_size=12, steps=40, warmup=5),
    "medium": dict(n_layer=6, n_head=6, n_embd=384, block_size=256, batch_size=16, steps=10, warmup=2),
}
LR, BETAS, WEIGHT_DECAY, GRAD_CLIP, EPS = 1e-3, (0.9, 0.99), 0.1, 1.0, 1e-8


# ============================================================================ PyTorch peer
def torch_copy_of(model: tg.GPT):
    """nanoGPT's model in PyTorch (benchmarks/common.py) holding exactly tinygpt's current weights."""
    return common.torch_gpt_copy(torch, {k: np.asarray(v) for k, v in model.state_dict().items()}, model.config)


# ============================================================================ the contenders
class TinyStep:
    """One tinygpt training step on a fixed list of batches (cycled)."""

    def __init__(self, model: tg.GPT, batches, native: bool):
        self.model, self.batches, self.native, self.i = model, batches, native, 0
        self.params = model.parameters()
        self.opt = model.configure_optimizers(WEIGHT_DECAY, LR, betas=BETAS, eps=EPS)
        self.loss = None

    def __call__(self):
        x, y = self.batches[self.i % len(self.batches)]
        self.i += 1
        with tg.kernels.use_native(self.native):
            _, loss = self.model(x, y)
            self.opt.zero_grad()
            loss.backward()
            clip_grad_norm_(self.params, GRAD_CLIP)
            self.opt.step()
        self.loss = loss.item()


class TorchStep:
    def __init__(self, model, batches):
        self.model, self.i, self.loss = model, 0, None
        self.batches = [(torch.from_numpy(x), torch.from_numpy(y)) for x, y in batches]
        params = list(model.parameters())
        groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": WEIGHT_DECAY},
                  {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
        self.params = params
        self.opt = torch.optim.AdamW(groups, lr=LR, betas=BETAS, eps=EPS)

    def __call__(self):
        x, y = self.batches[self.i % len(self.batches)]
        self.i += 1
        _, loss = self.model(x, y)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, GRAD_CLIP)
        self.opt.step()
        self.loss = loss.item()


def make_model(name: str, seed: int):
    c = CONFIGS[name]
    cfg = tg.GPTConfig(vocab_size=VOCAB, block_size=c["block_size"], n_layer=c["n_layer"], n_head=c["n_head"],
                       n_embd=c["n_embd"], dropout=0.0, bias=True)
    tg.manual_seed(seed)
    return tg.GPT(cfg)


def make_batches(name: str, n: int, seed: int):
    c = CONFIGS[name]
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        seq = rng.integers(0, VOCAB, size=(c["batch_size"], c["block_size"] + 1), dtype=np.int64)
        out.append((np.ascontiguousarray(seq[:, :-1]), np.ascontiguousarray(seq[:, 1:])))
    return out


def kernel_modes(choice: str) -> list[tuple[str, bool]]:
    native_ok = tg.kernels.available()["native"]
    if choice == "reference":
        return [("tinygpt", False)]
    if not native_ok:
        return [("tinygpt", False)]
    if choice == "native":
        return [("tinygpt", True)]
    return [("tinygpt-native", True), ("tinygpt-ref", False)]


# ============================================================================ timing
def bench_config(name: str, args) -> dict:
    c = CONFIGS[name]
    steps = args.steps or c["steps"]
    warmup = c["warmup"] if args.warmup is None else args.warmup
    tokens = c["batch_size"] * c["block_size"]
    batches = make_batches(name, 8, args.seed)
    base = make_model(name, args.seed)
    init = {k: np.array(v, copy=True) for k, v in base.state_dict().items()}
    flops_per_step = base.flops_per_token() * tokens

    steppers = {}
    for label, native in kernel_modes(args.kernels):
        m = make_model(name, args.seed)
        m.load_state_dict(init)
        steppers[label] = TinyStep(m, batches, native)
    if torch is not None and not args.no_torch:
        steppers["torch"] = TorchStep(torch_copy_of(base), batches)
    contenders = dict(steppers)

    # correctness check: the loss of the first batch, before any update, in each framework
    x0, y0 = batches[0]
    check = {}
    with tg.no_grad():
        for label, st in steppers.items():
            if isinstance(st, TinyStep):
                with tg.kernels.use_native(st.native):
                    check[label] = st.model(x0, y0)[1].item()
    if "torch" in steppers:
        with torch.no_grad():
            check["torch"] = steppers["torch"].model(torch.from_numpy(x0), torch.from_numpy(y0))[1].item()

    print(f"\n[{name}] {c['n_layer']} layers, {c['n_head']} heads, {c['n_embd']} channels, block {c['block_size']}, "
          f"batch {c['batch_size']} = {tokens} tokens/step, {base.num_params():,} params, "
          f"{flops_per_step / 1e9:.2f} GFLOP/step (6N + 12LHQT per token)")
    print(f"[{name}] initial loss on batch 0: " + ", ".join(f"{k} {v:.6f}" for k, v in check.items()))
    how = f"in blocks of {args.block} (+1 untimed)" if args.block > 1 else "interleaved"
    print(f"[{name}] timing {steps} steps {how} after {warmup} warmup steps ...", flush=True)
    t0 = time.perf_counter()
    times = common.interleaved(contenders, steps, warmup, block=args.block)
    elapsed = time.perf_counter() - t0
    result = {"config": name, **{k: c[k] for k in ("n_layer", "n_head", "n_embd", "block_size", "batch_size")},
              "params": base.num_params(), "tokens_per_step": tokens, "flops_per_step": flops_per_step,
              "steps": steps, "warmup": warmup, "elapsed_s": elapsed, "initial_loss": check,
              "final_loss": {k: st.loss for k, st in steppers.items()}, "results": {}}
    for label, ts in times.items():
        s = common.stats(ts)
        s["tokens_per_s"] = tokens / (s["median_ms"] / 1e3)
        s["gflops_per_s"] = flops_per_step / (s["median_ms"] / 1e3) / 1e9
        result["results"][label] = s
    print(f"[{name}] loss after {warmup + steps} identical steps: "
          + ", ".join(f"{k} {v:.6f}" for k, v in result["final_loss"].items()))
    return result


def print_table(results: list[dict]) -> None:
    rows = []
    for r in results:
        res = r["results"]
        ref = res.get("torch")
        for label, s in res.items():
            ratio = f"{s['median_ms'] / ref['median_ms']:.2f}x" if ref is not None else "-"
            rows.append([r["config"], label, f"{s['median_ms']:.1f}", f"{s['q1_ms']:.1f}-{s['q3_ms']:.1f}",
                         f"{s['iqr_ms']:.1f}", f"{s['tokens_per_s']:,.0f}", f"{s['gflops_per_s']:.1f}",
                         ratio if label != "torch" else "1.00x", s["n"]])
    print()
    print(common.table(["config", "framework", "median ms/step", "IQR range", "IQR", "tokens/s", "GFLOP/s",
                        "vs torch", "n"], rows, align=["<", "<", ">", ">", ">", ">", ">", ">", ">"]))


# ============================================================================ profile
def _function_classes():
    seen, stack = [], list(tg.autograd.Function.__subclasses__())
    while stack:
        cls = stack.pop()
        if cls not in seen:
            seen.append(cls)
            stack.extend(cls.__subclasses__())
    return seen


@contextlib.contextmanager
def timed_functions(acc):
    """Wrap every Function's forward/backward (and the AdamW kernel) to accumulate their time."""
    patched = []
    for cls in _function_classes():
        for kind in ("forward", "backward"):
            raw = cls.__dict__.get(kind)
            if not isinstance(raw, (staticmethod, classmethod)):
                continue
            fn = raw.__func__

            def wrapper(*a, _fn=fn, _key=(cls.__name__, kind), **kw):
                t0 = time.perf_counter()
                try:
                    return _fn(*a, **kw)
                finally:
                    entry = acc[_key]
                    entry[0] += time.perf_counter() - t0
                    entry[1] += 1

            patched.append((cls, kind, raw))
            setattr(cls, kind, type(raw)(wrapper))  # Linear's forward is a classmethod (LinearGELU reuses it)
    original_adamw = tg.kernels.adamw_step

    def adamw(*a, **kw):
        t0 = time.perf_counter()
        try:
            return original_adamw(*a, **kw)
        finally:
            acc[("adamw_step", "update")][0] += time.perf_counter() - t0
            acc[("adamw_step", "update")][1] += 1

    tg.kernels.adamw_step = adamw
    try:
        yield
    finally:
        tg.kernels.adamw_step = original_adamw
        for cls, kind, raw in patched:
            setattr(cls, kind, raw)


def profile_config(name: str, args) -> dict:
    n = args.profile_steps
    model = make_model(name, args.seed)
    batches = make_batches(name, 8, args.seed)
    native = kernel_modes(args.kernels)[0][1]
    step = TinyStep(model, batches, native)
    for _ in range(2):
        step()
    acc = defaultdict(lambda: [0.0, 0])
    phases = defaultdict(float)
    opt, params = step.opt, step.params
    sections = {"forward": ("forward",), "backward": ("backward",), "clip": (), "optimizer": ("update",)}
    with timed_functions(acc), tg.kernels.use_native(native):
        snapshots = {}
        t_all = time.perf_counter()
        for i in range(n):
            x, y = batches[i % len(batches)]
            t0 = time.perf_counter()
            _, loss = model(x, y)
            t1 = time.perf_counter()
            opt.zero_grad()
            loss.backward()
            t2 = time.perf_counter()
            clip_grad_norm_(params, GRAD_CLIP)
            t3 = time.perf_counter()
            opt.step()
            loss.item()
            t4 = time.perf_counter()
            phases["forward"] += t1 - t0
            phases["backward"] += t2 - t1
            phases["clip"] += t3 - t2
            phases["optimizer"] += t4 - t3
        total = time.perf_counter() - t_all
        snapshots = {k: list(v) for k, v in acc.items()}

    per = 1e3 / n
    step_ms = total * per
    print(f"\n[{name}] profile of {n} tinygpt steps ({'native' if native else 'reference'} kernels): "
          f"{step_ms:.1f} ms/step with timing wrappers on every Function call")
    rows = []
    by_op = defaultdict(lambda: {"forward": [0.0, 0], "backward": [0.0, 0], "update": [0.0, 0]})
    for (op, kind), (t, calls) in snapshots.items():
        by_op[op][kind] = [t, calls]
    ordered = sorted(by_op.items(), key=lambda kv: -sum(v[0] for v in kv[1].values()))
    for op, kinds in ordered:
        tot = sum(v[0] for v in kinds.values())
        calls = max(v[1] for v in kinds.values())
        fwd = kinds["forward"][0] + kinds["update"][0]
        rows.append([op, f"{calls / n:.0f}", f"{fwd * per:.2f}", f"{kinds['backward'][0] * per:.2f}",
                     f"{tot * per:.2f}", f"{100 * tot / total:.1f}%", f"{tot / max(calls, 1) * 1e6:.0f}"])
    print(common.table(["op (Function)", "calls/step", "fwd ms", "bwd ms", "total ms", "% of step", "us/call"], rows))

    phase_rows, in_fn_total = [], 0.0
    for phase, kinds in sections.items():
        in_fn = sum(t for (op, kind), (t, _) in snapshots.items() if kind in kinds)
        in_fn_total += in_fn
        ph = phases[phase]
        phase_rows.append([phase, f"{ph * per:.2f}", f"{in_fn * per:.2f}", f"{(ph - in_fn) * per:.2f}",
                           f"{100 * ph / total:.1f}%"])
    print(common.table(["phase", "ms/step", "in Functions/kernels", "Python + autograd overhead", "% of step"],
                       phase_rows))
    overhead = total - in_fn_total
    print(f"[{name}] outside Function forward/backward and the AdamW kernel: {overhead * per:.2f} ms/step "
          f"({100 * overhead / total:.1f}%): graph building, Tensor wrapping, topological sort, grad "
          f"accumulation, module calls, clipping, optimiser loop")

    # cProfile, no wrappers: the hottest Python functions by own time
    prof = cProfile.Profile()
    with tg.kernels.use_native(native):
        prof.enable()
        for i in range(n):
            step()
        prof.disable()
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(args.profile_top)
    text = buf.getvalue()
    start = text.find("   ncalls")
    print(f"\n[{name}] cProfile, top {args.profile_top} by own time over {n} steps (cumulative seconds):")
    print(text[start:] if start >= 0 else text)
    return {"config": name, "steps": n, "ms_per_step": step_ms,
            "ops": {op: {k: {"ms_per_step": v[0] * per, "calls_per_step": v[1] / n} for k, v in kinds.items() if v[1]}
                    for op, kinds in ordered},
            "phases_ms": {k: v * per for k, v in phases.items()}, "overhead_ms": overhead * per}


# ============================================================================ main
def build_parser():
    p = argparse.ArgumentParser(description="tinygpt vs PyTorch: one full GPT training step on the CPU.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--config", choices=("small", "medium", "both"), default="small",
                   help="small = nanoGPT CPU Shakespeare (4x4x128, block 64, batch 12); "
                        "medium = 6x6x384, block 256, batch 16")
    p.add_argument("--block", type=int, default=1,
                   help="time each framework's steps in blocks of this many consecutive steps (after one untimed "
                        "step) instead of alternating every step: with 2+ threads one library's spinning workers "
                        "slow the next library's step when they alternate")
    p.add_argument("--steps", type=int, default=None,
                   help="timed steps per framework (default: 40 small, 10 medium)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (default: 5 small, 2 medium)")
    p.add_argument("--threads", type=int, default=THREADS,
                   help="threads for both frameworks (torch.set_num_threads and OMP/OpenBLAS/MKL_NUM_THREADS)")
    k = p.add_mutually_exclusive_group()
    k.add_argument("--kernels", choices=("native", "reference", "both"), default="native",
                   help="tinygpt kernels: native (tinygpt._C, when built), reference (NumPy) or both side by side")
    k.add_argument("--native", dest="kernels", action="store_const", const="native", help="same as --kernels native")
    k.add_argument("--reference", dest="kernels", action="store_const", const="reference",
                   help="same as --kernels reference")
    p.add_argument("--no-torch", action="store_true", help="time tinygpt alone")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, metavar="PATH", help="save machine info and results as JSON")
    p.add_argument("--profile", action="store_true", help="also break tinygpt's step down per op and phase")
    p.add_argument("--profile-steps", type=int, default=5)
    p.add_argument("--profile-top", type=int, default=25, help="rows of the cProfile listing")
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.threads != THREADS:  # main() called in-process with a different count than the environment's
        print(f"note: the BLAS pools were sized at import ({THREADS} threads); --threads {args.threads} "
              f"applies to torch only in this process")
    if torch is not None:
        torch.set_num_threads(args.threads)
        torch.manual_seed(args.seed)
    info = common.machine_info(args.threads)
    kinfo = tg.kernels.available()
    info["tinygpt"] = tg.__version__
    info["tinygpt_native"] = kinfo["native"]
    print("tinygpt train-step benchmark (forward + backward + clip + AdamW)")
    common.print_machine(info)
    print(f"tinygpt     {tg.__version__}; native kernels: "
          + (f"built, cpu ops {kinfo['cpu']}" if kinfo["native"] else f"not built ({kinfo.get('reason')})"))
    if not kinfo["native"] and args.kernels != "reference":
        print(f"note: --kernels {args.kernels} asked for, but tinygpt._C is not built: timing the NumPy reference")
    if torch is None:
        print("note: torch is not installed; timing tinygpt alone")

    names = ["small", "medium"] if args.config == "both" else [args.config]
    results = [bench_config(name, args) for name in names]
    print_table(results)
    info["load_average_after"] = common.load_average()
    print(f"load average after: {info['load_average_after']}")
    profiles = [profile_config(name, args) for name in names] if args.profile else []
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"machine": info, "results": results, "profiles": profiles}, f, indent=1,
                      default=lambda o: o.item() if hasattr(o, "item") else str(o))
        print(f"saved {args.json}")
    return {"machine": info, "results": results, "profiles": profiles}


if __name__ == "__main__":
    main()
