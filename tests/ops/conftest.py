"""The `impl` fixtures of the op tests: one per implementation present (see impls.py)."""
import pytest

from impls import ALL, CPU_ISAS, NATIVE, NATIVE_DEFAULT_ISA, params, running


@pytest.fixture(params=params(ALL))
def impl(request):
    """Each implementation present: the reference, the native CPU kernels per ISA, CUDA."""
    with running(request.param) as i:
        yield i


@pytest.fixture(params=params(NATIVE))
def native_impl(request):
    """As `impl` without the reference (argument errors, determinism, paths the reference lacks)."""
    with running(request.param) as i:
        yield i


@pytest.fixture(params=params(CPU_ISAS))
def cpu_impl(request):
    """The native CPU kernels on each instruction set this CPU supports."""
    with running(request.param) as i:
        yield i


@pytest.fixture(params=params(["cuda"]))
def cuda_impl(request):
    """CUDA only, for what only the CUDA kernels have (misaligned paths, GEMM precisions, ...)."""
    with running(request.param) as i:
        yield i


@pytest.fixture(params=params(NATIVE_DEFAULT_ISA))
def large_impl(request):
    """As `native_impl` with the CPU on its default ISA only: for large problems, whose extra paths
    (rows split over threads, grid-stride loops) do not depend on the ISA; the other tests check the
    arithmetic of every ISA."""
    with running(request.param) as i:
        yield i
