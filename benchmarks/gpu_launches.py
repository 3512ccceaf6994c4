"""GPU work per training step, counted without a GPU: native CUDA kernel launches and CuPy array ops.

On a GPU every CuPy array operation and every native launcher call is at least one kernel launch,
and for a small model (the nanoGPT Shakespeare configuration) their fixed cost (Python dispatch plus
~5 us of launch latency each) is a large share of a step. This script counts them for one full
training step (forward, backward, clip_grad_norm_, AdamW) with CuPy played by tests/fake_cupy.py and
the CUDA kernels by the CPU emulator (tests/cuda_emu), so it runs anywhere g++ does. The count does
not depend on batch size or sequence length, so those are kept tiny.

    python benchmarks/gpu_launches.py [--config shakespeare|gpt2] [--top 20]

Counts, not times: the GPU timings are benchmarks/gpu.py's.
"""
from __future__ import annotations

import argparse
import collections
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = {"shakespeare": dict(vocab_size=65, block_size=256, n_layer=6, n_head=6, n_embd=384, dropout=0.2),
           "gpt2": dict(vocab_size=50257, block_size=1024, n_layer=12, n_head=12, n_embd=768, dropout=0.0)}
NOT_LAUNCHES = {"linear_dw_splits", "adamw_multi_chunk", "grad_norm_chunk"}  # host-side queries


def count_step(config: str, batch: int = 1, seq: int = 16, native: bool = True, matmul: str = "ours"):
    """(counts per operation, parameter count) for one training step; native=False: no CUDA kernels.
    matmul: which GEMM runs every linear layer ('ours' | 'cublas'). On a GPU the default 'auto' measures
    both per shape class (tinygpt/kernels/cuda.py); on the emulator that would time the emulation."""
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    import fake_cupy
    import numpy as np
    import pytest

    patch = pytest.MonkeyPatch()
    fake_cupy.install_emulator(patch)
    import tinygpt as tg

    counts = collections.Counter()
    array = fake_cupy.GpuArray

    def on_ufunc(self, ufunc, method, *inputs, **kwargs):
        counts[f"cupy {ufunc.__name__}{'' if method == '__call__' else '.' + method}"] += 1
        inputs = tuple(np.asarray(i) if isinstance(i, array) else i for i in inputs)
        if "out" in kwargs:
            kwargs["out"] = tuple(np.asarray(o) if isinstance(o, array) else o for o in kwargs["out"])
        return fake_cupy._to_gpu(getattr(ufunc, method)(*inputs, **kwargs))

    def on_function(self, func, types, args, kwargs):
        counts[f"cupy {func.__name__}"] += 1
        return super(array, self).__array_function__(func, types, args, kwargs)

    launcher = fake_cupy.EmulatedKernels.__getattr__

    def on_launcher(self, name):
        fn = launcher(self, name)
        if not callable(fn) or name in NOT_LAUNCHES:
            return fn

        def call(*args, **kwargs):
            counts[f"native {name}"] += 1
            return fn(*args, **kwargs)

        return call

    def method(name, real, launches=lambda *a, **k: True):
        def counted(self, *args, **kwargs):
            if launches(*args, **kwargs):
                counts[f"cupy {name}"] += 1
            return real(self, *args, **kwargs)
        patch.setattr(array, name, counted)

    def advanced(index, *rest):  # fancy indexing gathers (a kernel); basic slicing makes a view
        return any(isinstance(i, np.ndarray) for i in (index if isinstance(index, tuple) else (index,)))

    for name in ("astype", "copy", "fill", "sort", "__setitem__"):
        method(name, getattr(np.ndarray, name))
    method("__getitem__", np.ndarray.__getitem__, advanced)
    to_device = fake_cupy.FakeCupy.asarray
    patch.setattr(fake_cupy.FakeCupy, "asarray", staticmethod(
        lambda x, dtype=None: counts.update(["cupy asarray (host to device)"] * (not isinstance(x, array)))
        or to_device(x, dtype)))
    patch.setattr(array, "__array_ufunc__", on_ufunc)
    patch.setattr(array, "__array_function__", on_function)
    patch.setattr(fake_cupy.EmulatedKernels, "__getattr__", on_launcher)
    try:
        patch.setattr(tg.kernels, "_enabled", native)  # whatever TINYGPT_NATIVE says
        patch.setattr(tg.kernels.policy, "_matmul_backend", matmul)
        tg.manual_seed(0)
        model = tg.GPT(tg.GPTConfig(**{**CONFIGS[config], "block_size": seq})).to("cuda")
        opt = model.configure_optimizers(weight_decay=0.1, learning_rate=1e-3, betas=(0.9, 0.99))
        data = np.random.default_rng(0).integers(0, CONFIGS[config]["vocab_size"], (batch, seq + 1))
        x, y = tg.tensor(data[:, :-1], device="cuda"), tg.tensor(data[:, 1:], device="cuda")

        def step():
            _, loss = model(x, y)
            opt.zero_grad()
            loss.backward()
            tg.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()

        step()  # the first step also creates the optimiser state
        counts.clear()
        step()
        return dict(counts), sum(1 for _ in model.parameters())
    finally:
        patch.undo()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", choices=sorted(CONFIGS), default="shakespeare")
    ap.add_argument("--top", type=int, default=20, help="list the most frequent operations")
    ap.add_argument("--reference", action="store_true", help="without the CUDA kernels (array code on CuPy)")
    ap.add_argument("--matmul", choices=("ours", "cublas"), default="ours",
                    help="the GEMM of every linear layer (a GPU measures and mixes them: 'auto')")
    args = ap.parse_args(argv)
    counts, n_params = count_step(args.config, native=not args.reference, matmul=args.matmul)
    native = sum(v for k, v in counts.items() if k.startswith("native"))
    cupy = sum(v for k, v in counts.items() if k.startswith("cupy"))
    print(f"{args.config}: {n_params} parameters; one training step = {native} native launcher calls + "
          f"{cupy} CuPy array ops = {native + cupy}")
    for name, n in sorted(counts.items(), key=lambda kv: -kv[1])[:args.top]:
        print(f"{n:6d}  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
