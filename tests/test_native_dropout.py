"""Native CPU dropout (csrc/cpu/dropout.cpp) against the NumPy reference.

The mask is counter-based (reference.dropout_mask / csrc/cpu/rng.h), so native and reference
masks are identical and the float32 outputs agree BIT FOR BIT with the float32 reference (both
compute x * keep * float32(1 / (1 - p))). Against the float64 reference the only difference is
float32 rounding of the scale and of the product: |err| <= 2 eps32 |ref| (tolerance rtol=2.4e-7).
"""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import tinygpt as tg
import tinygpt.functional as F
from tinygpt import kernels
from tinygpt.kernels import reference as R

_cpu = getattr(kernels._native, "cpu", None)
pytestmark = pytest.mark.skipif(not hasattr(_cpu, "dropout_forward"),
                                reason="tinygpt._C is not built or has no cpu.dropout_forward")

RTOL64 = 2 * 2.0 ** -23 * 1.01  # two float32 roundings (scale, product), relative


shapes = hnp.array_shapes(min_dims=1, max_dims=4, min_side=1, max_side=37)
values = st.sampled_from([1.0, 1e-3, 1e4, 1e30])
probs = st.one_of(st.sampled_from([0.0, 0.1, 0.5, 0.9, 1 - 2.0 ** -24]), st.floats(0.0, 0.99))
seeds = st.one_of(st.integers(0, 2**63 - 1), st.integers(-(2**70), 2**70))


@given(shape=shapes, mag=values, p=probs, seed=seeds, data_seed=st.integers(0, 2**32 - 1))
def test_forward_backward_match_reference(shape, mag, p, seed, data_seed):
    rng = np.random.default_rng(data_seed)
    x = (rng.standard_normal(shape) * mag).astype(np.float32)
    g = (rng.standard_normal(shape) * mag).astype(np.float32)
    y, saved = _cpu.dropout_forward(x, p, seed)
    y_ref32, saved_ref = R.dropout_forward(x, p, seed)
    np.testing.assert_array_equal(y, y_ref32)  # same mask, same float32 arithmetic
    y_ref64, _ = R.dropout_forward(x.astype(np.float64), p, seed)
    np.testing.assert_allclose(y, y_ref64, rtol=RTOL64, atol=0)
    dx = _cpu.dropout_backward(g, p, saved)
    np.testing.assert_array_equal(dx, R.dropout_backward(g, p, saved_ref))
    np.testing.assert_allclose(dx, R.dropout_backward(g.astype(np.float64), p, saved_ref), rtol=RTOL64, atol=0)
    assert y.dtype == dx.dtype == np.float32 and y.shape == dx.shape == x.shape


@pytest.mark.parametrize("n", [1, 2**15 - 1, 2**15, 2**15 + 1, 100_003, 1 << 20])
def test_sizes_across_parallel_chunks(n):
    x = np.random.default_rng(n).standard_normal(n).astype(np.float32)
    y, saved = _cpu.dropout_forward(x, 0.3, n * 7919)
    np.testing.assert_array_equal(y, R.dropout_forward(x, 0.3, n * 7919)[0])
    if n >= 100_000:
        assert abs((y != 0).mean() - 0.7) < 0.01  # 5 sigma at n = 1e5


def test_empty_and_zero_d():
    for shape in [(0,), (3, 0), ()]:
        x = np.ones(shape, np.float32)
        y, saved = _cpu.dropout_forward(x, 0.5, 1)
        assert y.shape == shape
        np.testing.assert_array_equal(y, R.dropout_forward(x, 0.5, 1)[0])
        assert _cpu.dropout_backward(y, 0.5, saved).shape == shape


def test_saved_is_only_seed_and_shape():
    x = np.ones((64, 128), np.float32)
    y, saved = _cpu.dropout_forward(x, 0.5, 2**64 + 5)
    assert saved == (5, (64, 128))  # seed taken mod 2^64, as the reference; no mask stored


def test_errors():
    x = np.ones((4, 3), np.float32)
    with pytest.raises(ValueError, match="dropout_forward: x must be float32"):
        _cpu.dropout_forward(x.astype(np.float64), 0.5, 0)
    with pytest.raises(ValueError, match="dropout_forward: x must be C-contiguous"):
        _cpu.dropout_forward(x.T, 0.5, 0)
    with pytest.raises(ValueError, match=r"dropout_forward: p must be in \[0, 1\)"):
        _cpu.dropout_forward(x, 1.0, 0)
    with pytest.raises(ValueError, match="dropout_forward: seed must be an int"):
        _cpu.dropout_forward(x, 0.5, "7")
    _, saved = _cpu.dropout_forward(x, 0.5, 0)
    with pytest.raises(ValueError, match=r"dropout_backward: grad must have the forward input's shape \(4, 3\)"):
        _cpu.dropout_backward(np.ones((3, 4), np.float32), 0.5, saved)
    with pytest.raises(ValueError, match="dropout_backward: grad must be float32"):
        _cpu.dropout_backward(x.astype(np.float64), 0.5, saved)
    with pytest.raises(ValueError, match="dropout_backward: saved must be"):
        _cpu.dropout_backward(x, 0.5, (0,))


def test_dispatch():
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
