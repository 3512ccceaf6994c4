"""CUDA layernorm and fused add + layernorm (csrc/cuda/layernorm.cu via tinygpt/kernels/cuda.py)
against the float64 reference. Every test is marked `gpu` (skipped without CuPy and a GPU).

Tolerances: as tests/test_native_layer_norm.py (float32 kernel, float64 reference): y and dx within
K eps32 sqrt(C) times the magnitude they are built from, with the row's condition number
cond = max|x| rstd (x - mean loses the common offset's low bits in any float32 layernorm). The
GPU sums a row in per-lane serial chunks (<= 32 terms) then a 5-level shuffle tree, so its error is
no larger than the CPU's. dweight and dbias are summed in float32 here (the CPU uses double) over N
rows: per-lane serial, then 8 warps, then the chunks; the worst case adds N eps32 of the sum of
|terms|, hence (K + N) eps32 sum|g| (1 + cond).
"""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import tinygpt as tg
from tinygpt.kernels import cuda as kcuda
from tinygpt.kernels import reference as ref

from kernel_checks import LN_EPS32 as EPS32
from kernel_checks import LN_K as K
from kernel_checks import assert_layer_norm_backward, assert_layer_norm_forward
from kernel_checks import assert_within as _check
from kernel_checks import f64 as _f64
from kernel_checks import layernorm_problem as _draw
from kernel_checks import layernorm_row_terms as _row_terms

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not kcuda.has("add_layer_norm"),
                                 reason="tinygpt._C was built without the CUDA layernorm kernels")]


LEADING = st.sampled_from([(1,), (2,), (3,), (7,), (13,), (31,), (64,), (97,), (2, 3), (3, 17), (2, 2, 5)])
# warp-per-row path: C % 4 == 0 and C <= 1024; block path: the rest (odd C, C > 1024)
WIDTHS = st.sampled_from([1, 2, 3, 4, 5, 7, 8, 13, 16, 17, 31, 61, 64, 127, 128, 131, 257, 384, 512, 768, 1020,
                          1024, 1028, 1031, 2048])
SCALES = st.sampled_from([1e-3, 1.0, 30.0, 1e4])
OFFSETS = st.sampled_from([0.0, 1.0, 10.0, 300.0])


def cp():
    return tg.backend.cupy()


def _d(a):
    return None if a is None else cp().asarray(a)


def _h(a):
    return None if a is None else cp().asnumpy(a)


def _check_forward(y, y_ref, s64, w, b, eps):
    assert_layer_norm_forward(y, y_ref, s64, w, b, eps, floor=1e-30)


def _check_stats(saved, s64, eps):
    mean, rstd = (_h(a) for a in saved)
    N = s64.size // s64.shape[-1]
    assert mean.shape == rstd.shape == (N,) and mean.dtype == np.float32
    r64, cond = _row_terms(s64, eps)
    m64 = s64.mean(axis=-1).reshape(N)
    root_c = np.sqrt(s64.shape[-1])
    _check("mean", mean, m64, K * EPS32 * root_c * np.abs(s64).max(axis=-1).reshape(N) + 1e-30)
    # x - mean carries eps32 max|x| = eps32 cond std of error, relative to std: eps32 cond
    _check("rstd", rstd, r64.reshape(N), K * EPS32 * root_c * (1 + cond.reshape(N)) * r64.reshape(N))


def _check_backward(dx, dw, db, ref_grads, s64, g, w, eps, extra_dx=None):
    # the weight and bias gradients sum N rows in one float32 chain per column: K + N eps
    assert_layer_norm_backward(dx, dw, db, ref_grads, s64, g, w, eps, extra_dx, floor=1e-30,
                              sum_terms=lambda N: K + N)


@given(seed=st.integers(0, 2**32 - 1), lead=LEADING, C=WIDTHS, scale=SCALES, offset=OFFSETS,
       affine=st.sampled_from(["wb", "w", "b", "none"]), eps=st.sampled_from([1e-5, 1e-6]))
def test_layernorm_matches_reference(seed, lead, C, scale, offset, affine, eps):
    _, x, g, w, b = _draw(seed, lead, C, scale, offset, affine)
    y, saved = kcuda.layer_norm.layer_norm_forward(_d(x), _d(w), _d(b), eps)
    y_ref, saved_ref = ref.layer_norm_forward(_f64(x), _f64(w), _f64(b), eps)
    assert y.dtype == np.float32
    _check_forward(_h(y), y_ref, _f64(x), w, b, eps)
    _check_stats(saved, _f64(x), eps)
    dx, dw, db = kcuda.layer_norm.layer_norm_backward(_d(g), _d(x), _d(w), saved)
    ref_grads = ref.layer_norm_backward(_f64(g), _f64(x), _f64(w), saved_ref)
    _check_backward(_h(dx), _h(dw), _h(db), ref_grads, _f64(x), g, w, eps)


@given(seed=st.integers(0, 2**32 - 1), lead=LEADING, C=WIDTHS, scale=SCALES, offset=OFFSETS,
       affine=st.sampled_from(["wb", "w", "b", "none"]), with_grad_s=st.booleans())
def test_add_layer_norm_matches_reference(seed, lead, C, scale, offset, affine, with_grad_s):
    eps = 1e-5
    rng, x, g, w, b = _draw(seed, lead, C, scale, offset, affine)
    r = (rng.standard_normal(x.shape) * scale).astype(np.float32)
    gs = (rng.standard_normal(x.shape) * rng.choice([1e-2, 1.0, 1e3])).astype(np.float32) if with_grad_s else None
    (s, y), saved = kcuda.layer_norm.add_layer_norm_forward(_d(x), _d(r), _d(w), _d(b), eps)
    (s_ref, y_ref), saved_ref = ref.add_layer_norm_forward(_f64(x), _f64(r), _f64(w), _f64(b), eps)
    # s = x + r is one float32 rounding of the exact sum
    _check("s", _h(s), s_ref, 0.5 * EPS32 * np.abs(s_ref) + 1e-30)
    s64 = _h(s).astype(np.float64)  # the kernel normalises its own s
    y_own, _ = ref.layer_norm_forward(s64, _f64(w), _f64(b), eps)
    _check_forward(_h(y), y_own, s64, w, b, eps)
    dx, dres, dw, db = kcuda.layer_norm.add_layer_norm_backward(_d(gs), _d(g), _d(x), _d(r), _d(w), saved)
    assert dx is dres
    ref_grads = ref.add_layer_norm_backward(_f64(gs), _f64(g), s64, np.zeros_like(s64), _f64(w),
                                           ref.layer_norm_forward(s64, None, None, eps)[1])
    _check_backward(_h(dx), _h(dw), _h(db), (ref_grads[0], ref_grads[2], ref_grads[3]), s64, g, w, eps,
                    extra_dx=None if gs is None else _f64(gs))


@pytest.mark.parametrize("N,C", [(4099, 100), (5000, 768), (6000, 1031), (16384, 384)])
def test_many_rows_per_block(N, C):
    """Enough rows that each backward block loops over several (more rows than 8 * 512 chunks)."""
    eps = 1e-5
    _, x, g, w, b = _draw(7, (N,), C, 1.0, 1.0, "wb")
    y, saved = kcuda.layer_norm.layer_norm_forward(_d(x), _d(w), _d(b), eps)
    y_ref, saved_ref = ref.layer_norm_forward(_f64(x), _f64(w), _f64(b), eps)
    _check_forward(_h(y), y_ref, _f64(x), w, b, eps)
    dx, dw, db = kcuda.layer_norm.layer_norm_backward(_d(g), _d(x), _d(w), saved)
    ref_grads = ref.layer_norm_backward(_f64(g), _f64(x), _f64(w), saved_ref)
    _check_backward(_h(dx), _h(dw), _h(db), ref_grads, _f64(x), g, w, eps)


def test_misaligned_takes_block_path():
    """Arrays 4 bytes off a 16-byte boundary (C % 4 == 0) fall back to the block kernel: same values."""
    c = cp()
    _, x, g, w, b = _draw(3, (33,), 64, 1.0, 0.0, "wb")
    flat = c.empty(x.size + 1, c.float32)
    xs = flat[1:].reshape(x.shape)
    xs[...] = c.asarray(x)
    y1, saved = kcuda.layer_norm.layer_norm_forward(xs, _d(w), _d(b), 1e-5)
    y_ref, saved_ref = ref.layer_norm_forward(_f64(x), _f64(w), _f64(b), 1e-5)
    _check_forward(_h(y1), y_ref, _f64(x), w, b, 1e-5)
    dx, dw, db = kcuda.layer_norm.layer_norm_backward(_d(g), xs, _d(w), saved)
    _check_backward(_h(dx), _h(dw), _h(db), ref.layer_norm_backward(_f64(g), _f64(x), _f64(w), saved_ref),
                    _f64(x), g, w, 1e-5)


def test_deterministic():
    _, x, g, w, b = _draw(11, (3000,), 768, 1.0, 0.0, "wb")
    y, saved = kcuda.layer_norm.layer_norm_forward(_d(x), _d(w), _d(b), 1e-5)
    first = [_h(a) for a in kcuda.layer_norm.layer_norm_backward(_d(g), _d(x), _d(w), saved)]
    second = [_h(a) for a in kcuda.layer_norm.layer_norm_backward(_d(g), _d(x), _d(w), saved)]
    for a, bb in zip(first, second):
        np.testing.assert_array_equal(a, bb)


def test_errors_name_the_argument():
    c = cp()
    x = c.ones((4, 6), c.float32)
    w = c.ones(6, c.float32)
    with pytest.raises(ValueError, match=r"layer_norm_forward: weight: expected shape \(6,\)"):
        kcuda.layer_norm.layer_norm_forward(x, c.ones(5, c.float32), None, 1e-5)
    with pytest.raises(TypeError, match="layer_norm_forward: x: expected dtype float32"):
        kcuda.layer_norm.layer_norm_forward(x.astype(c.float64), w, None, 1e-5)
    with pytest.raises(ValueError, match="layer_norm_forward: x must be a cupy array"):
        kcuda.layer_norm.layer_norm_forward(c.ones((4, 0), c.float32), None, None, 1e-5)
    with pytest.raises(ValueError, match="layer_norm_forward: x: expected a C-contiguous array"):
        kcuda.layer_norm.layer_norm_forward(c.ones((6, 4), c.float32).T, w, None, 1e-5)
    y, saved = kcuda.layer_norm.layer_norm_forward(x, w, None, 1e-5)
    with pytest.raises(ValueError, match="layer_norm_backward: saved must be the tuple"):
        kcuda.layer_norm.layer_norm_backward(y, x, w, saved[:1])
    with pytest.raises(ValueError, match=r"layer_norm_backward: grad: expected shape \(4, 6\)"):
        kcuda.layer_norm.layer_norm_backward(c.ones((4, 5), c.float32), x, w, saved)
    with pytest.raises(ValueError, match=r"add_layer_norm_forward: residual: expected shape \(4, 6\)"):
        kcuda.layer_norm.add_layer_norm_forward(x, c.ones((4, 5), c.float32), w, None, 1e-5)
    (s, y), saved = kcuda.layer_norm.add_layer_norm_forward(x, x, w, None, 1e-5)
    with pytest.raises(ValueError, match=r"add_layer_norm_backward: saved mean: expected shape \(4,\)"):
        kcuda.layer_norm.add_layer_norm_backward(None, y, x, x, w, (s, c.ones(3, c.float32), saved[2]))


def test_autograd_through_functional():
    """F.layer_norm / F.add_layer_norm on cuda tensors vs the same on the CPU."""
    import tinygpt.functional as F

    rng = np.random.default_rng(4)
    x = rng.standard_normal((3, 5, 48)).astype(np.float32)
    r = rng.standard_normal((3, 5, 48)).astype(np.float32)
    w = rng.standard_normal(48).astype(np.float32)
    b = rng.standard_normal(48).astype(np.float32)
    res = {}
    for device in ("cpu", "cuda"):
        ts = [tg.tensor(a, requires_grad=True, device=device) for a in (x, r, w, b)]
        s, y = F.add_layer_norm(*ts)
        z = F.layer_norm(y * 2.0 + s, ts[2], ts[3])
        (z * z).sum().backward()
        res[device] = [z.numpy()] + [t.grad.numpy() for t in ts]
    for a, bb in zip(res["cpu"], res["cuda"]):
        np.testing.assert_allclose(bb, a, rtol=1e-4, atol=1e-4)
