"""Native CPU attention (csrc/cpu/attention.cpp) against the float64 NumPy reference.

Forward and every backward output (dq, dk, dv) for causal / windowed / full attention, Tq <= Tk
(queries aligned to the last keys), head sizes that are not multiples of the SIMD width,
attention dropout whose mask must equal reference.dropout_mask's bit for bit, every SIMD code
path this CPU supports, and tile sizes small enough that tiny shapes cross many tiles.

Tolerance (see `assert_close_to_reference`): the native result is float32 throughout, so each
output is compared elementwise against a componentwise error bound of the form
    |native - ref| <= eps32 * (C1 + C2 * Smax) * nat
where nat is the float64 value of the same product with every factor replaced by its absolute
value (|P| @ |v| for out, |P|^T @ |dO| for dv, scale * |dS| @ |k| for dq, ...) — the classic
|fl(AB) - AB| <= gamma_K |A||B| bound — and Smax = max |q k^T * scale| accounts for the score
error dS ~ eps * |S| that softmax turns into a relative error of the probabilities. C1 covers the
length-K float32 accumulations (~sqrt(K) eps typical, K eps worst; K <= 1024 here, so C1 = 64
is 2x the sqrt growth at K = 1024, with room for the exp's 2 ulp). C2 = 32 covers the score
error: S carries ~sqrt(hs) eps |S| (hs <= 100) plus the rounding of q * scale, and softmax
doubles it through its normaliser. Calibration over 300 random problems (all SIMD paths): the
worst |err| / (eps * nat * (1 + Smax)) was 6.6, so the bound holds with a 5x (large Smax) to
10x (small Smax) margin, while a wrong mask, tile or dropout bit gives errors of order nat itself.
"""
import math

import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

import tinygpt as tg
import tinygpt.functional as F
from tinygpt import kernels
from tinygpt.kernels import reference as R

from kernel_checks import assert_attention_within_bound
from kernel_checks import random_arrays as _arrays

_cpu = getattr(kernels._native, "cpu", None)
pytestmark = pytest.mark.skipif(not hasattr(_cpu, "attention_forward"),
                                reason="tinygpt._C is not built or has no cpu.attention_forward")

C1, C2 = 64.0, 32.0
ISAS = ["avx512", "avx2", "baseline"]
TILES = [(64, 64, 64, 64), (16, 7, 16, 5), (16, 16, 32, 13), (32, 64, 32, 64)]  # (fwd_br, fwd_bc, bwd_br, bwd_bc)


def _isa_available(name):
    if _cpu is None:
        return False
    before = _cpu.isa()
    try:
        _cpu.set_isa(name)
        return True
    except ValueError:
        return False
    finally:
        _cpu.set_isa(before)


class use_isa:
    """Context manager: run on SIMD path `name` (skips the test where this CPU lacks it)."""

    def __init__(self, name):
        if not _isa_available(name):
            pytest.skip(f"this CPU does not support the {name} path")
        self.name = name

    def __enter__(self):
        self.before = _cpu.isa()
        _cpu.set_isa(self.name)

    def __exit__(self, *exc):
        _cpu.set_isa(self.before)


@pytest.fixture(params=ISAS)
def isa(request):
    """Run the test on each SIMD path this CPU supports (skipping the others)."""
    with use_isa(request.param):
        yield request.param


class tiles:
    """Context manager: temporarily set the kernel's tile sizes."""

    def __init__(self, t):
        self.t = t

    def __enter__(self):
        self.before = _cpu.attention_tiles()
        _cpu.attention_tiles(*self.t)

    def __exit__(self, *exc):
        _cpu.attention_tiles(*self.before)


def assert_close_to_reference(q, k, v, g, causal, window, p=0.0, seed=0, scale=None):
    scale = 1.0 / math.sqrt(max(q.shape[-1], 1)) if scale is None else scale
    out, saved = _cpu.attention_forward(q, k, v, causal, window, p, seed, scale)
    dq, dk, dv = _cpu.attention_backward(g, q, k, v, p, scale, saved)
    assert_attention_within_bound(dict(out=out, dq=dq, dk=dk, dv=dv), q, k, v, g, causal, window, p, seed, scale,
                                  C1, C2, "native")
    return out


@st.composite
def attention_problem(draw):
    lead = draw(st.sampled_from([(1, 1), (2, 3), (1, 2), (3,), (2, 1, 2)]))
    causal = draw(st.booleans())
    t_q = draw(st.integers(1, 70))
    t_k = draw(st.integers(t_q, t_q + 40)) if causal or draw(st.booleans()) else draw(st.integers(1, 70))
    window = draw(st.one_of(st.none(), st.integers(1, 80)))
    if not causal and window is not None:  # every query must see a key: position + window > 0
        t_q = min(t_q, t_k + window - 1)
    hs = draw(st.sampled_from([1, 2, 7, 16, 33, 64, 100]))
    hv = hs if draw(st.booleans()) else draw(st.sampled_from([1, 5, 16, 40]))
    mags = (draw(st.sampled_from([0.1, 1.0, 3.0])), draw(st.sampled_from([1.0, 3.0])), draw(st.sampled_from([1.0, 1e3])))
    p = draw(st.sampled_from([0.0, 0.0, 0.1, 0.5]))
    return dict(lead=lead, t_q=t_q, t_k=t_k, hs=hs, hv=hv, causal=causal, window=window, mags=mags, p=p,
                seed=draw(st.integers(0, 2**63 - 1)), tiles=draw(st.sampled_from(TILES)))


def _run_problem(c, data_seed):
    lead = c["lead"]
    q, k, v, g = _arrays(data_seed, [lead + (c["t_q"], c["hs"]), lead + (c["t_k"], c["hs"]),
                                     lead + (c["t_k"], c["hv"]), lead + (c["t_q"], c["hv"])],
                         c["mags"] + (1.0,))
    with tiles(c["tiles"]):
        assert_close_to_reference(q, k, v, g, c["causal"], c["window"], c["p"], c["seed"])


@given(c=attention_problem(), data_seed=st.integers(0, 2**32 - 1))
@example(c=dict(lead=(1, 1), t_q=1, t_k=1, hs=64, hv=64, causal=True, window=None, mags=(1.0, 1.0, 1.0), p=0.0,
                seed=0, tiles=TILES[0]), data_seed=0)
@example(c=dict(lead=(2, 2), t_q=9, t_k=23, hs=7, hv=5, causal=True, window=4, mags=(3.0, 3.0, 1e3), p=0.5,
                seed=2**63 - 1, tiles=TILES[1]), data_seed=1)
@pytest.mark.parametrize("isa_name", ISAS)
def test_matches_reference(isa_name, c, data_seed):
    with use_isa(isa_name):
        _run_problem(c, data_seed)


@pytest.mark.parametrize("lead, t_q, t_k, hs, causal, window, p", [
    ((1, 1), 1024, 1024, 64, True, None, 0.0),
    ((1, 2), 300, 300, 33, True, 77, 0.1),
    ((1, 1), 257, 700, 64, True, None, 0.0),
    ((2, 1), 333, 333, 100, False, None, 0.2),
    ((1, 1), 600, 600, 16, False, 129, 0.0),
])
def test_long_sequences(lead, t_q, t_k, hs, causal, window, p):
    q, k, v, g = _arrays(t_q + t_k, [lead + (t_q, hs), lead + (t_k, hs), lead + (t_k, hs), lead + (t_q, hs)],
                         (1.0, 1.0, 1.0, 1.0))
    assert_close_to_reference(q, k, v, g, causal, window, p, seed=t_q)


@pytest.mark.parametrize("hs", [1, 7, 33, 64, 100])
def test_single_token_and_head_sizes(isa, hs):
    q, k, v, g = _arrays(hs, [(2, 3, 1, hs)] * 4, (1.0,) * 4)
    out = assert_close_to_reference(q, k, v, g, True, None)
    np.testing.assert_allclose(out, v, rtol=1e-6)  # one key: softmax is exactly 1
    q, k, v, g = _arrays(hs + 1, [(2, 3, 13, hs)] * 4, (1.0,) * 4)
    assert_close_to_reference(q, k, v, g, True, None)


@pytest.mark.parametrize("causal, window, t_q, t_k", [(True, None, 37, 37), (True, 5, 30, 45), (False, 6, 33, 33),
                                                      (False, None, 20, 31)])
def test_dropout_mask_equals_reference(isa, causal, window, t_q, t_k):
    """q = 0 makes every visible key equally likely; v = identity then reads the mask off the output:
    out[i, j] = keep[i, j] / ((1 - p) * n_visible(i)). It must be reference.dropout_mask exactly."""
    p, seed, B, nh = 0.3, 987654321, 2, 3
    q = np.zeros((B, nh, t_q, 4), np.float32)
    k = np.random.default_rng(0).standard_normal((B, nh, t_k, 4)).astype(np.float32)
    v = np.broadcast_to(np.eye(t_k, dtype=np.float32), (B, nh, t_k, t_k)).copy()
    with tiles((16, 7, 16, 5)):
        out, _ = _cpu.attention_forward(q, k, v, causal, window, p, seed, 1.0)
    vis = R.attention_mask(t_q, t_k, causal, window, np)
    vis = np.ones((t_q, t_k), bool) if vis is None else vis
    keep = R.dropout_mask((B, nh, t_q, t_k), p, seed, np)
    np.testing.assert_array_equal(out != 0, keep & vis)
    np.testing.assert_allclose(out, (keep & vis) / ((1 - p) * vis.sum(-1, keepdims=True)), rtol=1e-6)


def test_dropout_outputs_and_grads_match_reference_with_same_seed(isa):
    q, k, v, g = _arrays(3, [(2, 2, 50, 24)] * 4, (1.0,) * 4)
    for seed in (0, 1, 2**62 + 12345):
        with tiles((16, 13, 16, 11)):
            assert_close_to_reference(q, k, v, g, True, 17, 0.25, seed)


@pytest.mark.parametrize("causal, window, t_q, t_k", [(True, None, 40, 40), (True, 6, 20, 47), (False, 9, 40, 40),
                                                      (False, None, 10, 12)])
def test_masked_keys_have_no_effect(isa, causal, window, t_q, t_k):
    """Perturbing a key/value a query cannot see leaves that query's output and dq row bit-identical;
    keys no query sees get exactly zero dk, dv."""
    q, k, v, g = _arrays(11, [(1, 2, t_q, 9), (1, 2, t_k, 9), (1, 2, t_k, 9), (1, 2, t_q, 9)], (1.0,) * 4)
    vis = R.attention_mask(t_q, t_k, causal, window, np)
    vis = np.ones((t_q, t_k), bool) if vis is None else vis
    rng = np.random.default_rng(1)
    with tiles((16, 7, 16, 5)):
        out, saved = _cpu.attention_forward(q, k, v, causal, window, 0.0, 0, 0.3)
        dq, dk, dv = _cpu.attention_backward(g, q, k, v, 0.0, 0.3, saved)
        assert np.all(dk[..., ~vis.any(0), :] == 0) and np.all(dv[..., ~vis.any(0), :] == 0)
        for j in range(0, t_k, 3):
            k2, v2 = k.copy(), v.copy()
            k2[..., j, :] += rng.standard_normal(9).astype(np.float32) * 5
            v2[..., j, :] += rng.standard_normal(9).astype(np.float32) * 5
            out2, saved2 = _cpu.attention_forward(q, k2, v2, causal, window, 0.0, 0, 0.3)
            dq2, _, _ = _cpu.attention_backward(g, q, k2, v2, 0.0, 0.3, saved2)
            blind = ~vis[:, j]
            np.testing.assert_array_equal(out2[..., blind, :], out[..., blind, :])
            np.testing.assert_array_equal(dq2[..., blind, :], dq[..., blind, :])
            assert np.abs(out2[..., vis[:, j], :] - out[..., vis[:, j], :]).max(initial=1.0) > 1e-4


@pytest.mark.parametrize("sq, sk, causal", [((0, 2, 5, 8), (0, 2, 5, 8), True), ((1, 2, 0, 8), (1, 2, 5, 8), True),
                                            ((2, 3, 4, 0), (2, 3, 4, 0), False)])
def test_empty_shapes(sq, sk, causal):
    q, k, v, g = _arrays(0, [sq, sk, sk, sq], (1.0,) * 4)
    out, saved = _cpu.attention_forward(q, k, v, causal, None, 0.0, 0, 1.0)
    grads = _cpu.attention_backward(g, q, k, v, 0.0, 1.0, saved)
    ref_out, ref_saved = R.attention_forward(q, k, v, causal, None, 0.0, 0, 1.0)
    ref_grads = R.attention_backward(g, q, k, v, 0.0, 1.0, ref_saved)
    for a, b in zip((out,) + tuple(grads), (ref_out,) + tuple(ref_grads)):
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_thread_count_does_not_change_results():
    q, k, v, g = _arrays(5, [(1, 2, 150, 32)] * 4, (1.0,) * 4)  # 2 heads: backward splits key blocks
    n = _cpu.get_num_threads()
    try:
        _cpu.set_num_threads(1)
        o1, s1 = _cpu.attention_forward(q, k, v, True, None, 0.1, 7, 0.2)
        g1 = _cpu.attention_backward(g, q, k, v, 0.1, 0.2, s1)
        _cpu.set_num_threads(max(n, 3))
        o2, s2 = _cpu.attention_forward(q, k, v, True, None, 0.1, 7, 0.2)
        g2 = _cpu.attention_backward(g, q, k, v, 0.1, 0.2, s2)
    finally:
        _cpu.set_num_threads(n)
    np.testing.assert_array_equal(o1, o2)  # forward tasks are independent: bit-identical
    for a, b in zip(g1, g2):  # dq may be summed over key-block splits in another order
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_saved_is_small():
    q, k, v = _arrays(0, [(2, 3, 40, 16)] * 3, (1.0,) * 3)
    out, saved = _cpu.attention_forward(q, k, v, True, None, 0.1, 5, 0.25)
    o, m, l, causal, window, seed = saved
    assert o is out and m.shape == l.shape == (2, 3, 40) and (causal, window, seed) == (True, None, 5)
    assert sum(a.nbytes for a in (m, l)) == 2 * 2 * 3 * 40 * 4  # no Tq x Tk matrix is kept


# ------------------------------------------------------------------ errors
def _good():
    q, k, v = _arrays(0, [(1, 2, 4, 8)] * 3, (1.0,) * 3)
    return q, k, v


@pytest.mark.parametrize("mutate, match", [
    (lambda q, k, v: (q.astype(np.float64), k, v), "attention_forward: q must be float32"),
    (lambda q, k, v: (q, k.astype(np.float16), v), "attention_forward: k must be float32"),
    (lambda q, k, v: (q, k, np.asfortranarray(np.ones((4, 8), np.float32))[None, None]), "attention_forward: v must be C-contiguous"),
    (lambda q, k, v: (q[0, 0, 0], k, v), r"attention_forward: q must be \(..., Tq, hs\)"),
    (lambda q, k, v: (q, k[0], v), "attention_forward: k must have q's number of dimensions"),
    (lambda q, k, v: (q, np.ones((1, 3, 4, 8), np.float32), v), "attention_forward: k must have q's leading dims"),
    (lambda q, k, v: (q, np.ones((1, 2, 4, 7), np.float32), v), "attention_forward: k must have q's head size"),
    (lambda q, k, v: (q, k, np.ones((1, 2, 5, 8), np.float32)), "attention_forward: v must match k"),
])
def test_forward_argument_errors(mutate, match):
    q, k, v = mutate(*_good())
    with pytest.raises(ValueError, match=match):
        _cpu.attention_forward(q, k, v, True, None, 0.0, 0, 1.0)


def test_option_errors():
    q, k, v = _good()
    with pytest.raises(ValueError, match="attention_forward: window must be None or a positive int"):
        _cpu.attention_forward(q, k, v, True, 0, 0.0, 0, 1.0)
    with pytest.raises(ValueError, match=r"attention_forward: dropout_p must be in \[0, 1\)"):
        _cpu.attention_forward(q, k, v, True, None, 1.0, 0, 1.0)
    with pytest.raises(ValueError, match="attention_forward: seed must be an int"):
        _cpu.attention_forward(q, k, v, True, None, 0.1, 1.5, 1.0)
    with pytest.raises(ValueError, match="sees no key.*Tq <= Tk"):
        _cpu.attention_forward(q, k[..., :3, :].copy(), v[..., :3, :].copy(), True, None, 0.0, 0, 1.0)
    with pytest.raises(ValueError, match="set_isa: name must be"):
        _cpu.set_isa("sse9")
    with pytest.raises(ValueError, match="attention_tiles: fwd_br must be a multiple of 16"):
        _cpu.attention_tiles(fwd_br=20)


def test_backward_argument_errors():
    q, k, v = _good()
    out, saved = _cpu.attention_forward(q, k, v, True, None, 0.0, 0, 1.0)
    with pytest.raises(ValueError, match=r"attention_backward: grad must have shape \(1, 2, 4, 8\)"):
        _cpu.attention_backward(out[..., :3, :].copy(), q, k, v, 0.0, 1.0, saved)
    with pytest.raises(ValueError, match="attention_backward: grad must be float32"):
        _cpu.attention_backward(out.astype(np.float64), q, k, v, 0.0, 1.0, saved)
    with pytest.raises(ValueError, match="attention_backward: saved must be the 6-tuple"):
        _cpu.attention_backward(out, q, k, v, 0.0, 1.0, saved[:3])
    with pytest.raises(ValueError, match=r"attention_backward: saved row max must have shape \(1, 2, 4\)"):
        _cpu.attention_backward(out, q, k, v, 0.0, 1.0, (out, saved[1][..., :2].copy()) + tuple(saved[2:]))


# ------------------------------------------------------------------ dispatch and autograd
def test_dispatch():
    q, k, v = _good()
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
