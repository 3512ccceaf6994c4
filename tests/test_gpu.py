"""The GPU path against the CPU path: same inputs, same values and gradients (CuPy vs NumPy).

Every test here is marked `gpu` and skips cleanly without CuPy or a GPU (conftest.py).
One test body runs the same tinygpt code on both devices: the CPU result (NumPy) is the
reference for the GPU one. float64 runs the reference kernels on both sides (CuPy's float64
arithmetic is IEEE like NumPy's, so agreement is to rounding: rtol 1e-9); float32 on the GPU
runs the native CUDA kernels where the build has them (tinygpt.kernels.cuda_ops()) and is
compared with the float64 CPU result at float32 accuracy.
"""
import math

import numpy as np
import pytest

import tinygpt as tg
import tinygpt.functional as F
from tinygpt import backend, kernels
from tinygpt.kernels import reference as R
from tinygpt.nn.utils import clip_grad_norm_

from test_finetune_example import checkpoint  # noqa: F401 - fixture: a tiny trained checkpoint and its text

pytestmark = pytest.mark.gpu

F64 = dict(rtol=1e-9, atol=1e-11)


def _rng(seed=0):
    return np.random.default_rng(seed)


def run_on(device, fn, arrays, dtype, seed=1):
    """fn(*leaf Tensors on `device`) -> Tensor (or tuple); returns (values, grads) as host float64 arrays.

    The backward pass uses the same random cotangent per output on every device."""
    leaves = [tg.Tensor(np.asarray(a, dtype=dtype), requires_grad=True, device=device) for a in arrays]
    out = fn(*leaves)
    outs = list(out) if isinstance(out, tuple) else [out]
    rng = _rng(seed)
    total = None
    for o in outs:
        assert o.device == device, f"output on {o.device}, expected {device}"
        w = tg.Tensor(rng.standard_normal(o.shape).astype(dtype), device=device)
        term = (o * w).sum()
        total = term if total is None else total + term
    if total.requires_grad:
        total.backward()
    values = [o.numpy().astype(np.float64) for o in outs]
    grads = [np.zeros(t.shape) if t.grad is None else t.grad.numpy().astype(np.float64) for t in leaves]
    for t in leaves:
        assert t.grad is None or t.grad.device == device
    return values, grads


def assert_close_normalised(a, b, tol, what=""):
    """max |a - b| <= tol * max |b|: float32 results against a float64 reference, whatever their scale."""
    assert a.shape == b.shape, f"{what}: shape {a.shape} vs {b.shape}"
    if b.size == 0:
        return
    scale = max(float(np.abs(b).max()), 1e-12)
    err = float(np.abs(a - b).max())
    assert err <= tol * scale, f"{what}: max error {err:.3e} > {tol:.0e} x {scale:.3e}"


def assert_same_on_devices(fn, *arrays, f32_tol=1e-4, seed=1):
    """fn on the CPU (float64) vs the GPU (float64: reference kernels; float32: native where built).

    f32_tol: the float32 GPU result's max error relative to the largest reference value (1e-4:
    float32 rounding through a few ops; the linear family gets 2e-3, which admits TF32 matmuls).
    """
    cpu_v, cpu_g = run_on("cpu", fn, arrays, np.float64, seed)
    gpu_v, gpu_g = run_on("cuda", fn, arrays, np.float64, seed)
    for a, b in zip(gpu_v + gpu_g, cpu_v + cpu_g):
        np.testing.assert_allclose(a, b, **F64)
    f32_v, f32_g = run_on("cuda", fn, arrays, np.float32, seed)
    for i, (a, b) in enumerate(zip(f32_v + f32_g, cpu_v + cpu_g)):
        assert_close_normalised(a, b, f32_tol, f"float32 on the GPU, result {i}")


def on(device, a):
    return backend.to_device(np.asarray(a), device)


# ------------------------------------------------------------------ primitives (Tensor ops)
X = _rng(0).standard_normal((3, 4))
Y = _rng(1).standard_normal((3, 4))
POS = _rng(2).uniform(0.5, 2.0, (3, 4))
ROW = _rng(3).standard_normal((4,))

ELEMENTWISE = {
    "add": (lambda a, b: a + b, [X, ROW]),
    "sub": (lambda a, b: a - b, [X, Y]),
    "mul": (lambda a, b: a * b, [X, ROW]),
    "div": (lambda a, b: a / b, [X, POS]),
    "neg": (lambda a: -a, [X]),
    "pow": (lambda a: a ** 3, [X]),
    "pow_frac": (lambda a: a ** 0.5, [POS]),
    "scalar_ops": (lambda a: (2.0 - a) * 3.0 / (a * a + 1.0) + 1.0, [X]),
    "exp": (lambda a: a.exp(), [X]),
    "log": (lambda a: a.log(), [POS]),
    "sqrt": (lambda a: a.sqrt(), [POS]),
    "tanh": (lambda a: a.tanh(), [X]),
    "relu": (lambda a: a.relu(), [X]),
    "abs": (lambda a: a.abs(), [X]),
    "maximum": (lambda a, b: tg.maximum(a, b), [X, Y]),
    "minimum": (lambda a, b: tg.minimum(a, b), [X, Y]),
    "where": (lambda a, b: tg.where(a > b, a, b * 2.0), [X, Y]),
    "masked_fill": (lambda a: a.masked_fill(a.data < 0, -1.5), [X]),
}

REDUCTIONS = {
    "sum_all": (lambda a: a.sum(), [X]),
    "sum_axis": (lambda a: a.sum(axis=1, keepdims=True), [X]),
    "sum_axes": (lambda a: a.sum(axis=(0, 2)), [_rng(4).standard_normal((2, 3, 4))]),
    "mean": (lambda a: a.mean(axis=0), [X]),
    "var": (lambda a: a.var(axis=-1), [X]),
    "var_pop": (lambda a: a.var(correction=0), [X]),
    "max": (lambda a: a.max(axis=1), [X]),
    "max_ties": (lambda a: a.max(), [np.array([[1.0, 3.0], [3.0, 2.0]])]),
    "min": (lambda a: a.min(axis=0, keepdims=True), [X]),
    "softmax_method": (lambda a: a.softmax(axis=0), [X]),
}

SHAPES = {
    "matmul_2d": (lambda a, b: a @ b, [X, Y.T]),
    "matmul_batched": (lambda a, b: a @ b, [_rng(5).standard_normal((2, 3, 4)), _rng(6).standard_normal((4, 5))]),
    "matmul_vec": (lambda a, b: a @ b, [X, ROW]),
    "matmul_vec_vec": (lambda a, b: a @ b, [ROW, ROW * 2]),
    "reshape": (lambda a: a.reshape(2, 6) * 1.0, [X]),
    "transpose": (lambda a: a.transpose(0, 2), [_rng(7).standard_normal((2, 3, 4))]),
    "permute": (lambda a: a.permute(2, 0, 1), [_rng(7).standard_normal((2, 3, 4))]),
    "T": (lambda a: a.T, [X]),
    "expand": (lambda a: a.expand(3, 4), [ROW]),
    "squeeze_unsqueeze": (lambda a: a.unsqueeze(1).squeeze(1), [X]),
    "getitem_basic": (lambda a: a[1:, ::2], [X]),
    "getitem_int": (lambda a: a[-1], [X]),
    "getitem_array_repeats": (lambda a: a[np.array([0, 2, 0, 0])], [X]),
    "getitem_list": (lambda a: a[[2, 2, 1]], [X]),
    "getitem_pairs": (lambda a: a[np.array([0, 1, 1]), np.array([3, 3, 0])], [X]),
    "getitem_mask": (lambda a: a[a.data > 0], [X]),
    "getitem_newaxis": (lambda a: a[None, :, 1], [X]),
    "concatenate": (lambda a, b: tg.cat([a, b], axis=1), [X, Y]),
    "stack": (lambda a, b: tg.stack([a, b], axis=1), [X, Y]),
    "split": (lambda a: tg.split(a, [1, 3], axis=1)[1] * 2.0, [X]),
    "cast": (lambda a: a.to(dtype=np.float32).to(dtype=np.float64) if a.dtype == np.float64 else a * 1.0, [X]),
}


@pytest.mark.parametrize("name", sorted(ELEMENTWISE))
def test_elementwise_ops(name):
    fn, arrays = ELEMENTWISE[name]
    assert_same_on_devices(fn, *arrays)


@pytest.mark.parametrize("name", sorted(REDUCTIONS))
def test_reductions(name):
    fn, arrays = REDUCTIONS[name]
    assert_same_on_devices(fn, *arrays)


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_shape_ops(name):
    fn, arrays = SHAPES[name]
    assert_same_on_devices(fn, *arrays)


def test_comparisons_argmax_item_and_factories():
    a, b = tg.Tensor(X, device="cuda"), tg.Tensor(Y, device="cuda")
    for op in ("__lt__", "__le__", "__gt__", "__ge__", "__eq__", "__ne__"):
        got = getattr(a, op)(b)
        assert got.device == "cuda" and got.dtype == np.bool_
        np.testing.assert_array_equal(got.numpy(), getattr(X, op)(Y))
    np.testing.assert_array_equal(a.argmax(axis=1).numpy(), X.argmax(axis=1))
    assert a.sum().item() == pytest.approx(X.sum(), rel=1e-12)
    assert bool(a.max() > 0) == bool(X.max() > 0)
    for t in (tg.zeros(2, 3, device="cuda"), tg.ones(2, 3, device="cuda"), tg.full((2, 3), 4.0, device="cuda"),
              tg.arange(5, device="cuda"), tg.zeros_like(a), tg.ones_like(a)):
        assert t.device == "cuda"
    np.testing.assert_array_equal(tg.full((2,), 4.0, device="cuda").numpy(), [4.0, 4.0])
    tg.manual_seed(3)
    r_cpu = tg.randn(4, 5).numpy()
    tg.manual_seed(3)
    r_gpu = tg.randn(4, 5, device="cuda")
    assert r_gpu.device == "cuda" and r_gpu.dtype == np.float32
    np.testing.assert_array_equal(r_gpu.numpy(), r_cpu)  # one host generator: the same draws on every device
    assert "device='cuda'" in repr(a)


def test_tensor_to_and_back():
    x = tg.Tensor(X.astype(np.float32), requires_grad=True)
    g = x.to("cuda")
    assert g.device == "cuda" and g.requires_grad and g.is_leaf
    assert isinstance(g.data, backend.cupy().ndarray)
    np.testing.assert_array_equal(g.numpy(), x.numpy())
    np.testing.assert_array_equal(g.cpu().numpy(), x.numpy())
    assert g.cuda() is g and g.to("cuda:0") is g
    t = tg.tensor([1.0, 2.0], device="cuda")
    assert t.device == "cuda" and t.dtype == np.float32


# ------------------------------------------------------------------ fused Functions
A = _rng(10).standard_normal((2, 5, 8))
W = _rng(11).standard_normal((6, 8)) * 0.3
B6 = _rng(12).standard_normal((6,))
G8 = 1.0 + 0.1 * _rng(13).standard_normal((8,))
B8 = 0.1 * _rng(14).standard_normal((8,))
IDS = np.array([[1, 3, 3], [0, 6, 1]])
TARGETS = np.array([2, 0, 4, -1, 4, 1])
QKV = [_rng(20 + i).standard_normal((2, 3, 7, 4)) for i in range(3)]
K9 = [_rng(30 + i).standard_normal((2, 3, 9, 4)) for i in range(2)]


def _ids(t, a):
    """An integer array on the same device as tensor t."""
    return on(t.device, a)


FUSED = {
    "linear": (lambda x, w, b: F.linear(x, w, b), [A, W, B6], {"f32_tol": 2e-3}),
    "linear_nobias": (lambda x, w: F.linear(x, w), [A, W], {"f32_tol": 2e-3}),
    "linear_gelu": (lambda x, w, b: F.linear_gelu(x, w, b), [A, W, B6], {"f32_tol": 2e-3}),
    "embedding": (lambda w: F.embedding(_ids(w, IDS), w), [_rng(15).standard_normal((7, 8))], {}),
    "layer_norm": (lambda x, g, b: F.layer_norm(x, g, b), [A, G8, B8], {}),
    "layer_norm_noaffine": (lambda x: F.layer_norm(x), [A], {}),
    "add_layer_norm": (lambda x, r, g, b: F.add_layer_norm(x, r, g, b), [A, A[::-1].copy(), G8, B8], {}),
    "gelu_tanh": (lambda x: F.gelu(x, "tanh"), [A], {}),
    "gelu_erf": (lambda x: F.gelu(x, "none"), [A * 3], {}),
    "softmax": (lambda x: F.softmax(x, -1), [A], {}),
    "softmax_axis1": (lambda x: F.softmax(x, 1), [A], {}),
    "log_softmax": (lambda x: F.log_softmax(x, -1), [A * 5], {}),
    "cross_entropy": (lambda x: F.cross_entropy(x, _ids(x, TARGETS), ignore_index=-1),
                      [_rng(16).standard_normal((6, 5))], {}),
    "cross_entropy_3d": (lambda x: F.cross_entropy(x, _ids(x, TARGETS.reshape(2, 3))),
                         [_rng(16).standard_normal((2, 3, 5))], {}),
    "attention_causal": (lambda q, k, v: F.scaled_dot_product_attention(q, k, v), QKV, {}),
    "attention_full": (lambda q, k, v: F.scaled_dot_product_attention(q, k, v, causal=False), QKV, {}),
    "attention_window": (lambda q, k, v: F.scaled_dot_product_attention(q, k, v, window=3), QKV, {}),
    "attention_kv_longer": (lambda q, k, v: F.scaled_dot_product_attention(q, k, v), [QKV[0]] + K9, {}),
}


@pytest.mark.parametrize("name", sorted(FUSED))
def test_fused_functions(name):
    fn, arrays, tol = FUSED[name]
    assert_same_on_devices(fn, *arrays, **tol)


def test_dropout_same_mask_on_every_device():
    """The mask is a function of (seed, element index): the same on the GPU as on the CPU, bit for bit."""
    for shape, p in (((3, 5, 7), 0.3), ((1000, 37), 0.5), ((2**20 + 17,), 0.1)):  # the last spans two hash chunks
        seed = 123456789012345
        cpu = R.dropout_mask(shape, p, seed, np)
        gpu = R.dropout_mask(shape, p, seed, backend.cupy())
        np.testing.assert_array_equal(backend.to_numpy(gpu), cpu)
        if cpu.size > 10000:
            assert abs(cpu.mean() - (1 - p)) < 0.01

    def fn(x):
        return F.dropout(x, 0.4, training=True)

    for dtype in (np.float64, np.float32):
        tg.manual_seed(7)
        cpu_v, cpu_g = run_on("cpu", fn, [A], dtype)
        tg.manual_seed(7)
        gpu_v, gpu_g = run_on("cuda", fn, [A], dtype)
        np.testing.assert_array_equal(gpu_v[0] != 0, cpu_v[0] != 0)  # the same elements dropped
        np.testing.assert_allclose(gpu_v[0], cpu_v[0], rtol=1e-6 if dtype == np.float32 else 1e-15)
        np.testing.assert_allclose(gpu_g[0], cpu_g[0], rtol=1e-6 if dtype == np.float32 else 1e-15)


def test_attention_dropout_same_on_every_device():
    def fn(q, k, v):
        return F.scaled_dot_product_attention(q, k, v, dropout_p=0.25)

    tg.manual_seed(11)
    cpu_v, cpu_g = run_on("cpu", fn, QKV, np.float64)
    tg.manual_seed(11)
    gpu_v, gpu_g = run_on("cuda", fn, QKV, np.float64)
    for a, b in zip(gpu_v + gpu_g, cpu_v + cpu_g):
        np.testing.assert_allclose(a, b, **F64)


def test_bad_ids_and_indices_raise_on_the_gpu():
    w = tg.randn(7, 4, device="cuda")
    # under the CUDA kernels the range checks stay on the GPU and raise at the next host read
    with pytest.raises(ValueError, match="token id 9 at position"):
        F.embedding(on("cuda", np.array([[1, 9]])), w).numpy()
    with pytest.raises(ValueError, match="target 5 at flat position 1"):
        F.cross_entropy(tg.randn(2, 5, device="cuda"), on("cuda", np.array([0, 5]))).item()
    with pytest.raises(IndexError, match="out of bounds"):  # CuPy alone would wrap the index around
        tg.randn(3, 4, device="cuda")[np.array([0, 3])]


# ------------------------------------------------------------------ devices
def test_mixing_devices_raises_naming_both():
    cpu, gpu = tg.randn(2, 3), tg.randn(2, 3, device="cuda")
    with pytest.raises(ValueError, match="add: tensors on different devices: cpu and cuda"):
        cpu + gpu
    with pytest.raises(ValueError, match="matmul: tensors on different devices: cuda and cpu"):
        gpu @ tg.randn(3, 2)
    with pytest.raises(ValueError, match="embedding: tensors on different devices"):
        F.embedding(np.array([0, 1]), gpu)
    with pytest.raises(ValueError, match="lt: tensors on different devices"):
        gpu < cpu
    with pytest.raises(ValueError, match="getitem: index on cuda"):
        cpu[on("cuda", np.array([0]))]
    # host index arrays are fine for a GPU tensor (as torch's CPU index tensors)
    np.testing.assert_array_equal(gpu[np.array([1, 0])].numpy(), gpu.numpy()[[1, 0]])


def _small_gpt(seed=0, **kw):
    cfg = dict(vocab_size=13, block_size=16, n_layer=2, n_head=2, n_embd=16, dropout=0.0)
    cfg.update(kw)
    tg.manual_seed(seed)
    return tg.GPT(tg.GPTConfig(**cfg))


def test_module_to_moves_parameters_and_buffers():
    model = _small_gpt(position="sinusoidal")
    before = {k: v.copy() for k, v in model.state_dict().items()}
    params = model.parameters()
    assert model.to("cuda") is model
    assert [id(p) for p in model.parameters()] == [id(p) for p in params]  # same Parameter objects
    assert model.device == "cuda" and all(p.device == "cuda" and p.grad is None for p in params)
    assert backend.device_of(model.transformer.wpe) == "cuda"  # the sinusoidal buffer moved too
    assert model.lm_head.weight is model.transformer.wte.weight  # still tied
    for k, v in model.state_dict().items():
        assert backend.device_of(v) == "cuda"
        np.testing.assert_array_equal(backend.to_numpy(v), before[k])
    model.to("cpu")
    for k, v in model.state_dict().items():
        assert isinstance(v, np.ndarray)
        np.testing.assert_array_equal(v, before[k])


def _batch(cfg_vocab=13, B=3, T=16, seed=0):
    rng = _rng(seed)
    seq = rng.integers(0, cfg_vocab, size=(B, T + 1))
    return seq[:, :-1], seq[:, 1:]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("variant", [{}, {"norm": "post"}, {"position": "sinusoidal"},
                                     {"attention_window": 4, "sparse_pattern": "alternating"}, {"gelu": "none"},
                                     {"n_expert": 4, "expert_top_k": 2, "capacity_factor": 0.0}])
def test_gpt_logits_loss_and_grads_match_cpu(dtype, variant):
    """A small GPT on the CPU and on the GPU from the same weights: same logits, loss and gradients."""
    x, y = _batch()
    results = []
    for device in ("cpu", "cuda"):
        model = _small_gpt(**variant).to(device, dtype=dtype)
        logits, loss = model(x, y)  # numpy ids: moved to the model's device
        assert logits.device == device and loss.device == device
        loss.backward()
        results.append((logits.numpy(), loss.item(), {n: p.grad.numpy() for n, p in model.named_parameters()}))
    (l_cpu, loss_cpu, g_cpu), (l_gpu, loss_gpu, g_gpu) = results
    assert loss_cpu == pytest.approx(math.log(13), abs=0.3)  # a fresh model: near uniform
    if dtype == np.float64:  # the reference kernels on both devices: equal to rounding
        np.testing.assert_allclose(l_gpu, l_cpu, **F64)
        assert loss_gpu == pytest.approx(loss_cpu, rel=1e-10)
        for name in g_cpu:
            np.testing.assert_allclose(g_gpu[name], g_cpu[name], rtol=1e-8, atol=1e-12, err_msg=name)
    else:  # float32 on both, native kernels on both where built (2e-3 also admits TF32 matmuls on the GPU)
        assert_close_normalised(l_gpu, l_cpu, 2e-3, "logits")
        assert loss_gpu == pytest.approx(loss_cpu, rel=1e-4)
        for name in g_cpu:
            assert_close_normalised(g_gpu[name], g_cpu[name], 2e-3, name)


def test_gpt_with_dropout_matches_cpu():
    """Dropout masks come from host-drawn seeds and a counter hash: the same training step on both devices."""
    x, y = _batch()
    losses = []
    for device in ("cpu", "cuda"):
        model = _small_gpt(seed=1, dropout=0.2).to(device, dtype=np.float64)
        tg.manual_seed(99)
        _, loss = model(x, y)
        loss.backward()
        losses.append((loss.item(), model.transformer.wte.weight.grad.numpy()))
    assert losses[1][0] == pytest.approx(losses[0][0], rel=1e-10)
    np.testing.assert_allclose(losses[1][1], losses[0][1], **F64)


def test_adamw_sgd_and_clipping_steps_agree():
    x, y = _batch()
    finals = []
    for device in ("cpu", "cuda"):
        model = _small_gpt(seed=2).to(device)
        opt = model.configure_optimizers(0.1, 1e-2, betas=(0.9, 0.99))
        norms = []
        for _ in range(4):
            _, loss = model(x, y)
            opt.zero_grad()
            loss.backward()
            norms.append(float(clip_grad_norm_(model.parameters(), 0.5)))
            opt.step()
        state = opt.state[id(model.transformer.wte.weight)]
        assert backend.device_of(state["exp_avg"]) == device  # optimiser state lives with the parameter
        finals.append((norms, {n: p.numpy() for n, p in model.named_parameters()}, loss.item()))
    (n_cpu, p_cpu, l_cpu), (n_gpu, p_gpu, l_gpu) = finals
    np.testing.assert_allclose(n_gpu, n_cpu, rtol=1e-4)
    assert l_gpu == pytest.approx(l_cpu, rel=1e-4)
    for name in p_cpu:  # 4 steps of lr 1e-2: float32 grads that differ by ~1e-6 move the weights by far less
        np.testing.assert_allclose(p_gpu[name], p_cpu[name], rtol=1e-4, atol=1e-4, err_msg=name)
    # SGD with momentum and the inf-norm clip, float64: to rounding
    outs = []
    for device in ("cpu", "cuda"):
        model = _small_gpt(seed=3).to(device, dtype=np.float64)
        opt = tg.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=0.01, nesterov=True)
        for _ in range(3):
            _, loss = model(x, y)
            opt.zero_grad()
            loss.backward()
            clip_grad_norm_(model.parameters(), 0.1, norm_type=float("inf"))
            opt.step()
        outs.append([p.numpy() for p in model.parameters()])
    for a, b in zip(outs[1], outs[0]):
        np.testing.assert_allclose(a, b, **F64)


def test_checkpoint_saved_on_gpu_loads_on_cpu(tmp_path):
    from tinygpt.checkpoint import load_checkpoint, save_checkpoint

    x, y = _batch()
    model = _small_gpt(seed=4).to("cuda")
    opt = model.configure_optimizers(0.1, 1e-2)
    for _ in range(2):
        _, loss = model(x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    path = tmp_path / "gpu.safetensors"
    save_checkpoint(path, model, opt, step=2, config=model.config)
    # onto the CPU
    cpu_model = _small_gpt(seed=5)
    cpu_opt = cpu_model.configure_optimizers(0.1, 1e-2)
    meta = load_checkpoint(path, cpu_model, cpu_opt)
    assert meta["step"] == 2
    for (n, p), (_, q) in zip(model.named_parameters(), cpu_model.named_parameters()):
        assert isinstance(q.data, np.ndarray)
        np.testing.assert_array_equal(q.numpy(), p.numpy(), err_msg=n)
    for p, q in zip(model.parameters(), cpu_model.parameters()):
        for key in ("exp_avg", "exp_avg_sq"):
            np.testing.assert_array_equal(backend.to_numpy(cpu_opt.state[id(q)][key]),
                                          backend.to_numpy(opt.state[id(p)][key]))
    # and back onto a GPU model: the next step is the same on both devices
    gpu_model = _small_gpt(seed=6).to("cuda")
    gpu_opt = gpu_model.configure_optimizers(0.1, 1e-2)
    load_checkpoint(path, gpu_model, gpu_opt)
    assert all(backend.device_of(s["exp_avg"]) == "cuda" for s in gpu_opt.state.values())
    for m, o in ((cpu_model, cpu_opt), (gpu_model, gpu_opt)):
        _, loss = m(x, y)
        o.zero_grad()
        loss.backward()
        o.step()
    for p, q in zip(gpu_model.parameters(), cpu_model.parameters()):  # one lr-1e-2 AdamW step from equal states:
        # float32 gradient noise can move near-zero weights by ~1e-5 (Adam divides by sqrt(v))
        np.testing.assert_allclose(p.numpy(), q.numpy(), rtol=1e-4, atol=1e-4)


def test_generate_on_gpu():
    cpu = _small_gpt(seed=7).to(dtype=np.float64)
    gpu = _small_gpt(seed=7).to("cuda", dtype=np.float64)
    prompt = np.array([[1, 2, 3], [4, 5, 6]])
    greedy_cpu = cpu.generate(prompt, 20, temperature=0)
    greedy_gpu = gpu.generate(prompt, 20, temperature=0)
    assert isinstance(greedy_gpu, np.ndarray) and greedy_gpu.shape == (2, 23)  # contexts past block_size crop
    np.testing.assert_array_equal(greedy_gpu, greedy_cpu)
    sampled_cpu = cpu.generate(prompt, 10, temperature=0.9, top_k=5, top_p=0.9, seed=3)
    sampled_gpu = gpu.generate(prompt, 10, temperature=0.9, top_k=5, top_p=0.9, seed=3)
    np.testing.assert_array_equal(sampled_gpu, sampled_cpu)
    t = gpu.generate(tg.Tensor(prompt, device="cuda"), 4, temperature=0)
    assert isinstance(t, tg.Tensor) and t.device == "cuda"
    np.testing.assert_array_equal(t.numpy(), greedy_cpu[:, :7])
    raw = gpu.generate(on("cuda", prompt), 4, temperature=0)
    assert backend.device_of(raw) == "cuda"


def test_batch_sampler_on_gpu():
    from tinygpt.data import BatchSampler

    tokens = np.arange(500) % 37
    cpu, gpu = BatchSampler(tokens, 4, 8, seed=2), BatchSampler(tokens, 4, 8, seed=2, device="cuda")
    for _ in range(3):
        (xc, yc), (xg, yg) = cpu.sample(), gpu.sample()
        assert backend.device_of(xg) == "cuda" and xg.dtype == np.int64
        np.testing.assert_array_equal(backend.to_numpy(xg), xc)
        np.testing.assert_array_equal(backend.to_numpy(yg), yc)


def test_decode_accepts_gpu_ids():
    from tinygpt.data import CharTokenizer

    tok = CharTokenizer.from_text("hello")
    assert tok.decode(on("cuda", tok.encode("hello"))) == "hello"


# ------------------------------------------------------------------ native CUDA kernels vs the reference on CuPy
NATIVE_CASES = {  # op -> (Function call on float32 GPU tensors, input arrays, normalised tolerance)
    "linear": (lambda x, w, b: F.linear(x, w, b), [A, W, B6], 1e-3),  # 1e-3 also admits TF32 tensor cores
    "linear_gelu": (lambda x, w, b: F.linear_gelu(x, w, b), [A, W, B6], 1e-3),
    "embedding": (lambda w: F.embedding(_ids(w, IDS), w), [_rng(15).standard_normal((7, 8))], 1e-5),
    "layer_norm": (lambda x, g, b: F.layer_norm(x, g, b), [A, G8, B8], 1e-4),
    "add_layer_norm": (lambda x, r, g, b: F.add_layer_norm(x, r, g, b), [A, A[::-1].copy(), G8, B8], 1e-4),
    "gelu": (lambda x: F.gelu(x, "tanh"), [A], 1e-4),
    "softmax": (lambda x: F.softmax(x, -1), [A], 1e-4),
    "log_softmax": (lambda x: F.log_softmax(x, -1), [A * 5], 1e-4),
    "cross_entropy": (lambda x: F.cross_entropy(x, _ids(x, TARGETS)), [_rng(16).standard_normal((6, 5))], 1e-4),
    "dropout": (lambda x: F.dropout(x, 0.3), [A], 1e-6),
    "attention": (lambda q, k, v: F.scaled_dot_product_attention(q, k, v, dropout_p=0.1), QKV, 1e-4),
    "qkv_attention": (lambda qkv: F.qkv_attention(qkv, 2, dropout_p=0.1, window=3),
                      [_rng(17).standard_normal((2, 7, 3 * 2 * 4))], 1e-4),
}


def _native_vs_reference(fn, arrays, native):
    tg.manual_seed(5)
    with kernels.use_native(native):
        return run_on("cuda", fn, arrays, np.float32)


@pytest.mark.parametrize("op", sorted(NATIVE_CASES))
def test_native_cuda_kernels_match_the_reference_on_cupy(op):
    if op not in kernels.cuda_ops():
        pytest.skip(f"no CUDA kernel for {op} in this build (kernels.cuda_ops() = {kernels.cuda_ops()})")
    fn, arrays, tol = NATIVE_CASES[op]
    arrays32 = [np.asarray(a, np.float32) for a in arrays]
    with kernels.use_native(True):
        sample = [backend.to_device(a, "cuda") for a in arrays32]
        assert kernels.select(op, *sample).name == "native-cuda"
        assert kernels.select(op, *(a.astype(np.float64) for a in sample)).name == "reference"  # float32 only
        assert kernels.select(op, *sample, native_ok=False).name == "reference"
    with kernels.use_native(False):
        assert kernels.select(op, *sample).name == "reference"
    nat_v, nat_g = _native_vs_reference(fn, arrays32, True)
    ref_v, ref_g = _native_vs_reference(fn, arrays32, False)
    for a, b in zip(nat_v + nat_g, ref_v + ref_g):
        scale = max(float(np.abs(b).max()), 1e-30)
        assert float(np.abs(a - b).max()) <= tol * scale, f"{op}: max error {np.abs(a - b).max():.3e} vs scale {scale:.3e}"


def test_native_cuda_adamw_matches_the_reference_on_cupy():
    if "adamw_step" not in kernels.cuda_ops():
        pytest.skip("no CUDA AdamW in this build")
    cp = backend.cupy()
    rng = _rng(8)
    arrays = [rng.standard_normal(1001).astype(np.float32) for _ in range(2)] + [
        np.abs(rng.standard_normal(1001)).astype(np.float32) * s for s in (0.1, 0.01)]
    h = dict(lr=1e-2, beta1=0.9, beta2=0.99, eps=1e-8, weight_decay=0.1, step=3)
    native = [cp.asarray(a) for a in arrays]
    ref = [cp.asarray(a) for a in arrays]
    with kernels.use_native(True):
        kernels.adamw_step(*native, **h)
    R.adamw_step(*ref, **h)
    for name, a, b in zip(("param", "grad", "exp_avg", "exp_avg_sq"), native, ref):
        np.testing.assert_allclose(backend.to_numpy(a), backend.to_numpy(b), rtol=1e-5, atol=1e-7, err_msg=name)


def test_example_trains_on_gpu(tmp_path):
    """examples/train_shakespeare.py --device cuda for a few iterations (small flags override the preset)."""
    import importlib.util
    import os

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    spec = importlib.util.spec_from_file_location("examples_train_gpu", os.path.join(root, "examples",
                                                                                      "train_shakespeare.py"))
    ex = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ex)
    text = tmp_path / "t.txt"
    text.write_text("To be, or not to be, that is the question.\n" * 40, encoding="utf-8")
    s = ex.main(["--data", str(text), "--out-dir", str(tmp_path / "out"), "--device", "cuda", "--n-layer", "2",
                 "--n-head", "2", "--n-embd", "32", "--block-size", "32", "--batch-size", "8", "--max-iters", "12",
                 "--warmup-iters", "2", "--lr", "3e-3",
                 "--eval-interval", "6", "--eval-iters", "2", "--final-eval-iters", "2", "--sample-tokens", "20",
                 "--no-progress"])
    assert s["device"] == "cuda" and s["args"]["dropout"] == 0.2  # the preset's, not overridden
    assert math.isfinite(s["final_val_loss"]) and len(s["sample"]) == 20
    first = s["train_losses"]["0"]
    assert s["last_train_loss"] < first
    if "linear" in tg.kernels.cuda_ops():  # the summary says which GEMM the 'auto' dispatch picked
        assert "GEMM: " in s["kernels"] and ("measured shape classes" in s["kernels"]
                                              or tg.kernels.policy.get_matmul_backend() != "auto")


# ------------------------------------------------------------------ quantized inference, LoRA, the other examples
@pytest.mark.parametrize("bits", [8, 4])
def test_quantized_model_on_gpu_matches_the_cpu(bits):
    from tinygpt.quantize import quantize

    cpu = quantize(_small_gpt(seed=11, n_embd=32), bits=bits)
    gpu = quantize(_small_gpt(seed=11, n_embd=32), bits=bits).to("cuda")
    x, y = _batch()
    with tg.no_grad():
        lc, loss_c = cpu(tg.Tensor(x), tg.Tensor(y))
        lg, loss_g = gpu(tg.Tensor(x, device="cuda"), tg.Tensor(y, device="cuda"))
    assert lg.device == "cuda"
    np.testing.assert_allclose(lg.numpy(), lc.numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(loss_g.item(), loss_c.item(), rtol=1e-5)
    np.testing.assert_array_equal(gpu.generate(x[:1, :4], 6, temperature=0), cpu.generate(x[:1, :4], 6, temperature=0))


def test_lora_training_on_gpu_matches_the_cpu():
    from tinygpt import lora

    x, y = _batch()
    runs = {}
    for device in ("cpu", "cuda"):
        model = lora.apply(_small_gpt(seed=12).to(device), rank=2, targets=("c_attn", "c_fc"))
        opt = tg.optim.AdamW(lora.trainable_parameters(model), lr=1e-2)
        xs, ys = tg.Tensor(x, device=device), tg.Tensor(y, device=device)
        losses = []
        for _ in range(3):
            _, loss = model(xs, ys)
            opt.zero_grad()
            loss.backward()
            tg.nn.utils.clip_grad_norm_(lora.trainable_parameters(model), 1.0)
            opt.step()
            losses.append(loss.item())
        runs[device] = (losses, {k: backend.to_numpy(v) for k, v in lora.lora_state_dict(model).items()})
    np.testing.assert_allclose(runs["cuda"][0], runs["cpu"][0], rtol=1e-5)
    for k, v in runs["cpu"][1].items():
        np.testing.assert_allclose(runs["cuda"][1][k], v, rtol=1e-4, atol=1e-6, err_msg=k)


def test_finetune_and_sample_examples_on_gpu(checkpoint):
    """examples/finetune_classifier.py (with a LoRA run) and examples/sample.py with --device cuda give
    the CPU's results (same seeds: dropout masks are the same on both devices)."""
    from helpers import load_example
    from test_finetune_example import ft

    data, ckpt, _ = checkpoint  # test_finetune_example's tiny checkpoint and its text
    sample = load_example("sample")
    common = ["--init-from", str(ckpt), "--data", str(data), "--n-classes", "3", "--max-iters", "6",
              "--batch-size", "4", "--eval-interval", "3", "--lora", "2", "--no-progress", "--seed", "5"]
    s_cpu, s_gpu = (ft.main(common + ["--device", d]) for d in ("cpu", "cuda"))
    for run in s_cpu["runs"]:
        for key in ("val_loss", "train_loss", "first_task_loss", "last_task_loss"):
            np.testing.assert_allclose(s_gpu["runs"][run][key], s_cpu["runs"][run][key], rtol=1e-4, err_msg=(run, key))
        for key in ("val_accuracy", "train_accuracy"):
            assert s_gpu["runs"][run][key] == s_cpu["runs"][run][key], (run, key)
    args = ["--out-dir", str(ckpt), "--prompt", "RO", "--num-samples", "2", "--max-new-tokens", "12",
            "--temperature", "0", "--quiet"]
    assert sample.main(args + ["--device", "cuda"]) == sample.main(args + ["--device", "cpu"])


@pytest.mark.parametrize("bits", [None, 8, 4])
def test_cached_decode_fast_path_on_gpu(bits, monkeypatch):
    """models/fastpath.py on CuPy arrays (its per-op path: the native step is CPU-only) gives the modules' hidden
    states and cache, bit for bit: the same CUDA kernels on the same inputs."""
    from tinygpt.models import gpt as gpt_module
    from tinygpt.models.generation import KVCache
    from tinygpt.quantize import quantize

    model = _small_gpt(seed=5, n_embd=32).to("cuda").eval()  # int4 groups of 32 inputs
    if bits:
        quantize(model, bits=bits)
    took = []
    run = gpt_module.cached_blocks
    monkeypatch.setattr(gpt_module, "cached_blocks", lambda *a: took.append(run(*a)) or took[-1])
    ids = np.array([[1, 2, 3, 4], [5, 6, 7, 8]])
    runs = []
    for fast in (True, False):
        with monkeypatch.context() as m:
            if not fast:
                m.setattr(gpt_module, "cached_blocks", lambda *a: None)
            cache, outs, tok = KVCache.for_model(model, 2), [], ids
            with tg.no_grad():
                for _ in range(3):
                    h = model.hidden_states(tok, kv_cache=cache).numpy()
                    outs.append(h)
                    tok = h[:, -1:, 0].astype(np.int64) % 7  # any next ids (B, 1)
            runs.append((outs, [backend.to_numpy(k) for k in cache.k]))
    (fast_h, fast_k), (slow_h, slow_k) = runs
    assert len(took) == 3 and all(t is not None for t in took)  # the fast path ran every step
    assert all(np.array_equal(a, b) for a, b in zip(fast_h, slow_h))
    assert all(np.array_equal(a, b) for a, b in zip(fast_k, slow_k))
