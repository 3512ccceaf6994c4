"""CUDA embedding (csrc/cuda/embedding.cu via tinygpt.kernels.cuda) against the NumPy reference.

Forward is a row gather; backward sums each id's grad rows in position order (a sort of
(id, position) keys, then one sequential float32 sum per id and column), which is exactly what the
reference's numpy.add.at does on a zeroed dW: both are compared bit for bit (no tolerance), as
the CPU kernel is in test_native_embedding.py. GPU-only: every test is marked `gpu`.
"""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import tinygpt as tg
import tinygpt.functional as F
from tinygpt import kernels
from tinygpt.kernels import cuda as K
from tinygpt.kernels import reference as R

from kernel_checks import embedding_problem

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not K.has("embedding"), reason="tinygpt._C was built without the CUDA embedding kernel")]


def _cp():
    return tg.backend.cupy()


def _check(ids, w, g):
    """Forward and backward on the GPU equal the float32 reference bit for bit."""
    cp = _cp()
    out, saved = K.embedding.embedding_forward(cp.asarray(ids), cp.asarray(w))
    assert saved == () and out.dtype == np.float32 and out.shape == ids.shape + (w.shape[1],)
    np.testing.assert_array_equal(cp.asnumpy(out), R.embedding_forward(ids, w)[0])
    dw = K.embedding.embedding_backward(cp.asarray(g), cp.asarray(ids), w.shape, saved)
    assert dw.dtype == np.float32 and dw.shape == w.shape
    np.testing.assert_array_equal(cp.asnumpy(dw), R.embedding_backward(g, ids, w.shape, ()))


@given(V=st.integers(1, 70), ids_shape=st.sampled_from([(0,), (1,), (7,), (3, 5), (12, 21), (2, 3, 4)]),
       C=st.sampled_from([1, 3, 4, 8, 33, 128, 130, 260]),
       dtype=st.sampled_from([np.int64, np.int32, np.uint8, np.int16, np.uint64]),
       seed=st.integers(0, 2**32 - 1))
def test_matches_reference_bit_for_bit(V, ids_shape, C, dtype, seed):
    """Every id dtype, C below, at and past the 128-column block and off the float4 path (C % 4)."""
    ids, w, g = embedding_problem(seed, V, ids_shape, C, dtype)
    _check(ids, w, g)


@pytest.mark.parametrize("n, V, C, skew", [
    (2000, 3, 33, 0.9),     # one id holds ~90% of the positions: a run across ~56 spans of 32
    (4096, 65, 384, 0.16),  # the Shakespeare shape class: 65 characters, the space ~16%
    (777, 50257, 20, 0.0),  # GPT-2's vocabulary, mostly unique ids (runs of 1), most rows zero
    (129, 1, 5, 1.0),       # a single id: one run through every span
])
def test_long_runs_and_wide_vocabularies(n, V, C, skew):
    """Runs longer than a block's span and than the unrolled group, heads at span borders, a
    vocabulary whose rows are mostly absent (zeroed), the Shakespeare-like frequency skew."""
    rng = np.random.default_rng(n + V)
    ids = rng.integers(0, V, size=n)
    ids[rng.random(n) < skew] = 0
    w = rng.standard_normal((V, C)).astype(np.float32)
    g = (rng.standard_normal((n, C)) * np.float32(1e3) ** rng.uniform(-1, 1, (n, 1))).astype(np.float32)
    _check(ids, w, g)


def test_special_values_are_summed_in_order():
    """inf, -inf, NaN and -0.0 go through the same ordered float32 sums as numpy.add.at."""
    ids = np.array([2, 0, 2, 2, 1, 0, 2])
    g = np.array([[np.inf, 1.0, -0.0], [1.0, -0.0, 3e38], [-np.inf, 2.0, -0.0], [1.0, np.nan, -0.0],
                  [5.0, 6.0, -0.0], [2.0, 3.0, 3e38], [1e-45, 1.0, 1.0]], np.float32)
    w = np.zeros((4, 3), np.float32)
    with np.errstate(over="ignore", invalid="ignore"):  # the reference's inf - inf and 3e38 + 3e38
        _check(ids, w, g)


def test_misaligned_and_strided_arrays():
    """A weight view off a 16-byte boundary (scalar path) and non-contiguous ids (copied to int64)."""
    cp = _cp()
    rng = np.random.default_rng(3)
    V, C = 9, 8
    flat = rng.standard_normal(V * C + 1).astype(np.float32)
    w = cp.asarray(flat)[1:].reshape(V, C)  # C-contiguous, 4 bytes past CuPy's 256-byte alignment
    ids = np.arange(30).reshape(5, 6)[:, ::2] % V
    out, _ = K.embedding.embedding_forward(cp.asarray(np.arange(30).reshape(5, 6) % V)[:, ::2], w)
    np.testing.assert_array_equal(cp.asnumpy(out), flat[1:].reshape(V, C)[ids])
    g = rng.standard_normal(ids.shape + (C,)).astype(np.float32)
    dw = K.embedding.embedding_backward(cp.asarray(g), cp.asarray(ids.astype(np.int32)), (V, C), ())
    np.testing.assert_array_equal(cp.asnumpy(dw), R.embedding_backward(g, ids, (V, C), ()))


def test_out_of_range_ids_stay_in_bounds():
    """F.embedding rejects such ids before dispatch; the kernels themselves never read or write out of
    bounds: forward gives NaN rows, backward leaves them out of dW."""
    cp = _cp()
    w = np.arange(12, dtype=np.float32).reshape(4, 3)
    ids = np.array([1, -1, 4, 1, 3])
    out, _ = K.embedding.embedding_forward(cp.asarray(ids), cp.asarray(w))
    out = cp.asnumpy(out)
    np.testing.assert_array_equal(out[[0, 3, 4]], w[[1, 1, 3]])
    assert np.isnan(out[[1, 2]]).all()
    g = np.ones((5, 3), np.float32)
    dw = cp.asnumpy(K.embedding.embedding_backward(cp.asarray(g), cp.asarray(ids), (4, 3), ()))
    np.testing.assert_array_equal(dw, [[0, 0, 0], [2, 2, 2], [0, 0, 0], [1, 1, 1]])
    # the range check stays on the device and is read with the next host read (no stall per call)
    out = F.embedding(cp.asarray(ids), tg.Tensor(w, device="cuda"))
    with pytest.raises(ValueError, match=r"embedding: token id -1 at position \(1,\) is out of range \[0, 4\)"):
        out.numpy()
    out.numpy()  # reported once


def test_argument_errors():
    cp = _cp()
    w = cp.ones((5, 4), cp.float32)
    ids = cp.asarray(np.array([0, 4, 2]))
    with pytest.raises(TypeError, match="embedding_forward: ids must have an integer dtype, got float32"):
        K.embedding.embedding_forward(ids.astype(cp.float32), w)
    with pytest.raises(TypeError, match="embedding_forward: ids must be a cupy integer array, got ndarray"):
        K.embedding.embedding_forward(np.array([0, 1]), w)
    with pytest.raises(TypeError, match="embedding_forward: weight: expected dtype float32, got float64"):
        K.embedding.embedding_forward(ids, w.astype(cp.float64))
    with pytest.raises(ValueError, match=r"embedding_forward: weight: expected 2 dimensions, got shape \(20,\)"):
        K.embedding.embedding_forward(ids, w.reshape(-1))
    with pytest.raises(ValueError, match=r"embedding_backward: grad: expected shape \(3, 4\), got \(3, 5\)"):
        K.embedding.embedding_backward(cp.ones((3, 5), cp.float32), ids, (5, 4), ())
    with pytest.raises(ValueError, match=r"embedding_backward: weight_shape must be \(V, C\)"):
        K.embedding.embedding_backward(cp.ones((3, 4), cp.float32), ids, (5,), ())
    with pytest.raises(ValueError, match=r"embedding_backward: weight_shape must be \(V, C\) with V, C >= 1"):
        K.embedding.embedding_backward(cp.ones((3, 0), cp.float32), ids, (5, 0), ())


def test_dispatch_and_training_gradients():
    """F.embedding on GPU tensors runs the CUDA kernel; its weight gradient is the CPU one bit for bit."""
    cp = _cp()
    rng = np.random.default_rng(11)
    w = rng.standard_normal((65, 48)).astype(np.float32)
    ids = rng.integers(0, 65, size=(4, 64))
    assert kernels.select("embedding", cp.asarray(ids), cp.asarray(w)).name == "native-cuda"
    grads = []
    for device in ("cpu", "cuda"):
        wt = tg.Tensor(w, device=device, requires_grad=True)
        out = F.embedding(ids if device == "cpu" else cp.asarray(ids), wt)
        (out * tg.Tensor(np.linspace(-1, 1, 48, dtype=np.float32), device=device)).sum().backward()
        grads.append(tg.backend.to_numpy(wt.grad.data))
    np.testing.assert_array_equal(grads[1], grads[0])
