"""Generation: the KV cache against the full forward, cached vs uncached generation, the logits
processors (temperature, top-k, top-p, repetition penalty) against direct NumPy definitions and
Hugging Face's processors, sampling distributions, eos stopping, num_return_sequences, streaming,
the prompt-crop warning and argument errors.

Tolerances: cached vs full-forward logits float64 rtol 1e-10 / atol 1e-12 (the same arithmetic
in another order), float32 rtol 1e-5 / atol 1e-5 (logits are O(1-10)); processors vs NumPy or
torch float64 1e-12. Sampling frequencies: 5 standard deviations per token.
"""
import dataclasses
import warnings

import numpy as np
import pytest

import tinygpt as tg
from tinygpt import GPT, GPTConfig
from tinygpt.models import KVCache
from tinygpt.models import generation as G

pytestmark = pytest.mark.usefixtures("seeded")

CONFIGS = {
    "pre-learned": {},
    "post-learned": dict(norm="post"),
    "pre-sinusoidal": dict(position="sinusoidal"),
    "post-sinusoidal": dict(norm="post", position="sinusoidal"),
    "alternating-banded": dict(sparse_pattern="alternating", attention_window=3, n_layer=3),
}


def make_model(dtype=np.float32, seed=1, **kw):
    base = dict(vocab_size=17, block_size=8, n_layer=2, n_head=2, n_embd=8)
    model = GPT(GPTConfig(**{**base, **kw}))
    if dtype != np.float32:
        model.to(dtype=dtype)
    rng = np.random.default_rng(seed)
    for _, p in model.named_parameters():  # large weights: attention far from uniform, logits spread
        p.data[...] = rng.normal(0.0, 0.5, p.shape)
    return model.eval()


def prompt(B, T, vocab=17, seed=0):
    return np.random.default_rng(seed).integers(0, vocab, size=(B, T))


def full_logits(model, ids):
    """Next-token logits (B, vocab) from one uncached forward of the last block_size tokens."""
    with tg.no_grad():
        return model(ids[:, -model.config.block_size:])[0].numpy()[:, -1].astype(np.float64)


def generate_by_hand(model, ids, n, temperature=0.0, top_k=None, top_p=None, penalty=1.0, rng=None):
    """Independent loop: crop + full forward + NumPy processors; the reference for generate."""
    ids = np.array(ids)
    for _ in range(n):
        logits = full_logits(model, ids)
        logits = G.apply_repetition_penalty(logits, ids, penalty)
        if temperature == 0:
            nxt = logits.argmax(-1)
        else:
            nxt = G.sample(G.top_p_filter(G.top_k_filter(logits / temperature, top_k), top_p), rng)
        ids = np.concatenate([ids, nxt[:, None]], axis=1)
    return ids


# ============================================================================ the cache
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_cached_logits_equal_full_forward(name, dtype):
    """Prefill 3 tokens, then feed chunks of 1, 2, 1, 1: each chunk's logits at every position
    equal the full forward's over the whole prefix."""
    model = make_model(dtype, **CONFIGS[name])
    ids = prompt(2, model.config.block_size)
    cache = KVCache.for_model(model, 2)
    tol = dict(rtol=1e-10, atol=1e-12) if dtype == np.float64 else dict(rtol=1e-5, atol=1e-5)
    t = 0
    with tg.no_grad():
        for n in (3, 1, 2, 1, 1):
            got = model(ids[:, t:t + n], kv_cache=cache)[0].numpy()
            ref = model(ids[:, :t + n])[0].numpy()[:, t:]
            np.testing.assert_allclose(got, ref, **tol)
            t += n
            assert cache.length == t
    assert t == model.config.block_size
    assert cache.k[0].shape == (2, 2, model.config.block_size, 4) and cache.k[0].dtype == dtype


@pytest.mark.parametrize("name", list(CONFIGS))
def test_cached_logits_equal_full_forward_at_every_generation_step(name):
    """Inside generate (past the context, so through re-prefills): the logits the cached path
    samples from equal an uncached forward of the cropped context, step by step."""
    model = make_model(**CONFIGS[name])
    ids = prompt(3, 2)
    cache, state = KVCache.for_model(model, 3), {"start": 0}
    for _ in range(2 * model.config.block_size):
        got = G.next_logits(model, ids, cache, state)
        np.testing.assert_allclose(got, full_logits(model, ids), rtol=1e-5, atol=1e-5)
        ids = np.concatenate([ids, got.argmax(-1)[:, None]], axis=1)
    assert ids.shape[1] > model.config.block_size


@pytest.mark.parametrize("T", [1, 5, 11])
def test_cache_feeds_one_token_per_step_then_reprefills(T, monkeypatch):
    """What each step runs through the stack: with the cache, the prompt (cropped to block_size)
    once, then 1 token per step until the context is full, then block_size per step (re-prefill,
    as the uncached path, which always runs the cropped context)."""
    model = make_model()
    bs = model.config.block_size
    fed = []
    original = model.hidden_states
    monkeypatch.setattr(model, "hidden_states", lambda idx, **kw: fed.append(idx.shape[1]) or original(idx, **kw))
    n = 12
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.generate(prompt(2, T), n, temperature=0)
        cached, fed[:] = list(fed), []
        model.generate(prompt(2, T), n, temperature=0, use_cache=False)
    first = min(T, bs)
    expected = [first] + [1 if first + i <= bs else bs for i in range(1, n)]
    assert cached == expected
    assert fed == [min(T + i, bs) for i in range(n)]


def test_cache_errors():
    model = make_model()
    cache = KVCache.for_model(model, 2)
    with pytest.raises(RuntimeError, match="no_grad"):
        model(prompt(2, 3), kv_cache=cache)
    with tg.no_grad():
        with pytest.raises(ValueError, match="batch size 3"):
            model(prompt(3, 3), kv_cache=cache)
        model(prompt(2, 6), kv_cache=cache)
        with pytest.raises(ValueError, match="exceed the context"):
            model(prompt(2, 3), kv_cache=cache)
        assert cache.length == 6
        cache.reset()
        model(prompt(2, 8), kv_cache=cache)
        assert cache.length == 8
    with pytest.raises(ValueError, match="layers"):
        with tg.no_grad():
            model(prompt(2, 1), kv_cache=KVCache(3, 2, 2, 4, 8))
    with pytest.raises(ValueError, match="max_length"):
        KVCache(1, 1, 1, 1, 0)


# ============================================================================ cached vs uncached generation
@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("B,T", [(1, 1), (3, 1), (2, 5), (2, 8)])
def test_cached_equals_uncached_greedy(name, B, T):
    model = make_model(**CONFIGS[name])
    idx = prompt(B, T)
    n = 2 * model.config.block_size + 3  # well past the context: the window slides
    cached = model.generate(idx, n, temperature=0)
    np.testing.assert_array_equal(cached, model.generate(idx, n, temperature=0, use_cache=False))
    np.testing.assert_array_equal(cached, generate_by_hand(model, idx, n))


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("opts", [dict(), dict(temperature=0.8, top_k=5), dict(temperature=1.3, top_p=0.8),
                                  dict(top_k=6, top_p=0.9, repetition_penalty=1.4)])
def test_cached_equals_uncached_seeded_sampling(name, opts):
    model = make_model(**CONFIGS[name])
    idx = prompt(3, 2)
    cached = model.generate(idx, 20, seed=11, **opts)
    np.testing.assert_array_equal(cached, model.generate(idx, 20, seed=11, use_cache=False, **opts))
    ref = generate_by_hand(model, idx, 20, opts.get("temperature", 1.0), opts.get("top_k"), opts.get("top_p"),
                           opts.get("repetition_penalty", 1.0), np.random.default_rng(11))
    np.testing.assert_array_equal(cached, ref)


def test_greedy_with_repetition_penalty_matches_loop():
    model = make_model()
    idx = prompt(2, 3)
    for penalty in (1.5, 0.7):
        out = model.generate(idx, 12, temperature=0, repetition_penalty=penalty)
        np.testing.assert_array_equal(out, generate_by_hand(model, idx, 12, penalty=penalty))
        np.testing.assert_array_equal(out, model.generate(idx, 12, temperature=0, repetition_penalty=penalty,
                                                          use_cache=False))
    plain = model.generate(idx, 12, temperature=0)
    assert not np.array_equal(plain, model.generate(idx, 12, temperature=0, repetition_penalty=3.0))


def test_generate_is_reproducible_and_keeps_modes():
    model = make_model(dropout=0.1)
    model.train()
    idx = prompt(2, 3)
    a = model.generate(idx, 10, seed=3)
    np.testing.assert_array_equal(model.generate(idx, 10, seed=3), a)
    assert model.training and all(m.training for m in model.modules()) and tg.is_grad_enabled()
    model.eval()
    np.testing.assert_array_equal(model.generate(idx, 10, seed=3), a)  # dropout was off while generating


# ============================================================================ logits processors
def test_repetition_penalty_hand_computed():
    logits = np.array([[2.0, -1.0, 0.5, -3.0, 0.0], [2.0, -1.0, 0.5, -3.0, 0.0]])
    ids = np.array([[0, 1, 1], [4, 3, 3]])
    out = G.apply_repetition_penalty(logits, ids, 2.0)
    np.testing.assert_array_equal(out, [[1.0, -2.0, 0.5, -3.0, 0.0], [2.0, -1.0, 0.5, -6.0, 0.0]])
    np.testing.assert_array_equal(G.apply_repetition_penalty(logits, ids, 1.0), logits)


def test_top_k_and_top_p_against_direct_definitions():
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((50, 23)) * 3
    for k in (1, 2, 7, 23, 40):
        got = G.top_k_filter(logits, k)
        for row, g in zip(logits, got):
            keep = row >= np.sort(row)[-min(k, row.size)]
            np.testing.assert_array_equal(np.isfinite(g), keep)
            np.testing.assert_array_equal(g[keep], row[keep])
    for p in (1e-9, 0.1, 0.5, 0.9, 0.999, 1.0):
        got = G.top_p_filter(logits, p)
        for row, g in zip(logits, got):
            probs = np.exp(row - row.max())
            probs /= probs.sum()
            order = np.argsort(-probs)
            m = 1  # the smallest number of top tokens whose mass reaches p
            while m < row.size and probs[order[:m]].sum() < p:
                m += 1
            keep = np.zeros(row.size, bool)
            keep[order[:m]] = True
            np.testing.assert_array_equal(np.isfinite(g), keep)
            np.testing.assert_array_equal(g[keep], row[keep])


def test_processors_match_transformers():
    torch = pytest.importorskip("torch")
    lp = pytest.importorskip("transformers.generation.logits_process")
    rng = np.random.default_rng(1)
    logits = rng.standard_normal((8, 31)) * 2
    ids = rng.integers(0, 31, size=(8, 12))
    for temperature, top_k, top_p, penalty in [(1.0, None, None, 1.3), (0.7, 5, None, 1.0), (1.5, None, 0.8, 1.0),
                                               (0.9, 10, 0.7, 1.2), (2.0, 3, 0.95, 0.8), (0.5, 31, 0.3, 2.0)]:
        chain = []
        if penalty != 1.0:
            chain.append(lp.RepetitionPenaltyLogitsProcessor(penalty))
        chain.append(lp.TemperatureLogitsWarper(temperature))
        if top_k is not None:
            chain.append(lp.TopKLogitsWarper(top_k))
        if top_p is not None:
            chain.append(lp.TopPLogitsWarper(top_p))
        ref = torch.tensor(logits)
        for proc in chain:
            ref = proc(torch.tensor(ids), ref)
        ref = ref.numpy()
        got = G.process_logits(logits, ids, temperature, top_k, top_p, penalty)
        np.testing.assert_array_equal(np.isfinite(got), np.isfinite(ref))
        np.testing.assert_allclose(got[np.isfinite(got)], ref[np.isfinite(ref)], rtol=1e-12, atol=1e-12)


def test_sample_frequencies_match_softmax():
    rng = np.random.default_rng(2)
    logits = np.array([1.0, 0.0, -1.0, 2.0, -np.inf, 0.5])
    n = 40000
    draws = G.sample(np.tile(logits, (n, 1)), rng)
    p = G.softmax(logits[None])[0]
    freq = np.bincount(draws, minlength=6) / n
    assert freq[4] == 0
    np.testing.assert_array_less(np.abs(freq - p), 5 * np.sqrt(p * (1 - p) / n) + 1e-12)


def test_generate_first_token_distribution():
    """Many rows through generate: the first sampled token's frequencies equal softmax of the
    processed model logits (penalty, temperature, top-k, top-p), and filtered tokens never occur."""
    model = make_model(vocab_size=13)
    idx = prompt(1, 4, vocab=13, seed=5)
    opts = dict(temperature=0.8, top_k=6, top_p=0.9, repetition_penalty=1.5)
    n = 6000
    out = model.generate(idx, 1, num_return_sequences=n, seed=0, **opts)
    logits = G.process_logits(full_logits(model, idx), idx, opts["temperature"], opts["top_k"], opts["top_p"],
                              opts["repetition_penalty"])
    p = G.softmax(logits)[0]
    freq = np.bincount(out[:, -1], minlength=13) / n
    assert (freq[p == 0] == 0).all() and (p == 0).sum() >= 7
    np.testing.assert_array_less(np.abs(freq - p), 5 * np.sqrt(p * (1 - p) / n) + 1e-12)


def test_temperature_zero_and_tiny_filters_are_greedy():
    model = make_model()
    idx = prompt(2, 3)
    greedy = model.generate(idx, 10, temperature=0)
    np.testing.assert_array_equal(model.generate(idx, 10, top_k=1, seed=1), greedy)
    np.testing.assert_array_equal(model.generate(idx, 10, top_p=1e-9, seed=1), greedy)
    np.testing.assert_array_equal(model.generate(idx, 10, temperature=1e-4, seed=1), greedy)


# ============================================================================ eos, num_return_sequences, stream
@pytest.mark.parametrize("use_cache", [True, False])
def test_eos_finishes_rows_and_pads(use_cache):
    model = make_model()
    idx = prompt(3, 2)
    free = model.generate(idx, 12, temperature=0)
    eos = int(free[0, 4])  # row 0 emits it at its 3rd new token
    out = model.generate(idx, 12, temperature=0, eos_token_id=eos, use_cache=use_cache)
    new_free, new = free[:, 2:], out[:, 2:]
    first = [int(np.argmax(r == eos)) if (r == eos).any() else None for r in new_free]
    assert first[0] is not None and first[0] <= 2
    expected_len = 12 if None in first else max(first) + 1
    assert out.shape == (3, 2 + expected_len)
    for b in range(3):
        stop = expected_len if first[b] is None else first[b] + 1
        np.testing.assert_array_equal(new[b, :stop], new_free[b, :stop])
        assert (new[b, stop:] == eos).all()


def test_eos_stops_early_when_all_rows_finish():
    model = make_model()
    idx = prompt(1, 3)
    free = model.generate(idx, 8, temperature=0)
    eos = int(free[0, 5])
    out = model.generate(idx, 8, temperature=0, eos_token_id=eos)
    k = int(np.argmax(free[0, 3:] == eos))
    np.testing.assert_array_equal(out, free[:, :3 + k + 1])
    assert len(list(model.stream(idx, 8, temperature=0, eos_token_id=eos))) == k + 1


def test_num_return_sequences():
    model = make_model()
    idx = prompt(2, 3)
    out = model.generate(idx, 5, num_return_sequences=4, seed=0)
    assert out.shape == (8, 8)
    np.testing.assert_array_equal(out[:, :3], np.repeat(idx, 4, axis=0))
    assert len({tuple(r) for r in out[:4, 3:]}) > 1  # the copies sample independently
    greedy = model.generate(idx, 5, temperature=0, num_return_sequences=3)
    np.testing.assert_array_equal(greedy, np.repeat(model.generate(idx, 5, temperature=0), 3, axis=0))
    t = model.generate(tg.Tensor(idx[0]), 2, num_return_sequences=2)
    assert isinstance(t, tg.Tensor) and t.shape == (2, 5)


@pytest.mark.parametrize("use_cache", [True, False])
def test_stream_yields_generate_tokens(use_cache):
    model = make_model()
    idx = prompt(2, 3)
    opts = dict(temperature=0.9, top_k=8, repetition_penalty=1.2, num_return_sequences=2, seed=4, use_cache=use_cache)
    steps = list(model.stream(idx, 14, **opts))
    assert len(steps) == 14 and all(s.shape == (4,) and s.dtype == np.int64 for s in steps)
    np.testing.assert_array_equal(np.stack(steps, axis=1), model.generate(idx, 14, **opts)[:, 3:])


def test_stream_is_lazy_and_leaks_no_mode():
    model = make_model()
    model.train()
    it = model.stream(prompt(1, 2), 5, seed=0)
    first = next(it)
    assert first.shape == (1,)
    assert tg.is_grad_enabled() and model.training  # between yields the caller's modes hold
    assert len(list(it)) == 4


# ============================================================================ prompts and arguments
def test_long_prompt_is_cropped_with_warning():
    model = make_model()
    bs = model.config.block_size
    idx = prompt(2, bs + 3)
    with pytest.warns(UserWarning, match="cropped from the left"):
        out = model.generate(idx, 5, temperature=0)
    assert out.shape == (2, bs + 8)
    np.testing.assert_array_equal(out, generate_by_hand(model, idx, 5))
    with pytest.warns(UserWarning, match="cropped"):
        model.stream(idx, 1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.generate(prompt(2, bs), 3)  # exactly the context: no warning


@pytest.mark.parametrize("kw,exc,match", [
    (dict(max_new_tokens=-1), ValueError, "max_new_tokens"),
    (dict(max_new_tokens=2.5), ValueError, "max_new_tokens"),
    (dict(temperature=-1.0), ValueError, "temperature"),
    (dict(temperature=float("nan")), ValueError, "temperature"),
    (dict(top_k=0), ValueError, "top_k"),
    (dict(top_k=2.0), ValueError, "top_k"),
    (dict(top_p=0.0), ValueError, "top_p"),
    (dict(top_p=1.5), ValueError, "top_p"),
    (dict(repetition_penalty=0.0), ValueError, "repetition_penalty"),
    (dict(repetition_penalty=float("inf")), ValueError, "repetition_penalty"),
    (dict(num_return_sequences=0), ValueError, "num_return_sequences"),
    (dict(eos_token_id=17), ValueError, "eos_token_id"),
    (dict(eos_token_id=-1), ValueError, "eos_token_id"),
    (dict(seed=-3), ValueError, "seed"),
    (dict(use_cache="yes"), TypeError, "use_cache"),
])
def test_argument_errors(kw, exc, match):
    model = make_model()
    args = {"max_new_tokens": 2, **kw}
    with pytest.raises(exc, match=match):
        model.generate(prompt(1, 2), **args)
    with pytest.raises(exc, match=match):
        model.stream(prompt(1, 2), **args)  # checked at the call, before the first next()


def test_options_by_position_or_keyword_are_one_generation_config():
    """generate/stream take GenerationConfig's fields after idx, in its order, by position or keyword;
    the config is checked once when made and cannot change afterwards."""
    model = make_model()
    idx = prompt(2, 3)
    kw = dict(max_new_tokens=9, temperature=0.8, top_k=6, top_p=0.9, repetition_penalty=1.3, num_return_sequences=2,
              eos_token_id=None, seed=3, use_cache=False)
    assert [f.name for f in dataclasses.fields(G.GenerationConfig)] == list(kw)
    by_keyword = model.generate(idx, **kw)
    np.testing.assert_array_equal(model.generate(idx, *kw.values()), by_keyword)
    np.testing.assert_array_equal(model.generate(idx, 9, 0.8, 6, top_p=0.9, repetition_penalty=1.3,
                                                 num_return_sequences=2, seed=3, use_cache=False), by_keyword)
    np.testing.assert_array_equal(np.stack(list(model.stream(idx, *kw.values())), axis=1), by_keyword[:, 3:])
    opts = G.GenerationConfig(**kw)
    np.testing.assert_array_equal(model.generate(idx, opts), by_keyword)  # or one GenerationConfig
    np.testing.assert_array_equal(np.stack(list(model.stream(idx, opts)), axis=1), by_keyword[:, 3:])
    assert opts.temperature == 0.8 and G.GenerationConfig(5, temperature=1).temperature == 1.0  # stored as float
    with pytest.raises(dataclasses.FrozenInstanceError):
        opts.temperature = -1.0
    with pytest.raises(TypeError, match="top_q"):
        model.generate(idx, 2, top_q=0.5)
    with pytest.raises(TypeError, match="max_new_tokens"):
        model.stream(idx)


# ============================================================================ non-finite logits
def untied_model(**kw):
    return make_model(tie_weights=False, **kw)


@pytest.mark.parametrize("use_cache", [True, False])
@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_nan_logits_raise_naming_the_step(use_cache, temperature):
    """A token whose embedding is NaN makes the logits NaN from the step after it first appears:
    generate and stream raise FloatingPointError naming that step (they used to emit token 0).
    The same seed draws the same tokens until then, so the step is known in advance."""
    model = untied_model()
    idx = prompt(1, 3)
    opts = dict(temperature=temperature, use_cache=use_cache, seed=0)
    new = [int(t) for t in model.generate(idx, 10, **opts)[0, 3:]]
    fresh = [i for i, t in enumerate(new) if t not in idx[0] and t not in new[:i]]  # first appearances (0-based)
    k = fresh[-1]  # the last of them: the latest step that can be poisoned
    model.transformer.wte.weight.data[new[k]] = np.nan
    with pytest.raises(FloatingPointError, match=rf"step {k + 2} of 10: .*logits are not finite \(17 NaN, 0 \+inf"):
        model.generate(idx, 10, **opts)  # the NaN reaches every one of the 17 logits of the row
    it = model.stream(idx, 10, **opts)
    assert [int(next(it)[0]) for _ in range(k + 1)] == new[:k + 1]  # the steps before it are unchanged
    with pytest.raises(FloatingPointError, match=rf"step {k + 2} of 10"):
        next(it)


def test_inf_logits_raise():
    """+inf in one logit (an overflowed weight): FloatingPointError at step 1, counting it."""
    model = untied_model()
    ln_f, head = model.transformer.ln_f, model.lm_head
    ln_f.weight.data[0], ln_f.bias.data[0] = 0.0, 1.0  # hidden channel 0 is exactly 1
    head.weight.data[4] = 0.0
    head.weight.data[4, 0] = np.inf  # logit 4 = inf * 1 = +inf exactly
    for gen in (lambda: model.generate(prompt(2, 3), 5, temperature=0),
                lambda: next(model.stream(prompt(2, 3), 5, seed=1))):
        with pytest.raises(FloatingPointError, match=r"step 1 of 5: .*\(0 NaN, 2 \+inf, 0 -inf\) in row\(s\) 0, 1"):
            gen()


def test_temperature_too_small_for_float64_raises():
    """logits / 1e-310 overflows to +-inf and softmax gives NaN: an error that says to use temperature=0
    (it used to draw token 0)."""
    model = make_model()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # numpy's overflow warnings come first
        with pytest.raises(FloatingPointError, match="temperature=0"):
            model.generate(prompt(1, 3), 2, temperature=1e-310, seed=0)
        with pytest.raises(FloatingPointError, match=r"row\(s\) \[1\]"):
            G.sample(np.array([[0.0, 1.0], [-np.inf, -np.inf]]), np.random.default_rng(0))


@pytest.mark.parametrize("idx,exc,match", [
    (np.array([[1.0, 2.0]]), TypeError, "integers"),
    (np.zeros((1, 0), dtype=np.int64), ValueError, "empty"),
    ([], ValueError, "empty"),
    (np.zeros((2, 2, 2), dtype=np.int64), ValueError, "shape"),
    (np.array([[0, 17]]), ValueError, "token id 17"),
    (np.array([[-1, 3]]), ValueError, "token id -1"),
])
def test_prompt_errors(idx, exc, match):
    with pytest.raises(exc, match=match):
        make_model().generate(idx, 2)


def test_zero_new_tokens_and_1d_prompt():
    model = make_model()
    np.testing.assert_array_equal(model.generate(np.array([3, 4]), 0, num_return_sequences=2), [[3, 4], [3, 4]])
    assert model.generate([5], 3).shape == (1, 4)


# ============================================================================ Hugging Face GPT-2 end to end
def test_greedy_matches_transformers_gpt2():
    """Same weights in transformers' GPT2LMHeadModel: greedy generate (its own KV cache) and with a
    repetition penalty give the same tokens as tinygpt."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    model = make_model(np.float64, vocab_size=29, block_size=16, n_layer=2, n_head=2, n_embd=12)
    c = model.config
    hf_cfg = transformers.GPT2Config(vocab_size=c.vocab_size, n_positions=c.block_size, n_embd=c.n_embd,
                                     n_layer=c.n_layer, n_head=c.n_head, activation_function="gelu_new",
                                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, layer_norm_epsilon=1e-5,
                                     tie_word_embeddings=True, bos_token_id=None, eos_token_id=None,
                                     pad_token_id=None)
    hf = transformers.GPT2LMHeadModel(hf_cfg).double().eval()
    sd = {name: torch.tensor(p.numpy()) for name, p in model.named_parameters()}
    conv1d = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
    with torch.no_grad():
        for name, p in hf.named_parameters():
            src = sd[name]
            p.copy_(src.T if name.endswith(conv1d) else src)  # HF Conv1D stores (in, out)
    idx = prompt(2, 4, vocab=c.vocab_size)
    for penalty in (1.0, 1.6):
        ref = hf.generate(torch.tensor(idx), attention_mask=torch.ones(idx.shape, dtype=torch.long),
                          max_new_tokens=10, do_sample=False, repetition_penalty=penalty, use_cache=True).numpy()
        np.testing.assert_array_equal(model.generate(idx, 10, temperature=0, repetition_penalty=penalty), ref)
