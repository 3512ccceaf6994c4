"""CUDA softmax / log_softmax (csrc/cuda/softmax.cu via tinygpt.kernels.cuda) against the
float64 reference. GPU-only: every test is marked `gpu` (skips without CuPy and a GPU).

Tolerances (eps = 2^-24, float32's unit roundoff). The kernel is one warp per row: each lane
keeps an online (max, sum of exp) over its n_l = ceil(C / 32) elements, then 5 shuffle merges.
  - expf: <= 2 ulp = 4 eps relative (CUDA math guide); x - m rounds at eps |x - m|.
  - a lane's sum of n_l positive terms: <= n_l eps relative (gamma_n); each change of the running
    max rescales the partial sum once more (exp, <= 5 eps; ~log n_l times for random data, at
    most n_l), plus 5 merge rescales and 5 merge adds.
  So s carries <= (5 n_l + 6 n_l + 64) eps relative in the worst case; the bound below uses
  K = 8 n_l + 256 for sums (about 11 n_l at C = 32 and growing to 8 n_l), i.e. 4.6e-5 relative at
  C = 2053 and 7.6e-4 at C = 50257: far below the O(1) errors of a wrong index, mask or
  reduction, and above the typical sqrt(n_l) eps of random data.
"""
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import tinygpt as tg
from tinygpt.kernels import cuda as K
from tinygpt.kernels import reference as R

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not (K.has("softmax") and K.has("log_softmax")),
                                 reason="tinygpt._C was built without the CUDA softmax kernels")]

EPS = 2.0 ** -24
SIZES = [1, 2, 3, 4, 5, 7, 13, 16, 31, 64, 65, 127, 509, 512, 513, 1031, 2053]


def _cp():
    return tg.backend.cupy()


def _ksum(C):
    return 8 * math.ceil(C / 32) + 256


def _inputs(seed, lead, C, scale):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(lead + (C,)) * scale).astype(np.float32)
    g = rng.standard_normal(lead + (C,)).astype(np.float32)
    return x, g


def _device(a, offset=0):
    """a on the GPU, as a C-contiguous view that starts `offset` floats after an aligned base."""
    cp = _cp()
    flat = cp.empty(a.size + offset, cp.float32)
    view = flat[offset:].reshape(a.shape)
    view[...] = cp.asarray(a)
    return view


def _check(actual, expected, bound, what):
    actual = _cp().asnumpy(actual)
    assert actual.dtype == np.float32 and actual.shape == expected.shape, what
    err = np.abs(actual.astype(np.float64) - expected)
    ratio = err / bound
    worst = np.unravel_index(np.argmax(ratio), ratio.shape) if ratio.size else None
    assert ratio.size == 0 or ratio.max() <= 1.0, (
        f"{what}: error {err[worst]:.3g} > bound {bound[worst]:.3g} at {worst} "
        f"(actual {actual[worst]!r}, expected {expected[worst]!r})")


def _softmax_case(x, g, offset=0):
    C = x.shape[-1]
    ks = _ksum(C)
    y, saved = K.softmax.softmax_forward(_device(x, offset), -1)
    assert saved == ()
    x64 = x.astype(np.float64)
    y64, _ = R.softmax_forward(x64, -1)
    shift = np.abs(x64 - x64.max(axis=-1, keepdims=True))
    _check(y, y64, (ks + 2 * shift) * EPS * y64 + 1e-37, "softmax forward")
    # backward on the kernel's own y: dx = y (g - d), d = sum g y (a K-bounded sum), g - d rounds
    # at eps (|g| + |d|), the product at eps.
    y_in = _cp().asnumpy(y).astype(np.float64)
    dx = K.softmax.softmax_backward(_device(g, offset), _device(y_in.astype(np.float32), offset), -1, saved)
    dx64 = R.softmax_backward(g.astype(np.float64), y_in, -1, ())
    s_abs = np.abs(g * y_in).sum(axis=-1, keepdims=True)
    _check(dx, dx64, ks * EPS * y_in * (np.abs(g) + s_abs) + 1e-37, "softmax backward")


def _log_softmax_case(x, g, offset=0):
    C = x.shape[-1]
    ks = _ksum(C)
    y, saved = K.softmax.log_softmax_forward(_device(x, offset), -1)
    assert saved == ()
    y64, _ = R.log_softmax_forward(x.astype(np.float64), -1)
    # y = (x - m) - log s: x - m and log s round at eps of their size (<= |y| + log C), s's relative
    # error is K eps, the subtraction rounds at eps |y|.
    _check(y, y64, (ks + 4 * (np.abs(y64) + np.log(C) + 1)) * EPS, "log_softmax forward")
    # backward: dx = g - exp(y) gs, gs = sum g (K-bounded), exp(y) <= 4 eps, subtraction eps.
    y_in = _cp().asnumpy(y).astype(np.float64)
    dx = K.softmax.log_softmax_backward(_device(g, offset), _device(y_in.astype(np.float32), offset), -1, saved)
    dx64 = R.log_softmax_backward(g.astype(np.float64), y_in, -1, ())
    p = np.exp(y_in)
    g_abs = np.abs(g).sum(axis=-1, keepdims=True)
    _check(dx, dx64, ks * EPS * (np.abs(g) + p * g_abs) + 1e-37 * g_abs, "log_softmax backward")


shapes = st.tuples(st.lists(st.integers(1, 5), max_size=2).map(tuple), st.sampled_from(SIZES))
scales = st.sampled_from([1e-3, 1.0, 10.0, 1e4])
offsets = st.sampled_from([0, 0, 1, 2, 3])  # 0: float4 path; else the scalar path (misaligned view)


@given(shape=shapes, scale=scales, seed=st.integers(0, 2**31), offset=offsets)
def test_softmax_forward_backward(shape, scale, seed, offset):
    lead, C = shape
    x, g = _inputs(seed, lead, C, scale)
    _softmax_case(x, g, offset)


@given(shape=shapes, scale=scales, seed=st.integers(0, 2**31), offset=offsets)
def test_log_softmax_forward_backward(shape, scale, seed, offset):
    lead, C = shape
    x, g = _inputs(seed, lead, C, scale)
    _log_softmax_case(x, g, offset)


@pytest.mark.parametrize("rows, C", [(3, 50257), (2, 50304), (20000, 7), (5000, 129)])
def test_large_rows_and_many_rows(rows, C):
    """GPT-2's vocabulary (odd and padded), and more rows than the grid has warps (grid-stride)."""
    x, g = _inputs(rows + C, (rows,), C, 4.0)
    _softmax_case(x, g)
    _log_softmax_case(x, g)


def test_special_values():
    """-inf entries (masks) give exact zeros; an all -inf row gives nan, as the reference."""
    x = np.array([[0.0, -np.inf, 1.0, -np.inf], [-np.inf] * 4], np.float32)
    with np.errstate(invalid="ignore"):
        y64, _ = R.softmax_forward(x.astype(np.float64), -1)
        ly64, _ = R.log_softmax_forward(x.astype(np.float64), -1)
    y = _cp().asnumpy(K.softmax.softmax_forward(_device(x), -1)[0])
    assert y[0, 1] == 0.0 and y[0, 3] == 0.0
    np.testing.assert_allclose(y, y64, rtol=1e-6, equal_nan=True)
    ly = _cp().asnumpy(K.softmax.log_softmax_forward(_device(x), -1)[0])
    np.testing.assert_allclose(ly, ly64, rtol=1e-6, equal_nan=True)


def test_empty():
    cp = _cp()
    for shape in [(0, 5), (3, 0)]:
        y, _ = K.softmax.softmax_forward(cp.zeros(shape, cp.float32), -1)
        assert y.shape == shape
        assert K.softmax.log_softmax_backward(cp.zeros(shape, cp.float32), y, -1, ()).shape == shape


@pytest.mark.parametrize("op", ["softmax", "log_softmax"])
def test_errors_name_the_argument(op):
    cp = _cp()
    fwd, bwd = getattr(K.softmax, f"{op}_forward"), getattr(K.softmax, f"{op}_backward")
    x = cp.ones((4, 6), cp.float32)
    with pytest.raises(TypeError, match=f"{op}_forward: x: expected dtype float32"):
        fwd(x.astype(cp.float64), -1)
    with pytest.raises(ValueError, match=f"{op}_forward: x: expected a C-contiguous array"):
        fwd(cp.ones((6, 4), cp.float32).T, -1)
    with pytest.raises(TypeError, match=f"{op}_forward: x: expected a cupy array"):
        fwd(np.ones((4, 6), np.float32), -1)
    with pytest.raises(ValueError, match=f"{op}_forward: axis must be the last axis"):
        fwd(x, 0)
    with pytest.raises(ValueError, match=f"{op}_forward: x must have at least 1 dimension"):
        fwd(cp.ones((), cp.float32), -1)
    y, saved = fwd(x, 1)  # ndim - 1 is the last axis too
    with pytest.raises(ValueError, match=rf"{op}_backward: grad: expected shape \(4, 6\)"):
        bwd(cp.ones((4, 5), cp.float32), y, -1, saved)
    with pytest.raises(TypeError, match=f"{op}_backward: grad: expected dtype float32"):
        bwd(cp.ones((4, 6), cp.float64), y, -1, saved)
    with pytest.raises(ValueError, match=f"{op}_backward: y: expected a C-contiguous array"):
        bwd(cp.ones((6, 4), cp.float32).T, cp.ones((6, 4), cp.float32).T, -1, saved)
