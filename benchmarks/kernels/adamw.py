"""Benchmark: one AdamW step over a GPT's parameters (native vs NumPy reference vs PyTorch).

    python benchmarks/kernels/adamw.py [--quick]

`rows(quick)` returns one dict per (kernel, shape, impl, pass='step'): median_ms over many
steps with the implementations interleaved round by round (so background load hits them
alike), and gbps = the bytes the update must move at the least / time (28 bytes per parameter:
read p, g, m, v, write p, m, v), to compare with this machine's copy bandwidth (the row with
kernel 'copy': numpy.copyto of 256 MB, bytes read + written).

Parameter sets: the shapes of tinygpt.GPT's parameters for the character-level configs
(vocab 65, block 256) with 4 layers / 128 wide and 6 layers / 384 wide.
kernel 'adamw': the update of every parameter, one call each, no optimizer bookkeeping:
  native     tinygpt._C.cpu.adamw_step per parameter
  reference  tinygpt.kernels.reference.adamw_step per parameter (NumPy, float32)
  torch      torch.optim.AdamW(foreach=False).step()  (per-parameter kernels, as ours)
kernel 'adamw[torch foreach]': torch.optim.AdamW's default step (multi-tensor foreach kernels)
kernel 'AdamW.step': the whole optimizer step, tinygpt.optim.AdamW with native on (impl
  'native') or off ('reference'), against torch's default ('torch').

Shared machines: with more runnable processes than cores, libgomp's spinning barrier (the
default OMP_WAIT_POLICY) makes every 2-thread call wait a scheduler tick or two (8-16 ms,
seen here at load 3-8 on 2 cores, for torch and tinygpt._C alike); run with
OMP_WAIT_POLICY=passive or OMP_NUM_THREADS=1 there, or at a quiet time.
"""
from __future__ import annotations


import numpy as np

CONFIGS = [(4, 128), (6, 384)]  # (n_layer, n_embd)
HYPER = dict(lr=1e-3, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)


import _timing  # noqa: E402
from _timing import threads as _timing_threads, copy_row, interleaved_median as _interleaved  # noqa: E402


def gpt_shapes(n_layer: int, n_embd: int) -> list[tuple]:
    import tinygpt  # noqa: PLC0415

    cfg = tinygpt.GPTConfig(vocab_size=65, block_size=256, n_layer=n_layer, n_head=4, n_embd=n_embd)
    return [tuple(p.shape) for p in tinygpt.GPT(cfg).parameters()]


def rows(quick: bool = False) -> list[dict]:
    import torch  # noqa: PLC0415

    import tinygpt  # noqa: PLC0415
    from tinygpt import kernels  # noqa: PLC0415
    from tinygpt.kernels import reference as ref  # noqa: PLC0415

    # the same cores for both: OMP_NUM_THREADS when set (it also sizes our OpenMP pool)
    torch.set_num_threads(_timing_threads())
    cpu = getattr(kernels._native, "cpu", None)
    copy, row = copy_row("step")
    out = [row]
    rng = np.random.default_rng(0)
    b1, b2 = HYPER["betas"]
    for n_layer, n_embd in CONFIGS[:1] if quick else CONFIGS:
        shapes = gpt_shapes(n_layer, n_embd)
        n = sum(int(np.prod(s)) for s in shapes)
        shape = f"{n_layer}L/{n_embd}: {len(shapes)} tensors, {n / 1e6:.2f}M params"
        nbytes = 28 * n
        reps = 9 if quick else max(21, min(200, int(21 * 100e6 / nbytes)))

        def make_state():
            ps = [rng.standard_normal(s, dtype=np.float32) * 0.02 for s in shapes]
            gs = [rng.standard_normal(s, dtype=np.float32) * 1e-3 for s in shapes]
            ms = [np.zeros(s, np.float32) for s in shapes]
            vs = [np.zeros(s, np.float32) for s in shapes]
            return ps, gs, ms, vs, [0]

        def kernel_loop(fn, state):
            ps, gs, ms, vs, step = state

            def run():
                step[0] += 1
                for p, g, m, v in zip(ps, gs, ms, vs):
                    fn(p, g, m, v, lr=HYPER["lr"], beta1=b1, beta2=b2, eps=HYPER["eps"],
                       weight_decay=HYPER["weight_decay"], step=step[0])
            return run

        def torch_opt(foreach):
            params = [torch.nn.Parameter(torch.randn(s) * 0.02) for s in shapes]
            for p in params:
                p.grad = torch.randn(p.shape) * 1e-3
            opt = torch.optim.AdamW(params, lr=HYPER["lr"], betas=HYPER["betas"], eps=HYPER["eps"],
                                    weight_decay=HYPER["weight_decay"], foreach=foreach)
            return opt.step

        def tinygpt_opt(native):
            params = [tinygpt.nn.Parameter(rng.standard_normal(s, dtype=np.float32) * 0.02) for s in shapes]
            for p in params:
                p.grad = tinygpt.Tensor(rng.standard_normal(p.shape, dtype=np.float32) * 1e-3)
            opt = tinygpt.optim.AdamW(params, lr=HYPER["lr"], betas=HYPER["betas"], eps=HYPER["eps"],
                                      weight_decay=HYPER["weight_decay"])

            def run():
                with kernels.use_native(native):
                    opt.step()
            return run

        groups = {
            "adamw": {"reference": kernel_loop(ref.adamw_step, make_state()), "torch": torch_opt(False)},
            "adamw[torch foreach]": {"torch": torch_opt(None)},
            "AdamW.step": {"reference": tinygpt_opt(False), "torch": torch_opt(None)},
        }
        if hasattr(cpu, "adamw_step"):
            groups["adamw"]["native"] = kernel_loop(cpu.adamw_step, make_state())
            groups["adamw[torch foreach]"]["native"] = groups["adamw"]["native"]
            groups["AdamW.step"]["native"] = tinygpt_opt(True)
        # one interleaved run over all contenders, so they share the same background load
        fns = {(k, impl): fn for k, d in groups.items() for impl, fn in d.items()}
        times = _interleaved({f"{k}|{impl}": fn for (k, impl), fn in fns.items()}, reps)
        for key, t in times.items():
            k, impl = key.split("|")
            gbps = nbytes / t / 1e9
            out.append(dict(kernel=k, shape=shape, impl=impl, **{"pass": "step"}, median_ms=t * 1e3,
                            gbps=gbps, pct_copy=100 * gbps / copy))
    return out




if __name__ == "__main__":
    _timing.main(__file__)
