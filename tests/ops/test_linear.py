"""linear and linear_gelu, y = x W^T + b (reference.py, csrc/cpu/linear.cpp's SGEMM, csrc/cuda/linear.cu's
tensor-core GEMM in each matmul precision), forward and every backward output against the float64
reference, on every implementation present; the CPU's thread splits and the CUDA GEMM's tilings,
split-K, misaligned operands, cuBLAS and the autotuner on top.

Tolerances. Each output is a length-K dot product (or a column sum) of float32 inputs, which the float64
reference evaluates exactly enough, so the error is the implementation's own. Per element
    |err| <= (PROD + S (A K + 20) eps32) * (|a| @ |b|)  (+ eps32 |result| + eps32 |bias|)
  - accumulation: any summation order of K float32 terms is within gamma_K ~ K eps32 of sum |a_k b_k|
    (the deterministic worst case; the typical error is ~sqrt(K) eps32); + 20 for the result's rounding.
    S = 2 on CUDA (tensor cores may truncate instead of rounding), A = 3 for 3xTF32 (three MMAs per k).
  - PROD, the error of one product from rounding its inputs: 0 on the CPU and the reference (float32
    inputs as they are); TF32 rounds to nearest with a 10-bit mantissa (u = 2^-11, product <= 2u + u^2
    ~ 2^-10); bf16 a 7-bit mantissa (~2^-7); 'fp32' = 3xTF32: a = hi + lo exactly up to 2^-22 |a| and the
    dropped lo*lo < 2^-22 |ab|, so <= 3 * 2^-22 = 6 eps32 (8 allowed).
  CUDA also checks against a float64 reference fed the inputs rounded exactly as the kernel rounds them
  (NumPy emulation of cvt.rna.tf32.f32, of round-to-nearest-even bf16 and of the 3xTF32 split), where only
  the accumulation term remains: that catches a wrong or missing term even in bf16, where the first bound
  (2^-7 relative) would not for large K. These are ~K times tighter than one wrong or missing term.
GELU (linear_gelu, the tanh form; tests/ops/test_gelu.py bounds it alone):
  - CPU: y within 1.13 (|gelu'| <= 1.13) times h's bound plus a few ulp of the exp-based evaluation; the
    backward from the CPU's own saved h, dh = g gelu'(h) to a few ulp of |g| (|dh| <= 1.2 |g|), then the
    GEMM bounds with 16 more terms.
  - CUDA: y = gelu(h) of its own h to 1e-5 relative (expf up to argument 87, test_gelu.py); the backward
    from its own h with dh's own error 1e-5 |dh| + 1e-6 |g|, then the GEMM bounds.
  (+ 1e-15 |h|: the float64 reference's 1 + tanh(u) cancels to 0 for u < -19.)
The reference is not run for linear_gelu: it is reference.linear plus reference.gelu, both checked alone,
and its float32 1 + tanh(u) cancels in the tail (test_gelu.py).
"""
import collections
import contextlib
import math
import os

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import tinygpt as tg
import tinygpt.functional as F
from tinygpt import kernels
from tinygpt.kernels import cuda as kcuda
from tinygpt.kernels import policy as kpolicy
from tinygpt.kernels import reference

from helpers import EMULATOR, arrays, check_grads, compare_with_torch, rng_arrays, shapes
from impls import ALL, CPU, NATIVE, Impl, running
from refs import F32_GRAD, T64, VAL64, tf

pytestmark = pytest.mark.usefixtures("seeded")  # every test starts from tg.manual_seed(0)

EPS = float(np.finfo(np.float32).eps)
TINY = 1e-30  # results that underflow (gelu of very negative inputs) differ by denormals only
PRECISIONS = ["fp32", "tf32", "bf16"]
PROD = {None: 0.0, "fp32": 8 * EPS, "tf32": 2.0**-10 * 1.001, "bf16": 2.0**-7 * 1.001}  # None: CPU, reference
ACC = {None: 1, "fp32": 3, "tf32": 1, "bf16": 1}  # products accumulated per k step
SLACK = {"cuda": 2, "default": 1}  # S above: tensor cores may truncate

SIZES = st.one_of(st.integers(1, 24), st.sampled_from([1, 2, 3, 5, 7, 8, 13, 14, 15, 16, 17, 29, 31, 32, 33, 47, 61,
                                                        64, 65, 97, 127, 128, 129, 141, 257]))
SCALES = st.sampled_from([1e-3, 0.3, 1.0, 3.0, 30.0, 1e4])


@st.composite
def linear_problem(draw):
    """(lead, n_in, n_out, scale, bias, seed): one problem of either op."""
    lead = draw(st.lists(SIZES, min_size=0, max_size=2).map(tuple))
    if math.prod(lead) > 600:  # keep each example small (two sampled sizes can multiply up)
        lead = lead[:1]
    return lead, draw(SIZES), draw(SIZES), draw(SCALES), draw(st.booleans()), draw(st.integers(0, 2**32 - 1))


def _case(rng, lead, n_in, n_out, scale, bias):
    x = (rng.standard_normal(lead + (n_in,)) * scale).astype(np.float32)
    w = (rng.standard_normal((n_out, n_in)) * scale).astype(np.float32)
    b = (rng.standard_normal(n_out) * scale).astype(np.float32) if bias else None
    g = (rng.standard_normal(lead + (n_out,)) * scale).astype(np.float32)
    return x, w, b, g


@contextlib.contextmanager
def matmul_mode(precision, backend="ours"):
    """The CUDA GEMM's precision and backend for the body (precision None: leave both as they are)."""
    if precision is None:
        yield
        return
    old_p = kpolicy.set_matmul_precision(precision)
    old_b = kpolicy.set_matmul_backend(backend)
    try:
        yield
    finally:
        kpolicy.set_matmul_precision(old_p)
        kpolicy.set_matmul_backend(old_b)


def _gemm_params(names):
    """As impls.params, with CUDA once per matmul precision: Impl.precision (None off CUDA)."""
    out = []
    for name in names:
        for precision in PRECISIONS if name == "cuda" else [None]:
            impl = Impl(name)
            impl.precision = precision
            out.append(pytest.param(impl, id=f"{name}-{precision}" if precision else name,
                                    marks=[pytest.mark.gpu] if name == "cuda" else []))
    return out


@pytest.fixture(params=_gemm_params(ALL))
def gemm_impl(request):
    """Each implementation (the `impl` fixture's), CUDA in each matmul precision on our GEMM."""
    with running(request.param) as impl, matmul_mode(impl.precision):
        yield impl


@pytest.fixture(params=_gemm_params(NATIVE))
def gemm_native_impl(request):
    """gemm_impl without the reference."""
    with running(request.param) as impl, matmul_mode(impl.precision):
        yield impl


@pytest.fixture
def fp32_impl(native_impl):
    """native_impl, CUDA on our GEMM in fp32 (3xTF32)."""
    impl = Impl(native_impl.name)  # its own object: the fixture's Impl is shared with other tests
    impl.precision = "fp32" if impl.device == "cuda" else None
    with matmul_mode(impl.precision):
        yield impl


# ------------------------------------------------------------------ input rounding, emulated in numpy
def tf32_rna(a):
    """cvt.rna.tf32.f32: round to nearest (ties away from zero) keeping 10 mantissa bits."""
    bits = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)
    return ((bits + np.uint32(0x1000)) & np.uint32(0xFFFFE000)).view(np.float32)


def bf16_rne(a):
    """__float2bfloat16_rn: round to nearest even keeping 7 mantissa bits (finite inputs)."""
    bits = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32).astype(np.uint64)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
    return rounded.astype(np.uint32).view(np.float32)


def emulated_product(a, b, precision):
    """float64 a @ b with a, b rounded as the kernel rounds them (a: (M, K), b: (K, N), float32)."""
    if precision == "tf32":
        return tf32_rna(a).astype(np.float64) @ tf32_rna(b).astype(np.float64)
    if precision == "bf16":
        return bf16_rne(a).astype(np.float64) @ bf16_rne(b).astype(np.float64)
    ah, bh = tf32_rna(a), tf32_rna(b)
    al, bl = tf32_rna(a - ah), tf32_rna(b - bh)  # a - hi is exact in float32
    ah, bh, al, bl = (t.astype(np.float64) for t in (ah, bh, al, bl))
    return ah @ bh + ah @ bl + al @ bh


# ------------------------------------------------------------------ checks against the float64 reference
def _assert_within(actual, expected, bound, what):
    actual = np.asarray(actual, dtype=np.float64)
    err = np.abs(actual - expected)
    limit = bound + EPS * np.abs(expected) + TINY
    if err.size == 0:
        return
    worst = np.unravel_index(np.argmax(err - limit), err.shape)
    assert np.all(err <= limit), (f"{what}: error {err[worst]:.3g} > bound {limit[worst]:.3g} at {worst} "
                                  f"(actual {actual[worst]!r}, expected {expected[worst]!r})")


def _acc(impl, precision, K):
    return impl.limit(SLACK) * (ACC[precision] * K + 20) * EPS


def _check_product(impl, got, a, b, precision, what, extra=0.0, expected=None, emulate=True):
    """got ~ a @ b (+ whatever `expected` adds) for float32 a (M, K), b (K, N): the bounds of the module doc."""
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    mag = np.abs(a64) @ np.abs(b64)
    exact = a64 @ b64 if expected is None else expected
    acc = _acc(impl, precision, a.shape[1])
    _assert_within(got, exact, (PROD[precision] + acc) * mag + extra, f"{what} [{impl} {precision}]")
    if precision is None or not emulate:  # no input rounding to emulate; or cuBLAS rounds its own way
        return
    shift = 0.0 if expected is None else expected - a64 @ b64  # e.g. the bias
    emu = emulated_product(a, b, precision) + shift
    _assert_within(got, emu, acc * mag * (1 + PROD[precision]) + extra, f"{what} [{impl} {precision}, emulated]")


def check_linear(impl, x, w, b, g, precision, emulate=True):
    n_out, n_in = w.shape
    rows = math.prod(x.shape[:-1])
    k = impl.kernel("linear")
    xd, wd, bd, gd = (impl.to(a) for a in (x, w, b, g))
    y, saved = k.forward(xd, wd, bd)
    y = impl.host(y)
    assert saved == () and y.dtype == np.float32 and y.shape == x.shape[:-1] + (n_out,)
    x2, g2 = x.reshape(rows, n_in), g.reshape(rows, n_out)
    b64 = 0.0 if b is None else b.astype(np.float64)
    y64 = x2.astype(np.float64) @ w.T.astype(np.float64) + b64
    _check_product(impl, y.reshape(rows, n_out), x2, np.ascontiguousarray(w.T), precision, "linear y",
                   extra=0.0 if b is None else EPS * np.abs(b64), expected=y64, emulate=emulate)

    gx, gw, gb = impl.host(k.backward(gd, xd, wd, b is not None, saved))
    assert gx.shape == x.shape and gw.shape == w.shape
    _check_product(impl, gx.reshape(rows, n_in), g2, w, precision, "linear dx", emulate=emulate)
    _check_product(impl, gw, np.ascontiguousarray(g2.T), x2, precision, "linear dweight", emulate=emulate)
    if b is None:
        assert gb is None
    else:
        assert gb.shape == (n_out,)
        ag = np.abs(g2.astype(np.float64))
        _assert_within(gb, g2.astype(np.float64).sum(axis=0),
                       impl.limit(SLACK) * (rows + 20) * EPS * ag.sum(axis=0), "linear dbias")


def check_linear_gelu(impl, x, w, b, g, precision, emulate=True):
    (_check_linear_gelu_cuda if impl.device == "cuda" else _check_linear_gelu_cpu)(impl, x, w, b, g, precision,
                                                                                   emulate)


def _check_linear_gelu_cpu(impl, x, w, b, g, precision, emulate):
    n_out, n_in = w.shape
    rows = int(np.prod(x.shape[:-1]))
    k = impl.kernel("linear_gelu")
    y, saved = k.forward(x, w, b)
    (h,) = saved
    x64, w64, g64 = (a.astype(np.float64) for a in (x, w, g))
    b64 = None if b is None else b.astype(np.float64)
    y64, _ = reference.linear_gelu_forward(x64, w64, b64)
    h64, _ = reference.linear_forward(x64, w64, b64)
    ax, aw, ag = np.abs(x64), np.abs(w64), np.abs(g64)
    bound_h = (n_in + 20) * EPS * (ax @ aw.T) + (0 if b is None else EPS * np.abs(b64))
    _assert_within(h, h64, bound_h, "linear_gelu saved pre-activation h")
    _assert_within(y, y64, 1.13 * bound_h + 8 * EPS * np.abs(y64) + 1e-15 * np.abs(h64), "linear_gelu y")

    # Backward from the CPU's own saved h (that is the backward's input), vs the float64 reference fed the
    # same h: dh = g * gelu'(h) to a few ulp of |g|, then the GEMM bounds.
    dx, dw, db = k.backward(g, x, w, b is not None, saved)
    hh = h.astype(np.float64)
    t = np.tanh(np.sqrt(2 / np.pi) * (hh + 0.044715 * hh**3))
    rx, rw, rb = reference.linear_gelu_backward(g64, x64, w64, b is not None, (hh, t))
    adh = 1.2 * ag + 16 * EPS * ag  # |dh| <= 1.13 |g|, plus its evaluation error
    g2, x2 = adh.reshape(rows, n_out), ax.reshape(rows, n_in)
    _assert_within(dx, rx, (n_out + 20 + 16) * EPS * (adh @ aw), "linear_gelu dx")
    _assert_within(dw, rw, (rows + 20 + 16) * EPS * (g2.T @ x2), "linear_gelu dweight")
    if b is None:
        assert db is None
    else:
        _assert_within(db, rb, (rows + 20 + 16) * EPS * g2.sum(axis=0), "linear_gelu dbias")


def gelu_tanh64(h):
    return reference.gelu_forward(h.astype(np.float64), "tanh")[0]


def _check_linear_gelu_cuda(impl, x, w, b, g, precision, emulate):
    n_out, n_in = w.shape
    rows = math.prod(x.shape[:-1])
    k = impl.kernel("linear_gelu")
    xd, wd, bd, gd = (impl.to(a) for a in (x, w, b, g))
    y, saved = k.forward(xd, wd, bd)
    (h,) = saved
    assert y.shape == h.shape == x.shape[:-1] + (n_out,)
    x2 = x.reshape(rows, n_in)
    b64 = 0.0 if b is None else b.astype(np.float64)
    h64 = x2.astype(np.float64) @ w.T.astype(np.float64) + b64
    hh = impl.host(h).reshape(rows, n_out).astype(np.float64)  # the kernel's h (float64: t below must be exact)
    _check_product(impl, hh, x2, np.ascontiguousarray(w.T), precision, "linear_gelu h",
                   extra=0.0 if b is None else EPS * np.abs(b64), expected=h64, emulate=emulate)
    y_of_h = gelu_tanh64(hh)
    _assert_within(impl.host(y).reshape(rows, n_out), y_of_h, 1e-5 * np.abs(y_of_h) + 1e-15 * np.abs(hh),
                   "linear_gelu y")

    gx, gw, gb = impl.host(k.backward(gd, xd, wd, b is not None, saved))
    t = np.tanh(np.sqrt(2 / np.pi) * (hh + 0.044715 * hh**3))
    g2 = g.reshape(rows, n_out).astype(np.float64)
    rx, rw, rb = reference.linear_gelu_backward(g2, x2.astype(np.float64), w.astype(np.float64), b is not None,
                                                (hh, t))
    dh = reference.gelu_backward(g2, hh, "tanh", (t,))
    adh = np.abs(dh) + 1e-5 * np.abs(dh) + 1e-6 * np.abs(g2)
    dh_err = 1e-5 * np.abs(dh) + 1e-6 * np.abs(g2)  # the elementwise dh's own error
    ax, aw = np.abs(x2.astype(np.float64)), np.abs(w.astype(np.float64))
    acc = _acc(impl, precision, max(n_out, rows))
    _assert_within(gx.reshape(rows, n_in), rx, (PROD[precision] + acc) * (adh @ aw) + dh_err @ aw,
                   f"linear_gelu dx [{precision}]")
    _assert_within(gw, rw, (PROD[precision] + acc) * (adh.T @ ax) + dh_err.T @ ax,
                   f"linear_gelu dweight [{precision}]")
    if b is None:
        assert gb is None
    else:
        _assert_within(gb, rb, 2 * (rows + 20) * EPS * adh.sum(axis=0) + dh_err.sum(axis=0), "linear_gelu dbias")


# ------------------------------------------------------------------ properties vs the float64 reference
@given(problem=linear_problem())
def test_linear(gemm_impl, problem):
    lead, n_in, n_out, scale, bias, seed = problem
    check_linear(gemm_impl, *_case(np.random.default_rng(seed), lead, n_in, n_out, scale, bias), gemm_impl.precision)


@given(problem=linear_problem())
def test_linear_gelu(gemm_native_impl, problem):
    lead, n_in, n_out, scale, bias, seed = problem
    impl = gemm_native_impl
    check_linear_gelu(impl, *_case(np.random.default_rng(seed), lead, n_in, n_out, scale, bias), impl.precision)


@pytest.mark.parametrize("lead, n_in, n_out", [((0,), 5, 3), ((2, 0), 4, 4), ((), 6, 2), ((1,), 1, 1)])
def test_empty_and_vector_shapes(fp32_impl, lead, n_in, n_out):
    """Zero rows, a 1-D x (in,), one row of one feature."""
    rng = np.random.default_rng(0)
    check_linear(fp32_impl, *_case(rng, lead, n_in, n_out, 1.0, True), fp32_impl.precision)
    check_linear_gelu(fp32_impl, *_case(rng, lead, n_in, n_out, 1.0, True), fp32_impl.precision)


@pytest.mark.parametrize("rows, n_in, n_out", [
    (300, 1100, 70),   # K spans three KC blocks (accumulation into C), M several MC blocks
    (4, 2000, 5),      # a long reduction with tiny M and N
    (2000, 3, 2),      # a long M with tiny K and N (dW reduces over 2000 rows)
    (257, 129, 513),   # every edge: M % MR, N % NR, K % 16 (the transposing pack) all nonzero
])
def test_large_blocks(cpu_impl, rows, n_in, n_out):
    """The CPU SGEMM's blocking (the CUDA tilings: test_gpt_shapes, test_split_k_dweight)."""
    rng = np.random.default_rng(rows + n_in + n_out)
    check_linear(cpu_impl, *_case(rng, (rows,), n_in, n_out, 1.0, True), None)
    check_linear_gelu(cpu_impl, *_case(rng, (rows,), n_in, n_out, 1.0, True), None)


def test_zero_features(cpu_impl):
    """in = 0 or out = 0 (the reference cannot reshape those): y = bias, or empty; zero gradients."""
    lin, lg = cpu_impl.kernel("linear"), cpu_impl.kernel("linear_gelu")
    x, w, b = np.ones((3, 0), np.float32), np.ones((4, 0), np.float32), np.arange(4, dtype=np.float32) - 1.5
    y, saved = lin.forward(x, w, b)
    np.testing.assert_array_equal(y, np.broadcast_to(b, (3, 4)))
    y, saved = lg.forward(x, w, b)
    np.testing.assert_allclose(y, np.broadcast_to(reference.gelu_forward(b, "tanh")[0], (3, 4)), rtol=1e-6)
    dx, dw, db = lg.backward(np.ones((3, 4), np.float32), x, w, True, saved)
    assert dx.shape == (3, 0) and dw.shape == (4, 0) and db.shape == (4,)
    x, w = np.ones((3, 4), np.float32), np.ones((0, 4), np.float32)
    y, saved = lin.forward(x, w, None)
    assert y.shape == (3, 0)
    dx, dw, db = lin.backward(np.ones((3, 0), np.float32), x, w, True, saved)
    np.testing.assert_array_equal(dx, np.zeros((3, 4), np.float32))
    assert dw.shape == (0, 4) and db.shape == (0,)


def test_cuda_empty_and_zero_k(cuda_impl):
    """CUDA: zero rows; zero in-features (h = bias, dbias = the row count)."""
    c = tg.backend.cupy()
    with matmul_mode("fp32"):
        y, _ = kcuda.linear.linear_forward(c.zeros((0, 5), c.float32), c.ones((3, 5), c.float32), None)
        assert y.shape == (0, 3)
        b = c.arange(3, dtype=c.float32)
        y, (h,) = kcuda.linear.linear_gelu_forward(c.zeros((4, 0), c.float32), c.zeros((3, 0), c.float32), b)
        c.testing.assert_allclose(h, c.broadcast_to(b, (4, 3)))
        gx, gw, gb = kcuda.linear.linear_backward(c.ones((4, 3), c.float32), c.zeros((4, 0), c.float32),
                                                  c.zeros((3, 0), c.float32), True, ())
        assert gx.shape == (4, 0) and gw.shape == (3, 0)
        c.testing.assert_allclose(gb, c.full(3, 4.0, c.float32))


def test_gelu_extremes(cpu_impl):
    """Huge and tiny pre-activations: gelu(h) -> h or 0 and gelu'(h) -> 1 or 0, never NaN/inf."""
    k = cpu_impl.kernel("linear_gelu")
    h_vals = np.array([-1e30, -1e10, -100.0, -12.5, -9.0, -0.75, -1e-20, 0.0, 1e-20, 0.75, 9.0, 12.5, 1e10, 1e30],
                      dtype=np.float32)
    x = h_vals[:, None].copy()  # y = x @ [[1]] + 0 = h exactly
    w = np.ones((1, 1), dtype=np.float32)
    y, saved = k.forward(x, w, None)
    h64 = h_vals.astype(np.float64)
    with np.errstate(over="ignore"):
        expected, _ = reference.gelu_forward(h64, "tanh")
    # float64's 1 + tanh(u) is exactly 0 for u < -19 (gelu(-9) ~ -1.3e-28 comes out -0.0): allow
    # that cancellation, |h| * eps64.
    _assert_within(y[:, 0], expected, 8 * EPS * np.abs(expected) + 1e-15 * np.abs(h64), "gelu(h)")
    g = np.ones_like(x)
    dx, dw, _ = k.backward(g, x, w, False, saved)
    with np.errstate(over="ignore"):
        t = np.tanh(np.sqrt(2 / np.pi) * (h64 + 0.044715 * h64**3))
        d_expected = reference.gelu_backward(np.ones_like(h64), h64, "tanh", (t,))
    d_expected = np.where(np.abs(h64) > 1e6, (h64 > 0).astype(np.float64), d_expected)  # inf * 0 in float64 too
    np.testing.assert_allclose(dx[:, 0], d_expected, rtol=16 * EPS, atol=16 * EPS)
    assert np.all(np.isfinite(dx)) and np.all(np.isfinite(y))


@pytest.mark.parametrize("ta, tb", [(False, False), (True, False), (False, True), (True, True)])
def test_sgemm_transposes(cpu_impl, ta, tb):
    rng = np.random.default_rng(2)
    M, N, K = 37, 45, 53
    a = rng.standard_normal((K, M) if ta else (M, K)).astype(np.float32)
    b = rng.standard_normal((N, K) if tb else (K, N)).astype(np.float32)
    a64, b64 = (a.T if ta else a).astype(np.float64), (b.T if tb else b).astype(np.float64)
    c = CPU.sgemm(a, b, ta, tb)
    _assert_within(c, a64 @ b64, (K + 20) * EPS * (np.abs(a64) @ np.abs(b64)), "sgemm")


# ------------------------------------------------------------------ CPU threads: fixed summation order
needs_cpu = pytest.mark.skipif(not hasattr(CPU, "linear_forward") or not kernels.native_enabled(),
                               reason="tinygpt._C is not built (or TINYGPT_NATIVE=0)")


@contextlib.contextmanager
def num_threads(n):
    before = CPU.get_num_threads()
    CPU.set_num_threads(n)
    try:
        yield
    finally:
        CPU.set_num_threads(before)


def _all_outputs(x, w, b, g):
    y, saved = CPU.linear_gelu_forward(x, w, b)
    return [CPU.linear_forward(x, w, b)[0], *CPU.linear_backward(g, x, w, True, ()), y, saved[0],
            *CPU.linear_gelu_backward(g, x, w, True, saved)]


@needs_cpu
def test_threads_do_not_change_results():
    """Row-block / column-chunk tasks: each output's summation order is fixed by the blocking, not by
    which thread ran it, so any thread count gives the same bits."""
    x, w, b, g = _case(np.random.default_rng(1), (333,), 700, 190, 1.0, True)
    with num_threads(1):
        one = _all_outputs(x, w, b, g)
    for n in (2, 3):
        with num_threads(n):
            for a, c in zip(one, _all_outputs(x, w, b, g)):
                np.testing.assert_array_equal(a, c)


@needs_cpu
@pytest.mark.parametrize("rows, n_in, n_out", [
    (3000, 64, 48),   # dW = g^T x reduces over 3000 rows: K split across threads, partial sums added
    (16, 3000, 200),  # y = x W^T (+ bias, GELU) reduces over 3000 in-features: the same path
])
@pytest.mark.parametrize("threads", [2, 3])
def test_k_split(rows, n_in, n_out, threads):
    """The K-split path (long reductions): right for 2 and 3 threads, bitwise repeatable for each."""
    impl = Impl(f"cpu-{CPU.isa()}")
    rng = np.random.default_rng(rows + n_in)
    x, w, b, g = _case(rng, (rows,), n_in, n_out, 1.0, True)
    with num_threads(threads):
        check_linear(impl, x, w, b, g, None)
        check_linear_gelu(impl, x, w, b, g, None)
        first = _all_outputs(x, w, b, g)
        for a, c in zip(first, _all_outputs(x, w, b, g)):
            np.testing.assert_array_equal(a, c)


# ------------------------------------------------------------------ CUDA: tilings, split-K, alignment, cuBLAS, auto
# The two largest run on a GPU only: on the emulator they take minutes each, and its TG_EMU_SM_COUNT=1 pass
# (.ci/run) already puts every product on the 128x128 tiles they are there for.
_ON_GPU_ONLY = pytest.mark.skipif(EMULATOR, reason="GPU only: minutes on the CPU emulator (TG_EMU_SM_COUNT=1 "
                                  "covers the 128x128 tiling)")


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("rows,n_in,n_out", [pytest.param(2048, 768, 768, marks=_ON_GPU_ONLY), (1000, 771, 1539),
                                             pytest.param(4097, 384, 1536, marks=_ON_GPU_ONLY), (300, 3072, 768),
                                             (16, 1024, 6283)])
def test_gpt_shapes(cuda_impl, precision, rows, n_in, n_out):
    """GPT-sized products: the large 128x128 tiling (>= SM count tiles), K not a multiple of 32,
    N not a multiple of 4, long K, a wide logits-like product. References computed on the GPU."""
    c = tg.backend.cupy()
    c.random.seed(0)
    x = c.random.standard_normal((rows, n_in), dtype=c.float32)
    w = c.random.standard_normal((n_out, n_in), dtype=c.float32) * 0.02
    b = c.random.standard_normal((n_out,), dtype=c.float32)
    g = c.random.standard_normal((rows, n_out), dtype=c.float32)
    x64, w64, g64 = x.astype(c.float64), w.astype(c.float64), g.astype(c.float64)
    with matmul_mode(precision):
        for gelu in (False, True):
            fwd = kcuda.linear.linear_gelu_forward if gelu else kcuda.linear.linear_forward
            out, saved = fwd(x, w, b)
            h = saved[0] if gelu else out
            ref = x64 @ w64.T + b.astype(c.float64)
            bound = (PROD[precision] + _acc(cuda_impl, precision, n_in)) * (abs(x64) @ abs(w64).T) \
                + 2 * EPS * abs(ref) + TINY
            assert bool((abs(h.astype(c.float64) - ref) <= bound).all()), f"h, gelu={gelu}"
        gx, gw, gb = kcuda.linear.linear_backward(g, x, w, True, ())
        bound = (PROD[precision] + _acc(cuda_impl, precision, n_out)) * (abs(g64) @ abs(w64)) + TINY
        assert bool((abs(gx - g64 @ w64) <= bound + EPS * abs(g64 @ w64)).all()), "dx"
        bound = (PROD[precision] + _acc(cuda_impl, precision, rows)) * (abs(g64).T @ abs(x64)) + TINY
        assert bool((abs(gw - g64.T @ x64) <= bound + EPS * abs(g64.T @ x64)).all()), "dweight"
        bound = 2 * (rows + 20) * EPS * abs(g64).sum(axis=0) + TINY
        assert bool((abs(gb - g64.sum(axis=0)) <= bound).all()), "dbias"


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("rows,n_in,n_out,splits", [(2048, 768, 768, None), (1000, 70, 45, 3), (97, 33, 17, 2),
                                                    (4100, 129, 64, 8), (64, 16, 16, 5)])
def test_split_k_dweight(cuda_impl, precision, rows, n_in, n_out, splits):
    """dW with split-K over rows (forced counts, uneven last split, more splits than k-tiles) and
    with the device-chosen count, against the same bound as without."""
    rng = np.random.default_rng(rows)
    x, w, _, g = _case(rng, (rows,), n_in, n_out, 1.0, False)
    old = kcuda.linear._dw_splits
    kcuda.linear._dw_splits = splits
    try:
        with matmul_mode(precision):
            _, gw, _ = kcuda.linear.linear_backward(*(cuda_impl.to(a) for a in (g, x, w)), False, ())
    finally:
        kcuda.linear._dw_splits = old
    _check_product(cuda_impl, cuda_impl.host(gw), np.ascontiguousarray(g.T), x, precision,
                   f"split-K dweight ({splits} splits)")


@pytest.mark.parametrize("precision", PRECISIONS)
def test_misaligned_and_strided_edges(cuda_impl, precision):
    """Operands that start 4 bytes past a 16-byte boundary take the 4-byte copy paths: the same tiles and
    order, so bitwise the results of aligned operands."""
    c, to = tg.backend.cupy(), cuda_impl.to
    x, w, b, g = _case(np.random.default_rng(5), (37,), 44, 28, 1.0, True)
    shifted = [to(a, offset=1) for a in (x, w, b, g)]
    assert all(a.data.ptr % 16 != 0 and a.flags.c_contiguous for a in shifted)
    sx, sw, sb, sg = shifted
    with matmul_mode(precision):
        y, _ = kcuda.linear.linear_forward(sx, sw, sb)
        y_ref, _ = kcuda.linear.linear_forward(to(x), to(w), to(b))
        c.testing.assert_allclose(y, y_ref, rtol=0, atol=0)
        gx, gw, gb = kcuda.linear.linear_backward(sg, sx, sw, True, ())
        rx, rw, rb = kcuda.linear.linear_backward(to(g), to(x), to(w), True, ())
        for got, want in ((gx, rx), (gw, rw), (gb, rb)):
            c.testing.assert_allclose(got, want, rtol=0, atol=0)


def test_cublas_path(cuda_impl):
    """The products sent to cuBLAS (cupy.matmul plus the separate bias and GELU passes) are within the
    same bounds (fp32, or TF32 when CuPy itself was started with CUPY_TF32=1)."""
    prec = "tf32" if os.environ.get("CUPY_TF32") == "1" else "fp32"  # CuPy's own cuBLAS setting
    rng = np.random.default_rng(1)
    with matmul_mode("fp32", "cublas"):
        assert kpolicy.matmul_policy("linear", 4096, 768, 768) is False
        check_linear(cuda_impl, *_case(rng, (5, 7), 33, 19, 1.0, True), prec, emulate=False)
        check_linear_gelu(cuda_impl, *_case(rng, (3,), 17, 65, 1.0, True), prec, emulate=False)


@contextlib.contextmanager
def fake_timings(monkeypatch, ours_ms, cublas_ms):
    """'auto' with the measurement replaced: every class measures (ours_ms, cublas_ms); yields the list of
    measurements made (each one still calls both implementations, as the real one does)."""
    made = []

    def median_ms(fns, reps):
        assert set(fns) == {"ours", "cublas"} and reps == kpolicy._TUNE_REPS
        for fn in fns.values():
            fn()
        made.append(len(made))
        return {"ours": ours_ms, "cublas": cublas_ms}

    monkeypatch.setattr(kpolicy, "median_ms", median_ms)
    kpolicy.clear_matmul_choices()
    try:
        with matmul_mode("fp32", "auto"):
            yield made
    finally:
        kpolicy.clear_matmul_choices()


def _count_gemm_calls(monkeypatch):
    """{'ours': launches of our forward / dx GEMM, 'cublas': cupy.matmul calls}, counted from now on."""
    calls = collections.Counter()
    c = tg.backend.cupy()
    real_matmul = c.matmul
    monkeypatch.setattr(c, "matmul", lambda *a, **k: calls.update(["cublas"]) or real_matmul(*a, **k))
    for name in ("linear_forward", "linear_backward_dx"):
        real = kcuda.launcher(name)
        monkeypatch.setattr(kcuda._cuda, name, lambda *a, _real=real, **k: calls.update(["ours"]) or _real(*a, **k))
    return calls


@pytest.mark.parametrize("ours_ms, cublas_ms, winner", [(1.0, 2.0, "ours"), (2.0, 1.0, "cublas")])
def test_auto_measures_each_shape_class_once_and_runs_the_faster(cuda_impl, monkeypatch, ours_ms, cublas_ms,
                                                                  winner):
    rng = np.random.default_rng(2)
    with fake_timings(monkeypatch, ours_ms, cublas_ms) as made:
        assert kpolicy.matmul_policy("linear", 100, 33, 19) is None  # not measured yet
        check_linear(cuda_impl, *_case(rng, (100,), 33, 19, 1.0, True), "fp32", emulate=False)
        assert len(made) == 2  # forward and backward are separate classes
        choices = kpolicy.matmul_choices()
        assert {k[1:] for k in choices} == {("linear", d, 128, 33, 19, "fp32") for d in ("forward", "backward")}
        assert all(c == kpolicy.MatmulChoice(winner == "ours", ours_ms, cublas_ms) for c in choices.values())
        assert kpolicy.matmul_policy("linear", 100, 33, 19) is (winner == "ours")
        calls = _count_gemm_calls(monkeypatch)
        check_linear(cuda_impl, *_case(rng, (120,), 33, 19, 1.0, True), "fp32", emulate=False)  # class 128
        assert len(made) == 2, "a measured class is not measured again"
        assert calls == ({"ours": 2} if winner == "ours" else {"cublas": 3})  # fwd + dx (+ dW) products
        check_linear_gelu(cuda_impl, *_case(rng, (129,), 33, 19, 1.0, True), "fp32", emulate=False)  # new class
        assert len(made) == 4 and len(kpolicy.matmul_choices()) == 4
        old = kpolicy.set_matmul_precision("tf32")  # the precision is part of the class
        try:
            assert kpolicy.matmul_policy("linear", 100, 33, 19) is None
        finally:
            kpolicy.set_matmul_precision(old)
    assert kpolicy.matmul_choices() == {}


def test_auto_times_both_on_the_gpu(cuda_impl):
    """The real measurement: both implementations timed with CUDA events, medians recorded, results right."""
    rng = np.random.default_rng(3)
    kpolicy.clear_matmul_choices()
    try:
        with matmul_mode("fp32", "auto"):
            check_linear_gelu(cuda_impl, *_case(rng, (4, 16), 40, 24, 1.0, True), "fp32", emulate=False)
            choices = kpolicy.matmul_choices()
            assert len(choices) == 2
            for choice in choices.values():
                assert choice.ours_ms > 0 and choice.cublas_ms > 0
                assert choice.ours == (choice.ours_ms < choice.cublas_ms)
    finally:
        kpolicy.clear_matmul_choices()


def test_precision_setting():
    assert kpolicy.get_matmul_precision() in PRECISIONS
    old = kpolicy.set_matmul_precision("bf16")
    try:
        assert kpolicy.get_matmul_precision() == "bf16"
        with pytest.raises(ValueError, match="matmul precision must be one of"):
            kpolicy.set_matmul_precision("fp16")
    finally:
        kpolicy.set_matmul_precision(old)
    with pytest.raises(ValueError, match="matmul backend"):
        kpolicy.set_matmul_backend("cutlass")


# ------------------------------------------------------------------ argument errors
def _xwb(to, rows=4, n_in=3, n_out=2):
    return to(np.ones((rows, n_in), np.float32)), to(np.ones((n_out, n_in), np.float32)), to(np.ones(n_out, np.float32))


@pytest.mark.parametrize("op", ["linear", "linear_gelu"])
def test_forward_errors(native_impl, op):
    f, to, cuda = native_impl.kernel(op).forward, native_impl.to, native_impl.device == "cuda"
    fn = f"{op}_forward"
    bad_dtype = TypeError if cuda else ValueError
    x, w, b = _xwb(to)
    with pytest.raises(bad_dtype, match=rf"{fn}: x:? (must be float32, got float64|expected dtype float32)"):
        f(to(np.ones((4, 3), np.float64)), w, b)
    with pytest.raises(ValueError, match=rf"{fn}: x:? (must be C-contiguous|expected a C-contiguous array)"):
        f(to(np.ones((3, 4), np.float32)).T, w, b)
    with pytest.raises(ValueError, match=rf"{fn}: x must (have at least 1 dimension|be a cupy array with at least 1)"):
        f(to(np.ones((), np.float32)), w, b)
    with pytest.raises(ValueError, match=rf"{fn}: weight:? (must have 2 dimensions, got shape \(6,\)|expected 2 dim)"):
        f(x, to(np.ones(6, np.float32)), b)
    with pytest.raises(ValueError, match=rf"{fn}: weight must have shape \(out, 3\) to match x \(4, 3\), got \(2, 5\)"):
        f(x, to(np.ones((2, 5), np.float32)), b)
    with pytest.raises(ValueError, match=rf"{fn}: weight:? (must be C-contiguous|expected a C-contiguous array)"):
        f(x, to(np.ones((3, 2), np.float32)).T, b)
    with pytest.raises(ValueError, match=rf"{fn}: bias:? (must have shape \(2,\), got \(3,\)|expected shape \(2,\))"):
        f(x, w, to(np.ones(3, np.float32)))
    with pytest.raises(bad_dtype, match=rf"{fn}: bias:? (must be float32, got int64|expected dtype float32)"):
        f(x, w, to(np.ones(2, np.int64)))
    with pytest.raises(ValueError if not cuda else TypeError,
                       match=rf"{fn}: bias:? (must be a numpy array or None|expected a cupy array)"):
        f(x, w, 1.0)
    if cuda:
        with pytest.raises(TypeError, match=rf"{fn}: weight: expected a cupy array"):
            f(x, np.ones((2, 3), np.float32), None)


@pytest.mark.parametrize("op", ["linear", "linear_gelu"])
def test_backward_errors(native_impl, op):
    k, to, cuda = native_impl.kernel(op), native_impl.to, native_impl.device == "cuda"
    fn, f = f"{op}_backward", k.backward
    x, w, b = _xwb(to)
    g = to(np.ones((4, 2), np.float32))
    saved = k.forward(x, w, b)[1]
    with pytest.raises(ValueError,
                       match=rf"{fn}: grad:? (must have shape \(4, 2\), got \(4, 3\)|expected shape \(4, 2\))"):
        f(to(np.ones((4, 3), np.float32)), x, w, True, saved)
    with pytest.raises(TypeError if cuda else ValueError,
                       match=rf"{fn}: grad:? (must be float32, got float64|expected dtype float32)"):
        f(to(np.ones((4, 2), np.float64)), x, w, True, saved)
    with pytest.raises(ValueError, match=rf"{fn}: x:? (must be C-contiguous|expected a C-contiguous array)"):
        f(g, to(np.ones((3, 4), np.float32)).T, w, True, saved)
    with pytest.raises(ValueError, match=rf"{fn}: weight must have shape \(out, 3\)"):
        f(g, x, to(np.ones((2, 4), np.float32)), True, saved)
    if "gelu" in op:
        with pytest.raises(ValueError, match=rf"{fn}: saved must be the \(h,\) tuple"):
            f(g, x, w, True, ())
        with pytest.raises(ValueError,
                           match=rf"{fn}: saved h:? (must have shape \(4, 2\), got \(2, 4\)|expected shape \(4, 2\))"):
            f(g, x, w, True, (to(np.ones((2, 4), np.float32)),))


@needs_cpu
def test_sgemm_and_isa_errors():
    with pytest.raises(ValueError, match=r"sgemm: b must have 3 rows to match a \(2, 3\), got shape \(4, 5\)"):
        CPU.sgemm(np.ones((2, 3), np.float32), np.ones((4, 5), np.float32))
    with pytest.raises(ValueError, match=r"sgemm: a must have 2 dimensions"):
        CPU.sgemm(np.ones(3, np.float32), np.ones((3, 5), np.float32))
    with pytest.raises(ValueError, match=r"set_isa: name must be"):
        CPU.set_isa("sse9")
    assert CPU.isa() in ("avx512", "avx2", "baseline")


# ------------------------------------------------------------------ dispatch and policy
def _gpt_linear_arrays():
    """A shape every GPT forward runs (B*T = 768, C = 128 -> 3C), which the policy sends native."""
    rng = np.random.default_rng(3)
    return (rng.standard_normal((12, 64, 128)).astype(np.float32), rng.standard_normal((384, 128)).astype(np.float32),
            rng.standard_normal(384).astype(np.float32))


@needs_cpu
@pytest.mark.parametrize("op", ["linear", "linear_gelu"])
def test_dispatch(op):
    x, w, b = _gpt_linear_arrays()
    with kernels.use_native(True):  # also under TINYGPT_NATIVE=0
        assert kernels.select(op, x, w, b).name == "native-cpu"
        assert kernels.select(op, x, w, None).name == "native-cpu"
        assert kernels.select(op, x.astype(np.float64), w, b).name == "reference"  # float64 -> reference
        assert kernels.select(op, x, np.asfortranarray(w), b).name == "reference"  # non-contiguous -> reference
        assert kernels.select(op, x[:, ::2], w, b).name == "reference"
        assert kernels.select(op, x, w, b, native_ok=False).name == "reference"
    with kernels.use_native(False):
        assert kernels.select(op, x, w, b).name == "reference"


@needs_cpu
@pytest.mark.parametrize("rows, n_in, n_out, native", [
    (768, 128, 384, True), (4096, 384, 1152, True), (4096, 1536, 384, True), (4096, 384, 65, True),  # training
    (1, 384, 1152, True), (1, 128, 65, True),     # one row (decode): the native GEMV
    (1, 768, 768, True), (1, 768, 50257, True),
    (8, 384, 128, False), (12, 384, 128, True),   # few outputs: OpenBLAS's small-matrix path, then ours
    (4, 1536, 128, False), (6, 1536, 128, True),  # long rows pack more per output: the threshold halves
])
def test_policy(rows, n_in, n_out, native):
    """The shape-class policy (data from benchmarks/kernels/linear.py) and that select() follows it."""
    assert kernels.policy.linear_policy(rows, n_in, n_out) is native
    x = np.zeros((rows, n_in), np.float32)
    w = np.zeros((n_out, n_in), np.float32)
    want = "native-cpu" if native else "reference"
    with kernels.use_native(True):  # also under TINYGPT_NATIVE=0
        for op in ("linear", "linear_gelu"):
            assert kernels.select(op, x, w, None).name == want
            assert kernels.select(op, x.reshape(1, rows, n_in), w, None).name == want


# ------------------------------------------------------------------ autograd through tinygpt.functional
@needs_cpu
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("fused", [False, True])
def test_autograd_native_matches_reference(fused, bias):
    rng = np.random.default_rng(4)
    x0, w0, b0 = _gpt_linear_arrays()
    g = rng.standard_normal((12, 64, 384)).astype(np.float32)
    out = {}
    for native in (True, False):
        with kernels.use_native(native):
            x = tg.Tensor(x0, requires_grad=True)
            w = tg.Tensor(w0 * 0.1, requires_grad=True)
            b = tg.Tensor(b0, requires_grad=True) if bias else None
            y = F.linear_gelu(x, w, b) if fused else F.linear(x, w, b)
            y.backward(g)
            out[native] = [y.numpy(), x.grad.numpy(), w.grad.numpy()] + ([b.grad.numpy()] if bias else [])
    for name, a, r in zip(["y", "dx", "dw", "db"], out[True], out[False]):
        scale = np.abs(r).max()
        np.testing.assert_allclose(a, r, rtol=1e-4, atol=1e-5 * scale, err_msg=name)


def test_autograd_on_cuda_matches_cpu(cuda_impl):
    """F.linear_gelu on cuda tensors (the kernels/__init__ dispatch) vs the CPU run."""
    x, w, b, g = _case(np.random.default_rng(2), (2, 9), 24, 40, 1.0, True)
    outs = {}
    for device in ("cpu", "cuda"):
        xt = tg.tensor(x, requires_grad=True, device=device)
        wt = tg.tensor(w, requires_grad=True, device=device)
        bt = tg.tensor(b, requires_grad=True, device=device)
        y = F.linear_gelu(xt, wt, bt)
        (y * tg.tensor(g, device=device)).sum().backward()
        outs[device] = [t.numpy() for t in (y, xt.grad, wt.grad, bt.grad)]
    for a, bb in zip(outs["cpu"], outs["cuda"]):
        np.testing.assert_allclose(bb, a, rtol=1e-4, atol=1e-4)


def test_linear_gelu_gradcheck_float64():
    """F.linear_gelu in float64 (the reference path) against central differences."""
    rng = np.random.default_rng(5)
    x = tg.Tensor(rng.standard_normal((2, 3, 5)), requires_grad=True)
    w = tg.Tensor(rng.standard_normal((4, 5)), requires_grad=True)
    b = tg.Tensor(rng.standard_normal(4), requires_grad=True)
    cot = rng.standard_normal((2, 3, 4))
    y = F.linear_gelu(x, w, b)
    h = x.numpy() @ w.numpy().T + b.numpy()
    np.testing.assert_allclose(y.numpy(), 0.5 * h * (1 + np.tanh(np.sqrt(2 / np.pi) * (h + 0.044715 * h**3))),
                               rtol=1e-12, atol=1e-12)
    y.backward(cot)
    for t in (x, w, b):
        flat = t.data.reshape(-1)
        num = np.empty(flat.size)
        for i in range(flat.size):
            old = flat[i]
            flat[i] = old + 1e-6
            fp = float(np.sum(F.linear_gelu(x, w, b).numpy() * cot))
            flat[i] = old - 1e-6
            fm = float(np.sum(F.linear_gelu(x, w, b).numpy() * cot))
            flat[i] = old
            num[i] = (fp - fm) / 2e-6
        np.testing.assert_allclose(t.grad.numpy().reshape(-1), num, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("approximate", ["tanh", "none"])
def test_mlp_uses_fused_op_for_tanh_only(approximate, monkeypatch):
    """MLP: same parameters and output as c_proj(gelu(c_fc(x))); tanh runs through linear_gelu."""
    from tinygpt.nn import MLP  # noqa: PLC0415

    mlp = MLP(16, approximate=approximate)
    assert [n for n, _ in mlp.named_parameters()] == ["c_fc.weight", "c_fc.bias", "c_proj.weight", "c_proj.bias"]
    x = tg.Tensor(np.random.default_rng(6).standard_normal((2, 5, 16)).astype(np.float32))
    calls = []
    original = kernels.select

    def spy(op, *arrays):
        calls.append(op)
        return original(op, *arrays)

    monkeypatch.setattr(kernels, "select", spy)
    y = mlp(x)
    monkeypatch.undo()
    expected = mlp.c_proj(F.gelu(mlp.c_fc(x), approximate))
    np.testing.assert_allclose(y.numpy(), expected.numpy(), rtol=1e-5, atol=1e-6)
    assert ("linear_gelu" in calls) == (approximate == "tanh")


# ------------------------------------------------------------------ tinygpt.functional: float64 references, finite differences, torch
@given(data=st.data(), lead=shapes(0, 2, max_side=3), n_in=st.integers(1, 4), n_out=st.integers(1, 4),
       bias=st.booleans())
def test_linear_float64_gradcheck(data, lead, n_in, n_out, bias):
    x = data.draw(arrays(lead + (n_in,)))
    w = data.draw(arrays((n_out, n_in)))
    b = data.draw(arrays((n_out,)))
    if bias:
        out = check_grads(F.linear, x, w, b)
        expected = x @ w.T + b
    else:
        out = check_grads(lambda x_, w_: F.linear(x_, w_), x, w)
        expected = x @ w.T
    np.testing.assert_allclose(out, expected, **VAL64)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_linear_torch(kernel_impl, dtype, bias):
    x, w, b = rng_arrays(0, (2, 3, 5), (4, 5), (4,))
    tol = T64 if dtype == np.float64 else dict(**F32_GRAD)
    if bias:
        compare_with_torch(F.linear, tf().linear, x, w, b, dtype=dtype, **tol)
    else:
        compare_with_torch(F.linear, tf().linear, x, w, dtype=dtype, **tol)


def test_linear_shape_errors():
    with pytest.raises(ValueError, match=r"linear.*\(2, 3\).*\(4, 5\)"):
        F.linear(tg.randn(2, 3), tg.randn(4, 5))
    with pytest.raises(ValueError, match=r"bias.*\(4,\)"):
        F.linear(tg.randn(2, 5), tg.randn(4, 5), tg.randn(3))
