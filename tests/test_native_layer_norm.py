"""Native CPU layernorm and fused add + layernorm (csrc/cpu/layernorm.cpp) against the reference.

The reference runs in float64 on the float32 inputs cast up; the native kernel in float32.
Tolerances (why they have this form): the native kernel rounds each x - mean to float32, so
an element's error is ~eps32 * max|x_row| * rstd (the row's condition number `cond`: a row
with a large common offset and a small spread loses the offset's low bits, as any float32
layernorm does) plus sums of C float32 terms (error ~ sqrt(C) * eps32 in practice, kept in 16
SIMD lanes). So every check is |native - ref| <= K * eps32 * sqrt(C) * scale, with `scale` the
magnitude the result is built from (below, per output). dweight/dbias are accumulated in
double, so their error is the per-element error of g * xhat summed: K * eps32 * sum|g| (1 + cond).
With K = 1, over 6000 draws of these strategies the worst err / tolerance was 0.67 (y),
0.72 (dx), 1.25 (dweight), 0.48 (dbias); K = 4 leaves a 3x margin and still catches any
real bug (those are O(1) relative errors).
"""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import tinygpt as tg
import tinygpt.functional as F
from tinygpt import kernels
from tinygpt.kernels import reference as ref

from kernel_checks import LN_EPS32 as EPS32
from kernel_checks import assert_layer_norm_backward as _check_backward
from kernel_checks import assert_layer_norm_forward as _check_forward
from kernel_checks import assert_within as _check
from kernel_checks import f64 as _f64
from kernel_checks import layernorm_problem as _draw

CPU = getattr(kernels._native, "cpu", None)
pytestmark = pytest.mark.skipif(
    not (hasattr(CPU, "layer_norm_forward") and hasattr(CPU, "add_layer_norm_forward")),
    reason="tinygpt._C.cpu has no layernorm kernels (extension not built)",
)


LEADING = st.sampled_from([(1,), (2,), (3,), (7,), (13,), (31,), (64,), (97,), (2, 3), (3, 17), (2, 2, 5)])
WIDTHS = st.sampled_from([1, 2, 3, 5, 7, 8, 13, 16, 17, 31, 61, 64, 127, 128, 131, 257, 768])
SCALES = st.sampled_from([1e-3, 1.0, 30.0, 1e4])
OFFSETS = st.sampled_from([0.0, 1.0, 10.0, 300.0])  # in units of the scale: conditioning


# ----------------------------------------------------------------------------- layernorm
@given(seed=st.integers(0, 2**32 - 1), lead=LEADING, C=WIDTHS, scale=SCALES, offset=OFFSETS,
       affine=st.sampled_from(["wb", "w", "b", "none"]), eps=st.sampled_from([1e-5, 1e-6]))
def test_layernorm_matches_reference(seed, lead, C, scale, offset, affine, eps):
    _, x, g, w, b = _draw(seed, lead, C, scale, offset, affine)
    y, saved = CPU.layer_norm_forward(x, w, b, eps)
    y_ref, saved_ref = ref.layer_norm_forward(_f64(x), _f64(w), _f64(b), eps)
    assert y.dtype == np.float32
    _check_forward(y, y_ref, _f64(x), w, b, eps)
    dx, dw, db = CPU.layer_norm_backward(g, x, w, saved)
    ref_grads = ref.layer_norm_backward(_f64(g), _f64(x), _f64(w), saved_ref)
    _check_backward(dx, dw, db, ref_grads, _f64(x), g, w, eps)


# ----------------------------------------------------------------------------- add + layernorm
@given(seed=st.integers(0, 2**32 - 1), lead=LEADING, C=WIDTHS, scale=SCALES, offset=OFFSETS,
       affine=st.sampled_from(["wb", "w", "b", "none"]), with_grad_s=st.booleans())
def test_add_layer_norm_matches_reference(seed, lead, C, scale, offset, affine, with_grad_s):
    eps = 1e-5
    rng, x, g, w, b = _draw(seed, lead, C, scale, offset, affine)
    r = (rng.standard_normal(x.shape) * scale).astype(np.float32)
    gs = (rng.standard_normal(x.shape) * rng.choice([1e-2, 1.0, 1e3])).astype(np.float32) if with_grad_s else None
    (s, y), saved = CPU.add_layer_norm_forward(x, r, w, b, eps)
    (s_ref, y_ref), saved_ref = ref.add_layer_norm_forward(_f64(x), _f64(r), _f64(w), _f64(b), eps)
    # s = x + r: one float32 rounding of the exact sum.
    _check("s", s, s_ref, 0.5 * EPS32 * np.abs(s_ref) + 1e-45)
    # y is layernorm of the float32 s; compare to the float64 layernorm of the exact sum, so
    # the rounding of s (relative eps32 of |s| <= max|s|, i.e. <= eps32 * cond in y) is inside
    # the same (1 + cond) term.
    _check_forward(y, y_ref, s_ref, w, b, eps)
    dx, dres, dw, db = CPU.add_layer_norm_backward(gs, g, x, r, w, saved)
    assert dx is dres
    dx_ref, dres_ref, dw_ref, db_ref = ref.add_layer_norm_backward(_f64(gs), _f64(g), _f64(x), _f64(r), _f64(w),
                                                                  saved_ref)
    _check_backward(dx, dw, db, (dx_ref, dw_ref, db_ref), s_ref, g, w, eps,
                    extra_dx=None if gs is None else gs.astype(np.float64))
    assert dres_ref is dx_ref  # d(x + r)/dx == d(x + r)/dr: both return the one array


def test_large_offset_rows_stay_accurate():
    """Rows 1e4 + N(0, 1): a naive float32 E[x^2] - E[x]^2 variance would be garbage here."""
    rng = np.random.default_rng(0)
    x = (1e4 + rng.standard_normal((64, 768))).astype(np.float32)
    y, (mean, rstd) = CPU.layer_norm_forward(x, None, None, 1e-5)
    y_ref, (mean_ref, rstd_ref) = ref.layer_norm_forward(x.astype(np.float64), None, None, 1e-5)
    np.testing.assert_allclose(rstd, rstd_ref[:, 0], rtol=1e-4)
    # cond ~ 1e4: y may lose ~log2(1e4) bits, the inherent float32 limit (ulp(1e4) = 1e-3).
    assert np.abs(y - y_ref).max() < 2e-3


def test_backward_is_deterministic_and_independent_of_threads():
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


@pytest.mark.parametrize("shape", [(5000, 256), (2, 701, 769)])
def test_parallel_path_matches_reference(shape):
    """Above 2^20 elements the kernels split rows over OpenMP threads (the strategies above stay below)."""
    eps = 1e-5
    rng, x, g, w, b = _draw(7, shape[:-1], shape[-1], 1.0, 1.0, "wb")
    r = rng.standard_normal(shape).astype(np.float32)
    gs = rng.standard_normal(shape).astype(np.float32)
    y, saved = CPU.layer_norm_forward(x, w, b, eps)
    y_ref, saved_ref = ref.layer_norm_forward(_f64(x), _f64(w), _f64(b), eps)
    _check_forward(y, y_ref, _f64(x), w, b, eps)
    _check_backward(*CPU.layer_norm_backward(g, x, w, saved),
                    ref.layer_norm_backward(_f64(g), _f64(x), _f64(w), saved_ref), _f64(x), g, w, eps)
    (s, y), saved = CPU.add_layer_norm_forward(x, r, w, b, eps)
    (s_ref, y_ref), saved_ref = ref.add_layer_norm_forward(_f64(x), _f64(r), _f64(w), _f64(b), eps)
    _check_forward(y, y_ref, s_ref, w, b, eps)
    dx, _, dw, db = CPU.add_layer_norm_backward(gs, g, x, r, w, saved)
    dx_ref, _, dw_ref, db_ref = ref.add_layer_norm_backward(_f64(gs), _f64(g), _f64(x), _f64(r), _f64(w), saved_ref)
    _check_backward(dx, dw, db, (dx_ref, dw_ref, db_ref), s_ref, g, w, eps, extra_dx=_f64(gs))


def test_empty_rows():
    x = np.zeros((0, 8), np.float32)
    w = np.ones(8, np.float32)
    y, saved = CPU.layer_norm_forward(x, w, w, 1e-5)
    assert y.shape == (0, 8)
    dx, dw, db = CPU.layer_norm_backward(x, x, w, saved)
    assert dx.shape == (0, 8) and not dw.any() and not db.any()


# ----------------------------------------------------------------------------- error paths
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
def test_layer_norm_forward_errors(bad, match):
    with pytest.raises(ValueError, match=match):
        CPU.layer_norm_forward(*bad(*_ln_args()), 1e-5)


def test_layer_norm_backward_errors():
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


def test_add_layer_norm_errors():
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


# ----------------------------------------------------------------------------- dispatch
def test_dispatch_picks_native_only_for_float32_contiguous():
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


# ----------------------------------------------------------------------------- autograd level
def _run(fn, arrays, native):
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
    outs_n, grads_n = _run(lambda x, w, b: F.layer_norm(x, w, b), [x, w, b], True)
    outs_r, grads_r = _run(lambda x, w, b: F.layer_norm(x, w, b), [x, w, b], False)
    for a, c in zip(outs_n + grads_n, outs_r + grads_r):
        if c is not None:
            np.testing.assert_allclose(a, c, rtol=1e-4, atol=1e-5)


def test_functional_add_layer_norm_native_matches_reference():
    rng = np.random.default_rng(4)
    x, r = (rng.standard_normal((3, 5, 40)).astype(np.float32) for _ in range(2))
    w, b = (rng.standard_normal(40).astype(np.float32) for _ in range(2))
    fn = lambda x, r, w, b: F.add_layer_norm(x, r, w, b)  # noqa: E731
    outs_n, grads_n = _run(fn, [x, r, w, b], True)
    outs_r, grads_r = _run(fn, [x, r, w, b], False)
    for a, c in zip(outs_n + grads_n, outs_r + grads_r):
        np.testing.assert_allclose(a, c, rtol=1e-4, atol=1e-5)


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


_ISA_SCRIPT = r"""
import numpy as np
from tinygpt import kernels
from tinygpt.kernels import reference as ref
cpu = kernels._native.cpu
rng = np.random.default_rng(0)
for N, C in [(1, 1), (3, 17), (33, 768), (70, 131)]:
    x, r, g, gs = (rng.standard_normal((N, C)).astype(np.float32) for _ in range(4))
    w, b = (rng.standard_normal(C).astype(np.float32) for _ in range(2))
    f = lambda a: a.astype(np.float64)
    y, saved = cpu.layer_norm_forward(x, w, b, 1e-5)
    y_ref, saved_ref = ref.layer_norm_forward(f(x), f(w), f(b), 1e-5)
    got = (y,) + cpu.layer_norm_backward(g, x, w, saved)
    want = (y_ref,) + ref.layer_norm_backward(f(g), f(x), f(w), saved_ref)
    (s, y), saved = cpu.add_layer_norm_forward(x, r, w, b, 1e-5)
    (s_ref, y_ref), saved_ref = ref.add_layer_norm_forward(f(x), f(r), f(w), f(b), 1e-5)
    got += (s, y) + cpu.add_layer_norm_backward(gs, g, x, r, w, saved)
    want += (s_ref, y_ref) + ref.add_layer_norm_backward(f(gs), f(g), f(x), f(r), f(w), saved_ref)
    for a, c in zip(got, want):
        np.testing.assert_allclose(a, c, rtol=2e-4, atol=2e-4 * max(1.0, np.abs(c).max()))
print(cpu.isa())
"""


@pytest.mark.parametrize("isa", ["baseline", "avx2"])
def test_every_compiled_variant(isa):
    """The AVX2 and baseline builds of the kernels (picked with TINYGPT_CPU_ISA) also match."""
    import os  # noqa: PLC0415
    import subprocess  # noqa: PLC0415
    import sys  # noqa: PLC0415

    root = os.path.dirname(os.path.dirname(os.path.abspath(tg.__file__)))  # this tinygpt, wherever it is
    env = dict(os.environ, TINYGPT_CPU_ISA=isa,
               PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))
    out = subprocess.run([sys.executable, "-c", _ISA_SCRIPT], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[-1] in (isa, "baseline")  # a CPU without AVX2 runs the baseline
