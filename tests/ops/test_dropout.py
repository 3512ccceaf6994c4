"""dropout (reference.py, csrc/cpu/dropout.cpp, csrc/cuda/dropout.cu) on every implementation.

The mask is counter-based (reference.dropout_mask, csrc/cpu/rng.h, compiled as device code for CUDA),
so every implementation draws the reference's mask bit for bit, and the output x * keep *
float32(1 / (1 - p)) is the same float32 arithmetic everywhere (two IEEE multiplies, no FMA: nothing
to contract): native outputs equal the float32 reference exactly. Against the float64 reference the
only difference is float32 rounding of the scale and of the product: |err| <= 2 eps32 |ref| (RTOL64).
"""
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import tinygpt as tg
import tinygpt.functional as F
from tinygpt import kernels
from tinygpt.kernels import cuda as kcuda
from tinygpt.kernels import reference as R

from helpers import check_grads, rng_arrays
from impls import CPU

pytestmark = pytest.mark.usefixtures("seeded")  # every test starts from tg.manual_seed(0)

RTOL64 = 2 * 2.0 ** -23 * 1.01  # two float32 roundings (scale, product), relative

shapes = hnp.array_shapes(min_dims=1, max_dims=4, min_side=1, max_side=37)
values = st.sampled_from([1.0, 1e-3, 1e4, 1e30])
probs = st.one_of(st.sampled_from([0.0, 0.1, 0.5, 0.9, 1 - 2.0 ** -24]), st.floats(0.0, 0.99))
seeds = st.one_of(st.integers(0, 2**63 - 1), st.integers(-(2**70), 2**70))


@given(shape=shapes, mag=values, p=probs, seed=seeds, data_seed=st.integers(0, 2**32 - 1))
def test_dropout(impl, shape, mag, p, seed, data_seed):
    k = impl.kernel("dropout")
    rng = np.random.default_rng(data_seed)
    x = (rng.standard_normal(shape) * mag).astype(np.float32)
    g = (rng.standard_normal(shape) * mag).astype(np.float32)
    y, saved = k.forward(impl.to(x), p, seed)
    y = impl.host(y)
    y_ref32, saved_ref = R.dropout_forward(x, p, seed)
    np.testing.assert_array_equal(y, y_ref32)  # same mask, same float32 arithmetic
    np.testing.assert_allclose(y, R.dropout_forward(x.astype(np.float64), p, seed)[0], rtol=RTOL64, atol=0)
    dx = impl.host(k.backward(impl.to(g), p, saved))
    np.testing.assert_array_equal(dx, R.dropout_backward(g, p, saved_ref))
    np.testing.assert_allclose(dx, R.dropout_backward(g.astype(np.float64), p, saved_ref), rtol=RTOL64, atol=0)
    assert y.dtype == dx.dtype == np.float32 and y.shape == dx.shape == x.shape


SIZES = {"cpu": [1, 2**15 - 1, 2**15, 2**15 + 1, 100_003, 1 << 20],  # across the CPU's parallel chunks
         "cuda": [1, 3, 4, 5, 1023, 2**15 + 1, 100_003, 1 << 22]}   # around CUDA's float4 body and tail


def test_sizes_and_misaligned_views(large_impl):
    """Sizes across the CPU's parallel chunks and around CUDA's float4 body and tail; on CUDA also on
    views that start off a 16-byte boundary (offset 1..3 floats: the scalar path)."""
    k = large_impl.kernel("dropout")
    for n in large_impl.limit(SIZES):
        x = np.random.default_rng(n).standard_normal(n).astype(np.float32)
        for offset in [0, 1, 2, 3] if large_impl.device == "cuda" else [0]:
            y, _ = k.forward(large_impl.to(x, offset), 0.3, n * 7919)
            y = large_impl.host(y)
            np.testing.assert_array_equal(y, R.dropout_forward(x, 0.3, n * 7919)[0], err_msg=f"n={n} offset={offset}")
            if n >= 100_000:
                assert abs((y != 0).mean() - 0.7) < 0.01  # 5 sigma at n = 1e5


def test_cuda_mask_equals_reference_bits(cuda_impl):
    """x = 1: the output reads the mask off directly, over several million counters."""
    cp = tg.backend.cupy()
    shape = (4, 12, 256, 256)
    for seed in (0, 1, 2**63 - 1, 2**64 - 1):
        y, _ = cuda_impl.kernel("dropout").forward(cp.ones(shape, cp.float32), 0.1, seed)
        np.testing.assert_array_equal(cp.asnumpy(y != 0), R.dropout_mask(shape, 0.1, seed, np))


def test_empty_and_zero_d(native_impl):
    k = native_impl.kernel("dropout")
    for shape in [(0,), (3, 0), ()]:
        x = np.ones(shape, np.float32)
        y, saved = k.forward(native_impl.to(x), 0.5, 1)
        assert y.shape == shape
        np.testing.assert_array_equal(native_impl.host(y), R.dropout_forward(x, 0.5, 1)[0])
        assert k.backward(y, 0.5, saved).shape == shape


def test_saved_is_only_seed_and_shape(native_impl):
    _, saved = native_impl.kernel("dropout").forward(native_impl.to(np.ones((64, 128), np.float32)), 0.5, 2**64 + 5)
    assert saved == (5, (64, 128))  # seed taken mod 2^64, as the reference; no mask stored


def test_errors_name_the_argument(native_impl):
    k, to, cuda = native_impl.kernel("dropout"), native_impl.to, native_impl.device == "cuda"
    bad_type = TypeError if cuda else ValueError
    x = to(np.ones((4, 3), np.float32))
    with pytest.raises(bad_type, match="dropout_forward: x:? (must be|expected dtype) float32"):
        k.forward(to(np.ones((4, 3), np.float64)), 0.5, 0)
    with pytest.raises(ValueError, match="dropout_forward: x:? (must be C-contiguous|expected a C-contiguous array)"):
        k.forward(x.T, 0.5, 0)
    with pytest.raises(ValueError, match=r"dropout_forward: p:? must be in \[0, 1\)"):
        k.forward(x, 1.0, 0)
    with pytest.raises(bad_type, match="dropout_forward: seed:? (must be|expected) an int"):
        k.forward(x, 0.5, "7")
    _, saved = k.forward(x, 0.5, 0)
    with pytest.raises(ValueError, match=r"dropout_backward: grad:? (must have the forward input's|expected) "
                                         r"shape \(4, 3\)"):
        k.backward(to(np.ones((3, 4), np.float32)), 0.5, saved)
    with pytest.raises(bad_type, match="dropout_backward: grad:? (must be|expected dtype) float32"):
        k.backward(to(np.ones((4, 3), np.float64)), 0.5, saved)
    with pytest.raises(ValueError, match="dropout_backward: saved must be"):
        k.backward(x, 0.5, (0,))
    if cuda:
        with pytest.raises(TypeError, match="dropout_forward: x: expected a cupy array"):
            k.forward(np.ones((4, 3), np.float32), 0.5, 0)


@pytest.mark.skipif(not kcuda.has("qkv_attention"), reason="tinygpt._C was built without the CUDA attention kernel")
@pytest.mark.parametrize("start, stop", [(0, 2), (2, 5), (3, 4)])
def test_cuda_a_batch_slice_draws_the_global_batchs_mask_rows(cuda_impl, start, stop):
    """Data parallelism (random.batch_rows): rows start.. of a batch under the seed shifted to row `start`
    get the whole batch's dropout and attention-probability masks on the CUDA kernels too."""
    cp = tg.backend.cupy()
    rng = np.random.default_rng(start)
    x = rng.standard_normal((5, 6, 7)).astype(np.float32)
    seed = 2**63 + 12345  # shifted seeds use all 64 bits
    full, _ = kcuda.dropout.dropout_forward(cp.asarray(x), 0.3, seed)
    part, _ = kcuda.dropout.dropout_forward(cp.asarray(x[start:stop]), 0.3,
                                            R.dropout_seed_for_rows(seed, x[start:stop].shape, start))
    np.testing.assert_array_equal(cp.asnumpy(part), cp.asnumpy(full)[start:stop])
    B, T, nh, hs = 5, 9, 2, 4
    qkv = rng.standard_normal((B, T, 3 * nh * hs)).astype(np.float32)
    full, _ = kcuda.attention.qkv_attention_forward(cp.asarray(qkv), nh, True, None, 0.2, seed, 0.5)
    part, _ = kcuda.attention.qkv_attention_forward(cp.asarray(qkv[start:stop]), nh, True, None, 0.2,
                                                    R.dropout_seed_for_rows(seed, (stop - start, nh, T, T), start), 0.5)
    np.testing.assert_allclose(cp.asnumpy(part), cp.asnumpy(full)[start:stop], rtol=1e-6, atol=1e-7)
    if start > 0:  # without the shift the slice would draw the first rows' masks
        wrong, _ = kcuda.attention.qkv_attention_forward(cp.asarray(qkv[start:stop]), nh, True, None, 0.2, seed, 0.5)
        assert np.abs(cp.asnumpy(wrong) - cp.asnumpy(full)[start:stop]).max() > 1e-3


# ----------------------------------------------------------------------------- dispatch and autograd
def test_dispatch():
    if not kernels.native_enabled():
        pytest.skip("tinygpt._C is not built (or TINYGPT_NATIVE=0)")
    x = np.ones((4, 3), np.float32)
    with kernels.use_native(True):  # also under TINYGPT_NATIVE=0
        assert kernels.select("dropout", x).name == "native-cpu"
    assert kernels.select("dropout", x.astype(np.float64)).name == "reference"
    assert kernels.select("dropout", x.T).name == "reference"
    with kernels.use_native(False):
        assert kernels.select("dropout", x).name == "reference"


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_autograd_native_equals_reference(p):
    xa = np.random.default_rng(0).standard_normal((8, 33)).astype(np.float32)
    ga = np.random.default_rng(1).standard_normal((8, 33)).astype(np.float32)
    results = {}
    for native in (True, False):
        with kernels.use_native(native):
            x = tg.Tensor(xa, requires_grad=True)
            tg.manual_seed(123)
            y = F.dropout(x, p)
            (y * tg.Tensor(ga)).sum().backward()
            results[native] = (y.numpy(), x.grad.numpy())
    np.testing.assert_array_equal(results[True][0], results[False][0])
    np.testing.assert_array_equal(results[True][1], results[False][1])


# ----------------------------------------------------------------------------- tinygpt.functional
@pytest.mark.parametrize("p", [0.1, 0.5, 0.8])
def test_dropout_statistics(kernel_impl, p):
    x = tg.ones(200_000)
    y = F.dropout(x, p).numpy()
    scale = 1.0 / (1.0 - p)
    kept = y != 0
    np.testing.assert_allclose(y[kept], scale, rtol=1e-6)  # inverted scaling of the kept elements
    # the dropped fraction is Binomial(n, p)/n with std sqrt(p(1-p)/n) <= 0.0012: allow 5 std
    assert abs((~kept).mean() - p) < 0.006
    assert abs(y.mean() - 1.0) < 5 * math.sqrt(p / (1 - p) / x.size)  # mean preserved


def test_dropout_seed_reproducible(kernel_impl):
    x = tg.randn(64, 33)
    tg.manual_seed(11)
    a = F.dropout(x, 0.5).numpy()
    b = F.dropout(x, 0.5).numpy()
    tg.manual_seed(11)
    c = F.dropout(x, 0.5).numpy()
    np.testing.assert_array_equal(a, c)
    assert not np.array_equal(a, b)  # each call draws a new mask


def test_dropout_identity_cases():
    x = tg.randn(5, 4, requires_grad=True)
    assert F.dropout(x, 0.7, training=False) is x
    assert F.dropout(x, 0.0) is x
    np.testing.assert_array_equal(F.dropout(x, 1.0).numpy(), np.zeros((5, 4)))
    for p in (-0.1, 1.5):
        with pytest.raises(ValueError, match="dropout"):
            F.dropout(x, p)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dropout_gradient_is_mask_times_scale(kernel_impl, dtype):
    x = tg.Tensor(np.random.default_rng(0).uniform(0.5, 1.5, (7, 9)).astype(dtype), requires_grad=True)
    y = F.dropout(x, 0.3)
    assert y.dtype == dtype
    w = np.random.default_rng(1).standard_normal((7, 9)).astype(dtype)
    y.backward(w)
    mask = y.numpy() != 0  # x has no zeros, so zeros in y are exactly the dropped elements
    np.testing.assert_allclose(x.grad.numpy(), w * mask / 0.7, rtol=1e-6)
    np.testing.assert_allclose(y.numpy(), x.numpy() * mask / 0.7, rtol=1e-6)
    assert x.grad.dtype == dtype


def test_dropout_finite_differences():
    """With the seed fixed before each call the mask is fixed, so dropout is linear in x."""
    (x,) = rng_arrays(0, (4, 5))

    def fn(t):
        tg.manual_seed(5)
        return F.dropout(t, 0.4)

    check_grads(fn, x)
