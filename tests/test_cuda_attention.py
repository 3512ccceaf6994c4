"""CUDA flash attention (csrc/cuda/attention.cu via tinygpt.kernels.cuda) against the float64
NumPy reference. GPU-only: every test is marked `gpu` (skips without CuPy and a GPU).

Covered as tests/test_native_attention.py covers the CPU kernel: forward and every backward
output (dq, dk, dv) for causal / windowed / full attention, Tq <= Tk and Tq > Tk (queries aligned
to the last keys), T = 1, head sizes that are not multiples of 16 or 32 (up to 256, the HD = 256
tile class), q/k and v head sizes that differ, sequences crossing many 64-key tiles, and attention
dropout whose mask must equal reference.dropout_mask's bit for bit.

Tolerance: the same componentwise bound as the CPU test,
    |gpu - ref| <= eps32 * (C1 + C2 * Smax) * nat
with nat the float64 value of the same product over absolute values (|P| @ |v| for out, ...;
the classic |fl(AB) - AB| <= gamma_K |A||B| bound) and Smax = max |q k^T * scale| for the score
error that softmax turns into a relative error of the probabilities. The GPU kernels accumulate
in float32 fma chains as the CPU ones do (scores over hs <= 256 terms, out/dv/dk/dq over the keys
or queries of a row, plus online-softmax rescales by exp(m_old - m_new), 2 ulp each), so the CPU
calibration (worst ratio 6.6 at C1 = 64, C2 = 32) carries over; C1 = 128, C2 = 64 doubles it
for the longer sequential key loop (one thread runs a row's whole key range) and the 2-ulp expf.
A wrong mask, tile edge or dropout bit gives errors of order nat itself.
"""
import math

import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

import tinygpt as tg
from tinygpt.kernels import cuda as K
from tinygpt.kernels import reference as R

from kernel_checks import assert_attention_within_bound
from kernel_checks import random_arrays as _arrays

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not K.has("attention"), reason="tinygpt._C was built without the CUDA attention kernel")]

C1, C2 = 128.0, 64.0


def _cp():
    return tg.backend.cupy()


def _run(q, k, v, g, causal, window, p, seed, scale):
    """GPU forward + backward on host arrays; returns host arrays (out, dq, dk, dv) and saved."""
    cp = _cp()
    qd, kd, vd, gd = (cp.asarray(a) for a in (q, k, v, g))
    out, saved = K.attention.attention_forward(qd, kd, vd, causal, window, p, seed, scale)
    dq, dk, dv = K.attention.attention_backward(gd, qd, kd, vd, p, scale, saved)
    return tuple(cp.asnumpy(a) for a in (out, dq, dk, dv)), saved


def assert_close_to_reference(q, k, v, g, causal, window, p=0.0, seed=0, scale=None):
    scale = 1.0 / math.sqrt(max(q.shape[-1], 1)) if scale is None else scale
    (out, dq, dk, dv), _ = _run(q, k, v, g, causal, window, p, seed, scale)
    assert_attention_within_bound(dict(out=out, dq=dq, dk=dk, dv=dv), q, k, v, g, causal, window, p, seed, scale,
                                  C1, C2, "gpu")
    return out


@st.composite
def attention_problem(draw):
    lead = draw(st.sampled_from([(1, 1), (2, 3), (1, 2), (3,), (2, 1, 2)]))
    causal = draw(st.booleans())
    t_q = draw(st.integers(1, 150))
    t_k = draw(st.integers(t_q, t_q + 80)) if causal or draw(st.booleans()) else draw(st.integers(1, 150))
    window = draw(st.one_of(st.none(), st.integers(1, 160)))
    if not causal and window is not None:  # every query must see a key: position + window > 0
        t_q = min(t_q, t_k + window - 1)
    hs = draw(st.sampled_from([1, 2, 7, 16, 33, 64, 100, 128, 129, 200]))
    hv = hs if draw(st.booleans()) else draw(st.sampled_from([1, 5, 16, 40, 65]))
    mags = (draw(st.sampled_from([0.1, 1.0, 3.0])), draw(st.sampled_from([1.0, 3.0])), draw(st.sampled_from([1.0, 1e3])))
    p = draw(st.sampled_from([0.0, 0.0, 0.1, 0.5]))
    return dict(lead=lead, t_q=t_q, t_k=t_k, hs=hs, hv=hv, causal=causal, window=window, mags=mags, p=p,
                seed=draw(st.integers(0, 2**63 - 1)))


@given(c=attention_problem(), data_seed=st.integers(0, 2**32 - 1))
@example(c=dict(lead=(1, 1), t_q=1, t_k=1, hs=64, hv=64, causal=True, window=None, mags=(1.0, 1.0, 1.0), p=0.0,
                seed=0), data_seed=0)
@example(c=dict(lead=(2, 2), t_q=9, t_k=23, hs=7, hv=5, causal=True, window=4, mags=(3.0, 3.0, 1e3), p=0.5,
                seed=2**63 - 1), data_seed=1)
@example(c=dict(lead=(1, 2), t_q=130, t_k=130, hs=200, hv=256, causal=True, window=None, mags=(1.0, 1.0, 1.0),
                p=0.1, seed=3), data_seed=2)
def test_matches_reference(c, data_seed):
    lead = c["lead"]
    q, k, v, g = _arrays(data_seed, [lead + (c["t_q"], c["hs"]), lead + (c["t_k"], c["hs"]),
                                     lead + (c["t_k"], c["hv"]), lead + (c["t_q"], c["hv"])], c["mags"] + (1.0,))
    assert_close_to_reference(q, k, v, g, c["causal"], c["window"], c["p"], c["seed"])


@pytest.mark.parametrize("lead, t_q, t_k, hs, causal, window, p", [
    ((1, 1), 1024, 1024, 64, True, None, 0.0),
    ((2, 2), 1024, 1024, 128, True, None, 0.1),
    ((1, 2), 300, 300, 33, True, 77, 0.1),
    ((1, 1), 257, 700, 64, True, None, 0.0),
    ((2, 1), 333, 333, 100, False, None, 0.2),
    ((1, 1), 600, 600, 16, False, 129, 0.0),
    ((1, 1), 2048, 2048, 64, True, 256, 0.0),
])
def test_long_sequences(lead, t_q, t_k, hs, causal, window, p):
    q, k, v, g = _arrays(t_q + t_k, [lead + (t_q, hs), lead + (t_k, hs), lead + (t_k, hs), lead + (t_q, hs)],
                         (1.0, 1.0, 1.0, 1.0))
    assert_close_to_reference(q, k, v, g, causal, window, p, seed=t_q)


@pytest.mark.parametrize("hs", [1, 7, 33, 64, 100, 255, 256])
def test_single_token_and_head_sizes(hs):
    q, k, v, g = _arrays(hs, [(2, 3, 1, hs)] * 4, (1.0,) * 4)
    out = assert_close_to_reference(q, k, v, g, True, None)
    np.testing.assert_allclose(out, v, rtol=1e-6)  # one key: softmax is exactly 1
    q, k, v, g = _arrays(hs + 1, [(2, 3, 13, hs)] * 4, (1.0,) * 4)
    assert_close_to_reference(q, k, v, g, True, None)


@pytest.mark.parametrize("causal, window, t_q, t_k", [(True, None, 37, 37), (True, 5, 30, 45), (False, 6, 33, 33),
                                                      (False, None, 20, 31), (True, None, 100, 130),
                                                      (False, 25, 90, 70)])
def test_dropout_mask_equals_reference(causal, window, t_q, t_k):
    """q = 0 makes every visible key equally likely; v = identity then reads the mask off the output:
    out[i, j] = keep[i, j] / ((1 - p) * n_visible(i)). It must be reference.dropout_mask exactly."""
    p, seed, B, nh = 0.3, 987654321, 2, 3
    q = np.zeros((B, nh, t_q, 4), np.float32)
    k = np.random.default_rng(0).standard_normal((B, nh, t_k, 4)).astype(np.float32)
    v = np.broadcast_to(np.eye(t_k, dtype=np.float32), (B, nh, t_k, t_k)).copy()
    cp = _cp()
    out, _ = K.attention.attention_forward(cp.asarray(q), cp.asarray(k), cp.asarray(v), causal, window, p, seed, 1.0)
    out = cp.asnumpy(out)
    vis = R.attention_mask(t_q, t_k, causal, window, np)
    vis = np.ones((t_q, t_k), bool) if vis is None else vis
    keep = R.dropout_mask((B, nh, t_q, t_k), p, seed, np)
    np.testing.assert_array_equal(out != 0, keep & vis)
    np.testing.assert_allclose(out, (keep & vis) / ((1 - p) * vis.sum(-1, keepdims=True)), rtol=1e-6)


def test_dropout_outputs_and_grads_match_reference_with_same_seed():
    q, k, v, g = _arrays(3, [(2, 2, 150, 24)] * 4, (1.0,) * 4)
    for seed in (0, 1, 2**62 + 12345, -5, 2**64 + 7):
        assert_close_to_reference(q, k, v, g, True, 17, 0.25, seed)


@pytest.mark.parametrize("causal, window, t_q, t_k", [(True, None, 140, 140), (True, 6, 20, 147), (False, 9, 140, 140),
                                                      (False, None, 10, 12)])
def test_masked_keys_have_no_effect(causal, window, t_q, t_k):
    """Perturbing a key/value a query cannot see leaves that query's output and dq row bit-identical;
    keys no query sees get exactly zero dk, dv."""
    q, k, v, g = _arrays(11, [(1, 2, t_q, 9), (1, 2, t_k, 9), (1, 2, t_k, 9), (1, 2, t_q, 9)], (1.0,) * 4)
    vis = R.attention_mask(t_q, t_k, causal, window, np)
    vis = np.ones((t_q, t_k), bool) if vis is None else vis
    rng = np.random.default_rng(1)
    (out, dq, dk, dv), _ = _run(q, k, v, g, causal, window, 0.0, 0, 0.3)
    assert np.all(dk[..., ~vis.any(0), :] == 0) and np.all(dv[..., ~vis.any(0), :] == 0)
    for j in range(0, t_k, 7):
        k2, v2 = k.copy(), v.copy()
        k2[..., j, :] += rng.standard_normal(9).astype(np.float32) * 5
        v2[..., j, :] += rng.standard_normal(9).astype(np.float32) * 5
        (out2, dq2, _, _), _ = _run(q, k2, v2, g, causal, window, 0.0, 0, 0.3)
        blind = ~vis[:, j]
        np.testing.assert_array_equal(out2[..., blind, :], out[..., blind, :])
        np.testing.assert_array_equal(dq2[..., blind, :], dq[..., blind, :])
        assert np.abs(out2[..., vis[:, j], :] - out[..., vis[:, j], :]).max(initial=1.0) > 1e-4


def test_deterministic():
    """No atomics: two runs give bit-identical outputs and gradients."""
    q, k, v, g = _arrays(5, [(2, 2, 300, 64)] * 4, (1.0,) * 4)
    r1, _ = _run(q, k, v, g, True, None, 0.1, 7, 0.125)
    r2, _ = _run(q, k, v, g, True, None, 0.1, 7, 0.125)
    for a, b in zip(r1, r2):
        np.testing.assert_array_equal(a, b)


def test_matches_cpu_kernel_if_built():
    """Same saved layout and values as the CPU kernel (row max and row sum)."""
    cpu = getattr(tg.kernels._native, "cpu", None)
    if not hasattr(cpu, "attention_forward"):
        pytest.skip("no CPU attention kernel")
    q, k, v, g = _arrays(9, [(2, 3, 70, 32), (2, 3, 90, 32), (2, 3, 90, 32), (2, 3, 70, 32)], (1.0,) * 4)
    cp = _cp()
    out, saved = K.attention.attention_forward(cp.asarray(q), cp.asarray(k), cp.asarray(v), True, 30, 0.2, 11, 0.2)
    out_c, saved_c = cpu.attention_forward(q, k, v, True, 30, 0.2, 11, 0.2)
    np.testing.assert_allclose(cp.asnumpy(out), out_c, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(cp.asnumpy(saved[1]), saved_c[1], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(cp.asnumpy(saved[2]), saved_c[2], rtol=1e-4)
    assert saved[3:] == saved_c[3:]


@pytest.mark.parametrize("sq, sk, causal", [((0, 2, 5, 8), (0, 2, 5, 8), True), ((1, 2, 0, 8), (1, 2, 5, 8), True),
                                            ((2, 3, 4, 0), (2, 3, 4, 0), False)])
def test_empty_shapes(sq, sk, causal):
    q, k, v, g = _arrays(0, [sq, sk, sk, sq], (1.0,) * 4)
    (out, dq, dk, dv), _ = _run(q, k, v, g, causal, None, 0.0, 0, 1.0)
    ref_out, ref_saved = R.attention_forward(q, k, v, causal, None, 0.0, 0, 1.0)
    ref_grads = R.attention_backward(g, q, k, v, 0.0, 1.0, ref_saved)
    for a, b in zip((out, dq, dk, dv), (ref_out,) + tuple(ref_grads)):
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_saved_is_small():
    cp = _cp()
    q, k, v = (cp.asarray(a) for a in _arrays(0, [(2, 3, 40, 16)] * 3, (1.0,) * 3))
    out, saved = K.attention.attention_forward(q, k, v, True, None, 0.1, 2**64 + 5, 0.25)
    o, m, l, causal, window, seed = saved
    assert o is out and m.shape == l.shape == (2, 3, 40) and (causal, window, seed) == (True, None, 5)


# ------------------------------------------------------------------ errors
def _good():
    cp = _cp()
    return tuple(cp.asarray(a) for a in _arrays(0, [(1, 2, 4, 8)] * 3, (1.0,) * 3))


@pytest.mark.parametrize("mutate, exc, match", [
    (lambda cp, q, k, v: (q.astype(cp.float64), k, v), TypeError, "attention_forward: q: expected dtype float32"),
    (lambda cp, q, k, v: (q, k.astype(cp.float16), v), TypeError, "attention_forward: k: expected dtype float32"),
    (lambda cp, q, k, v: (q, k, cp.swapaxes(v, -1, -2)), ValueError, "attention_forward: v: expected a C-contiguous array"),
    (lambda cp, q, k, v: (cp.asnumpy(q), k, v), TypeError, "attention_forward: q: expected a cupy array"),
    (lambda cp, q, k, v: (q[0, 0, 0], k, v), ValueError, r"attention_forward: q must be \(..., Tq, hs\)"),
    (lambda cp, q, k, v: (q, k[0], v), ValueError, "attention_forward: k must be"),
    (lambda cp, q, k, v: (q, cp.ones((1, 3, 4, 8), cp.float32), v), ValueError, "attention_forward: k must be"),
    (lambda cp, q, k, v: (q, cp.ones((1, 2, 4, 7), cp.float32), v), ValueError, "attention_forward: k must be"),
    (lambda cp, q, k, v: (q, k, cp.ones((1, 2, 5, 8), cp.float32)), ValueError, "attention_forward: v must match k"),
    (lambda cp, q, k, v: (cp.ones((1, 2, 4, 300), cp.float32), cp.ones((1, 2, 4, 300), cp.float32), v), ValueError,
     "attention_forward: head sizes up to 256"),
])
def test_forward_argument_errors(mutate, exc, match):
    cp = _cp()
    q, k, v = mutate(cp, *_good())
    with pytest.raises(exc, match=match):
        K.attention.attention_forward(q, k, v, True, None, 0.0, 0, 1.0)


def test_option_errors():
    q, k, v = _good()
    with pytest.raises(ValueError, match="attention_forward: window must be None or a positive int"):
        K.attention.attention_forward(q, k, v, True, 0, 0.0, 0, 1.0)
    with pytest.raises(ValueError, match=r"attention_forward: dropout_p: must be in \[0, 1\)"):
        K.attention.attention_forward(q, k, v, True, None, 1.0, 0, 1.0)
    with pytest.raises(TypeError, match="attention_forward: seed: expected an int"):
        K.attention.attention_forward(q, k, v, True, None, 0.1, 1.5, 1.0)
    with pytest.raises(ValueError, match="sees no key.*Tq <= Tk"):
        K.attention.attention_forward(q, k[..., :3, :].copy(), v[..., :3, :].copy(), True, None, 0.0, 0, 1.0)


def test_backward_argument_errors():
    cp = _cp()
    q, k, v = _good()
    out, saved = K.attention.attention_forward(q, k, v, True, None, 0.0, 0, 1.0)
    with pytest.raises(ValueError, match=r"attention_backward: grad: expected shape \(1, 2, 4, 8\)"):
        K.attention.attention_backward(out[..., :3, :].copy(), q, k, v, 0.0, 1.0, saved)
    with pytest.raises(TypeError, match="attention_backward: grad: expected dtype float32"):
        K.attention.attention_backward(out.astype(cp.float64), q, k, v, 0.0, 1.0, saved)
    with pytest.raises(ValueError, match="attention_backward: saved must be the 6-tuple"):
        K.attention.attention_backward(out, q, k, v, 0.0, 1.0, saved[:3])
    with pytest.raises(ValueError, match=r"attention_backward: saved row max: expected shape \(1, 2, 4\)"):
        K.attention.attention_backward(out, q, k, v, 0.0, 1.0, (out, saved[1][..., :2].copy()) + tuple(saved[2:]))


# ------------------------------------------------------------------ attention_qkv: packed (B, T, 3C) in place
@given(b=st.integers(1, 3), t=st.integers(1, 140), nh=st.sampled_from([1, 2, 3, 6]),
       hs=st.sampled_from([1, 7, 16, 33, 64, 100, 128, 256]), window=st.one_of(st.none(), st.integers(1, 90)),
       p=st.sampled_from([0.0, 0.2]), causal=st.booleans(), data_seed=st.integers(0, 2**32 - 1))
@example(b=2, t=130, nh=3, hs=64, window=None, p=0.1, causal=True, data_seed=0)  # 3 query tiles, dropout
def test_packed_equals_split_heads_bit_for_bit(b, t, nh, hs, window, p, causal, data_seed):
    """The packed kernels read q, k, v in place and write out / dqkv merged: the same arithmetic as
    the plain kernels on split heads, so the results are identical, not merely close."""
    cp = _cp()
    rng = np.random.default_rng(data_seed)
    qkv = rng.standard_normal((b, t, 3 * nh * hs)).astype(np.float32)
    g = rng.standard_normal((b, t, nh * hs)).astype(np.float32)
    scale = 1.0 / math.sqrt(hs)
    qkvd, gd = cp.asarray(qkv), cp.asarray(g)
    out, saved = K.attention.qkv_attention_forward(qkvd, nh, causal, window, p, 5, scale)
    dqkv = K.attention.qkv_attention_backward(gd, qkvd, nh, p, scale, saved)
    q, k, v = (cp.asarray(a) for a in R.split_qkv(qkv, nh))
    out_ref, saved_ref = K.attention.attention_forward(q, k, v, causal, window, p, 5, scale)
    dq, dk, dv = K.attention.attention_backward(cp.asarray(R.split_heads(g, nh)), q, k, v, p, scale, saved_ref)
    np.testing.assert_array_equal(cp.asnumpy(out), R.merge_heads(cp.asnumpy(out_ref)))
    np.testing.assert_array_equal(cp.asnumpy(saved[1]), cp.asnumpy(saved_ref[1]))  # row max (B, nh, T)
    np.testing.assert_array_equal(cp.asnumpy(dqkv), R.merge_qkv(*(cp.asnumpy(a) for a in (dq, dk, dv))))


def test_packed_matches_reference_and_dispatch():
    """F.qkv_attention on the GPU runs the packed kernel and matches the float64 reference."""
    cp = _cp()
    from tinygpt import kernels

    rng = np.random.default_rng(0)
    b, t, nh, hs = 2, 77, 4, 32
    qkv = rng.standard_normal((b, t, 3 * nh * hs)).astype(np.float32)
    g = rng.standard_normal((b, t, nh * hs)).astype(np.float32)
    assert kernels.select("qkv_attention", cp.asarray(qkv)).forward is K.attention.qkv_attention_forward
    out, saved = K.attention.qkv_attention_forward(cp.asarray(qkv), nh, True, None, 0.0, 0, 1.0 / math.sqrt(hs))
    dqkv = K.attention.qkv_attention_backward(cp.asarray(g), cp.asarray(qkv), nh, 0.0, 1.0 / math.sqrt(hs), saved)
    q, k, v = R.split_qkv(qkv, nh)
    results = dict(out=R.split_heads(cp.asnumpy(out), nh))
    results.update(zip(("dq", "dk", "dv"), R.split_qkv(cp.asnumpy(dqkv), nh)))
    assert_attention_within_bound(results, q, k, v, R.split_heads(g, nh), True, None, 0.0, 0, 1.0 / math.sqrt(hs),
                                  C1, C2, "gpu packed")


def test_packed_argument_errors():
    cp = _cp()
    qkv = cp.asarray(np.zeros((2, 5, 24), np.float32))
    with pytest.raises(ValueError, match="qkv's last dim 24 must be 3 \\* n_embd with n_embd divisible by n_head 5"):
        K.attention.qkv_attention_forward(qkv, 5, True, None, 0.0, 0, 1.0)
    with pytest.raises(ValueError, match="expected 3 dimensions"):
        K.attention.qkv_attention_forward(cp.asarray(np.zeros((5, 24), np.float32)), 2, True, None, 0.0, 0, 1.0)
    with pytest.raises(TypeError, match="expected dtype float32"):
        K.attention.qkv_attention_forward(cp.asarray(np.zeros((2, 5, 24), np.float64)), 2, True, None, 0.0, 0, 1.0)
    out, saved = K.attention.qkv_attention_forward(qkv, 2, True, None, 0.0, 0, 1.0)
    with pytest.raises(ValueError, match="grad: expected shape \\(2, 5, 8\\)"):
        K.attention.qkv_attention_backward(cp.asarray(np.zeros((2, 5, 9), np.float32)), qkv, 2, 0.0, 1.0, saved)
