"""Native CPU softmax / log_softmax (csrc/cpu/softmax.cpp) against the float64 reference.

Every check runs the native float32 kernel and reference.<op>_* on the same values cast to
float64, and bounds the difference elementwise by a multiple of float32's eps = 2^-24 ~ 6e-8
times the quantity's condition (see each test). Error sources in the kernel: exp_approx (<= 1
ulp, measured in test_exp_accuracy), the rounding of x - max (relative error of a term
exp(x - max) up to eps * |x - max|, at most 88 eps for terms that are not flushed to zero), and
row sums (float partials per SIMD lane over blocks of 512 terms, float64 across blocks: at most
~128 eps relative to the sum of |terms| in the worst case, ~sqrt of that in practice).
"""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import tinygpt
import tinygpt.functional as F
from tinygpt import kernels
from tinygpt.kernels import reference as R

cpu = getattr(tinygpt.kernels._native, "cpu", None)
pytestmark = pytest.mark.skipif(
    not (hasattr(cpu, "softmax_forward") and hasattr(cpu, "log_softmax_forward")),
    reason="tinygpt._C is not built or has no native softmax kernels")

EPS = float(np.finfo(np.float32).eps) / 2  # 2^-24, the unit roundoff
SIZES = [1, 2, 3, 7, 13, 16, 31, 64, 65, 127, 509, 512, 513, 1031, 2053]


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
    worst = np.unravel_index(np.argmax(ratio), ratio.shape)
    assert ratio.max() <= 1.0, (
        f"{what}: error {err[worst]:.3g} > bound {bound[worst]:.3g} at {worst} "
        f"(actual {actual[worst]!r}, expected {expected[worst]!r})")


shapes = st.tuples(st.lists(st.integers(1, 5), max_size=2).map(tuple), st.sampled_from(SIZES))
scales = st.sampled_from([1e-3, 1.0, 10.0, 1e4])


@given(shape=shapes, scale=scales, seed=st.integers(0, 2**31))
def test_softmax_forward_backward(shape, scale, seed):
    lead, C = shape
    x, g = _inputs(seed, lead, C, scale)
    y, saved = cpu.softmax_forward(x, -1)
    assert saved == ()
    x64 = x.astype(np.float64)
    y64, _ = R.softmax_forward(x64, -1)
    # y = exp(x - m) / s: per-term relative error <= eps (|x - m| + 1 ulp of exp) and the sum's
    # relative error <= 128 eps (worst case; see module doc) -> 256 eps + 2 eps |x - m|. Terms
    # flushed to 0 (x - m < -87.7) are off by < 1e-38 absolute.
    shift = np.abs(x64 - x64.max(axis=-1, keepdims=True))
    _check(y, y64, (256 + 2 * shift) * EPS * y64 + 1e-37, "softmax forward")

    # backward on the native y (cast up for the reference): dx = y (g - d), d = sum g y.
    # Error: d carries <= 128 eps sum|g y|, g - d rounds at eps (|g| + |d|), times y.
    y_in = y.astype(np.float64)
    dx = cpu.softmax_backward(g, y, -1, saved)
    dx64 = R.softmax_backward(g.astype(np.float64), y_in, -1, ())
    s_abs = np.abs(g * y_in).sum(axis=-1, keepdims=True)
    _check(dx, dx64, 256 * EPS * y_in * (np.abs(g) + s_abs) + 1e-37, "softmax backward")


@given(shape=shapes, scale=scales, seed=st.integers(0, 2**31))
def test_log_softmax_forward_backward(shape, scale, seed):
    lead, C = shape
    x, g = _inputs(seed, lead, C, scale)
    y, saved = cpu.log_softmax_forward(x, -1)
    assert saved == ()
    x64 = x.astype(np.float64)
    y64, _ = R.log_softmax_forward(x64, -1)
    # y = (x - m) - log s: x - m rounds at eps |x - m|, log s at eps |log s| plus s's relative
    # error (<= 256 eps, as above), the subtraction at eps |y|; |x - m|, |log s| <= |y| + log C.
    _check(y, y64, (256 + 4 * (np.abs(y64) + np.log(C) + 1)) * EPS, "log_softmax forward")

    # backward: dx = g - exp(y) gs, gs = sum g: exp(y) <= 1 ulp, gs <= 128 eps sum|g|, and the
    # subtraction rounds at eps (|g| + exp(y)|gs|). exp(y) for y < -87.7 is flushed (< 1e-38).
    y_in = y.astype(np.float64)
    dx = cpu.log_softmax_backward(g, y, -1, saved)
    dx64 = R.log_softmax_backward(g.astype(np.float64), y_in, -1, ())
    p = np.exp(y_in)
    g_abs = np.abs(g).sum(axis=-1, keepdims=True)
    _check(dx, dx64, 256 * EPS * (np.abs(g) + p * g_abs) + 1e-37 * g_abs, "log_softmax backward")


def test_large_rows_gpt2_vocab():
    """Softmax over GPT-2's vocabulary (50257 > many sum blocks), several rows, both ops."""
    x, g = _inputs(1, (3,), 50257, 4.0)
    y, _ = cpu.softmax_forward(x, -1)
    y64, _ = R.softmax_forward(x.astype(np.float64), -1)
    shift = np.abs(x - x.max(axis=-1, keepdims=True)).astype(np.float64)
    _check(y, y64, (256 + 2 * shift) * EPS * y64 + 1e-37, "softmax forward, V=50257")
    ly, _ = cpu.log_softmax_forward(x, -1)
    ly64, _ = R.log_softmax_forward(x.astype(np.float64), -1)
    _check(ly, ly64, (256 + 4 * (np.abs(ly64) + np.log(50257) + 1)) * EPS, "log_softmax forward, V=50257")
    np.testing.assert_allclose(y.sum(axis=-1), 1.0, rtol=1e-5)


def test_exp_accuracy():
    """The SIMD layer's exp (csrc/cpu/simd.h) is within 1.5 ulp of exp on [-87.3, 0], flushes below.

    Read through log_softmax_backward with grad = onehot(last): dx_c = -exp(y_c) exactly.
    """
    ys = np.linspace(-87.3, 0.0, 200_001, dtype=np.float32)
    y = np.append(ys, np.float32(0.0))[None, :]
    g = np.zeros_like(y)
    g[0, -1] = 1.0
    e = -cpu.log_softmax_backward(g, y, -1, ())[0, :-1].astype(np.float64)
    ref = np.exp(ys.astype(np.float64))
    ulps = np.abs(e - ref) / np.spacing(ref.astype(np.float32)).astype(np.float64)
    assert ulps.max() <= 1.5
    tail = np.array([[-88.0, -100.0, -np.inf, 0.0]], np.float32)
    g = np.zeros_like(tail)
    g[0, -1] = 1.0
    assert np.all(cpu.log_softmax_backward(g, tail, -1, ())[0, :-1] == 0.0)


def test_special_values():
    """-inf entries (masks) give exact zeros; an all -inf row gives nan, as the reference."""
    x = np.array([[0.0, -np.inf, 1.0, -np.inf], [-np.inf] * 4], np.float32)
    with np.errstate(invalid="ignore"):
        y64, _ = R.softmax_forward(x.astype(np.float64), -1)
        ly64, _ = R.log_softmax_forward(x.astype(np.float64), -1)
    y, _ = cpu.softmax_forward(x, -1)
    assert y[0, 1] == 0.0 and y[0, 3] == 0.0
    np.testing.assert_allclose(y, y64, rtol=1e-6, equal_nan=True)
    ly, _ = cpu.log_softmax_forward(x, -1)
    np.testing.assert_allclose(ly, ly64, rtol=1e-6, equal_nan=True)


@pytest.mark.parametrize("op", ["softmax", "log_softmax"])
def test_errors_name_the_argument(op):
    fwd, bwd = getattr(cpu, f"{op}_forward"), getattr(cpu, f"{op}_backward")
    x = np.ones((4, 6), np.float32)
    with pytest.raises(ValueError, match=f"{op}_forward: x must be float32"):
        fwd(x.astype(np.float64), -1)
    with pytest.raises(ValueError, match=f"{op}_forward: x must be C-contiguous"):
        fwd(np.ones((6, 4), np.float32).T, -1)
    with pytest.raises(ValueError, match=f"{op}_forward: axis must be the last axis"):
        fwd(x, 0)
    with pytest.raises(ValueError, match=f"{op}_forward: x must have at least 1 dimension"):
        fwd(np.ones((), np.float32), -1)
    y, saved = fwd(x, 1)  # ndim - 1 is the last axis too
    with pytest.raises(ValueError, match=f"{op}_backward: grad must have the shape of y"):
        bwd(np.ones((4, 5), np.float32), y, -1, saved)
    with pytest.raises(ValueError, match=f"{op}_backward: grad must be float32"):
        bwd(np.ones((4, 6), np.float64), y, -1, saved)
    with pytest.raises(ValueError, match=f"{op}_backward: y must be C-contiguous"):
        bwd(np.ones((6, 4), np.float32).T, np.ones((6, 4), np.float32).T, -1, saved)
    with pytest.raises(ValueError, match=f"{op}_backward: axis must be the last axis"):
        bwd(x, y, 0, saved)


@pytest.mark.parametrize("op", ["softmax", "log_softmax"])
def test_dispatch(op):
    x = np.ones((3, 4), np.float32)
    with kernels.use_native(True):  # also under TINYGPT_NATIVE=0
        assert kernels.select(op, x).name == "native-cpu"
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
            x = tinygpt.Tensor(x0.copy(), requires_grad=True)
            y = fn(x, axis=axis)
            (y * tinygpt.Tensor(w)).sum().backward()
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
            x = tinygpt.Tensor(x0.copy(), requires_grad=True)
            y = F.softmax(x, axis=-1).transpose(1, 0)  # its grad arrives transposed
            (y * tinygpt.Tensor(w)).sum().backward()
            grads.append(x.grad.numpy())
    np.testing.assert_allclose(grads[0], grads[1], rtol=1e-5, atol=1e-6)
