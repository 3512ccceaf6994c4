"""F.add_layer_norm (a two-output Function) and the multi-output mechanism in autograd.py.

Runs without the native extension: float64 inputs always take the reference kernels.
"""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import tinygpt as tg
import tinygpt.functional as F
from tinygpt import kernels
from tinygpt.autograd import Function
from tinygpt.nn import Block


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
