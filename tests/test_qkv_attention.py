"""Attention on c_attn's packed output: F.qkv_attention and the `attention_qkv` kernels.

qkv (B, T, 3C) holds q, k, v side by side. The reference (kernels/reference.py) splits it into
contiguous (B, nh, T, hs) heads, runs reference attention and merges the heads back; the native
CPU kernel reads q, k, v in place with strides and writes the merged (B, T, C) output directly.

Tolerances: the native packed kernel runs exactly the arithmetic of the plain native kernel (only
the addresses differ; the dropout mask is indexed by head, query and key, not by memory), so it is
compared with the plain kernel on split heads *bit for bit*; the plain kernel itself is checked
against the float64 reference with a derived bound in test_native_attention.py. The reference
composition is checked in float64 against finite differences and against the unpacked path.
"""
import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

import tinygpt as tg
import tinygpt.functional as F
from tinygpt import kernels
from tinygpt.kernels import reference as R
from tinygpt.nn import CausalSelfAttention

from helpers import check_grads
from test_native_attention import tiles as tile_sizes
from test_native_attention import use_isa

_cpu = getattr(kernels._native, "cpu", None)
native = pytest.mark.skipif(not hasattr(_cpu, "qkv_attention_forward"),
                            reason="tinygpt._C is not built or has no cpu.qkv_attention_forward")
ISAS = ["avx512", "avx2", "baseline"]
TILES = [(64, 64, 64, 64), (16, 7, 16, 5), (32, 64, 32, 64)]  # (fwd_br, fwd_bc, bwd_br, bwd_bc)


def _qkv(seed, B, T, nh, hs, mag=1.0, dtype=np.float32):
    rng = np.random.default_rng(seed)
    qkv = (rng.standard_normal((B, T, 3 * nh * hs)) * mag).astype(dtype)
    g = rng.standard_normal((B, T, nh * hs)).astype(dtype)
    return qkv, g


def _plain(qkv, g, nh, window, p, seed, scale):
    """The plain native kernel on split heads, merged: what the packed kernel must equal exactly."""
    q, k, v = R.split_qkv(qkv, nh)
    out, saved = _cpu.attention_forward(q, k, v, True, window, p, seed, scale)
    dq, dk, dv = _cpu.attention_backward(R.split_heads(g, nh), q, k, v, p, scale, saved)
    return R.merge_heads(out), saved, R.merge_qkv(dq, dk, dv)


# ------------------------------------------------------------------ native packed == native plain
@native
@given(B=st.integers(1, 3), T=st.integers(1, 80), nh=st.sampled_from([1, 2, 3, 4]),
       hs=st.sampled_from([1, 5, 16, 20, 32, 33, 64]), window=st.one_of(st.none(), st.integers(1, 90)),
       p=st.sampled_from([0.0, 0.0, 0.1, 0.5]), mag=st.sampled_from([0.1, 1.0, 30.0]),
       seed=st.integers(0, 2**63 - 1), tiles=st.sampled_from(TILES), data=st.integers(0, 2**32 - 1))
@example(B=1, T=1, nh=1, hs=1, window=None, p=0.0, mag=1.0, seed=0, tiles=TILES[0], data=0)
@example(B=2, T=65, nh=3, hs=33, window=7, p=0.5, mag=30.0, seed=2**63 - 1, tiles=TILES[1], data=1)
@pytest.mark.parametrize("isa", ISAS)
def test_packed_equals_plain_kernel(isa, B, T, nh, hs, window, p, mag, seed, tiles, data):
    qkv, g = _qkv(data, B, T, nh, hs, mag)
    scale = 1.0 / np.sqrt(hs)
    with use_isa(isa), tile_sizes(tiles):
        y, saved = _cpu.qkv_attention_forward(qkv, nh, True, window, p, seed, scale)
        dqkv = _cpu.qkv_attention_backward(g, qkv, nh, p, scale, saved)
        y_ref, saved_ref, dqkv_ref = _plain(qkv, g, nh, window, p, seed, scale)
    assert y.shape == (B, T, nh * hs) and dqkv.shape == qkv.shape and y.dtype == dqkv.dtype == np.float32
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_array_equal(saved[1], saved_ref[1])  # row max (B, nh, T)
    np.testing.assert_array_equal(saved[2], saved_ref[2])  # row sum
    np.testing.assert_array_equal(dqkv, dqkv_ref)


@native
@pytest.mark.parametrize("B, T, nh, hs, window, p", [
    (1, 300, 1, 32, None, 0.0),  # one head: backward splits its key blocks over tasks (dq summed)
    (1, 257, 2, 20, 50, 0.1),    # two heads, split too; hs not a multiple of 16
    (4, 256, 6, 64, None, 0.2),  # the larger training config's shape
])
def test_long_sequences_and_split_backward(B, T, nh, hs, window, p):
    qkv, g = _qkv(T, B, T, nh, hs)
    y, saved = _cpu.qkv_attention_forward(qkv, nh, True, window, p, 11, 0.125)
    dqkv = _cpu.qkv_attention_backward(g, qkv, nh, p, 0.125, saved)
    y_ref, _, dqkv_ref = _plain(qkv, g, nh, window, p, 11, 0.125)
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_array_equal(dqkv, dqkv_ref)


@native
def test_matches_float64_reference():
    """One direct check against the float64 reference (the plain kernel's bound: test_native_attention)."""
    qkv, g = _qkv(3, 2, 40, 4, 16)
    y, saved = _cpu.qkv_attention_forward(qkv, 4, True, 9, 0.0, 0, 0.25)
    dqkv = _cpu.qkv_attention_backward(g, qkv, 4, 0.0, 0.25, saved)
    y64, s64 = R.qkv_attention_forward(qkv.astype(np.float64), 4, True, 9, 0.0, 0, 0.25)
    d64 = R.qkv_attention_backward(g.astype(np.float64), qkv.astype(np.float64), 4, 0.0, 0.25, s64)
    np.testing.assert_allclose(y, y64, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dqkv, d64, rtol=1e-4, atol=1e-5)


@native
def test_empty_batch():
    qkv = np.zeros((0, 5, 12), np.float32)
    y, saved = _cpu.qkv_attention_forward(qkv, 2, True, None, 0.0, 0, 0.5)
    assert y.shape == (0, 5, 4) and saved[1].shape == (0, 2, 5)
    assert _cpu.qkv_attention_backward(np.zeros((0, 5, 4), np.float32), qkv, 2, 0.0, 0.5, saved).shape == (0, 5, 12)


# ------------------------------------------------------------------ errors and dispatch
@native
def test_argument_errors():
    qkv, g = _qkv(0, 2, 6, 2, 4)
    f = _cpu.qkv_attention_forward
    with pytest.raises(ValueError, match=r"qkv_attention_forward: qkv must be \(B, T, 3 \* n_embd\)"):
        f(qkv[0], 2, True, None, 0.0, 0, 1.0)
    with pytest.raises(ValueError, match="qkv_attention_forward: qkv's last dim 24 must be 3 \\* n_embd .* n_head 5"):
        f(qkv, 5, True, None, 0.0, 0, 1.0)
    with pytest.raises(ValueError, match="qkv_attention_forward: n_head must be >= 1"):
        f(qkv, 0, True, None, 0.0, 0, 1.0)
    with pytest.raises(ValueError, match="qkv_attention_forward: qkv must be float32"):
        f(qkv.astype(np.float64), 2, True, None, 0.0, 0, 1.0)
    with pytest.raises(ValueError, match="qkv_attention_forward: qkv must be C-contiguous"):
        f(qkv[:, ::2], 2, True, None, 0.0, 0, 1.0)
    with pytest.raises(ValueError, match="qkv_attention_forward: window must be None or a positive int"):
        f(qkv, 2, True, 0, 0.0, 0, 1.0)
    with pytest.raises(ValueError, match=r"qkv_attention_forward: dropout_p must be in \[0, 1\)"):
        f(qkv, 2, True, None, 1.0, 0, 1.0)
    y, saved = f(qkv, 2, True, None, 0.0, 0, 1.0)
    b = _cpu.qkv_attention_backward
    with pytest.raises(ValueError, match=r"qkv_attention_backward: grad must have shape \(2, 6, 8\)"):
        b(g[:, :5].copy(), qkv, 2, 0.0, 1.0, saved)
    with pytest.raises(ValueError, match="qkv_attention_backward: saved must be the 6-tuple"):
        b(g, qkv, 2, 0.0, 1.0, saved[:3])
    with pytest.raises(ValueError, match=r"qkv_attention_backward: saved row max must have shape \(2, 2, 6\)"):
        b(g, qkv, 2, 0.0, 1.0, (y, saved[1][:, :1].copy()) + tuple(saved[2:]))


@native
def test_dispatch():
    qkv, _ = _qkv(0, 1, 4, 2, 8)
    with kernels.use_native(True):  # also under TINYGPT_NATIVE=0
        assert kernels.select("qkv_attention", qkv).name == "native-cpu"
    assert kernels.select("qkv_attention", qkv.astype(np.float64)).name == "reference"
    with kernels.use_native(False):
        assert kernels.select("qkv_attention", qkv).name == "reference"


def test_functional_argument_errors():
    x = tg.Tensor(np.zeros((1, 4, 12), np.float32))
    with pytest.raises(ValueError, match=r"qkv_attention: qkv must be \(B, T, 3 \* n_embd\)"):
        F.qkv_attention(tg.Tensor(np.zeros((4, 12), np.float32)), 2)
    with pytest.raises(ValueError, match="qkv_attention: qkv's last dim 12 must be 3 \\* n_embd"):
        F.qkv_attention(x, 3)
    with pytest.raises(ValueError, match="qkv_attention: window must be a positive int"):
        F.qkv_attention(x, 2, window=0)
    with pytest.raises(ValueError, match=r"qkv_attention: dropout_p must be in \[0, 1\)"):
        F.qkv_attention(x, 2, dropout_p=1.0)


# ------------------------------------------------------------------ the reference composition, autograd
@pytest.mark.parametrize("window", [None, 3])
def test_reference_gradients_float64(window):
    qkv, _ = _qkv(1, 2, 7, 2, 3, dtype=np.float64)
    with kernels.use_native(False):
        check_grads(lambda a: F.qkv_attention(a, 2, window=window), qkv)


@pytest.mark.parametrize("use_native", [True, False])
@pytest.mark.parametrize("window, p", [(None, 0.0), (4, 0.2)])
def test_equals_unpacked_path(use_native, window, p):
    """F.qkv_attention == split heads -> F.scaled_dot_product_attention -> merge, values and grads."""
    B, T, nh, hs = 2, 13, 3, 8
    qkv, g = _qkv(5, B, T, nh, hs)
    results = []
    for packed in (True, False):
        x = tg.Tensor(qkv.copy(), requires_grad=True)
        with kernels.use_native(use_native):
            tg.manual_seed(3)  # the same dropout seed for both
            if packed:
                y = F.qkv_attention(x, nh, dropout_p=p, window=window)
            else:
                q, k, v = x.reshape(B, T, 3, nh, hs).permute(2, 0, 3, 1, 4).unbind(0)
                y = F.scaled_dot_product_attention(q, k, v, dropout_p=p, window=window)
                y = y.permute(0, 2, 1, 3).reshape(B, T, nh * hs)
            y.backward(tg.Tensor(g))
        results.append((y.numpy(), x.grad))
    np.testing.assert_array_equal(results[0][0], results[1][0])
    np.testing.assert_array_equal(results[0][1], results[1][1])


def test_module_uses_packed_path_and_cache_path_agrees():
    """CausalSelfAttention runs attention_qkv without a KV cache; generation's cached path gives the same."""
    tg.manual_seed(0)
    attn = CausalSelfAttention(16, 4).eval()
    x = np.random.default_rng(0).standard_normal((2, 9, 16)).astype(np.float32)
    ran, select = [], kernels.select

    def spy(op, *arrays, **kw):
        ran.append(op)
        return select(op, *arrays, **kw)

    kernels.select, saved = spy, kernels.select
    try:
        y = attn(tg.Tensor(x)).numpy()
    finally:
        kernels.select = saved
    assert "qkv_attention" in ran and "attention" not in ran
    from tinygpt.models.generation import KVCache
    cache = KVCache(1, batch_size=2, n_head=4, head_size=4, max_length=16)
    with tg.no_grad():
        y_cached = attn(tg.Tensor(x), kv_cache=cache.layer(0)).numpy()
    np.testing.assert_allclose(y_cached, y, rtol=1e-5, atol=1e-6)
