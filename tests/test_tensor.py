"""Tensor construction, dtypes, factories, conversions, devices and the global RNG."""
import numpy as np
import pytest

import tinygpt as tg
from tinygpt import backend

pytestmark = pytest.mark.usefixtures("seeded")


# ------------------------------------------------------------------ construction and dtypes
@pytest.mark.parametrize("data, dtype", [
    ([1.0, 2.0], np.float32),          # Python floats -> float32, as torch.tensor
    (2.5, np.float32),
    ([1, 2], np.int64),
    ([True, False], np.bool_),
    (np.ones(2, np.float64), np.float64),  # arrays keep their dtype
    (np.ones(2, np.float16), np.float16),
    (np.ones(2, np.int32), np.int32),
])
def test_dtype_inference(data, dtype):
    assert tg.Tensor(data).dtype == dtype
    assert tg.tensor(data).dtype == dtype


def test_explicit_dtype():
    assert tg.Tensor([1, 2], dtype=np.float64).dtype == np.float64
    assert tg.Tensor(np.ones(2), dtype=np.float32).dtype == np.float32


def test_tensor_copies_its_input():
    a = np.zeros(3, np.float32)
    t = tg.tensor(a)
    a[0] = 5.0
    assert t.numpy()[0] == 0.0


def test_object_data_raises():
    with pytest.raises(TypeError):
        tg.Tensor({"a": 1})


def test_properties():
    t = tg.Tensor(np.zeros((2, 3, 4), np.float32))
    assert t.shape == (2, 3, 4) and t.ndim == 3 and t.size == 24 and len(t) == 2
    assert t.device == "cpu" and t.is_leaf and not t.requires_grad
    assert isinstance(t.numpy(), np.ndarray) and t.numpy().shape == (2, 3, 4)


def test_item_tolist_bool():
    assert tg.Tensor(np.array([[3.5]])).item() == 3.5
    with pytest.raises(ValueError, match=r"one-element.*\(2,\)"):
        tg.Tensor([1.0, 2.0]).item()
    assert tg.Tensor([[1, 2], [3, 4]]).tolist() == [[1, 2], [3, 4]]
    assert bool(tg.Tensor([1.0])) and not bool(tg.Tensor(0.0))
    with pytest.raises(ValueError, match="ambiguous"):
        bool(tg.Tensor([1.0, 2.0]))


def test_zero_dim_results_are_arrays():
    """numpy returns scalars from ops on 0-d arrays; tensors must still hold arrays."""
    a, b = tg.Tensor(np.array(2.0)), tg.Tensor(np.array(3.0))
    for t in (a + b, a * b, a < b, a.exp(), tg.Tensor([1.0, 5.0]).argmax()):
        assert isinstance(t.data, np.ndarray) and t.numpy().shape == ()
    np.testing.assert_array_equal((a * b).numpy(), 6.0)


def test_repr():
    r = repr(tg.Tensor(np.ones(2, np.float32), requires_grad=True))
    assert r.startswith("tensor(") and "float32" in r and "requires_grad=True" in r


# ------------------------------------------------------------------ factories
@pytest.mark.parametrize("factory", [tg.zeros, tg.ones, tg.randn, tg.rand])
def test_factories_shapes_and_default_dtype(factory):
    assert factory(2, 3).shape == (2, 3)
    assert factory((2, 3)).shape == (2, 3)
    assert factory(4).dtype == np.float32
    assert factory(4, dtype=np.float64).dtype == np.float64
    assert factory(2, requires_grad=True).requires_grad


def test_factory_values():
    np.testing.assert_array_equal(tg.zeros(2, 2).numpy(), np.zeros((2, 2)))
    np.testing.assert_array_equal(tg.ones(3).numpy(), np.ones(3))
    np.testing.assert_array_equal(tg.full((2, 2), 7.0).numpy(), np.full((2, 2), 7.0))
    np.testing.assert_array_equal(tg.arange(5).numpy(), np.arange(5))
    np.testing.assert_array_equal(tg.arange(2, 8, 3).numpy(), [2, 5])
    assert tg.arange(3).dtype == np.int64
    x = tg.Tensor(np.ones((2, 3), np.float64))
    assert tg.zeros_like(x).dtype == np.float64 and tg.ones_like(x).shape == (2, 3)
    assert tg.zeros_like(x, dtype=np.int64).dtype == np.int64


def test_random_factories_statistics():
    r = tg.rand(20_000).numpy()
    assert r.min() >= 0.0 and r.max() < 1.0 and abs(r.mean() - 0.5) < 0.01  # std of mean ~0.002
    n = tg.randn(20_000).numpy()
    assert abs(n.mean()) < 0.03 and abs(n.std() - 1.0) < 0.03


def test_manual_seed_reproducible():
    tg.manual_seed(123)
    a = tg.randn(5).numpy()
    tg.manual_seed(123)
    b = tg.randn(5).numpy()
    c = tg.randn(5).numpy()
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(b, c)


def test_rng_state_round_trip():
    tg.manual_seed(7)
    state = tg.get_rng_state()
    a = tg.randn(4).numpy()
    tg.randn(10)
    tg.set_rng_state(state)
    np.testing.assert_array_equal(tg.randn(4).numpy(), a)
    with pytest.raises(ValueError):
        tg.set_rng_state({"bit_generator": "MT19937"})
    with pytest.raises(ValueError, match="non-negative"):
        tg.manual_seed(-1)


# ------------------------------------------------------------------ conversions and devices
def test_to_same_device_and_dtype_is_noop():
    x = tg.randn(3, requires_grad=True)
    assert x.to("cpu") is x and x.cpu() is x and x.to(dtype=np.float32) is x


def test_unknown_device():
    with pytest.raises(ValueError, match="unknown device 'tpu'"):
        tg.randn(2).to("tpu")


def test_cuda_without_gpu_explains_what_is_missing():
    if backend.cuda_available():
        pytest.skip("a GPU is present")
    with pytest.raises(RuntimeError, match="CuPy|GPU"):
        tg.randn(2).to("cuda")


def test_argmax_and_softmax_method():
    x = tg.Tensor(np.array([[1.0, 3.0, 2.0], [0.0, -1.0, 5.0]]))
    np.testing.assert_array_equal(x.argmax(axis=-1).numpy(), [1, 2])
    e = np.exp(x.numpy() - x.numpy().max(-1, keepdims=True))
    np.testing.assert_allclose(x.softmax().numpy(), e / e.sum(-1, keepdims=True), rtol=1e-14)


def test_min_method():
    x = tg.Tensor(np.array([[1.0, -3.0], [2.0, 0.5]]), requires_grad=True)
    m = x.min(axis=0)
    np.testing.assert_array_equal(m.numpy(), [1.0, -3.0])
    m.sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), [[1.0, 1.0], [0.0, 0.0]])


# ------------------------------------------------------------------ GPU (skipped without CuPy and a GPU)
@pytest.mark.gpu
def test_cuda_round_trip_and_grad():
    a = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    x = tg.Tensor(a, device="cuda", requires_grad=True)
    assert x.device == "cuda"
    y = (x * x).sum()
    y.backward()
    assert x.grad.device == "cuda"
    np.testing.assert_allclose(x.grad.numpy(), 2 * a, rtol=1e-6)
    np.testing.assert_array_equal(x.to("cpu").numpy(), a)


@pytest.mark.gpu
def test_mixing_devices_raises():
    with pytest.raises(ValueError, match="different devices"):
        tg.randn(2) + tg.randn(2, device="cuda")
