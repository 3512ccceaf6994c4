"""models/fastpath.py: the cached inference blocks on arrays give the modules' numbers bit for bit, and
decline (before touching the cache) every block they do not reproduce."""
import numpy as np
import pytest

import tinygpt as tg
from tinygpt import lora
from tinygpt.kernels import policy
from tinygpt.models import fastpath
from tinygpt.models import gpt as gpt_module
from tinygpt.models.generation import KVCache
from tinygpt.nn import Block
from tinygpt.quantize import quantize

pytestmark = pytest.mark.usefixtures("seeded")

SMALL = dict(vocab_size=97, block_size=24, n_layer=3, n_head=4, n_embd=64)


def _model(bits=None, **overrides):
    model = tg.GPT(tg.GPTConfig(**{**SMALL, **overrides})).eval()
    return quantize(model, bits=bits) if bits else model


def _decode(model, ids, steps, path, monkeypatch):
    """Hidden states of a prefill of ids and `steps` greedy one-token steps, and the cache afterwards, on one
    path: 'fast' (the native step where it runs, else per op), 'per-op' or 'modules'."""
    with monkeypatch.context() as m:
        if path == "modules":
            m.setattr(gpt_module, "cached_blocks", lambda *a: None)
        elif path == "per-op":
            m.setattr(fastpath, "_native_step", lambda *a: None)
        cache = KVCache.for_model(model, ids.shape[0])
        outs = []
        with tg.no_grad():
            h = model.hidden_states(ids, kv_cache=cache).data
            outs.append(h)
            for _ in range(steps):
                tok = model.lm_head(tg.Tensor(h[:, -1:])).data[:, -1].argmax(-1)[:, None]
                h = model.hidden_states(tok, kv_cache=cache).data
                outs.append(h)
    return outs, cache


def _spy(monkeypatch, module=gpt_module, name="cached_blocks") -> list:
    """Record, for every call of module.name (GPT.hidden_states' fast path by default), whether it ran (True)
    or declined (None: False)."""
    ran, run = [], getattr(module, name)

    def spy(*args):
        out = run(*args)
        ran.append(out is not None)
        return out

    monkeypatch.setattr(module, name, spy)
    return ran


@pytest.mark.parametrize("bits", [None, 8, 4])
@pytest.mark.parametrize("overrides", [
    {},
    {"norm": "post", "bias": False},
    {"gelu": "none", "attention_window": 5, "sparse_pattern": "alternating", "position": "sinusoidal"},
])
@pytest.mark.parametrize("batch", [1, 3])
def test_matches_the_modules_bit_for_bit(kernel_impl, bits, overrides, batch, monkeypatch):
    model = _model(bits, **overrides)
    ids = np.random.default_rng(1).integers(0, SMALL["vocab_size"], size=(batch, 7))
    ran = _spy(monkeypatch)
    native = _spy(monkeypatch, fastpath, "_native_step")
    fast, fast_cache = _decode(model, ids, 6, "fast", monkeypatch)
    assert ran == [True] * 7  # the prefill and every step took the fast path
    # the native step ran wherever the per-op path runs native kernels only: quantized layers (no policy), or
    # float layers at row counts where kernels.policy gives each linear to the native GEMM (every one-row one)
    C = SMALL["n_embd"]
    shapes = [(C, 3 * C), (C, C), (C, 4 * C), (4 * C, C)]
    expect = [kernel_impl == "native" and (bits is not None or all(policy.linear_policy(batch * t, i, o)
                                                                   for i, o in shapes)) for t in [7] + [1] * 6]
    assert batch > 1 or expect[1:] == [kernel_impl == "native"] * 6
    assert native == expect
    for path in ("per-op", "modules"):
        slow, slow_cache = _decode(model, ids, 6, path, monkeypatch)
        for a, b in zip(fast, slow):
            assert a.dtype == np.float32 and np.array_equal(a, b), path
        n = fast_cache.length
        assert n == slow_cache.length == 13
        for i in range(SMALL["n_layer"]):
            assert np.array_equal(fast_cache.k[i][:, :, :n], slow_cache.k[i][:, :, :n]), path
            assert np.array_equal(fast_cache.v[i][:, :, :n], slow_cache.v[i][:, :, :n]), path


def test_generate_runs_it(monkeypatch):
    model = _model(8)
    ran = _spy(monkeypatch)
    fast = model.generate(np.array([[1, 2, 3]]), max_new_tokens=5, seed=0)
    assert ran and all(ran)
    monkeypatch.setattr(gpt_module, "cached_blocks", lambda *a: None)
    assert np.array_equal(model.generate(np.array([[1, 2, 3]]), max_new_tokens=5, seed=0), fast)


class _MyBlock(Block):
    pass


def _lora(model):
    return lora.apply(model, rank=2)


def _train_one(model):
    model.transformer.h[1].mlp.dropout.train()
    return model


def _subclass(model):
    old = model.transformer.h[0]
    new = _MyBlock(model.config, 0).eval()
    new.load_state_dict(old.state_dict())
    setattr(model.transformer.h, "0", new)
    return model


@pytest.mark.parametrize("change", [_lora, _train_one, _subclass], ids=["lora", "dropout-training", "subclass"])
def test_declines_what_it_does_not_reproduce(change):
    model = change(_model().eval()) if change is not _train_one else change(_model())
    cache = KVCache.for_model(model, 1)
    x = np.ones((1, 1, SMALL["n_embd"]), np.float32)
    assert fastpath.cached_blocks(model.transformer.h, x, cache) is None
    assert all(not k.any() for k in cache.k) and all(not v.any() for v in cache.v)  # untouched


def test_declines_moe():
    model = _model(n_expert=4, moe_every=2)
    cache = KVCache.for_model(model, 1)
    assert fastpath.cached_blocks(model.transformer.h, np.ones((1, 1, 64), np.float32), cache) is None
    with tg.no_grad():  # and the modules still decode it
        h = model.hidden_states(np.array([[1, 2]]), kv_cache=cache)
    assert h.shape == (1, 2, 64) and cache.length == 2


def _native_or_skip():
    from tinygpt import kernels  # noqa: PLC0415

    step = kernels.implementation("cached_blocks", "cpu")
    if step is None or not kernels.native_enabled():
        pytest.skip("tinygpt._C is not built (or TINYGPT_NATIVE=0)")
    return step


@pytest.mark.parametrize("bits", [None, 4])
def test_native_step_declines_arrays_the_kernels_do_not_take(bits, monkeypatch):
    _native_or_skip()
    model = _model(bits)
    last = model.transformer.h[2]
    w = last.ln_2.weight.data
    last.ln_2.weight.data = np.concatenate([w, w])[::2]  # the same values, strided: the reference runs it
    ids = np.array([[3, 1, 4]])
    native = _spy(monkeypatch, fastpath, "_native_step")
    fast, cache = _decode(model, ids, 3, "fast", monkeypatch)
    assert native == [False] * 4  # declined every step (before touching the caches)...
    slow, _ = _decode(model, ids, 3, "modules", monkeypatch)
    assert all(np.array_equal(a, b) for a, b in zip(fast, slow))  # ...and the per-op path ran the modules' kernels


def test_native_step_checks_shapes():
    step = _native_or_skip()
    model = _model(8)
    cache = KVCache.for_model(model, 1)
    x = np.ones((1, SMALL["n_embd"]), np.float32)
    layers = []
    monkey = fastpath.kernels.implementation
    try:  # capture the layer tuples fastpath builds
        fastpath.kernels.implementation = lambda *a: lambda x, ls, *r: layers.extend(ls)
        fastpath._native_step(model.transformer.h, x, cache)
    finally:
        fastpath.kernels.implementation = monkey
    assert len(layers) == 3
    assert step(x, layers, cache.k, cache.v, 1, 0).shape == x.shape
    with pytest.raises(ValueError, match="new tokens at position 24 do not fit"):
        step(x, layers, cache.k, cache.v, 1, SMALL["block_size"])
    with pytest.raises(ValueError, match="3 layers need as many k and v caches"):
        step(x, layers, cache.k[:2], cache.v, 1, 0)
    with pytest.raises(ValueError, match="caches must be"):
        step(x, layers, [k[:, :2] for k in cache.k], cache.v, 1, 0)
    with pytest.raises(ValueError, match="not a whole number of rows"):
        step(np.ones((3, SMALL["n_embd"]), np.float32), layers, cache.k, cache.v, 2, 0)
    bad = list(layers[0])
    bad[6] = (np.ascontiguousarray(bad[6][0][:, :10]), bad[6][1], bad[6][2])  # c_attn q of the wrong width
    with pytest.raises(ValueError, match="c_attn: q must be"):
        step(x, [tuple(bad)] + layers[1:], cache.k, cache.v, 1, 0)
    bad[6] = (np.asfortranarray(layers[0][6][0]), bad[6][1], bad[6][2])  # not C-contiguous: the reference's
    for k in cache.k:
        k[...] = 0
    assert step(x, layers[:2] + [tuple(bad)], cache.k, cache.v, 1, 0) is None
    assert not any(k.any() for k in cache.k)  # declined before layer 0 ran
