"""softmax and log_softmax over the last axis (reference.py, csrc/cpu/softmax.cpp, csrc/cpu/simd.h's exp,
csrc/cuda/softmax.cu) against the float64 reference, on every implementation present.

Bounds, in eps = 2^-24 (float32's unit roundoff) times each quantity's condition:
  - exp: <= 2 ulp (CPU: simd.h's exp, measured in test_exp_accuracy; CUDA: expf); x - m rounds at
    eps |x - m|, so a term exp(x - m) is off by eps (|x - m| + 2) relative;
  - the row sum s: the CPU sums float partials per SIMD lane over blocks of 512 terms and float64
    across blocks, <= 128 eps of the sum of |terms| in the worst case; CUDA (one warp per row, an online
    (max, sum) per lane over n_l = ceil(C / 32) terms, then 5 shuffle merges) <= (5 n_l + 6 n_l + 64)
    eps, hence K = 8 n_l + 256; the reference (NumPy's pairwise sums) is within the CPU's.
So every check is |impl - ref64| <= (K + c |shift|) eps |ref64| (+ a 1e-37 floor for terms flushed
below float32's normal range), K per implementation below: far below the O(1) errors of a wrong index,
mask or reduction.
"""
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import tinygpt as tg
import tinygpt.functional as F
from tinygpt import kernels
from tinygpt.kernels import reference as R

from helpers import arrays, check_grads, compare_with_torch, floats, rng_arrays, shapes
from impls import CPU
from refs import F32_GRAD, T64, np_log_softmax, np_softmax, tf

pytestmark = pytest.mark.usefixtures("seeded")  # every test starts from tg.manual_seed(0)

EPS = 2.0 ** -24
SIZES = [1, 2, 3, 4, 5, 7, 13, 16, 31, 64, 65, 127, 509, 512, 513, 1031, 2053]
K_SUM = {"cuda": lambda C: 8 * math.ceil(C / 32) + 256, "default": lambda C: 256}

row_shapes = st.tuples(st.lists(st.integers(1, 5), max_size=2).map(tuple), st.sampled_from(SIZES))
scales = st.sampled_from([1e-3, 1.0, 10.0, 1e4])
offsets = st.sampled_from([0, 0, 1, 2, 3])  # CUDA: 0 the float4 path, else the scalar path (misaligned view)


def _inputs(seed, lead, C, scale):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(lead + (C,)) * scale).astype(np.float32)
    g = rng.standard_normal(lead + (C,)).astype(np.float32)
    return x, g


def _check(actual, expected, bound, what):
    """|actual - expected| <= bound elementwise, reporting the worst ratio."""
    assert actual.dtype == np.float32 and actual.shape == expected.shape, what
    err = np.abs(actual.astype(np.float64) - expected)
    ratio = err / bound
    worst = np.unravel_index(np.argmax(ratio), ratio.shape) if ratio.size else None
    assert ratio.size == 0 or ratio.max() <= 1.0, (
        f"{what}: error {err[worst]:.3g} > bound {bound[worst]:.3g} at {worst} "
        f"(actual {actual[worst]!r}, expected {expected[worst]!r})")


def check_softmax(impl, x, g, offset=0):
    ks = impl.limit(K_SUM)(x.shape[-1])
    fwd, bwd = impl.kernel("softmax")[1:]
    y, saved = fwd(impl.to(x, offset), -1)
    assert saved == ()
    x64 = x.astype(np.float64)
    y64, _ = R.softmax_forward(x64, -1)
    shift = np.abs(x64 - x64.max(axis=-1, keepdims=True))
    _check(impl.host(y), y64, (ks + 2 * shift) * EPS * y64 + 1e-37, "softmax forward")
    # backward on the implementation's own y: dx = y (g - d), d = sum g y (a K-bounded sum), g - d
    # rounds at eps (|g| + |d|), the product at eps.
    y_in = impl.host(y).astype(np.float64)
    dx = bwd(impl.to(g, offset), impl.to(y_in.astype(np.float32), offset), -1, saved)
    dx64 = R.softmax_backward(g.astype(np.float64), y_in, -1, ())
    s_abs = np.abs(g * y_in).sum(axis=-1, keepdims=True)
    _check(impl.host(dx), dx64, ks * EPS * y_in * (np.abs(g) + s_abs) + 1e-37, "softmax backward")


def check_log_softmax(impl, x, g, offset=0):
    C = x.shape[-1]
    ks = impl.limit(K_SUM)(C)
    fwd, bwd = impl.kernel("log_softmax")[1:]
    y, saved = fwd(impl.to(x, offset), -1)
    assert saved == ()
    y64, _ = R.log_softmax_forward(x.astype(np.float64), -1)
    # y = (x - m) - log s: x - m and log s round at eps of their size (<= |y| + log C), s's relative
    # error is K eps, the subtraction rounds at eps |y|.
    _check(impl.host(y), y64, (ks + 4 * (np.abs(y64) + np.log(C) + 1)) * EPS, "log_softmax forward")
    # backward: dx = g - exp(y) gs, gs = sum g (K-bounded), exp(y) <= 2 ulp, the subtraction eps.
    y_in = impl.host(y).astype(np.float64)
    dx = bwd(impl.to(g, offset), impl.to(y_in.astype(np.float32), offset), -1, saved)
    dx64 = R.log_softmax_backward(g.astype(np.float64), y_in, -1, ())
    p = np.exp(y_in)
    g_abs = np.abs(g).sum(axis=-1, keepdims=True)
    _check(impl.host(dx), dx64, ks * EPS * (np.abs(g) + p * g_abs) + 1e-37 * g_abs, "log_softmax backward")


@given(shape=row_shapes, scale=scales, seed=st.integers(0, 2**31), offset=offsets)
def test_softmax(impl, shape, scale, seed, offset):
    lead, C = shape
    check_softmax(impl, *_inputs(seed, lead, C, scale), offset)


@given(shape=row_shapes, scale=scales, seed=st.integers(0, 2**31), offset=offsets)
def test_log_softmax(impl, shape, scale, seed, offset):
    lead, C = shape
    check_log_softmax(impl, *_inputs(seed, lead, C, scale), offset)


@pytest.mark.parametrize("rows, C", [(3, 50257), (2, 50304), (20000, 7), (5000, 129)])
def test_large_and_many_rows(native_impl, rows, C):
    """GPT-2's vocabulary (many of the CPU's sum blocks; odd and padded on CUDA), and more rows than the
    CUDA grid has warps (grid-stride) or than the CPU splits over threads."""
    x, g = _inputs(rows + C, (rows,), C, 4.0)
    check_softmax(native_impl, x, g)
    check_log_softmax(native_impl, x, g)
    y, _ = native_impl.kernel("softmax").forward(native_impl.to(x), -1)
    np.testing.assert_allclose(native_impl.host(y).sum(axis=-1), 1.0, rtol=1e-5)


def test_special_values(impl):
    """-inf entries (masks) give exact zeros; an all -inf row gives nan, as the reference."""
    x = np.array([[0.0, -np.inf, 1.0, -np.inf], [-np.inf] * 4], np.float32)
    with np.errstate(invalid="ignore"):
        y64, _ = R.softmax_forward(x.astype(np.float64), -1)
        ly64, _ = R.log_softmax_forward(x.astype(np.float64), -1)
        y = impl.host(impl.kernel("softmax").forward(impl.to(x), -1)[0])
        ly = impl.host(impl.kernel("log_softmax").forward(impl.to(x), -1)[0])
    assert y[0, 1] == 0.0 and y[0, 3] == 0.0
    np.testing.assert_allclose(y, y64, rtol=1e-6, equal_nan=True)
    np.testing.assert_allclose(ly, ly64, rtol=1e-6, equal_nan=True)


def test_empty(native_impl):
    for shape in [(0, 5), (3, 0)]:
        y, _ = native_impl.kernel("softmax").forward(native_impl.to(np.zeros(shape, np.float32)), -1)
        assert y.shape == shape
        dx = native_impl.kernel("log_softmax").backward(native_impl.to(np.zeros(shape, np.float32)), y, -1, ())
        assert dx.shape == shape


def test_exp_accuracy(cpu_impl):
    """The SIMD layer's exp (csrc/cpu/simd.h) is within 1.5 ulp of exp on [-87.3, 0], flushes below.

    Read through log_softmax_backward with grad = onehot(last): dx_c = -exp(y_c) exactly.
    """
    ys = np.linspace(-87.3, 0.0, 200_001, dtype=np.float32)
    y = np.append(ys, np.float32(0.0))[None, :]
    g = np.zeros_like(y)
    g[0, -1] = 1.0
    e = -CPU.log_softmax_backward(g, y, -1, ())[0, :-1].astype(np.float64)
    ref = np.exp(ys.astype(np.float64))
    ulps = np.abs(e - ref) / np.spacing(ref.astype(np.float32)).astype(np.float64)
    assert ulps.max() <= 1.5
    tail = np.array([[-88.0, -100.0, -np.inf, 0.0]], np.float32)
    g = np.zeros_like(tail)
    g[0, -1] = 1.0
    assert np.all(CPU.log_softmax_backward(g, tail, -1, ())[0, :-1] == 0.0)


# ----------------------------------------------------------------------------- argument errors
@pytest.mark.parametrize("op", ["softmax", "log_softmax"])
def test_errors_name_the_argument(native_impl, op):
    fwd, bwd = native_impl.kernel(op)[1:]
    cuda = native_impl.device == "cuda"
    to = native_impl.to
    x = to(np.ones((4, 6), np.float32))
    bad_dtype = TypeError if cuda else ValueError
    with pytest.raises(bad_dtype, match=f"{op}_forward: x:? (expected dtype float32|must be float32)"):
        fwd(to(np.ones((4, 6), np.float64)), -1)
    with pytest.raises(ValueError, match=f"{op}_forward: x:? (expected a C-contiguous array|must be C-contiguous)"):
        fwd(to(np.ones((6, 4), np.float32)).T, -1)
    with pytest.raises(ValueError, match=f"{op}_forward: axis must be the last axis"):
        fwd(x, 0)
    with pytest.raises(ValueError, match=f"{op}_forward: x must have at least 1 dimension"):
        fwd(to(np.ones((), np.float32)), -1)
    y, saved = fwd(x, 1)  # ndim - 1 is the last axis too
    with pytest.raises(ValueError, match=rf"{op}_backward: grad:? (expected shape \(4, 6\)|must have the shape of y)"):
        bwd(to(np.ones((4, 5), np.float32)), y, -1, saved)
    with pytest.raises(bad_dtype, match=f"{op}_backward: grad:? (expected dtype float32|must be float32)"):
        bwd(to(np.ones((4, 6), np.float64)), y, -1, saved)
    with pytest.raises(ValueError, match=f"{op}_backward: y:? (expected a C-contiguous array|must be C-contiguous)"):
        bwd(to(np.ones((6, 4), np.float32)).T, to(np.ones((6, 4), np.float32)).T, -1, saved)
    with pytest.raises(ValueError, match=f"{op}_backward: axis must be the last axis"):
        bwd(x, y, 0, saved)
    if cuda:
        with pytest.raises(TypeError, match=f"{op}_forward: x: expected a cupy array"):
            fwd(np.ones((4, 6), np.float32), -1)


# ----------------------------------------------------------------------------- dispatch and autograd
@pytest.mark.parametrize("op", ["softmax", "log_softmax"])
def test_dispatch(op):
    x = np.ones((3, 4), np.float32)
    with kernels.use_native(True):  # also under TINYGPT_NATIVE=0
        want = "native-cpu" if kernels.native_enabled() else "reference"
        assert kernels.select(op, x).name == want
        assert kernels.select(op, x, native_ok=False).name == "reference"
        assert kernels.select(op, x.astype(np.float64)).name == "reference"
        assert kernels.select(op, np.ones((4, 3), np.float32).T).name == "reference"
    with kernels.use_native(False):
        assert kernels.select(op, x).name == "reference"


@pytest.mark.parametrize("fn", [F.softmax, F.log_softmax])
@pytest.mark.parametrize("axis", [-1, 2, 0, 1])
def test_autograd_native_matches_reference(fn, axis):
    """Through tinygpt.functional, forward and grad, native on vs off; axes other than the last
    must take the reference (the native kernel would raise) and still be right."""
    rng = np.random.default_rng(0)
    x0 = (rng.standard_normal((3, 5, 33)) * 3).astype(np.float32)
    w = rng.standard_normal(x0.shape).astype(np.float32)
    results = []
    for native in (True, False):
        with kernels.use_native(native):
            x = tg.Tensor(x0.copy(), requires_grad=True)
            y = fn(x, axis=axis)
            (y * tg.Tensor(w)).sum().backward()
            results.append((y.numpy(), x.grad.numpy()))
    (y1, g1), (y0, g0) = results
    np.testing.assert_allclose(y1, y0, rtol=2e-5, atol=2e-6)
    np.testing.assert_allclose(g1, g0, rtol=2e-5, atol=2e-6)


def test_backward_with_noncontiguous_grad():
    """A transposed upstream gradient reaches the native backward made contiguous."""
    rng = np.random.default_rng(1)
    x0 = rng.standard_normal((4, 7)).astype(np.float32)
    w = rng.standard_normal((7, 4)).astype(np.float32)
    grads = []
    for native in (True, False):
        with kernels.use_native(native):
            x = tg.Tensor(x0.copy(), requires_grad=True)
            y = F.softmax(x, axis=-1).transpose(1, 0)  # its grad arrives transposed
            (y * tg.Tensor(w)).sum().backward()
            grads.append(x.grad.numpy())
    np.testing.assert_allclose(grads[0], grads[1], rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- tinygpt.functional: float64 references, finite differences, torch
@pytest.mark.parametrize("fn, ref", [(F.softmax, np_softmax), (F.log_softmax, np_log_softmax)])
@given(data=st.data(), shape=shapes(1, 3))
def test_softmax_log_softmax(fn, ref, data, shape):
    x = data.draw(arrays(shape, elements=floats(-5, 5)))
    axis = data.draw(st.integers(-len(shape), len(shape) - 1))
    out = check_grads(lambda t: fn(t, axis=axis), x)
    np.testing.assert_allclose(out, ref(x, axis), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", ["softmax", "log_softmax"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("axis", [-1, 0])
def test_softmax_torch(kernel_impl, name, dtype, axis):
    (x,) = rng_arrays(2, (3, 4, 5), lo=-4, hi=4)
    tol = T64 if dtype == np.float64 else F32_GRAD
    compare_with_torch(lambda t: getattr(F, name)(t, axis=axis), lambda t: getattr(tf(), name)(t, dim=axis), x,
                       dtype=dtype, **tol)


@pytest.mark.parametrize("name", ["softmax", "log_softmax"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_softmax_stable_at_large_logits(kernel_impl, name, dtype):
    x = np.array([[1e4, -1e4, 0.0, 1e4 - 1.0], [-1e4, -1e4, -1e4 + 1.0, -1e4]])
    t = tg.Tensor(x.astype(dtype), requires_grad=True)
    out = getattr(F, name)(t)
    assert np.isfinite(out.numpy()).all()
    out.backward(np.ones_like(x, dtype=dtype))
    assert np.isfinite(t.grad.numpy()).all()
    tol = T64 if dtype == np.float64 else F32_GRAD
    compare_with_torch(lambda a: getattr(F, name)(a), lambda a: getattr(tf(), name)(a, dim=-1), x, dtype=dtype, **tol)
