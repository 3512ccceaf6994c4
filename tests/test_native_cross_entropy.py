"""Native CPU fused cross-entropy (csrc/cpu/cross_entropy.cpp) against the float64 reference.

The native kernel runs on float32 logits; reference.cross_entropy_* runs on the same values cast
to float64. Error sources in the kernel (eps = 2^-24 ~ 6e-8, float32's unit roundoff):
  - s = sum exp(x - m): exp_approx <= 1 ulp, x - m rounds at eps |x - m| (the exponent's
    absolute error, so a term's relative error), and the blocked sum (float per SIMD lane within
    512-term blocks, float64 across) <= 128 eps relative in the worst case. Terms with
    x - m < -87.7 are flushed to 0 (each < 1e-38, far below s >= 1). So log s is off by
    <= (130 + max over the terms that matter of |x - m|) eps, and those |x - m| are < 88.
  - log s is rounded to float32 (logf): eps |log s| <= 11 eps more at V = 50257.
  - loss_row = (m - x_t) + log s is formed in float64 from float32 m, x_t: exact apart from
    log s; the mean is float64, rounded to float32 once (eps |loss|).
  - backward: p = exp((x - m) - log s) rounds the exponent at eps (|x - m| + |log s|) and
    log s is stored in float32 (another eps |log s| plus the error above), so p's relative error
    is <= (|x - m| + 2 |log s| + 220) eps; scale = float32(g / count) and the product round at
    eps each, and at the target (p - 1) rounds once more: 3 eps of |p - 1| ~ 1 there.
"""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import tinygpt
import tinygpt.functional as F
from tinygpt import kernels
from tinygpt.kernels import reference as R

from kernel_checks import assert_cross_entropy_within_bound
from kernel_checks import cross_entropy_problem as _problem

cpu = getattr(tinygpt.kernels._native, "cpu", None)
pytestmark = pytest.mark.skipif(
    not hasattr(cpu, "cross_entropy_forward"),
    reason="tinygpt._C is not built or has no native cross_entropy kernel")


def _check_against_reference(logits, targets, ignore_index, grad=1.0):
    loss, saved = cpu.cross_entropy_forward(logits, targets, ignore_index)
    dx = cpu.cross_entropy_backward(np.array(np.float32(grad)), logits, targets, saved)
    # forward: each row's log s is off by <= (130 + 88 + 11) eps (module doc); backward: 222 eps
    assert_cross_entropy_within_bound(loss, dx, logits, targets, ignore_index, grad, 229, 222)
    return loss, dx


@given(N=st.sampled_from([1, 2, 3, 5, 8, 17, 31, 64, 97]),
       V=st.sampled_from([1, 2, 3, 7, 16, 65, 127, 509, 512, 513, 1031, 4099]),
       scale=st.sampled_from([1e-3, 1.0, 10.0, 1e4]),
       ignore_index=st.sampled_from([-1, -100, 0]),
       ignore_frac=st.sampled_from([0.0, 0.3]),
       grad=st.sampled_from([1.0, 0.25, -3.0]),
       seed=st.integers(0, 2**31))
def test_forward_backward_match_reference(N, V, scale, ignore_index, ignore_frac, grad, seed):
    logits, targets = _problem(seed, N, V, scale, ignore_index, ignore_frac)
    if np.all(targets == ignore_index):
        targets[0] = 1 if ignore_index == 0 and V > 1 else 0  # keep at least one row counted
        if targets[0] == ignore_index:
            return  # V == 1 with ignore_index 0: no valid target exists
    _check_against_reference(logits, targets, ignore_index, grad)


@pytest.mark.parametrize("N,scale", [(5, 1.0), (64, 3.0), (7, 1e4)])
def test_gpt2_vocab(N, scale):
    """V = 50257 (GPT-2): rows of 200 KB, ~99 sum blocks each; 64 rows run multi-threaded."""
    logits, targets = _problem(N, N, 50257, scale, -1, 0.2)
    targets[0] = 7
    _check_against_reference(logits, targets, -1)


def test_char_vocab_many_rows():
    """V = 65 (character level), B*T = 4096 rows: the parallel split over short rows."""
    logits, targets = _problem(3, 4096, 65, 2.0, -1, 0.1)
    _check_against_reference(logits, targets, -1)


def test_all_ignored_is_nan_as_reference():
    logits, targets = _problem(0, 4, 9, 1.0, -1, 1.0)
    assert np.all(targets == -1)
    loss, saved = cpu.cross_entropy_forward(logits, targets, -1)
    loss64, saved64 = R.cross_entropy_forward(logits.astype(np.float64), targets, -1)
    assert np.isnan(loss) and np.isnan(loss64)
    dx = cpu.cross_entropy_backward(np.array(1.0, np.float32), logits, targets, saved)
    dx64 = R.cross_entropy_backward(np.float64(1.0), logits.astype(np.float64), targets, saved64)
    assert not np.any(dx) and not np.any(dx64)  # the gradient is exactly 0, as PyTorch's


def test_saved_is_small_row_statistics():
    logits, targets = _problem(0, 6, 11, 1.0, -1, 0.0)
    _, saved = cpu.cross_entropy_forward(logits, targets, -1)
    row_max, row_logsum, ignore_index, count = saved
    assert row_max.shape == row_logsum.shape == (6,) and row_max.dtype == np.float32
    assert ignore_index == -1 and count == 6
    np.testing.assert_allclose(row_max, logits.max(axis=1))


def test_errors_name_the_argument():
    fwd, bwd = cpu.cross_entropy_forward, cpu.cross_entropy_backward
    x = np.zeros((4, 5), np.float32)
    t = np.array([0, 1, 2, -1], np.int64)
    with pytest.raises(ValueError, match="cross_entropy_forward: logits must be float32"):
        fwd(x.astype(np.float64), t, -1)
    with pytest.raises(ValueError, match="cross_entropy_forward: logits must have 2 dimensions"):
        fwd(x.reshape(2, 2, 5), t, -1)
    with pytest.raises(ValueError, match="cross_entropy_forward: logits must be C-contiguous"):
        fwd(np.zeros((5, 4), np.float32).T, t, -1)
    with pytest.raises(ValueError, match="cross_entropy_forward: targets must be int64"):
        fwd(x, t.astype(np.int32), -1)
    with pytest.raises(ValueError, match=r"cross_entropy_forward: targets must have shape \(4,\)"):
        fwd(x, t[:3], -1)
    with pytest.raises(ValueError, match=r"cross_entropy_forward: targets\[1\] = 5 is out of range"):
        fwd(x, np.array([0, 5, 2, -1], np.int64), -1)
    with pytest.raises(ValueError, match=r"targets\[3\] = -1 is out of range"):
        fwd(x, t, -100)  # -1 is not ignored here
    with pytest.raises(ValueError, match="cross_entropy_forward: logits must have at least one class"):
        fwd(np.zeros((4, 0), np.float32), t, -1)
    _, saved = fwd(x, t, -1)
    g = np.array(1.0, np.float32)
    with pytest.raises(ValueError, match="cross_entropy_backward: grad must be a 0-d real array or number"):
        bwd(np.ones(1, np.float32), x, t, saved)
    with pytest.raises(ValueError, match="cross_entropy_backward: grad must be a 0-d real array or number"):
        bwd("1", x, t, saved)
    with pytest.raises(ValueError, match="cross_entropy_backward: logits must be float32"):
        bwd(g, x.astype(np.float64), t, saved)
    with pytest.raises(ValueError, match="cross_entropy_backward: saved must be the 4-tuple"):
        bwd(g, x, t, saved[:2])
    with pytest.raises(ValueError, match=r"cross_entropy_backward: saved\[0\] \(row max\) must have shape \(4,\)"):
        bwd(g, x, t, (saved[0][:2],) + saved[1:])
    with pytest.raises(ValueError, match=r"cross_entropy_backward: targets\[0\] = 9 is out of range"):
        bwd(g, x, np.array([9, 1, 2, -1], np.int64), saved)
    # a NumPy scalar or a Python number works too
    for other in (1.0, 1, np.float32(1.0), np.float64(1.0)):
        np.testing.assert_array_equal(bwd(other, x, t, saved), bwd(g, x, t, saved))


def test_dispatch():
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
            x = tinygpt.Tensor(x0.copy(), requires_grad=True)
            loss = F.cross_entropy(x, t, ignore_index=ignore_index)
            (loss * 3.0).backward()
            results.append((loss.item(), x.grad.numpy()))
    (l1, g1), (l0, g0) = results
    assert abs(l1 - l0) <= 1e-5 * max(1.0, abs(l0))
    np.testing.assert_allclose(g1, g0, rtol=2e-5, atol=1e-9)
    assert np.all(g1[0, 1] == 0.0)


def test_matches_torch_if_installed():
    torch = pytest.importorskip("torch")
    logits, targets = _problem(5, 33, 257, 3.0, -100, 0.2)
    targets[0] = 3
    loss, saved = cpu.cross_entropy_forward(logits, targets, -100)
    dx = cpu.cross_entropy_backward(np.array(1.0, np.float32), logits, targets, saved)
    xt = torch.tensor(logits, requires_grad=True)
    lt = torch.nn.functional.cross_entropy(xt, torch.tensor(targets), ignore_index=-100)
    lt.backward()
    assert abs(float(loss) - lt.item()) <= 1e-5 * abs(lt.item())
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-4, atol=1e-9)
