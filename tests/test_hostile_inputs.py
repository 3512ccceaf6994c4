"""Hostile but legal inputs to the fused ops (issue 12, section 3): each must give the right
answer or a clear error naming the problem, never a silent NaN, zeros, a crash or a giant allocation.

Each kernel-level test runs on every implementation present: the NumPy reference, the native CPU
kernels (tinygpt._C.cpu) and the CUDA kernels (tinygpt.kernels.cuda: on a GPU, or on the CPU emulator
with TINYGPT_CUDA_EMULATOR=1); the ones this machine lacks skip.
"""
import numpy as np
import pytest

import tinygpt as tg
import tinygpt.functional as F
from tinygpt import kernels
from tinygpt.kernels import cuda as K
from tinygpt.kernels import reference as R

torch = pytest.importorskip("torch")

CPU = getattr(kernels._native, "cpu", None)


class Impl:
    """One implementation of the kernels: `fn(op, part)` is its <op>_<part> (forward/backward),
    `dev` puts a host array where it computes, `host` brings a result back as numpy."""

    def __init__(self, name):
        self.name = name

    def fn(self, op, part):
        if self.name == "reference":
            return getattr(R, f"{op}_{part}")
        if self.name == "native":
            f = getattr(CPU, f"{op}_{part}", None)
            if f is None:
                pytest.skip(f"tinygpt._C.cpu has no {op}_{part}")
            return f
        if not K.has(op):
            pytest.skip(f"this build has no CUDA {op} kernel")
        return getattr(K.module(op), f"{op}_{part}")

    def dev(self, a):
        return tg.backend.cupy().asarray(a) if self.name == "cuda" else a

    def host(self, a):
        return tg.backend.cupy().asnumpy(a) if self.name == "cuda" else np.asarray(a)


@pytest.fixture(params=["reference", "native", "cuda"])
def impl(request):
    if request.param == "native" and CPU is None:
        pytest.skip("tinygpt._C is not built")
    if request.param == "cuda" and not tg.backend.cuda_available():
        pytest.skip("no GPU (run with TINYGPT_CUDA_EMULATOR=1 for the CUDA kernels on the emulator)")
    return Impl(request.param)


def each_isa(impl):
    """The instruction sets to run a native CPU test on (each compiled copy this CPU supports; the
    others, e.g. avx512 here, are compiled but cannot run); one pass for the other implementations."""
    if impl.name != "native":
        yield impl.name
        return
    for isa in ("baseline", "avx2", "avx512"):
        try:
            CPU.set_isa(isa)
        except ValueError:
            continue  # not supported by this CPU
        try:
            yield isa
        finally:
            CPU.set_isa("auto")


@pytest.fixture(params=["reference", "native"])
def dispatch(request):
    """The Function-level path through kernels.select, with native kernels off or on."""
    if request.param == "native" and not kernels.native_enabled():
        pytest.skip("tinygpt._C is not built or disabled")
    with kernels.use_native(request.param == "native"):
        yield request.param


# ----------------------------------------------------------------------------- cross_entropy: all ignored
@pytest.mark.parametrize("grad", [1.0, 0.5])
def test_cross_entropy_all_ignored_gives_nan_loss_and_zero_gradient(impl, grad):
    """PyTorch: the mean over no rows is nan and the gradient exactly 0. Before: the gradient was nan."""
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((5, 11)).astype(np.float32)
    targets = np.full(5, -100, dtype=np.int64)
    loss, saved = impl.fn("cross_entropy", "forward")(impl.dev(logits), impl.dev(targets), -100)
    dx = impl.host(impl.fn("cross_entropy", "backward")(impl.dev(np.array(np.float32(grad))), impl.dev(logits),
                                                       impl.dev(targets), saved))
    lt = torch.tensor(logits, requires_grad=True)
    tl = torch.nn.functional.cross_entropy(lt, torch.tensor(targets), ignore_index=-100)
    (tl * grad).backward()
    assert np.isnan(float(impl.host(loss))) and torch.isnan(tl)
    assert dx.shape == logits.shape and dx.dtype == np.float32
    np.testing.assert_array_equal(dx, lt.grad.numpy())  # both exactly zero
    assert not np.any(dx)


def test_cross_entropy_ignored_rows_are_exactly_zero_for_any_upstream_gradient(impl):
    """Ignored rows get 0 even when the upstream gradient is not finite (PyTorch's behaviour)."""
    rng = np.random.default_rng(1)
    logits = rng.standard_normal((4, 6)).astype(np.float32)
    targets = np.array([2, -1, 5, -1], dtype=np.int64)
    _, saved = impl.fn("cross_entropy", "forward")(impl.dev(logits), impl.dev(targets), -1)
    dx = impl.host(impl.fn("cross_entropy", "backward")(impl.dev(np.array(np.float32(np.inf))), impl.dev(logits),
                                                       impl.dev(targets), saved))
    assert not np.any(dx[[1, 3]])
    assert np.all(np.isinf(dx[[0, 2]]))


def test_all_ignored_batch_leaves_adamw_weights_finite_and_as_torch(dispatch):
    """One training step on a batch of padding only: loss nan, gradients 0, and AdamW moves the
    weights only by weight decay, exactly as torch.optim.AdamW does."""
    rng = np.random.default_rng(2)
    w = rng.standard_normal((7, 5)).astype(np.float32)
    b = rng.standard_normal(7).astype(np.float32)
    x = rng.standard_normal((3, 4, 5)).astype(np.float32)
    targets = np.full((3, 4), -1, dtype=np.int64)

    lin = tg.nn.Linear(5, 7)
    lin.weight.data[...] = w
    lin.bias.data[...] = b
    opt = tg.optim.AdamW(lin.parameters(), lr=1e-2, weight_decay=0.1)
    loss = F.cross_entropy(lin(tg.Tensor(x)), targets)
    loss.backward()
    opt.step()

    tlin = torch.nn.Linear(5, 7)
    with torch.no_grad():
        tlin.weight.copy_(torch.tensor(w))
        tlin.bias.copy_(torch.tensor(b))
    topt = torch.optim.AdamW(tlin.parameters(), lr=1e-2, weight_decay=0.1)
    tloss = torch.nn.functional.cross_entropy(tlin(torch.tensor(x)).reshape(-1, 7), torch.tensor(targets).reshape(-1),
                                              ignore_index=-1)
    tloss.backward()
    topt.step()

    assert np.isnan(loss.item()) and torch.isnan(tloss)
    for p, tp in ((lin.weight, tlin.weight), (lin.bias, tlin.bias)):
        assert not np.any(p.grad.numpy())
        assert np.all(np.isfinite(p.data))
        np.testing.assert_allclose(p.data, tp.detach().numpy(), rtol=1e-6, atol=0)
    np.testing.assert_allclose(lin.weight.data, w * (1 - 1e-2 * 0.1), rtol=1e-6)


def test_gpt_step_on_padding_only_batch_keeps_weights_finite(dispatch):
    tg.manual_seed(0)
    model = tg.GPT(tg.GPTConfig(vocab_size=17, block_size=8, n_layer=1, n_head=2, n_embd=8))
    before = {n: p.data.copy() for n, p in model.named_parameters()}
    opt = tg.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)
    idx = np.arange(16).reshape(2, 8) % 17
    _, loss = model(idx, np.full((2, 8), -1))
    loss.backward()
    opt.step()
    assert np.isnan(loss.item())
    for n, p in model.named_parameters():
        np.testing.assert_array_equal(p.data, before[n], err_msg=n)  # zero gradient, no decay: unchanged


# ----------------------------------------------------------------------------- layer_norm of huge rows
def _ln_truth(x, w, b, g, eps=1e-5):
    """float64 layer_norm forward and backward (dx, dw, db) through torch's autograd."""
    xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    wt = torch.tensor(w, dtype=torch.float64, requires_grad=True)
    bt = torch.tensor(b, dtype=torch.float64, requires_grad=True)
    y = torch.nn.functional.layer_norm(xt, (x.shape[-1],), wt, bt, eps)
    y.backward(torch.tensor(g, dtype=torch.float64))
    return y.detach().numpy(), xt.grad.numpy(), wt.grad.numpy(), bt.grad.numpy()


def _ln_rows(C, rng):
    """Rows from ordinary to near float32's limit: row 0 ordinary; 1: ~1e20 (the sum of squares
    overflows float32); 2: ~1e30 (the issue's case); 3: an offset of 1e30 with a spread of 1e28;
    4: ~1e36 (std * sqrt(C) near float's range); 5: +-3e38 (the float32 sum overflows)."""
    base = rng.standard_normal((6, C))
    x = base * np.array([1.0, 1e20, 1e30, 1e28, 1e36, 1.0])[:, None]
    x[3] += 1e30
    x[5] = np.where(base[5] >= 0, 3.0e38, -3.0e38) * rng.uniform(0.5, 1.0, C)
    x[5, 0], x[5, -1] = 3.0e38, -3.0e38
    return x.astype(np.float32)


def _ln_check(x, y, dx, dw, db, truth):
    y64, dx64, dw64, db64 = truth
    assert np.all(np.isfinite(y)) and np.all(np.isfinite(dx))
    np.testing.assert_allclose(y, y64, rtol=2e-5, atol=2e-5 * np.abs(y64).max())
    for r in range(x.shape[0]):  # dx scales as 1/std: compare each row at its own scale
        scale = np.abs(dx64[r]).max()
        np.testing.assert_allclose(dx[r], dx64[r], rtol=1e-4, atol=1e-4 * scale + 1e-44, err_msg=f"row {r}")
    np.testing.assert_allclose(dw, dw64, rtol=1e-4, atol=1e-4 * np.abs(dw64).max())
    np.testing.assert_allclose(db, db64, rtol=1e-5, atol=1e-5 * np.abs(db64).max())


@pytest.mark.parametrize("C", [7, 64, 768])
def test_layer_norm_of_huge_rows_matches_float64(impl, C):
    """Before: a row near 1e30 gave y = 0 (its float32 variance overflowed to inf)."""
    rng = np.random.default_rng(C)
    x = _ln_rows(C, rng)
    w = rng.uniform(0.5, 1.5, C).astype(np.float32)
    b = rng.standard_normal(C).astype(np.float32)
    g = rng.standard_normal(x.shape).astype(np.float32)
    truth = _ln_truth(x, w, b, g)
    for isa in each_isa(impl):
        y, saved = impl.fn("layer_norm", "forward")(impl.dev(x), impl.dev(w), impl.dev(b), 1e-5)
        dx, dw, db = impl.fn("layer_norm", "backward")(impl.dev(g), impl.dev(x), impl.dev(w), saved)
        _ln_check(x, impl.host(y), impl.host(dx), impl.host(dw), impl.host(db), truth)

        # the ordinary row is computed exactly as in a batch without the huge rows
        y0, saved0 = impl.fn("layer_norm", "forward")(impl.dev(x[:1]), impl.dev(w), impl.dev(b), 1e-5)
        dx0, _, _ = impl.fn("layer_norm", "backward")(impl.dev(g[:1]), impl.dev(x[:1]), impl.dev(w), saved0)
        np.testing.assert_array_equal(impl.host(y)[:1], impl.host(y0), err_msg=isa)
        np.testing.assert_array_equal(impl.host(dx)[:1], impl.host(dx0), err_msg=isa)


@pytest.mark.parametrize("C", [8, 300])
def test_add_layer_norm_of_huge_rows_matches_float64(impl, C):
    rng = np.random.default_rng(C + 1)
    s_true = _ln_rows(C, rng)
    residual = rng.standard_normal(s_true.shape).astype(np.float32)
    x = (s_true - residual).astype(np.float32)
    s = x + residual  # what the op normalises (float32 sum)
    w = rng.uniform(0.5, 1.5, C).astype(np.float32)
    b = rng.standard_normal(C).astype(np.float32)
    gy = rng.standard_normal(x.shape).astype(np.float32)
    truth = _ln_truth(s, w, b, gy)
    for isa in each_isa(impl):
        (s_out, y), saved = impl.fn("add_layer_norm", "forward")(impl.dev(x), impl.dev(residual), impl.dev(w),
                                                               impl.dev(b), 1e-5)
        np.testing.assert_array_equal(impl.host(s_out), s)
        # grad_s None (counts as 0): the wide rows' dx is ~1/std, which an added grad_s of ~1 would swamp
        dx, dres, dw, db = impl.fn("add_layer_norm", "backward")(None, impl.dev(gy), impl.dev(x),
                                                                 impl.dev(residual), impl.dev(w), saved)
        _ln_check(s, impl.host(y), impl.host(dx), impl.host(dw), impl.host(db), truth)
        np.testing.assert_array_equal(impl.host(dres), impl.host(dx), err_msg=isa)


def test_layer_norm_function_on_1e30_matches_torch(dispatch):
    """The issue's case through F.layer_norm, against torch in float64 (torch's float32 is shown too)."""
    rng = np.random.default_rng(3)
    x = (rng.standard_normal((2, 3, 16)) * 1e30).astype(np.float32)
    g = rng.standard_normal(x.shape).astype(np.float32)
    xt = tg.Tensor(x, requires_grad=True)
    y = F.layer_norm(xt, None, None)
    (y * tg.Tensor(g)).sum().backward()
    ref = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    yr = torch.nn.functional.layer_norm(ref, (16,))
    (yr * torch.tensor(g, dtype=torch.float64)).sum().backward()
    np.testing.assert_allclose(y.numpy(), yr.detach().numpy(), rtol=1e-5, atol=1e-5)
    scale = np.abs(ref.grad.numpy()).max()
    np.testing.assert_allclose(xt.grad.numpy(), ref.grad.numpy(), rtol=1e-3, atol=1e-4 * scale)


# ----------------------------------------------------------------------------- unaligned and huge arrays
def _unaligned(a):
    """A C-contiguous but unaligned (data at an odd address) read-only copy of float32 `a`."""
    u = np.frombuffer(b"\0" + np.ascontiguousarray(a, np.float32).tobytes(), dtype=np.float32, offset=1)
    u = u.reshape(a.shape)
    assert u.flags.c_contiguous and not u.flags.aligned
    return u


def _native_calls(x2, x3, w, ids):
    """One call per native CPU op family, each on the given (N, C) / (B, T, C) float32 arrays."""
    return {
        "linear": lambda: CPU.linear_forward(x2, w, None),
        "layer_norm": lambda: CPU.layer_norm_forward(x2, None, None, 1e-5),
        "add_layer_norm": lambda: CPU.add_layer_norm_forward(x2, x2, None, None, 1e-5),
        "gelu": lambda: CPU.gelu_forward(x2, "tanh"),
        "softmax": lambda: CPU.softmax_forward(x2, -1),
        "cross_entropy": lambda: CPU.cross_entropy_forward(x2, ids, -1),
        "dropout": lambda: CPU.dropout_forward(x2, 0.5, 0),
        "attention": lambda: CPU.attention_forward(x3, x3, x3, True, None, 0.0, 0, 1.0),
        "embedding": lambda: CPU.embedding_forward(ids, w),
    }


@pytest.mark.skipif(CPU is None, reason="tinygpt._C is not built")
@pytest.mark.parametrize("op", ["linear", "layer_norm", "add_layer_norm", "gelu", "softmax", "cross_entropy",
                                "dropout", "attention", "embedding"])
def test_native_kernels_refuse_unaligned_arrays(op):
    """Reading an unaligned float32 array through float* is undefined behaviour (UBSan flagged it):
    every native kernel refuses it with an error naming the argument."""
    rng = np.random.default_rng(4)
    x2 = _unaligned(rng.standard_normal((4, 8)))
    x3 = _unaligned(rng.standard_normal((2, 4, 8)))
    w = _unaligned(rng.standard_normal((8, 8)))
    with pytest.raises(ValueError, match=r"(x|q|logits|weight|residual).* must be aligned to 4 bytes"):
        _native_calls(x2, x3, w, np.zeros(4, np.int64))[op]()


@pytest.mark.skipif(CPU is None, reason="tinygpt._C is not built")
def test_native_adamw_refuses_unaligned_state():
    p = np.zeros(8, np.float32)
    g = _unaligned(np.ones(8))
    with pytest.raises(ValueError, match="adamw_step: grad must be aligned"):
        CPU.adamw_step(p, g, np.zeros(8, np.float32), np.zeros(8, np.float32), lr=1e-3, beta1=0.9, beta2=0.999,
                       eps=1e-8, weight_decay=0.0, step=1)


def test_functions_run_unaligned_inputs_correctly(dispatch):
    """Through tinygpt.functional an unaligned input is legal: the dispatcher runs the reference on it."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((3, 8)).astype(np.float32)
    w = rng.standard_normal((5, 8)).astype(np.float32)
    for f in (lambda a: F.layer_norm(tg.Tensor(a)), lambda a: F.gelu(tg.Tensor(a)),
              lambda a: F.linear(tg.Tensor(a), tg.Tensor(w)), lambda a: F.softmax(tg.Tensor(a))):
        np.testing.assert_allclose(f(_unaligned(x)).numpy(), f(x).numpy(), rtol=1e-6, atol=1e-6)


def test_cuda_wrappers_refuse_unaligned_arrays():
    if not tg.backend.cuda_available() or not K.has("gelu"):
        pytest.skip("no CUDA kernels here (TINYGPT_CUDA_EMULATOR=1 runs them on the emulator)")
    cp = tg.backend.cupy()
    raw = cp.zeros(4 * 16 + 4, dtype=cp.uint8)
    x = raw[1:1 + 4 * 16].view(cp.float32).reshape(2, 8)
    if x.data.ptr % 4 == 0:
        pytest.skip("this array library aligned the view")
    with pytest.raises(ValueError, match="gelu_forward: x.*aligned to 4 bytes"):
        K.gelu.gelu_forward(x, "tanh")


@pytest.mark.skipif(CPU is None, reason="tinygpt._C is not built")
@pytest.mark.parametrize("op", ["linear", "layer_norm", "add_layer_norm", "gelu", "softmax", "cross_entropy",
                                "dropout", "attention"])
def test_native_kernels_refuse_huge_zero_stride_arrays(op):
    """A 2^40-element view of one float (zero strides): a clear error, not a crash or a giant allocation."""
    one = np.zeros(1, np.float32)
    x2 = np.broadcast_to(one, (2**20, 2**20))
    x3 = np.lib.stride_tricks.as_strided(one, shape=(2**14, 2**14, 2**12), strides=(0, 0, 0))
    with pytest.raises(ValueError, match="must be C-contiguous"):
        _native_calls(x2, x3, x2, np.zeros(2**20, np.int64))[op]()


@pytest.mark.skipif(CPU is None, reason="tinygpt._C is not built")
def test_native_output_size_is_checked_before_it_is_multiplied():
    """Zero-size inputs whose output would have 2^90 elements: the size is checked with overflow-safe
    arithmetic before anything is allocated (it used to wrap around in the size computation)."""
    x = np.empty((2**30, 2**30, 0), np.float32)
    w = np.empty((2**30, 0), np.float32)
    with pytest.raises(ValueError, match=r"output of shape \(1073741824, 1073741824, 1073741824\) would be too large"):
        CPU.linear_forward(x, w, None)


# ----------------------------------------------------------------------------- clear errors
@pytest.mark.skipif(CPU is None, reason="tinygpt._C is not built")
@pytest.mark.parametrize("call, name", [
    (lambda x, ids: CPU.cross_entropy_forward(x, ids, 2**70), "cross_entropy_forward: ignore_index"),
    (lambda x, ids: CPU.softmax_forward(x, -2**64), "softmax_forward: axis"),
    (lambda x, ids: CPU.log_softmax_forward(x, 2**63), "log_softmax_forward: axis"),
    (lambda x, ids: CPU.softmax_backward(x, x, 2**80, ()), "softmax_backward: axis"),
    (lambda x, ids: CPU.qkv_attention_forward(np.zeros((1, 2, 6), np.float32), 2**64, True, None, 0.0, 0, 1.0),
     "qkv_attention_forward: n_head"),
    (lambda x, ids: CPU.attention_forward(*[np.zeros((1, 2, 4), np.float32)] * 3, True, 2**64, 0.0, 0, 1.0),
     "attention_forward: window"),
    (lambda x, ids: CPU.adamw_step(x, x, x.copy(), x.copy(), lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8,
                                   weight_decay=0.0, step=2**64), "adamw_step: step"),
    (lambda x, ids: CPU.set_num_threads(2**40), "set_num_threads: n"),
    (lambda x, ids: CPU.attention_tiles(fwd_br=2**70), "attention_tiles: fwd_br"),
])
def test_out_of_range_ints_to_native_kernels_name_the_argument(call, name):
    """Before: pybind11's TypeError 'incompatible function arguments' listing the signature."""
    x = np.zeros((2, 4), np.float32)
    with pytest.raises(ValueError, match=name.replace("(", r"\(")):
        call(x, np.zeros(2, np.int64))
    assert CPU.get_num_threads() >= 1


def test_out_of_range_ints_to_cuda_wrappers_name_the_argument():
    if not tg.backend.cuda_available() or not K.has("cross_entropy"):
        pytest.skip("no CUDA kernels here (TINYGPT_CUDA_EMULATOR=1 runs them on the emulator)")
    cp = tg.backend.cupy()
    with pytest.raises(ValueError, match="cross_entropy_forward: ignore_index: .* out of range"):
        K.cross_entropy.cross_entropy_forward(cp.zeros((2, 3), cp.float32), cp.zeros(2, cp.int64), 2**70)


@pytest.mark.parametrize("call", [
    lambda z: F.layer_norm(z),
    lambda z: F.linear(z, tg.Tensor(np.ones((2, 1), np.float32))),
    lambda z: F.add_layer_norm(z, z),
])
def test_zero_dimensional_inputs_are_refused_clearly(dispatch, call):
    """Before: IndexError: tuple index out of range."""
    with pytest.raises(ValueError, match="at least 1 dimension"):
        call(tg.Tensor(np.float32(1.0)))


def test_head_size_zero_is_refused_clearly(dispatch):
    """Before: ZeroDivisionError (the default scale 1/sqrt(hs))."""
    z = tg.Tensor(np.zeros((1, 2, 3, 0), np.float32))
    with pytest.raises(ValueError, match=r"head size is 0, so the default scale 1/sqrt\(head size\) is undefined"):
        F.scaled_dot_product_attention(z, z, z)
    with pytest.raises(ValueError, match="head size is 0"):
        F.qkv_attention(tg.Tensor(np.zeros((1, 3, 0), np.float32)), 2)
    # with an explicit scale size-0 heads are defined (every score 0: uniform weights), as the kernels do
    v = tg.Tensor(np.arange(6, dtype=np.float32).reshape(1, 1, 3, 2))
    q = tg.Tensor(np.zeros((1, 1, 3, 0), np.float32))
    out = F.scaled_dot_product_attention(q, q, v, causal=False, scale=1.0)
    np.testing.assert_allclose(out.numpy(), np.broadcast_to(v.numpy().mean(axis=2, keepdims=True), (1, 1, 3, 2)))


@pytest.mark.parametrize("dtype", [bool, np.int32, np.int64, np.uint8])
def test_linear_refuses_bool_and_integer_inputs(dispatch, dtype):
    """Before: a bool or integer input was silently multiplied as floats."""
    w = tg.Tensor(np.ones((2, 3), np.float32))
    with pytest.raises(TypeError, match=f"linear: input must be a floating-point array, got dtype {np.dtype(dtype)}"):
        F.linear(tg.Tensor(np.ones((4, 3), dtype)), w)
    with pytest.raises(TypeError, match="layer_norm: input must be a floating-point array"):
        F.layer_norm(tg.Tensor(np.ones((4, 3), dtype)))


def test_attention_refuses_mixed_float_dtypes(dispatch):
    """Before: float32 q with a float64 k was silently promoted to a float64 result."""
    q = tg.Tensor(np.ones((1, 1, 2, 4), np.float32))
    k = tg.Tensor(np.ones((1, 1, 2, 4), np.float64))
    with pytest.raises(TypeError, match="q float32, k float64, v float32"):
        F.scaled_dot_product_attention(q, k, q)
    with pytest.raises(TypeError, match="input float32, weight float64"):
        F.linear(tg.Tensor(np.ones((2, 4), np.float32)), tg.Tensor(np.ones((3, 4), np.float64)))


def test_empty_batches(dispatch):
    """Batch size 0: the model says so (already the case on main); the ops return empty results, and
    cross_entropy over no rows is the all-ignored case (nan loss, zero gradient)."""
    tg.manual_seed(0)
    model = tg.GPT(tg.GPTConfig(vocab_size=17, block_size=8, n_layer=1, n_head=2, n_embd=8))
    with pytest.raises(ValueError, match="batch size and sequence length must be at least 1"):
        model(np.zeros((0, 8), np.int64))
    with pytest.raises(ValueError, match="empty prompt"):
        model.generate(np.zeros((0, 3), np.int64), max_new_tokens=2)
    x = tg.Tensor(np.zeros((0, 5), np.float32), requires_grad=True)
    assert F.layer_norm(x).shape == (0, 5)
    assert F.scaled_dot_product_attention(*[tg.Tensor(np.zeros((0, 2, 4, 8), np.float32))] * 3).shape == (0, 2, 4, 8)
    loss = F.cross_entropy(x, np.zeros(0, np.int64))
    loss.backward()
    assert np.isnan(loss.item()) and x.grad.shape == (0, 5)


def test_tie_word_embeddings_as_a_string_is_refused():
    """'"tie_word_embeddings": "false"' (a string, truthy) must not be read as True (passes on main
    since the GPT-2 files work; kept as a regression test)."""
    from tinygpt.models import hf

    tg.manual_seed(0)
    cfg = hf.config_to_hf(tg.GPTConfig(vocab_size=17, block_size=8, n_layer=1, n_head=2, n_embd=8))
    cfg["tie_word_embeddings"] = "false"
    with pytest.raises(ValueError, match="tie_word_embeddings must be true or false, got 'false'"):
        hf.config_from_hf(cfg)
