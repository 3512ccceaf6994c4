"""Graph mechanics: accumulation, detach, no_grad, explicit grads, deep graphs, custom Functions."""
import math

import numpy as np
import pytest
from helpers import check_grads

import tinygpt as tg
from tinygpt import Function

pytestmark = pytest.mark.usefixtures("seeded")


def leaf(values, dtype=np.float64):
    return tg.Tensor(np.array(values, dtype=dtype), requires_grad=True)


def grad(t):
    return t.grad.numpy()


# ------------------------------------------------------------------ accumulation
def test_tensor_used_twice_accumulates():
    x = leaf([1.0, -2.0, 3.0])
    (x * x).sum().backward()
    np.testing.assert_array_equal(grad(x), [2.0, -4.0, 6.0])
    y = leaf([1.0, 2.0])
    (y + y).sum().backward()
    np.testing.assert_array_equal(grad(y), [2.0, 2.0])


def test_grads_accumulate_across_backward_calls():
    x = leaf([1.0, 2.0])
    loss = (x * 3.0).sum()
    loss.backward()
    loss.backward()  # the graph is kept: a second backward adds again
    np.testing.assert_array_equal(grad(x), [6.0, 6.0])
    (x * x).sum().backward()
    np.testing.assert_array_equal(grad(x), [8.0, 10.0])


def test_zero_grad():
    x = leaf([1.0, 2.0])
    (x * 2.0).sum().backward()
    x.zero_grad()
    assert x.grad is None
    (x * 5.0).sum().backward()
    np.testing.assert_array_equal(grad(x), [5.0, 5.0])


def test_grad_is_not_aliased_between_leaves():
    """Two leaves fed the same upstream gradient array must not share .grad storage."""
    a, b = leaf([1.0, 2.0]), leaf([3.0, 4.0])
    (a + b).sum().backward()
    a.grad.data += 10.0
    np.testing.assert_array_equal(grad(b), [1.0, 1.0])


def test_leaf_grads_are_taken_uncopied_only_when_nothing_else_holds_them():
    """Backward outputs no one else holds become .grad as they are (no copy); the root grad, views
    and arrays handed to two leaves are copied, so in-place updates of one .grad touch nothing else."""
    class Fresh(Function):  # backward returns a new array: nothing else holds it
        @staticmethod
        def forward(ctx, x):
            return x * 2.0

        @staticmethod
        def backward(ctx, g):
            ctx.returned = g * 2.0
            return ctx.returned

    a = leaf([1.0, 2.0])
    y = Fresh.apply(a)
    y.backward(np.ones(2))
    assert a.grad.data is y._node.ctx.returned  # taken, not copied

    g_root = np.array([5.0, 6.0])
    b, c = leaf([1.0, 2.0]), leaf([3.0, 4.0])
    (b + c).backward(g_root)  # Add hands the root grad itself to both leaves
    b.grad.data += 1.0
    c.grad.data += 2.0
    np.testing.assert_array_equal(g_root, [5.0, 6.0])
    np.testing.assert_array_equal(grad(b), [6.0, 7.0])
    np.testing.assert_array_equal(grad(c), [7.0, 8.0])

    d = leaf(np.arange(6.0))
    h = d * 1.0  # non-leaf fed the same array as the leaf e below
    e = leaf(np.zeros(6))
    (h.reshape(2, 3) + e.reshape(2, 3)).sum().backward()  # reshape backward: views of one array
    e.grad.data += 1.0
    np.testing.assert_array_equal(grad(d), np.ones(6))
    np.testing.assert_array_equal(grad(e), 2 * np.ones(6))


def test_accumulating_into_a_taken_grad_keeps_later_passes_right():
    a = leaf([1.0, 2.0, 3.0])
    for _ in range(3):
        (a * a).sum().backward()  # the first pass takes its array, later ones add into it
    np.testing.assert_array_equal(grad(a), [6.0, 12.0, 18.0])


# ------------------------------------------------------------------ graph shape
def test_diamond_graph():
    x = leaf([0.3, -0.7])
    a = x * 2.0
    d = a.exp() + a * 3.0  # two paths from x through a
    d.sum().backward()
    np.testing.assert_allclose(grad(x), 2.0 * np.exp(2.0 * x.numpy()) + 6.0, rtol=1e-14)


def test_shared_subgraph_consumed_at_different_depths():
    """a is used directly and through a long chain: topological order must wait for both."""
    x = leaf([0.5])
    a = x * 3.0
    b = a
    for _ in range(5):
        b = b * 2.0
    (a + b).sum().backward()
    np.testing.assert_allclose(grad(x), [3.0 + 3.0 * 32.0], rtol=1e-15)


def test_retain_grad_on_non_leaf():
    x = leaf([1.0, 2.0])
    h = (x * 3.0).retain_grad()
    other = x * 2.0
    (h * h + other).sum().backward()
    np.testing.assert_allclose(grad(h), 2.0 * h.numpy())
    assert other.grad is None  # non-leaves keep no grad unless asked
    np.testing.assert_allclose(grad(x), 18.0 * x.numpy() + 2.0)
    assert not h.is_leaf and x.is_leaf


def test_inputs_without_requires_grad_get_no_grad():
    x, c = leaf([1.0, 2.0]), tg.Tensor(np.array([3.0, 4.0]))
    (x * c).sum().backward()
    assert c.grad is None
    np.testing.assert_array_equal(grad(x), [3.0, 4.0])


def test_deep_chain_no_recursion_error():
    """20,000 ops in a chain: backward is iterative."""
    x = leaf([1.0])
    y = x
    for _ in range(10_000):
        y = y * 1.0001
        y = y + 0.5
    y.sum().backward()
    np.testing.assert_allclose(grad(x), [1.0001**10_000], rtol=1e-10)


# ------------------------------------------------------------------ detach / no_grad
def test_detach_cuts_the_graph():
    x = leaf([2.0, 3.0])
    d = x.detach()
    assert not d.requires_grad and d.is_leaf
    assert np.shares_memory(d.data, x.data)
    (x * d).sum().backward()  # only the first factor carries gradient
    np.testing.assert_array_equal(grad(x), [2.0, 3.0])


def test_no_grad_records_nothing():
    x = leaf([1.0, 2.0])
    with tg.no_grad():
        assert not tg.is_grad_enabled()
        y = (x * 2.0).exp()
    assert tg.is_grad_enabled()
    assert not y.requires_grad and y.is_leaf
    with pytest.raises(RuntimeError, match="does not require grad"):
        y.sum().backward()


def test_no_grad_restores_state_after_exception():
    with pytest.raises(ZeroDivisionError):
        with tg.no_grad():
            1 / 0
    assert tg.is_grad_enabled()


def test_enable_grad_inside_no_grad():
    x = leaf([1.0, 2.0])
    with tg.no_grad():
        with tg.enable_grad():
            y = x * x
        z = x * x
    assert y.requires_grad and not z.requires_grad
    y.sum().backward()
    np.testing.assert_array_equal(grad(x), [2.0, 4.0])


# ------------------------------------------------------------------ backward arguments
def test_backward_non_scalar_needs_grad():
    y = leaf([1.0, 2.0]) * 2.0
    with pytest.raises(RuntimeError, match="scalar"):
        y.backward()


def test_backward_with_explicit_grad():
    x = leaf([[1.0, 2.0], [3.0, 4.0]])
    y = x * x
    y.backward(np.array([[1.0, 0.0], [2.0, -1.0]]))
    np.testing.assert_array_equal(grad(x), [[2.0, 0.0], [12.0, -8.0]])
    x.zero_grad()
    y.backward(tg.Tensor(np.ones((2, 2))))
    np.testing.assert_array_equal(grad(x), 2.0 * x.numpy())


def test_backward_grad_shape_mismatch():
    y = leaf([1.0, 2.0]) * 2.0
    with pytest.raises(ValueError, match=r"\(3,\).*\(2,\)"):
        y.backward(np.ones(3))


def test_backward_on_leaf():
    x = leaf([1.0, 2.0])
    x.backward(np.array([3.0, 4.0]))
    np.testing.assert_array_equal(grad(x), [3.0, 4.0])


def test_backward_without_graph_raises():
    with pytest.raises(RuntimeError, match="does not require grad"):
        tg.Tensor(np.ones(())).backward()


@pytest.mark.parametrize("dtype", [np.int64, np.int32, np.bool_])
def test_requires_grad_on_non_float_raises(dtype):
    with pytest.raises(TypeError, match="floating point"):
        tg.Tensor(np.ones(3, dtype), requires_grad=True)
    with pytest.raises(TypeError, match="floating point"):
        tg.Tensor(np.ones(3, dtype)).requires_grad_()


def test_float32_grads_stay_float32_through_chain():
    x = leaf([0.5, -1.0, 2.0], np.float32)
    y = ((x * 3.0).tanh() @ x + x.sum() ** 2).exp()
    assert y.dtype == np.float32
    y.backward()
    assert x.grad.dtype == np.float32


# ------------------------------------------------------------------ custom Functions
class Cube(Function):
    @staticmethod
    def forward(ctx, a):
        ctx.save_for_backward(a)
        return a**3

    @staticmethod
    def backward(ctx, g):
        (a,) = ctx.saved
        return 3 * a * a * g


class BadCube(Cube):
    @staticmethod
    def backward(ctx, g):
        (a,) = ctx.saved
        return 2 * a * a * g  # wrong on purpose


class TwoGrads(Function):
    @staticmethod
    def forward(ctx, a):
        return a * 1.0

    @staticmethod
    def backward(ctx, g):
        return g, g  # one too many


def test_custom_function():
    a = np.array([0.5, -1.5, 2.0])
    out = check_grads(Cube.apply, a)
    np.testing.assert_allclose(out, a**3, rtol=1e-15)


def test_gradient_checker_catches_a_wrong_backward():
    with pytest.raises(AssertionError, match="finite differences"):
        check_grads(BadCube.apply, np.array([0.5, -1.5, 2.0]))


def test_backward_wrong_number_of_grads():
    y = TwoGrads.apply(leaf([1.0]))
    with pytest.raises(RuntimeError, match="2 grads for 1 inputs"):
        y.sum().backward()


def test_function_needs_input_grad_and_non_tensor_args():
    seen = {}

    class Scale(Function):
        @staticmethod
        def forward(ctx, a, b, k):
            seen["needs"] = ctx.needs_input_grad
            ctx.k = k
            return (a + b) * k

        @staticmethod
        def backward(ctx, g):
            return g * ctx.k, g * ctx.k, None

    a, b = leaf([1.0]), tg.Tensor(np.array([2.0]))
    Scale.apply(a, b, 3.0).sum().backward()
    assert seen["needs"] == (True, False, False)
    np.testing.assert_array_equal(grad(a), [3.0])
    assert math.isclose(Scale.apply(a, b, 2.0).item(), 6.0)


# ------------------------------------------------------------------ post-accumulate grad hooks
def _record_hooks(*tensors):
    """Register a hook on each tensor that records (name, copy of .grad) when it fires."""
    calls = []
    for name, t in tensors:
        t.register_post_accumulate_grad_hook(lambda p, name=name: calls.append((name, p.grad.numpy().copy())))
    return calls


def test_grad_hook_fires_once_when_final_and_before_earlier_layers():
    x = leaf(np.arange(6.0).reshape(2, 3))
    w1, w2 = leaf(np.ones((3, 4)) * 0.5), leaf(np.arange(8.0).reshape(4, 2))
    events = []
    w1.register_post_accumulate_grad_hook(lambda p: events.append("w1"))
    w2.register_post_accumulate_grad_hook(lambda p: events.append("w2"))
    h = x @ w1
    # a Function between the two matmuls notes when its backward runs: w2's hook must come before it
    tagged = type("Tag", (Function,), {"forward": staticmethod(lambda ctx, a: a.copy()),
                                       "backward": staticmethod(lambda ctx, g: (events.append("tag"), g)[1])})
    (tagged.apply(h) @ w2).sum().backward()
    assert events == ["w2", "tag", "w1"]


def test_grad_hook_sees_the_summed_gradient_of_a_leaf_used_many_times():
    x = leaf([1.0, -2.0, 3.0])
    calls = _record_hooks(("x", x))
    (x * x + x.exp() * x).sum().backward()
    expected = 2 * x.numpy() + np.exp(x.numpy()) * (1 + x.numpy())
    assert [n for n, _ in calls] == ["x"]
    np.testing.assert_allclose(calls[0][1], expected)
    np.testing.assert_allclose(grad(x), expected)


def test_grad_hook_multi_output_inputs_and_accumulation_across_passes():
    x, r = leaf(np.random.randn(2, 4)), leaf(np.random.randn(2, 4))
    w, b = leaf(np.ones(4)), leaf(np.zeros(4))
    calls = _record_hooks(("x", x), ("r", r), ("w", w), ("b", b))
    s, y = tg.functional.add_layer_norm(x, r, w, b)
    (s.sum() + (y * y).sum()).backward()
    assert sorted(n for n, _ in calls) == ["b", "r", "w", "x"]  # each once, though two outputs lead to them
    first = dict(calls)
    calls.clear()
    s, y = tg.functional.add_layer_norm(x, r, w, b)
    (s.sum() + (y * y).sum()).backward()
    for name, g in calls:  # the hook sees .grad after this pass's gradient was added
        np.testing.assert_allclose(g, 2 * first[name], rtol=1e-12)


def test_grad_hook_not_called_without_gradient_and_removable():
    a, unused = leaf([1.0, 2.0]), leaf([3.0])
    calls = _record_hooks(("a", a), ("unused", unused))
    handle = a.register_post_accumulate_grad_hook(lambda p: calls.append(("again", None)))
    (a * 2.0).sum().backward()
    assert [n for n, _ in calls] == ["a", "again"]
    handle.remove()
    calls.clear()
    (a * unused.detach()).sum().backward()  # `unused` takes part only through a detached copy
    assert [n for n, _ in calls] == ["a"] and unused.grad is None
    calls.clear()
    a.backward(np.array([1.0, 1.0]))  # the root itself is the leaf
    assert [n for n, _ in calls] == ["a"]
    with pytest.raises(RuntimeError, match="only a leaf tensor"):
        (a * 2.0).register_post_accumulate_grad_hook(lambda p: None)
    with pytest.raises(TypeError, match="callable"):
        a.register_post_accumulate_grad_hook(None)


def test_grad_hooks_leave_every_gradient_of_a_gpt_unchanged():
    cfg = tg.GPTConfig(vocab_size=11, block_size=8, n_layer=2, n_head=2, n_embd=16)
    ids = np.random.randint(0, 11, size=(3, 8))
    grads = []
    for hooked in (False, True):
        tg.manual_seed(0)
        model = tg.GPT(cfg)
        order = []
        if hooked:
            for name, p in model.named_parameters():
                p.register_post_accumulate_grad_hook(lambda p, name=name: order.append(name))
        _, loss = model(ids, np.roll(ids, -1, axis=1))
        loss.backward()
        grads.append({n: p.grad.numpy().copy() for n, p in model.named_parameters()})
    assert grads[0].keys() == grads[1].keys()
    for n in grads[0]:
        np.testing.assert_array_equal(grads[0][n], grads[1][n], err_msg=n)
    assert sorted(order) == sorted(grads[0]) and len(order) == len(set(order))
    # the last layers' gradients are final first; the embeddings' (whose lookups are the first ops) last
    assert order.index("transformer.ln_f.weight") < order.index("transformer.h.1.ln_1.weight") < \
        order.index("transformer.h.0.ln_1.weight")
    assert set(order[-2:]) == {"transformer.wte.weight", "transformer.wpe.weight"}
