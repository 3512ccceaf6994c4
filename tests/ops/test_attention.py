"""attention (q, k, v heads) and qkv_attention (c_attn's packed (B, T, 3C) output): reference.py,
csrc/cpu/attention.cpp, csrc/cuda/attention.cu, forward and every backward output (dq, dk, dv) against the
float64 reference on every implementation present.

Covered: causal / windowed / full attention, Tq <= Tk (queries aligned to the last keys) and Tq > Tk, T = 1,
head sizes that are not multiples of the SIMD width, 16 or 32 (up to 256, CUDA's HD = 256 tile class), q/k
and v head sizes that differ, sequences crossing many tiles (on the CPU also tile sizes small enough that
tiny shapes cross many), every CPU SIMD path, and attention dropout whose mask must equal
reference.dropout_mask's bit for bit.

Tolerance (kernel_checks.assert_attention_within_bound), elementwise
    |impl - ref64| <= eps32 * (C1 + C2 * Smax) * nat
where nat is the float64 value of the same product with every factor replaced by its absolute value
(|P| @ |v| for out, |P|^T @ |dO| for dv, scale * |dS| @ |k| for dq, ...): the classic |fl(AB) - AB| <=
gamma_K |A||B| bound; Smax = max |q k^T * scale| accounts for the score error dS ~ eps |S| that softmax turns
into a relative error of the probabilities.
  - CPU and the reference (float32 throughout): C1 covers the length-K float32 accumulations (~sqrt(K) eps
    typical, K eps worst; K <= 1024 here, so C1 = 64 is 2x the sqrt growth at K = 1024, with room for the
    exp's 2 ulp). C2 = 32 covers the score error: S carries ~sqrt(hs) eps |S| plus the rounding of q * scale,
    and softmax doubles it through its normaliser. Calibration over 300 random problems (all SIMD paths):
    the worst |err| / (eps nat (1 + Smax)) was 6.6, a 5x (large Smax) to 10x (small Smax) margin.
  - CUDA: the same float32 fma chains (scores over hs <= 256 terms, out/dv/dk/dq over a row's keys or
    queries, online-softmax rescales by exp(m_old - m_new), 2 ulp each); C1 = 128, C2 = 64 double the CPU's
    for the longer sequential key loop (one thread runs a row's whole key range) and the 2-ulp expf.
A wrong mask, tile edge or dropout bit gives errors of order nat itself.

qkv_attention runs exactly the arithmetic of attention on split heads (only the addresses differ; the
dropout mask is indexed by head, query and key, not by memory), so it is compared with it bit for bit, plus
directly against the float64 reference.
"""
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import tinygpt as tg
import tinygpt.functional as F
from tinygpt import kernels
from tinygpt.kernels import reference as R
from tinygpt.nn import CausalSelfAttention

from helpers import check_grads, compare_with_torch, rng_arrays, seeds
from impls import CPU, DEFAULT_ISA, Impl, running
from kernel_checks import assert_attention_within_bound
from kernel_checks import random_arrays as _arrays
from refs import F32, F32_GRAD, T64, np_attention, tf, visible

pytestmark = pytest.mark.usefixtures("seeded")  # every test starts from tg.manual_seed(0)

C1 = {"cuda": 128.0, "default": 64.0}
C2 = {"cuda": 64.0, "default": 32.0}
TILES = [(64, 64, 64, 64), (16, 7, 16, 5), (16, 16, 32, 13), (32, 64, 32, 64)]  # CPU (fwd_br, fwd_bc, bwd_br, bwd_bc)
SMALL_TILES = (16, 7, 16, 5)


class tiles:
    """Context manager: the CPU kernel's tile sizes for the body (a no-op off the CPU)."""

    def __init__(self, impl, t):
        self.t = t if impl.device == "cpu" and impl.native else None

    def __enter__(self):
        if self.t is not None:
            self.before = CPU.attention_tiles()
            CPU.attention_tiles(*self.t)

    def __exit__(self, *exc):
        if self.t is not None:
            CPU.attention_tiles(*self.before)


def run(impl, q, k, v, g, causal, window, p, seed, scale):
    """Forward + backward on host arrays; host (out, dq, dk, dv) and the forward's saved."""
    kern = impl.kernel("attention")
    qd, kd, vd, gd = (impl.to(a) for a in (q, k, v, g))
    out, saved = kern.forward(qd, kd, vd, causal, window, p, seed, scale)
    dq, dk, dv = kern.backward(gd, qd, kd, vd, p, scale, saved)
    return impl.host((out, dq, dk, dv)), saved


def assert_close_to_reference(impl, q, k, v, g, causal, window, p=0.0, seed=0, scale=None):
    scale = 1.0 / math.sqrt(max(q.shape[-1], 1)) if scale is None else scale
    (out, dq, dk, dv), _ = run(impl, q, k, v, g, causal, window, p, seed, scale)
    assert_attention_within_bound(dict(out=out, dq=dq, dk=dk, dv=dv), q, k, v, g, causal, window, p, seed, scale,
                                  impl.limit(C1), impl.limit(C2), impl.name)
    return out


def _visible(t_q, t_k, causal, window):
    vis = R.attention_mask(t_q, t_k, causal, window, np)
    return np.ones((t_q, t_k), bool) if vis is None else vis


# ------------------------------------------------------------------ properties vs the float64 reference
# Problem sizes per implementation: CUDA's reach its tile classes (hs up to 256, many 64-key tiles); the CPU's
# and the reference's stay small (every CPU ISA runs them, and the float64 check costs ~Tq Tk hs).
LIMITS = {"cuda": dict(t=150, extra_keys=80, window=160, hs=[1, 2, 7, 16, 33, 64, 100, 128, 129, 200],
                       hv=[1, 5, 16, 40, 65]),
          "default": dict(t=70, extra_keys=40, window=80, hs=[1, 2, 7, 16, 33, 64, 100], hv=[1, 5, 16, 40])}


@st.composite
def attention_problem(draw, limits):
    lead = draw(st.sampled_from([(1, 1), (2, 3), (1, 2), (3,), (2, 1, 2)]))
    causal = draw(st.booleans())
    t_q = draw(st.integers(1, limits["t"]))
    t_k = draw(st.integers(t_q, t_q + limits["extra_keys"])) if causal or draw(st.booleans()) \
        else draw(st.integers(1, limits["t"]))
    window = draw(st.one_of(st.none(), st.integers(1, limits["window"])))
    if not causal and window is not None:  # every query must see a key: position + window > 0
        t_q = min(t_q, t_k + window - 1)
    hs = draw(st.sampled_from(limits["hs"]))
    hv = hs if draw(st.booleans()) else draw(st.sampled_from(limits["hv"]))
    mags = tuple(draw(st.sampled_from(m)) for m in ([0.1, 1.0, 3.0], [1.0, 3.0], [1.0, 1e3]))  # q, k, v
    p = draw(st.sampled_from([0.0, 0.0, 0.1, 0.5]))
    return dict(lead=lead, t_q=t_q, t_k=t_k, hs=hs, hv=hv, causal=causal, window=window, mags=mags, p=p,
                seed=draw(st.integers(0, 2**63 - 1)), tiles=draw(st.sampled_from(TILES)),
                data_seed=draw(st.integers(0, 2**32 - 1)))


def check_problem(impl, c):
    lead = c["lead"]
    q, k, v, g = _arrays(c["data_seed"], [lead + (c["t_q"], c["hs"]), lead + (c["t_k"], c["hs"]),
                                          lead + (c["t_k"], c["hv"]), lead + (c["t_q"], c["hv"])], c["mags"] + (1.0,))
    with tiles(impl, c["tiles"]):
        assert_close_to_reference(impl, q, k, v, g, c["causal"], c["window"], c["p"], c["seed"])


@given(data=st.data())
def test_attention(impl, data):
    check_problem(impl, data.draw(attention_problem(impl.limit(LIMITS)), label="problem"))


@pytest.mark.parametrize("c", [
    dict(lead=(1, 1), t_q=1, t_k=1, hs=64, hv=64, causal=True, window=None, mags=(1.0, 1.0, 1.0), p=0.0, seed=0,
         tiles=TILES[0], data_seed=0),
    dict(lead=(2, 2), t_q=9, t_k=23, hs=7, hv=5, causal=True, window=4, mags=(3.0, 3.0, 1e3), p=0.5, seed=2**63 - 1,
         tiles=TILES[1], data_seed=1),
], ids=["one-token", "dropout-window-edges"])
def test_attention_examples(impl, c):
    """Fixed problems every implementation runs (the strategy's corners)."""
    check_problem(impl, c)


def test_cuda_attention_hd256(cuda_impl):
    """CUDA's HD = 256 tile class with v's head size 256 and q/k's 200, 3 query tiles, dropout."""
    check_problem(cuda_impl, dict(lead=(1, 2), t_q=130, t_k=130, hs=200, hv=256, causal=True, window=None,
                                  mags=(1.0, 1.0, 1.0), p=0.1, seed=3, tiles=TILES[2], data_seed=2))


@pytest.mark.parametrize("lead, t_q, t_k, hs, causal, window, p", [
    ((1, 1), 1024, 1024, 64, True, None, 0.0),
    ((1, 2), 300, 300, 33, True, 77, 0.1),
    ((1, 1), 257, 700, 64, True, None, 0.0),
    ((2, 1), 333, 333, 100, False, None, 0.2),
    ((1, 1), 600, 600, 16, False, 129, 0.0),
])
def test_long_sequences(large_impl, lead, t_q, t_k, hs, causal, window, p):
    check_long(large_impl, lead, t_q, t_k, hs, causal, window, p)


@pytest.mark.parametrize("lead, t_q, t_k, hs, causal, window, p", [
    ((2, 2), 1024, 1024, 128, True, None, 0.1),  # the HD = 128 tile class
    ((1, 1), 2048, 2048, 64, True, 256, 0.0),    # a window far shorter than the sequence
])
def test_cuda_long_sequences(cuda_impl, lead, t_q, t_k, hs, causal, window, p):
    check_long(cuda_impl, lead, t_q, t_k, hs, causal, window, p)


def check_long(impl, lead, t_q, t_k, hs, causal, window, p):
    q, k, v, g = _arrays(t_q + t_k, [lead + (t_q, hs), lead + (t_k, hs), lead + (t_k, hs), lead + (t_q, hs)],
                         (1.0, 1.0, 1.0, 1.0))
    assert_close_to_reference(impl, q, k, v, g, causal, window, p, seed=t_q)


@pytest.mark.parametrize("hs", [1, 7, 33, 64, 100, 255, 256])
def test_single_token_and_head_sizes(native_impl, hs):
    q, k, v, g = _arrays(hs, [(2, 3, 1, hs)] * 4, (1.0,) * 4)
    out = assert_close_to_reference(native_impl, q, k, v, g, True, None)
    np.testing.assert_allclose(out, v, rtol=1e-6)  # one key: softmax is exactly 1
    q, k, v, g = _arrays(hs + 1, [(2, 3, 13, hs)] * 4, (1.0,) * 4)
    assert_close_to_reference(native_impl, q, k, v, g, True, None)


@pytest.mark.parametrize("causal, window, t_q, t_k", [(True, None, 37, 37), (True, 5, 30, 45), (False, 6, 33, 33),
                                                      (False, None, 20, 31), (True, None, 100, 130),
                                                      (False, 25, 90, 70)])
def test_dropout_mask_equals_reference(native_impl, causal, window, t_q, t_k):
    """q = 0 makes every visible key equally likely; v = identity then reads the mask off the output:
    out[i, j] = keep[i, j] / ((1 - p) * n_visible(i)). It must be reference.dropout_mask exactly."""
    p, seed, B, nh = 0.3, 987654321, 2, 3
    q = np.zeros((B, nh, t_q, 4), np.float32)
    k = np.random.default_rng(0).standard_normal((B, nh, t_k, 4)).astype(np.float32)
    v = np.broadcast_to(np.eye(t_k, dtype=np.float32), (B, nh, t_k, t_k)).copy()
    to = native_impl.to
    with tiles(native_impl, SMALL_TILES):
        out, _ = native_impl.kernel("attention").forward(to(q), to(k), to(v), causal, window, p, seed, 1.0)
    out = native_impl.host(out)
    vis = _visible(t_q, t_k, causal, window)
    keep = R.dropout_mask((B, nh, t_q, t_k), p, seed, np)
    np.testing.assert_array_equal(out != 0, keep & vis)
    np.testing.assert_allclose(out, (keep & vis) / ((1 - p) * vis.sum(-1, keepdims=True)), rtol=1e-6)


def test_dropout_outputs_and_grads_match_reference_with_same_seed(native_impl):
    """Seeds at the ends of the range; on CUDA also negative and > 2^64 ones, which it takes modulo 2^64."""
    cuda = native_impl.device == "cuda"
    q, k, v, g = _arrays(3, [(2, 2, 150 if cuda else 50, 24)] * 4, (1.0,) * 4)
    for seed in (0, 1, 2**62 + 12345) + ((-5, 2**64 + 7) if cuda else ()):
        with tiles(native_impl, (16, 13, 16, 11)):
            assert_close_to_reference(native_impl, q, k, v, g, True, 17, 0.25, seed)


@pytest.mark.parametrize("causal, window, t_q, t_k", [(True, None, 40, 40), (True, 6, 20, 47), (False, 9, 40, 40),
                                                      (False, None, 10, 12), (True, None, 140, 140),
                                                      (True, 6, 20, 147), (False, 9, 140, 140)])
def test_masked_keys_have_no_effect(native_impl, causal, window, t_q, t_k):
    """Perturbing a key/value a query cannot see leaves that query's output and dq row bit-identical;
    keys no query sees get exactly zero dk, dv."""
    impl = native_impl
    q, k, v, g = _arrays(11, [(1, 2, t_q, 9), (1, 2, t_k, 9), (1, 2, t_k, 9), (1, 2, t_q, 9)], (1.0,) * 4)
    vis = _visible(t_q, t_k, causal, window)
    rng = np.random.default_rng(1)
    with tiles(impl, SMALL_TILES):
        (out, dq, dk, dv), _ = run(impl, q, k, v, g, causal, window, 0.0, 0, 0.3)
        assert np.all(dk[..., ~vis.any(0), :] == 0) and np.all(dv[..., ~vis.any(0), :] == 0)
        for j in range(0, t_k, 3 if t_k < 100 else 7):
            k2, v2 = k.copy(), v.copy()
            k2[..., j, :] += rng.standard_normal(9).astype(np.float32) * 5
            v2[..., j, :] += rng.standard_normal(9).astype(np.float32) * 5
            (out2, dq2, _, _), _ = run(impl, q, k2, v2, g, causal, window, 0.0, 0, 0.3)
            blind = ~vis[:, j]
            np.testing.assert_array_equal(out2[..., blind, :], out[..., blind, :])
            np.testing.assert_array_equal(dq2[..., blind, :], dq[..., blind, :])
            assert np.abs(out2[..., vis[:, j], :] - out[..., vis[:, j], :]).max(initial=1.0) > 1e-4


@pytest.mark.parametrize("sq, sk, causal", [((0, 2, 5, 8), (0, 2, 5, 8), True), ((1, 2, 0, 8), (1, 2, 5, 8), True),
                                            ((2, 3, 4, 0), (2, 3, 4, 0), False)])
def test_empty_shapes(native_impl, sq, sk, causal):
    q, k, v, g = _arrays(0, [sq, sk, sk, sq], (1.0,) * 4)
    got, _ = run(native_impl, q, k, v, g, causal, None, 0.0, 0, 1.0)
    ref_out, ref_saved = R.attention_forward(q, k, v, causal, None, 0.0, 0, 1.0)
    ref_grads = R.attention_backward(g, q, k, v, 0.0, 1.0, ref_saved)
    for a, b in zip(got, (ref_out,) + tuple(ref_grads)):
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_saved_is_small(native_impl):
    """saved = (out, row max, row sum, causal, window, seed mod 2^64): no Tq x Tk matrix is kept."""
    to = native_impl.to
    q, k, v = (to(a) for a in _arrays(0, [(2, 3, 40, 16)] * 3, (1.0,) * 3))
    seed = 2**64 + 5 if native_impl.device == "cuda" else 5
    out, saved = native_impl.kernel("attention").forward(q, k, v, True, None, 0.1, seed, 0.25)
    o, m, l, causal, window, seed = saved
    assert o is out and m.shape == l.shape == (2, 3, 40) and (causal, window, seed) == (True, None, 5)
    assert sum(a.nbytes for a in (m, l)) == 2 * 2 * 3 * 40 * 4


@pytest.mark.skipif(not hasattr(CPU, "attention_forward") or not kernels.native_enabled(),
                    reason="tinygpt._C is not built (or TINYGPT_NATIVE=0)")
def test_cpu_thread_count_does_not_change_results():
    q, k, v, g = _arrays(5, [(1, 2, 150, 32)] * 4, (1.0,) * 4)  # 2 heads: backward splits key blocks
    n = CPU.get_num_threads()
    try:
        CPU.set_num_threads(1)
        o1, s1 = CPU.attention_forward(q, k, v, True, None, 0.1, 7, 0.2)
        g1 = CPU.attention_backward(g, q, k, v, 0.1, 0.2, s1)
        CPU.set_num_threads(max(n, 3))
        o2, s2 = CPU.attention_forward(q, k, v, True, None, 0.1, 7, 0.2)
        g2 = CPU.attention_backward(g, q, k, v, 0.1, 0.2, s2)
    finally:
        CPU.set_num_threads(n)
    np.testing.assert_array_equal(o1, o2)  # forward tasks are independent: bit-identical
    for a, b in zip(g1, g2):  # dq may be summed over key-block splits in another order
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_cuda_deterministic(cuda_impl):
    """No atomics: two runs give bit-identical outputs and gradients."""
    q, k, v, g = _arrays(5, [(2, 2, 300, 64)] * 4, (1.0,) * 4)
    r1, _ = run(cuda_impl, q, k, v, g, True, None, 0.1, 7, 0.125)
    r2, _ = run(cuda_impl, q, k, v, g, True, None, 0.1, 7, 0.125)
    for a, b in zip(r1, r2):
        np.testing.assert_array_equal(a, b)


def test_cuda_matches_cpu_kernel_if_built(cuda_impl):
    """Same saved layout and values as the CPU kernel (row max and row sum)."""
    if not hasattr(CPU, "attention_forward"):
        pytest.skip("no CPU attention kernel")
    q, k, v, g = _arrays(9, [(2, 3, 70, 32), (2, 3, 90, 32), (2, 3, 90, 32), (2, 3, 70, 32)], (1.0,) * 4)
    to, host = cuda_impl.to, cuda_impl.host
    out, saved = cuda_impl.kernel("attention").forward(to(q), to(k), to(v), True, 30, 0.2, 11, 0.2)
    out_c, saved_c = CPU.attention_forward(q, k, v, True, 30, 0.2, 11, 0.2)
    np.testing.assert_allclose(host(out), out_c, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(host(saved[1]), saved_c[1], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(host(saved[2]), saved_c[2], rtol=1e-4)
    assert saved[3:] == saved_c[3:]


# ------------------------------------------------------------------ argument errors
def _good(to):
    return tuple(to(a) for a in _arrays(0, [(1, 2, 4, 8)] * 3, (1.0,) * 3))


# (mutate(to, q, k, v), exception on the CPU, on CUDA, message: CPU's|CUDA's)
FORWARD_ERRORS = [
    (lambda to, q, k, v: (q.astype(np.float64), k, v), ValueError, TypeError,
     "attention_forward: q:? (must be float32|expected dtype float32)"),
    (lambda to, q, k, v: (q, k.astype(np.float16), v), ValueError, TypeError,
     "attention_forward: k:? (must be float32|expected dtype float32)"),
    (lambda to, q, k, v: (q, k, to(np.ones((1, 2, 8, 4), np.float32)).swapaxes(-1, -2)), ValueError, ValueError,
     "attention_forward: v:? (must be C-contiguous|expected a C-contiguous array)"),
    (lambda to, q, k, v: (q[0, 0, 0], k, v), ValueError, ValueError, r"attention_forward: q must be \(..., Tq, hs\)"),
    (lambda to, q, k, v: (q, k[0], v), ValueError, ValueError,
     "attention_forward: k must (have q's number of dimensions|be)"),
    (lambda to, q, k, v: (q, to(np.ones((1, 3, 4, 8), np.float32)), v), ValueError, ValueError,
     "attention_forward: k must (have q's leading dims|be)"),
    (lambda to, q, k, v: (q, to(np.ones((1, 2, 4, 7), np.float32)), v), ValueError, ValueError,
     "attention_forward: k must (have q's head size|be)"),
    (lambda to, q, k, v: (q, k, to(np.ones((1, 2, 5, 8), np.float32))), ValueError, ValueError,
     "attention_forward: v must match k"),
]


@pytest.mark.parametrize("mutate, cpu_exc, cuda_exc, match", FORWARD_ERRORS)
def test_forward_argument_errors(native_impl, mutate, cpu_exc, cuda_exc, match):
    q, k, v = mutate(native_impl.to, *_good(native_impl.to))
    with pytest.raises(cuda_exc if native_impl.device == "cuda" else cpu_exc, match=match):
        native_impl.kernel("attention").forward(q, k, v, True, None, 0.0, 0, 1.0)


def test_option_errors(native_impl):
    fwd, cuda = native_impl.kernel("attention").forward, native_impl.device == "cuda"
    q, k, v = _good(native_impl.to)
    with pytest.raises(ValueError, match="attention_forward: window must be None or a positive int"):
        fwd(q, k, v, True, 0, 0.0, 0, 1.0)
    with pytest.raises(ValueError, match=r"attention_forward: dropout_p:? must be in \[0, 1\)"):
        fwd(q, k, v, True, None, 1.0, 0, 1.0)
    with pytest.raises(TypeError if cuda else ValueError, match="attention_forward: seed:? (must be|expected) an int"):
        fwd(q, k, v, True, None, 0.1, 1.5, 1.0)
    with pytest.raises(ValueError, match="sees no key.*Tq <= Tk"):
        fwd(q, k[..., :3, :].copy(), v[..., :3, :].copy(), True, None, 0.0, 0, 1.0)
    if cuda:
        with pytest.raises(TypeError, match="attention_forward: q: expected a cupy array"):
            fwd(tg.backend.cupy().asnumpy(q), k, v, True, None, 0.0, 0, 1.0)
        big = native_impl.to(np.ones((1, 2, 4, 300), np.float32))
        with pytest.raises(ValueError, match="attention_forward: head sizes up to 256"):
            fwd(big, big, v, True, None, 0.0, 0, 1.0)
    else:
        with pytest.raises(ValueError, match="set_isa: name must be"):
            CPU.set_isa("sse9")
        with pytest.raises(ValueError, match="attention_tiles: fwd_br must be a multiple of 16"):
            CPU.attention_tiles(fwd_br=20)


def test_backward_argument_errors(native_impl):
    kern, cuda = native_impl.kernel("attention"), native_impl.device == "cuda"
    q, k, v = _good(native_impl.to)
    out, saved = kern.forward(q, k, v, True, None, 0.0, 0, 1.0)
    with pytest.raises(ValueError, match=r"attention_backward: grad:? (must have|expected) shape \(1, 2, 4, 8\)"):
        kern.backward(out[..., :3, :].copy(), q, k, v, 0.0, 1.0, saved)
    with pytest.raises(TypeError if cuda else ValueError,
                       match="attention_backward: grad:? (must be float32|expected dtype float32)"):
        kern.backward(out.astype(np.float64), q, k, v, 0.0, 1.0, saved)
    with pytest.raises(ValueError, match="attention_backward: saved must be the 6-tuple"):
        kern.backward(out, q, k, v, 0.0, 1.0, saved[:3])
    with pytest.raises(ValueError, match=r"attention_backward: saved row max:? (must have|expected) shape \(1, 2, 4\)"):
        kern.backward(out, q, k, v, 0.0, 1.0, (out, saved[1][..., :2].copy()) + tuple(saved[2:]))


# ------------------------------------------------------------------ dispatch and autograd
@pytest.mark.skipif(not hasattr(CPU, "attention_forward"), reason="tinygpt._C is not built")
def test_dispatch():
    q, k, v = _good(lambda a: a)
    with kernels.use_native(True):  # also under TINYGPT_NATIVE=0
        assert kernels.select("attention", q, k, v).name == "native-cpu"
    assert kernels.select("attention", q.astype(np.float64), k, v).name == "reference"
    assert kernels.select("attention", np.swapaxes(q, -1, -2), k, v).name == "reference"
    with kernels.use_native(False):
        assert kernels.select("attention", q, k, v).name == "reference"


@pytest.mark.parametrize("causal, window, p", [(True, None, 0.0), (True, 5, 0.2), (False, None, 0.1), (False, 4, 0.0)])
def test_autograd_native_matches_reference(causal, window, p):
    qa, ka, va, ga = _arrays(2, [(2, 3, 21, 12), (2, 3, 26, 12), (2, 3, 26, 12), (2, 3, 21, 12)], (1.0,) * 4)
    results = {}
    for native in (True, False):
        with kernels.use_native(native):
            q, k, v = (tg.Tensor(a, requires_grad=True) for a in (qa, ka, va))
            tg.manual_seed(42)  # same seed draw -> same dropout mask on both paths
            out = F.scaled_dot_product_attention(q, k, v, causal=causal, dropout_p=p, window=window)
            (out * tg.Tensor(ga)).sum().backward()
            results[native] = [out.numpy(), q.grad.numpy(), k.grad.numpy(), v.grad.numpy()]
    for a, b in zip(results[True], results[False]):
        np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5)  # float32 both ways, different summation orders


# ------------------------------------------------------------------ qkv_attention: packed (B, T, 3C) in place
def _qkv(seed, B, T, nh, hs, mag=1.0, dtype=np.float32):
    rng = np.random.default_rng(seed)
    qkv = (rng.standard_normal((B, T, 3 * nh * hs)) * mag).astype(dtype)
    g = rng.standard_normal((B, T, nh * hs)).astype(dtype)
    return qkv, g


def _split_heads_run(impl, qkv, g, nh, causal, window, p, seed, scale):
    """attention on split heads, merged (host arrays): what the packed kernels must equal exactly."""
    q, k, v = R.split_qkv(qkv, nh)
    (out, dq, dk, dv), saved = run(impl, q, k, v, R.split_heads(g, nh), causal, window, p, seed, scale)
    return R.merge_heads(out), impl.host(saved[1:3]), R.merge_qkv(dq, dk, dv)


def _packed_run(impl, qkv, g, nh, causal, window, p, seed, scale):
    kern = impl.kernel("qkv_attention")
    qkvd = impl.to(qkv)
    y, saved = kern.forward(qkvd, nh, causal, window, p, seed, scale)
    dqkv = kern.backward(impl.to(g), qkvd, nh, p, scale, saved)
    return impl.host(y), impl.host(saved[1:3]), impl.host(dqkv)


QKV_LIMITS = {"cuda": dict(t=140, nh=[1, 2, 3, 6], hs=[1, 7, 16, 33, 64, 100, 128, 256], window=90),
              "default": dict(t=80, nh=[1, 2, 3, 4], hs=[1, 5, 16, 20, 32, 33, 64], window=90)}


@st.composite
def qkv_problem(draw, limits):
    return dict(B=draw(st.integers(1, 3)), T=draw(st.integers(1, limits["t"])), nh=draw(st.sampled_from(limits["nh"])),
                hs=draw(st.sampled_from(limits["hs"])),
                window=draw(st.one_of(st.none(), st.integers(1, limits["window"]))),
                p=draw(st.sampled_from([0.0, 0.0, 0.1, 0.2, 0.5])), causal=draw(st.booleans()),
                mag=draw(st.sampled_from([0.1, 1.0, 30.0])), seed=draw(st.integers(0, 2**63 - 1)),
                tile=draw(st.sampled_from(TILES)), data=draw(st.integers(0, 2**32 - 1)))


def check_packed_equals_split_heads(impl, B, T, nh, hs, window, p, causal, mag, seed, tile, data):
    """The packed kernels read q, k, v in place and write out / dqkv merged: the same arithmetic as attention
    on split heads, so the results (and the saved row max and sum) are identical, not merely close."""
    qkv, g = _qkv(data, B, T, nh, hs, mag)
    args = (qkv, g, nh, causal, window, p, seed, 1.0 / math.sqrt(hs))
    with tiles(impl, tile):
        y, stats, dqkv = _packed_run(impl, *args)
        y_ref, stats_ref, dqkv_ref = _split_heads_run(impl, *args)
    assert y.shape == (B, T, nh * hs) and dqkv.shape == qkv.shape and y.dtype == dqkv.dtype == np.float32
    np.testing.assert_array_equal(y, y_ref)
    for a, b in zip(stats, stats_ref):  # row max, row sum (B, nh, T)
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(dqkv, dqkv_ref)


@given(data=st.data())
def test_qkv_packed_equals_split_heads(native_impl, data):
    problem = data.draw(qkv_problem(native_impl.limit(QKV_LIMITS)), label="problem")
    check_packed_equals_split_heads(native_impl, **problem)


@pytest.mark.parametrize("c", [
    dict(B=1, T=1, nh=1, hs=1, window=None, p=0.0, causal=True, mag=1.0, seed=0, tile=TILES[0], data=0),
    dict(B=2, T=65, nh=3, hs=33, window=7, p=0.5, causal=True, mag=30.0, seed=2**63 - 1, tile=TILES[1], data=1),
    dict(B=2, T=130, nh=3, hs=64, window=None, p=0.1, causal=True, mag=1.0, seed=5, tile=TILES[3], data=0),
], ids=["one-token", "dropout-window-edges", "3-query-tiles"])
def test_qkv_packed_examples(native_impl, c):
    check_packed_equals_split_heads(native_impl, **c)


@pytest.mark.skipif(not hasattr(CPU, "qkv_attention_forward"), reason="tinygpt._C is not built")
@pytest.mark.parametrize("B, T, nh, hs, window, p", [
    (1, 300, 1, 32, None, 0.0),  # one head: backward splits its key blocks over tasks (dq summed)
    (1, 257, 2, 20, 50, 0.1),    # two heads, split too; hs not a multiple of 16
    (4, 256, 6, 64, None, 0.2),  # the larger training config's shape
])
def test_qkv_cpu_long_sequences_and_split_backward(B, T, nh, hs, window, p):
    impl = Impl(f"cpu-{DEFAULT_ISA}")
    qkv, g = _qkv(T, B, T, nh, hs)
    with running(impl):
        y, _, dqkv = _packed_run(impl, qkv, g, nh, True, window, p, 11, 0.125)
        y_ref, _, dqkv_ref = _split_heads_run(impl, qkv, g, nh, True, window, p, 11, 0.125)
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_array_equal(dqkv, dqkv_ref)


@pytest.mark.parametrize("B, T, nh, hs, window", [(2, 40, 4, 16, 9), (2, 77, 4, 32, None)])
def test_qkv_matches_float64_reference(native_impl, B, T, nh, hs, window):
    """Directly against the float64 reference, with attention's bound on the split heads."""
    qkv, g = _qkv(3 + T, B, T, nh, hs)
    scale = 1.0 / math.sqrt(hs)
    y, _, dqkv = _packed_run(native_impl, qkv, g, nh, True, window, 0.0, 0, scale)
    q, k, v = R.split_qkv(qkv, nh)
    results = dict(out=R.split_heads(y, nh))
    results.update(zip(("dq", "dk", "dv"), R.split_qkv(dqkv, nh)))
    assert_attention_within_bound(results, q, k, v, R.split_heads(g, nh), True, window, 0.0, 0, scale,
                                  native_impl.limit(C1), native_impl.limit(C2), f"{native_impl} packed")
    y64, s64 = R.qkv_attention_forward(qkv.astype(np.float64), nh, True, window, 0.0, 0, scale)
    d64 = R.qkv_attention_backward(g.astype(np.float64), qkv.astype(np.float64), nh, 0.0, scale, s64)
    np.testing.assert_allclose(y, y64, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dqkv, d64, rtol=1e-4, atol=1e-5)


def test_qkv_empty_batch(native_impl):
    kern, to = native_impl.kernel("qkv_attention"), native_impl.to
    qkv = to(np.zeros((0, 5, 12), np.float32))
    y, saved = kern.forward(qkv, 2, True, None, 0.0, 0, 0.5)
    assert y.shape == (0, 5, 4) and saved[1].shape == (0, 2, 5)
    assert kern.backward(to(np.zeros((0, 5, 4), np.float32)), qkv, 2, 0.0, 0.5, saved).shape == (0, 5, 12)


def test_qkv_argument_errors(native_impl):
    kern, to, cuda = native_impl.kernel("qkv_attention"), native_impl.to, native_impl.device == "cuda"
    f, b = kern.forward, kern.backward
    qkv, g = (to(a) for a in _qkv(0, 2, 6, 2, 4))
    with pytest.raises(ValueError,
                       match=r"qkv_attention_forward: qkv:? (must be \(B, T, 3 \* n_embd\)|expected 3 dim)"):
        f(qkv[0], 2, True, None, 0.0, 0, 1.0)
    with pytest.raises(ValueError, match="qkv_attention_forward: qkv's last dim 24 must be 3 \\* n_embd .* n_head 5"):
        f(qkv, 5, True, None, 0.0, 0, 1.0)
    with pytest.raises(ValueError, match="qkv_attention_forward: .*n_head (must be >= 1|0)"):
        f(qkv, 0, True, None, 0.0, 0, 1.0)
    with pytest.raises(TypeError if cuda else ValueError,
                       match="qkv_attention_forward: qkv:? (must be float32|expected dtype float32)"):
        f(qkv.astype(np.float64), 2, True, None, 0.0, 0, 1.0)
    with pytest.raises(ValueError, match="qkv_attention_forward: qkv:? (must be C-contiguous|expected a C-contiguous)"):
        f(qkv[:, ::2], 2, True, None, 0.0, 0, 1.0)
    with pytest.raises(ValueError, match="qkv_attention_forward: window must be None or a positive int"):
        f(qkv, 2, True, 0, 0.0, 0, 1.0)
    with pytest.raises(ValueError, match=r"qkv_attention_forward: dropout_p:? must be in \[0, 1\)"):
        f(qkv, 2, True, None, 1.0, 0, 1.0)
    y, saved = f(qkv, 2, True, None, 0.0, 0, 1.0)
    with pytest.raises(ValueError, match=r"qkv_attention_backward: grad:? (must have|expected) shape \(2, 6, 8\)"):
        b(g[:, :5].copy(), qkv, 2, 0.0, 1.0, saved)
    with pytest.raises(ValueError, match="qkv_attention_backward: saved must be the 6-tuple"):
        b(g, qkv, 2, 0.0, 1.0, saved[:3])
    with pytest.raises(ValueError,
                       match=r"qkv_attention_backward: saved row max:? (must have|expected) shape \(2, 2, 6\)"):
        b(g, qkv, 2, 0.0, 1.0, (y, saved[1][:, :1].copy()) + tuple(saved[2:]))


def test_qkv_dispatch():
    qkv, _ = _qkv(0, 1, 4, 2, 8)
    if hasattr(CPU, "qkv_attention_forward"):
        with kernels.use_native(True):  # also under TINYGPT_NATIVE=0
            assert kernels.select("qkv_attention", qkv).name == "native-cpu"
    assert kernels.select("qkv_attention", qkv.astype(np.float64)).name == "reference"
    with kernels.use_native(False):
        assert kernels.select("qkv_attention", qkv).name == "reference"


def test_qkv_dispatch_on_cuda(cuda_impl):
    qkv, _ = _qkv(0, 1, 4, 2, 8)
    assert kernels.select("qkv_attention", cuda_impl.to(qkv)).forward is kernels.cuda.attention.qkv_attention_forward


# ------------------------------------------------------------------ qkv_attention through tinygpt.functional
def test_qkv_functional_argument_errors():
    x = tg.Tensor(np.zeros((1, 4, 12), np.float32))
    with pytest.raises(ValueError, match=r"qkv_attention: qkv must be \(B, T, 3 \* n_embd\)"):
        F.qkv_attention(tg.Tensor(np.zeros((4, 12), np.float32)), 2)
    with pytest.raises(ValueError, match="qkv_attention: qkv's last dim 12 must be 3 \\* n_embd"):
        F.qkv_attention(x, 3)
    with pytest.raises(ValueError, match="qkv_attention: window must be a positive int"):
        F.qkv_attention(x, 2, window=0)
    with pytest.raises(ValueError, match=r"qkv_attention: dropout_p must be in \[0, 1\)"):
        F.qkv_attention(x, 2, dropout_p=1.0)


@pytest.mark.parametrize("window", [None, 3])
def test_qkv_reference_gradients_float64(window):
    qkv, _ = _qkv(1, 2, 7, 2, 3, dtype=np.float64)
    with kernels.use_native(False):
        check_grads(lambda a: F.qkv_attention(a, 2, window=window), qkv)


@pytest.mark.parametrize("use_native", [True, False])
@pytest.mark.parametrize("window, p", [(None, 0.0), (4, 0.2)])
def test_qkv_equals_unpacked_path(use_native, window, p):
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
    """CausalSelfAttention runs qkv_attention without a KV cache; generation's cached path gives the same."""
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
    from tinygpt.models.generation import KVCache  # noqa: PLC0415

    cache = KVCache(1, batch_size=2, n_head=4, head_size=4, max_length=16)
    with tg.no_grad():
        y_cached = attn(tg.Tensor(x), kv_cache=cache.layer(0)).numpy()
    np.testing.assert_allclose(y_cached, y, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------ kv_attention: decoding against a KV cache
def _kv_decode(impl, qkv, nh, chunks, L, window=None, p=0.0, seed=0, fill=7.0):
    """Feed qkv (B, S, 3C) through kv_attention in chunks of the given lengths into a cache of L positions
    (initialised to `fill`); returns the outputs (B, S, C) and the caches, all on the host."""
    B, S, C3 = qkv.shape
    hs = C3 // (3 * nh)
    fn = impl.kernel("kv_attention")
    K, V = (impl.to(np.full((B, nh, L, hs), fill, np.float32)) for _ in range(2))
    outs, start = [], 0
    for n in chunks:
        outs.append(impl.host(fn(impl.to(np.ascontiguousarray(qkv[:, start:start + n])), K, V, start, nh, window, p,
                                 seed, 1.0 / math.sqrt(hs))))
        start += n
    return np.concatenate(outs, axis=1), impl.host(K), impl.host(V)


@st.composite
def kv_problem(draw):
    S = draw(st.integers(1, 70))
    cuts = sorted(draw(st.lists(st.integers(1, S - 1), max_size=3, unique=True))) if S > 1 else []
    return dict(B=draw(st.integers(1, 2)), S=S, chunks=[b - a for a, b in zip([0] + cuts, cuts + [S])],
                nh=draw(st.sampled_from([1, 2, 3])), hs=draw(st.sampled_from([1, 5, 16, 33, 64])),
                window=draw(st.one_of(st.none(), st.integers(1, 40))), extra=draw(st.integers(0, 9)),
                data=draw(st.integers(0, 2**32 - 1)))


def check_kv_attention(impl, B, S, chunks, nh, hs, window, extra, data):
    """Prefill and decode in chunks: every chunk's output is qkv_attention's over the whole sequence for its
    queries (float64 reference, float32 tolerance); the cache holds exactly the keys and values of the
    positions fed and nothing beyond them is written."""
    qkv, _ = _qkv(data, B, S, nh, hs)
    y, K, V = _kv_decode(impl, qkv, nh, chunks, S + extra, window)
    y64, _ = R.qkv_attention_forward(qkv.astype(np.float64), nh, True, window, 0.0, 0, 1.0 / math.sqrt(hs))
    assert y.shape == (B, S, nh * hs) and y.dtype == np.float32
    np.testing.assert_allclose(y, y64, rtol=1e-5, atol=2e-6)
    _, k, v = R.split_qkv(qkv, nh)
    np.testing.assert_array_equal(K[:, :, :S], k)
    np.testing.assert_array_equal(V[:, :, :S], v)
    assert (K[:, :, S:] == 7.0).all() and (V[:, :, S:] == 7.0).all()


@given(problem=kv_problem())
def test_kv_attention_equals_attention_over_the_whole_sequence(impl, problem):
    check_kv_attention(impl, **problem)


@pytest.mark.parametrize("c", [
    dict(B=1, S=1, chunks=[1], nh=1, hs=1, window=None, extra=0, data=0),
    dict(B=2, S=300, chunks=[200] + [1] * 100, nh=2, hs=64, window=None, extra=5, data=1),  # many key blocks
    dict(B=2, S=150, chunks=[100, 1, 1, 48], nh=3, hs=33, window=17, extra=0, data=2),     # band inside the cache
], ids=["one-token", "long-decode", "banded"])
def test_kv_attention_examples(impl, c):
    check_kv_attention(impl, **c)


@pytest.mark.parametrize("window", [None, 4])
@pytest.mark.parametrize("p", [0.0, 0.3])
def test_kv_attention_native_equals_reference(native_impl, window, p):
    """Same inputs, same seed: the native kernel gives the reference's numbers (its dropout mask bit for bit:
    with p = 0.3 a wrong mask bit changes an output by ~|v|)."""
    qkv, _ = _qkv(5, 2, 40, 2, 16)
    ref = _kv_decode(Impl("reference"), qkv, 2, [31, 1, 8], 48, window, p, seed=99)
    got = _kv_decode(native_impl, qkv, 2, [31, 1, 8], 48, window, p, seed=99)
    np.testing.assert_allclose(got[0], ref[0], rtol=1e-5, atol=2e-6)
    for a, b in zip(got[1:], ref[1:]):
        np.testing.assert_array_equal(a, b)


def test_kv_attention_cpu_reads_only_the_band_and_the_filled_positions(cpu_impl):
    """The CPU kernel reads a banded layer's keys from its window only and nothing past the new tokens:
    NaN everywhere else in the cache leaves the output unchanged (an attention weight of 0 times NaN is NaN)."""
    B, nh, hs, start, T, L, window = 2, 3, 8, 20, 2, 40, 5
    qkv, _ = _qkv(3, B, start + T, nh, hs)
    fn, scale = cpu_impl.kernel("kv_attention"), 1.0 / math.sqrt(hs)
    clean = [np.zeros((B, nh, L, hs), np.float32) for _ in range(2)]
    fn(np.ascontiguousarray(qkv[:, :start]), *clean, 0, nh, window, 0.0, 0, scale)
    poisoned = [c.copy() for c in clean]
    for c in poisoned:
        c[:, :, :start - window + 1] = np.nan  # before the band of the first new token (position start)
        c[:, :, start + T:] = np.nan           # not filled yet
    new = np.ascontiguousarray(qkv[:, start:])
    y = fn(new, *clean, start, nh, window, 0.0, 0, scale)
    y_poisoned = fn(new, *poisoned, start, nh, window, 0.0, 0, scale)
    np.testing.assert_array_equal(y_poisoned, y)


def test_kv_attention_argument_errors(native_impl):
    fn = native_impl.kernel("kv_attention")
    qkv = np.zeros((2, 3, 24), np.float32)
    K, V = np.zeros((2, 2, 8, 4), np.float32), np.zeros((2, 2, 8, 4), np.float32)
    with pytest.raises(ValueError, match="3 new tokens at position 6 do not fit the cache's 8 positions"):
        fn(qkv, K, V, 6, 2, None, 0.0, 0, 0.5)
    with pytest.raises(ValueError, match=r"k_cache must be \(B 2, n_head 2, max_length, head size 4\)"):
        fn(qkv, np.zeros((2, 2, 8, 5), np.float32), V, 0, 2, None, 0.0, 0, 0.5)
    with pytest.raises(ValueError, match="v_cache must have k_cache's shape"):
        fn(qkv, K, np.zeros((2, 2, 9, 4), np.float32), 0, 2, None, 0.0, 0, 0.5)
    with pytest.raises(ValueError, match="v_cache must be C-contiguous"):
        fn(qkv, K, np.zeros((2, 2, 4, 8), np.float32).swapaxes(2, 3), 0, 2, None, 0.0, 0, 0.5)
    frozen = V.copy()
    frozen.flags.writeable = False
    with pytest.raises(ValueError, match="v_cache must be writable"):
        fn(qkv, K, frozen, 0, 2, None, 0.0, 0, 0.5)
    with pytest.raises(ValueError, match="k_cache and v_cache must be different arrays"):
        fn(qkv, K, K, 0, 2, None, 0.0, 0, 0.5)
    with pytest.raises(ValueError, match="window must be None or a positive int"):
        fn(qkv, K, V, 0, 2, 0, 0.0, 0, 0.5)


def test_kv_attention_functional_checks():
    qkv = tg.Tensor(np.zeros((1, 2, 12), np.float32), requires_grad=True)
    K, V = np.zeros((1, 2, 4, 2), np.float32), np.zeros((1, 2, 4, 2), np.float32)
    with pytest.raises(RuntimeError, match="kv_attention: inference only"):
        F.kv_attention(qkv, K, V, 0, 2)
    with tg.no_grad():
        with pytest.raises(ValueError, match="2 new tokens at position 3 do not fit the cache's 4 positions"):
            F.kv_attention(qkv, K, V, 3, 2)
        with pytest.raises(TypeError, match="k_cache must be a floating-point array"):
            F.kv_attention(qkv, K.astype(np.int32), V, 0, 2)
        with pytest.raises(TypeError, match="float32 mixed with float64|one dtype|dtype"):
            F.kv_attention(qkv, K.astype(np.float64), V, 0, 2)
        y = F.kv_attention(qkv, K, V, 0, 2)
    assert y.shape == (1, 2, 4) and not y.requires_grad


# ------------------------------------------------------------------ tinygpt.functional: float64 references, finite differences, torch
@st.composite
def attention_case(draw):
    B, nh, hs = draw(st.integers(1, 2)), draw(st.integers(1, 2)), draw(st.integers(1, 4))
    t_q = draw(st.integers(1, 5))
    t_k = draw(st.integers(t_q, 6))  # Tq <= Tk: queries are the last positions (a KV cache)
    causal = draw(st.booleans())
    window = draw(st.one_of(st.none(), st.integers(1, 4)))
    return (B, nh, t_q, hs), (B, nh, t_k, hs), causal, window


@given(case=attention_case(), seed=seeds)
def test_attention_float64_gradcheck(case, seed):
    sq, sk, causal, window = case
    q, k, v = rng_arrays(seed, sq, sk, sk, lo=-1.5, hi=1.5)
    out = check_grads(lambda q_, k_, v_: F.scaled_dot_product_attention(q_, k_, v_, causal=causal, window=window),
                      q, k, v)
    np.testing.assert_allclose(out, np_attention(q, k, v, causal, window), rtol=1e-10, atol=1e-12)


def test_attention_explicit_scale_and_non_causal_longer_queries():
    q, k, v = rng_arrays(0, (2, 5, 3), (2, 3, 3), (2, 3, 4))  # no head dim, Tq > Tk, hs_v != hs
    out = check_grads(lambda a, b, c: F.scaled_dot_product_attention(a, b, c, causal=False, scale=0.3), q, k, v)
    np.testing.assert_allclose(out, np_attention(q, k, v, False, None, scale=0.3), rtol=1e-10, atol=1e-12)


ATTN_CASES = [(True, None, 6, 6), (False, None, 6, 6), (True, 2, 6, 6), (False, 2, 6, 6), (True, 3, 2, 7),
              (True, None, 1, 5), (False, 3, 3, 7), (True, 1, 4, 4)]


@pytest.mark.parametrize("causal, window, t_q, t_k", ATTN_CASES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_attention_torch(kernel_impl, dtype, causal, window, t_q, t_k):
    torch = pytest.importorskip("torch")
    q, k, v = rng_arrays(5, (2, 3, t_q, 4), (2, 3, t_k, 4), (2, 3, t_k, 4))
    mask = torch.from_numpy(visible(t_q, t_k, causal, window))  # explicit: torch's is_causal aligns top-left
    tol = T64 if dtype == np.float64 else F32_GRAD
    out = compare_with_torch(
        lambda a, b, c: F.scaled_dot_product_attention(a, b, c, causal=causal, window=window),
        lambda a, b, c: tf().scaled_dot_product_attention(a, b, c, attn_mask=mask),
        q, k, v, dtype=dtype, **tol)
    np.testing.assert_allclose(out, np_attention(q, k, v, causal, window), **(T64 if dtype == np.float64 else F32))


@pytest.mark.parametrize("causal, window, t_q, t_k", ATTN_CASES)
def test_attention_cannot_see_outside_its_band(kernel_impl, causal, window, t_q, t_k):
    """Changing k/v at a key a query must not see leaves that query's output row unchanged;
    changing a key it does see changes it (so the test can fail)."""
    rng = np.random.default_rng(7)
    q, k, v = (rng.standard_normal(s).astype(np.float32) for s in [(1, 2, t_q, 4), (1, 2, t_k, 4), (1, 2, t_k, 4)])

    def attend(k_, v_):
        return F.scaled_dot_product_attention(tg.Tensor(q), tg.Tensor(k_), tg.Tensor(v_), causal=causal,
                                              window=window).numpy()

    base = attend(k, v)
    seen = visible(t_q, t_k, causal, window)
    for j in range(t_k):
        k2, v2 = k.copy(), v.copy()
        k2[..., j, :] += rng.standard_normal(4).astype(np.float32) * 3
        v2[..., j, :] += rng.standard_normal(4).astype(np.float32) * 3
        out = attend(k2, v2)
        for i in range(t_q):
            change = np.abs(out[..., i, :] - base[..., i, :]).max()
            if seen[i, j]:
                assert change > 1e-3, f"query {i} ignores visible key {j}"
            else:
                assert change <= 1e-6, f"query {i} sees masked key {j} (change {change})"


def test_attention_single_token_returns_v(kernel_impl):
    q, k, v = rng_arrays(0, (2, 3, 1, 4), (2, 3, 1, 4), (2, 3, 1, 4))
    for causal in (True, False):
        out = F.scaled_dot_product_attention(tg.Tensor(q), tg.Tensor(k), tg.Tensor(v), causal=causal, window=1)
        np.testing.assert_allclose(out.numpy(), v, rtol=1e-12)


def test_attention_dropout_reproducible_and_unbiased(kernel_impl):
    q, k, v = (a.astype(np.float32) for a in rng_arrays(0, (1, 1, 4, 3), (1, 1, 4, 3), (1, 1, 4, 3)))
    args = [tg.Tensor(a) for a in (q, k, v)]
    tg.manual_seed(3)
    a = F.scaled_dot_product_attention(*args, dropout_p=0.2).numpy()
    tg.manual_seed(3)
    b = F.scaled_dot_product_attention(*args, dropout_p=0.2).numpy()
    np.testing.assert_array_equal(a, b)
    plain = np_attention(q.astype(np.float64), k.astype(np.float64), v.astype(np.float64), True, None)
    assert np.abs(a - plain).max() > 1e-3  # dropout did something
    # inverted dropout keeps the expectation: the mean over many masks approaches the plain output
    # (per-draw std < 0.5 here, so the std of a 4000-draw mean is < 0.008)
    mean = np.mean([F.scaled_dot_product_attention(*args, dropout_p=0.2).numpy() for _ in range(4000)], axis=0)
    np.testing.assert_allclose(mean, plain, atol=0.05)


def test_attention_dropout_finite_differences():
    q, k, v = rng_arrays(1, (1, 2, 3, 2), (1, 2, 3, 2), (1, 2, 3, 2))

    def fn(a, b, c):
        tg.manual_seed(9)
        return F.scaled_dot_product_attention(a, b, c, dropout_p=0.3)

    check_grads(fn, q, k, v)


def test_attention_errors():
    q = tg.randn(1, 2, 4, 8)
    with pytest.raises(ValueError, match="Tq <= Tk"):
        F.scaled_dot_product_attention(q, tg.randn(1, 2, 3, 8), tg.randn(1, 2, 3, 8))
    with pytest.raises(ValueError, match="do not match"):
        F.scaled_dot_product_attention(q, tg.randn(1, 2, 4, 7), tg.randn(1, 2, 4, 8))
    with pytest.raises(ValueError, match="window"):
        F.scaled_dot_product_attention(q, q, q, window=0)
    with pytest.raises(ValueError, match="dropout_p"):
        F.scaled_dot_product_attention(q, q, q, dropout_p=1.0)
