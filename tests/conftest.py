"""Shared pytest setup: hypothesis profiles, the `gpu` marker skip, the reference/native fixture.

Profiles (pick one with HYPOTHESIS_PROFILE=ci|dev|quick|thorough; ci is the default):
  ci        25 examples, derandomized (reproducible CI), no deadline
  dev       50 examples
  quick     5 examples, derandomized (benchmarks/gpu_session.sh: the kernel tests in a timed session)
  thorough  500 examples

TINYGPT_CUDA_EMULATOR=1 runs the GPU tests without a GPU: CuPy is played by tests/fake_cupy.py and
tinygpt._C.cuda by csrc/cuda's kernels compiled for the CPU emulator (tests/cuda_emu), so
    TINYGPT_CUDA_EMULATOR=1 pytest tests/test_cuda_*.py tests/test_gpu.py && TINYGPT_CUDA_EMULATOR=1 pytest -m gpu tests/ops
checks every CUDA kernel and wrapper against the float64 references (not CuPy, not speed).
Only the GPU tests are meant for this mode: the rest of the suite expects no GPU.
"""
import os

import pytest
from hypothesis import HealthCheck, settings

import tinygpt as tg
from tinygpt import kernels

from helpers import EMULATOR

# function_scoped_fixture: the ops tests' `impl` fixture (tests/ops/conftest.py) only picks an implementation,
# which every hypothesis example of the test shares on purpose.
_COMMON = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
settings.register_profile("ci", max_examples=25, derandomize=True, database=None, **_COMMON)
settings.register_profile("dev", max_examples=50, **_COMMON)
settings.register_profile("quick", max_examples=5, derandomize=True, database=None, **_COMMON)  # a timed GPU session
settings.register_profile("thorough", max_examples=500, **_COMMON)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a CUDA GPU and CuPy (skipped without one)")
    config.addinivalue_line("markers", "slow: takes long; deselect with -m 'not slow'")
    if EMULATOR:  # before collection: the test modules' skipif(not kcuda.has(...)) see the kernels
        import fake_cupy

        config._tg_emulator_patch = pytest.MonkeyPatch()
        fake_cupy.install_emulator(config._tg_emulator_patch)


def pytest_unconfigure(config):
    patch = getattr(config, "_tg_emulator_patch", None)
    if patch is not None:
        patch.undo()


def pytest_report_header(config):
    if EMULATOR:
        return "CUDA kernels: on the CPU emulator (TINYGPT_CUDA_EMULATOR=1), CuPy: tests/fake_cupy.py"


def _gpu_skip_reason():
    if tg.backend.cuda_available():
        return None
    if tg.backend._load_cupy() is None:
        return "needs CuPy (pip install '.[cuda]') and a CUDA GPU"
    return "CuPy is installed but cupy.cuda.is_available() is False (no GPU or driver)"


def pytest_runtest_setup(item):
    """Tests marked `gpu` skip cleanly where CuPy or a GPU is missing."""
    if item.get_closest_marker("gpu") is not None:
        reason = _gpu_skip_reason()
        if reason is not None:
            pytest.skip(reason)


@pytest.fixture
def cuda():
    """Request this fixture (or mark the test `gpu`) for a test that needs CuPy and a GPU."""
    reason = _gpu_skip_reason()
    if reason is not None:
        pytest.skip(reason)
    return tg.backend.cupy()


@pytest.fixture(params=["reference", "native"])
def kernel_impl(request):
    """Run the test once on the NumPy reference kernels and once on the native ones.

    'native' skips when the extension is not built or is disabled (TINYGPT_NATIVE=0).
    Yields the name, with the dispatch switched for the duration of the test.
    """
    if request.param == "native" and not kernels.native_enabled():
        pytest.skip("native kernels are not available (tinygpt._C not built, or TINYGPT_NATIVE=0)")
    with kernels.use_native(request.param == "native"):
        yield request.param


@pytest.fixture
def seeded():
    """Start from a fixed global RNG state (tg.manual_seed(0)); the core test files use it for
    every test via `pytestmark = pytest.mark.usefixtures("seeded")`."""
    tg.manual_seed(0)
    yield
