"""Every CUDA kernel of tinygpt._C.cuda on this GPU, timed with CUDA events, with its napkin math.

Two parts (one file per group of kernel families, in benchmarks/cuda/):
  - gemm_and_elementwise.py: the tensor-core GEMM (fp32 / tf32 / bf16) vs cupy.matmul (cuBLAS) on
    the products of a GPT training step, in TFLOP/s; layernorm, add_layer_norm, GELU and AdamW in GB/s
    against a device-to-device copy measured in the same run;
  - attention_and_rowwise.py: flash attention vs torch's scaled_dot_product_attention (and
    the CuPy reference), TFLOP/s; softmax, log_softmax, cross-entropy, dropout and embedding in GB/s
    and % of copy.

    python benchmarks/cuda_kernels.py [--quick] [--only matmul,layernorm,gelu,adamw,attention,softmax,cross_entropy,dropout,embedding]

Needs CuPy, a GPU and tinygpt._C built with CUDA; says so and exits otherwise.
"""
from __future__ import annotations

import argparse
import importlib.util
import pathlib
import sys

HERE = pathlib.Path(__file__).resolve().parent / "cuda"
sys.path.insert(0, str(HERE))  # their shared _events module
PARTS = {"gemm_and_elementwise": ("matmul", "layer_norm", "gelu", "adamw"),
         "attention_and_rowwise": ("attention", "softmax", "cross_entropy", "dropout", "embedding")}


def _load(name):
    spec = importlib.util.spec_from_file_location(f"bench_cuda_{name}", HERE / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer shapes and repetitions")
    ap.add_argument("--smoke", action="store_true", help="tiny shapes, one repetition: the code paths only")
    ap.add_argument("--only", default="", help="comma-separated kernel families (default: all)")
    args = ap.parse_args(argv)
    import tinygpt as tg  # noqa: PLC0415

    if not tg.backend.cuda_available():
        print("skipped: benchmarks/cuda_kernels.py needs CuPy and a CUDA GPU (pip install '.[cuda]')")
        return 0
    only = {s for s in args.only.split(",") if s}
    for part, families in PARTS.items():
        chosen = [f for f in families if not only or f in only]
        if chosen:
            print(f"\n# {part}: {', '.join(chosen)}")
            _load(part).main((["--quick"] if args.quick else []) + (["--smoke"] if args.smoke else [])
                             + ["--only", ",".join(chosen)])
    return 0


if __name__ == "__main__":
    sys.exit(main())
