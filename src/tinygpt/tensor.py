"""Tensor: an array (numpy on 'cpu', cupy on 'cuda') plus the autograd bookkeeping.

Ops are thin: they forward to the primitive Functions in ops.py, which hold the maths.
"""
from __future__ import annotations

import numbers

import numpy as np

from . import autograd, backend, ops
from . import random as _random

_FLOATS = (np.float16, np.float32, np.float64)


def _to_array(data, dtype, device):
    """Turn user data into an array on `device`: arrays keep their dtype, Python floats become float32."""
    device = backend.normalize_device(device) if device is not None else None
    if isinstance(data, Tensor):
        data = data.data
    if isinstance(data, np.ndarray) or (backend._cupy is not None and isinstance(data, backend._cupy.ndarray)):
        arr = data
        if dtype is not None and arr.dtype != np.dtype(dtype):
            arr = arr.astype(dtype)
    else:
        arr = np.asarray(data)
        if dtype is not None:
            arr = arr.astype(dtype, copy=False)
        elif arr.dtype == np.float64:
            arr = arr.astype(np.float32)  # Python floats -> float32, as torch.tensor
        if arr.dtype == object:
            raise TypeError(f"Tensor: cannot make a tensor from {type(data).__name__}")
    if device is not None:
        arr = backend.to_device(arr, device)
    return arr


class Tensor:
    """A multi-dimensional array that records the ops applied to it for backward()."""

    __slots__ = ("data", "grad", "requires_grad", "_node", "_retain_grad", "_grad_hooks", "__weakref__")
    __array_priority__ = 1000  # numpy scalars/arrays defer to Tensor's reflected operators

    def __init__(self, data, requires_grad=False, dtype=None, device=None):
        self.data = _to_array(data, dtype, device)
        if requires_grad and self.data.dtype not in _FLOATS:
            raise TypeError(f"Tensor: only floating point tensors can require grad, got {self.data.dtype}")
        self.grad = None
        self.requires_grad = bool(requires_grad)
        self._node = None
        self._retain_grad = False
        self._grad_hooks = None

    @classmethod
    def _wrap(cls, array, requires_grad=False):
        """Wrap an array without copying or checks (used by Function.apply)."""
        if isinstance(array, np.generic):  # numpy ops on 0-d arrays return scalars; keep an ndarray
            array = np.asarray(array)
        t = cls.__new__(Tensor)
        t.data, t.grad, t.requires_grad, t._node, t._retain_grad = array, None, requires_grad, None, False
        t._grad_hooks = None
        return t

    # ------------------------------------------------------------------ properties
    shape = property(lambda self: self.data.shape)
    dtype = property(lambda self: self.data.dtype)
    ndim = property(lambda self: self.data.ndim)
    size = property(lambda self: self.data.size)
    device = property(lambda self: backend.device_of(self.data))
    xp = property(lambda self: backend.xp(self.data))
    is_leaf = property(lambda self: self._node is None)

    def __len__(self):
        return len(self.data)

    def __repr__(self):
        extra = ", requires_grad=True" if self.requires_grad else ""
        dev = ", device='cuda'" if self.device == "cuda" else ""
        body = np.array2string(backend.to_numpy(self.data), separator=", ", threshold=40, prefix="tensor(")
        return f"tensor({body}, dtype={self.dtype}{dev}{extra})"

    # ------------------------------------------------------------------ conversions
    def numpy(self) -> np.ndarray:
        """A host numpy array (a copy when the data lives on the GPU)."""
        return backend.to_numpy(self.data)

    def item(self):
        if self.size != 1:
            raise ValueError(f"item: only one-element tensors convert to a Python scalar, got shape {self.shape}")
        if backend.is_cupy_array(self.data):
            backend.check_pending()  # deferred device checks settle with this read (backend.defer_check)
        return self.data.reshape(()).item()

    def tolist(self):
        return self.numpy().tolist()

    def to(self, device=None, dtype=None) -> Tensor:
        """A tensor on `device` and/or of `dtype`; differentiable (device moves detach)."""
        out = self
        if dtype is not None and np.dtype(dtype) != self.dtype:
            out = ops.Cast.apply(out, np.dtype(dtype))
        if device is not None and backend.normalize_device(device) != self.device:
            out = Tensor(backend.to_device(out.data, device), requires_grad=self.requires_grad)
        return out

    def cpu(self):
        return self.to("cpu")

    def cuda(self):
        return self.to("cuda")

    def float(self):
        return self.to(dtype=np.float32)

    def double(self):
        return self.to(dtype=np.float64)

    def long(self):
        return Tensor._wrap(self.data.astype(np.int64))

    def detach(self) -> Tensor:
        """The same data with no graph (shares memory)."""
        return Tensor._wrap(self.data)

    def requires_grad_(self, flag=True):
        if flag and self.dtype not in _FLOATS:
            raise TypeError(f"requires_grad_: only floating point tensors can require grad, got {self.dtype}")
        self.requires_grad = bool(flag)
        return self

    def retain_grad(self):
        """Keep .grad on this non-leaf tensor after backward()."""
        self._retain_grad = True
        return self

    # ------------------------------------------------------------------ autograd
    def backward(self, grad=None):
        """Accumulate gradients of this tensor into the .grad of every leaf it depends on."""
        autograd.backward(self, grad)

    def zero_grad(self):
        self.grad = None

    def register_post_accumulate_grad_hook(self, hook) -> "HookHandle":
        """Call ``hook(self)`` during backward() as soon as this leaf's gradient of that pass is final and
        added into ``.grad`` (before the rest of the graph is done), as torch's hook of the same name.

        A pass that gives the leaf no gradient does not call it. Data-parallel training starts a
        bucket's all-reduce from here while backward goes on. Returns a handle; ``handle.remove()``
        unregisters the hook.
        """
        if not self.is_leaf or not self.requires_grad:
            raise RuntimeError("register_post_accumulate_grad_hook: only a leaf tensor that requires grad "
                               "has an accumulated gradient")
        if not callable(hook):
            raise TypeError(f"register_post_accumulate_grad_hook: hook must be callable, got {type(hook).__name__}")
        if self._grad_hooks is None:
            self._grad_hooks = {}
        handle = HookHandle(self._grad_hooks)
        self._grad_hooks[handle.id] = hook
        return handle

    def _accumulate(self, g, own: bool = False):
        """Add g into .grad; own=True: g is referenced nowhere else, so it may become .grad uncopied."""
        if self.grad is None:
            self.grad = Tensor._wrap(g if own else g.copy())  # copy: g may alias another tensor's gradient
        else:
            self.grad.data += g

    # ------------------------------------------------------------------ operators
    def __add__(self, other):
        return ops.Add.apply(self, _operand(other))

    def __radd__(self, other):
        return ops.Add.apply(_operand(other), self)

    def __sub__(self, other):
        return ops.Sub.apply(self, _operand(other))

    def __rsub__(self, other):
        return ops.Sub.apply(_operand(other), self)

    def __mul__(self, other):
        return ops.Mul.apply(self, _operand(other))

    def __rmul__(self, other):
        return ops.Mul.apply(_operand(other), self)

    def __truediv__(self, other):
        return ops.Div.apply(self, _operand(other))

    def __rtruediv__(self, other):
        return ops.Div.apply(_operand(other), self)

    def __neg__(self):
        return ops.Neg.apply(self)

    def __pow__(self, exponent):
        if not isinstance(exponent, numbers.Real):
            raise TypeError(f"pow: only a scalar exponent is supported, got {type(exponent).__name__}")
        return ops.Pow.apply(self, exponent)

    def __matmul__(self, other):
        return ops.MatMul.apply(self, _operand(other, as_tensor=True))

    def __rmatmul__(self, other):
        return ops.MatMul.apply(_operand(other, as_tensor=True), self)

    def __getitem__(self, index):
        return ops.GetItem.apply(self, _raw_index(index, self.device))

    # comparisons: no gradient, boolean result
    def __lt__(self, other):
        return Tensor._wrap(self.data < _raw_on(self, other, "lt"))

    def __le__(self, other):
        return Tensor._wrap(self.data <= _raw_on(self, other, "le"))

    def __gt__(self, other):
        return Tensor._wrap(self.data > _raw_on(self, other, "gt"))

    def __ge__(self, other):
        return Tensor._wrap(self.data >= _raw_on(self, other, "ge"))

    def __eq__(self, other):
        return Tensor._wrap(self.data == _raw_on(self, other, "eq"))

    def __ne__(self, other):
        return Tensor._wrap(self.data != _raw_on(self, other, "ne"))

    __hash__ = object.__hash__

    def __bool__(self):
        if self.size != 1:
            raise ValueError(f"the truth value of a tensor of shape {self.shape} is ambiguous")
        return bool(self.item())

    def __float__(self):
        return float(self.item())

    def __int__(self):
        return int(self.item())

    # ------------------------------------------------------------------ elementwise
    def exp(self):
        return ops.Exp.apply(self)

    def log(self):
        return ops.Log.apply(self)

    def sqrt(self):
        return ops.Sqrt.apply(self)

    def tanh(self):
        return ops.Tanh.apply(self)

    def relu(self):
        return ops.Relu.apply(self)

    def abs(self):
        return ops.Abs.apply(self)

    def masked_fill(self, mask, value):
        """Where `mask` is true, `value`; elsewhere self (mask broadcasts)."""
        return ops.Where.apply(_raw(mask).astype(bool), value, self)

    # ------------------------------------------------------------------ reductions
    def sum(self, axis=None, keepdims=False):
        return ops.Sum.apply(self, axis=axis, keepdims=keepdims)

    def mean(self, axis=None, keepdims=False):
        return ops.Mean.apply(self, axis=axis, keepdims=keepdims)

    def var(self, axis=None, keepdims=False, correction=1):
        return ops.Var.apply(self, axis=axis, keepdims=keepdims, correction=correction)

    def max(self, axis=None, keepdims=False):
        return ops.Max.apply(self, axis=axis, keepdims=keepdims)

    def min(self, axis=None, keepdims=False):
        return -ops.Max.apply(-self, axis=axis, keepdims=keepdims)

    def argmax(self, axis=None):
        return Tensor._wrap(self.xp.argmax(self.data, axis=axis))

    # ------------------------------------------------------------------ shape
    def reshape(self, *shape):
        shape = shape[0] if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else shape
        return ops.Reshape.apply(self, tuple(shape))

    view = reshape

    def flatten(self):
        return self.reshape(-1)

    def transpose(self, *axes):
        """No args: reverse the axes. Two ints: swap those two axes (as torch). A tuple: a permutation."""
        if len(axes) == 1 and isinstance(axes[0], (tuple, list)):
            axes = tuple(axes[0])
        elif not axes:
            axes = tuple(reversed(range(self.ndim)))
        elif len(axes) == 2:
            perm = list(range(self.ndim))
            a, b = (ax % self.ndim for ax in axes)
            perm[a], perm[b] = perm[b], perm[a]
            axes = tuple(perm)
        return ops.Permute.apply(self, tuple(axes))

    def permute(self, *axes):
        axes = axes[0] if len(axes) == 1 and isinstance(axes[0], (tuple, list)) else axes
        return ops.Permute.apply(self, tuple(axes))

    @property
    def T(self):
        return self.transpose()

    def expand(self, *shape):
        shape = shape[0] if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else shape
        shape = tuple(s if s != -1 else self.shape[i - len(shape) + self.ndim] for i, s in enumerate(shape))
        return ops.BroadcastTo.apply(self, shape)

    def broadcast_to(self, shape):
        return ops.BroadcastTo.apply(self, tuple(shape))

    def squeeze(self, axis=None):
        if axis is None:
            shape = tuple(n for n in self.shape if n != 1)
        else:
            axes = {a % self.ndim for a in ((axis,) if isinstance(axis, int) else axis)}
            for a in axes:
                if self.shape[a] != 1:
                    raise ValueError(f"squeeze: axis {a} of shape {self.shape} has size {self.shape[a]}, not 1")
            shape = tuple(n for i, n in enumerate(self.shape) if i not in axes)
        return self.reshape(shape)

    def unsqueeze(self, axis):
        axis = axis % (self.ndim + 1)
        return self.reshape(self.shape[:axis] + (1,) + self.shape[axis:])

    def split(self, split_size_or_sections, axis=0):
        return split(self, split_size_or_sections, axis)

    def unbind(self, axis=0):
        """The slices along `axis` as a tuple of tensors (one Function call, one backward write)."""
        return unbind(self, axis)

    def softmax(self, axis=-1):
        from . import functional  # noqa: PLC0415 - functional imports tensor

        return functional.softmax(self, axis)


# ---------------------------------------------------------------------- helpers
class HookHandle:
    """Returned by `Tensor.register_post_accumulate_grad_hook`; `remove()` unregisters the hook."""

    _next_id = 0

    def __init__(self, hooks: dict):
        self.hooks, self.id = hooks, HookHandle._next_id
        HookHandle._next_id += 1

    def remove(self) -> None:
        self.hooks.pop(self.id, None)


def _raw(x):
    return x.data if isinstance(x, Tensor) else x


def _operand(x, as_tensor=False):
    """Scalars stay Python numbers (weak types keep float32 float32); arrays become Tensors."""
    if isinstance(x, Tensor):
        return x
    if isinstance(x, numbers.Number) and not as_tensor:
        return x
    return Tensor(x)


def _check_devices(op, *items):
    """Raise a clear error when tensors/arrays among `items` live on different devices."""
    device = None
    for x in items:
        dev = x.device if isinstance(x, Tensor) else backend.array_device(x)
        if dev is not None and device is not None and dev != device:
            raise ValueError(f"{op}: tensors on different devices: {device} and {dev} "
                             "(move them with .to(device) first)")
        device = dev or device


def _raw_on(t, other, op):
    """The raw operand of a comparison with `t`, on t's device."""
    _check_devices(op, t, other)
    return _raw(other)


def _index_item(i, device):
    """One index item as the array module of `device` takes it (host index arrays go to the GPU)."""
    i = _raw(i)
    if isinstance(i, list):
        i = np.asarray(i)
    dev = backend.array_device(i)
    if dev is not None and dev != device:
        if dev == "cuda":  # a GPU index for a host array: as torch, refuse rather than copy silently
            raise ValueError(f"getitem: index on cuda for a tensor on {device}; move the index with .to('cpu')")
        i = backend.to_device(i, device)  # host index arrays are fine for a GPU tensor
    return i


def _raw_index(index, device="cpu"):
    if isinstance(index, tuple):
        return tuple(_index_item(i, device) for i in index)
    return _index_item(index, device)


# ---------------------------------------------------------------------- free functions
def tensor(data, requires_grad=False, dtype=None, device=None) -> Tensor:
    """A new tensor holding a copy of `data` (as torch.tensor)."""
    data = data.data if isinstance(data, Tensor) else data
    arr = data.copy() if hasattr(data, "copy") and not isinstance(data, (list, tuple)) else data
    return Tensor(arr, requires_grad=requires_grad, dtype=dtype, device=device)


def _factory(fill, shape, dtype, device, requires_grad):
    shape = shape[0] if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else shape
    arr = fill(tuple(shape), np.dtype(dtype or np.float32))
    return Tensor(arr, requires_grad=requires_grad, device=device)


def _on_device(device):
    """The array module that builds a factory's array: made in place on the GPU, no host copy."""
    return backend.module_for(device) if device is not None else np


def zeros(*shape, dtype=None, device=None, requires_grad=False) -> Tensor:
    xp = _on_device(device)
    return _factory(lambda s, d: xp.zeros(s, d), shape, dtype, device, requires_grad)


def ones(*shape, dtype=None, device=None, requires_grad=False) -> Tensor:
    xp = _on_device(device)
    return _factory(lambda s, d: xp.ones(s, d), shape, dtype, device, requires_grad)


def full(shape, value, dtype=None, device=None, requires_grad=False) -> Tensor:
    xp = _on_device(device)
    return _factory(lambda s, d: xp.full(s, value, d), (shape,), dtype, device, requires_grad)


def randn(*shape, dtype=None, device=None, requires_grad=False) -> Tensor:
    """Standard normal samples from the global generator (tg.manual_seed)."""
    gen = _random.generator()
    return _factory(lambda s, d: gen.standard_normal(s).astype(d), shape, dtype, device, requires_grad)


def rand(*shape, dtype=None, device=None, requires_grad=False) -> Tensor:
    gen = _random.generator()
    return _factory(lambda s, d: gen.random(s).astype(d), shape, dtype, device, requires_grad)


def arange(start, stop=None, step=1, dtype=np.int64, device=None) -> Tensor:
    return Tensor(np.arange(start, stop, step, dtype=dtype) if stop is not None else np.arange(start, dtype=dtype),
                  device=device)


def zeros_like(t: Tensor, dtype=None) -> Tensor:
    return Tensor._wrap(t.xp.zeros(t.shape, dtype=dtype or t.dtype))


def ones_like(t: Tensor, dtype=None) -> Tensor:
    return Tensor._wrap(t.xp.ones(t.shape, dtype=dtype or t.dtype))


def where(cond, a, b) -> Tensor:
    """Elementwise: a where cond is true, else b (cond gets no gradient)."""
    _check_devices("where", cond, a, b)
    return ops.Where.apply(_raw(cond).astype(bool), _operand(a), _operand(b))


def maximum(a, b) -> Tensor:
    """Elementwise maximum; at ties the gradient goes to `a` (as numpy's first argument)."""
    a, b = _operand(a, as_tensor=True), _operand(b, as_tensor=True)
    _check_devices("maximum", a, b)
    return ops.Where.apply(a.data >= b.data, a, b)


def minimum(a, b) -> Tensor:
    a, b = _operand(a, as_tensor=True), _operand(b, as_tensor=True)
    _check_devices("minimum", a, b)
    return ops.Where.apply(a.data <= b.data, a, b)


def concatenate(tensors, axis=0) -> Tensor:
    tensors = [_operand(t, as_tensor=True) for t in tensors]
    if not tensors:
        raise ValueError("concatenate: need at least one tensor")
    return ops.Concatenate.apply(*tensors, axis=axis)


cat = concatenate


def stack(tensors, axis=0) -> Tensor:
    tensors = [_operand(t, as_tensor=True) for t in tensors]
    if not tensors:
        raise ValueError("stack: need at least one tensor")
    return ops.Stack.apply(*tensors, axis=axis)


def unbind(t: Tensor, axis=0):
    """The slices of t along axis as a tuple: unbind(x (3, B, T), 0) -> three (B, T) tensors."""
    out = ops.Unbind.apply(_operand(t, as_tensor=True), axis=axis)
    return out if isinstance(out, tuple) else (out,)


def split(t: Tensor, split_size_or_sections, axis=0):
    """Split into chunks of `split_size` along axis (last may be smaller), or into the given sizes."""
    n = t.shape[axis]
    if isinstance(split_size_or_sections, int):
        if split_size_or_sections <= 0:
            raise ValueError(f"split: split size must be positive, got {split_size_or_sections}")
        sizes = [min(split_size_or_sections, n - i) for i in range(0, n, split_size_or_sections)]
    else:
        sizes = list(split_size_or_sections)
        if sum(sizes) != n:
            raise ValueError(f"split: sections {sizes} sum to {sum(sizes)}, but axis {axis} has size {n}")
    out, start = [], 0
    lead = (slice(None),) * (axis % t.ndim)
    for s in sizes:
        out.append(t[lead + (slice(start, start + s),)])
        start += s
    return tuple(out)
