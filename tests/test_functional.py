"""Fused ops (tinygpt.functional; the other families in tests/ops/test_<family>.py): value vs a float64 NumPy
computation (refs.py), float64 finite-difference gradients, torch.nn.functional where installed, errors and
attention properties.

float32 tests run on every kernel implementation (fixture `kernel_impl`: reference, and native
when built). Tolerances: float64 values 1e-12..1e-10; finite differences rtol 1e-5 / atol 1e-6;
float32 vs float64 NumPy or torch rtol 1e-5..1e-4.
"""
import numpy as np
import pytest
from helpers import arrays, check_grads, compare_with_torch, rng_arrays, seeds, shapes
from refs import F32, F32_GRAD, T64, VAL64, np_attention, tf, visible  # noqa: F401
from hypothesis import given
from hypothesis import strategies as st

import tinygpt as tg
import tinygpt.functional as F
from tinygpt.kernels import reference

pytestmark = pytest.mark.usefixtures("seeded")

# ====================================================================== linear
@given(data=st.data(), lead=shapes(0, 2, max_side=3), n_in=st.integers(1, 4), n_out=st.integers(1, 4),
       bias=st.booleans())
def test_linear(data, lead, n_in, n_out, bias):
    x = data.draw(arrays(lead + (n_in,)))
    w = data.draw(arrays((n_out, n_in)))
    b = data.draw(arrays((n_out,)))
    if bias:
        out = check_grads(F.linear, x, w, b)
        expected = x @ w.T + b
    else:
        out = check_grads(lambda x_, w_: F.linear(x_, w_), x, w)
        expected = x @ w.T
    np.testing.assert_allclose(out, expected, **VAL64)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_linear_torch(kernel_impl, dtype, bias):
    x, w, b = rng_arrays(0, (2, 3, 5), (4, 5), (4,))
    tol = T64 if dtype == np.float64 else dict(**F32_GRAD)
    if bias:
        compare_with_torch(F.linear, tf().linear, x, w, b, dtype=dtype, **tol)
    else:
        compare_with_torch(F.linear, tf().linear, x, w, dtype=dtype, **tol)


def test_linear_shape_errors():
    with pytest.raises(ValueError, match=r"linear.*\(2, 3\).*\(4, 5\)"):
        F.linear(tg.randn(2, 3), tg.randn(4, 5))
    with pytest.raises(ValueError, match=r"bias.*\(4,\)"):
        F.linear(tg.randn(2, 5), tg.randn(4, 5), tg.randn(3))


# ====================================================================== attention
@st.composite
def attention_case(draw):
    B, nh, hs = draw(st.integers(1, 2)), draw(st.integers(1, 2)), draw(st.integers(1, 4))
    t_q = draw(st.integers(1, 5))
    t_k = draw(st.integers(t_q, 6))  # Tq <= Tk: queries are the last positions (a KV cache)
    causal = draw(st.booleans())
    window = draw(st.one_of(st.none(), st.integers(1, 4)))
    return (B, nh, t_q, hs), (B, nh, t_k, hs), causal, window


@given(case=attention_case(), seed=seeds)
def test_attention(case, seed):
    sq, sk, causal, window = case
    q, k, v = rng_arrays(seed, sq, sk, sk, lo=-1.5, hi=1.5)
    out = check_grads(lambda q_, k_, v_: F.scaled_dot_product_attention(q_, k_, v_, causal=causal, window=window),
                      q, k, v)
    np.testing.assert_allclose(out, np_attention(q, k, v, causal, window), rtol=1e-10, atol=1e-12)


def test_attention_explicit_scale_and_non_causal_longer_queries():
    q, k, v = rng_arrays(0, (2, 5, 3), (2, 3, 3), (2, 3, 4))  # no head dim, Tq > Tk, hs_v != hs
    out = check_grads(lambda a, b, c: F.scaled_dot_product_attention(a, b, c, causal=False, scale=0.3), q, k, v)
    np.testing.assert_allclose(out, np_attention(q, k, v, False, None, scale=0.3), rtol=1e-10, atol=1e-12)


ATTN_CASES = [(True, None, 6, 6), (False, None, 6, 6), (True, 2, 6, 6), (False, 2, 6, 6), (True, 3, 2, 7),
              (True, None, 1, 5), (False, 3, 3, 7), (True, 1, 4, 4)]


@pytest.mark.parametrize("causal, window, t_q, t_k", ATTN_CASES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_attention_torch(kernel_impl, dtype, causal, window, t_q, t_k):
    torch = pytest.importorskip("torch")
    q, k, v = rng_arrays(5, (2, 3, t_q, 4), (2, 3, t_k, 4), (2, 3, t_k, 4))
    mask = torch.from_numpy(visible(t_q, t_k, causal, window))  # explicit: torch's is_causal aligns top-left
    tol = T64 if dtype == np.float64 else F32_GRAD
    out = compare_with_torch(
        lambda a, b, c: F.scaled_dot_product_attention(a, b, c, causal=causal, window=window),
        lambda a, b, c: tf().scaled_dot_product_attention(a, b, c, attn_mask=mask),
        q, k, v, dtype=dtype, **tol)
    np.testing.assert_allclose(out, np_attention(q, k, v, causal, window), **(T64 if dtype == np.float64 else F32))


@pytest.mark.parametrize("causal, window, t_q, t_k", ATTN_CASES)
def test_attention_cannot_see_outside_its_band(kernel_impl, causal, window, t_q, t_k):
    """Changing k/v at a key a query must not see leaves that query's output row unchanged;
    changing a key it does see changes it (so the test can fail)."""
    rng = np.random.default_rng(7)
    q, k, v = (rng.standard_normal(s).astype(np.float32) for s in [(1, 2, t_q, 4), (1, 2, t_k, 4), (1, 2, t_k, 4)])

    def attend(k_, v_):
        return F.scaled_dot_product_attention(tg.Tensor(q), tg.Tensor(k_), tg.Tensor(v_), causal=causal,
                                              window=window).numpy()

    base = attend(k, v)
    seen = visible(t_q, t_k, causal, window)
    for j in range(t_k):
        k2, v2 = k.copy(), v.copy()
        k2[..., j, :] += rng.standard_normal(4).astype(np.float32) * 3
        v2[..., j, :] += rng.standard_normal(4).astype(np.float32) * 3
        out = attend(k2, v2)
        for i in range(t_q):
            change = np.abs(out[..., i, :] - base[..., i, :]).max()
            if seen[i, j]:
                assert change > 1e-3, f"query {i} ignores visible key {j}"
            else:
                assert change <= 1e-6, f"query {i} sees masked key {j} (change {change})"


def test_attention_single_token_returns_v(kernel_impl):
    q, k, v = rng_arrays(0, (2, 3, 1, 4), (2, 3, 1, 4), (2, 3, 1, 4))
    for causal in (True, False):
        out = F.scaled_dot_product_attention(tg.Tensor(q), tg.Tensor(k), tg.Tensor(v), causal=causal, window=1)
        np.testing.assert_allclose(out.numpy(), v, rtol=1e-12)


def test_attention_dropout_reproducible_and_unbiased(kernel_impl):
    q, k, v = (a.astype(np.float32) for a in rng_arrays(0, (1, 1, 4, 3), (1, 1, 4, 3), (1, 1, 4, 3)))
    args = [tg.Tensor(a) for a in (q, k, v)]
    tg.manual_seed(3)
    a = F.scaled_dot_product_attention(*args, dropout_p=0.2).numpy()
    tg.manual_seed(3)
    b = F.scaled_dot_product_attention(*args, dropout_p=0.2).numpy()
    np.testing.assert_array_equal(a, b)
    plain = np_attention(q.astype(np.float64), k.astype(np.float64), v.astype(np.float64), True, None)
    assert np.abs(a - plain).max() > 1e-3  # dropout did something
    # inverted dropout keeps the expectation: the mean over many masks approaches the plain output
    # (per-draw std < 0.5 here, so the std of a 4000-draw mean is < 0.008)
    mean = np.mean([F.scaled_dot_product_attention(*args, dropout_p=0.2).numpy() for _ in range(4000)], axis=0)
    np.testing.assert_allclose(mean, plain, atol=0.05)


def test_attention_dropout_finite_differences():
    q, k, v = rng_arrays(1, (1, 2, 3, 2), (1, 2, 3, 2), (1, 2, 3, 2))

    def fn(a, b, c):
        tg.manual_seed(9)
        return F.scaled_dot_product_attention(a, b, c, dropout_p=0.3)

    check_grads(fn, q, k, v)


def test_attention_errors():
    q = tg.randn(1, 2, 4, 8)
    with pytest.raises(ValueError, match="Tq <= Tk"):
        F.scaled_dot_product_attention(q, tg.randn(1, 2, 3, 8), tg.randn(1, 2, 3, 8))
    with pytest.raises(ValueError, match="do not match"):
        F.scaled_dot_product_attention(q, tg.randn(1, 2, 4, 7), tg.randn(1, 2, 4, 8))
    with pytest.raises(ValueError, match="window"):
        F.scaled_dot_product_attention(q, q, q, window=0)
    with pytest.raises(ValueError, match="dropout_p"):
        F.scaled_dot_product_attention(q, q, q, dropout_p=1.0)
