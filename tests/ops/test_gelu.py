"""gelu, tanh (GPT-2) and exact (erf) forms (reference.py, csrc/cpu/gelu.cpp with the SIMD layer's GELU
of csrc/cpu/simd.h, csrc/cuda/gelu.cu + gelu.cuh) against the float64 reference, on every implementation.

Tolerance: |impl - ref64| <= RTOL |ref64| + ATOL scale, scale 1 for y and |grad| for dx.
  - CPU: the exp is <= 2 ulp, but its argument (-2u for tanh, -x^2/2 for erf) carries a relative
    rounding error that becomes an absolute error |arg| eps32 of the exponent, i.e. ~(1 + |arg|) ulp
    of the tail value (|arg| < 90); the erfc fit is 1.5e-7 relative. Measured max error over 3e6
    points: y 5.2e-7 abs / 1.3e-6 rel (tanh), dy/dx 2.4e-7 abs, near its zero at x ~ -0.75 where the
    terms cancel (relative error is meaningless there).
  - CUDA: the same derivation with CUDA's expf (<= 2 ulp) and erfcf (<= 4 ulp).
RTOL = 1e-5 and ATOL = 1e-6 give those a >= 4x margin. The float32 reference is worse: its
0.5 x (1 + tanh(u)) loses all relative accuracy for x < -3 (tanh(u) -> -1), so it gets the absolute
bound only there (REF_ATOL).
"""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import tinygpt as tg
import tinygpt.functional as F
from tinygpt import kernels
from tinygpt.kernels import reference as ref

from helpers import arrays, check_grads, compare_with_torch, floats, shapes
from refs import F32, F32_GRAD, T64, np_erf, np_gelu, tf

pytestmark = pytest.mark.usefixtures("seeded")  # every test starts from tg.manual_seed(0)

RTOL = {"reference": 1e-5, "default": 1e-5}
ATOL = {"reference": 3e-6, "default": 1e-6}
APPROX = st.sampled_from(["tanh", "none"])
SHAPES = st.sampled_from([(1,), (2,), (3,), (4,), (5,), (7,), (15,), (16,), (17,), (31,), (97,), (4097,), (3, 5),
                          (2, 3, 61), (13, 257), (40000,), (1100007,)])  # the last splits over OpenMP threads
SCALES = st.sampled_from([1e-3, 0.3, 1.0, 3.0, 10.0, 1e3, 1e6])


def _ref64(x, g, approximate):
    x64 = x.astype(np.float64)
    y, saved = ref.gelu_forward(x64, approximate)
    return y, ref.gelu_backward(g.astype(np.float64), x64, approximate, saved)


def _check(impl, name, got, want, scale):
    got = impl.host(got)
    assert got.dtype == np.float32 and got.shape == want.shape
    err = np.abs(got.astype(np.float64) - want)
    tol = impl.limit(RTOL) * np.abs(want) + impl.limit(ATOL) * scale
    bad = err > tol
    assert not bad.any(), f"{name}: {bad.sum()} of {bad.size} outside tolerance, worst err/tol {np.max(err / tol):.3g}"


def _run(impl, x, g, approximate, offset=0):
    k = impl.kernel("gelu")
    xd = impl.to(x, offset)
    y, saved = k.forward(xd, approximate)
    return y, k.backward(impl.to(g, offset), xd, approximate, saved)


@given(seed=st.integers(0, 2**32 - 1), shape=SHAPES, scale=SCALES, approximate=APPROX,
       offset=st.sampled_from([0, 0, 1]))
def test_gelu(impl, seed, shape, scale, approximate, offset):
    if impl.name == "reference" and approximate == "tanh" and scale > 1:
        scale = 1.0  # the float32 reference's tanh form cancels in the tail (module doc)
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(shape) * scale).astype(np.float32)
    g = (rng.standard_normal(shape) * rng.choice([1e-3, 1.0, 1e3])).astype(np.float32)
    y, dx = _run(impl, x, g, approximate, offset)
    y_ref, dx_ref = _ref64(x, g, approximate)
    _check(impl, "y", y, y_ref, 1.0)
    _check(impl, "dx", dx, dx_ref, np.abs(g.astype(np.float64)))


@pytest.mark.parametrize("approximate", ["tanh", "none"])
def test_dense_sweep_and_extremes(native_impl, approximate):
    """Every region of the approximations (erf near / far, the +-12 clamp and the exp(88) cap of the
    tanh form) and values whose cubes or squares overflow float32."""
    x = np.concatenate([np.linspace(-14, 14, 280001), [1.4142, 1.4143, -1.4142, -1.4143, 9.999, 10.001, -9.999,
                                                       -10.001, 11.99, 12.01, -11.99, -12.01, 1e4, -1e4, 1e13,
                                                       -1e13, 3e38, -3e38, 0.0, -0.0, 1e-30, -1e-30]])
    x = x.astype(np.float32)
    g = np.random.default_rng(0).standard_normal(x.shape).astype(np.float32)
    y, dx = (native_impl.host(a) for a in _run(native_impl, x, g, approximate))
    with np.errstate(over="ignore", invalid="ignore"):
        y_ref, dx_ref = _ref64(x, g, approximate)
    finite = np.isfinite(y_ref) & np.isfinite(dx_ref)
    _check(native_impl, "y", y[finite], y_ref[finite], 1.0)
    _check(native_impl, "dx", dx[finite], dx_ref[finite], np.abs(g[finite].astype(np.float64)))
    assert np.isfinite(y).all() and np.isfinite(dx).all()
    assert y[-4] == 0.0 and not np.signbit(y[-4])


def test_nan_propagates(cpu_impl):
    """On the CPU a NaN input gives NaN in both passes (the CUDA backward clamps it away: fminf/fmaxf)."""
    x = np.array([np.nan, 1.0], np.float32)
    for approximate in ("tanh", "none"):
        y, dx = (cpu_impl.host(a) for a in _run(cpu_impl, x, np.ones_like(x), approximate))
        assert np.isnan(y[0]) and np.isnan(dx[0]) and np.isfinite(y[1])


def test_empty(native_impl):
    y, _ = native_impl.kernel("gelu").forward(native_impl.to(np.zeros((0, 3), np.float32)), "tanh")
    assert y.shape == (0, 3)


def test_cuda_misaligned_is_the_same(cuda_impl):
    """CUDA: arrays 4 bytes off a 16-byte boundary take the scalar path, with the same values."""
    impl = cuda_impl
    x = np.random.default_rng(1).standard_normal(1001).astype(np.float32)
    for approximate in ("tanh", "none"):
        aligned = [impl.host(a) for a in _run(impl, x, x, approximate)]
        shifted = [impl.host(a) for a in _run(impl, x, x, approximate, offset=1)]
        for a, b in zip(aligned, shifted):
            np.testing.assert_array_equal(a, b)


def test_errors_name_the_argument(native_impl):
    k = native_impl.kernel("gelu")
    to, cuda = native_impl.to, native_impl.device == "cuda"
    x = to(np.ones((3, 4), np.float32))
    bad_dtype = TypeError if cuda else ValueError
    with pytest.raises(ValueError, match="gelu_forward: approximate must be 'tanh' or 'none', got '?erf"):
        k.forward(x, "erf")
    with pytest.raises(bad_dtype, match="gelu_forward: x:? (expected dtype float32|must be float32)"):
        k.forward(to(np.ones((3, 4), np.float64)), "tanh")
    with pytest.raises(ValueError, match="gelu_forward: x:? (expected a C-contiguous array|must be C-contiguous)"):
        k.forward(to(np.ones((4, 3), np.float32)).T, "tanh")
    with pytest.raises(ValueError, match=r"gelu_backward: grad:? (expected shape|must have shape) \(3, 4\)"):
        k.backward(to(np.ones((4, 3), np.float32)), x, "tanh", ())
    with pytest.raises(bad_dtype, match="gelu_backward: grad:? (expected dtype float32|must be float32)"):
        k.backward(to(np.ones((3, 4), np.float16)), x, "none", ())
    with pytest.raises(ValueError, match="gelu_backward: x:? (expected a C-contiguous array|must be C-contiguous)"):
        k.backward(to(np.ones((4, 3), np.float32)), to(np.ones((4, 3), np.float32)).T, "none", ())
    with pytest.raises(ValueError, match="gelu_backward: approximate must be"):
        k.backward(x, x, "TANH", ())
    if cuda:
        with pytest.raises(TypeError, match="gelu_forward: x: expected a cupy array"):
            k.forward(np.ones(3, np.float32), "tanh")


# ----------------------------------------------------------------------------- dispatch and autograd
def test_dispatch():
    x = np.ones((3, 4), np.float32)
    with kernels.use_native(True):  # (also under TINYGPT_NATIVE=0)
        assert kernels.select("gelu", x).name == ("native-cpu" if kernels.native_enabled() else "reference")
        assert kernels.select("gelu", x.astype(np.float64)).name == "reference"
        assert kernels.select("gelu", x.T).name == "reference"
    with kernels.use_native(False):
        assert kernels.select("gelu", x).name == "reference"
    y = F.gelu(tg.Tensor(np.linspace(-3, 3, 7)), approximate="none")  # float64: the reference runs
    assert y.dtype == np.float64
    np.testing.assert_array_equal(y.numpy(), ref.gelu_forward(np.linspace(-3, 3, 7), "none")[0])


@pytest.mark.parametrize("approximate", ["tanh", "none"])
def test_functional_native_matches_reference(approximate):
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


@pytest.mark.gpu
@pytest.mark.parametrize("approximate", ["tanh", "none"])
def test_functional_on_cuda_matches_cpu(cuda, approximate):
    x = np.random.default_rng(2).standard_normal((4, 33)).astype(np.float32) * 3
    res = {}
    for device in ("cpu", "cuda"):
        xt = tg.tensor(x, requires_grad=True, device=device)
        y = F.gelu(xt, approximate=approximate)
        (y * y).sum().backward()
        res[device] = (y.numpy(), xt.grad.numpy())
    for a, b in zip(res["cpu"], res["cuda"]):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- tinygpt.functional: float64 references, finite differences, torch
@pytest.mark.parametrize("approximate", ["tanh", "none"])
@given(data=st.data(), shape=shapes())
def test_gelu_float64_gradcheck(approximate, data, shape):
    x = data.draw(arrays(shape, elements=floats(-5, 5)))
    out = check_grads(lambda t: F.gelu(t, approximate=approximate), x)
    np.testing.assert_allclose(out, np_gelu(x, approximate), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("approximate", ["tanh", "none"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gelu_torch(kernel_impl, dtype, approximate):
    x = np.linspace(-6, 6, 97).reshape(1, 97)
    tol = T64 if dtype == np.float64 else F32_GRAD
    out = compare_with_torch(lambda t: F.gelu(t, approximate), lambda t: tf().gelu(t, approximate=approximate), x,
                             dtype=dtype, **tol)
    if dtype == np.float32:
        np.testing.assert_allclose(out, np_gelu(x, approximate), **F32)


def test_gelu_bad_approximate():
    with pytest.raises(ValueError, match="approximate"):
        F.gelu(tg.randn(3), approximate="erf")


def test_reference_erf_matches_math_erf():
    grid = np.concatenate([np.linspace(-30, 30, 6001), np.geomspace(1e-300, 1e-3, 50), -np.geomspace(1e-12, 1, 30),
                           [0.0, -0.0, 2.5, -2.5, np.nextafter(2.5, 0), 5.9, 6.0, 27.0, -27.0, 40.0, 1e10]])
    np.testing.assert_allclose(ref.erf(grid), np_erf(grid), rtol=4e-15, atol=2e-16)
    assert ref.erf(grid.astype(np.float32)).dtype == np.float32
