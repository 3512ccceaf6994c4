"""Native matmul family (csrc/cpu/matmul.cpp): linear and linear_gelu, forward and every backward
output, against the reference run in float64; on every SGEMM micro-kernel this CPU supports
(avx512, avx2, scalar), with the shape-class dispatch, errors and autograd on top.

Tolerances. Every output is a dot product (or a column sum) of float32 inputs, which the reference
evaluates exactly enough in float64 from the same float32 values, so the only error is the native
float32 accumulation. For a length-K dot product computed by any summation order (blocked over KC,
FMAs in registers), |fl(sum) - sum| <= gamma_K * sum_k |a_k b_k| with gamma_K ~ K * eps (the
deterministic worst case; the typical error is ~sqrt(K) eps). We allow (K + 20) * eps32 times the
matching product of absolute values (|x| @ |W|^T, ...), plus one rounding of the result: a bound
that never flakes, yet is ~K times tighter than the error of a single wrong or missing term
(~ sum / K). GELU adds: the forward |gelu'| <= 1.13 times the pre-activation's error plus a few ulp
of the exp-based evaluation; the backward a few ulp of |grad| for gelu'(h) (evaluated at the
native's own saved h, which is what the backward receives).
"""
import contextlib

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import tinygpt as tg
import tinygpt.functional as F
from tinygpt import kernels
from tinygpt.kernels import reference

cpu = getattr(kernels._native, "cpu", None)
pytestmark = pytest.mark.skipif(not hasattr(cpu, "linear_forward"),
                                reason="tinygpt._C is not built or has no native matmul (linear_forward)")

EPS = float(np.finfo(np.float32).eps)
TINY = 1e-30  # results that underflow (gelu of very negative inputs) differ by denormals only

SIZES = st.one_of(st.integers(1, 24), st.sampled_from([1, 2, 3, 5, 7, 13, 14, 15, 16, 17, 29, 31, 32, 33, 47, 61,
                                                        65, 97, 127, 141, 257]))
SCALES = st.sampled_from([1e-3, 1.0, 30.0, 1e4])


ISAS = ["avx512", "avx2", "baseline"]


@contextlib.contextmanager
def use_isa(name):
    """Runs the body on one SGEMM micro-kernel (skipping where the CPU lacks it), then restores auto."""
    try:
        cpu.set_isa(name)
    except ValueError as exc:
        pytest.skip(str(exc))
    try:
        yield name
    finally:
        cpu.set_isa("auto")


def _f64(*arrays):
    return [None if a is None else a.astype(np.float64) for a in arrays]


def _assert_within(actual, expected, bound, what):
    err = np.abs(actual.astype(np.float64) - expected)
    limit = bound + EPS * np.abs(expected) + TINY
    worst = np.unravel_index(np.argmax(err - limit), err.shape) if err.size else None
    assert err.size == 0 or np.all(err <= limit), (
        f"{what}: error {err[worst]:.3g} > bound {limit[worst]:.3g} at {worst} "
        f"(actual {actual[worst]!r}, expected {expected[worst]!r})")


def _linear_case(rng, lead, n_in, n_out, scale, bias):
    x = (rng.standard_normal(lead + (n_in,)) * scale).astype(np.float32)
    w = (rng.standard_normal((n_out, n_in)) * scale).astype(np.float32)
    b = (rng.standard_normal(n_out) * scale).astype(np.float32) if bias else None
    g = (rng.standard_normal(lead + (n_out,)) * scale).astype(np.float32)
    return x, w, b, g


def check_linear(x, w, b, g):
    """Native linear forward/backward vs the float64 reference, with the K-dependent bound."""
    n_out, n_in = w.shape
    rows = x.size // max(n_in, 1) if n_in else int(np.prod(x.shape[:-1]))
    y, saved = cpu.linear_forward(x, w, b)
    x64, w64, b64, g64 = _f64(x, w, b, g)
    y64, _ = reference.linear_forward(x64, w64, b64)
    assert y.dtype == np.float32 and y.shape == y64.shape
    ax, aw, ag = np.abs(x64), np.abs(w64), np.abs(g64)
    bound_y = (n_in + 20) * EPS * (ax @ aw.T) + (0 if b is None else EPS * np.abs(b64))
    _assert_within(y, y64, bound_y, "linear y")

    dx, dw, db = cpu.linear_backward(g, x, w, b is not None, saved)
    rx, rw, rb = reference.linear_backward(g64, x64, w64, b is not None, ())
    assert dx.shape == x.shape and dw.shape == w.shape
    _assert_within(dx, rx, (n_out + 20) * EPS * (ag @ aw), "linear dx")
    g2, x2 = ag.reshape(rows, n_out), ax.reshape(rows, n_in)
    _assert_within(dw, rw, (rows + 20) * EPS * (g2.T @ x2), "linear dweight")
    if b is None:
        assert db is None
    else:
        assert db.shape == (n_out,)
        _assert_within(db, rb, (rows + 20) * EPS * g2.sum(axis=0), "linear dbias")


def check_linear_gelu(x, w, b, g):
    n_out, n_in = w.shape
    rows = int(np.prod(x.shape[:-1]))
    y, saved = cpu.linear_gelu_forward(x, w, b)
    (h,) = saved
    x64, w64, b64, g64 = _f64(x, w, b, g)
    y64, _ = reference.linear_gelu_forward(x64, w64, b64)
    h64, _ = reference.linear_forward(x64, w64, b64)
    ax, aw, ag = np.abs(x64), np.abs(w64), np.abs(g64)
    bound_h = (n_in + 20) * EPS * (ax @ aw.T) + (0 if b is None else EPS * np.abs(b64))
    _assert_within(h, h64, bound_h, "linear_gelu saved pre-activation h")
    # (+ |h| eps64: the float64 reference's 1 + tanh(u) cancels to 0 for u < -19)
    _assert_within(y, y64, 1.13 * bound_h + 8 * EPS * np.abs(y64) + 1e-15 * np.abs(h64), "linear_gelu y")

    # Backward from the native's own saved h (that is the backward's input), vs the float64
    # reference fed the same h: dh = g * gelu'(h) to a few ulp of |g|, then the GEMM bounds.
    dx, dw, db = cpu.linear_gelu_backward(g, x, w, b is not None, saved)
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


# ------------------------------------------------------------------ properties vs float64 reference
@pytest.mark.parametrize("isa", ISAS)
@given(seed=st.integers(0, 2**32 - 1), lead=st.lists(SIZES, min_size=0, max_size=2).map(tuple),
       n_in=SIZES, n_out=SIZES, scale=SCALES, bias=st.booleans())
def test_linear_matches_reference(isa, seed, lead, n_in, n_out, scale, bias):
    if np.prod(lead) > 600:  # keep each example small (two sampled sizes can multiply up)
        lead = lead[:1]
    with use_isa(isa):
        check_linear(*_linear_case(np.random.default_rng(seed), lead, n_in, n_out, scale, bias))


@pytest.mark.parametrize("isa", ISAS)
@given(seed=st.integers(0, 2**32 - 1), lead=st.lists(SIZES, min_size=0, max_size=2).map(tuple),
       n_in=SIZES, n_out=SIZES, scale=st.sampled_from([1e-3, 0.3, 1.0, 3.0, 1e4]), bias=st.booleans())
def test_linear_gelu_matches_reference(isa, seed, lead, n_in, n_out, scale, bias):
    if np.prod(lead) > 600:
        lead = lead[:1]
    with use_isa(isa):
        check_linear_gelu(*_linear_case(np.random.default_rng(seed), lead, n_in, n_out, scale, bias))


@pytest.mark.parametrize("rows, n_in, n_out", [
    (300, 1100, 70),   # K spans three KC blocks (accumulation into C), M several MC blocks
    (4, 2000, 5),      # a long reduction with tiny M and N
    (2000, 3, 2),      # a long M with tiny K and N (dW reduces over 2000 rows)
    (257, 129, 513),   # every edge: M % MR, N % NR, K % 16 (the transposing pack) all nonzero
])
@pytest.mark.parametrize("isa", ISAS)
def test_large_blocks(isa, rows, n_in, n_out):
    rng = np.random.default_rng(rows + n_in + n_out)
    with use_isa(isa):
        check_linear(*_linear_case(rng, (rows,), n_in, n_out, 1.0, True))
        check_linear_gelu(*_linear_case(rng, (rows,), n_in, n_out, 1.0, True))


@pytest.mark.parametrize("lead, n_in, n_out", [((0,), 5, 3), ((2, 0), 4, 4), ((), 6, 2), ((1,), 1, 1)])
@pytest.mark.parametrize("isa", ISAS)
def test_empty_and_vector_shapes(isa, lead, n_in, n_out):
    """Zero rows, zero in-features (y = bias), zero out-features, and a 1-D x (in,)."""
    rng = np.random.default_rng(0)
    with use_isa(isa):
        check_linear(*_linear_case(rng, lead, n_in, n_out, 1.0, True))
        check_linear_gelu(*_linear_case(rng, lead, n_in, n_out, 1.0, True))


def test_zero_features():
    """in = 0 or out = 0 (the reference cannot reshape those): y = bias, or empty; zero gradients."""
    x, w, b = np.ones((3, 0), np.float32), np.ones((4, 0), np.float32), np.arange(4, dtype=np.float32) - 1.5
    y, saved = cpu.linear_forward(x, w, b)
    np.testing.assert_array_equal(y, np.broadcast_to(b, (3, 4)))
    y, saved = cpu.linear_gelu_forward(x, w, b)
    np.testing.assert_allclose(y, np.broadcast_to(reference.gelu_forward(b, "tanh")[0], (3, 4)), rtol=1e-6)
    dx, dw, db = cpu.linear_gelu_backward(np.ones((3, 4), np.float32), x, w, True, saved)
    assert dx.shape == (3, 0) and dw.shape == (4, 0) and db.shape == (4,)
    x, w = np.ones((3, 4), np.float32), np.ones((0, 4), np.float32)
    y, saved = cpu.linear_forward(x, w, None)
    assert y.shape == (3, 0)
    dx, dw, db = cpu.linear_backward(np.ones((3, 0), np.float32), x, w, True, saved)
    np.testing.assert_array_equal(dx, np.zeros((3, 4), np.float32))
    assert dw.shape == (0, 4) and db.shape == (0,)


@pytest.mark.parametrize("isa", ISAS)
def test_gelu_extremes(isa):
    """Huge and tiny pre-activations: gelu(h) -> h or 0 and gelu'(h) -> 1 or 0, never NaN/inf."""
    with use_isa(isa):
        _check_gelu_extremes()


def _check_gelu_extremes():
    h_vals = np.array([-1e30, -1e10, -100.0, -12.5, -9.0, -0.75, -1e-20, 0.0, 1e-20, 0.75, 9.0, 12.5, 1e10, 1e30],
                      dtype=np.float32)
    x = h_vals[:, None].copy()  # y = x @ [[1]] + 0 = h exactly
    w = np.ones((1, 1), dtype=np.float32)
    y, saved = cpu.linear_gelu_forward(x, w, None)
    h64 = h_vals.astype(np.float64)
    with np.errstate(over="ignore"):
        expected, _ = reference.gelu_forward(h64, "tanh")
    # float64's 1 + tanh(u) is exactly 0 for u < -19 (gelu(-9) ~ -1.3e-28 comes out -0.0): allow
    # that cancellation, |h| * eps64.
    _assert_within(y[:, 0], expected, 8 * EPS * np.abs(expected) + 1e-15 * np.abs(h64), "gelu(h)")
    g = np.ones_like(x)
    dx, dw, _ = cpu.linear_gelu_backward(g, x, w, False, saved)
    with np.errstate(over="ignore"):
        t = np.tanh(np.sqrt(2 / np.pi) * (h64 + 0.044715 * h64**3))
        d_expected = reference.gelu_backward(np.ones_like(h64), h64, "tanh", (t,))
    d_expected = np.where(np.abs(h64) > 1e6, (h64 > 0).astype(np.float64), d_expected)  # inf * 0 in float64 too
    np.testing.assert_allclose(dx[:, 0], d_expected, rtol=16 * EPS, atol=16 * EPS)
    assert np.all(np.isfinite(dx)) and np.all(np.isfinite(y))


@contextlib.contextmanager
def num_threads(n):
    before = cpu.get_num_threads()
    cpu.set_num_threads(n)
    try:
        yield
    finally:
        cpu.set_num_threads(before)


def _all_outputs(x, w, b, g):
    y, saved = cpu.linear_gelu_forward(x, w, b)
    return [cpu.linear_forward(x, w, b)[0], *cpu.linear_backward(g, x, w, True, ()), y, saved[0],
            *cpu.linear_gelu_backward(g, x, w, True, saved)]


def test_threads_do_not_change_results():
    """Row-block / column-chunk tasks: each output's summation order is fixed by the blocking, not by
    which thread ran it, so any thread count gives the same bits."""
    x, w, b, g = _linear_case(np.random.default_rng(1), (333,), 700, 190, 1.0, True)
    with num_threads(1):
        one = _all_outputs(x, w, b, g)
    for n in (2, 3):
        with num_threads(n):
            for a, c in zip(one, _all_outputs(x, w, b, g)):
                np.testing.assert_array_equal(a, c)


@pytest.mark.parametrize("rows, n_in, n_out", [
    (3000, 64, 48),   # dW = g^T x reduces over 3000 rows: K split across threads, partial sums added
    (16, 3000, 200),  # y = x W^T (+ bias, GELU) reduces over 3000 in-features: the same path
])
@pytest.mark.parametrize("threads", [2, 3])
def test_k_split(rows, n_in, n_out, threads):
    """The K-split path (long reductions): right for 2 and 3 threads, bitwise repeatable for each."""
    rng = np.random.default_rng(rows + n_in)
    x, w, b, g = _linear_case(rng, (rows,), n_in, n_out, 1.0, True)
    with num_threads(threads):
        check_linear(x, w, b, g)
        check_linear_gelu(x, w, b, g)
        first = _all_outputs(x, w, b, g)
        for a, c in zip(first, _all_outputs(x, w, b, g)):
            np.testing.assert_array_equal(a, c)


@pytest.mark.parametrize("ta, tb", [(False, False), (True, False), (False, True), (True, True)])
@pytest.mark.parametrize("isa", ISAS)
def test_sgemm_transposes(isa, ta, tb):
    rng = np.random.default_rng(2)
    M, N, K = 37, 45, 53
    a = rng.standard_normal((K, M) if ta else (M, K)).astype(np.float32)
    b = rng.standard_normal((N, K) if tb else (K, N)).astype(np.float32)
    a64, b64 = (a.T if ta else a).astype(np.float64), (b.T if tb else b).astype(np.float64)
    with use_isa(isa):
        c = cpu.sgemm(a, b, ta, tb)
    _assert_within(c, a64 @ b64, (K + 20) * EPS * (np.abs(a64) @ np.abs(b64)), "sgemm")


# ------------------------------------------------------------------ argument errors
def _xwb(rows=4, n_in=3, n_out=2):
    return (np.ones((rows, n_in), np.float32), np.ones((n_out, n_in), np.float32), np.ones(n_out, np.float32))


@pytest.mark.parametrize("fn", ["linear_forward", "linear_gelu_forward"])
def test_forward_errors(fn):
    f = getattr(cpu, fn)
    x, w, b = _xwb()
    with pytest.raises(ValueError, match=rf"{fn}: x must be float32, got float64"):
        f(x.astype(np.float64), w, b)
    with pytest.raises(ValueError, match=rf"{fn}: x must be C-contiguous"):
        f(np.ones((3, 4), np.float32).T, w, b)
    with pytest.raises(ValueError, match=rf"{fn}: x must have at least 1 dimension"):
        f(np.ones((), np.float32), w, b)
    with pytest.raises(ValueError, match=rf"{fn}: weight must have 2 dimensions, got shape \(6,\)"):
        f(x, np.ones(6, np.float32), b)
    with pytest.raises(ValueError, match=rf"{fn}: weight must have shape \(out, 3\) to match x \(4, 3\), got \(2, 5\)"):
        f(x, np.ones((2, 5), np.float32), b)
    with pytest.raises(ValueError, match=rf"{fn}: weight must be C-contiguous"):
        f(x, np.ones((3, 2), np.float32).T, b)
    with pytest.raises(ValueError, match=rf"{fn}: bias must have shape \(2,\), got \(3,\)"):
        f(x, w, np.ones(3, np.float32))
    with pytest.raises(ValueError, match=rf"{fn}: bias must be float32, got int64"):
        f(x, w, np.ones(2, np.int64))
    with pytest.raises(ValueError, match=rf"{fn}: bias must be a numpy array or None"):
        f(x, w, 1.0)


@pytest.mark.parametrize("fn", ["linear_backward", "linear_gelu_backward"])
def test_backward_errors(fn):
    f = getattr(cpu, fn)
    x, w, b = _xwb()
    g = np.ones((4, 2), np.float32)
    saved = (np.ones((4, 2), np.float32),) if "gelu" in fn else ()
    with pytest.raises(ValueError, match=rf"{fn}: grad must have shape \(4, 2\), got \(4, 3\)"):
        f(np.ones((4, 3), np.float32), x, w, True, saved)
    with pytest.raises(ValueError, match=rf"{fn}: grad must be float32, got float64"):
        f(g.astype(np.float64), x, w, True, saved)
    with pytest.raises(ValueError, match=rf"{fn}: x must be C-contiguous"):
        f(g, np.ones((3, 4), np.float32).T, w, True, saved)
    with pytest.raises(ValueError, match=rf"{fn}: weight must have shape \(out, 3\)"):
        f(g, x, np.ones((2, 4), np.float32), True, saved)
    if "gelu" in fn:
        with pytest.raises(ValueError, match=rf"{fn}: saved must be the \(h,\) tuple"):
            f(g, x, w, True, ())
        with pytest.raises(ValueError, match=rf"{fn}: saved h must have shape \(4, 2\), got \(2, 4\)"):
            f(g, x, w, True, (np.ones((2, 4), np.float32),))


def test_sgemm_and_isa_errors():
    with pytest.raises(ValueError, match=r"sgemm: b must have 3 rows to match a \(2, 3\), got shape \(4, 5\)"):
        cpu.sgemm(np.ones((2, 3), np.float32), np.ones((4, 5), np.float32))
    with pytest.raises(ValueError, match=r"sgemm: a must have 2 dimensions"):
        cpu.sgemm(np.ones(3, np.float32), np.ones((3, 5), np.float32))
    with pytest.raises(ValueError, match=r"set_isa: name must be"):
        cpu.set_isa("sse9")
    assert cpu.isa() in ("avx512", "avx2", "baseline")


# ------------------------------------------------------------------ dispatch
def _gpt_linear_arrays():
    """A shape every GPT forward runs (B*T = 768, C = 128 -> 3C), which the policy sends native."""
    rng = np.random.default_rng(3)
    return (rng.standard_normal((12, 64, 128)).astype(np.float32), rng.standard_normal((384, 128)).astype(np.float32),
            rng.standard_normal(384).astype(np.float32))


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


@pytest.mark.parametrize("rows, n_in, n_out, native", [
    (768, 128, 384, True), (4096, 384, 1152, True), (4096, 1536, 384, True), (4096, 384, 65, True),  # training
    (1, 384, 1152, False), (1, 128, 65, False),   # one row (generation): a GEMV, OpenBLAS streams W once
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
