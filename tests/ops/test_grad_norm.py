"""grad_norm, grad_scale_ and grad_clip_ (csrc/cuda/grad_norm.cu via tinygpt.kernels.cuda.grad_norm): the
multi-tensor norm and scale behind clip_grad_norm_ on the GPU, against float64 NumPy. CUDA only (the
CPU reduces per array in nn.utils): every test takes the `cuda_impl` fixture (marked `gpu`: a GPU, or
the CPU emulator with TINYGPT_CUDA_EMULATOR=1).

Tolerance: the float64 sum of n float32 squares (each exact in float64) in any order is within
n * 2^-53 of the exact sum relative to it (all terms are >= 0), so rtol = 1e-12 covers n up to
~4e3 chunk-sized tensors; max |g| is exact. The scale is one float32 multiply, so it must equal
numpy's `g * float32(scale)` bit for bit.
"""
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import tinygpt as tg
from tinygpt import kernels
from tinygpt.kernels import cuda as K

pytestmark = [pytest.mark.usefixtures("seeded"),
              pytest.mark.skipif(not K.has("grad_norm"), reason="tinygpt._C was built without the CUDA grad_norm kernels")]

CHUNK = 16384
SIZES = st.one_of(st.integers(0, 40), st.sampled_from([CHUNK - 1, CHUNK, CHUNK + 1, 2 * CHUNK + 5, 3 * CHUNK]))


def _cp():
    return tg.backend.cupy()


@st.composite
def grad_lists(draw):
    n = draw(st.integers(1, 7))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    scale = draw(st.sampled_from([1e-20, 1e-3, 1.0, 1e3, 1e18]))
    return [(rng.standard_normal(draw(SIZES)) * scale).astype(np.float32) for _ in range(n)]


@given(grads=grad_lists(), norm_type=st.sampled_from([2.0, math.inf]))
def test_norm_matches_float64(cuda_impl, grads, norm_type):
    cp = _cp()
    dev = [cp.asarray(g) for g in grads]
    got = K.grad_norm.grad_norm(dev, norm_type)
    assert got.shape == () and got.dtype == np.float64
    flat = np.concatenate([g.astype(np.float64) for g in grads])
    if norm_type == 2.0:
        np.testing.assert_allclose(float(got), float(np.sum(flat * flat)), rtol=1e-12, atol=0)
    else:
        assert float(got) == (float(np.abs(flat).max()) if flat.size else 0.0)
    assert float(K.grad_norm.grad_norm(dev, norm_type)) == float(got)  # deterministic


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("norm_type", [2.0, math.inf])
def test_nonfinite_propagates(cuda_impl, bad, norm_type):
    cp = _cp()
    grads = [np.ones(CHUNK + 3, np.float32), np.ones(5, np.float32)]
    grads[0][CHUNK + 1] = bad
    got = float(K.grad_norm.grad_norm([cp.asarray(g) for g in grads], norm_type))
    assert math.isnan(got) if np.isnan(bad) else got == math.inf


@given(grads=grad_lists(), scale=st.sampled_from([0.0, 1e-7, 0.123456789, 0.5, 3.0, float("nan")]))
def test_scale_is_one_float32_multiply(cuda_impl, grads, scale):
    cp = _cp()
    dev = [cp.asarray(g) for g in grads]
    K.grad_norm.grad_scale_(dev, scale)
    for d, g in zip(dev, grads):
        np.testing.assert_array_equal(cp.asnumpy(d), g * np.float32(scale))


def test_clip_grad_norm_runs_the_kernels_and_matches_the_cpu(cuda_impl, monkeypatch):
    cp = _cp()
    rng = np.random.default_rng(0)
    shapes = [(65, 384), (384,), (1152, 384), (0,), (3,)]
    cpu = [tg.Tensor(rng.standard_normal(s).astype(np.float32), requires_grad=True) for s in shapes]
    gpu = [tg.Tensor(p.data.copy(), requires_grad=True).to("cuda") for p in cpu]
    for c, g in zip(cpu, gpu):
        c.grad = tg.Tensor(rng.standard_normal(c.shape).astype(np.float32) * 3)
        g.grad = c.grad.to("cuda")
    calls = []
    for name in ("grad_norm", "grad_scale_", "grad_clip_"):
        real = getattr(K.grad_norm, name)
        monkeypatch.setattr(K.grad_norm, name, lambda *a, _real=real, _name=name: calls.append(_name) or _real(*a))
    for norm_type, max_norm in ((2.0, 1.0), (math.inf, 1e-4), (2.0, 1e6)):  # two clip, the last does not
        want = tg.nn.utils.clip_grad_norm_(cpu, max_norm, norm_type)
        got = tg.nn.utils.clip_grad_norm_(gpu, max_norm, norm_type)
        assert got.device == "cuda" and want.device == "cpu"  # the norm stays on the gradients' device
        np.testing.assert_allclose(float(got), float(want), rtol=1e-12)
        for c, g in zip(cpu, gpu):
            np.testing.assert_array_equal(cp.asnumpy(g.grad.data), c.grad.data)
    assert calls == ["grad_norm", "grad_clip_"] * 3  # the scale from the device norm: no host read
    assert kernels.grad_norm([cp.asarray(np.ones(3, np.float32))], 3.0) is None  # other norms: per array


@given(grads=grad_lists(), norm_type=st.sampled_from([2.0, math.inf]),
       max_norm=st.sampled_from([1e-30, 1e-3, 0.7, 1e3, 1e30]))
def test_clip_scales_as_the_host_would(cuda_impl, grads, norm_type, max_norm):
    """grad_clip computes clip_grad_norm_'s host arithmetic on the device: total = sqrt(sum) (or the max),
    coef = max_norm / (total + 1e-6) in float64, g *= float32(coef) unless coef >= 1 (NaN scales)."""
    cp = _cp()
    dev = [cp.asarray(g) for g in grads]
    norm = K.grad_norm.grad_norm(dev, norm_type)
    v = float(norm)
    coef = max_norm / ((v if norm_type == math.inf else math.sqrt(v)) + 1e-6)
    K.grad_norm.grad_clip_(dev, norm, max_norm, norm_type)
    for d, g in zip(dev, grads):
        np.testing.assert_array_equal(cp.asnumpy(d), g if coef >= 1.0 else g * np.float32(coef))


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_clip_by_a_nonfinite_norm_scales_by_nan_or_zero(cuda_impl, bad):
    cp = _cp()
    g = np.ones(CHUNK + 3, np.float32)
    g[7] = bad
    dev = [cp.asarray(g)]
    K.grad_norm.grad_clip_(dev, K.grad_norm.grad_norm(dev, 2.0), 1.0, 2.0)
    out = cp.asnumpy(dev[0])
    # NaN norm: coef NaN, every element NaN (as torch); inf norm: coef 0, so 0 except inf * 0 = NaN
    assert np.isnan(out).all() if np.isnan(bad) else (np.isnan(out[7]) and (np.delete(out, 7) == 0).all())


def test_argument_errors(cuda_impl):
    cp = _cp()
    with pytest.raises(ValueError, match="need at least one tensor"):
        K.grad_norm.grad_norm([], 2.0)
    with pytest.raises(ValueError, match="norm_type must be 2 or inf"):
        K.grad_norm.grad_norm([cp.asarray(np.ones(3, np.float32))], 1.0)
    with pytest.raises(TypeError, match="tensor 1: expected dtype float32"):
        K.grad_norm.grad_scale_([cp.asarray(np.ones(3, np.float32)), cp.asarray(np.ones(3))], 0.5)
    with pytest.raises(TypeError, match="grad_clip_: norm: expected dtype float64"):
        K.grad_norm.grad_clip_([cp.asarray(np.ones(3, np.float32))], cp.ones((), np.float32), 1.0, 2.0)
    with pytest.raises(ValueError, match="grad_clip_: norm_type must be 2 or inf"):
        K.grad_norm.grad_clip_([cp.asarray(np.ones(3, np.float32))], cp.ones((), np.float64), 1.0, 1.0)
