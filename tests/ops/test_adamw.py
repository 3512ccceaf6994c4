"""Fused AdamW step (reference.adamw_step, csrc/cpu/adamw.cpp, csrc/cuda/adamw.cu: adamw_step and the
multi-tensor adamw_multi_step) against the float64 reference and torch.optim.AdamW, on every implementation.

Tolerance (eps = 2^-24 ~ 6e-8, float32's unit roundoff). The kernels do reference.adamw_step's float32
operations in the same order on the same float32 scalars; GCC and nvcc may fuse a*b + c into one FMA,
which only removes roundings (sqrtf and division are IEEE-exact without fast-math). Against the float64
reference on the same inputs, each operation rounds at eps times its operands' magnitude, and errors
from earlier steps are damped (by beta1 for m, beta2 for v) or carried (p), so after k steps
  m:  |err| <= 4 eps * sum_j (|m_{j-1}| + |g_j|)         (the lerp can cancel: no relative bound)
  v:  |err| <= 4 eps * k * |v_k|                          (a sum of positive terms)
  p:  |err| <= 8 eps * sum_j (|p_{j-1}| + s_j |r_j|) + sum_j s_j (err_m_j / d_j + |r_j| err_v_j / v_j)
with r = m / d, d = sqrt(v) / bc2 + eps, s = lr / bc1 (all float64 values). The float32 reference
meets the same bound, which shows it is fair rather than loose.
"""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import tinygpt
from tinygpt import kernels
from tinygpt.kernels import cuda as kcuda
from tinygpt.kernels import reference as R

from impls import CPU

pytestmark = pytest.mark.usefixtures("seeded")  # every test starts from tinygpt.manual_seed(0)

EPS = float(np.finfo(np.float32).eps) / 2  # 2^-24


def _state(seed, shape, gscale):
    rng = np.random.default_rng(seed)
    f32 = lambda a: np.asarray(a, dtype=np.float32)  # noqa: E731 - keeps shape () an array
    p = f32(rng.standard_normal(shape))
    m = f32(rng.standard_normal(shape) * 0.1 * gscale)
    v = f32(rng.random(shape) * 0.01 * gscale**2)
    grads = [f32(rng.standard_normal(shape) * gscale) for _ in range(4)]
    return p, m, v, grads


class Bounds:
    """Float64 reference state plus the error bounds of the module doc, step by step."""

    def __init__(self, p, m, v):
        self.p, self.m, self.v = (a.astype(np.float64) for a in (p, m, v))
        self.sum_m = np.zeros_like(self.p)
        self.sum_p = np.zeros_like(self.p)
        self.carry_p = np.zeros_like(self.p)
        self.k = 0

    def step(self, g, step, lr, beta1, beta2, eps, weight_decay):
        g = g.astype(np.float64)
        self.k += 1
        self.sum_m += np.abs(self.m) + np.abs(g)
        p_prev = np.abs(self.p)
        R.adamw_step(self.p, g, self.m, self.v, lr=lr, beta1=beta1, beta2=beta2, eps=eps,
                     weight_decay=weight_decay, step=step)
        s = lr / (1.0 - beta1**step)
        d = np.sqrt(self.v) / np.sqrt(1.0 - beta2**step) + eps
        r = np.abs(self.m) / d
        self.sum_p += p_prev + s * r
        v_rel = 4 * EPS * self.k
        self.carry_p += s * (self.err_m() / d + r * v_rel)

    def err_m(self):
        return 4 * EPS * self.sum_m + 1e-38

    def err_v(self):
        return 4 * EPS * self.k * np.abs(self.v) + 1e-38

    def err_p(self):
        return 8 * EPS * self.sum_p + self.carry_p + 1e-38

    def check(self, p, m, v, what):
        for name, a, ref, bound in (("param", p, self.p, self.err_p()), ("exp_avg", m, self.m, self.err_m()),
                                    ("exp_avg_sq", v, self.v, self.err_v())):
            assert a.dtype == np.float32 and a.shape == ref.shape
            ratio = np.abs(a - ref) / bound
            assert np.all(ratio <= 1.0), f"{what} {name} after {self.k} steps: error/bound {ratio.max():.3g}"


hyper = st.fixed_dictionaries({
    "lr": st.sampled_from([1e-3, 3e-4, 0.1]),
    "beta1": st.sampled_from([0.9, 0.8, 0.0]),
    "beta2": st.sampled_from([0.999, 0.95]),
    "eps": st.sampled_from([1e-8, 1e-6]),
    "weight_decay": st.sampled_from([0.0, 0.01, 0.1]),
})
shapes = st.lists(st.integers(1, 33), min_size=0, max_size=3).map(tuple)  # up to 35937 elements


@given(shape=shapes, h=hyper, gscale=st.sampled_from([1e-4, 1.0, 1e3]), step0=st.sampled_from([0, 9, 999]),
       seed=st.integers(0, 2**31))
def test_adamw_step(impl, shape, h, gscale, step0, seed):
    step_fn = impl.kernel("adamw_step")
    p, m, v, grads = _state(seed, shape, gscale)
    if step0 == 0:  # a fresh optimizer state
        m[...] = 0.0
        v[...] = 0.0
    state = [impl.to(a) for a in (p, m, v)]
    ref = Bounds(p, m, v)
    for k, g in enumerate(grads, start=1):
        step_fn(state[0], impl.to(g), state[1], state[2], step=step0 + k, **h)
        ref.step(g, step0 + k, **h)
        ref.check(*impl.host(state), impl.name)


def test_large_parameter(large_impl):
    """A 1M-element parameter (split across threads on the CPU): two steps within the bounds."""
    step_fn = large_impl.kernel("adamw_step")
    p, m, v, grads = _state(3, (1024, 1000), 1.0)
    state = [large_impl.to(a) for a in (p, m, v)]
    ref = Bounds(p, m, v)
    for step, g in ((7, grads[0]), (8, grads[1])):
        h = dict(lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.1)
        step_fn(state[0], large_impl.to(g), state[1], state[2], step=step, **h)
        ref.step(g, step, **h)
        ref.check(*large_impl.host(state), large_impl.name)


@given(sizes=st.lists(st.sampled_from([0, 1, 3, 4, 5, 17, 1000, 16383, 16384, 16385, 40001]), min_size=1,
                      max_size=6),
       h=hyper, seed=st.integers(0, 2**31))
def test_cuda_multi_tensor_matches_single(cuda_impl, sizes, h, seed):
    """One launch over a list (sizes around the 16384-element chunk, empty tensors included)
    equals adamw_step on each tensor bit for bit."""
    c = tinygpt.backend.cupy()
    multi, single_step = cuda_impl.kernel("adamw_multi_step"), cuda_impl.kernel("adamw_step")
    rng = np.random.default_rng(seed)
    states = [[c.asarray(rng.standard_normal(n).astype(np.float32)) for _ in range(4)] for n in sizes]
    for s in states:
        s[3] = abs(s[3]) * 0.01  # exp_avg_sq >= 0
    single = [[a.copy() for a in s] for s in states]
    for step in (1, 2):
        grads = [c.asarray(rng.standard_normal(n).astype(np.float32)) for n in sizes]
        multi([s[0] for s in states], grads, [s[2] for s in states], [s[3] for s in states],
              step=step, **h)
        for s, g in zip(single, grads):
            single_step(s[0], g, s[2], s[3], step=step, **h)
    for a, b in zip(states, single):
        for i in (0, 2, 3):
            c.testing.assert_array_equal(a[i], b[i])


@pytest.mark.parametrize("foreach", [False, True])
def test_matches_torch_adamw(cpu_impl, foreach):
    """Several steps of torch.optim.AdamW (its own arithmetic) over GPT-like parameter shapes."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    shapes = [(65, 64), (64,), (192, 64), (256, 64), (1,)]
    params = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    tparams = [torch.nn.Parameter(torch.tensor(p)) for p in params]
    opt = torch.optim.AdamW(tparams, lr=1e-2, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1,
                            foreach=foreach)
    step_fn, to = cpu_impl.kernel("adamw_step"), cpu_impl.to
    dev = [[to(p), to(np.zeros_like(p)), to(np.zeros_like(p))] for p in params]
    for step in range(1, 6):
        grads = [rng.standard_normal(p.shape).astype(np.float32) for p in params]
        for tp, g in zip(tparams, grads):
            tp.grad = torch.tensor(g)
        opt.step()
        for (p, m, v), g in zip(dev, grads):
            step_fn(p, to(g), m, v, lr=1e-2, beta1=0.9, beta2=0.95, eps=1e-8, weight_decay=0.1, step=step)
    # Both float32, rounding differently (torch's lerp and addcmul use FMA where ours may not):
    # m cancels in the lerp, so its tolerance is absolute, a few eps of the terms (|m|, |g| <~ 4)
    # over 5 steps; v is a sum of positive terms (relative); p ~ 1 moves by lr per step.
    for (p, m, v), tp in zip((cpu_impl.host(s) for s in dev), tparams):
        np.testing.assert_allclose(p, tp.detach().numpy(), rtol=1e-6, atol=2e-7)
        np.testing.assert_allclose(m, opt.state[tp]["exp_avg"].numpy(), rtol=0, atol=5 * 8 * 4 * EPS)
        np.testing.assert_allclose(v, opt.state[tp]["exp_avg_sq"].numpy(), rtol=5 * 4 * EPS, atol=1e-30)


# ----------------------------------------------------------------------------- argument errors
def test_cpu_errors_name_the_argument(cpu_impl):
    p, m, v = (np.zeros((3, 4), np.float32) for _ in range(3))
    g = np.ones((3, 4), np.float32)
    h = dict(lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0, step=1)
    with pytest.raises(ValueError, match="adamw_step: param must be float32"):
        CPU.adamw_step(p.astype(np.float64), g, m, v, **h)
    with pytest.raises(ValueError, match="adamw_step: grad must be C-contiguous"):
        CPU.adamw_step(p, np.ones((4, 3), np.float32).T, m, v, **h)
    with pytest.raises(ValueError, match=r"adamw_step: grad must have param's size 12, got shape \(11,\)"):
        CPU.adamw_step(p, np.ones(11, np.float32), m, v, **h)
    with pytest.raises(ValueError, match="adamw_step: exp_avg must have param's size 12"):
        CPU.adamw_step(p, g, np.zeros(13, np.float32), v, **h)
    with pytest.raises(ValueError, match="adamw_step: exp_avg_sq must be float32"):
        CPU.adamw_step(p, g, m, v.astype(np.float16), **h)
    ro = p.copy()
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="adamw_step: param must be writeable"):
        CPU.adamw_step(ro, g, m, v, **h)
    with pytest.raises(ValueError, match="adamw_step: step must be >= 1"):
        CPU.adamw_step(p, g, m, v, **{**h, "step": 0})
    with pytest.raises(TypeError):  # keyword-only hyperparameters
        CPU.adamw_step(p, g, m, v, 1e-3, 0.9, 0.999, 1e-8, 0.0, 1)
    with pytest.raises(TypeError):  # no silent conversion of a list (the update would be lost)
        CPU.adamw_step([0.0] * 12, g, m, v, **h)
    # same size, other shape: treated as flat
    CPU.adamw_step(p, g.reshape(12), m.reshape(2, 6), v, **h)
    assert np.all(p < 0)


def test_cuda_errors_name_the_argument(cuda_impl):
    c = tinygpt.backend.cupy()
    p, m, v = (c.zeros((3, 4), c.float32) for _ in range(3))
    g = c.ones((3, 4), c.float32)
    h = dict(lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0, step=1)
    with pytest.raises(TypeError, match="adamw_step: param: expected dtype float32"):
        kcuda.adamw.adamw_step(p.astype(c.float64), g, m, v, **h)
    with pytest.raises(ValueError, match="adamw_step: grad: expected a C-contiguous array"):
        kcuda.adamw.adamw_step(p, c.ones((4, 3), c.float32).T, m, v, **h)
    with pytest.raises(ValueError, match=r"adamw_step: grad must have param's size 12, got shape \(11,\)"):
        kcuda.adamw.adamw_step(p, c.ones(11, c.float32), m, v, **h)
    with pytest.raises(ValueError, match="adamw_step: exp_avg must have param's size 12"):
        kcuda.adamw.adamw_step(p, g, c.zeros(13, c.float32), v, **h)
    with pytest.raises(ValueError, match="adamw_step: step must be >= 1"):
        kcuda.adamw.adamw_step(p, g, m, v, **{**h, "step": 0})
    with pytest.raises(TypeError):  # keyword-only hyperparameters
        kcuda.adamw.adamw_step(p, g, m, v, 1e-3, 0.9, 0.999, 1e-8, 0.0, 1)
    with pytest.raises(ValueError, match="adamw_multi_step: params, grads, exp_avgs and exp_avg_sqs"):
        kcuda.adamw.adamw_multi_step([p], [g, g], [m], [v], **h)
    with pytest.raises(ValueError, match="adamw_multi_step: tensor 1: grad must have param's size"):
        kcuda.adamw.adamw_multi_step([p, p], [g, c.ones(5, c.float32)], [m, m], [v, v], **h)
    kcuda.adamw.adamw_step(p, g.reshape(12), m.reshape(2, 6), v, **h)  # same size, other shape: flat
    assert bool((p < 0).all())


# ----------------------------------------------------------------------------- dispatch and the optimizer
def test_dispatch(monkeypatch):
    """kernels.adamw_step runs the native kernel on float32 contiguous arrays, else the reference."""
    calls = []
    real = R.adamw_step

    def spy(*args, **kwargs):
        calls.append(args[0].dtype)
        return real(*args, **kwargs)

    monkeypatch.setattr(R, "adamw_step", spy)
    h = dict(lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.01, step=1)
    arrays = lambda dt: [np.ones(5, dt), np.ones(5, dt), np.zeros(5, dt), np.zeros(5, dt)]  # noqa: E731
    with kernels.use_native(True):  # also under TINYGPT_NATIVE=0
        kernels.adamw_step(*arrays(np.float32), **h)
        assert calls == []
        kernels.adamw_step(*arrays(np.float64), **h)
        assert calls == [np.float64]
        p, g, m, v = arrays(np.float32)
        kernels.adamw_step(p, np.ones((5, 2), np.float32)[:, 0], m, v, **h)  # strided grad
        assert len(calls) == 2
    with kernels.use_native(False):
        kernels.adamw_step(*arrays(np.float32), **h)
    assert len(calls) == 3


def test_optimizer_native_matches_reference():
    """tinygpt.optim.AdamW over a small GPT's parameters, native on vs off, three steps."""
    from tinygpt.models import GPT, GPTConfig

    cfg = GPTConfig(vocab_size=65, block_size=16, n_layer=2, n_head=2, n_embd=32, dropout=0.0)
    results = []
    for native in (True, False):
        tinygpt.manual_seed(0)
        model = GPT(cfg)
        opt = tinygpt.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
        rng = np.random.default_rng(0)
        with kernels.use_native(native):
            for _ in range(3):
                for p in model.parameters():
                    p.grad = tinygpt.Tensor(rng.standard_normal(p.shape).astype(np.float32))
                opt.step()
        results.append([p.numpy().copy() for p in model.parameters()])
    for a, b in zip(*results):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
