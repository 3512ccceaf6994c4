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


def _expect_native(bits, rows, head_rows, C=SMALL["n_embd"], vocab=SMALL["vocab_size"]):
    """Whether the native step runs: quantized layers (no policy), or float layers (and head) at row counts where
    kernels.policy gives each linear to the native GEMM (every one-row one)."""
    shapes = [(C, 3 * C), (C, C), (C, 4 * C), (4 * C, C)]
    return bits is not None or (all(policy.linear_policy(rows, i, o) for i, o in shapes)
                                and (head_rows is None or policy.linear_policy(head_rows, C, vocab)))


@pytest.mark.parametrize("bits,embeddings", [(None, True), (8, True), (4, True), (4, False)])
@pytest.mark.parametrize("overrides", [
    {},
    {"norm": "post", "bias": False},
    {"gelu": "none", "attention_window": 3, "sparse_pattern": "alternating", "position": "sinusoidal"},
    {"tie_weights": False},
])
@pytest.mark.parametrize("batch", [1, 2])
def test_cached_logits_match_the_modules(kernel_impl, bits, embeddings, overrides, batch, monkeypatch):
    model = tg.GPT(tg.GPTConfig(**{**SMALL, **overrides})).eval()
    if bits:
        quantize(model, bits=bits, embeddings=embeddings)
    fast_cache, slow_cache = KVCache.for_model(model, batch), KVCache.for_model(model, batch)
    ids = np.random.default_rng(2).integers(0, SMALL["vocab_size"], size=(batch, 5))
    with tg.no_grad():
        for step in range(4):
            B, T = ids.shape
            slow = model.lm_head(model.hidden_states(ids, kv_cache=slow_cache)[:, -1:]).data[:, 0]
            fast = fastpath.cached_logits(model, ids, fast_cache)
            native = kernel_impl == "native" and _expect_native(bits, B * T, B)
            assert (fast is not None) == native, step
            if fast is None:  # declined, cache untouched: the caller runs the modules
                assert fast_cache.length == slow_cache.length - T
                fast = model.lm_head(model.hidden_states(ids, kv_cache=fast_cache)[:, -1:]).data[:, 0]
            assert fast.dtype == np.float32 and fast.shape == (B, SMALL["vocab_size"])
            assert np.array_equal(fast, slow) and fast_cache.length == slow_cache.length
            ids = slow.argmax(-1)[:, None]
    for i in range(SMALL["n_layer"]):
        assert np.array_equal(fast_cache.k[i], slow_cache.k[i]) and np.array_equal(fast_cache.v[i], slow_cache.v[i])


def test_generate_runs_it(monkeypatch):
    model = _model(8)
    ran = _spy(monkeypatch, fastpath, "cached_logits")
    fast = model.generate(np.array([[1, 2, 3]]), max_new_tokens=5, seed=0)
    assert ran == [True] * 5  # the prompt, then one step per new token but the last (its logits are not needed)
    monkeypatch.setattr(fastpath, "cached_logits", lambda *a: None)
    monkeypatch.setattr(gpt_module, "cached_blocks", lambda *a: None)
    assert np.array_equal(model.generate(np.array([[1, 2, 3]]), max_new_tokens=5, seed=0), fast)


def test_cached_logits_checks_and_declines():
    _native_or_skip()
    model = _model(4)
    cache = KVCache.for_model(model, 1)
    with tg.no_grad():
        with pytest.raises(ValueError, match="token id 97 is out of the vocabulary"):
            fastpath.cached_logits(model, np.array([[1, 97]]), cache)
        with pytest.raises(ValueError, match="exceed the context"):
            fastpath.cached_logits(model, np.ones((1, 9), np.int64), KVCache(3, 1, 4, 16, 8))
        assert cache.length == 0 and not any(k.any() for k in cache.k)  # nothing stored by the failed calls
        model.train()
        assert fastpath.cached_logits(model, np.array([[1]]), cache) is None  # training mode
        model.eval()
        subclass = type("MyGPT", (tg.GPT,), {})(model.config).eval()
        assert fastpath.cached_logits(subclass, np.array([[1]]), KVCache.for_model(subclass, 1)) is None
        adapted = lora.apply(_model().eval(), rank=2)
        adapted_cache = KVCache.for_model(adapted, 1)
        assert fastpath.cached_logits(adapted, np.array([[1]]), adapted_cache) is None
        assert adapted_cache.length == 0 and not any(k.any() for k in adapted_cache.k)


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
    layers = [fastpath._layer(b) for b in model.transformer.h]  # the tuples fastpath hands the native step
    assert step(x, layers, cache.k, cache.v, 1, 0).shape == x.shape
    with pytest.raises(ValueError, match="new tokens at position 24 do not fit"):
        step(x, layers, cache.k, cache.v, 1, SMALL["block_size"])
    with pytest.raises(ValueError, match="3 layers need as many k and v caches"):
        step(x, layers, cache.k[:2], cache.v, 1, 0)
    with pytest.raises(ValueError, match="caches must be"):
        step(x, layers, [k[:, :2] for k in cache.k], cache.v, 1, 0)
    with pytest.raises(ValueError, match="layer 0 must be a tuple"):
        step(x, [list(layers[0])] + layers[1:], cache.k, cache.v, 1, 0)
    with pytest.raises(ValueError, match="ln_1 must be a tuple"):
        step(x, [layers[0][:4] + ([1.0],) + layers[0][5:]] + layers[1:], cache.k, cache.v, 1, 0)
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
