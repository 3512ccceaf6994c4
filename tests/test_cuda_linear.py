"""CUDA matmul family (csrc/cuda/matmul.cu via tinygpt/kernels/cuda.py): linear and linear_gelu,
forward and every backward output, in each matmul precision, against the float64 reference.
Every test is marked `gpu` (skipped without CuPy and a GPU); nothing here imports CuPy at import time.

Tolerances. Each output is a length-K dot product (or a column sum) of float32 inputs; the float64
reference is exact enough. Two checks per output:
  1. vs the plain float64 reference, with the precision's a-priori bound, per element
       |err| <= (PROD[prec] + 2 (A[prec] K + 20) eps32) * (|a| @ |b|)  (+ eps32 |result| + bias term)
     PROD is the relative error of one product from rounding its inputs: TF32 rounds to nearest
     with a 10-bit mantissa (u = 2^-11, product <= 2u + u^2 ~ 2^-10); bf16 has a 7-bit mantissa
     (u = 2^-8, product ~ 2^-7); 'fp32' = 3xTF32: a = hi + lo exactly up to 2^-22 |a|, and the
     dropped lo*lo term is < 2^-22 |ab|, so <= 3 * 2^-22 = 6 eps32 (we allow 8). The accumulation
     term is the deterministic worst case of K fp32 additions, doubled because tensor cores may
     truncate instead of rounding; 3xTF32 does three MMAs per k step (A = 3). (The typical error is
     ~sqrt(K) times smaller; this bound never flakes.)
  2. vs a float64 reference fed the inputs rounded exactly as the kernel rounds them (numpy
     emulation of cvt.rna.tf32.f32, of round-to-nearest-even bf16, and of the 3xTF32 split), where
     only the accumulation term remains: this catches a wrong or missing term even in bf16, where
     bound 1 (2^-7 relative) would not for large K.
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
from tinygpt.kernels import cuda as kcuda
from tinygpt.kernels import policy as kpolicy
from tinygpt.kernels import reference

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not kcuda.has("linear_gelu"),
                                 reason="tinygpt._C was built without the CUDA matmul kernels")]

EPS = float(np.finfo(np.float32).eps)
TINY = 1e-30
PRECISIONS = ["fp32", "tf32", "bf16"]
PROD = {"fp32": 8 * EPS, "tf32": 2.0**-10 * 1.001, "bf16": 2.0**-7 * 1.001}
ACC = {"fp32": 3, "tf32": 1, "bf16": 1}

SIZES = st.one_of(st.integers(1, 24), st.sampled_from([1, 2, 3, 5, 7, 8, 13, 15, 16, 17, 29, 31, 32, 33, 47, 61,
                                                        64, 65, 97, 127, 128, 129, 141, 257]))
SCALES = st.sampled_from([1e-3, 1.0, 30.0, 1e4])


def cp():
    return tg.backend.cupy()


@contextlib.contextmanager
def matmul_mode(precision, backend="ours"):
    old_p = kpolicy.set_matmul_precision(precision)
    old_b = kpolicy.set_matmul_backend(backend)
    try:
        yield
    finally:
        kpolicy.set_matmul_precision(old_p)
        kpolicy.set_matmul_backend(old_b)


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


def _assert_within(actual, expected, bound, what):
    actual = np.asarray(actual, dtype=np.float64)
    err = np.abs(actual - expected)
    limit = bound + EPS * np.abs(expected) + TINY
    if err.size == 0:
        return
    worst = np.unravel_index(np.argmax(err - limit), err.shape)
    assert np.all(err <= limit), (f"{what}: error {err[worst]:.3g} > bound {limit[worst]:.3g} at {worst} "
                                  f"(actual {actual[worst]!r}, expected {expected[worst]!r})")


def _check_product(got, a, b, precision, what, extra=0.0, expected=None, emulate=True):
    """got ~ a @ b (+ whatever `expected` adds) for float32 a (M, K), b (K, N): both checks above."""
    K = a.shape[1]
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    mag = np.abs(a64) @ np.abs(b64)
    exact = a64 @ b64 if expected is None else expected
    acc = 2 * (ACC[precision] * K + 20) * EPS
    _assert_within(got, exact, (PROD[precision] + acc) * mag + extra, f"{what} [{precision}]")
    if not emulate:  # cuBLAS rounds its inputs its own way
        return
    shift = 0.0 if expected is None else expected - a64 @ b64  # e.g. the bias
    emu = emulated_product(a, b, precision) + shift
    _assert_within(got, emu, acc * mag * (1 + PROD[precision]) + extra, f"{what} [{precision}, emulated]")


def _case(rng, lead, n_in, n_out, scale, bias):
    x = (rng.standard_normal(lead + (n_in,)) * scale).astype(np.float32)
    w = (rng.standard_normal((n_out, n_in)) * scale).astype(np.float32)
    b = (rng.standard_normal(n_out) * scale).astype(np.float32) if bias else None
    g = (rng.standard_normal(lead + (n_out,)) * scale).astype(np.float32)
    return x, w, b, g


def _dev(*arrays):
    return [None if a is None else cp().asarray(a) for a in arrays]


def _host(a):
    return None if a is None else cp().asnumpy(a)


def check_linear(x, w, b, g, precision, emulate=True):
    n_out, n_in = w.shape
    rows = math.prod(x.shape[:-1])
    dx_, dw_, db_, dg_ = _dev(x, w, b, g)
    y, saved = kcuda.linear.linear_forward(dx_, dw_, db_)
    assert saved == () and y.dtype == np.float32 and y.shape == x.shape[:-1] + (n_out,)
    x2, g2 = x.reshape(rows, n_in), g.reshape(rows, n_out)
    b64 = 0.0 if b is None else b.astype(np.float64)
    y64 = x2.astype(np.float64) @ w.T.astype(np.float64) + b64
    _check_product(_host(y).reshape(rows, n_out), x2, np.ascontiguousarray(w.T), precision, "linear y",
                   extra=0.0 if b is None else EPS * np.abs(b64), expected=y64, emulate=emulate)

    gx, gw, gb = kcuda.linear.linear_backward(dg_, dx_, dw_, b is not None, saved)
    assert gx.shape == x.shape and gw.shape == w.shape
    _check_product(_host(gx).reshape(rows, n_in), g2, w, precision, "linear dx", emulate=emulate)
    _check_product(_host(gw), np.ascontiguousarray(g2.T), x2, precision, "linear dweight", emulate=emulate)
    if b is None:
        assert gb is None
    else:
        ref = g2.astype(np.float64).sum(axis=0)
        _assert_within(_host(gb), ref, 2 * (rows + 20) * EPS * np.abs(g2.astype(np.float64)).sum(axis=0),
                       "linear dbias")


def gelu_tanh64(h):
    return reference.gelu_forward(h.astype(np.float64), "tanh")[0]


def check_linear_gelu(x, w, b, g, precision, emulate=True):
    n_out, n_in = w.shape
    rows = math.prod(x.shape[:-1])
    dx_, dw_, db_, dg_ = _dev(x, w, b, g)
    y, saved = kcuda.linear.linear_gelu_forward(dx_, dw_, db_)
    (h,) = saved
    assert y.shape == h.shape == x.shape[:-1] + (n_out,)
    x2 = x.reshape(rows, n_in)
    b64 = 0.0 if b is None else b.astype(np.float64)
    h64 = x2.astype(np.float64) @ w.T.astype(np.float64) + b64
    hh = _host(h).reshape(rows, n_out).astype(np.float64)  # the kernel's h (float64: t below must be exact)
    _check_product(hh, x2, np.ascontiguousarray(w.T), precision, "linear_gelu h",
                   extra=0.0 if b is None else EPS * np.abs(b64), expected=h64, emulate=emulate)
    # y = gelu(h) of the kernel's own h: |gelu'| <= 1.13 (checked above through h), the GELU's own
    # evaluation to 1e-5 relative (exp with an argument up to 87: see tests/ops/test_gelu.py);
    # + 1e-15 |h|: the float64 reference's 1 + tanh(u) cancels to 0 for u < -19, where the kernel
    # gives h e^-80 (its cap) instead.
    y_of_h = gelu_tanh64(hh)
    _assert_within(_host(y).reshape(rows, n_out), y_of_h, 1e-5 * np.abs(y_of_h) + 1e-15 * np.abs(hh),
                   "linear_gelu y")

    # Backward from the kernel's own saved h: dh = g * gelu'(h) to 1e-5 |dh| + 1e-6 |g| (as
    # tests/ops/test_gelu.py), then the GEMM bounds with |dh| <= 1.2 |g|.
    gx, gw, gb = kcuda.linear.linear_gelu_backward(dg_, dx_, dw_, b is not None, saved)
    t = np.tanh(np.sqrt(2 / np.pi) * (hh + 0.044715 * hh**3))
    g2 = g.reshape(rows, n_out).astype(np.float64)
    rx, rw, rb = reference.linear_gelu_backward(g2, x2.astype(np.float64), w.astype(np.float64), b is not None,
                                                (hh, t))
    dh = reference.gelu_backward(g2, hh, "tanh", (t,))
    adh = np.abs(dh) + 1e-5 * np.abs(dh) + 1e-6 * np.abs(g2)
    dh_err = 1e-5 * np.abs(dh) + 1e-6 * np.abs(g2)  # the elementwise dh's own error
    ax, aw = np.abs(x2.astype(np.float64)), np.abs(w.astype(np.float64))
    acc = 2 * (ACC[precision] * max(n_out, rows) + 20) * EPS
    _assert_within(_host(gx).reshape(rows, n_in), rx, (PROD[precision] + acc) * (adh @ aw) + dh_err @ aw,
                   f"linear_gelu dx [{precision}]")
    _assert_within(_host(gw), rw, (PROD[precision] + acc) * (adh.T @ ax) + dh_err.T @ ax,
                   f"linear_gelu dweight [{precision}]")
    if b is None:
        assert gb is None
    else:
        _assert_within(_host(gb), rb, 2 * (rows + 20) * EPS * adh.sum(axis=0) + dh_err.sum(axis=0),
                       "linear_gelu dbias")


# ------------------------------------------------------------------ properties vs float64 reference
@pytest.mark.parametrize("precision", PRECISIONS)
@given(seed=st.integers(0, 2**32 - 1), lead=st.lists(SIZES, min_size=0, max_size=2).map(tuple),
       n_in=SIZES, n_out=SIZES, scale=SCALES, bias=st.booleans())
def test_linear_matches_reference(precision, seed, lead, n_in, n_out, scale, bias):
    if math.prod(lead) > 600:
        lead = lead[:1]
    with matmul_mode(precision):
        check_linear(*_case(np.random.default_rng(seed), lead, n_in, n_out, scale, bias), precision)


@pytest.mark.parametrize("precision", PRECISIONS)
@given(seed=st.integers(0, 2**32 - 1), lead=st.lists(SIZES, min_size=0, max_size=2).map(tuple),
       n_in=SIZES, n_out=SIZES, scale=st.sampled_from([1e-3, 0.3, 1.0, 30.0]), bias=st.booleans())
def test_linear_gelu_matches_reference(precision, seed, lead, n_in, n_out, scale, bias):
    if math.prod(lead) > 600:
        lead = lead[:1]
    with matmul_mode(precision):
        check_linear_gelu(*_case(np.random.default_rng(seed), lead, n_in, n_out, scale, bias), precision)


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("rows,n_in,n_out", [(2048, 768, 768), (1000, 771, 1539), (4097, 384, 1536),
                                             (300, 3072, 768), (16, 1024, 6283)])
def test_gpt_shapes(precision, rows, n_in, n_out):
    """GPT-sized products: the large 128x128 tiling (>= SM count tiles), K not a multiple of 32,
    N not a multiple of 4, long K, a wide logits-like product. References computed on the GPU."""
    c = cp()
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
            bound = (PROD[precision] + 2 * (ACC[precision] * n_in + 20) * EPS) * (abs(x64) @ abs(w64).T) \
                + 2 * EPS * abs(ref) + TINY
            assert bool((abs(h.astype(c.float64) - ref) <= bound).all()), f"h, gelu={gelu}"
        gx, gw, gb = kcuda.linear.linear_backward(g, x, w, True, ())
        bound = (PROD[precision] + 2 * (ACC[precision] * n_out + 20) * EPS) * (abs(g64) @ abs(w64)) + TINY
        assert bool((abs(gx - g64 @ w64) <= bound + EPS * abs(g64 @ w64)).all()), "dx"
        bound = (PROD[precision] + 2 * (ACC[precision] * rows + 20) * EPS) * (abs(g64).T @ abs(x64)) + TINY
        assert bool((abs(gw - g64.T @ x64) <= bound + EPS * abs(g64.T @ x64)).all()), "dweight"
        bound = 2 * (rows + 20) * EPS * abs(g64).sum(axis=0) + TINY
        assert bool((abs(gb - g64.sum(axis=0)) <= bound).all()), "dbias"


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("rows,n_in,n_out,splits", [(2048, 768, 768, None), (1000, 70, 45, 3), (97, 33, 17, 2),
                                                    (4100, 129, 64, 8), (64, 16, 16, 5)])
def test_split_k_dweight(precision, rows, n_in, n_out, splits):
    """dW with split-K over rows (forced counts, uneven last split, more splits than k-tiles) and
    with the device-chosen count, against the same bound as without."""
    rng = np.random.default_rng(rows)
    x, w, _, g = _case(rng, (rows,), n_in, n_out, 1.0, False)
    old = kcuda.linear._dw_splits
    kcuda.linear._dw_splits = splits
    try:
        with matmul_mode(precision):
            _, gw, _ = kcuda.linear.linear_backward(*_dev(g, x, w), False, ())
    finally:
        kcuda.linear._dw_splits = old
    _check_product(_host(gw), np.ascontiguousarray(g.T), x, precision, f"split-K dweight ({splits} splits)")


@pytest.mark.parametrize("precision", PRECISIONS)
def test_misaligned_and_strided_edges(precision):
    """Operands that start 4 bytes past a 16-byte boundary take the 4-byte copy paths."""
    c = cp()
    rng = np.random.default_rng(5)
    x, w, b, g = _case(rng, (37,), 44, 28, 1.0, True)
    def shifted(a):  # a C-contiguous device copy whose data pointer is 4 bytes off alignment
        flat = c.empty(a.size + 1, dtype=c.float32)
        view = flat[1:].reshape(a.shape)
        view[...] = c.asarray(a)
        assert view.data.ptr % 16 != 0 and view.flags.c_contiguous
        return view
    with matmul_mode(precision):
        y, _ = kcuda.linear.linear_forward(shifted(x), shifted(w), shifted(b))
        y_ref, _ = kcuda.linear.linear_forward(c.asarray(x), c.asarray(w), c.asarray(b))
        c.testing.assert_allclose(y, y_ref, rtol=0, atol=0)  # same tiles and order: bitwise equal
        gx, gw, gb = kcuda.linear.linear_backward(shifted(g), shifted(x), shifted(w), True, ())
        rx, rw, rb = kcuda.linear.linear_backward(c.asarray(g), c.asarray(x), c.asarray(w), True, ())
        for got, want in ((gx, rx), (gw, rw), (gb, rb)):
            c.testing.assert_allclose(got, want, rtol=0, atol=0)


def test_cublas_path():
    """The products sent to cuBLAS (cupy.matmul plus the separate bias and GELU passes) are within the
    same bounds (fp32, or TF32 when CuPy itself was started with CUPY_TF32=1)."""
    prec = "tf32" if os.environ.get("CUPY_TF32") == "1" else "fp32"  # CuPy's own cuBLAS setting
    rng = np.random.default_rng(1)
    with matmul_mode("fp32", "cublas"):
        assert kpolicy.matmul_policy("linear", 4096, 768, 768) is False
        check_linear(*_case(rng, (5, 7), 33, 19, 1.0, True), prec, emulate=False)
        check_linear_gelu(*_case(rng, (3,), 17, 65, 1.0, True), prec, emulate=False)


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
    c = cp()
    real_matmul = c.matmul
    monkeypatch.setattr(c, "matmul", lambda *a, **k: calls.update(["cublas"]) or real_matmul(*a, **k))
    for name in ("linear_forward", "linear_backward_dx"):
        real = kcuda.launcher(name)
        monkeypatch.setattr(kcuda._cuda, name, lambda *a, _real=real, **k: calls.update(["ours"]) or _real(*a, **k))
    return calls


@pytest.mark.parametrize("ours_ms, cublas_ms, winner", [(1.0, 2.0, "ours"), (2.0, 1.0, "cublas")])
def test_auto_measures_each_shape_class_once_and_runs_the_faster(monkeypatch, ours_ms, cublas_ms, winner):
    rng = np.random.default_rng(2)
    with fake_timings(monkeypatch, ours_ms, cublas_ms) as made:
        assert kpolicy.matmul_policy("linear", 100, 33, 19) is None  # not measured yet
        check_linear(*_case(rng, (100,), 33, 19, 1.0, True), "fp32", emulate=False)
        assert len(made) == 2  # forward and backward are separate classes
        choices = kpolicy.matmul_choices()
        assert {k[1:] for k in choices} == {("linear", d, 128, 33, 19, "fp32") for d in ("forward", "backward")}
        assert all(c == kpolicy.MatmulChoice(winner == "ours", ours_ms, cublas_ms) for c in choices.values())
        assert kpolicy.matmul_policy("linear", 100, 33, 19) is (winner == "ours")
        calls = _count_gemm_calls(monkeypatch)
        check_linear(*_case(rng, (120,), 33, 19, 1.0, True), "fp32", emulate=False)  # same class: 120 -> 128
        assert len(made) == 2, "a measured class is not measured again"
        assert calls == ({"ours": 2} if winner == "ours" else {"cublas": 3})  # fwd + dx (+ dW) products
        check_linear_gelu(*_case(rng, (129,), 33, 19, 1.0, True), "fp32", emulate=False)  # new op and rows class
        assert len(made) == 4 and len(kpolicy.matmul_choices()) == 4
        old = kpolicy.set_matmul_precision("tf32")  # the precision is part of the class
        try:
            assert kpolicy.matmul_policy("linear", 100, 33, 19) is None
        finally:
            kpolicy.set_matmul_precision(old)
    assert kpolicy.matmul_choices() == {}


def test_auto_times_both_on_the_gpu():
    """The real measurement: both implementations timed with CUDA events, medians recorded, results right."""
    rng = np.random.default_rng(3)
    kpolicy.clear_matmul_choices()
    try:
        with matmul_mode("fp32", "auto"):
            check_linear_gelu(*_case(rng, (4, 16), 40, 24, 1.0, True), "fp32", emulate=False)
            choices = kpolicy.matmul_choices()
            assert len(choices) == 2
            for choice in choices.values():
                assert choice.ours_ms > 0 and choice.cublas_ms > 0
                assert choice.ours == (choice.ours_ms < choice.cublas_ms)
    finally:
        kpolicy.clear_matmul_choices()


def test_empty_and_zero_k():
    c = cp()
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


def test_errors_name_the_argument():
    c = cp()
    x, w = c.ones((4, 5), c.float32), c.ones((3, 5), c.float32)
    with pytest.raises(ValueError, match=r"linear_forward: weight must have shape \(out, 5\)"):
        kcuda.linear.linear_forward(x, c.ones((3, 4), c.float32), None)
    with pytest.raises(TypeError, match="linear_forward: x: expected dtype float32"):
        kcuda.linear.linear_forward(x.astype(c.float64), w, None)
    with pytest.raises(ValueError, match=r"linear_forward: bias: expected shape \(3,\)"):
        kcuda.linear.linear_forward(x, w, c.ones(4, c.float32))
    with pytest.raises(ValueError, match="linear_forward: x: expected a C-contiguous array"):
        kcuda.linear.linear_forward(c.ones((5, 4), c.float32).T, w, None)
    with pytest.raises(TypeError, match="linear_forward: weight: expected a cupy array"):
        kcuda.linear.linear_forward(x, np.ones((3, 5), np.float32), None)
    with pytest.raises(ValueError, match=r"linear_backward: grad: expected shape \(4, 3\)"):
        kcuda.linear.linear_backward(c.ones((4, 2), c.float32), x, w, True, ())
    y, saved = kcuda.linear.linear_gelu_forward(x, w, None)
    with pytest.raises(ValueError, match="linear_gelu_backward: saved must be the"):
        kcuda.linear.linear_gelu_backward(y, x, w, False, ())
    with pytest.raises(ValueError, match=r"linear_gelu_backward: saved h: expected shape \(4, 3\)"):
        kcuda.linear.linear_gelu_backward(y, x, w, False, (c.ones((4, 2), c.float32),))


def test_autograd_through_functional():
    """F.linear / F.linear_gelu on cuda tensors (the kernels/__init__ dispatch) vs the CPU run."""
    import tinygpt.functional as F

    if not hasattr(F, "linear_gelu"):
        pytest.skip("functional.linear_gelu missing")
    rng = np.random.default_rng(2)
    x, w, b, g = _case(rng, (2, 9), 24, 40, 1.0, True)
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
