"""CUDA fused cross-entropy (csrc/cuda/cross_entropy.cu via tinygpt.kernels.cuda) against the
float64 reference. GPU-only: every test is marked `gpu` (skips without CuPy and a GPU).

Error sources (eps = 2^-24), as in tests/test_native_cross_entropy.py with the GPU's sums:
  - s = sum exp(x - m) per row: one warp, each lane an online sum of n_l = ceil(V / 32) terms
    (see tests/ops/test_softmax.py): relative error <= K eps with K = 8 n_l + 256 (worst case
    with margin); expf <= 2 ulp; x - m rounds at eps |x - m| for the terms that matter (< 88).
  - log s in float32 (logf, 1 ulp <= 2 eps |log s| <= 22 eps at V = 50257); the row loss
    (m - x_t) + log s in float64 from float32 values: exact apart from log s; the mean in float64
    in a fixed order, rounded to float32 once (eps |loss|).
    Forward bound: (K + 88 + 22 + 8) eps + 2 eps |loss|.
  - backward: p = exp((x - m) - log s): relative (|x - m| + 2 |log s| + K + 30) eps; at the
    target p - 1 rounds once more and scale = float32(g / count) and the product at eps each.
"""
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import tinygpt as tg
from tinygpt.kernels import cuda as K

from kernel_checks import assert_cross_entropy_within_bound
from kernel_checks import cross_entropy_problem as _problem

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not K.has("cross_entropy"),
                                 reason="tinygpt._C was built without the CUDA cross_entropy kernel")]


def _cp():
    return tg.backend.cupy()


def _device_logits(logits, offset):
    """logits on the GPU as a C-contiguous view `offset` floats past an aligned base."""
    cp = _cp()
    flat = cp.empty(logits.size + offset, cp.float32)
    view = flat[offset:].reshape(logits.shape)
    view[...] = cp.asarray(logits)
    return view


def _check_against_reference(logits, targets, ignore_index, grad=1.0, offset=0):
    cp = _cp()
    ks = 8 * math.ceil(logits.shape[1] / 32) + 256
    xd, td = _device_logits(logits, offset), cp.asarray(targets)
    loss, saved = K.cross_entropy.cross_entropy_forward(xd, td, ignore_index)
    assert int(saved[3]) == int((targets != ignore_index).sum()) and saved[2] == ignore_index
    dx = cp.asnumpy(K.cross_entropy.cross_entropy_backward(cp.asarray(np.float32(grad)), xd, td, saved))
    assert_cross_entropy_within_bound(cp.asnumpy(loss), dx, logits, targets, ignore_index, grad, ks + 118, ks + 30)
    return loss, dx


@given(N=st.sampled_from([1, 2, 3, 5, 8, 17, 31, 64, 97]),
       V=st.sampled_from([1, 2, 3, 4, 5, 7, 16, 65, 127, 509, 512, 513, 1031, 4099]),
       scale=st.sampled_from([1e-3, 1.0, 10.0, 1e4]),
       ignore_index=st.sampled_from([-1, -100, 0]),
       ignore_frac=st.sampled_from([0.0, 0.3]),
       grad=st.sampled_from([1.0, 0.25, -3.0]),
       offset=st.sampled_from([0, 0, 1, 3]),
       seed=st.integers(0, 2**31))
def test_forward_backward_match_reference(N, V, scale, ignore_index, ignore_frac, grad, offset, seed):
    logits, targets = _problem(seed, N, V, scale, ignore_index, ignore_frac)
    if np.all(targets == ignore_index):
        targets[0] = 1 if ignore_index == 0 and V > 1 else 0
        if targets[0] == ignore_index:
            return  # V == 1 with ignore_index 0: no valid target exists
    _check_against_reference(logits, targets, ignore_index, grad, offset)


@pytest.mark.parametrize("N,V,scale", [(5, 50257, 1.0), (64, 50257, 3.0), (7, 50257, 1e4), (33, 50304, 2.0)])
def test_gpt2_vocab(N, V, scale):
    """GPT-2's vocabulary (odd: every row starts at a different alignment) and its padded size."""
    logits, targets = _problem(N, N, V, scale, -1, 0.2)
    targets[0] = 7
    _check_against_reference(logits, targets, -1)


def test_char_vocab_many_rows():
    """V = 65, 20000 rows: more rows than the grid has warps (the grid-stride loop)."""
    logits, targets = _problem(3, 20000, 65, 2.0, -1, 0.1)
    _check_against_reference(logits, targets, -1)


def test_all_ignored_is_nan_as_reference():
    cp = _cp()
    logits, targets = _problem(0, 4, 9, 1.0, -1, 1.0)
    loss, saved = K.cross_entropy.cross_entropy_forward(cp.asarray(logits), cp.asarray(targets), -1)
    assert np.isnan(float(loss)) and int(saved[3]) == 0
    dx = K.cross_entropy.cross_entropy_backward(cp.asarray(np.float32(1.0)), cp.asarray(logits), cp.asarray(targets), saved)
    assert not np.any(cp.asnumpy(dx))  # the gradient is exactly 0, as PyTorch's


def test_empty_batch():
    cp = _cp()
    loss, saved = K.cross_entropy.cross_entropy_forward(cp.zeros((0, 5), cp.float32), cp.zeros((0,), cp.int64), -1)
    assert np.isnan(float(loss)) and int(saved[3]) == 0
    assert K.cross_entropy.cross_entropy_backward(1.0, cp.zeros((0, 5), cp.float32), cp.zeros((0,), cp.int64), saved).shape == (0, 5)


def test_saved_is_small_row_statistics():
    cp = _cp()
    logits, targets = _problem(0, 6, 11, 1.0, -1, 0.0)
    _, saved = K.cross_entropy.cross_entropy_forward(cp.asarray(logits), cp.asarray(targets), -1)
    row_max, row_logsum, ignore_index, count = saved
    assert row_max.shape == row_logsum.shape == (6,) and row_max.dtype == np.float32
    assert ignore_index == -1 and int(count) == 6
    np.testing.assert_array_equal(cp.asnumpy(row_max), logits.max(axis=1))


def test_grad_as_number_or_array():
    cp = _cp()
    logits, targets = _problem(1, 4, 7, 1.0, -1, 0.0)
    x, t = cp.asarray(logits), cp.asarray(targets)
    _, saved = K.cross_entropy.cross_entropy_forward(x, t, -1)
    ref = cp.asnumpy(K.cross_entropy.cross_entropy_backward(cp.asarray(np.float32(1.0)), x, t, saved))
    for other in (1.0, 1, np.float32(1.0), np.float64(1.0), cp.asarray(1.0)):
        np.testing.assert_array_equal(cp.asnumpy(K.cross_entropy.cross_entropy_backward(other, x, t, saved)), ref)


def test_matches_torch_if_installed():
    torch = pytest.importorskip("torch")
    cp = _cp()
    logits, targets = _problem(5, 33, 257, 3.0, -100, 0.2)
    targets[0] = 3
    loss, saved = K.cross_entropy.cross_entropy_forward(cp.asarray(logits), cp.asarray(targets), -100)
    dx = K.cross_entropy.cross_entropy_backward(1.0, cp.asarray(logits), cp.asarray(targets), saved)
    xt = torch.tensor(logits, requires_grad=True)
    lt = torch.nn.functional.cross_entropy(xt, torch.tensor(targets), ignore_index=-100)
    lt.backward()
    assert abs(float(loss) - lt.item()) <= 1e-5 * abs(lt.item())
    np.testing.assert_allclose(cp.asnumpy(dx), xt.grad.numpy(), rtol=1e-4, atol=1e-9)


def test_errors_name_the_argument():
    cp = _cp()
    fwd, bwd = K.cross_entropy.cross_entropy_forward, K.cross_entropy.cross_entropy_backward
    x = cp.zeros((4, 5), cp.float32)
    t = cp.asarray(np.array([0, 1, 2, -1], np.int64))
    with pytest.raises(TypeError, match="cross_entropy_forward: logits: expected dtype float32"):
        fwd(x.astype(cp.float64), t, -1)
    with pytest.raises(ValueError, match="cross_entropy_forward: logits: expected 2 dimensions"):
        fwd(x.reshape(2, 2, 5), t, -1)
    with pytest.raises(ValueError, match="cross_entropy_forward: logits: expected a C-contiguous array"):
        fwd(cp.zeros((5, 4), cp.float32).T, t, -1)
    with pytest.raises(TypeError, match="cross_entropy_forward: targets: expected dtype int64"):
        fwd(x, t.astype(cp.int32), -1)
    with pytest.raises(ValueError, match=r"cross_entropy_forward: targets: expected shape \(4,\)"):
        fwd(x, t[:3], -1)
    with pytest.raises(TypeError, match="cross_entropy_forward: logits: expected a cupy array"):
        fwd(np.zeros((4, 5), np.float32), t, -1)
    with pytest.raises(ValueError, match="cross_entropy_forward: logits must have at least one class"):
        fwd(cp.zeros((4, 0), cp.float32), t, -1)
    _, saved = fwd(x, t, -1)
    g = cp.asarray(np.float32(1.0))
    with pytest.raises(ValueError, match="cross_entropy_backward: grad must be a 0-d real array or number"):
        bwd(cp.ones(1, cp.float32), x, t, saved)
    with pytest.raises(ValueError, match="cross_entropy_backward: grad must be a 0-d real array or number"):
        bwd("1", x, t, saved)
    with pytest.raises(TypeError, match="cross_entropy_backward: logits: expected dtype float32"):
        bwd(g, x.astype(cp.float64), t, saved)
    with pytest.raises(ValueError, match="cross_entropy_backward: saved must be the 4-tuple"):
        bwd(g, x, t, saved[:2])
    with pytest.raises(ValueError, match=r"cross_entropy_backward: saved\[0\] \(row max\): expected shape \(4,\)"):
        bwd(g, x, t, (saved[0][:2],) + saved[1:])
