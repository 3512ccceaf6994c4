"""CUDA fused AdamW (csrc/cuda/adamw.cu via tinygpt/kernels/cuda.adamw_step / adamw_multi_step)
against the float64 reference, with the step-by-step error bounds of tests/test_native_adamw.py
(same float32 operations in the same order; nvcc's FMA contraction only removes roundings, and
sqrtf / division are IEEE-exact without fast-math). Every test is marked `gpu`.
"""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import tinygpt as tg
from tinygpt.kernels import cuda as kcuda

from test_native_adamw import Bounds, _state  # noqa: E402 - the bounds are shared with the CPU tests

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not kcuda.has("adamw_multi_step"),
                                 reason="tinygpt._C was built without the CUDA adamw kernels")]

hyper = st.fixed_dictionaries({
    "lr": st.sampled_from([1e-3, 3e-4, 0.1]),
    "beta1": st.sampled_from([0.9, 0.8, 0.0]),
    "beta2": st.sampled_from([0.999, 0.95]),
    "eps": st.sampled_from([1e-8, 1e-6]),
    "weight_decay": st.sampled_from([0.0, 0.01, 0.1]),
})
shapes = st.lists(st.integers(1, 33), min_size=0, max_size=3).map(tuple)


def cp():
    return tg.backend.cupy()


@given(shape=shapes, h=hyper, gscale=st.sampled_from([1e-4, 1.0, 1e3]), step0=st.sampled_from([0, 9, 999]),
       seed=st.integers(0, 2**31))
def test_steps_match_reference(shape, h, gscale, step0, seed):
    c = cp()
    p, m, v, grads = _state(seed, shape, gscale)
    if step0 == 0:
        m[...] = 0.0
        v[...] = 0.0
    dev = [c.asarray(a) for a in (p, m, v)]
    ref = Bounds(p, m, v)
    for k, g in enumerate(grads, start=1):
        kcuda.adamw.adamw_step(dev[0], c.asarray(g), dev[1], dev[2], step=step0 + k, **h)
        ref.step(g, step0 + k, **h)
        ref.check(*(c.asnumpy(a) for a in dev), "cuda")


@given(sizes=st.lists(st.sampled_from([0, 1, 3, 4, 5, 17, 1000, 16383, 16384, 16385, 40001]), min_size=1,
                      max_size=6),
       h=hyper, seed=st.integers(0, 2**31))
def test_multi_tensor_matches_single(sizes, h, seed):
    """One launch over a list (sizes around the 16384-element chunk, empty tensors included)
    equals adamw_step on each tensor bit for bit."""
    c = cp()
    rng = np.random.default_rng(seed)
    states = [[c.asarray(rng.standard_normal(n).astype(np.float32)) for _ in range(4)] for n in sizes]
    for s in states:
        s[3] = abs(s[3]) * 0.01  # exp_avg_sq >= 0
    single = [[a.copy() for a in s] for s in states]
    for step in (1, 2):
        grads = [c.asarray(rng.standard_normal(n).astype(np.float32)) for n in sizes]
        kcuda.adamw.adamw_multi_step([s[0] for s in states], grads, [s[2] for s in states], [s[3] for s in states],
                               step=step, **h)
        for s, g in zip(single, grads):
            kcuda.adamw.adamw_step(s[0], g, s[2], s[3], step=step, **h)
    for a, b in zip(states, single):
        for i in (0, 2, 3):
            c.testing.assert_array_equal(a[i], b[i])


def test_large_parameter():
    c = cp()
    p, m, v, grads = _state(3, (1024, 1000), 1.0)
    dev = [c.asarray(a) for a in (p, m, v)]
    ref = Bounds(p, m, v)
    for step, g in ((7, grads[0]), (8, grads[1])):
        h = dict(lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.1)
        kcuda.adamw.adamw_step(dev[0], c.asarray(g), dev[1], dev[2], step=step, **h)
        ref.step(g, step, **h)
        ref.check(*(c.asnumpy(a) for a in dev), "cuda")


def test_errors_name_the_argument():
    c = cp()
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
