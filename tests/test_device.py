"""The device path, checked without a GPU: dispatch of cupy arrays, mixed-device errors, flags.

A stand-in for CuPy (`FakeCupy`, an array type numpy does not know) is installed as
`tinygpt.backend._cupy` where a test needs "cuda" arrays: everything tested here decides on
the device before touching the data, so the fake never computes anything. The real GPU
checks are in test_gpu.py (marked `gpu`).
"""
import importlib.util
import os
import subprocess
import sys

import numpy as np
import pytest

import tinygpt as tg
import tinygpt.functional as F
from tinygpt import backend, kernels, ops
from tinygpt.data import BatchSampler
from tinygpt.kernels import cuda as kcuda
from tinygpt.kernels import reference as R

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class FakeFlags:
    def __init__(self, c_contiguous):
        self.c_contiguous = c_contiguous


class FakeArray:
    """Shape, dtype and flags of a device array, nothing else (numpy must not mistake it for its own)."""

    def __init__(self, shape, dtype=np.float32, c_contiguous=True):
        self.shape, self.dtype, self.flags = tuple(shape), np.dtype(dtype), FakeFlags(c_contiguous)
        self.ndim = len(self.shape)
        self.size = int(np.prod(self.shape))


class FakeCupy:
    __name__ = "cupy"
    ndarray = FakeArray

    @staticmethod
    def get_array_module(a):
        return FakeCupy if isinstance(a, FakeArray) else np


@pytest.fixture
def fake_cupy(monkeypatch):
    """backend._cupy = FakeCupy: FakeArray instances count as arrays on 'cuda'."""
    monkeypatch.setattr(backend, "_cupy", FakeCupy)
    return FakeCupy


def fake_tensor(*shape, dtype=np.float32, requires_grad=False):
    return tg.Tensor._wrap(FakeArray(shape, dtype), requires_grad=requires_grad)


# ------------------------------------------------------------------ dispatch (select / adamw_step)
@pytest.fixture
def fake_cuda_ops(monkeypatch):
    """Pretend tinygpt.kernels.cuda has kernels for 'layer_norm' and 'adamw_step' only; record the calls."""
    calls = []

    def make(name):
        def fn(*args, **kwargs):
            calls.append(name)
            return name

        return fn

    monkeypatch.setattr(kcuda, "has", lambda op: op in ("layer_norm", "adamw_step"))
    for module, name in ((kcuda.layer_norm, "layer_norm_forward"), (kcuda.layer_norm, "layer_norm_backward"),
                         (kcuda.adamw, "adamw_step")):
        monkeypatch.setattr(module, name, make(name))
    return calls


def test_select_routes_cupy_arrays_to_the_cuda_wrappers(fake_cuda_ops):
    x, w, b = FakeArray((4, 8)), FakeArray((8,)), FakeArray((8,))
    with kernels.use_native(True):  # also under TINYGPT_NATIVE=0
        k = kernels.select("layer_norm", x, w, b)
        assert k.name == "native-cuda"
        assert k.forward() == "layer_norm_forward" and k.backward() == "layer_norm_backward"
        assert fake_cuda_ops == ["layer_norm_forward", "layer_norm_backward"]
        # no CUDA wrapper for gelu: the reference, which runs on cupy through xp
        assert kernels.select("gelu", x) == kernels.Kernel("reference", R.gelu_forward, R.gelu_backward)
        # arrays that do not qualify: float64, non-contiguous, None allowed
        assert kernels.select("layer_norm", FakeArray((4, 8), np.float64), w, b).name == "reference"
        assert kernels.select("layer_norm", FakeArray((4, 8), c_contiguous=False), w, b).name == "reference"
        assert kernels.select("layer_norm", x, None, None).name == "native-cuda"
        assert kernels.select("layer_norm", x, w, b, native_ok=False).name == "reference"
        # a numpy array among cupy ones: no device in common, so the reference (the Function's
        # device check has already refused such a mix before a kernel is picked)
        assert kernels.select("layer_norm", x, np.ones(8, np.float32), b).name == "reference"
    with kernels.use_native(False):
        assert kernels.select("layer_norm", x, w, b).name == "reference"


def test_select_keeps_numpy_arrays_on_the_cpu_path(fake_cuda_ops):
    x = np.ones((4, 8), np.float32)
    w = np.ones(8, np.float32)
    with kernels.use_native(True):
        k = kernels.select("layer_norm", x, w, w)
    assert k.name in ("reference", "native-cpu")  # never the CUDA wrappers
    assert (k.name == "native-cpu") == ("layer_norm" in kernels.available()["cpu"])
    assert fake_cuda_ops == []


def test_cuda_wrapper_without_a_backward_is_not_offered(monkeypatch):
    monkeypatch.setattr(kcuda, "has", lambda op: op == "softmax")
    monkeypatch.setattr(kcuda.softmax, "softmax_forward", lambda *a: None)
    monkeypatch.delattr(kcuda.softmax, "softmax_backward")
    with kernels.use_native(True):
        assert kernels.select("softmax", FakeArray((2, 3)), native_ok=True).name == "reference"


def test_adamw_step_routes_cupy_arrays_to_the_cuda_wrapper(fake_cuda_ops, monkeypatch):
    ref_calls = []
    monkeypatch.setattr(R, "adamw_step", lambda *a, **k: ref_calls.append(a[0].dtype))
    h = dict(lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.01, step=1)
    with kernels.use_native(True):
        kernels.adamw_step(*(FakeArray((5,)) for _ in range(4)), **h)
        assert fake_cuda_ops == ["adamw_step"] and ref_calls == []
        kernels.adamw_step(*(FakeArray((5,), np.float64) for _ in range(4)), **h)
        assert ref_calls == [np.float64]
        monkeypatch.setattr(kcuda, "has", lambda op: False)  # a build without the CUDA AdamW
        kernels.adamw_step(*(FakeArray((5,)) for _ in range(4)), **h)
        assert len(ref_calls) == 2 and fake_cuda_ops == ["adamw_step"]


def test_available_reports_the_cuda_ops(fake_cuda_ops):
    info = kernels.available()
    assert info["cuda"] == ["adamw_step", "layer_norm"] == kernels.cuda_ops()
    assert set(info) >= {"native", "enabled", "cpu", "cuda"}


def test_available_cuda_lists_only_dispatchable_ops(monkeypatch):
    # with the real kernels.cuda: an op is listed only when every launcher it needs was built
    listed = kernels.available()["cuda"]
    assert listed == kernels.cuda_ops()
    for op in listed:
        assert kcuda.has(op) and kernels.implementation(op, "cuda") is not None
    # a launcher group that is not in the op table (a helper, say) is not an op
    monkeypatch.setitem(kcuda.linear.LAUNCHERS, "some_helper", ("x",))
    monkeypatch.setattr(kcuda, "has", lambda op: True)
    assert "some_helper" not in kernels.cuda_ops()


# ------------------------------------------------------------------ mixed devices
def test_mixing_devices_in_an_op_names_both(fake_cupy):
    cpu, gpu = tg.randn(2, 3), fake_tensor(2, 3)
    assert gpu.device == "cuda" and cpu.device == "cpu"
    with pytest.raises(ValueError, match="add: tensors on different devices: cpu and cuda"):
        cpu + gpu
    with pytest.raises(ValueError, match="mul: tensors on different devices: cuda and cpu"):
        gpu * cpu
    with pytest.raises(ValueError, match="matmul: tensors on different devices"):
        cpu @ fake_tensor(3, 2)
    with pytest.raises(ValueError, match="concatenate: tensors on different devices"):
        tg.cat([cpu, gpu])
    with pytest.raises(ValueError, match="lt: tensors on different devices: cpu and cuda"):
        cpu < gpu
    with pytest.raises(ValueError, match="maximum: tensors on different devices"):
        tg.maximum(cpu, gpu)
    with pytest.raises(ValueError, match="where: tensors on different devices"):
        tg.where(np.ones((2, 3), bool), gpu, gpu)
    with pytest.raises(ValueError, match="linear: tensors on different devices"):
        F.linear(cpu, fake_tensor(4, 3))


def test_raw_arrays_on_the_wrong_device_are_refused(fake_cupy):
    weight = fake_tensor(10, 4)
    with pytest.raises(ValueError, match="embedding: tensors on different devices: cpu and cuda"):
        F.embedding(np.array([1, 2]), weight)
    with pytest.raises(ValueError, match="where: tensors on different devices"):
        fake_tensor(2, 3).masked_fill(np.zeros((2, 3), bool), 0.0)
    with pytest.raises(ValueError, match="getitem: index on cuda"):
        tg.randn(4)[FakeArray((2,), np.int64)]


def test_backward_grad_on_another_device(fake_cupy):
    x = tg.randn(3, requires_grad=True)
    y = x * 2.0
    with pytest.raises(ValueError, match="backward: grad is on cuda, the tensor on cpu"):
        y.backward(fake_tensor(3))


def test_model_input_on_the_wrong_device(fake_cupy):
    tg.manual_seed(0)
    model = tg.GPT(tg.GPTConfig(vocab_size=11, block_size=8, n_layer=1, n_head=2, n_embd=8))
    assert model.device == "cpu"
    with pytest.raises(ValueError, match="GPT: idx is on cuda but the model is on cpu"):
        model(tg.Tensor._wrap(FakeArray((1, 4), np.int64)))
    with pytest.raises(ValueError, match="GPT: targets is on cuda"):
        model(np.zeros((1, 4), np.int64), tg.Tensor._wrap(FakeArray((1, 4), np.int64)))


def test_cuda_without_gpu_is_a_plain_message():
    if backend.cuda_available():
        pytest.skip("a GPU is present")
    for make in (lambda: tg.zeros(2, device="cuda"), lambda: tg.ones(2, device="cuda"),
                 lambda: tg.randn(2, device="cuda"), lambda: tg.Tensor([1.0], device="cuda"),
                 lambda: tg.GPT(tg.GPTConfig(vocab_size=5, block_size=4, n_layer=1, n_head=1, n_embd=4)).to("cuda"),
                 lambda: BatchSampler(np.arange(50), 2, 4, device="cuda")):
        with pytest.raises(RuntimeError, match=r"device 'cuda'.*(CuPy|GPU)"):
            make()


# ------------------------------------------------------------------ generic helpers used on both devices
def test_backend_scatter_add_and_to_numpy():
    target = np.zeros((4, 2))
    backend.scatter_add(target, np.array([1, 3, 1]), np.ones((3, 2)))
    np.testing.assert_array_equal(target[:, 0], [0, 2, 0, 1])
    assert isinstance(backend.to_numpy([1, 2]), np.ndarray)
    assert backend.array_device(np.ones(1)) == "cpu" and backend.array_device(3.0) is None
    backend.synchronize()  # a no-op without a GPU


def test_gpu_index_check_matches_numpy_errors():
    """ops._check_gpu_index (CuPy wraps out-of-range integer indices) raises where numpy raises."""
    a = np.zeros((3, 4, 5))
    good = [np.array([0, 2, -3]), (slice(None), np.array([3, -4])), (Ellipsis, np.array([4])),
            (np.ones(3, bool), np.array([1])), (None, 1, np.array([0, 3]))]
    bad = [np.array([3]), (slice(None), np.array([4])), (Ellipsis, np.array([5])), (np.ones(3, bool), np.array([-5])),
           (None, 1, np.array([4])), np.array([-4])]
    for index in good:
        ops._check_gpu_index(a, index)
        a[index]  # numpy agrees
    for index in bad:
        with pytest.raises(IndexError, match="out of bounds"):
            ops._check_gpu_index(a, index)
        with pytest.raises(IndexError):
            a[index]


def test_factories_and_to_keep_cpu_behaviour():
    assert tg.zeros(2, 3).device == "cpu" and tg.zeros(2, 3, device="cpu").dtype == np.float32
    np.testing.assert_array_equal(tg.full((2,), 7.0, device="cpu").numpy(), [7.0, 7.0])
    np.testing.assert_array_equal(tg.ones(3, dtype=np.float64).numpy(), np.ones(3))
    x = tg.randn(3)
    assert x.to("cpu") is x


def test_batch_sampler_device_cpu_is_unchanged():
    tokens = np.arange(100)
    a = BatchSampler(tokens, 3, 5, seed=1)
    b = BatchSampler(tokens, 3, 5, seed=1, device="cpu")
    for _ in range(3):
        (xa, ya), (xb, yb) = a.sample(), b.sample()
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
        assert isinstance(xb, np.ndarray) and xb.dtype == np.int64


def test_generate_returns_the_input_kind():
    tg.manual_seed(0)
    model = tg.GPT(tg.GPTConfig(vocab_size=7, block_size=8, n_layer=1, n_head=1, n_embd=8))
    out = model.generate(np.array([[1, 2]]), 3, temperature=0)
    assert isinstance(out, np.ndarray) and out.shape == (1, 5)
    t = model.generate(tg.Tensor(np.array([[1, 2]])), 3, temperature=0)
    assert isinstance(t, tg.Tensor) and t.device == "cpu"
    np.testing.assert_array_equal(t.numpy(), out)
    np.testing.assert_array_equal(model.generate([[1, 2]], 3, temperature=0), out)


def test_import_tinygpt_does_not_import_cupy():
    code = ("import sys, numpy as np, tinygpt as tg\n"
            "m = tg.GPT(tg.GPTConfig(vocab_size=5, block_size=4, n_layer=1, n_head=1, n_embd=4))\n"
            "m(np.zeros((1, 4), np.int64), np.zeros((1, 4), np.int64))[1].backward()\n"
            "print('cupy' in sys.modules, 'cupyx' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_only_the_backend_imports_cupy():
    pkg = os.path.join(ROOT, "src", "tinygpt")
    offenders = []
    for folder, _, files in os.walk(pkg):
        for name in files:
            if name.endswith(".py") and name != "backend.py":
                with open(os.path.join(folder, name), encoding="utf-8") as f:
                    text = f.read()
                if "import cupy" in text or "from cupy" in text:
                    offenders.append(name)
    assert offenders == []


# ------------------------------------------------------------------ examples/train_shakespeare.py --device cuda
def _load_example():
    spec = importlib.util.spec_from_file_location("examples_train_shakespeare_dev",
                                                  os.path.join(ROOT, "examples", "train_shakespeare.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cuda_flag_selects_the_nanogpt_gpu_preset():
    ex = _load_example()
    cpu = ex.parse_args([])
    assert (cpu.n_layer, cpu.n_head, cpu.n_embd, cpu.block_size, cpu.batch_size) == (4, 4, 128, 64, 12)
    assert (cpu.max_iters, cpu.dropout, cpu.eval_iters, cpu.device) == (2000, 0.0, 20, "cpu")
    gpu = ex.parse_args(["--device", "cuda"])
    assert (gpu.n_layer, gpu.n_head, gpu.n_embd, gpu.block_size, gpu.batch_size) == (6, 6, 384, 256, 64)
    assert (gpu.dropout, gpu.lr, gpu.min_lr, gpu.warmup_iters, gpu.beta1, gpu.beta2) == (0.2, 1e-3, 1e-4, 100, 0.9, 0.99)
    assert (gpu.max_iters, gpu.eval_interval, gpu.eval_iters, gpu.final_eval_iters) == (5000, 250, 200, 200)
    assert gpu.lr_decay_iters is None and gpu.decay_lr  # decays to min_lr at max_iters (resolved in main)
    # settings the preset does not name keep their defaults
    assert (gpu.weight_decay, gpu.grad_clip, gpu.bias, gpu.seed) == (cpu.weight_decay, cpu.grad_clip, cpu.bias, cpu.seed)


def test_explicit_flags_override_the_cuda_preset():
    ex = _load_example()
    args = ex.parse_args(["--n-layer", "2", "--device", "cuda", "--max-iters", "10", "--dropout", "0.0",
                          "--batch-size=8", "--eval-iters", "3"])
    assert (args.n_layer, args.max_iters, args.dropout, args.batch_size, args.eval_iters) == (2, 10, 0.0, 8, 3)
    assert (args.n_head, args.n_embd, args.block_size, args.eval_interval) == (6, 384, 256, 250)  # the rest: preset
    cpu = ex.parse_args(["--device", "cpu", "--n-layer", "3"])
    assert (cpu.n_layer, cpu.n_embd) == (3, 128)


def test_cuda_preset_names_only_real_flags():
    ex = _load_example()
    dests = {a.dest for a in ex.build_parser()._actions}
    assert set(ex.CUDA_PRESET) <= dests


# ------------------------------------------------------------------ benchmarks/gpu.py without a GPU
def test_gpu_benchmark_without_gpu_says_so(tmp_path):
    if backend.cuda_available():
        pytest.skip("a GPU is present")
    out = tmp_path / "gpu.json"
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(tg.__file__)))  # this tinygpt
    run = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "gpu.py"), "--json", str(out)],
                         capture_output=True, text=True, timeout=120, env=env)
    assert run.returncode == 2, run.stderr
    assert "no GPU" in run.stdout
    assert "Traceback" not in run.stderr
