"""The graph: Function (forward + backward on raw arrays), no_grad, and backward().

A `Function` computes on raw arrays (numpy or cupy, via `backend.xp`). `Function.apply`
is the one place that unwraps Tensors, runs `forward`, wraps the result and records the
graph edge. `backward` walks the graph in reverse topological order, found iteratively so
a 48-layer GPT (tens of thousands of nodes) never touches the recursion limit.

Multi-output Functions: a `forward` may return a tuple of arrays (a fused op with two
results, e.g. F.add_layer_norm's (x + residual, layer_norm(x + residual))). `apply` then
returns a tuple of Tensors, each with its own Node (sharing the Function, ctx and inputs,
and knowing its output index), and `backward(ctx, *grads)` is called ONCE with one gradient
per output (None for an output no gradient reached), after every output's gradient is
complete: the walker holds the gradients of a multi-output call until the last of its
outputs that the root depends on has been visited. In reverse topological order every
output of a call comes before any of its inputs, so nothing waits on a call's inputs early.

Post-accumulate hooks (`Tensor.register_post_accumulate_grad_hook`): a leaf with hooks gets its
gradient of the pass added into `.grad` as soon as the last call that feeds it has run its
backward, and its hooks run then, while the walk goes on (data parallelism starts a bucket's
all-reduce there). Leaves without hooks get theirs at the end of the pass, as before.
"""
from __future__ import annotations

import contextlib
import threading

import numpy as np

from .backend import array_device, device_of, to_device

_state = threading.local()


def is_grad_enabled() -> bool:
    return getattr(_state, "grad_enabled", True)


@contextlib.contextmanager
def _grad_mode(enabled: bool):
    previous = is_grad_enabled()
    _state.grad_enabled = enabled
    try:
        yield
    finally:
        _state.grad_enabled = previous


def no_grad():
    """Context manager: ops inside record no graph (inference, optimiser updates)."""
    return _grad_mode(False)


def enable_grad():
    """Context manager: turn graph recording back on inside a no_grad block."""
    return _grad_mode(True)


class Context:
    """Per-call scratch space a Function's forward leaves for its backward."""

    __slots__ = ("saved", "needs_input_grad", "__dict__")

    def __init__(self, needs_input_grad):
        self.saved = ()
        self.needs_input_grad = needs_input_grad

    def save_for_backward(self, *arrays):
        self.saved = arrays


class Node:
    """One recorded call: the Function, its context and the input Tensors (None for non-tensors).

    For a multi-output call each output Tensor has its own Node with the same fn, ctx and
    inputs; `index` is that output's position and `n_outputs` how many there are (else 0, 1).
    """

    __slots__ = ("fn", "ctx", "inputs", "index", "n_outputs")

    def __init__(self, fn, ctx, inputs, index=0, n_outputs=1):
        self.fn, self.ctx, self.inputs, self.index, self.n_outputs = fn, ctx, inputs, index, n_outputs


_TENSOR = None


def _tensor_class():
    """tinygpt.tensor.Tensor (imported on first use: tensor.py imports this module). A cached global, not an
    import statement per call: the import machinery's lookup was a measurable part of a decode step."""
    global _TENSOR
    if _TENSOR is None:
        from .tensor import Tensor  # noqa: PLC0415

        _TENSOR = Tensor
    return _TENSOR


class Function:
    """Subclass with `forward(ctx, *args, **kwargs) -> array` and `backward(ctx, grad) -> grads`.

    `backward` returns one gradient per positional argument of `forward` (a tuple, or a
    single array when there is one argument); None where no gradient flows.
    A `forward` that returns a tuple of k arrays makes `apply` return k Tensors and gets
    `backward(ctx, grad_0, ..., grad_{k-1})`, where a grad is None if that output got none.
    """

    @staticmethod
    def forward(ctx, *args, **kwargs):
        raise NotImplementedError

    @staticmethod
    def backward(ctx, grad):
        raise NotImplementedError

    @classmethod
    def apply(cls, *args, **kwargs):
        Tensor = _tensor_class()
        device = None
        raw, needs = [], []
        for a in args:
            if isinstance(a, Tensor):
                d = a.data
                needs.append(a.requires_grad)
            else:  # raw arrays (ids, targets, masks) must sit on the tensors' device too
                d = a
                needs.append(False)
            raw.append(d)
            # a.device, minus calls for the common numpy array: apply runs ~100 times per decoded token
            dev = "cpu" if type(d) is np.ndarray else array_device(d)
            if dev is not None and dev != device:
                if device is not None:
                    raise ValueError(f"{cls.__name__.lower()}: tensors on different devices: {device} and {dev} "
                                     "(move them with .to(device) first)")
                device = dev
        record = any(needs) and is_grad_enabled()
        ctx = Context(tuple(needs))
        out = cls.forward(ctx, *raw, **kwargs)
        inputs = tuple(a if isinstance(a, Tensor) else None for a in args) if record else None
        if isinstance(out, tuple):  # multi-output: one Tensor (and Node) per output
            results = tuple(Tensor._wrap(o, requires_grad=record) for o in out)
            if record:
                for i, r in enumerate(results):
                    r._node = Node(cls, ctx, inputs, i, len(results))
            return results
        result = Tensor._wrap(out, requires_grad=record)
        if record:
            result._node = Node(cls, ctx, inputs)
        return result


def _topological_order(root):
    """Nodes reachable from `root` that need gradients, inputs before outputs (iterative DFS)."""
    order, visited = [], set()
    stack = [(root, False)]
    while stack:
        tensor, expanded = stack.pop()
        if expanded:
            order.append(tensor)
            continue
        if id(tensor) in visited:
            continue
        visited.add(id(tensor))
        stack.append((tensor, True))
        for parent in tensor._node.inputs:
            if parent is not None and parent._node is not None and id(parent) not in visited:
                stack.append((parent, False))
    return order


def backward(root, grad=None):
    """Accumulate d(root)/d(leaf) into every leaf's `.grad` (and retained non-leaves)."""
    from .tensor import Tensor  # noqa: PLC0415

    if not root.requires_grad:
        raise RuntimeError("backward: this tensor does not require grad (no graph was recorded)")
    xp = root.xp
    if grad is None:
        if root.size != 1:
            raise RuntimeError(f"backward: grad can be implicit only for a scalar, got shape {root.shape}")
        grad = xp.ones(root.shape, dtype=root.dtype)
    else:
        if isinstance(grad, Tensor):
            if grad.device != root.device:
                raise ValueError(f"backward: grad is on {grad.device}, the tensor on {root.device}")
            grad = grad.data
        else:  # a raw array or number: onto the root's device, in its dtype
            if array_device(grad) is not None:
                grad = to_device(grad, device_of(root.data))
            grad = xp.asarray(grad, dtype=root.dtype)
        if grad.shape != root.shape:
            raise ValueError(f"backward: grad shape {grad.shape} differs from tensor shape {root.shape}")

    if root._node is None:  # a leaf: d(root)/d(root) = grad
        root._accumulate(grad)
        _run_grad_hooks(root)
        return

    # Leaf gradients are handed to .grad once the whole pass is done: by then no backward can still
    # read them, so an array that no one else holds becomes .grad as it is (torch steals it too)
    # instead of being copied; views, arrays given to two leaves and the root grad are still copied.
    leaf_grads = {}  # id(leaf) -> [leaf, gradient, sum of several contributions (ours)]

    def to_leaf(leaf, g):
        entry = leaf_grads.get(id(leaf))
        if entry is None:
            leaf_grads[id(leaf)] = [leaf, g, False]
        else:
            entry[1], entry[2] = entry[1] + g, True

    order = _topological_order(root)
    # Multi-output calls (keyed by their shared ctx): how many of their outputs are still to
    # be visited, and the gradients gathered so far.
    waiting, held = {}, {}
    # Leaves with post-accumulate hooks: how many recorded calls still have to hand them a gradient.
    # At zero their gradient of this pass is final: it goes into .grad and the hooks run at once.
    pending, counted = {}, set()
    for tensor in order:
        node = tensor._node
        if node.n_outputs > 1:
            key = id(node.ctx)
            waiting[key] = waiting.get(key, 0) + 1
            if key in counted:
                continue  # the call's inputs are counted once, for all its outputs
            counted.add(key)
        for parent in node.inputs:
            if parent is not None and parent._node is None and parent._grad_hooks and parent.requires_grad:
                pending[id(parent)] = pending.get(id(parent), 0) + 1
    grads = {id(root): grad}
    for tensor in reversed(order):
        g = grads.pop(id(tensor), None)
        if g is not None and tensor._retain_grad:
            tensor._accumulate(g)
        node = tensor._node
        in_grads = None
        if node.n_outputs > 1:
            key = id(node.ctx)
            held.setdefault(key, [None] * node.n_outputs)[node.index] = g
            waiting[key] -= 1
            if waiting[key]:
                continue  # other outputs of this call still get gradient
            out_grads = held.pop(key)
            if any(og is not None for og in out_grads):
                in_grads = node.fn.backward(node.ctx, *out_grads)
        elif g is not None:
            in_grads = node.fn.backward(node.ctx, g)
        if in_grads is not None:
            _route(node, in_grads, grads, to_leaf)
        if pending:
            for parent in node.inputs:
                if parent is not None and id(parent) in pending:
                    pending[id(parent)] -= 1
                    if not pending[id(parent)]:
                        del pending[id(parent)]
                        entry = leaf_grads.pop(id(parent), None)
                        if entry is not None:  # ours only when we summed it: others may hold the array
                            parent._accumulate(entry[1], own=entry[2])
                            _run_grad_hooks(parent)
    uses = {}
    for _, g, _ in leaf_grads.values():
        uses[id(g)] = uses.get(id(g), 0) + 1
    for leaf, g, summed in leaf_grads.values():
        leaf._accumulate(g, own=summed or (uses[id(g)] == 1 and g is not grad and _owns_memory(g)))


def _route(node, in_grads, grads, to_leaf) -> None:
    """Hand a call's input gradients on: into `grads` for recorded tensors, to `to_leaf` for leaves."""
    if not isinstance(in_grads, tuple):
        in_grads = (in_grads,)
    if len(in_grads) != len(node.inputs):
        raise RuntimeError(
            f"{node.fn.__name__}.backward returned {len(in_grads)} grads for {len(node.inputs)} inputs"
        )
    for parent, pg in zip(node.inputs, in_grads):
        if parent is None or pg is None or not parent.requires_grad:
            continue
        assert pg.shape == parent.shape, (
            f"{node.fn.__name__}.backward: grad shape {pg.shape} != input shape {parent.shape}"
        )
        if pg.dtype != parent.dtype:
            pg = pg.astype(parent.dtype)
        if parent._node is None:
            to_leaf(parent, pg)
        elif id(parent) in grads:
            grads[id(parent)] = grads[id(parent)] + pg
        else:
            grads[id(parent)] = pg


def _run_grad_hooks(leaf) -> None:
    for hook in list((leaf._grad_hooks or {}).values()):
        hook(leaf)


def _owns_memory(a) -> bool:
    """Not a view of another array (its base, if any, is a memory owner such as a native kernel's
    capsule, not an array)."""
    base = getattr(a, "base", None)
    return base is None or not hasattr(base, "shape")
