"""Fused ops (tinygpt.functional; gelu and softmax in tests/ops/): value vs a float64 NumPy computation (refs.py), float64
finite-difference gradients, torch.nn.functional where installed, errors and dropout/attention
properties.

float32 tests run on every kernel implementation (fixture `kernel_impl`: reference, and native
when built). Tolerances: float64 values 1e-12..1e-10; finite differences rtol 1e-5 / atol 1e-6;
float32 vs float64 NumPy or torch rtol 1e-5..1e-4.
"""
import math

import numpy as np
import pytest
from helpers import arrays, check_grads, compare_with_torch, floats, rng_arrays, seeds, shapes
from refs import F32, F32_GRAD, T64, VAL64, np_attention, np_cross_entropy, np_layer_norm, tf, visible  # noqa: F401
from hypothesis import assume, given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import tinygpt as tg
import tinygpt.functional as F
from tinygpt.kernels import reference

pytestmark = pytest.mark.usefixtures("seeded")

# ====================================================================== embedding
@given(data=st.data(), V=st.integers(1, 5), C=st.integers(1, 4), id_shape=shapes(0, 2, max_side=5))
def test_embedding(data, V, C, id_shape):
    ids = data.draw(hnp.arrays(np.int64, id_shape, elements=st.integers(0, V - 1)))  # repeats are likely
    w = data.draw(arrays((V, C)))
    out = check_grads(lambda w_: F.embedding(ids, w_), w)
    np.testing.assert_array_equal(out, w[ids])


def test_embedding_repeated_ids_scatter_add():
    w = tg.Tensor(np.arange(8.0).reshape(4, 2), requires_grad=True)
    ids = np.array([[1, 1, 3], [1, 0, 3]])
    F.embedding(ids, w).backward(np.ones((2, 3, 2)))
    np.testing.assert_array_equal(w.grad.numpy(), [[1, 1], [3, 3], [0, 0], [2, 2]])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_embedding_torch(kernel_impl, dtype):
    torch = pytest.importorskip("torch")
    ids = np.array([[0, 2, 2, 5], [5, 5, 1, 0]])
    (w,) = rng_arrays(0, (6, 3))
    tol = T64 if dtype == np.float64 else F32_GRAD
    compare_with_torch(lambda w_: F.embedding(tg.Tensor(ids), w_),
                       lambda w_: tf().embedding(torch.from_numpy(ids), w_), w, dtype=dtype, **tol)


@pytest.mark.parametrize("bad", [7, 100, -1])
def test_embedding_out_of_range_names_id(bad):
    with pytest.raises(ValueError, match=rf"embedding.*{bad}"):
        F.embedding(np.array([[0, bad, 1]]), tg.randn(7, 3))


def test_embedding_float_ids():
    with pytest.raises(TypeError, match="integers"):
        F.embedding(np.array([0.0, 1.0]), tg.randn(7, 3))


# ====================================================================== layer_norm
AFFINE = [(True, True), (True, False), (False, True), (False, False)]


@pytest.mark.parametrize("affine", AFFINE)
@given(seed=seeds, lead=shapes(0, 2, max_side=3), C=st.integers(2, 6))
def test_layer_norm(affine, seed, lead, C):
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


@pytest.mark.parametrize("affine", AFFINE)
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


# ====================================================================== cross_entropy
@given(data=st.data(), lead=shapes(1, 2, max_side=4), V=st.integers(1, 5))
def test_cross_entropy(data, lead, V):
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


# ====================================================================== dropout
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
