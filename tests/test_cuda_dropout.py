"""CUDA dropout (csrc/cuda/dropout.cu via tinygpt.kernels.cuda) against the NumPy reference.

The mask is counter-based (reference.dropout_mask, csrc/cpu/rng.h compiled as device code), so
the GPU mask is the reference mask bit for bit, and the output x * keep * float32(1 / (1 - p))
is the same float32 arithmetic (two IEEE multiplies, no FMA: nothing to contract): outputs are
compared with assert_array_equal against the float32 reference and within two float32
roundings (rtol 2 * 2^-23) of the float64 one. GPU-only: every test is marked `gpu`.
"""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import tinygpt as tg
from tinygpt.kernels import cuda as K
from tinygpt.kernels import reference as R

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not K.has("dropout"), reason="tinygpt._C was built without the CUDA dropout kernel")]

RTOL64 = 2 * 2.0 ** -23 * 1.01

shapes = hnp.array_shapes(min_dims=1, max_dims=4, min_side=1, max_side=37)
values = st.sampled_from([1.0, 1e-3, 1e4, 1e30])
probs = st.one_of(st.sampled_from([0.0, 0.1, 0.5, 0.9, 1 - 2.0 ** -24]), st.floats(0.0, 0.99))
seeds = st.one_of(st.integers(0, 2**63 - 1), st.integers(-(2**70), 2**70))


def _cp():
    return tg.backend.cupy()


@given(shape=shapes, mag=values, p=probs, seed=seeds, data_seed=st.integers(0, 2**32 - 1))
def test_forward_backward_match_reference(shape, mag, p, seed, data_seed):
    cp = _cp()
    rng = np.random.default_rng(data_seed)
    x = (rng.standard_normal(shape) * mag).astype(np.float32)
    g = (rng.standard_normal(shape) * mag).astype(np.float32)
    y, saved = K.dropout.dropout_forward(cp.asarray(x), p, seed)
    y = cp.asnumpy(y)
    y_ref32, saved_ref = R.dropout_forward(x, p, seed)
    np.testing.assert_array_equal(y, y_ref32)
    np.testing.assert_allclose(y, R.dropout_forward(x.astype(np.float64), p, seed)[0], rtol=RTOL64, atol=0)
    dx = cp.asnumpy(K.dropout.dropout_backward(cp.asarray(g), p, saved))
    np.testing.assert_array_equal(dx, R.dropout_backward(g, p, saved_ref))
    assert y.dtype == dx.dtype == np.float32 and y.shape == dx.shape == x.shape


@pytest.mark.parametrize("n", [1, 3, 4, 5, 1023, 2**15 + 1, 100_003, 1 << 22])
@pytest.mark.parametrize("offset", [0, 1, 2, 3])
def test_sizes_and_misaligned_views(n, offset):
    """Every size around the float4 body and tail, on views that start off a 16-byte boundary
    (the scalar path) and on aligned arrays (the float4 path)."""
    cp = _cp()
    x = np.random.default_rng(n).standard_normal(n + offset).astype(np.float32)
    xd = cp.asarray(x)[offset:]  # C-contiguous view, misaligned by `offset` floats
    y, _ = K.dropout.dropout_forward(xd, 0.3, n * 7919)
    np.testing.assert_array_equal(cp.asnumpy(y), R.dropout_forward(x[offset:], 0.3, n * 7919)[0])
    if n >= 100_000:
        assert abs(float((y != 0).mean()) - 0.7) < 0.01  # 5 sigma at n = 1e5


def test_mask_equals_reference_bits():
    """x = 1: the output reads the mask off directly, over several million counters."""
    cp = _cp()
    shape = (4, 12, 256, 256)
    for seed in (0, 1, 2**63 - 1, 2**64 - 1):
        y, _ = K.dropout.dropout_forward(cp.ones(shape, cp.float32), 0.1, seed)
        np.testing.assert_array_equal(cp.asnumpy(y != 0), R.dropout_mask(shape, 0.1, seed, np))


def test_empty_and_zero_d():
    cp = _cp()
    for shape in [(0,), (3, 0), ()]:
        x = np.ones(shape, np.float32)
        y, saved = K.dropout.dropout_forward(cp.asarray(x), 0.5, 1)
        assert y.shape == shape
        np.testing.assert_array_equal(cp.asnumpy(y), R.dropout_forward(x, 0.5, 1)[0])
        assert K.dropout.dropout_backward(y, 0.5, saved).shape == shape


def test_saved_is_only_seed_and_shape():
    cp = _cp()
    _, saved = K.dropout.dropout_forward(cp.ones((64, 128), cp.float32), 0.5, 2**64 + 5)
    assert saved == (5, (64, 128))


def test_errors_name_the_argument():
    cp = _cp()
    x = cp.ones((4, 3), cp.float32)
    with pytest.raises(TypeError, match="dropout_forward: x: expected dtype float32"):
        K.dropout.dropout_forward(x.astype(cp.float64), 0.5, 0)
    with pytest.raises(ValueError, match="dropout_forward: x: expected a C-contiguous array"):
        K.dropout.dropout_forward(x.T, 0.5, 0)
    with pytest.raises(TypeError, match="dropout_forward: x: expected a cupy array"):
        K.dropout.dropout_forward(np.ones((4, 3), np.float32), 0.5, 0)
    with pytest.raises(ValueError, match=r"dropout_forward: p: must be in \[0, 1\)"):
        K.dropout.dropout_forward(x, 1.0, 0)
    with pytest.raises(TypeError, match="dropout_forward: seed: expected an int"):
        K.dropout.dropout_forward(x, 0.5, "7")
    _, saved = K.dropout.dropout_forward(x, 0.5, 0)
    with pytest.raises(ValueError, match=r"dropout_backward: grad: expected shape \(4, 3\)"):
        K.dropout.dropout_backward(cp.ones((3, 4), cp.float32), 0.5, saved)
    with pytest.raises(TypeError, match="dropout_backward: grad: expected dtype float32"):
        K.dropout.dropout_backward(x.astype(cp.float64), 0.5, saved)
    with pytest.raises(ValueError, match="dropout_backward: saved must be"):
        K.dropout.dropout_backward(x, 0.5, (0,))


@pytest.mark.skipif(not K.has("qkv_attention"), reason="tinygpt._C was built without the CUDA attention kernel")
@pytest.mark.parametrize("start, stop", [(0, 2), (2, 5), (3, 4)])
def test_a_batch_slice_draws_the_global_batchs_mask_rows(start, stop):
    """Data parallelism (random.batch_rows): rows start.. of a batch under the seed shifted to row `start`
    get the whole batch's dropout and attention-probability masks on the CUDA kernels too."""
    cp = _cp()
    rng = np.random.default_rng(start)
    x = rng.standard_normal((5, 6, 7)).astype(np.float32)
    seed = 2**63 + 12345  # shifted seeds use all 64 bits
    full, _ = K.dropout.dropout_forward(cp.asarray(x), 0.3, seed)
    part, _ = K.dropout.dropout_forward(cp.asarray(x[start:stop]), 0.3,
                                        R.dropout_seed_for_rows(seed, x[start:stop].shape, start))
    np.testing.assert_array_equal(cp.asnumpy(part), cp.asnumpy(full)[start:stop])
    B, T, nh, hs = 5, 9, 2, 4
    qkv = rng.standard_normal((B, T, 3 * nh * hs)).astype(np.float32)
    full, _ = K.attention.qkv_attention_forward(cp.asarray(qkv), nh, True, None, 0.2, seed, 0.5)
    part, _ = K.attention.qkv_attention_forward(cp.asarray(qkv[start:stop]), nh, True, None, 0.2,
                                                R.dropout_seed_for_rows(seed, (stop - start, nh, T, T), start), 0.5)
    np.testing.assert_allclose(cp.asnumpy(part), cp.asnumpy(full)[start:stop], rtol=1e-6, atol=1e-7)
    if start > 0:  # without the shift the slice would draw the first rows' masks
        wrong, _ = K.attention.qkv_attention_forward(cp.asarray(qkv[start:stop]), nh, True, None, 0.2, seed, 0.5)
        assert np.abs(cp.asnumpy(wrong) - cp.asnumpy(full)[start:stop]).max() > 1e-3
