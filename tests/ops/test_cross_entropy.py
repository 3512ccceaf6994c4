"""Fused cross-entropy (reference.py, csrc/cpu/cross_entropy.cpp, csrc/cuda/cross_entropy.cu) against the
float64 reference, on every implementation present (kernel_checks.assert_cross_entropy_within_bound:
forward |loss - ref| <= (LOSS_TERMS + 2 |ref|) eps, backward per element scale (rel p + 4 eps [target])
with rel = (|x - m| + 2 |log s| + GRAD_TERMS) eps; eps = 2^-24).

CPU:
  - s = sum exp(x - m): exp_approx <= 1 ulp, x - m rounds at eps |x - m| (the exponent's absolute
    error, so a term's relative error), and the blocked sum (float per SIMD lane within 512-term
    blocks, float64 across) <= 128 eps relative in the worst case. Terms with x - m < -87.7 are
    flushed to 0 (each < 1e-38, far below s >= 1). So log s is off by <= (130 + max over the terms
    that matter of |x - m|) eps, and those |x - m| are < 88.
  - log s is rounded to float32 (logf): eps |log s| <= 11 eps more at V = 50257.
  - loss_row = (m - x_t) + log s is formed in float64 from float32 m, x_t: exact apart from log s;
    the mean is float64, rounded to float32 once (eps |loss|). LOSS_TERMS = 130 + 88 + 11 = 229.
  - backward: p = exp((x - m) - log s) rounds the exponent at eps (|x - m| + |log s|) and log s is
    stored in float32 (another eps |log s| plus the error above), so p's relative error is
    <= (|x - m| + 2 |log s| + 220) eps; scale = float32(g / count) and the product round at eps
    each, and at the target (p - 1) rounds once more: 3 eps of |p - 1| ~ 1 there. GRAD_TERMS = 222.
CUDA: s per row by one warp, each lane an online sum of n_l = ceil(V / 32) terms (tests/ops/test_softmax.py):
relative error <= K eps, K = 8 n_l + 256; expf <= 2 ulp; logf 1 ulp <= 2 eps |log s| <= 22 eps at
V = 50257; the mean in float64 in a fixed order. LOSS_TERMS = K + 88 + 22 + 8, GRAD_TERMS = K + 30.
The float32 reference meets the CPU's constants where |logits| <= 10 (REF_MAX_SCALE): it forms
lse = m + log s and x - lse in float32, absolute errors eps |m| in the exponent that the kernels,
which keep x - m, do not have.
"""
import math

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import tinygpt as tg
import tinygpt.functional as F
from tinygpt import kernels
from tinygpt.kernels import reference as R

from helpers import arrays, check_grads, compare_with_torch, floats, rng_arrays, shapes
from impls import CPU
from kernel_checks import assert_cross_entropy_within_bound
from kernel_checks import cross_entropy_problem as _problem
from refs import F32, F32_GRAD, T64, np_cross_entropy, tf

pytestmark = pytest.mark.usefixtures("seeded")  # every test starts from tg.manual_seed(0)


def _k_cuda(V):
    return 8 * math.ceil(V / 32) + 256


LOSS_TERMS = {"cuda": lambda V: _k_cuda(V) + 118, "default": lambda V: 229}
GRAD_TERMS = {"cuda": lambda V: _k_cuda(V) + 30, "default": lambda V: 222}
REF_MAX_SCALE = 10.0


def check_cross_entropy(impl, logits, targets, ignore_index, grad=1.0, offset=0):
    k = impl.kernel("cross_entropy")
    xd, td = impl.to(logits, offset), impl.to(targets)
    loss, saved = k.forward(xd, td, ignore_index)
    if impl.native:  # (row max, row log-sum, ignore_index, count)
        assert int(saved[3]) == int((targets != ignore_index).sum()) and saved[2] == ignore_index
    dx = impl.host(k.backward(impl.to(np.array(np.float32(grad))), xd, td, saved))
    V = logits.shape[1]
    assert_cross_entropy_within_bound(np.asarray(impl.host(loss)), dx, logits, targets, ignore_index, grad,
                                      impl.limit(LOSS_TERMS)(V), impl.limit(GRAD_TERMS)(V))
    return loss, dx


@given(N=st.sampled_from([1, 2, 3, 5, 8, 17, 31, 64, 97]),
       V=st.sampled_from([1, 2, 3, 4, 5, 7, 16, 65, 127, 509, 512, 513, 1031, 4099]),
       scale=st.sampled_from([1e-3, 1.0, 10.0, 1e4]),
       ignore_index=st.sampled_from([-1, -100, 0]),
       ignore_frac=st.sampled_from([0.0, 0.3]),
       grad=st.sampled_from([1.0, 0.25, -3.0]),
       offset=st.sampled_from([0, 0, 1, 3]),  # CUDA: logits a view off an aligned base (misaligned rows)
       seed=st.integers(0, 2**31))
def test_cross_entropy(impl, N, V, scale, ignore_index, ignore_frac, grad, offset, seed):
    if not impl.native:
        scale = min(scale, REF_MAX_SCALE)  # module doc
    logits, targets = _problem(seed, N, V, scale, ignore_index, ignore_frac)
    if np.all(targets == ignore_index):
        targets[0] = 1 if ignore_index == 0 and V > 1 else 0  # keep at least one row counted
        if targets[0] == ignore_index:
            return  # V == 1 with ignore_index 0: no valid target exists
    check_cross_entropy(impl, logits, targets, ignore_index, grad, offset)


GPT2_CASES = {"default": [(5, 50257, 1.0), (64, 50257, 3.0), (7, 50257, 1e4)],  # (N, V, scale)
              "cuda": [(5, 50257, 1.0), (64, 50257, 3.0), (7, 50257, 1e4), (33, 50304, 2.0)]}


def test_gpt2_vocab(large_impl):
    """V = 50257 (GPT-2): rows of 200 KB, ~99 CPU sum blocks each, 64 rows run multi-threaded; on CUDA
    every row starts at a different alignment, and also its padded size 50304."""
    for N, V, scale in large_impl.limit(GPT2_CASES):
        logits, targets = _problem(N, N, V, scale, -1, 0.2)
        targets[0] = 7
        check_cross_entropy(large_impl, logits, targets, -1)


MANY_ROWS = {"cuda": 20000, "default": 4096}  # CUDA: more rows than the grid has warps (grid-stride)


def test_char_vocab_many_rows(large_impl):
    """V = 65 (character level), many rows: the CPU's parallel split over short rows, CUDA's grid-stride loop."""
    logits, targets = _problem(3, large_impl.limit(MANY_ROWS), 65, 2.0, -1, 0.1)
    check_cross_entropy(large_impl, logits, targets, -1)


def test_all_ignored_is_nan_as_reference(native_impl):
    k, to = native_impl.kernel("cross_entropy"), native_impl.to
    logits, targets = _problem(0, 4, 9, 1.0, -1, 1.0)
    assert np.all(targets == -1)
    loss, saved = k.forward(to(logits), to(targets), -1)
    loss64, saved64 = R.cross_entropy_forward(logits.astype(np.float64), targets, -1)
    assert np.isnan(float(loss)) and np.isnan(loss64) and int(saved[3]) == 0
    dx = native_impl.host(k.backward(to(np.array(1.0, np.float32)), to(logits), to(targets), saved))
    dx64 = R.cross_entropy_backward(np.float64(1.0), logits.astype(np.float64), targets, saved64)
    assert not np.any(dx) and not np.any(dx64)  # the gradient is exactly 0, as PyTorch's


def test_cuda_empty_batch(cuda_impl):
    k, to = cuda_impl.kernel("cross_entropy"), cuda_impl.to
    x, t = to(np.zeros((0, 5), np.float32)), to(np.zeros((0,), np.int64))
    loss, saved = k.forward(x, t, -1)
    assert np.isnan(float(loss)) and int(saved[3]) == 0
    assert k.backward(1.0, x, t, saved).shape == (0, 5)


def test_saved_is_small_row_statistics(native_impl):
    k, to = native_impl.kernel("cross_entropy"), native_impl.to
    logits, targets = _problem(0, 6, 11, 1.0, -1, 0.0)
    _, saved = k.forward(to(logits), to(targets), -1)
    row_max, row_logsum, ignore_index, count = saved
    assert row_max.shape == row_logsum.shape == (6,) and row_max.dtype == np.float32
    assert ignore_index == -1 and int(count) == 6
    np.testing.assert_array_equal(native_impl.host(row_max), logits.max(axis=1))


def test_grad_as_number_or_array(native_impl):
    k, to, host = native_impl.kernel("cross_entropy"), native_impl.to, native_impl.host
    logits, targets = _problem(1, 4, 7, 1.0, -1, 0.0)
    x, t = to(logits), to(targets)
    _, saved = k.forward(x, t, -1)
    want = host(k.backward(to(np.array(np.float32(1.0))), x, t, saved))
    others = (1.0, 1, np.float32(1.0), np.float64(1.0)) + ((to(np.array(1.0)),) if native_impl.device == "cuda" else ())
    for other in others:
        np.testing.assert_array_equal(host(k.backward(other, x, t, saved)), want)


def test_matches_torch_if_installed(native_impl):
    torch = pytest.importorskip("torch")
    k, to = native_impl.kernel("cross_entropy"), native_impl.to
    logits, targets = _problem(5, 33, 257, 3.0, -100, 0.2)
    targets[0] = 3
    loss, saved = k.forward(to(logits), to(targets), -100)
    dx = native_impl.host(k.backward(to(np.array(1.0, np.float32)), to(logits), to(targets), saved))
    xt = torch.tensor(logits, requires_grad=True)
    lt = torch.nn.functional.cross_entropy(xt, torch.tensor(targets), ignore_index=-100)
    lt.backward()
    assert abs(float(loss) - lt.item()) <= 1e-5 * abs(lt.item())
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-4, atol=1e-9)


# ----------------------------------------------------------------------------- argument errors
def test_errors_name_the_argument(native_impl):
    k, to, cuda = native_impl.kernel("cross_entropy"), native_impl.to, native_impl.device == "cuda"
    fwd, bwd = k.forward, k.backward
    bad_type = TypeError if cuda else ValueError
    x = to(np.zeros((4, 5), np.float32))
    t = to(np.array([0, 1, 2, -1], np.int64))
    with pytest.raises(bad_type, match="cross_entropy_forward: logits:? (must be|expected dtype) float32"):
        fwd(to(np.zeros((4, 5), np.float64)), t, -1)
    with pytest.raises(ValueError, match="cross_entropy_forward: logits:? (must have|expected) 2 dimensions"):
        fwd(x.reshape(2, 2, 5), t, -1)
    with pytest.raises(ValueError, match="cross_entropy_forward: logits:? (must be|expected a) C-contiguous"):
        fwd(to(np.zeros((5, 4), np.float32)).T, t, -1)
    with pytest.raises(bad_type, match="cross_entropy_forward: targets:? (must be|expected dtype) int64"):
        fwd(x, to(np.array([0, 1, 2, -1], np.int32)), -1)
    with pytest.raises(ValueError, match=r"cross_entropy_forward: targets:? (must have|expected) shape \(4,\)"):
        fwd(x, t[:3], -1)
    with pytest.raises(ValueError, match="cross_entropy_forward: logits must have at least one class"):
        fwd(to(np.zeros((4, 0), np.float32)), t, -1)
    if cuda:
        with pytest.raises(TypeError, match="cross_entropy_forward: logits: expected a cupy array"):
            fwd(np.zeros((4, 5), np.float32), t, -1)
    else:  # the CPU checks target ranges on the host (CUDA's kernel never reads outside a row)
        with pytest.raises(ValueError, match=r"cross_entropy_forward: targets\[1\] = 5 is out of range"):
            fwd(x, np.array([0, 5, 2, -1], np.int64), -1)
        with pytest.raises(ValueError, match=r"targets\[3\] = -1 is out of range"):
            fwd(x, t, -100)  # -1 is not ignored here
    _, saved = fwd(x, t, -1)
    g = to(np.array(1.0, np.float32))
    with pytest.raises(ValueError, match="cross_entropy_backward: grad must be a 0-d real array or number"):
        bwd(to(np.ones(1, np.float32)), x, t, saved)
    with pytest.raises(ValueError, match="cross_entropy_backward: grad must be a 0-d real array or number"):
        bwd("1", x, t, saved)
    with pytest.raises(bad_type, match="cross_entropy_backward: logits:? (must be|expected dtype) float32"):
        bwd(g, to(np.zeros((4, 5), np.float64)), t, saved)
    with pytest.raises(ValueError, match="cross_entropy_backward: saved must be the 4-tuple"):
        bwd(g, x, t, saved[:2])
    with pytest.raises(ValueError,
                       match=r"cross_entropy_backward: saved\[0\] \(row max\):? (must have|expected) shape \(4,\)"):
        bwd(g, x, t, (saved[0][:2],) + saved[1:])
    if not cuda:
        with pytest.raises(ValueError, match=r"cross_entropy_backward: targets\[0\] = 9 is out of range"):
            bwd(g, x, np.array([9, 1, 2, -1], np.int64), saved)


# ----------------------------------------------------------------------------- dispatch and autograd
def test_dispatch():
    if not kernels.native_enabled():
        pytest.skip("tinygpt._C is not built (or TINYGPT_NATIVE=0)")
    x = np.zeros((3, 5), np.float32)
    t = np.zeros(3, np.int64)
    with kernels.use_native(True):  # also under TINYGPT_NATIVE=0
        assert kernels.select("cross_entropy", x, t).name == "native-cpu"
        assert kernels.select("cross_entropy", x.astype(np.float64), t).name == "reference"
        assert kernels.select("cross_entropy", np.zeros((5, 3), np.float32).T, t).name == "reference"
    with kernels.use_native(False):
        assert kernels.select("cross_entropy", x, t).name == "reference"


@pytest.mark.parametrize("V,ignore_index", [(65, -1), (50257, -100)])
def test_autograd_native_matches_reference(V, ignore_index):
    """F.cross_entropy on (B, T, V) logits, loss and dlogits, native on vs off."""
    rng = np.random.default_rng(V)
    B, T = 2, 5
    x0 = (rng.standard_normal((B, T, V)) * 2).astype(np.float32)
    t = rng.integers(0, V, (B, T))
    t[0, 1] = ignore_index
    results = []
    for native in (True, False):
        with kernels.use_native(native):
            x = tg.Tensor(x0.copy(), requires_grad=True)
            loss = F.cross_entropy(x, t, ignore_index=ignore_index)
            (loss * 3.0).backward()
            results.append((loss.item(), x.grad.numpy()))
    (l1, g1), (l0, g0) = results
    assert abs(l1 - l0) <= 1e-5 * max(1.0, abs(l0))
    np.testing.assert_allclose(g1, g0, rtol=2e-5, atol=1e-9)
    assert np.all(g1[0, 1] == 0.0)


# ----------------------------------------------------------------------------- tinygpt.functional: float64 references, finite differences, torch
@given(data=st.data(), lead=shapes(1, 2, max_side=4), V=st.integers(1, 5))
def test_cross_entropy_float64_gradcheck(data, lead, V):
    logits = data.draw(arrays(lead + (V,), elements=floats(-4, 4)))
    targets = data.draw(hnp.arrays(np.int64, lead, elements=st.integers(-1, V - 1)))  # -1: ignored
    assume((targets != -1).any())
    out = check_grads(lambda t: F.cross_entropy(t, targets), logits)
    assert out.shape == ()
    np.testing.assert_allclose(out, np_cross_entropy(logits, targets), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("ignore_index", [-1, -100, 2])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cross_entropy_torch(kernel_impl, dtype, ignore_index):
    torch = pytest.importorskip("torch")
    (logits,) = rng_arrays(3, (2, 5, 7), lo=-3, hi=3)
    targets = np.random.default_rng(4).integers(0, 7, size=(2, 5))
    targets[0, 1] = targets[1, 3] = ignore_index
    tol = T64 if dtype == np.float64 else F32_GRAD
    out = compare_with_torch(
        lambda t: F.cross_entropy(t, targets, ignore_index=ignore_index),
        lambda t: tf().cross_entropy(t.reshape(-1, 7), torch.from_numpy(targets).reshape(-1),
                                     ignore_index=ignore_index),
        logits, dtype=dtype, **tol)
    np.testing.assert_allclose(out, np_cross_entropy(logits, targets, ignore_index), **F32)


@pytest.mark.parametrize("bad", [7, 9, -2])
def test_cross_entropy_out_of_range_target_names_it(bad):
    targets = np.array([0, bad, 3])
    with pytest.raises(ValueError, match=rf"cross_entropy.*target {bad}"):
        F.cross_entropy(tg.randn(3, 7), targets)


def test_cross_entropy_all_ignored_is_nan_like_torch():
    torch = pytest.importorskip("torch")
    logits = np.random.default_rng(0).standard_normal((3, 4))
    ours = F.cross_entropy(tg.Tensor(logits), np.array([-1, -1, -1])).item()
    theirs = tf().cross_entropy(torch.from_numpy(logits), torch.tensor([-1, -1, -1]), ignore_index=-1).item()
    assert math.isnan(ours) and math.isnan(theirs)


def test_cross_entropy_input_errors():
    with pytest.raises(ValueError, match=r"targets \(3,\).*\(2, 4\)"):
        F.cross_entropy(tg.randn(2, 4), np.array([0, 1, 2]))
    with pytest.raises(TypeError, match="integers"):
        F.cross_entropy(tg.randn(2, 4), np.array([0.0, 1.0]))
