"""Primitive differentiable ops: each a Function with forward and backward side by side.

Everything else (the GPT layers in functional.py aside) composes these. All work on raw
arrays through `xp` (numpy or cupy). Binary ops broadcast; their backward sums the
gradient back to each input's shape with the one `unbroadcast` helper.
"""
from __future__ import annotations

import itertools
import math

from . import backend
from .autograd import Function
from .backend import xp as array_module


def unbroadcast(grad, shape):
    """Sum `grad` over the axes that broadcasting added or stretched, giving `shape`."""
    if grad.shape == tuple(shape):
        return grad
    extra = grad.ndim - len(shape)
    axes = tuple(range(extra)) + tuple(
        i + extra for i, n in enumerate(shape) if n == 1 and grad.shape[i + extra] != 1
    )
    out = grad.sum(axis=axes, keepdims=True) if axes else grad
    return out.reshape(shape)


def _shape(a):
    return getattr(a, "shape", ())


def _check_broadcast(op, a, b):
    sa, sb = _shape(a), _shape(b)
    for x, y in zip(reversed(sa), reversed(sb)):
        if x != y and x != 1 and y != 1:
            raise ValueError(f"{op}: shapes {sa} and {sb} cannot be broadcast together")


# ----------------------------------------------------------------------------- arithmetic
class Add(Function):
    @staticmethod
    def forward(ctx, a, b):
        _check_broadcast("add", a, b)
        ctx.shapes = (_shape(a), _shape(b))
        return a + b

    @staticmethod
    def backward(ctx, g):
        sa, sb = ctx.shapes
        ga = unbroadcast(g, sa) if ctx.needs_input_grad[0] else None
        gb = unbroadcast(g, sb) if ctx.needs_input_grad[1] else None
        return ga, gb


class Sub(Function):
    @staticmethod
    def forward(ctx, a, b):
        _check_broadcast("sub", a, b)
        ctx.shapes = (_shape(a), _shape(b))
        return a - b

    @staticmethod
    def backward(ctx, g):
        sa, sb = ctx.shapes
        ga = unbroadcast(g, sa) if ctx.needs_input_grad[0] else None
        gb = unbroadcast(-g, sb) if ctx.needs_input_grad[1] else None
        return ga, gb


class Mul(Function):
    @staticmethod
    def forward(ctx, a, b):
        _check_broadcast("mul", a, b)
        ctx.save_for_backward(a, b)
        return a * b

    @staticmethod
    def backward(ctx, g):
        a, b = ctx.saved
        ga = unbroadcast(g * b, _shape(a)) if ctx.needs_input_grad[0] else None
        gb = unbroadcast(g * a, _shape(b)) if ctx.needs_input_grad[1] else None
        return ga, gb


class Div(Function):
    @staticmethod
    def forward(ctx, a, b):
        _check_broadcast("div", a, b)
        ctx.save_for_backward(a, b)
        return a / b

    @staticmethod
    def backward(ctx, g):
        a, b = ctx.saved
        ga = unbroadcast(g / b, _shape(a)) if ctx.needs_input_grad[0] else None
        gb = unbroadcast(-g * a / (b * b), _shape(b)) if ctx.needs_input_grad[1] else None
        return ga, gb


class Neg(Function):
    @staticmethod
    def forward(ctx, a):
        return -a

    @staticmethod
    def backward(ctx, g):
        return -g


class Pow(Function):
    """a ** p for a scalar exponent p."""

    @staticmethod
    def forward(ctx, a, p):
        ctx.save_for_backward(a)
        ctx.p = p
        return a**p

    @staticmethod
    def backward(ctx, g):
        (a,) = ctx.saved
        p = ctx.p
        return g * p * a ** (p - 1), None


class MatMul(Function):
    """numpy.matmul semantics: 1-D operands are promoted, batch dimensions broadcast."""

    @staticmethod
    def forward(ctx, a, b):
        sa, sb = a.shape, b.shape
        if a.ndim == 0 or b.ndim == 0:
            raise ValueError(f"matmul: {sa} @ {sb} — operands must have at least one dimension")
        k_a = sa[-1]
        k_b = sb[0] if b.ndim == 1 else sb[-2]
        if k_a != k_b:
            raise ValueError(f"matmul: {sa} @ {sb} — inner dimensions {k_a} and {k_b} differ")
        if a.ndim > 2 and b.ndim > 2:
            try:
                _check_broadcast("matmul", a[..., 0, 0], b[..., 0, 0])
            except ValueError:
                raise ValueError(f"matmul: {sa} @ {sb} — batch dimensions {sa[:-2]} and {sb[:-2]} "
                                 "cannot be broadcast together") from None
        ctx.save_for_backward(a, b)
        return array_module(a).matmul(a, b)

    @staticmethod
    def backward(ctx, g):
        a, b = ctx.saved
        xp = array_module(g)
        a2 = a[None, :] if a.ndim == 1 else a  # (k,) -> (1, k)
        b2 = b[:, None] if b.ndim == 1 else b  # (k,) -> (k, 1)
        g2 = g
        if b.ndim == 1:  # (..., m) -> (..., m, 1); first, so a 0-d grad of 1-D @ 1-D works
            g2 = xp.expand_dims(g2, -1)
        if a.ndim == 1:
            g2 = xp.expand_dims(g2, -2)
        ga = gb = None
        if ctx.needs_input_grad[0]:
            ga = unbroadcast(xp.matmul(g2, xp.swapaxes(b2, -1, -2)), a2.shape).reshape(a.shape)
        if ctx.needs_input_grad[1]:
            gb = unbroadcast(xp.matmul(xp.swapaxes(a2, -1, -2), g2), b2.shape).reshape(b.shape)
        return ga, gb


# ----------------------------------------------------------------------------- elementwise
class Exp(Function):
    @staticmethod
    def forward(ctx, a):
        out = array_module(a).exp(a)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, g):
        return g * ctx.saved[0]


class Log(Function):
    @staticmethod
    def forward(ctx, a):
        ctx.save_for_backward(a)
        return array_module(a).log(a)

    @staticmethod
    def backward(ctx, g):
        return g / ctx.saved[0]


class Sqrt(Function):
    @staticmethod
    def forward(ctx, a):
        out = array_module(a).sqrt(a)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, g):
        return g / (2 * ctx.saved[0])


class Tanh(Function):
    @staticmethod
    def forward(ctx, a):
        out = array_module(a).tanh(a)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, g):
        (t,) = ctx.saved
        return g * (1 - t * t)


class Relu(Function):
    @staticmethod
    def forward(ctx, a):
        mask = a > 0
        ctx.save_for_backward(mask)
        return a * mask

    @staticmethod
    def backward(ctx, g):
        return g * ctx.saved[0]


class Abs(Function):
    @staticmethod
    def forward(ctx, a):
        ctx.save_for_backward(a)
        return array_module(a).abs(a)

    @staticmethod
    def backward(ctx, g):
        return g * array_module(g).sign(ctx.saved[0])


class Where(Function):
    """where(cond, a, b); cond is a boolean array (no gradient). Also maximum and masked_fill."""

    @staticmethod
    def forward(ctx, cond, a, b):
        _check_broadcast("where", cond, a)
        _check_broadcast("where", cond, b)
        _check_broadcast("where", a, b)
        ctx.save_for_backward(cond)
        ctx.shapes = (_shape(a), _shape(b))
        return array_module(cond).where(cond, a, b)

    @staticmethod
    def backward(ctx, g):
        (cond,) = ctx.saved
        sa, sb = ctx.shapes
        ga = unbroadcast(g * cond, sa) if ctx.needs_input_grad[1] else None
        gb = unbroadcast(g * ~cond, sb) if ctx.needs_input_grad[2] else None
        return None, ga, gb


# ----------------------------------------------------------------------------- reductions
def _norm_axes(axis, ndim):
    if axis is None:
        return tuple(range(ndim))
    axes = (axis,) if isinstance(axis, int) else tuple(axis)
    out = []
    for ax in axes:
        if not -ndim <= ax < max(ndim, 1):
            raise ValueError(f"axis {ax} is out of range for a tensor with {ndim} dimensions")
        out.append(ax % ndim if ndim else 0)
    return tuple(sorted(set(out)))


def _expand_reduced(g, shape, axes, keepdims):
    """Reshape a reduced gradient so it broadcasts against the input shape."""
    if not keepdims:
        g = g.reshape(tuple(1 if i in axes else n for i, n in enumerate(shape)))
    return g


class Sum(Function):
    @staticmethod
    def forward(ctx, a, axis=None, keepdims=False):
        axes = _norm_axes(axis, a.ndim)
        ctx.shape, ctx.axes, ctx.keepdims = a.shape, axes, keepdims
        return array_module(a).sum(a, axis=axes, keepdims=keepdims)

    @staticmethod
    def backward(ctx, g):
        g = _expand_reduced(g, ctx.shape, ctx.axes, ctx.keepdims)
        return array_module(g).broadcast_to(g, ctx.shape)


class Mean(Function):
    @staticmethod
    def forward(ctx, a, axis=None, keepdims=False):
        axes = _norm_axes(axis, a.ndim)
        ctx.shape, ctx.axes, ctx.keepdims = a.shape, axes, keepdims
        ctx.count = math.prod(a.shape[i] for i in axes)
        return array_module(a).mean(a, axis=axes, keepdims=keepdims)

    @staticmethod
    def backward(ctx, g):
        g = _expand_reduced(g, ctx.shape, ctx.axes, ctx.keepdims) / ctx.count
        return array_module(g).broadcast_to(g, ctx.shape)


class Var(Function):
    """Variance with `correction` (0 = population, 1 = sample/Bessel), as torch.var."""

    @staticmethod
    def forward(ctx, a, axis=None, keepdims=False, correction=1):
        xp = array_module(a)
        axes = _norm_axes(axis, a.ndim)
        n = math.prod(a.shape[i] for i in axes)
        centered = a - a.mean(axis=axes, keepdims=True)
        ctx.save_for_backward(centered)
        ctx.axes, ctx.keepdims, ctx.denom = axes, keepdims, max(n - correction, 0)
        return xp.sum(centered * centered, axis=axes, keepdims=keepdims) / ctx.denom

    @staticmethod
    def backward(ctx, g):
        (centered,) = ctx.saved
        g = _expand_reduced(g, centered.shape, ctx.axes, ctx.keepdims)
        return g * (2 / ctx.denom) * centered


class Max(Function):
    """Max over axes; the gradient is shared equally among tied maxima (as torch.amax)."""

    @staticmethod
    def forward(ctx, a, axis=None, keepdims=False):
        xp = array_module(a)
        axes = _norm_axes(axis, a.ndim)
        if a.size == 0:
            raise ValueError(f"max: cannot reduce an empty tensor of shape {a.shape}")
        out = xp.max(a, axis=axes, keepdims=True)
        ctx.save_for_backward(a == out)
        ctx.axes, ctx.keepdims = axes, keepdims
        return out if keepdims else out.reshape([n for i, n in enumerate(a.shape) if i not in axes])

    @staticmethod
    def backward(ctx, g):
        (mask,) = ctx.saved
        g = _expand_reduced(g, mask.shape, ctx.axes, ctx.keepdims)
        count = mask.sum(axis=ctx.axes, keepdims=True)
        return g * mask / count


# ----------------------------------------------------------------------------- shape
class Reshape(Function):
    @staticmethod
    def forward(ctx, a, shape):
        ctx.shape = a.shape
        try:
            return a.reshape(shape)
        except ValueError:
            raise ValueError(f"reshape: cannot reshape {a.shape} ({a.size} elements) to {tuple(shape)}") from None

    @staticmethod
    def backward(ctx, g):
        return g.reshape(ctx.shape), None


class Permute(Function):
    @staticmethod
    def forward(ctx, a, axes):
        if sorted(ax % max(a.ndim, 1) for ax in axes) != list(range(a.ndim)):
            raise ValueError(f"permute: {tuple(axes)} is not a permutation of the {a.ndim} axes of {a.shape}")
        ctx.axes = axes
        return a.transpose(axes)

    @staticmethod
    def backward(ctx, g):
        inverse = [0] * len(ctx.axes)
        for i, ax in enumerate(ctx.axes):
            inverse[ax % len(ctx.axes)] = i
        return g.transpose(tuple(inverse)), None


class BroadcastTo(Function):
    @staticmethod
    def forward(ctx, a, shape):
        ctx.shape = a.shape
        try:
            return array_module(a).broadcast_to(a, shape)
        except ValueError:
            raise ValueError(f"expand: cannot broadcast {a.shape} to {tuple(shape)}") from None

    @staticmethod
    def backward(ctx, g):
        return unbroadcast(g, ctx.shape), None


def _is_basic_index(index):
    """True for ints/slices/None/Ellipsis only: each input element is hit at most once."""
    items = index if isinstance(index, tuple) else (index,)
    return all(isinstance(i, (int, slice)) or i is None or i is Ellipsis for i in items)


class GetItem(Function):
    """Indexing with ints, slices, integer arrays and boolean masks; scatter-add backward."""

    @staticmethod
    def forward(ctx, a, index):
        ctx.shape, ctx.dtype, ctx.index = a.shape, a.dtype, index
        if backend.is_cupy_array(a) and not _is_basic_index(index):
            _check_gpu_index(a, index)
        try:
            return a[index]
        except IndexError as exc:
            raise IndexError(f"getitem: {exc} (tensor shape {a.shape})") from None

    @staticmethod
    def backward(ctx, g):
        xp = array_module(g)
        out = xp.zeros(ctx.shape, dtype=g.dtype)
        if _is_basic_index(ctx.index):
            out[ctx.index] = g
        else:
            scatter_add(out, ctx.index, g)
        return out, None


def _index_axes(item) -> int:
    """How many axes of the indexed array one index item consumes."""
    if item is None or item is Ellipsis:
        return 0
    dtype = getattr(item, "dtype", None)
    return item.ndim if dtype is not None and dtype.kind == "b" else 1


def _check_gpu_index(a, index):
    """CuPy wraps out-of-range integer array indices instead of raising: raise as NumPy would."""
    items = index if isinstance(index, tuple) else (index,)
    axis = 0
    for k, item in enumerate(items):
        if item is Ellipsis:
            axis = a.ndim - sum(_index_axes(i) for i in items[k + 1:])
            continue
        dtype = getattr(item, "dtype", None)
        if dtype is not None and dtype.kind in "iu" and item.size and axis < a.ndim:
            n = a.shape[axis]
            lo, hi = int(item.min()), int(item.max())  # two host syncs: only for fancy indexing
            if lo < -n or hi >= n:
                raise IndexError(f"getitem: index {hi if hi >= n else lo} is out of bounds for axis {axis} "
                                 f"with size {n} (tensor shape {a.shape})")
        axis += _index_axes(item)


def scatter_add(target, index, values):
    """target[index] += values, accumulating repeated indices (numpy.add.at / cupy.add.at)."""
    backend.scatter_add(target, index, values)


class Concatenate(Function):
    @staticmethod
    def forward(ctx, *arrays, axis=0):
        xp = array_module(arrays[0])
        ndim = arrays[0].ndim
        ax = axis % ndim
        for a in arrays[1:]:
            if a.ndim != ndim or any(a.shape[i] != arrays[0].shape[i] for i in range(ndim) if i != ax):
                raise ValueError(
                    f"concatenate: shapes {[x.shape for x in arrays]} differ outside axis {axis}"
                )
        ctx.axis, ctx.sizes = ax, [a.shape[ax] for a in arrays]
        return xp.concatenate(arrays, axis=ax)

    @staticmethod
    def backward(ctx, g):
        xp = array_module(g)
        cuts = list(itertools.accumulate(ctx.sizes))[:-1]
        return tuple(xp.split(g, cuts, axis=ctx.axis))


class Stack(Function):
    @staticmethod
    def forward(ctx, *arrays, axis=0):
        shapes = {a.shape for a in arrays}
        if len(shapes) != 1:
            raise ValueError(f"stack: all tensors must have the same shape, got {[a.shape for a in arrays]}")
        ctx.axis = axis % (arrays[0].ndim + 1)
        return array_module(arrays[0]).stack(arrays, axis=ctx.axis)

    @staticmethod
    def backward(ctx, g):
        xp = array_module(g)
        return tuple(xp.take(g, i, axis=ctx.axis) for i in range(g.shape[ctx.axis]))


class Unbind(Function):
    """The slices of `a` along `axis` as separate outputs (views), e.g. q, k, v from one (3, ...) array.

    One multi-output call instead of one GetItem per slice: backward writes every output's gradient
    into a single array (zero-filled only where an output got none), where n GetItems would allocate
    n zero-filled arrays of the full shape and then add them up.
    """

    @staticmethod
    def forward(ctx, a, axis=0):
        if a.ndim == 0:
            raise ValueError("unbind: needs at least one dimension, got a 0-d tensor")
        ctx.shape, ctx.dtype, ctx.axis = a.shape, a.dtype, axis % a.ndim
        lead = (slice(None),) * ctx.axis
        return tuple(a[lead + (i,)] for i in range(a.shape[ctx.axis]))  # (..., n, ...) -> n x (..., ...)

    @staticmethod
    def backward(ctx, *grads):
        xp = array_module(next(g for g in grads if g is not None))
        out = (xp.empty if all(g is not None for g in grads) else xp.zeros)(ctx.shape, dtype=ctx.dtype)
        lead = (slice(None),) * ctx.axis
        for i, g in enumerate(grads):
            if g is not None:
                out[lead + (i,)] = g
        return out


# ----------------------------------------------------------------------------- dtype
class Cast(Function):
    @staticmethod
    def forward(ctx, a, dtype):
        ctx.dtype = a.dtype
        return a.astype(dtype)

    @staticmethod
    def backward(ctx, g):
        return g.astype(ctx.dtype), None
