"""layer_norm and the fused add + layer_norm (reference.py, csrc/cpu/layer_norm.cpp, csrc/cuda/layernorm.cu)
against the float64 reference, on every implementation; F.add_layer_norm's multi-output autograd.

Tolerances (float32 kernel, float64 reference on the float32 inputs cast up): each x - mean rounds to
float32, so an element's error is ~eps32 max|x_row| rstd (the row's condition number `cond`: a row with
a large common offset and a small spread loses the offset's low bits, as any float32 layernorm does)
plus sums of C float32 terms (~sqrt(C) eps32 in practice). So y and dx are within
K eps32 sqrt(C) scale, `scale` the magnitude they are built from (kernel_checks.assert_layer_norm_*).
With K = 1, over 6000 draws on the CPU the worst err / tolerance was 0.67 (y), 0.72 (dx), 1.25
(dweight), 0.48 (dbias); K = 4 leaves a 3x margin and still catches any real bug (O(1) relative).
dweight and dbias sum N rows: the CPU in double (K eps32 sum|g| (1 + cond)); CUDA in float32 (per-lane
serial, then 8 warps, then the chunks) and the float32 reference with NumPy's sums, whose worst case
in any order adds N eps32 of the sum of |terms|: (K + N) eps32 sum|g| (1 + cond) (SUM_TERMS).
The GPU sums a row in per-lane serial chunks (<= 32 terms) then a 5-level shuffle tree: no larger
than the CPU's error. Fused add: s = x + r is one float32 rounding of the exact sum; the CPU's and the
reference's y are checked against the layernorm of the exact sum (the rounding of s, eps32 |s| <=
eps32 cond in y, is inside the (1 + cond) term), CUDA's against the layernorm of its own s (EXACT_SUM).
"""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import tinygpt as tg
import tinygpt.functional as F
from tinygpt import kernels
from tinygpt.autograd import Function
from tinygpt.kernels import reference as ref
from tinygpt.nn import Block

from helpers import check_grads, compare_with_torch, rng_arrays, seeds, shapes
from impls import CPU
from kernel_checks import LN_EPS32 as EPS32
from kernel_checks import LN_K as K
from kernel_checks import assert_layer_norm_backward, assert_layer_norm_forward
from kernel_checks import assert_within as _check
from kernel_checks import f64 as _f64
from kernel_checks import layernorm_problem as _draw
from kernel_checks import layernorm_row_terms as _row_terms
from refs import F32_GRAD, T64, np_layer_norm, tf

pytestmark = pytest.mark.usefixtures("seeded")  # every test starts from tg.manual_seed(0)

SUM_TERMS = {"cpu-avx512": lambda N: K, "cpu-avx2": lambda N: K, "cpu-baseline": lambda N: K,
             "default": lambda N: K + N}
FLOOR = {"cuda": 1e-30, "default": 0.0}  # CUDA: an absolute floor for outputs that underflow
EXACT_SUM = {"cuda": False, "default": True}

LEADING = st.sampled_from([(1,), (2,), (3,), (7,), (13,), (31,), (64,), (97,), (2, 3), (3, 17), (2, 2, 5)])
# CUDA's warp-per-row path: C % 4 == 0 and C <= 1024; its block path: the rest (odd C, C > 1024)
WIDTHS = st.sampled_from([1, 2, 3, 4, 5, 7, 8, 13, 16, 17, 31, 61, 64, 127, 128, 131, 257, 384, 512, 768, 1020,
                          1024, 1028, 1031, 2048])
SCALES = st.sampled_from([1e-3, 1.0, 30.0, 1e4])
OFFSETS = st.sampled_from([0.0, 1.0, 10.0, 300.0])  # in units of the scale: conditioning
AFFINE = st.sampled_from(["wb", "w", "b", "none"])


def _check_forward(impl, y, y_ref, s64, w, b, eps):
    assert_layer_norm_forward(impl.host(y), y_ref, s64, w, b, eps, floor=impl.limit(FLOOR))


def _check_backward(impl, grads, ref_grads, s64, g, w, eps, extra_dx=None):
    dx, dw, db = impl.host(tuple(grads))
    assert_layer_norm_backward(dx, dw, db, ref_grads, s64, g, w, eps, extra_dx, floor=impl.limit(FLOOR),
                              sum_terms=impl.limit(SUM_TERMS))


def _check_stats(impl, saved, s64, eps):
    """The saved (mean, rstd): (N,) float32 on the native kernels ((..., 1) on the reference)."""
    mean, rstd = impl.host(tuple(saved))
    N = s64.size // s64.shape[-1]
    if impl.native:
        assert mean.shape == rstd.shape == (N,)
    assert mean.dtype == rstd.dtype == np.float32
    mean, rstd = mean.reshape(N), rstd.reshape(N)
    r64, cond = _row_terms(s64, eps)
    m64 = s64.mean(axis=-1).reshape(N)
    root_c = np.sqrt(s64.shape[-1])
    _check("mean", mean, m64, K * EPS32 * root_c * np.abs(s64).max(axis=-1).reshape(N) + 1e-30)
    # x - mean carries eps32 max|x| = eps32 cond std of error, relative to std: eps32 cond
    _check("rstd", rstd, r64.reshape(N), K * EPS32 * root_c * (1 + cond.reshape(N)) * r64.reshape(N))


def check_layer_norm(impl, x, g, w, b, eps, offset=0):
    k = impl.kernel("layer_norm")
    xd, wd = impl.to(x, offset), impl.to(w)
    y, saved = k.forward(xd, wd, impl.to(b), eps)
    y_ref, saved_ref = ref.layer_norm_forward(_f64(x), _f64(w), _f64(b), eps)
    assert impl.host(y).dtype == np.float32
    _check_forward(impl, y, y_ref, _f64(x), w, b, eps)
    _check_stats(impl, saved, _f64(x), eps)
    grads = k.backward(impl.to(g, offset), xd, wd, saved)
    _check_backward(impl, grads, ref.layer_norm_backward(_f64(g), _f64(x), _f64(w), saved_ref), _f64(x), g, w, eps)


def check_add_layer_norm(impl, x, r, g, gs, w, b, eps):
    k = impl.kernel("add_layer_norm")
    xd, rd, wd = impl.to(x), impl.to(r), impl.to(w)
    (s, y), saved = k.forward(xd, rd, wd, impl.to(b), eps)
    s = impl.host(s)
    s_exact = _f64(x) + _f64(r)  # exact: float32 sums are exact in float64
    _check("s", s, s_exact, 0.5 * EPS32 * np.abs(s_exact) + 1e-45)  # one float32 rounding
    s64 = s_exact if impl.limit(EXACT_SUM) else s.astype(np.float64)  # module doc
    (_, y_ref), saved_ref = ref.add_layer_norm_forward(s64, np.zeros_like(s64), _f64(w), _f64(b), eps)
    _check_forward(impl, y, y_ref, s64, w, b, eps)
    dx, dres, dw, db = k.backward(impl.to(gs), impl.to(g), xd, rd, wd, saved)
    assert dx is dres  # d(x + r)/dx == d(x + r)/dr: the one array
    dx_ref, _, dw_ref, db_ref = ref.add_layer_norm_backward(_f64(gs), _f64(g), s64, np.zeros_like(s64), _f64(w),
                                                            saved_ref)
    _check_backward(impl, (dx, dw, db), (dx_ref, dw_ref, db_ref), s64, g, w, eps, extra_dx=_f64(gs))


@given(seed=st.integers(0, 2**32 - 1), lead=LEADING, C=WIDTHS, scale=SCALES, offset=OFFSETS, affine=AFFINE,
       eps=st.sampled_from([1e-5, 1e-6]))
def test_layer_norm(impl, seed, lead, C, scale, offset, affine, eps):
    _, x, g, w, b = _draw(seed, lead, C, scale, offset, affine)
    check_layer_norm(impl, x, g, w, b, eps)


@given(seed=st.integers(0, 2**32 - 1), lead=LEADING, C=WIDTHS, scale=SCALES, offset=OFFSETS, affine=AFFINE,
       with_grad_s=st.booleans())
def test_add_layer_norm(impl, seed, lead, C, scale, offset, affine, with_grad_s):
    rng, x, g, w, b = _draw(seed, lead, C, scale, offset, affine)
    r = (rng.standard_normal(x.shape) * scale).astype(np.float32)
    gs = (rng.standard_normal(x.shape) * rng.choice([1e-2, 1.0, 1e3])).astype(np.float32) if with_grad_s else None
    check_add_layer_norm(impl, x, r, g, gs, w, b, 1e-5)


def test_fixed_shapes(impl):
    """A few fixed shapes on every implementation (the CPU's per-ISA copies included): one element,
    odd widths, GPT-2's 768."""
    rng = np.random.default_rng(0)
    for N, C in [(1, 1), (3, 17), (33, 768), (70, 131)]:
        x, r, g, gs = (rng.standard_normal((N, C)).astype(np.float32) for _ in range(4))
        w, b = (rng.standard_normal(C).astype(np.float32) for _ in range(2))
        check_layer_norm(impl, x, g, w, b, 1e-5)
        check_add_layer_norm(impl, x, r, g, gs, w, b, 1e-5)


LARGE = {"cpu": [(5000, 256), (2, 701, 769)],  # > 2^20 elements: rows split over OpenMP threads
         # CUDA: enough rows that each backward block loops over several (more rows than 8 * 512 chunks)
         "cuda": [(4099, 100), (5000, 768), (6000, 1031), (16384, 384)]}


def test_large(large_impl):
    for shape in large_impl.limit(LARGE):
        rng, x, g, w, b = _draw(7, shape[:-1], shape[-1], 1.0, 1.0, "wb")
        check_layer_norm(large_impl, x, g, w, b, 1e-5)
        if large_impl.device == "cpu":
            r, gs = (rng.standard_normal(shape).astype(np.float32) for _ in range(2))
            check_add_layer_norm(large_impl, x, r, g, gs, w, b, 1e-5)


def test_large_offset_rows_stay_accurate(cpu_impl):
    """Rows 1e4 + N(0, 1): a naive float32 E[x^2] - E[x]^2 variance would be garbage here."""
    rng = np.random.default_rng(0)
    x = (1e4 + rng.standard_normal((64, 768))).astype(np.float32)
    y, (mean, rstd) = CPU.layer_norm_forward(x, None, None, 1e-5)
    y_ref, (mean_ref, rstd_ref) = ref.layer_norm_forward(x.astype(np.float64), None, None, 1e-5)
    np.testing.assert_allclose(rstd, rstd_ref[:, 0], rtol=1e-4)
    # cond ~ 1e4: y may lose ~log2(1e4) bits, the inherent float32 limit (ulp(1e4) = 1e-3).
    assert np.abs(y - y_ref).max() < 2e-3


def test_cuda_misaligned_takes_block_path(cuda_impl):
    """Arrays 4 bytes off a 16-byte boundary (C % 4 == 0) fall back to the block kernel: same bounds."""
    _, x, g, w, b = _draw(3, (33,), 64, 1.0, 0.0, "wb")
    check_layer_norm(cuda_impl, x, g, w, b, 1e-5, offset=1)


def test_cpu_backward_is_deterministic_and_independent_of_threads(cpu_impl):
    rng = np.random.default_rng(1)
    x, g = (rng.standard_normal((5000, 256)).astype(np.float32) for _ in range(2))  # > 2^20: parallel
    w = rng.standard_normal(256).astype(np.float32)
    _, saved = CPU.layer_norm_forward(x, w, None, 1e-5)
    before = CPU.get_num_threads()
    try:
        results = []
        for threads in (1, 2, 3):
            CPU.set_num_threads(threads)
            results.append(CPU.layer_norm_backward(g, x, w, saved))
    finally:
        CPU.set_num_threads(before)
    for dx, dw, db in results[1:]:
        assert np.array_equal(dx, results[0][0])
        assert np.array_equal(dw, results[0][1]) and np.array_equal(db, results[0][2])


def test_cuda_deterministic(cuda_impl):
    k, to, host = cuda_impl.kernel("layer_norm"), cuda_impl.to, cuda_impl.host
    _, x, g, w, b = _draw(11, (3000,), 768, 1.0, 0.0, "wb")
    y, saved = k.forward(to(x), to(w), to(b), 1e-5)
    first = host(k.backward(to(g), to(x), to(w), saved))
    second = host(k.backward(to(g), to(x), to(w), saved))
    for a, bb in zip(first, second):
        np.testing.assert_array_equal(a, bb)


def test_empty_rows(cpu_impl):
    x = np.zeros((0, 8), np.float32)
    w = np.ones(8, np.float32)
    y, saved = CPU.layer_norm_forward(x, w, w, 1e-5)
    assert y.shape == (0, 8)
    dx, dw, db = CPU.layer_norm_backward(x, x, w, saved)
    assert dx.shape == (0, 8) and not dw.any() and not db.any()


# ----------------------------------------------------------------------------- argument errors
def _ln_args(N=4, C=8):
    x = np.ones((N, C), np.float32)
    x[:, 0] = 2
    return x, np.ones(C, np.float32), np.zeros(C, np.float32)


@pytest.mark.parametrize("bad, match", [
    (lambda x, w, b: (x.astype(np.float64), w, b), "layer_norm_forward: x must be float32"),
    (lambda x, w, b: (np.ones((4, 16), np.float32)[:, ::2], w, b), "layer_norm_forward: x must be C-contiguous"),
    (lambda x, w, b: (x, np.ones(7, np.float32), b), r"layer_norm_forward: weight must have shape \(8,\), got \(7,\)"),
    (lambda x, w, b: (x, w, np.ones((1, 8), np.float32)), r"layer_norm_forward: bias must have shape \(8,\)"),
    (lambda x, w, b: (x, w.astype(np.float16), b), "layer_norm_forward: weight must be float32"),
    (lambda x, w, b: (np.ones((3, 0), np.float32), w, b), "layer_norm_forward: x must have a non-empty last axis"),
    (lambda x, w, b: (np.ones((), np.float32), w, b), "layer_norm_forward: x must have at least 1"),
])
def test_cpu_layer_norm_forward_errors(cpu_impl, bad, match):
    with pytest.raises(ValueError, match=match):
        CPU.layer_norm_forward(*bad(*_ln_args()), 1e-5)


def test_cpu_layer_norm_backward_errors(cpu_impl):
    x, w, b = _ln_args()
    _, saved = CPU.layer_norm_forward(x, w, b, 1e-5)
    with pytest.raises(ValueError, match=r"layer_norm_backward: grad must have shape \(4, 8\), got \(4, 7\)"):
        CPU.layer_norm_backward(np.ones((4, 7), np.float32), x, w, saved)
    with pytest.raises(ValueError, match="layer_norm_backward: grad must be float32"):
        CPU.layer_norm_backward(x.astype(np.float64), x, w, saved)
    with pytest.raises(ValueError, match="layer_norm_backward: saved must be the tuple"):
        CPU.layer_norm_backward(x, x, w, saved[:1])
    with pytest.raises(ValueError, match=r"layer_norm_backward: saved mean must have shape \(4,\)"):
        CPU.layer_norm_backward(x, x, w, (saved[0][:3], saved[1]))
    with pytest.raises(ValueError, match="layer_norm_backward: saved rstd must be a numpy array"):
        CPU.layer_norm_backward(x, x, w, (saved[0], [1.0, 2.0, 3.0, 4.0]))


def test_cpu_add_layer_norm_errors(cpu_impl):
    x, w, b = _ln_args()
    with pytest.raises(ValueError, match=r"add_layer_norm_forward: residual must have shape \(4, 8\), got \(1, 8\)"):
        CPU.add_layer_norm_forward(x, x[:1], w, b, 1e-5)
    with pytest.raises(ValueError, match="add_layer_norm_forward: residual must be float32"):
        CPU.add_layer_norm_forward(x, x.astype(np.float64), w, b, 1e-5)
    (s, y), saved = CPU.add_layer_norm_forward(x, x, w, b, 1e-5)
    with pytest.raises(ValueError, match=r"add_layer_norm_backward: grad_s must have shape \(4, 8\)"):
        CPU.add_layer_norm_backward(x[:2], x, x, x, w, saved)
    with pytest.raises(ValueError, match="add_layer_norm_backward: grad_y must be C-contiguous"):
        CPU.add_layer_norm_backward(None, np.ones((8, 4), np.float32).T, x, x, w, saved)
    with pytest.raises(ValueError, match="add_layer_norm_backward: saved must be the tuple its forward returned"):
        CPU.add_layer_norm_backward(None, x, x, x, w, saved[1:])


def test_cuda_errors_name_the_argument(cuda_impl):
    c = tg.backend.cupy()
    ln, add = cuda_impl.kernel("layer_norm"), cuda_impl.kernel("add_layer_norm")
    x = c.ones((4, 6), c.float32)
    w = c.ones(6, c.float32)
    with pytest.raises(ValueError, match=r"layer_norm_forward: weight: expected shape \(6,\)"):
        ln.forward(x, c.ones(5, c.float32), None, 1e-5)
    with pytest.raises(TypeError, match="layer_norm_forward: x: expected dtype float32"):
        ln.forward(x.astype(c.float64), w, None, 1e-5)
    with pytest.raises(ValueError, match="layer_norm_forward: x must be a cupy array"):
        ln.forward(c.ones((4, 0), c.float32), None, None, 1e-5)
    with pytest.raises(ValueError, match="layer_norm_forward: x: expected a C-contiguous array"):
        ln.forward(c.ones((6, 4), c.float32).T, w, None, 1e-5)
    y, saved = ln.forward(x, w, None, 1e-5)
    with pytest.raises(ValueError, match="layer_norm_backward: saved must be the tuple"):
        ln.backward(y, x, w, saved[:1])
    with pytest.raises(ValueError, match=r"layer_norm_backward: grad: expected shape \(4, 6\)"):
        ln.backward(c.ones((4, 5), c.float32), x, w, saved)
    with pytest.raises(ValueError, match=r"add_layer_norm_forward: residual: expected shape \(4, 6\)"):
        add.forward(x, c.ones((4, 5), c.float32), w, None, 1e-5)
    (s, y), saved = add.forward(x, x, w, None, 1e-5)
    with pytest.raises(ValueError, match=r"add_layer_norm_backward: saved mean: expected shape \(4,\)"):
        add.backward(None, y, x, x, w, (s, c.ones(3, c.float32), saved[2]))


# ----------------------------------------------------------------------------- dispatch and autograd
def test_dispatch_picks_native_only_for_float32_contiguous():
    if not kernels.native_enabled():
        pytest.skip("tinygpt._C is not built (or TINYGPT_NATIVE=0)")
    x, w, b = _ln_args()
    with kernels.use_native(True):  # (also under TINYGPT_NATIVE=0)
        assert kernels.select("layer_norm", x, w, b).name == "native-cpu"
        assert kernels.select("add_layer_norm", x, x, w, None).name == "native-cpu"
        assert kernels.select("layer_norm", x.astype(np.float64), w, b).name == "reference"
        assert kernels.select("layer_norm", np.ones((4, 16), np.float32)[:, ::2], w, b).name == "reference"
    with kernels.use_native(False):
        assert kernels.select("layer_norm", x, w, b).name == "reference"
        assert kernels.select("add_layer_norm", x, x, w, b).name == "reference"


def test_float64_and_noncontiguous_inputs_fall_back_to_reference():
    rng = np.random.default_rng(2)
    x64 = rng.standard_normal((5, 12))
    w = tg.Tensor(np.ones(12, np.float32))
    y = F.layer_norm(tg.Tensor(x64), w, None)  # float64 input: the reference runs (float64 out)
    assert y.dtype == np.float64
    y_ref, _ = ref.layer_norm_forward(x64, np.ones(12, np.float32), None, 1e-5)
    np.testing.assert_array_equal(y.numpy(), y_ref)
    big = rng.standard_normal((5, 24)).astype(np.float32)
    xt = tg.Tensor(big[:, ::2])  # non-contiguous: functional makes it contiguous, native runs
    with kernels.use_native(True):
        y = F.layer_norm(xt, w, None)
    np.testing.assert_allclose(y.numpy(),
                               ref.layer_norm_forward(np.ascontiguousarray(big[:, ::2]), np.ones(12, np.float32),
                                                     None, 1e-5)[0], rtol=1e-5, atol=1e-5)


def _autograd(fn, arrays, native):
    with kernels.use_native(native):
        ts = [None if a is None else tg.Tensor(a.copy(), requires_grad=True) for a in arrays]
        outs = fn(*ts)
        outs = outs if isinstance(outs, tuple) else (outs,)
        rng = np.random.default_rng(5)
        loss = sum((o * tg.Tensor(rng.standard_normal(o.shape).astype(np.float32))).sum() for o in outs)
        loss.backward()
        return [o.numpy() for o in outs], [None if t is None else t.grad.numpy() for t in ts]


@pytest.mark.parametrize("bias", [True, False])
def test_functional_layer_norm_native_matches_reference(bias):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 7, 48)).astype(np.float32)
    w = rng.standard_normal(48).astype(np.float32)
    b = rng.standard_normal(48).astype(np.float32) if bias else None
    outs_n, grads_n = _autograd(lambda x, w, b: F.layer_norm(x, w, b), [x, w, b], True)
    outs_r, grads_r = _autograd(lambda x, w, b: F.layer_norm(x, w, b), [x, w, b], False)
    for a, c in zip(outs_n + grads_n, outs_r + grads_r):
        if c is not None:
            np.testing.assert_allclose(a, c, rtol=1e-4, atol=1e-5)


def test_functional_add_layer_norm_native_matches_reference():
    rng = np.random.default_rng(4)
    x, r = (rng.standard_normal((3, 5, 40)).astype(np.float32) for _ in range(2))
    w, b = (rng.standard_normal(40).astype(np.float32) for _ in range(2))
    fn = lambda x, r, w, b: F.add_layer_norm(x, r, w, b)  # noqa: E731
    outs_n, grads_n = _autograd(fn, [x, r, w, b], True)
    outs_r, grads_r = _autograd(fn, [x, r, w, b], False)
    for a, c in zip(outs_n + grads_n, outs_r + grads_r):
        np.testing.assert_allclose(a, c, rtol=1e-4, atol=1e-5)


@pytest.mark.gpu
def test_functional_on_cuda_matches_cpu(cuda):
    """F.layer_norm / F.add_layer_norm on cuda tensors vs the same on the CPU."""
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


def test_gpt_block_native_matches_reference():
    """A pre-norm GPT forward + backward gives the same loss and grads on both paths."""
    cfg = tg.GPTConfig(vocab_size=17, block_size=8, n_layer=2, n_head=2, n_embd=16)
    idx = np.random.default_rng(6).integers(0, 17, (2, 8))
    results = []
    for native in (True, False):
        tg.manual_seed(0)
        model = tg.GPT(cfg)
        with kernels.use_native(native):
            _, loss = model(idx, idx)
            loss.backward()
        results.append((loss.item(), {n: p.grad.numpy() for n, p in model.named_parameters()}))
    assert abs(results[0][0] - results[1][0]) < 1e-5
    for name, g in results[0][1].items():
        np.testing.assert_allclose(g, results[1][1][name], rtol=1e-3, atol=1e-5, err_msg=name)


# ----------------------------------------------------------------------------- tinygpt.functional: float64 references, finite differences, torch
AFFINE_FLAGS = [(True, True), (True, False), (False, True), (False, False)]


@pytest.mark.parametrize("affine", AFFINE_FLAGS)
@given(seed=seeds, lead=shapes(0, 2, max_side=3), C=st.integers(2, 6))
def test_layer_norm_float64_gradcheck(affine, seed, lead, C):
    has_w, has_b = affine
    x, w, b = rng_arrays(seed, lead + (C,), (C,), (C,))
    arrays_ = [x] + ([w] if has_w else []) + ([b] if has_b else [])

    def fn(x_, *p):
        p = list(p)
        return F.layer_norm(x_, p.pop(0) if has_w else None, p.pop(0) if has_b else None)

    out = check_grads(fn, *arrays_)
    np.testing.assert_allclose(out, np_layer_norm(x, w if has_w else None, b if has_b else None), rtol=1e-10,
                               atol=1e-12)


def test_layer_norm_eps():
    (x,) = rng_arrays(0, (3, 4), lo=-1e-2, hi=1e-2)  # small variance: eps matters
    for eps in (1e-5, 1e-2):
        np.testing.assert_allclose(F.layer_norm(tg.Tensor(x), eps=eps).numpy(), np_layer_norm(x, eps=eps),
                                   rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("affine", AFFINE_FLAGS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_layer_norm_torch(kernel_impl, dtype, affine):
    has_w, has_b = affine
    x, w, b = rng_arrays(1, (2, 3, 8), (8,), (8,))
    arrays_ = [x] + ([w] if has_w else []) + ([b] if has_b else [])

    def call(fn, x_, *p):
        p = list(p)
        return fn(x_, p.pop(0) if has_w else None, p.pop(0) if has_b else None)

    tol = T64 if dtype == np.float64 else F32_GRAD
    compare_with_torch(lambda *a: call(F.layer_norm, *a),
                       lambda *a: call(lambda x_, w_, b_: tf().layer_norm(x_, (8,), w_, b_), *a),
                       *arrays_, dtype=dtype, **tol)


def test_layer_norm_param_shape_error():
    with pytest.raises(ValueError, match=r"layer_norm.*weight.*\(4,\)"):
        F.layer_norm(tg.randn(2, 4), tg.randn(3))


# ----------------------------------------------------------------------------- F.add_layer_norm, multi-output autograd
# (float64 inputs: the reference kernels, with or without the native extension)
def _fd_gradcheck(fn, arrays, seed=0, h=1e-6, tol=1e-6):
    """Central finite differences of L = sum_k <outputs_k, W_k> (random W) in float64."""
    rng = np.random.default_rng(seed)
    outs = fn(*[tg.Tensor(a) for a in arrays])
    weights = [rng.standard_normal(o.shape) for o in outs]

    def loss(*arrs):
        with tg.no_grad():
            return sum(float((o.numpy() * w).sum()) for o, w in zip(fn(*[tg.Tensor(a) for a in arrs]), weights))

    ts = [tg.Tensor(a.copy(), requires_grad=True) for a in arrays]
    total = sum((o * tg.Tensor(w)).sum() for o, w in zip(fn(*ts), weights))
    total.backward()
    for i, (a, t) in enumerate(zip(arrays, ts)):
        num = np.zeros_like(a)
        for j in np.ndindex(a.shape):
            plus, minus = [x.copy() for x in arrays], [x.copy() for x in arrays]
            plus[i][j] += h
            minus[i][j] -= h
            num[j] = (loss(*plus) - loss(*minus)) / (2 * h)
        np.testing.assert_allclose(t.grad.numpy(), num, rtol=tol, atol=tol, err_msg=f"input {i}")


@given(seed=st.integers(0, 2**32 - 1), shape=st.sampled_from([(1, 1), (2, 3), (3, 5), (2, 2, 4), (1, 7)]),
       affine=st.sampled_from(["wb", "w", "b", "none"]),
       use=st.sampled_from(["both", "s", "y"]))
def test_add_layer_norm_gradcheck_float64(seed, shape, affine, use):
    rng = np.random.default_rng(seed)
    C = shape[-1]
    x, r = rng.standard_normal(shape), rng.standard_normal(shape)
    arrays = [x, r]
    if "w" in affine:
        arrays.append(rng.standard_normal(C))
    if "b" in affine:
        arrays.append(rng.standard_normal(C))

    def fn(x, r, *wb):
        w = wb[0] if "w" in affine else None
        b = wb[-1] if "b" in affine else None
        s, y = F.add_layer_norm(x, r, w, b)
        return {"both": (s, y), "s": (s,), "y": (y,)}[use]

    if use == "s" and len(arrays) > 2:  # weight/bias get no gradient: check x, r only
        arrays_checked = arrays[:2]
        extra = arrays[2:]
        _fd_gradcheck(lambda x, r: fn(x, r, *[tg.Tensor(e) for e in extra]), arrays_checked, seed)
    else:
        _fd_gradcheck(fn, arrays, seed)


def test_add_layer_norm_values_match_unfused():
    rng = np.random.default_rng(0)
    x, r = rng.standard_normal((2, 3, 8)), rng.standard_normal((2, 3, 8))
    w, b = rng.standard_normal(8), rng.standard_normal(8)
    s, y = F.add_layer_norm(tg.Tensor(x), tg.Tensor(r), tg.Tensor(w), tg.Tensor(b), eps=1e-3)
    np.testing.assert_allclose(s.numpy(), x + r)
    np.testing.assert_allclose(y.numpy(), F.layer_norm(tg.Tensor(x + r), tg.Tensor(w), tg.Tensor(b), 1e-3).numpy())


def test_add_layer_norm_checks_shapes():
    x = tg.Tensor(np.ones((2, 4)))
    with pytest.raises(ValueError, match="add_layer_norm: x .* and residual .* must have the same shape"):
        F.add_layer_norm(x, tg.Tensor(np.ones((1, 4))))
    with pytest.raises(ValueError, match=r"add_layer_norm: weight must have shape \(4,\)"):
        F.add_layer_norm(x, x, tg.Tensor(np.ones(3)))


def test_add_layer_norm_no_grad_outputs():
    x = tg.Tensor(np.ones((2, 4)), requires_grad=True)
    with tg.no_grad():
        s, y = F.add_layer_norm(x, x)
    assert not s.requires_grad and not y.requires_grad and s.is_leaf and y.is_leaf


# ----------------------------------------------------------------------------- multi-output autograd
class _SumDiff(Function):
    """(a + b, a - b): a minimal two-output Function; counts its backward calls."""

    calls = 0

    @staticmethod
    def forward(ctx, a, b):
        return a + b, a - b

    @staticmethod
    def backward(ctx, g_sum, g_diff):
        _SumDiff.calls += 1
        ga = (0 if g_sum is None else g_sum) + (0 if g_diff is None else g_diff)
        gb = (0 if g_sum is None else g_sum) - (0 if g_diff is None else g_diff)
        return np.asarray(ga, dtype=np.float64), np.asarray(gb, dtype=np.float64)


def test_multi_output_backward_runs_once_with_both_grads():
    a = tg.Tensor(np.array([1.0, 2.0]), requires_grad=True)
    b = tg.Tensor(np.array([3.0, 5.0]), requires_grad=True)
    _SumDiff.calls = 0
    s, d = _SumDiff.apply(a, b)
    # s feeds the loss twice and late (through d's consumer too): backward must wait for it all
    loss = (s * 2.0).sum() + (d * d).sum() + (s * d).sum()
    loss.backward()
    assert _SumDiff.calls == 1
    av, bv = a.numpy(), b.numpy()
    sv, dv = av + bv, av - bv
    g_s, g_d = 2.0 + dv, 2 * dv + sv
    np.testing.assert_allclose(a.grad.numpy(), g_s + g_d)
    np.testing.assert_allclose(b.grad.numpy(), g_s - g_d)


def test_multi_output_unused_output_gets_none():
    a = tg.Tensor(np.array([1.0, 2.0]), requires_grad=True)
    b = tg.Tensor(np.array([3.0, 5.0]), requires_grad=True)
    s, d = _SumDiff.apply(a, b)
    (d * 3.0).sum().backward()  # only d reaches the loss: g_sum is None
    np.testing.assert_allclose(a.grad.numpy(), [3.0, 3.0])
    np.testing.assert_allclose(b.grad.numpy(), [-3.0, -3.0])


def test_multi_output_root_and_retain_grad():
    a = tg.Tensor(np.array([1.0, 2.0]), requires_grad=True)
    b = tg.Tensor(np.array([3.0, 5.0]), requires_grad=True)
    s, d = _SumDiff.apply(a, b)
    s.retain_grad()
    d.retain_grad()
    total = s.sum()
    total.backward()
    np.testing.assert_allclose(s.grad.numpy(), [1.0, 1.0])
    assert d.grad is None
    np.testing.assert_allclose(a.grad.numpy(), [1.0, 1.0])
    # an output as the root of backward
    a.grad = b.grad = None
    s2, d2 = _SumDiff.apply(a, b)
    d2.backward(np.array([1.0, 1.0]))
    np.testing.assert_allclose(b.grad.numpy(), [-1.0, -1.0])


def test_multi_output_chained_calls():
    """Two multi-output calls in a row, outputs crossing: gradients match the closed form."""
    a = tg.Tensor(np.array([0.5, -1.0]), requires_grad=True)
    b = tg.Tensor(np.array([2.0, 0.25]), requires_grad=True)
    s, d = _SumDiff.apply(a, b)
    s2, d2 = _SumDiff.apply(d, s)  # s2 = 2a, d2 = -2b
    ((s2 * s2).sum() + (d2 * s).sum()).backward()
    av, bv = a.numpy(), b.numpy()
    # L = 4a^2 - 2b (a + b)
    np.testing.assert_allclose(a.grad.numpy(), 8 * av - 2 * bv)
    np.testing.assert_allclose(b.grad.numpy(), -2 * av - 4 * bv)


# ----------------------------------------------------------------------------- the Block
def _block_unfused(block, x):
    """The pre-norm block as it was before the fusion: x + attn(ln_1(x)), then + mlp(ln_2(x))."""
    x = x + block.attn(block.ln_1(x))
    return x + block.mlp(block.ln_2(x))


@pytest.mark.parametrize("native", [False, True])
@pytest.mark.parametrize("bias", [True, False])
def test_pre_norm_block_matches_unfused(native, bias):
    if native and not kernels.native_enabled():
        pytest.skip("native kernels not available")
    tg.manual_seed(0)
    block = Block(tg.GPTConfig(vocab_size=5, block_size=8, n_layer=1, n_head=2, n_embd=16, bias=bias, norm="pre"))
    assert [n for n, _ in block.named_parameters() if n.startswith("ln_2")] == (
        ["ln_2.weight", "ln_2.bias"] if bias else ["ln_2.weight"])
    x = np.random.default_rng(1).standard_normal((2, 5, 16)).astype(np.float32)
    w = np.random.default_rng(2).standard_normal((2, 5, 16)).astype(np.float32)
    results = []
    with kernels.use_native(native):
        for fwd in (block, lambda t: _block_unfused(block, t)):
            block.zero_grad()
            xt = tg.Tensor(x, requires_grad=True)
            out = fwd(xt)
            (out * tg.Tensor(w)).sum().backward()
            results.append((out.numpy(), xt.grad.numpy(), {n: p.grad.numpy() for n, p in block.named_parameters()}))
    (o1, g1, p1), (o2, g2, p2) = results
    np.testing.assert_allclose(o1, o2, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(g1, g2, rtol=1e-4, atol=1e-6)
    for name in p1:
        np.testing.assert_allclose(p1[name], p2[name], rtol=1e-4, atol=1e-6, err_msg=name)


def test_post_norm_block_unchanged():
    tg.manual_seed(0)
    block = Block(tg.GPTConfig(vocab_size=5, block_size=8, n_layer=1, n_head=2, n_embd=8, norm="post"))
    x = tg.Tensor(np.random.default_rng(3).standard_normal((1, 4, 8)).astype(np.float32))
    expected = block.ln_1(x + block.attn(x))
    expected = block.ln_2(expected + block.mlp(expected))
    np.testing.assert_array_equal(block(x).numpy(), expected.numpy())
