"""CUDA GELU (csrc/cuda/gelu.cu via tinygpt/kernels/cuda.py), tanh and exact (erf), against the
float64 reference. Every test is marked `gpu` (skipped without CuPy and a GPU).

Tolerance: |gpu - ref64| <= RTOL |ref64| + ATOL scale (scale 1 for y, |grad| for dx), as for the
CPU kernels (tests/test_native_gelu.py), derived the same way for CUDA's accurate expf (<= 2 ulp)
and erfcf (<= 4 ulp): the exponent's argument (-2u, or -x^2/2 inside erfc) carries a relative
rounding error that becomes an absolute error |arg| eps32 of the exponent, i.e. <= ~(2 + 87)
ulp ~ 5.3e-6 relative where the tail value is still above ATOL (|x| < ~5: far less); elsewhere
the values are below ATOL = 1e-6. Near dy/dx's zero at x ~ -0.75 the terms cancel and only the
absolute part (ATOL |grad|) is meaningful. RTOL = 1e-5.
"""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import tinygpt as tg
from tinygpt.kernels import cuda as kcuda
from tinygpt.kernels import reference as ref

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not kcuda.has("gelu"), reason="tinygpt._C was built without the CUDA gelu kernels")]

RTOL, ATOL = 1e-5, 1e-6
APPROX = st.sampled_from(["tanh", "none"])
SHAPES = st.sampled_from([(1,), (2,), (3,), (4,), (5,), (7,), (15,), (16,), (17,), (31,), (97,), (4097,), (3, 5),
                          (2, 3, 61), (13, 257), (40000,), (1100007,)])
SCALES = st.sampled_from([1e-3, 0.3, 1.0, 3.0, 10.0, 1e3, 1e6])


def cp():
    return tg.backend.cupy()


def _ref64(x, g, approximate):
    x64 = x.astype(np.float64)
    y, saved = ref.gelu_forward(x64, approximate)
    return y, ref.gelu_backward(g.astype(np.float64), x64, approximate, saved)


def _check(name, got, want, scale):
    got = cp().asnumpy(got)
    assert got.dtype == np.float32 and got.shape == want.shape
    err = np.abs(got.astype(np.float64) - want)
    tol = RTOL * np.abs(want) + ATOL * scale
    bad = err > tol
    assert not bad.any(), f"{name}: {bad.sum()} of {bad.size} outside tolerance, worst err/tol {np.max(err / tol):.3g}"


def _run(x, g, approximate):
    c = cp()
    xd, gd = c.asarray(x), c.asarray(g)
    y, saved = kcuda.gelu.gelu_forward(xd, approximate)
    assert saved == ()
    return y, kcuda.gelu.gelu_backward(gd, xd, approximate, saved)


@given(seed=st.integers(0, 2**32 - 1), shape=SHAPES, scale=SCALES, approximate=APPROX)
def test_gelu_matches_reference(seed, shape, scale, approximate):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(shape) * scale).astype(np.float32)
    g = (rng.standard_normal(shape) * rng.choice([1e-3, 1.0, 1e3])).astype(np.float32)
    y, dx = _run(x, g, approximate)
    y_ref, dx_ref = _ref64(x, g, approximate)
    _check("y", y, y_ref, 1.0)
    _check("dx", dx, dx_ref, np.abs(g.astype(np.float64)))


@pytest.mark.parametrize("approximate", ["tanh", "none"])
def test_gelu_dense_sweep_and_extremes(approximate):
    """Every region (the +-12 clamp of the tanh form, the exp(80) cap) and overflowing cubes/squares."""
    x = np.concatenate([np.linspace(-14, 14, 280001), [1.4142, -1.4142, 9.999, 10.001, -9.999, -10.001, 11.99,
                                                       12.01, -11.99, -12.01, 1e4, -1e4, 1e13, -1e13, 3e38,
                                                       -3e38, 0.0, -0.0, 1e-30, -1e-30]]).astype(np.float32)
    g = np.random.default_rng(0).standard_normal(x.shape).astype(np.float32)
    y, dx = _run(x, g, approximate)
    y_ref, dx_ref = _ref64(x, g, approximate)
    _check("y", y, y_ref, 1.0)
    _check("dx", dx, dx_ref, np.abs(g.astype(np.float64)))


def test_misaligned_scalar_path():
    c = cp()
    x = np.random.default_rng(1).standard_normal(1001).astype(np.float32)
    flat = c.empty(x.size + 1, c.float32)
    xs = flat[1:]
    xs[...] = c.asarray(x)
    assert xs.data.ptr % 16 != 0
    for approximate in ("tanh", "none"):
        y, _ = kcuda.gelu.gelu_forward(xs, approximate)
        y_al, _ = kcuda.gelu.gelu_forward(c.asarray(x), approximate)
        c.testing.assert_array_equal(y, y_al)
        dx = kcuda.gelu.gelu_backward(xs, xs, approximate, ())
        dx_al = kcuda.gelu.gelu_backward(c.asarray(x), c.asarray(x), approximate, ())
        c.testing.assert_array_equal(dx, dx_al)


def test_empty():
    c = cp()
    y, _ = kcuda.gelu.gelu_forward(c.zeros((0, 3), c.float32), "tanh")
    assert y.shape == (0, 3)


def test_errors_name_the_argument():
    c = cp()
    x = c.ones((4, 5), c.float32)
    with pytest.raises(ValueError, match="gelu_forward: approximate must be 'tanh' or 'none', got 'erf'"):
        kcuda.gelu.gelu_forward(x, "erf")
    with pytest.raises(TypeError, match="gelu_forward: x: expected dtype float32"):
        kcuda.gelu.gelu_forward(x.astype(c.float16), "tanh")
    with pytest.raises(ValueError, match=r"gelu_backward: grad: expected shape \(4, 5\)"):
        kcuda.gelu.gelu_backward(c.ones((5, 4), c.float32), x, "tanh", ())
    with pytest.raises(ValueError, match="gelu_backward: x: expected a C-contiguous array"):
        kcuda.gelu.gelu_backward(x, c.ones((5, 4), c.float32).T, "none", ())
    with pytest.raises(TypeError, match="gelu_forward: x: expected a cupy array"):
        kcuda.gelu.gelu_forward(np.ones(3, np.float32), "tanh")


@pytest.mark.parametrize("approximate", ["tanh", "none"])
def test_autograd_through_functional(approximate):
    import tinygpt.functional as F

    x = np.random.default_rng(2).standard_normal((4, 33)).astype(np.float32) * 3
    res = {}
    for device in ("cpu", "cuda"):
        xt = tg.tensor(x, requires_grad=True, device=device)
        y = F.gelu(xt, approximate=approximate)
        (y * y).sum().backward()
        res[device] = (y.numpy(), xt.grad.numpy())
    for a, b in zip(res["cpu"], res["cuda"]):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)
