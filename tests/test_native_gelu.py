"""Native CPU GELU (csrc/cpu/gelu.cpp), tanh and exact (erf), against the float64 reference.

Tolerance: |native - ref64| <= RTOL * |ref64| + ATOL * scale, where scale is 1 for y and
|grad| for dx. Measured max error vs the float64 reference (3e6 points: [-12, 12] evenly
and N(0, 3) draws; float32 inputs):
                    y abs     y rel (|y| > 1e-6)   dy/dx abs
    tanh            5.2e-7    1.3e-6               2.4e-7
    none (erf)      3.8e-7    1.9e-6               2.0e-7
  - relative: exp is ~1 ulp, but its argument (-2u for tanh, -x^2/2 for erf) carries a
    relative rounding error that becomes an absolute error |arg| * eps32 of the exponent,
    i.e. ~ (1 + |arg|) ulp of the tail value (|arg| < 90); the erfc fit is 1.5e-7 relative.
  - absolute: 5.2e-7 is 1 ulp of y ~ 5; for dy/dx the worst is near its zero at x ~ -0.75,
    where the terms cancel (relative error is meaningless there).
RTOL = 1e-5 and ATOL = 1e-6 give those a >= 4x margin. (The float32 reference itself is
worse: tanh(u) loses all relative accuracy in 0.5 * x * (1 + tanh(u)) for x < -3.)
"""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import tinygpt as tg
import tinygpt.functional as F
from tinygpt import kernels
from tinygpt.kernels import reference as ref

CPU = getattr(kernels._native, "cpu", None)
pytestmark = pytest.mark.skipif(not hasattr(CPU, "gelu_forward"),
                                reason="tinygpt._C.cpu has no gelu kernels (extension not built)")

RTOL, ATOL = 1e-5, 1e-6
APPROX = st.sampled_from(["tanh", "none"])
SHAPES = st.sampled_from([(1,), (2,), (7,), (15,), (16,), (17,), (31,), (97,), (4097,), (3, 5), (2, 3, 61),
                          (13, 257), (40000,), (1100007,)])  # the last is split over OpenMP threads
SCALES = st.sampled_from([1e-3, 0.3, 1.0, 3.0, 10.0, 1e3, 1e6])


def _ref64(x, g, approximate):
    x64 = x.astype(np.float64)
    y, saved = ref.gelu_forward(x64, approximate)
    return y, ref.gelu_backward(g.astype(np.float64), x64, approximate, saved)


def _check(name, got, want, scale):
    assert got.dtype == np.float32 and got.shape == want.shape
    err = np.abs(got.astype(np.float64) - want)
    tol = RTOL * np.abs(want) + ATOL * scale
    bad = err > tol
    assert not bad.any(), f"{name}: {bad.sum()} of {bad.size} outside tolerance, worst err/tol {np.max(err / tol):.3g}"


@given(seed=st.integers(0, 2**32 - 1), shape=SHAPES, scale=SCALES, approximate=APPROX)
def test_gelu_matches_reference(seed, shape, scale, approximate):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(shape) * scale).astype(np.float32)
    g = (rng.standard_normal(shape) * rng.choice([1e-3, 1.0, 1e3])).astype(np.float32)
    y, saved = CPU.gelu_forward(x, approximate)
    dx = CPU.gelu_backward(g, x, approximate, saved)
    y_ref, dx_ref = _ref64(x, g, approximate)
    _check("y", y, y_ref, 1.0)
    _check("dx", dx, dx_ref, np.abs(g.astype(np.float64)))


@pytest.mark.parametrize("approximate", ["tanh", "none"])
def test_gelu_dense_sweep_and_extremes(approximate):
    """Every region of the approximations (erf near/far split at |x| = sqrt 2, the x = +-10
    clamp of the tanh form) and values whose cubes or squares overflow float32."""
    x = np.concatenate([np.linspace(-12, 12, 240001), [1.4142, 1.4143, -1.4142, -1.4143, 9.999, 10.001,
                                                        -9.999, -10.001, 1e4, -1e4, 1e13, -1e13, 3e38,
                                                        -3e38, 0.0, -0.0, 1e-30, -1e-30]]).astype(np.float32)
    g = np.ones_like(x)
    y, saved = CPU.gelu_forward(x, approximate)
    dx = CPU.gelu_backward(g, x, approximate, saved)
    with np.errstate(over="ignore", invalid="ignore"):
        y_ref, dx_ref = _ref64(x, g, approximate)
    finite = np.isfinite(y_ref) & np.isfinite(dx_ref)
    _check("y", y[finite], y_ref[finite], 1.0)
    _check("dx", dx[finite], dx_ref[finite], 1.0)
    assert np.isfinite(y).all() and np.isfinite(dx).all()
    assert y[-4] == 0.0 and not np.signbit(y[-4])


def test_gelu_nan_propagates():
    x = np.array([np.nan, 1.0], np.float32)
    for approximate in ("tanh", "none"):
        y, saved = CPU.gelu_forward(x, approximate)
        dx = CPU.gelu_backward(np.ones_like(x), x, approximate, saved)
        assert np.isnan(y[0]) and np.isnan(dx[0]) and np.isfinite(y[1])


def test_gelu_errors():
    x = np.ones((3, 4), np.float32)
    with pytest.raises(ValueError, match="gelu_forward: approximate must be 'tanh' or 'none', got 'erf'"):
        CPU.gelu_forward(x, "erf")
    with pytest.raises(ValueError, match="gelu_forward: x must be float32, got float64"):
        CPU.gelu_forward(x.astype(np.float64), "tanh")
    with pytest.raises(ValueError, match="gelu_forward: x must be C-contiguous"):
        CPU.gelu_forward(x.T, "tanh")
    with pytest.raises(ValueError, match=r"gelu_backward: grad must have shape \(3, 4\), got \(4, 3\)"):
        CPU.gelu_backward(np.ones((4, 3), np.float32), x, "tanh", ())
    with pytest.raises(ValueError, match="gelu_backward: grad must be float32"):
        CPU.gelu_backward(x.astype(np.float16), x, "none", ())
    with pytest.raises(ValueError, match="gelu_backward: x must be C-contiguous"):
        CPU.gelu_backward(x.T.copy(), x.T, "none", ())
    with pytest.raises(ValueError, match="gelu_backward: approximate must be"):
        CPU.gelu_backward(x, x, "TANH", ())


def test_gelu_dispatch():
    x = np.ones((3, 4), np.float32)
    with kernels.use_native(True):  # (also under TINYGPT_NATIVE=0)
        assert kernels.select("gelu", x).name == "native-cpu"
        assert kernels.select("gelu", x.astype(np.float64)).name == "reference"
        assert kernels.select("gelu", x.T).name == "reference"
    with kernels.use_native(False):
        assert kernels.select("gelu", x).name == "reference"
    y = F.gelu(tg.Tensor(np.linspace(-3, 3, 7)), approximate="none")  # float64: the reference runs
    assert y.dtype == np.float64
    np.testing.assert_array_equal(y.numpy(), ref.gelu_forward(np.linspace(-3, 3, 7), "none")[0])


@pytest.mark.parametrize("approximate", ["tanh", "none"])
def test_functional_gelu_native_matches_reference(approximate):
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((4, 9, 33)) * 2).astype(np.float32)
    w = rng.standard_normal(x.shape).astype(np.float32)
    results = []
    for native in (True, False):
        with kernels.use_native(native):
            xt = tg.Tensor(x.copy(), requires_grad=True)
            y = F.gelu(xt.permute(0, 2, 1), approximate=approximate)  # non-contiguous input is copied first
            (y * tg.Tensor(w.transpose(0, 2, 1))).sum().backward()
            results.append((y.numpy(), xt.grad.numpy()))
    np.testing.assert_allclose(results[0][0], results[1][0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(results[0][1], results[1][1], rtol=1e-5, atol=2e-6)


_ISA_SCRIPT = r"""
import numpy as np
from tinygpt import kernels
from tinygpt.kernels import reference as ref
cpu = kernels._native.cpu
x = np.concatenate([np.linspace(-12, 12, 20001), [1e4, -1e4, 3e38, -3e38]]).astype(np.float32)
g = np.random.default_rng(0).standard_normal(x.shape).astype(np.float32)
for approximate in ("tanh", "none"):
    y, saved = cpu.gelu_forward(x, approximate)
    dx = cpu.gelu_backward(g, x, approximate, saved)
    y_ref, saved_ref = ref.gelu_forward(x.astype(np.float64), approximate)
    dx_ref = ref.gelu_backward(g.astype(np.float64), x.astype(np.float64), approximate, saved_ref)
    np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(dx, dx_ref, rtol=1e-5, atol=1e-6 * np.abs(g).max())
print(cpu.isa())
"""


@pytest.mark.parametrize("isa", ["baseline", "avx2"])
def test_every_compiled_variant(isa):
    """The AVX2 and baseline builds of the kernels (picked with TINYGPT_CPU_ISA) also match."""
    import os  # noqa: PLC0415
    import subprocess  # noqa: PLC0415
    import sys  # noqa: PLC0415

    root = os.path.dirname(os.path.dirname(os.path.abspath(tg.__file__)))  # this tinygpt, wherever it is
    env = dict(os.environ, TINYGPT_CPU_ISA=isa,
               PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))
    out = subprocess.run([sys.executable, "-c", _ISA_SCRIPT], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[-1] in (isa, "baseline")  # a CPU without AVX2 runs the baseline
