"""embedding (reference.py, csrc/cpu/embedding.cpp, csrc/cuda/embedding.cu) on every implementation.

Forward is a row gather, compared exactly with w[ids]. Backward sums each id's grad rows in position
order: the CPU adds them into their ids' rows in index order, CUDA sorts (id, position) keys and
runs one sequential float32 sum per id and column; both are exactly what the reference's
numpy.add.at does on a zeroed dW, so the native kernels are compared with the float32 reference bit
for bit (no tolerance), for any integer id dtype, repeated ids and empty id arrays. Every
implementation, the reference included, is also checked against the float64 sums: a sequential sum
of n float32 terms is within (n - 1) eps32 of the sum of their |values| (eps32 = 2^-24).
"""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import tinygpt as tg
import tinygpt.functional as F
from tinygpt import kernels
from tinygpt.kernels import reference as R

from helpers import arrays, check_grads, compare_with_torch, rng_arrays, shapes
from impls import CPU
from kernel_checks import EPS32, embedding_problem
from refs import F32_GRAD, T64, tf

pytestmark = pytest.mark.usefixtures("seeded")  # every test starts from tg.manual_seed(0)


def check_embedding(impl, ids, w, g):
    """Forward equals w[ids]; backward the float32 reference bit for bit (native) and the float64 sums
    within the sequential-sum bound."""
    k = impl.kernel("embedding")
    out, saved = k.forward(impl.to(ids), impl.to(w))
    out = impl.host(out)
    assert saved == () and out.dtype == np.float32 and out.shape == ids.shape + (w.shape[1],)
    np.testing.assert_array_equal(out, w[ids.astype(np.int64)])
    dw = impl.host(k.backward(impl.to(g), impl.to(ids), w.shape, saved))
    assert dw.dtype == np.float32 and dw.shape == w.shape
    if impl.native:
        np.testing.assert_array_equal(dw, R.embedding_backward(g, ids, w.shape, ()))
    flat_ids, flat_g = ids.reshape(-1).astype(np.int64), g.reshape(-1, w.shape[1]).astype(np.float64)
    dw64, mag = np.zeros(w.shape), np.zeros(w.shape)
    np.add.at(dw64, flat_ids, flat_g)
    np.add.at(mag, flat_ids, np.abs(flat_g))
    n = np.bincount(flat_ids, minlength=w.shape[0])[:, None]
    with np.errstate(invalid="ignore"):  # inf - inf where the rows hold infinities
        finite = np.isfinite(dw64)
        err = np.abs(dw.astype(np.float64) - dw64)
        assert np.all(err[finite] <= (np.maximum(n - 1, 0) * EPS32 * mag)[finite]), "dweight vs float64"


@given(V=st.integers(1, 70), ids_shape=st.sampled_from([(0,), (1,), (7,), (3, 5), (12, 21), (12, 64), (2, 3, 4)]),
       C=st.one_of(st.integers(1, 130), st.sampled_from([1, 3, 4, 8, 33, 128, 130, 260])),
       dtype=st.sampled_from([np.int64, np.int32, np.uint8, np.int16, np.uint64]),
       seed=st.integers(0, 2**32 - 1))
def test_embedding(impl, V, ids_shape, C, dtype, seed):
    """Every id dtype; CUDA: C below, at and past the 128-column block and off the float4 path (C % 4)."""
    check_embedding(impl, *embedding_problem(seed, V, ids_shape, C, dtype))


@pytest.mark.parametrize("n, V, C, skew", [
    (2000, 3, 33, 0.9),     # one id holds ~90% of the positions: a run across ~56 spans of 32
    (4096, 65, 384, 0.16),  # the Shakespeare shape class: 65 characters, the space ~16%
    (777, 50257, 20, 0.0),  # GPT-2's vocabulary, mostly unique ids (runs of 1), most rows zero
    (129, 1, 5, 1.0),       # a single id: one run through every span
])
def test_long_runs_and_wide_vocabularies(large_impl, n, V, C, skew):
    """CUDA: runs longer than a block's span and than the unrolled group, heads at span borders, a
    vocabulary whose rows are mostly absent (zeroed), the Shakespeare-like frequency skew."""
    rng = np.random.default_rng(n + V)
    ids = rng.integers(0, V, size=n)
    ids[rng.random(n) < skew] = 0
    w = rng.standard_normal((V, C)).astype(np.float32)
    g = (rng.standard_normal((n, C)) * np.float32(1e3) ** rng.uniform(-1, 1, (n, 1))).astype(np.float32)
    check_embedding(large_impl, ids, w, g)


def test_special_values_are_summed_in_order(native_impl):
    """inf, -inf, NaN and -0.0 go through the same ordered float32 sums as numpy.add.at."""
    ids = np.array([2, 0, 2, 2, 1, 0, 2])
    g = np.array([[np.inf, 1.0, -0.0], [1.0, -0.0, 3e38], [-np.inf, 2.0, -0.0], [1.0, np.nan, -0.0],
                  [5.0, 6.0, -0.0], [2.0, 3.0, 3e38], [1e-45, 1.0, 1.0]], np.float32)
    w = np.zeros((4, 3), np.float32)
    with np.errstate(over="ignore", invalid="ignore"):  # the reference's inf - inf and 3e38 + 3e38
        k, to = native_impl.kernel("embedding"), native_impl.to
        np.testing.assert_array_equal(native_impl.host(k.forward(to(ids), to(w))[0]), w[ids])
        dw = native_impl.host(k.backward(to(g), to(ids), w.shape, ()))
        np.testing.assert_array_equal(dw, R.embedding_backward(g, ids, w.shape, ()))


def test_cpu_parallel_path_and_thread_counts(cpu_impl):
    """Large enough for the column-parallel path; every thread count gives the same bits."""
    for V, N, C in [(65, 768, 128), (50, 4096, 384), (3, 5000, 33)]:
        rng = np.random.default_rng(N)
        ids = rng.integers(0, V, size=N)
        g = rng.standard_normal((N, C)).astype(np.float32)
        ref = R.embedding_backward(g, ids, (V, C), ())
        n = CPU.get_num_threads()
        try:
            for threads in (1, 2, 3):
                CPU.set_num_threads(threads)
                np.testing.assert_array_equal(CPU.embedding_backward(g, ids, (V, C), ()), ref)
        finally:
            CPU.set_num_threads(n)


def test_cpu_non_contiguous_ids(cpu_impl):
    ids = np.arange(20).reshape(4, 5)[:, ::2] % 7
    w = np.random.default_rng(0).standard_normal((7, 3)).astype(np.float32)
    np.testing.assert_array_equal(CPU.embedding_forward(ids, w)[0], w[ids])


def test_cuda_misaligned_and_strided_arrays(cuda_impl):
    """A weight view off a 16-byte boundary (scalar path) and non-contiguous ids (copied to int64)."""
    cp = tg.backend.cupy()
    k = cuda_impl.kernel("embedding")
    rng = np.random.default_rng(3)
    V, C = 9, 8
    w = rng.standard_normal((V, C)).astype(np.float32)
    ids = np.arange(30).reshape(5, 6)[:, ::2] % V
    out, _ = k.forward(cp.asarray(np.arange(30).reshape(5, 6) % V)[:, ::2], cuda_impl.to(w, offset=1))
    np.testing.assert_array_equal(cp.asnumpy(out), w[ids])
    g = rng.standard_normal(ids.shape + (C,)).astype(np.float32)
    dw = k.backward(cp.asarray(g), cp.asarray(ids.astype(np.int32)), (V, C), ())
    np.testing.assert_array_equal(cp.asnumpy(dw), R.embedding_backward(g, ids, (V, C), ()))


def test_cuda_out_of_range_ids_stay_in_bounds(cuda_impl):
    """F.embedding rejects such ids before dispatch; the kernels themselves never read or write out of
    bounds: forward gives NaN rows, backward leaves them out of dW."""
    cp = tg.backend.cupy()
    k = cuda_impl.kernel("embedding")
    w = np.arange(12, dtype=np.float32).reshape(4, 3)
    ids = np.array([1, -1, 4, 1, 3])
    out, _ = k.forward(cp.asarray(ids), cp.asarray(w))
    out = cp.asnumpy(out)
    np.testing.assert_array_equal(out[[0, 3, 4]], w[[1, 1, 3]])
    assert np.isnan(out[[1, 2]]).all()
    g = np.ones((5, 3), np.float32)
    dw = cp.asnumpy(k.backward(cp.asarray(g), cp.asarray(ids), (4, 3), ()))
    np.testing.assert_array_equal(dw, [[0, 0, 0], [2, 2, 2], [0, 0, 0], [1, 1, 1]])
    # the range check stays on the device and is read with the next host read (no stall per call)
    out = F.embedding(cp.asarray(ids), tg.Tensor(w, device="cuda"))
    with pytest.raises(ValueError, match=r"embedding: token id -1 at position \(1,\) is out of range \[0, 4\)"):
        out.numpy()
    out.numpy()  # reported once


# ----------------------------------------------------------------------------- argument errors
def test_cpu_argument_errors(cpu_impl):
    w = np.ones((5, 4), np.float32)
    ids = np.array([0, 4, 2])
    with pytest.raises(ValueError, match=r"embedding_forward: id 5 at flat position 1 is out of range \[0, 5\)"):
        CPU.embedding_forward(np.array([0, 5]), w)
    with pytest.raises(ValueError, match=r"embedding_forward: id -1 at flat position 0 is out of range"):
        CPU.embedding_forward(np.array([-1]), w)
    with pytest.raises(ValueError, match="embedding_forward: ids must have an integer dtype, got float32"):
        CPU.embedding_forward(ids.astype(np.float32), w)
    with pytest.raises(ValueError, match="embedding_forward: ids must be a numpy integer array"):
        CPU.embedding_forward([0, 1], w)
    with pytest.raises(ValueError, match="embedding_forward: weight must be float32"):
        CPU.embedding_forward(ids, w.astype(np.float64))
    with pytest.raises(ValueError, match=r"embedding_backward: grad must have shape \(3, 4\), got \(3, 5\)"):
        CPU.embedding_backward(np.ones((3, 5), np.float32), ids, (5, 4), ())
    with pytest.raises(ValueError, match=r"embedding_backward: id 9 at flat position 2 is out of range \[0, 5\)"):
        CPU.embedding_backward(np.ones((3, 4), np.float32), np.array([0, 1, 9]), (5, 4), ())
    with pytest.raises(ValueError, match=r"embedding_backward: weight_shape must be \(V, C\)"):
        CPU.embedding_backward(np.ones((3, 4), np.float32), ids, (5,), ())


def test_cuda_argument_errors(cuda_impl):
    cp = tg.backend.cupy()
    k = cuda_impl.kernel("embedding")
    w = cp.ones((5, 4), cp.float32)
    ids = cp.asarray(np.array([0, 4, 2]))
    with pytest.raises(TypeError, match="embedding_forward: ids must have an integer dtype, got float32"):
        k.forward(ids.astype(cp.float32), w)
    with pytest.raises(TypeError, match="embedding_forward: ids must be a cupy integer array, got ndarray"):
        k.forward(np.array([0, 1]), w)
    with pytest.raises(TypeError, match="embedding_forward: weight: expected dtype float32, got float64"):
        k.forward(ids, w.astype(cp.float64))
    with pytest.raises(ValueError, match=r"embedding_forward: weight: expected 2 dimensions, got shape \(20,\)"):
        k.forward(ids, w.reshape(-1))
    with pytest.raises(ValueError, match=r"embedding_backward: grad: expected shape \(3, 4\), got \(3, 5\)"):
        k.backward(cp.ones((3, 5), cp.float32), ids, (5, 4), ())
    with pytest.raises(ValueError, match=r"embedding_backward: weight_shape must be \(V, C\)"):
        k.backward(cp.ones((3, 4), cp.float32), ids, (5,), ())
    with pytest.raises(ValueError, match=r"embedding_backward: weight_shape must be \(V, C\) with V, C >= 1"):
        k.backward(cp.ones((3, 0), cp.float32), ids, (5, 0), ())


# ----------------------------------------------------------------------------- dispatch and autograd
def test_dispatch():
    if not kernels.native_enabled():
        pytest.skip("tinygpt._C is not built (or TINYGPT_NATIVE=0)")
    w = np.ones((5, 4), np.float32)
    ids = np.array([[0, 1]])
    with kernels.use_native(True):  # also under TINYGPT_NATIVE=0
        assert kernels.select("embedding", ids, w).name == "native-cpu"
    assert kernels.select("embedding", ids, w.astype(np.float64)).name == "reference"
    with kernels.use_native(False):
        assert kernels.select("embedding", ids, w).name == "reference"


def test_cuda_dispatch_and_training_gradients(cuda_impl):
    """F.embedding on GPU tensors runs the CUDA kernel; its weight gradient is the CPU one bit for bit."""
    cp = tg.backend.cupy()
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


# ----------------------------------------------------------------------------- tinygpt.functional: float64 references, finite differences, torch
@given(data=st.data(), V=st.integers(1, 5), C=st.integers(1, 4), id_shape=shapes(0, 2, max_side=5))
def test_embedding_float64_gradcheck(data, V, C, id_shape):
    ids = data.draw(hnp.arrays(np.int64, id_shape, elements=st.integers(0, V - 1)))  # repeats are likely
    w = data.draw(arrays((V, C)))
    out = check_grads(lambda w_: F.embedding(ids, w_), w)
    np.testing.assert_array_equal(out, w[ids])


def test_embedding_repeated_ids_scatter_add():
    w = tg.Tensor(np.arange(8.0).reshape(4, 2), requires_grad=True)
    ids = np.array([[1, 1, 3], [1, 0, 3]])
    F.embedding(ids, w).backward(np.ones((2, 3, 2)))
    np.testing.assert_array_equal(w.grad.numpy(), [[1, 1], [3, 3], [0, 0], [2, 2]])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_embedding_torch(kernel_impl, dtype):
    torch = pytest.importorskip("torch")
    ids = np.array([[0, 2, 2, 5], [5, 5, 1, 0]])
    (w,) = rng_arrays(0, (6, 3))
    tol = T64 if dtype == np.float64 else F32_GRAD
    compare_with_torch(lambda w_: F.embedding(tg.Tensor(ids), w_),
                       lambda w_: tf().embedding(torch.from_numpy(ids), w_), w, dtype=dtype, **tol)


@pytest.mark.parametrize("bad", [7, 100, -1])
def test_embedding_out_of_range_names_id(bad):
    with pytest.raises(ValueError, match=rf"embedding.*{bad}"):
        F.embedding(np.array([[0, bad, 1]]), tg.randn(7, 3))


def test_embedding_float_ids():
    with pytest.raises(TypeError, match="integers"):
        F.embedding(np.array([0.0, 1.0]), tg.randn(7, 3))
