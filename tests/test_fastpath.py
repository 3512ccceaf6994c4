"""models/fastpath.py: the cached inference blocks on arrays give the modules' numbers bit for bit, and
decline (before touching the cache) every block they do not reproduce."""
import numpy as np
import pytest

import tinygpt as tg
from tinygpt import lora
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


def _decode(model, ids, steps, modules_only, monkeypatch):
    """Hidden states of a prefill of ids and `steps` greedy one-token steps, and the cache afterwards."""
    with monkeypatch.context() as m:
        if modules_only:
            m.setattr(gpt_module, "cached_blocks", lambda *a: None)
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


def _spy(monkeypatch) -> list:
    """Record, for every GPT.hidden_states call with a cache, whether the fast path ran (True) or declined."""
    ran, run = [], fastpath.cached_blocks

    def spy(*args):
        out = run(*args)
        ran.append(out is not None)
        return out

    monkeypatch.setattr(gpt_module, "cached_blocks", spy)
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
    fast, fast_cache = _decode(model, ids, 6, False, monkeypatch)
    assert ran == [True] * 7  # the prefill and every step took the fast path
    slow, slow_cache = _decode(model, ids, 6, True, monkeypatch)
    for a, b in zip(fast, slow):
        assert a.dtype == np.float32 and np.array_equal(a, b)
    n = fast_cache.length
    assert n == slow_cache.length == 13
    for i in range(SMALL["n_layer"]):
        assert np.array_equal(fast_cache.k[i][:, :, :n], slow_cache.k[i][:, :, :n])
        assert np.array_equal(fast_cache.v[i][:, :, :n], slow_cache.v[i][:, :, :n])


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
