"""Run a script's GPU path without a GPU: CuPy played by tests/fake_cupy.py, the CUDA kernels by the
emulator (csrc/cuda compiled for the CPU), e.g.

    python tests/cuda_emu/run.py examples/train_shakespeare.py --device cuda --n-layer 2 --max-iters 300

Numbers, not speed: an emulated kernel runs at a small fraction of a CPU kernel's speed.
"""
import os
import runpy
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def main() -> None:
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    sys.path.insert(0, os.path.dirname(HERE))
    import fake_cupy
    import pytest

    fake_cupy.install_emulator(pytest.MonkeyPatch())
    script = sys.argv[1]
    sys.argv = sys.argv[1:]
    sys.path.insert(0, os.path.dirname(os.path.abspath(script)))
    runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    main()
