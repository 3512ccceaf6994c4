"""Native CPU embedding (csrc/cpu/embedding.cpp) against the NumPy reference.

Forward is a row gather and backward adds grad rows into their ids' rows in index order, exactly
as the reference's numpy.add.at does, so both are compared bit for bit (no tolerance), for any
integer id dtype, repeated ids, empty id arrays and both the serial and the column-parallel path.
"""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tinygpt import kernels
from tinygpt.kernels import reference as R

from kernel_checks import embedding_problem

_cpu = getattr(kernels._native, "cpu", None)
pytestmark = pytest.mark.skipif(not hasattr(_cpu, "embedding_forward"),
                                reason="tinygpt._C is not built or has no cpu.embedding_forward")


@given(V=st.integers(1, 70), ids_shape=st.sampled_from([(0,), (1,), (7,), (3, 5), (12, 64), (2, 3, 4)]),
       C=st.integers(1, 130), dtype=st.sampled_from([np.int64, np.int32, np.uint8, np.int16]),
       seed=st.integers(0, 2**32 - 1))
def test_matches_reference_bit_for_bit(V, ids_shape, C, dtype, seed):
    ids, w, g = embedding_problem(seed, V, ids_shape, C, dtype)
    out, saved = _cpu.embedding_forward(ids, w)
    ref_out, ref_saved = R.embedding_forward(ids, w)
    assert out.dtype == np.float32 and saved == ref_saved == ()
    np.testing.assert_array_equal(out, ref_out)
    np.testing.assert_array_equal(_cpu.embedding_backward(g, ids, (V, C), saved),
                                  R.embedding_backward(g, ids, (V, C), saved))


@pytest.mark.parametrize("V, N, C", [(65, 768, 128), (50, 4096, 384), (3, 5000, 33)])
def test_parallel_path_and_thread_counts(V, N, C):
    """Large enough for the column-parallel path; every thread count gives the same bits."""
    rng = np.random.default_rng(N)
    ids = rng.integers(0, V, size=N)
    g = rng.standard_normal((N, C)).astype(np.float32)
    ref = R.embedding_backward(g, ids, (V, C), ())
    n = _cpu.get_num_threads()
    try:
        for threads in (1, 2, 3):
            _cpu.set_num_threads(threads)
            np.testing.assert_array_equal(_cpu.embedding_backward(g, ids, (V, C), ()), ref)
    finally:
        _cpu.set_num_threads(n)


def test_non_contiguous_ids():
    ids = np.arange(20).reshape(4, 5)[:, ::2] % 7
    w = np.random.default_rng(0).standard_normal((7, 3)).astype(np.float32)
    np.testing.assert_array_equal(_cpu.embedding_forward(ids, w)[0], w[ids])


def test_argument_errors():
    w = np.ones((5, 4), np.float32)
    ids = np.array([0, 4, 2])
    with pytest.raises(ValueError, match=r"embedding_forward: id 5 at flat position 1 is out of range \[0, 5\)"):
        _cpu.embedding_forward(np.array([0, 5]), w)
    with pytest.raises(ValueError, match=r"embedding_forward: id -1 at flat position 0 is out of range"):
        _cpu.embedding_forward(np.array([-1]), w)
    with pytest.raises(ValueError, match="embedding_forward: ids must have an integer dtype, got float32"):
        _cpu.embedding_forward(ids.astype(np.float32), w)
    with pytest.raises(ValueError, match="embedding_forward: ids must be a numpy integer array"):
        _cpu.embedding_forward([0, 1], w)
    with pytest.raises(ValueError, match="embedding_forward: weight must be float32"):
        _cpu.embedding_forward(ids, w.astype(np.float64))
    with pytest.raises(ValueError, match=r"embedding_backward: grad must have shape \(3, 4\), got \(3, 5\)"):
        _cpu.embedding_backward(np.ones((3, 5), np.float32), ids, (5, 4), ())
    with pytest.raises(ValueError, match=r"embedding_backward: id 9 at flat position 2 is out of range \[0, 5\)"):
        _cpu.embedding_backward(np.ones((3, 4), np.float32), np.array([0, 1, 9]), (5, 4), ())
    with pytest.raises(ValueError, match=r"embedding_backward: weight_shape must be \(V, C\)"):
        _cpu.embedding_backward(np.ones((3, 4), np.float32), ids, (5,), ())


def test_dispatch():
    w = np.ones((5, 4), np.float32)
    ids = np.array([[0, 1]])
    with kernels.use_native(True):  # also under TINYGPT_NATIVE=0
        assert kernels.select("embedding", ids, w).name == "native-cpu"
    assert kernels.select("embedding", ids, w.astype(np.float64)).name == "reference"
    with kernels.use_native(False):
        assert kernels.select("embedding", ids, w).name == "reference"
