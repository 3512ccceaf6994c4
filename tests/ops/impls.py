"""The implementations an op test runs on: one test file per op family (tests/ops/test_<family>.py),
each property test parametrised over the `impl` fixture (conftest.py).

  reference      kernels/reference.py on float32 arrays (the NumPy code every kernel is checked against,
                 run in float32 like the kernels: its own rounding must meet the same bounds)
  cpu-avx512     tinygpt._C.cpu with its copies for that instruction set (tinygpt._C.cpu.set_isa),
  cpu-avx2       each skipped where the CPU or the build lacks it
  cpu-baseline
  cuda           tinygpt.kernels.cuda on CuPy arrays (marked `gpu`: a GPU, or the CUDA emulator with
                 TINYGPT_CUDA_EMULATOR=1; skipped otherwise)

Every bound is checked against the float64 reference, with constants per implementation where their
arithmetic differs (`Impl.limit`). `native_impl` is the same without the reference.
"""
import contextlib

import numpy as np
import pytest

import tinygpt as tg
from tinygpt import kernels
from tinygpt.kernels import cuda as kcuda
from tinygpt.kernels import reference

CPU = getattr(kernels._native, "cpu", None)
ISAS = ("avx512", "avx2", "baseline")


class Impl:
    """One implementation of the ops: where its arrays live and how to call its kernels."""

    def __init__(self, name):
        self.name = name
        self.device = "cuda" if name == "cuda" else "cpu"
        self.isa = name[len("cpu-"):] if name.startswith("cpu-") else None
        self.native = name != "reference"

    def __repr__(self):
        return self.name

    def kernel(self, op):
        """op's Kernel (forward, backward) here, or its update function; skips the test where there is none."""
        if self.name == "reference":
            spec = kernels.OPS[op]
            if spec.kind != "function":
                return getattr(reference, op)
            return kernels.Kernel("reference", getattr(reference, f"{op}_forward"), getattr(reference, f"{op}_backward"))
        found = kernels.implementation(op, self.device)
        if found is None:
            pytest.skip(f"{self.name}: this build has no {op} kernel")
        return found

    def to(self, a, offset=0):
        """A host array as this implementation's input; on CUDA a C-contiguous view starting `offset`
        elements after an aligned base (offset > 0 exercises the kernels' misaligned paths)."""
        if a is None or self.device == "cpu" or not isinstance(a, np.ndarray):
            return a
        cp = tg.backend.cupy()
        flat = cp.empty(a.size + offset, a.dtype)
        view = flat[offset:].reshape(a.shape)
        view[...] = cp.asarray(a)
        return view

    def host(self, a):
        """An output as a host (numpy) array; tuples and None pass through element-wise."""
        if isinstance(a, (tuple, list)):
            return type(a)(self.host(x) for x in a)
        if a is None or isinstance(a, np.ndarray) or self.device == "cpu":
            return a
        return tg.backend.cupy().asnumpy(a)

    def limit(self, table):
        """This implementation's entry of a {name or device or 'default': value} table of bound constants."""
        for key in (self.name, self.device, "default"):
            if key in table:
                return table[key]
        raise KeyError(f"no bound for {self.name} in {sorted(table)}")


@contextlib.contextmanager
def running(impl):
    """Run the body on impl (its ISA for a cpu-* one); skip where it is not available."""
    if impl.device == "cpu" and impl.native:
        if CPU is None or not kernels.native_enabled():
            pytest.skip("tinygpt._C is not built (or TINYGPT_NATIVE=0)")
        before = CPU.isa()
        try:
            CPU.set_isa(impl.isa)
        except ValueError as exc:
            pytest.skip(str(exc))
        try:
            yield impl
        finally:
            CPU.set_isa(before)
    elif impl.device == "cuda":
        if not kcuda.has("gelu"):  # any op: the CUDA kernels are built, or played by the emulator
            pytest.skip("tinygpt._C was built without the CUDA kernels")
        yield impl
    else:
        yield impl


def params(names):
    return [pytest.param(Impl(n), id=n, marks=[pytest.mark.gpu] if n == "cuda" else []) for n in names]


ALL = ["reference"] + [f"cpu-{isa}" for isa in ISAS] + ["cuda"]
NATIVE = ALL[1:]
CPU_ISAS = NATIVE[:-1]
# The ISA the CPU kernels run without set_isa (the best this CPU and build have, or TINYGPT_CPU_ISA's).
DEFAULT_ISA = CPU.isa() if CPU is not None else "baseline"
NATIVE_DEFAULT_ISA = [f"cpu-{DEFAULT_ISA}", "cuda"]
