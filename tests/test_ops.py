"""Primitive ops (tinygpt/ops.py through the Tensor API): value vs NumPy float64, float64
finite-difference gradients (tests/helpers.py), shapes from hypothesis, and torch where installed.

Tolerances: float64 values 1e-12 relative; finite differences rtol 1e-5 / atol 1e-6;
torch float64 comparisons 1e-10.
"""
import math

import numpy as np
import pytest
from helpers import (arrays, away_from_zero, broadcasts_to, check_grads, compare_with_torch, floats, rng_arrays,
                     seeds, shape_and_axis, shapes)
from hypothesis import assume, given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import tinygpt as tg
from tinygpt import ops

pytestmark = pytest.mark.usefixtures("seeded")

VAL = dict(rtol=1e-12, atol=1e-12)  # float64 forward vs numpy float64
TORCH64 = dict(rtol=1e-10, atol=1e-10)

two_shapes = hnp.mutually_broadcastable_shapes(num_shapes=2, min_dims=0, max_dims=3, max_side=4)


def t64(a, requires_grad=True):
    return tg.Tensor(np.array(a, dtype=np.float64), requires_grad=requires_grad)


# ============================================================== arithmetic (broadcasting)
BINARY = {
    "add": (lambda a, b: a + b, floats()),
    "sub": (lambda a, b: a - b, floats()),
    "mul": (lambda a, b: a * b, floats()),
    "div": (lambda a, b: a / b, away_from_zero(0.5, 3.0)),
}


@pytest.mark.parametrize("name", BINARY)
@given(data=st.data(), bshapes=two_shapes)
def test_binary_broadcasting(name, data, bshapes):
    op, b_elements = BINARY[name]
    sa, sb = bshapes.input_shapes
    a = data.draw(arrays(sa))
    b = data.draw(arrays(sb, elements=b_elements))
    out = check_grads(op, a, b)
    assert out.shape == bshapes.result_shape
    np.testing.assert_allclose(out, op(a, b), **VAL)


@pytest.mark.parametrize("name", BINARY)
@pytest.mark.parametrize("scalar", [2.5, -0.75, 3])
@given(a=arrays(shapes(), elements=away_from_zero(0.5, 3.0)))
def test_binary_with_python_scalar(name, scalar, a):
    op = BINARY[name][0]
    right = check_grads(lambda x: op(x, scalar), a)
    left = check_grads(lambda x: op(scalar, x), a)  # __radd__, __rsub__, ...
    np.testing.assert_allclose(right, op(a, scalar), **VAL)
    np.testing.assert_allclose(left, op(scalar, a), **VAL)


@given(a=arrays(shapes()))
def test_neg(a):
    np.testing.assert_allclose(check_grads(lambda x: -x, a), -a, **VAL)


@pytest.mark.parametrize("p", [0, 1, 2, 3, -1, -2])
@given(a=arrays(shapes(), elements=away_from_zero(0.3, 2.0)))
def test_pow_integer_exponent(p, a):
    np.testing.assert_allclose(check_grads(lambda x: x**p, a), a**p, **VAL)


@pytest.mark.parametrize("p", [0.5, -0.5, 1.5, 2.7])
@given(a=arrays(shapes(), elements=floats(0.3, 3.0)))
def test_pow_fractional_exponent(p, a):
    np.testing.assert_allclose(check_grads(lambda x: x**p, a), a**p, **VAL)


def test_pow_rejects_tensor_exponent():
    with pytest.raises(TypeError, match="pow"):
        tg.ones(2) ** tg.ones(2)


# ============================================================== matmul
@st.composite
def matmul_shapes(draw):
    """(shape_a, shape_b): batch dims that broadcast, sometimes a 1-D operand on either side."""
    m, k, n = (draw(st.integers(1, 4)) for _ in range(3))
    batch_a, batch_b = draw(hnp.mutually_broadcastable_shapes(num_shapes=2, max_dims=2, max_side=3)).input_shapes
    sa = (k,) if draw(st.integers(0, 4)) == 0 else batch_a + (m, k)
    sb = (k,) if draw(st.integers(0, 4)) == 0 else batch_b + (k, n)
    return sa, sb


@given(data=st.data(), ab=matmul_shapes())
def test_matmul(data, ab):
    a, b = data.draw(arrays(ab[0])), data.draw(arrays(ab[1]))
    out = check_grads(lambda x, y: x @ y, a, b)
    expected = np.matmul(a, b)
    assert out.shape == expected.shape
    np.testing.assert_allclose(out, expected, **VAL)


@pytest.mark.parametrize("sa, sb", [
    ((3,), (3,)),           # dot product -> 0-d
    ((3,), (3, 2)),         # vector @ matrix
    ((2, 3), (3,)),         # matrix @ vector
    ((3,), (4, 3, 2)),      # vector @ batch
    ((4, 2, 3), (3,)),      # batch @ vector
    ((1, 2, 3), (5, 3, 4)),  # batch broadcast from 1
    ((2, 1, 2, 3), (3, 3, 2)),  # different batch ranks
    ((1, 1), (1, 1)),
])
def test_matmul_fixed_shapes(sa, sb):
    a, b = rng_arrays(0, sa, sb)
    np.testing.assert_allclose(check_grads(lambda x, y: x @ y, a, b), np.matmul(a, b), **VAL)


def test_matmul_error_names_shapes():
    with pytest.raises(ValueError) as exc:
        tg.randn(4, 3) @ tg.randn(5, 2)
    msg = str(exc.value)
    for part in ("matmul", "(4, 3)", "(5, 2)", "3 and 5"):
        assert part in msg, msg


def test_matmul_batch_mismatch_error():
    with pytest.raises(ValueError, match=r"matmul.*\(2, 3, 4\).*\(5, 4, 2\)"):
        tg.randn(2, 3, 4) @ tg.randn(5, 4, 2)


# ============================================================== unary elementwise
UNARY = {
    "exp": (lambda x: x.exp(), np.exp, floats(-3, 3)),
    "log": (lambda x: x.log(), np.log, floats(0.1, 5)),
    "sqrt": (lambda x: x.sqrt(), np.sqrt, floats(0.1, 5)),
    "tanh": (lambda x: x.tanh(), np.tanh, floats(-3, 3)),
    "relu": (lambda x: x.relu(), lambda a: np.maximum(a, 0.0), away_from_zero(0.01, 3)),
    "abs": (lambda x: x.abs(), np.abs, away_from_zero(0.01, 3)),
}


@pytest.mark.parametrize("name", UNARY)
@given(data=st.data(), shape=shapes())
def test_unary(name, data, shape):
    op, ref, elements = UNARY[name]
    a = data.draw(arrays(shape, elements=elements))
    np.testing.assert_allclose(check_grads(op, a), ref(a), **VAL)


def test_relu_abs_gradient_at_zero_is_zero():
    x = t64([0.0, 0.0])
    (x.relu() + x.abs()).sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), [0.0, 0.0])  # the subgradient torch uses too


# ============================================================== where / maximum / minimum / masked_fill
@given(data=st.data(), bshapes=hnp.mutually_broadcastable_shapes(num_shapes=3, max_dims=3, max_side=4))
def test_where(data, bshapes):
    sc, sa, sb = bshapes.input_shapes
    cond = data.draw(hnp.arrays(np.bool_, sc))
    a, b = data.draw(arrays(sa)), data.draw(arrays(sb))
    out = check_grads(lambda x, y: tg.where(tg.Tensor(cond), x, y), a, b)
    np.testing.assert_array_equal(out, np.where(cond, a, b))


@pytest.mark.parametrize("fn, ref", [(tg.maximum, np.maximum), (tg.minimum, np.minimum)])
@given(seed=seeds, bshapes=two_shapes)
def test_maximum_minimum(fn, ref, seed, bshapes):
    a, b = rng_arrays(seed, *bshapes.input_shapes)
    assume(np.all(np.abs(np.subtract(a, b)) > 1e-3))  # no ties: finite differences need a smooth point
    np.testing.assert_array_equal(check_grads(fn, a, b), ref(a, b))


@pytest.mark.parametrize("fn", [tg.maximum, tg.minimum])
def test_maximum_minimum_ties_send_gradient_to_first_argument(fn):
    a, b = t64([1.0, 2.0, 3.0]), t64([1.0, 0.0, 5.0])
    fn(a, b).sum().backward()
    first = [1.0, 1.0, 0.0] if fn is tg.maximum else [1.0, 0.0, 1.0]
    np.testing.assert_array_equal(a.grad.numpy(), first)
    np.testing.assert_array_equal(b.grad.numpy(), 1.0 - np.array(first))


def test_maximum_with_scalar():
    x = t64([-1.0, 0.5, 2.0])
    y = tg.maximum(x, 0.0)
    y.sum().backward()
    np.testing.assert_array_equal(y.numpy(), [0.0, 0.5, 2.0])
    np.testing.assert_array_equal(x.grad.numpy(), [0.0, 1.0, 1.0])


@pytest.mark.parametrize("value", [0.0, 2.5])
@given(data=st.data(), sx=shapes(min_dims=1))
def test_masked_fill(value, data, sx):
    x = data.draw(arrays(sx))
    mask = data.draw(hnp.arrays(np.bool_, broadcasts_to(sx)))  # the mask broadcasts to x
    out = check_grads(lambda t: t.masked_fill(tg.Tensor(mask), value), x)
    np.testing.assert_array_equal(out, np.where(mask, value, x))


@pytest.mark.parametrize("value", [-1e9, -np.inf])
def test_masked_fill_large_values(value):
    """Attention-style fills: the filled entries take the value and pass no gradient."""
    (a,) = rng_arrays(0, (2, 3, 4))
    mask = np.triu(np.ones((4, 4), bool), k=1)[1:]  # (3, 4), broadcast over the batch
    x = tg.Tensor(a, requires_grad=True)
    y = x.masked_fill(mask, value)
    np.testing.assert_array_equal(y.numpy(), np.where(mask, value, a))
    w = np.random.default_rng(1).standard_normal(a.shape)
    y.backward(w)
    np.testing.assert_array_equal(x.grad.numpy(), np.where(mask, 0.0, w))


# ============================================================== reductions
@pytest.mark.parametrize("op", ["sum", "mean"])
@given(sa=shape_and_axis(), keepdims=st.booleans(), data=st.data())
def test_sum_mean(op, sa, keepdims, data):
    shape, axis = sa
    a = data.draw(arrays(shape))
    out = check_grads(lambda x: getattr(x, op)(axis=axis, keepdims=keepdims), a)
    expected = getattr(np, op)(a, axis=axis, keepdims=keepdims)
    assert out.shape == np.shape(expected)
    np.testing.assert_allclose(out, expected, **VAL)


@pytest.mark.parametrize("op", ["max", "min"])
@given(sa=shape_and_axis(), keepdims=st.booleans(), seed=seeds)
def test_max_min(op, sa, keepdims, seed):
    shape, axis = sa
    (a,) = rng_arrays(seed, shape)  # continuous values: no ties, so max is differentiable
    out = check_grads(lambda x: getattr(x, op)(axis=axis, keepdims=keepdims), a)
    expected = getattr(np, op)(a, axis=axis, keepdims=keepdims)
    assert out.shape == np.shape(expected)
    np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize("correction", [0, 1])
@given(sa=shape_and_axis(), keepdims=st.booleans(), data=st.data())
def test_var(correction, sa, keepdims, data):
    shape, axis = sa
    n = math.prod(shape[i] for i in (range(len(shape)) if axis is None else np.atleast_1d(axis)))
    assume(n > correction)
    a = data.draw(arrays(shape))
    out = check_grads(lambda x: x.var(axis=axis, keepdims=keepdims, correction=correction), a)
    np.testing.assert_allclose(out, np.var(a, axis=axis, keepdims=keepdims, ddof=correction), rtol=1e-10, atol=1e-12)


def test_max_ties_share_gradient_equally():
    x = t64([[1.0, 3.0, 3.0], [2.0, 2.0, 2.0]])
    x.max(axis=1).backward(np.array([1.0, 3.0]))
    np.testing.assert_allclose(x.grad.numpy(), [[0.0, 0.5, 0.5], [1.0, 1.0, 1.0]], rtol=1e-15)
    y = t64([1.0, 4.0, 4.0, 4.0])
    y.max().backward()
    np.testing.assert_allclose(y.grad.numpy(), [0.0, 1 / 3, 1 / 3, 1 / 3], rtol=1e-15)


def test_reduction_bad_axis():
    with pytest.raises(ValueError, match="axis 3"):
        tg.randn(2, 3).sum(axis=3)


# ============================================================== shape ops
def _factorizations(n):
    f, d = [], 2
    while n > 1:
        while n % d == 0:
            f.append(d)
            n //= d
        d += 1
    return f


@st.composite
def reshape_target(draw, shape):
    """Another shape with the same number of elements (maybe with one -1)."""
    ndim = draw(st.integers(1, 4))
    dims = [1] * ndim
    for p in _factorizations(math.prod(shape)):
        dims[draw(st.integers(0, ndim - 1))] *= p
    if draw(st.booleans()):
        dims[draw(st.integers(0, ndim - 1))] = -1
    return tuple(dims)


@pytest.mark.parametrize("method", ["reshape", "view"])
@given(data=st.data(), shape=shapes())
def test_reshape(method, data, shape):
    a = data.draw(arrays(shape))
    target = data.draw(reshape_target(shape))
    out = check_grads(lambda x: getattr(x, method)(*target), a)
    np.testing.assert_array_equal(out, a.reshape(target))
    # the tuple form and flatten
    assert tg.Tensor(a).reshape(target).shape == a.reshape(target).shape
    assert tg.Tensor(a).flatten().shape == (a.size,)


def test_reshape_error():
    with pytest.raises(ValueError, match=r"reshape.*\(2, 3\).*\(4, 2\)"):
        tg.randn(2, 3).reshape(4, 2)


@given(data=st.data(), shape=shapes(min_dims=1, max_dims=4))
def test_permute(data, shape):
    a = data.draw(arrays(shape))
    perm = tuple(data.draw(st.permutations(range(len(shape)))))
    np.testing.assert_array_equal(check_grads(lambda x: x.permute(*perm), a), a.transpose(perm))
    np.testing.assert_array_equal(check_grads(lambda x: x.transpose(perm), a), a.transpose(perm))


@given(data=st.data(), shape=shapes(min_dims=1, max_dims=4))
def test_transpose_two_axes_and_T(data, shape):
    a = data.draw(arrays(shape))
    i, j = (data.draw(st.integers(-len(shape), len(shape) - 1)) for _ in range(2))
    np.testing.assert_array_equal(check_grads(lambda x: x.transpose(i, j), a), np.swapaxes(a, i, j))
    np.testing.assert_array_equal(check_grads(lambda x: x.T, a), a.T)


def test_permute_error():
    with pytest.raises(ValueError, match="permute"):
        tg.randn(2, 3).permute(0, 0)


@st.composite
def expand_shapes(draw):
    """(source, target) with source broadcastable to target."""
    target = draw(shapes(min_dims=0, max_dims=4))
    return draw(broadcasts_to(target)), target


@given(data=st.data(), st_=expand_shapes())
def test_broadcast_to_and_expand(data, st_):
    source, target = st_
    a = data.draw(arrays(source))
    np.testing.assert_array_equal(check_grads(lambda x: x.broadcast_to(target), a), np.broadcast_to(a, target))
    # expand: -1 keeps an existing dimension
    offset = len(target) - len(source)
    spec = tuple(-1 if i >= offset and source[i - offset] == n and data.draw(st.booleans()) else n
                 for i, n in enumerate(target))
    np.testing.assert_array_equal(check_grads(lambda x: x.expand(*spec), a), np.broadcast_to(a, target))


def test_expand_error():
    with pytest.raises(ValueError, match=r"\(2, 3\).*\(4, 3\)"):
        tg.randn(2, 3).expand(4, 3)


@given(data=st.data(), shape=shapes(min_dims=0, max_dims=4, max_side=3))
def test_squeeze_unsqueeze(data, shape):
    a = data.draw(arrays(shape))
    np.testing.assert_array_equal(check_grads(lambda x: x.squeeze(), a), np.squeeze(a))
    ones = [i for i, n in enumerate(shape) if n == 1]
    if ones:
        ax = data.draw(st.sampled_from(ones))
        np.testing.assert_array_equal(check_grads(lambda x: x.squeeze(ax), a), np.squeeze(a, ax))
    ax = data.draw(st.integers(-len(shape) - 1, len(shape)))
    np.testing.assert_array_equal(check_grads(lambda x: x.unsqueeze(ax), a), np.expand_dims(a, ax))


def test_squeeze_non_unit_axis_raises():
    with pytest.raises(ValueError, match="squeeze"):
        tg.randn(2, 3).squeeze(1)


# ============================================================== concatenate / stack / split
@given(data=st.data(), shape=shapes(min_dims=1, max_dims=3), n=st.integers(1, 3))
def test_concatenate(data, shape, n):
    axis = data.draw(st.integers(-len(shape), len(shape) - 1))
    parts = []
    for _ in range(n):
        s = list(shape)
        s[axis] = data.draw(st.integers(1, 3))
        parts.append(data.draw(arrays(tuple(s))))
    out = check_grads(lambda *xs: tg.concatenate(list(xs), axis=axis), *parts)
    np.testing.assert_array_equal(out, np.concatenate(parts, axis=axis))
    assert tg.cat([tg.Tensor(p) for p in parts], axis=axis).shape == out.shape


def test_concatenate_error_names_shapes():
    with pytest.raises(ValueError, match=r"concatenate.*\(2, 3\).*\(2, 4\)"):
        tg.concatenate([tg.randn(2, 3), tg.randn(2, 4)], axis=0)


@given(data=st.data(), shape=shapes(min_dims=0, max_dims=3), n=st.integers(1, 3))
def test_stack(data, shape, n):
    axis = data.draw(st.integers(-len(shape) - 1, len(shape)))
    parts = [data.draw(arrays(shape)) for _ in range(n)]
    out = check_grads(lambda *xs: tg.stack(list(xs), axis=axis), *parts)
    np.testing.assert_array_equal(out, np.stack(parts, axis=axis))


def test_stack_error_names_shapes():
    with pytest.raises(ValueError, match=r"stack.*\(2, 3\).*\(3, 2\)"):
        tg.stack([tg.randn(2, 3), tg.randn(3, 2)])


@given(data=st.data(), shape=shapes(min_dims=1, max_dims=3, max_side=5))
def test_split(data, shape):
    axis = data.draw(st.integers(0, len(shape) - 1))
    a = data.draw(arrays(shape))
    size = data.draw(st.integers(1, shape[axis] + 1))
    outs = check_grads(lambda x: x.split(size, axis=axis), a)
    expected = np.split(a, list(range(size, shape[axis], size)), axis=axis)
    assert len(outs) == len(expected)
    for o, e in zip(outs, expected):
        np.testing.assert_array_equal(o, e)
    # explicit sections
    cut = data.draw(st.integers(0, shape[axis]))
    outs = check_grads(lambda x: tg.split(x, [cut, shape[axis] - cut], axis=axis), a)
    for o, e in zip(outs, np.split(a, [cut], axis=axis)):
        np.testing.assert_array_equal(o, e)


@given(data=st.data(), shape=shapes(min_dims=1, max_dims=4, max_side=4))
def test_unbind(data, shape):
    """Values = the slices; gradients (finite differences) also when only some outputs are used."""
    axis = data.draw(st.integers(-len(shape), len(shape) - 1))
    a = data.draw(arrays(shape))
    outs = check_grads(lambda x: x.unbind(axis), a)
    expected = [np.take(a, i, axis=axis) for i in range(shape[axis])]
    assert len(outs) == len(expected)
    for o, e in zip(outs, expected):
        np.testing.assert_array_equal(o, e)
    used = data.draw(st.integers(0, shape[axis] - 1))  # only one slice reaches the loss: the rest stay 0
    x = tg.Tensor(a.copy(), requires_grad=True)
    (tg.unbind(x, axis)[used] * 3.0).sum().backward()
    want = np.zeros_like(a)
    np.moveaxis(want, axis, 0)[used] = 3.0
    np.testing.assert_array_equal(x.grad.numpy(), want)


def test_unbind_0d_error():
    with pytest.raises(ValueError, match="unbind.*0-d"):
        tg.tensor(1.0).unbind()


def test_split_bad_sections():
    with pytest.raises(ValueError, match="sum to 4"):
        tg.split(tg.randn(5), [2, 2])


# ============================================================== getitem
@given(data=st.data(), shape=shapes(min_dims=1, max_dims=4))
def test_getitem_basic(data, shape):
    """ints, slices (any step, negative too), None and Ellipsis."""
    a = data.draw(arrays(shape))
    index = data.draw(hnp.basic_indices(shape, allow_newaxis=True, allow_ellipsis=True))
    np.testing.assert_array_equal(check_grads(lambda x: x[index], a), a[index])


@given(data=st.data(), shape=shapes(min_dims=1, max_dims=3))
def test_getitem_integer_arrays_repeated(data, shape):
    """Integer-array indexing with repeated (and negative) indices: backward is a scatter-add."""
    a = data.draw(arrays(shape))
    index = data.draw(hnp.integer_array_indices(shape, result_shape=shapes(min_dims=1, max_dims=2, max_side=6)))
    out = check_grads(lambda x: x[tuple(tg.Tensor(i) for i in index)], a)
    np.testing.assert_array_equal(out, a[index])


@given(data=st.data(), shape=shapes(min_dims=1, max_dims=3))
def test_getitem_boolean_mask(data, shape):
    a = data.draw(arrays(shape))
    k = data.draw(st.integers(1, len(shape)))
    mask = data.draw(hnp.arrays(np.bool_, shape[:k]))
    np.testing.assert_array_equal(check_grads(lambda x: x[tg.Tensor(mask)], a), a[mask])


@pytest.mark.parametrize("index", [
    (slice(None), [0, 0, 2]),
    ([1, 1, 0], slice(1, None)),
    (Ellipsis, [2, -1, 2]),
    (0, [0, 0]),
    ([0, 1, 1], [2, 2, 2]),
    (np.array([True, False]), slice(None, None, -1)),
])
def test_getitem_mixed(index):
    (a,) = rng_arrays(0, (2, 3))
    np.testing.assert_array_equal(check_grads(lambda x: x[index], a), a[index])


def test_getitem_repeated_index_accumulates():
    x = t64([1.0, 2.0, 3.0])
    x[[0, 0, 2, 0]].sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), [3.0, 0.0, 1.0])


def test_getitem_out_of_range_names_shape():
    with pytest.raises(IndexError, match=r"\(2, 3\)"):
        tg.randn(2, 3)[5]


# ============================================================== comparisons and casts
CMPS = ["__lt__", "__le__", "__gt__", "__ge__", "__eq__", "__ne__"]


@pytest.mark.parametrize("cmp", CMPS)
@given(data=st.data(), bshapes=two_shapes)
def test_comparisons(cmp, data, bshapes):
    small = st.sampled_from([-1.0, 0.0, 0.5, 1.0])  # few values, so ties happen
    a = data.draw(arrays(bshapes.input_shapes[0], elements=small))
    b = data.draw(arrays(bshapes.input_shapes[1], elements=small))
    x = tg.Tensor(a, requires_grad=True)
    for other, ref in ((tg.Tensor(b), b), (0.5, 0.5)):
        out = getattr(x, cmp)(other)
        assert out.dtype == np.bool_
        assert not out.requires_grad and out.is_leaf
        np.testing.assert_array_equal(out.numpy(), getattr(a, cmp)(ref))


@pytest.mark.parametrize("src, dst", [(np.float32, np.float64), (np.float64, np.float32), (np.float64, np.float64),
                                      (np.float32, np.float16)])
def test_cast(src, dst):
    (a,) = rng_arrays(0, (3, 4))
    x = tg.Tensor(a.astype(src), requires_grad=True)
    y = x.to(dtype=dst)
    assert y.dtype == dst
    np.testing.assert_array_equal(y.numpy(), a.astype(src).astype(dst))
    w = np.arange(12.0).reshape(3, 4).astype(dst)
    y.backward(w)
    assert x.grad.dtype == src
    np.testing.assert_array_equal(x.grad.numpy(), w.astype(src))


def test_cast_helpers():
    x = tg.Tensor(np.ones(2, np.float32))
    assert x.double().dtype == np.float64 and x.double().float().dtype == np.float32
    assert x.long().dtype == np.int64


@given(a=arrays(shapes()))
def test_cast_function_in_a_chain(a):
    """The Cast Function (float64 -> float64 here, so finite differences stay exact) passes the gradient through."""
    out = check_grads(lambda x: (ops.Cast.apply(x * 3.0, np.dtype(np.float64))).exp(), a)
    np.testing.assert_allclose(out, np.exp(a * 3.0), **VAL)


# ============================================================== error messages: broadcasting
@pytest.mark.parametrize("name, op", [("add", lambda a, b: a + b), ("sub", lambda a, b: a - b),
                                      ("mul", lambda a, b: a * b), ("div", lambda a, b: a / b)])
def test_broadcast_error_names_op_and_shapes(name, op):
    with pytest.raises(ValueError) as exc:
        op(tg.randn(2, 3), tg.randn(4))
    msg = str(exc.value)
    assert name in msg and "(2, 3)" in msg and "(4,)" in msg, msg


def test_where_broadcast_error():
    with pytest.raises(ValueError, match=r"where.*\(2,\).*\(3,\)"):
        tg.where(tg.Tensor(np.array([True, False])), tg.randn(3), 0.0)


# ============================================================== dtype rules
DTYPES = [np.float32, np.float64, np.int64, np.int32, np.bool_]


@pytest.mark.parametrize("da, db", [(a, b) for a in DTYPES for b in DTYPES if not a == b == np.bool_])
def test_binary_dtype_promotion_like_numpy(da, db):
    a, b = np.ones((2, 3), da), np.full((3,), 2, db)
    for op in (lambda x, y: x + y, lambda x, y: x * y, lambda x, y: x / y):
        assert op(tg.Tensor(a), tg.Tensor(b)).dtype == op(a, b).dtype


def test_mixed_dtype_gradients_keep_each_input_dtype():
    x = tg.Tensor(np.ones(3, np.float32), requires_grad=True)
    y = tg.Tensor(np.full(3, 2.0), requires_grad=True)
    out = x * y
    assert out.dtype == np.float64
    out.sum().backward()
    assert x.grad.dtype == np.float32 and y.grad.dtype == np.float64
    np.testing.assert_array_equal(x.grad.numpy(), [2.0, 2.0, 2.0])


@pytest.mark.parametrize("scalar", [2, 2.5, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
def test_python_scalars_are_weak(scalar, dtype):
    x = tg.Tensor(np.ones(3, dtype))
    for y in (x + scalar, scalar * x, x / scalar, scalar - x, x**2):
        assert y.dtype == dtype


FLOAT32_OPS = {
    "add": lambda x, y: x + y, "sub": lambda x, y: x - y, "mul": lambda x, y: x * y,
    "div": lambda x, y: x / (y * y + 1.0), "matmul": lambda x, y: x @ y.T, "pow": lambda x, y: (x * x + 1.0) ** 0.5,
    "exp": lambda x, y: x.exp(), "log": lambda x, y: (x * x + 1.0).log(), "sqrt": lambda x, y: (x * x + 1.0).sqrt(),
    "tanh": lambda x, y: x.tanh(), "relu": lambda x, y: x.relu(), "abs": lambda x, y: x.abs(),
    "sum": lambda x, y: x.sum(axis=0), "mean": lambda x, y: x.mean(), "var": lambda x, y: x.var(axis=1),
    "max": lambda x, y: x.max(axis=-1), "maximum": lambda x, y: tg.maximum(x, y),
    "where": lambda x, y: tg.where(x > 0, x, y),
    "masked_fill": lambda x, y: x.masked_fill(y > 0, -1e9), "getitem": lambda x, y: x[[0, 0, 1]],
    "reshape": lambda x, y: x.reshape(-1), "permute": lambda x, y: x.permute(1, 0),
    "expand": lambda x, y: x[None].expand(2, 3, 4),
    "cat": lambda x, y: tg.cat([x, y]), "stack": lambda x, y: tg.stack([x, y]), "scalar-mul": lambda x, y: 0.5 * x,
}


@pytest.mark.parametrize("name", FLOAT32_OPS)
def test_float32_stays_float32(name):
    """No silent float64 upcast: forward output and leaf gradients stay float32."""
    rng = np.random.default_rng(0)
    x = tg.Tensor(rng.standard_normal((3, 4)).astype(np.float32), requires_grad=True)
    y = tg.Tensor(rng.standard_normal((3, 4)).astype(np.float32), requires_grad=True)
    out = FLOAT32_OPS[name](x, y)
    assert out.dtype == np.float32
    out.sum().backward()
    for t in (x, y):
        assert t.grad is None or t.grad.dtype == np.float32


# ============================================================== torch oracle
def _compare_with_torch(fn, *arrays):
    """fn works on both tinygpt and torch tensors."""
    compare_with_torch(fn, fn, *arrays, **TORCH64)


@pytest.mark.parametrize("name", BINARY)
@given(seed=seeds, bshapes=two_shapes)
def test_torch_binary_broadcasting(name, seed, bshapes):
    a, b = rng_arrays(seed, *bshapes.input_shapes, lo=0.5, hi=2.0)
    _compare_with_torch(BINARY[name][0], a, b)


@given(seed=seeds, ab=matmul_shapes())
def test_torch_matmul(seed, ab):
    _compare_with_torch(lambda x, y: x @ y, *rng_arrays(seed, *ab))


@pytest.mark.parametrize("name", ["sum", "mean", "var", "amax"])
@given(seed=seeds, sa=shape_and_axis(), keepdims=st.booleans())
def test_torch_reductions(name, seed, sa, keepdims):
    torch = pytest.importorskip("torch")
    shape, axis = sa
    nd = len(shape)
    dim = tuple(range(nd)) if axis is None else axis
    n = math.prod(shape[i] for i in np.atleast_1d(dim))
    assume(name != "var" or n > 1)
    (a,) = rng_arrays(seed, shape)

    def fn(x):
        if isinstance(x, torch.Tensor):
            if name == "amax":
                return torch.amax(x, dim=dim, keepdim=keepdims)
            return getattr(x, name)(dim=dim, keepdim=keepdims)
        return getattr(x, "max" if name == "amax" else name)(axis=axis, keepdims=keepdims)

    _compare_with_torch(fn, a)


def test_torch_max_ties_share_gradient():
    """Tied maxima share the gradient equally, as torch.amax."""
    a = np.array([[1.0, 3.0, 3.0], [2.0, 2.0, 2.0]])
    torch = pytest.importorskip("torch")
    _compare_with_torch(lambda x: torch.amax(x, dim=1) if isinstance(x, torch.Tensor) else x.max(axis=1), a)
    _compare_with_torch(lambda x: torch.amax(x) if isinstance(x, torch.Tensor) else x.max(), a)


@given(seed=seeds, shape=shapes(min_dims=1, max_dims=3), data=st.data())
def test_torch_getitem_repeated_int_index(seed, shape, data):
    torch = pytest.importorskip("torch")
    (a,) = rng_arrays(seed, shape)
    idx = data.draw(hnp.arrays(np.int64, st.integers(1, 6), elements=st.integers(-shape[0], shape[0] - 1)))
    _compare_with_torch(lambda x: x[torch.from_numpy(idx)] if isinstance(x, torch.Tensor) else x[idx], a)
