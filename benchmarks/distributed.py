"""Data-parallel training throughput on this machine: `mpiexec -n 2` with one thread per rank against one
process with two threads, same model, same global batch, same run.

    python benchmarks/distributed.py                       # small and medium, 3 interleaved rounds
    python benchmarks/distributed.py --config medium --rounds 5 --steps 6 --json out/dist.json

Contenders (each a fresh launch; the launches alternate round by round so machine noise falls alike):
  1proc-2threads     one process, 2 threads: the plain loop of examples/train_shakespeare.py (no distributed code)
  2ranks             mpiexec -n 2, 1 thread each: replicated AdamW, buckets all-reduced from the backward hooks
  2ranks-no-overlap  the same with every bucket started only after backward (overlap=False)
  2ranks-zero1       ZeRO-1: reduce-scatter, sharded AdamW, all-gather of the parameters

A step is forward + backward + global clip (1.0) + AdamW on a global batch split over the ranks. Per
contender: median ms per step and tokens/s (and the ratio to one process), and for the ranks: bytes sent
into collectives per step, the communication alone (the same collectives on the same buffers, timed
without any compute: what a step would pay if nothing overlapped), the wait after backward (the
reducer's `wait()`: the collectives' unhidden part plus any wait for the slower rank), and how much the
overlap hid: that wait without overlap minus the wait with it.

Configs are benchmarks/train_step.py's: small = nanoGPT's CPU Shakespeare model (0.8M parameters),
medium = 6 layers x 384 channels, block 256 (10.7M parameters).
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402 - sets nothing; numpy loads after the worker's thread environment

import argparse  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402

CONFIGS = {
    "small": dict(n_layer=4, n_head=4, n_embd=128, block_size=64, batch_size=12, steps=30, warmup=5),
    "medium": dict(n_layer=6, n_head=6, n_embd=384, block_size=256, batch_size=16, steps=6, warmup=2),
}
MODES = {  # name -> (ranks, threads per rank, reducer options or None for the plain loop)
    "1proc-2threads": (1, 2, None),
    "2ranks": (2, 1, dict(zero=False, overlap=True)),
    "2ranks-no-overlap": (2, 1, dict(zero=False, overlap=False)),
    "2ranks-zero1": (2, 1, dict(zero=True, overlap=True)),
}
VOCAB = 65


# ============================================================================ worker (one launch)
def worker(args) -> None:
    import numpy as np  # noqa: PLC0415 - after OMP_NUM_THREADS is set by the launcher's environment

    import tinygpt as tg  # noqa: PLC0415
    import tinygpt.distributed as dist  # noqa: PLC0415
    from tinygpt.data import BatchSampler  # noqa: PLC0415
    from tinygpt.nn.utils import clip_grad_norm_  # noqa: PLC0415

    cfg = CONFIGS[args.config]
    options = json.loads(args.options) if args.options else None
    if options is not None:
        dist.init()
    tg.manual_seed(0)
    model = tg.GPT(tg.GPTConfig(vocab_size=VOCAB, block_size=cfg["block_size"], n_layer=cfg["n_layer"],
                                n_head=cfg["n_head"], n_embd=cfg["n_embd"], dropout=0.0))
    opt = model.configure_optimizers(0.1, 1e-3, betas=(0.9, 0.99))
    tokens = np.random.default_rng(0).integers(0, VOCAB, size=200_000)
    sampler = BatchSampler(tokens, cfg["batch_size"], cfg["block_size"], seed=0)
    reducer = None
    if options is not None:
        dist.broadcast_parameters(model)
        reducer = dist.GradReducer(model, shard=options["zero"], overlap=options["overlap"],
                                   bucket_mb=args.bucket_mb)
        if options["zero"]:
            dist.shard_optimizer(opt, reducer)
    params = model.parameters()
    times, waits, opt_times = [], [], []
    for i in range(cfg["warmup"] + cfg["steps"]):
        x, y = sampler.sample()
        if reducer is not None:
            dist.comm().barrier()  # every rank starts the step together (the timing is rank 0's)
        t0 = time.perf_counter()
        if reducer is None:
            opt.zero_grad()
            _, loss = model(x, y)
            loss.backward()
            clip_grad_norm_(params, 1.0)
            t1 = time.perf_counter()
            opt.step()
        else:
            reducer.zero_grad()
            xl, yl, share = dist.local_batch(x, y)
            _, loss = model(xl, yl)
            (loss * share).backward()
            reducer.wait()
            reducer.clip_grad_norm_(1.0)
            t1 = time.perf_counter()
            opt.step()
        loss.item()
        t2 = time.perf_counter()
        if i >= cfg["warmup"]:
            times.append(t2 - t0)
            opt_times.append(t2 - t1)
            waits.append(reducer.last_wait_s if reducer is not None else 0.0)
    out = {"step_s": times, "wait_s": waits, "opt_s": opt_times, "params": model.num_params(),
           "tokens_per_step": cfg["batch_size"] * cfg["block_size"]}
    if reducer is not None:
        # the same collectives on the same buffers with no compute around them: their full cost
        c = dist.comm()
        comm_only = []
        for _ in range(max(3, cfg["steps"])):
            c.barrier()
            t0 = time.perf_counter()
            if options["zero"]:
                works = [c.reduce_scatter(b.grad, b.grad_shard) for b in reducer.buckets]
            else:
                works = [c.all_reduce(b.grad) for b in reducer.buckets]
            for w in works:
                w.wait()
            t1 = time.perf_counter()
            if options["zero"]:
                for w in [c.all_gather(b.param_flat) for b in reducer.buckets]:
                    w.wait()
            comm_only.append((t1 - t0, time.perf_counter() - t1))
        gather_bytes = sum(b.param_flat.nbytes for b in reducer.buckets) if options["zero"] else 0
        out.update(reduce_only_s=[a for a, _ in comm_only], gather_only_s=[b for _, b in comm_only],
                   reduce_bytes=reducer.bytes_per_step, gather_bytes=gather_bytes, buckets=len(reducer.buckets),
                   opt_state_bytes=dist.optimizer_state_nbytes(opt))
        if not dist.is_main():
            return
    print("RESULT " + json.dumps(out), flush=True)


# ============================================================================ driver
def launch(config, mode, args) -> dict:
    ranks, threads, options = MODES[mode]
    env = dict(os.environ)
    for name in common.THREAD_ENV:
        env[name] = str(threads)
    for k in [k for k in env if k.startswith(("PMI_", "OMPI_", "PMIX_"))]:
        del env[k]
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", "--config", config,
           "--bucket-mb", str(args.bucket_mb)]
    if options is not None:
        cmd += ["--options", json.dumps(options)]
        cmd = [args.mpiexec, "-n", str(ranks)] + cmd
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return json.loads(lines[-1][len("RESULT "):])


def median(xs):
    xs = sorted(xs)
    n = len(xs)
    return (xs[n // 2] + xs[(n - 1) // 2]) / 2


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", choices=("small", "medium", "both"), default="both")
    p.add_argument("--rounds", type=int, default=3, help="launches per contender, alternating the order")
    p.add_argument("--bucket-mb", type=float, default=4.0)
    p.add_argument("--modes", default=",".join(MODES), help="comma-separated subset of the contenders")
    p.add_argument("--json", default=None, help="also write the results here")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--options", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        worker(args)
        return
    beside = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    args.mpiexec = beside if os.path.exists(beside) else shutil.which("mpiexec")
    if args.mpiexec is None:
        sys.exit("benchmarks/distributed.py needs mpiexec: pip install \".[mpi]\"")
    modes = [m.strip() for m in args.modes.split(",")]
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        sys.exit(f"unknown --modes {unknown}; choose from {list(MODES)}")
    configs = ["small", "medium"] if args.config == "both" else [args.config]
    info = common.machine_info(threads=2)
    print(f"date        {info['date']}")
    print(f"cpu         {info['cpu']} ({info['logical_cores']} logical cores; {info['simd']})")
    print(f"load avg    {info['load_average']} (1/5/15 min; other processes share this machine)")
    print(f"python      {info['python']}; numpy {info['numpy']} ({info['numpy_blas']}); "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}")
    print(f"mpiexec     {args.mpiexec}; bucket {args.bucket_mb} MiB; {args.rounds} rounds per contender")
    report = {"machine": info, "results": {}}
    for config in configs:
        runs = {m: [] for m in modes}
        for r in range(args.rounds):
            for m in (modes if r % 2 == 0 else modes[::-1]):
                runs[m].append(launch(config, m, args))
        load_after = common.load_average()
        rows, base, exposed_by_mode, comm_by_mode = [], None, {}, {}
        for m in modes:
            step = median([t for run in runs[m] for t in run["step_s"]])
            tok = runs[m][0]["tokens_per_step"] / step
            base = base or (tok if MODES[m][0] == 1 else None)
            row = [m, f"{step * 1e3:.1f}", f"{tok:,.0f}", f"{tok / base:.2f}" if base else "-"]
            if MODES[m][2] is not None:
                reduce_only = median([t for run in runs[m] for t in run["reduce_only_s"]])
                gather_only = median([t for run in runs[m] for t in run["gather_only_s"]])
                exposed = median([t for run in runs[m] for t in run["wait_s"]])
                nbytes = runs[m][0]["reduce_bytes"] + runs[m][0]["gather_bytes"]
                exposed_by_mode[m] = exposed
                comm_by_mode[m] = reduce_only
                row += [f"{nbytes / 2**20:.1f}", f"{(reduce_only + gather_only) * 1e3:.1f}",
                        f"{exposed * 1e3:.1f}", str(runs[m][0]["buckets"]),
                        f"{runs[m][0]['opt_state_bytes'] / 2**20:.1f}"]
            else:
                row += ["-"] * 5
            rows.append(row)
        params = runs[modes[0]][0]["params"]
        print(f"\n{config}: {params / 1e6:.2f}M parameters, {runs[modes[0]][0]['tokens_per_step']} tokens per step; "
              f"load average after: {load_after}")
        print(common.table(["contender", "ms/step", "tokens/s", "vs 1 proc", "MiB sent/step", "comm alone ms",
                            "exposed ms", "buckets", "opt state MiB/rank"], rows))
        if "2ranks" in exposed_by_mode and "2ranks-no-overlap" in exposed_by_mode:
            # exposed = the reducer's wait after backward: the collectives' unhidden part plus any wait for the
            # slower rank; the same in both but for the overlap, so the difference is what the overlap hid
            hid = exposed_by_mode["2ranks-no-overlap"] - exposed_by_mode["2ranks"]
            share = (f"{100 * hid / comm_by_mode['2ranks']:.0f}%" if hid <= comm_by_mode["2ranks"] else
                     "more than the all-reduce alone: the no-overlap wait also holds the wait for the slower rank")
            print(f"overlap: the wait after backward is {exposed_by_mode['2ranks'] * 1e3:.1f} ms with buckets started "
                  f"from the backward hooks, {exposed_by_mode['2ranks-no-overlap'] * 1e3:.1f} ms without: "
                  f"{hid * 1e3:.1f} ms hidden of the {comm_by_mode['2ranks'] * 1e3:.1f} ms all-reduce ({share})")
        report["results"][config] = {"runs": runs, "table": rows, "load_after": load_after}
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
