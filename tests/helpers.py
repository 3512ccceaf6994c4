"""Shared test utilities: the float64 finite-difference gradient checker and hypothesis strategies.

The checker contracts every output with a random cotangent w (so the whole Jacobian is
probed, not just the gradient of a sum, which is zero for softmax and the like), runs
tinygpt's backward with w, and compares each input's .grad with central differences
  (f(x + eps e_k) - f(x - eps e_k)) / (2 eps),   f(x) = sum(w * fn(x)),
computed in float64 with eps = 1e-6 (truncation ~eps^2, round-off ~1e-16/eps ~ 1e-10).
"""
import importlib.util
import os

import numpy as np
import pytest
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import tinygpt as tg

# TINYGPT_CUDA_EMULATOR=1: the GPU tests run on the CPU emulator (tests/cuda_emu; conftest.py installs it).
EMULATOR = os.environ.get("TINYGPT_CUDA_EMULATOR", "").strip() not in ("", "0")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the repository


def _load_script(folder, name):
    """<folder>/<name>.py as a module (the examples and benchmarks are scripts, not packages)."""
    spec = importlib.util.spec_from_file_location(f"{folder}_{name}", os.path.join(ROOT, folder, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_example(name):
    """examples/<name>.py as a module."""
    return _load_script("examples", name)


def load_benchmark(name, monkeypatch):
    """benchmarks/<name>.py as a module, with its folder on sys.path for its own imports."""
    monkeypatch.syspath_prepend(os.path.join(ROOT, "benchmarks"))
    return _load_script("benchmarks", name)


def run_tiny_gpu_benchmark(monkeypatch, tmp_path):
    """benchmarks/gpu.py --no-torch --quick on two tiny configurations; returns its JSON report."""
    import json

    bench = load_benchmark("gpu", monkeypatch)
    monkeypatch.setitem(bench.CONFIGS, "shakespeare", dict(vocab_size=11, block_size=16, n_layer=2, n_head=2,
                                                           n_embd=8, batch_size=3, dropout=0.2))
    monkeypatch.setitem(bench.CONFIGS, "gpt2", dict(vocab_size=50, block_size=32, n_layer=2, n_head=2, n_embd=16,
                                                    batch_size=2, dropout=0.0))
    out = tmp_path / "gpu.json"
    assert bench.main(["--no-torch", "--quick", "--steps", "2", "--warmup", "1", "--copy-mib", "4",
                       "--json", str(out)]) == 0
    return json.loads(out.read_text())


FD_EPS = 1e-6
FD_RTOL = 1e-5
FD_ATOL = 1e-6


# ------------------------------------------------------------------ finite differences
def numeric_grad(f, x, eps=FD_EPS, indices=None):
    """Central differences of the scalar f() w.r.t. entries of the float64 array x (perturbed in place)."""
    flat = x.reshape(-1)
    assert np.shares_memory(flat, x), "x must be contiguous so it can be perturbed in place"
    indices = range(x.size) if indices is None else indices
    out = []
    for k in indices:
        old = flat[k]
        flat[k] = old + eps
        fp = f()
        flat[k] = old - eps
        fm = f()
        flat[k] = old
        out.append((fp - fm) / (2 * eps))
    return np.array(out, dtype=np.float64)


def _pick(size, max_entries, rng):
    if max_entries is None or size <= max_entries:
        return np.arange(size)
    return np.sort(rng.choice(size, max_entries, replace=False))


def _as_list(outs):
    return list(outs) if isinstance(outs, (tuple, list)) else [outs]


def check_tensor_grads(forward, tensors, eps=FD_EPS, rtol=FD_RTOL, atol=FD_ATOL, max_entries=None, seed=0,
                       names=None):
    """forward() -> Tensor or tuple of Tensors, computed from `tensors` (float64 leaves with requires_grad).

    Runs backward with a random cotangent w_i per output (grads accumulate over the
    outputs) and compares every tensor's .grad with central differences of
    sum_i <w_i, out_i> (a random subset of `max_entries` entries per tensor when given).
    Returns the outputs of the first forward as numpy arrays (a list for tuple outputs).
    """
    rng = np.random.default_rng(seed)
    for t in tensors:
        assert t.dtype == np.float64, "finite differences need float64"
        t.grad = None
    first = forward()
    outs = _as_list(first)
    ws = [rng.standard_normal(o.shape) for o in outs]
    for o, w in zip(outs, ws):
        if o.requires_grad:
            o.backward(w)

    def f():
        with tg.no_grad():
            return sum(float(np.sum(o.data * w)) for o, w in zip(_as_list(forward()), ws))

    for i, t in enumerate(tensors):
        name = names[i] if names else f"input {i}"
        analytic = np.zeros(t.shape) if t.grad is None else t.grad.numpy()
        assert analytic.shape == t.shape, f"{name}: grad shape {analytic.shape} != {t.shape}"
        idx = _pick(t.size, max_entries, rng)
        numeric = numeric_grad(f, t.data, eps, idx)
        np.testing.assert_allclose(analytic.reshape(-1)[idx], numeric, rtol=rtol, atol=atol,
                                   err_msg=f"gradient of {name} (analytic vs finite differences)")
    values = [o.numpy() for o in outs]
    return values if isinstance(first, (tuple, list)) else values[0]


def check_grads(fn, *arrays, **kwargs):
    """fn(*Tensors) -> Tensor(s); each array becomes a float64 leaf whose gradient is checked.

    Non-differentiable arguments (ids, masks, axes) go in through fn's closure. Returns
    the forward value(s) as numpy, for value checks.
    """
    tensors = [tg.Tensor(np.array(a, dtype=np.float64, copy=True), requires_grad=True) for a in arrays]
    return check_tensor_grads(lambda: fn(*tensors), tensors, **kwargs)


# ------------------------------------------------------------------ torch oracle
def compare_with_torch(ours, theirs, *arrays, dtype=np.float64, rtol=1e-10, atol=1e-10, grad_rtol=None,
                       grad_atol=None, seed=1):
    """ours(*tinygpt Tensors) and theirs(*torch tensors) -> one tensor each.

    The arrays become `dtype` leaves in both libraries; compares the value, then every
    input's gradient after backward with the same random cotangent. Also checks that
    tinygpt kept `dtype` for the value and the gradients. Skips without torch.
    """
    torch = pytest.importorskip("torch")
    arrays = [np.ascontiguousarray(a, dtype=dtype) for a in arrays]
    xs = [tg.Tensor(a.copy(), requires_grad=True) for a in arrays]
    ts = [torch.tensor(a.copy(), requires_grad=True) for a in arrays]
    out, tout = ours(*xs), theirs(*ts)
    assert out.dtype == dtype, f"value dtype {out.dtype}, expected {dtype}"
    np.testing.assert_allclose(out.numpy(), tout.detach().numpy(), rtol=rtol, atol=atol, err_msg="value vs torch")
    w = np.random.default_rng(seed).standard_normal(out.shape).astype(dtype)
    out.backward(w)
    tout.backward(torch.from_numpy(w))
    for i, (x, t) in enumerate(zip(xs, ts)):
        expected = np.zeros(x.shape, dtype) if t.grad is None else t.grad.numpy()
        assert x.grad is not None and x.grad.dtype == dtype, f"grad of input {i}: {x.grad}"
        np.testing.assert_allclose(x.grad.numpy(), expected, rtol=grad_rtol or rtol, atol=grad_atol or atol,
                                   err_msg=f"grad of input {i} vs torch")
    return out.numpy()


# ------------------------------------------------------------------ hypothesis strategies
def floats(lo=-3.0, hi=3.0):
    return st.floats(lo, hi, allow_nan=False, allow_infinity=False, allow_subnormal=False)


def away_from_zero(lo=0.1, hi=3.0):
    """Values with lo <= |x| <= hi (keeps finite differences off kinks and poles)."""
    return st.one_of(floats(lo, hi), floats(-hi, -lo))


def arrays(shape, elements=None, unique=False):
    """float64 arrays of `shape` (a shape or a strategy of shapes)."""
    return hnp.arrays(np.float64, shape, elements=elements if elements is not None else floats(), unique=unique)


def shapes(min_dims=0, max_dims=3, min_side=1, max_side=4):
    return hnp.array_shapes(min_dims=min_dims, max_dims=max_dims, min_side=min_side, max_side=max_side)


@st.composite
def shape_and_axis(draw, min_dims=1, max_dims=3, max_side=4):
    """A shape plus an axis argument for a reduction: None, an int (maybe negative) or a tuple of axes."""
    shape = draw(shapes(min_dims, max_dims, max_side=max_side))
    nd = len(shape)
    axis = draw(st.one_of(
        st.none(),
        st.integers(-nd, nd - 1),
        st.lists(st.integers(0, nd - 1), min_size=1, max_size=nd, unique=True).map(tuple),
    ))
    return shape, axis


@st.composite
def broadcasts_to(draw, target):
    """A shape that broadcasts to `target`: leading dims dropped, some others set to 1."""
    drop = draw(st.integers(0, len(target)))
    return tuple(1 if draw(st.booleans()) else n for n in target[drop:])


def rng_arrays(seed, *shapes_, lo=-2.0, hi=2.0):
    """Reproducible float64 uniform arrays from one hypothesis-drawn seed."""
    rng = np.random.default_rng(seed)
    return [rng.uniform(lo, hi, size=s) for s in shapes_]


seeds = st.integers(0, 2**32 - 1)
