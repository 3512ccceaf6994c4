"""Autoregressive generation: its options (GenerationConfig), a KV cache, the logits processors and the loop.

KVCache keeps every layer's keys and values for the tokens already seen, so a new token
costs one (1, C) pass through the stack plus attention over the cached keys: O(T) per token
instead of re-running the whole O(T^2) prefix. It is inference-only (no graph is kept).

The context window slides by re-prefill. With absolute positions (learned or sinusoidal) a
token's hidden states depend on its position and on every token before it in the window, so
when the window moves by one token every cached key/value changes; a rolling cache (drop the
oldest entry, keep the rest) would condition on states the uncached model never computes.
So once the cache holds block_size tokens, the next step resets it and re-runs the last
block_size tokens: generation stays exactly the uncached model's (one full forward per token
past the context, as without the cache).

Sampling runs on the host in float64 with a NumPy Generator, so a seed gives the same tokens
on numpy and cupy models. Order of the logits processors (as Hugging Face's generate):
repetition penalty -> temperature -> top-k -> top-p -> sample (argmax at temperature 0).
"""
from __future__ import annotations

import math
import numbers
import warnings
from dataclasses import dataclass

import numpy as np

from .. import functional as F
from .. import random as _random
from ..autograd import is_grad_enabled, no_grad
from ..backend import to_device, to_numpy
from ..backend import xp as array_module
from ..tensor import Tensor
from . import fastpath


def embedding_array(emb):
    """An array with the device and float dtype of embedding `emb`'s output, without building anything:
    its float weight, or a quantized embedding's scales (its `.weight` would dequantize the whole table)."""
    table = getattr(emb, "_table", None)
    return table()[1] if table is not None else emb.weight.data


# ============================================================================ KV cache
class KVCache:
    """Per-layer keys and values (B, nh, max_length, hs), preallocated and filled in place.

    `length` tokens are stored (the same in every layer); the next token sits at position
    `length`. GPT.forward(idx, kv_cache=cache) runs idx at positions length..length+T-1
    against the cached keys and then advances `length` by T. Inference only (under no_grad).
    """

    def __init__(self, n_layer: int, batch_size: int, n_head: int, head_size: int, max_length: int,
                 dtype=np.float32, xp=np):
        for name, value in (("n_layer", n_layer), ("batch_size", batch_size), ("n_head", n_head),
                            ("head_size", head_size), ("max_length", max_length)):
            if not isinstance(value, numbers.Integral) or value < 1:
                raise ValueError(f"KVCache: {name} must be a positive int, got {value!r}")
        shape = (batch_size, n_head, max_length, head_size)
        self.k = [xp.zeros(shape, dtype=dtype) for _ in range(n_layer)]
        self.v = [xp.zeros(shape, dtype=dtype) for _ in range(n_layer)]
        self.batch_size, self.max_length, self.length = batch_size, max_length, 0

    @classmethod
    def for_model(cls, model, batch_size: int) -> KVCache:
        """An empty cache for `model` on its device and dtype, holding up to block_size tokens."""
        c = model.config
        w = embedding_array(model.transformer.wte)
        return cls(c.n_layer, batch_size, c.n_head, c.n_embd // c.n_head, c.block_size, dtype=w.dtype,
                   xp=array_module(w))

    @property
    def n_layer(self) -> int:
        return len(self.k)

    def reset(self) -> None:
        """Forget every stored token (the arrays are reused)."""
        self.length = 0

    def layer(self, i: int) -> LayerKV:
        return LayerKV(self, i)

    def advance(self, n: int) -> None:
        self.length += n

    def check(self, batch_size: int, n_new: int, n_layer: int) -> None:
        """Clear errors before a forward that would misuse the cache."""
        if is_grad_enabled():
            raise RuntimeError("KVCache is inference-only (it keeps no graph): run the model under tg.no_grad()")
        if batch_size != self.batch_size:
            raise ValueError(f"KVCache: batch size {batch_size} does not match the cache's {self.batch_size}")
        if n_layer != self.n_layer:
            raise ValueError(f"KVCache: the model has {n_layer} layers, the cache {self.n_layer}")
        if self.length + n_new > self.max_length:
            raise ValueError(
                f"KVCache: {n_new} new tokens after {self.length} cached exceed the context ({self.max_length}); "
                "reset() the cache and re-prefill the last tokens (the window slides by re-prefill)"
            )


class LayerKV:
    """One layer's view of a KVCache, handed to CausalSelfAttention.forward."""

    def __init__(self, cache: KVCache, index: int):
        self.cache, self.index = cache, index

    def attend(self, qkv: Tensor, n_head: int, dropout_p: float = 0.0, window: int | None = None) -> Tensor:
        """Attention of the next T tokens (qkv (B, T, 3C), c_attn's output for positions length..
        length+T-1) over the cached ones and themselves: their keys and values are stored at those
        positions and (B, T, C) comes back (functional.kv_attention, which reads the cache in place)."""
        cache = self.cache
        return F.kv_attention(qkv, cache.k[self.index], cache.v[self.index], cache.length, n_head,
                              dropout_p=dropout_p, window=window)


# ============================================================================ logits processors
# All take and return float64 numpy logits (B, vocab); -inf marks a removed token.
def apply_repetition_penalty(logits: np.ndarray, ids: np.ndarray, penalty: float) -> np.ndarray:
    """CTRL (Keskar et al. 2019) as Hugging Face: for tokens already in the row's ids (B, N),
    positive logits are divided by `penalty` and negative ones multiplied by it."""
    if penalty == 1.0:
        return logits
    present = np.zeros(logits.shape, dtype=bool)
    present[np.arange(ids.shape[0])[:, None], ids] = True  # (B, N) ids -> (B, vocab) mask
    return np.where(present, np.where(logits < 0, logits * penalty, logits / penalty), logits)


def top_k_filter(logits: np.ndarray, k: int | None) -> np.ndarray:
    """Keep the k largest logits of each row (ties with the k-th are kept), -inf elsewhere."""
    if k is None or k >= logits.shape[-1]:
        return logits
    kth = np.partition(logits, -k, axis=-1)[:, -k][:, None]
    return np.where(logits < kth, -np.inf, logits)


def top_p_filter(logits: np.ndarray, p: float | None) -> np.ndarray:
    """Nucleus: keep the smallest set of most likely tokens whose probability reaches p (at least
    the top token); -inf elsewhere. A token is dropped when the tokens ranked above it already hold p."""
    if p is None or p >= 1.0:
        return logits
    probs = softmax(logits)
    order = np.argsort(-probs, axis=-1, kind="stable")
    sorted_p = np.take_along_axis(probs, order, axis=-1)
    drop_sorted = np.cumsum(sorted_p, axis=-1) - sorted_p >= p
    drop_sorted[:, 0] = False
    drop = np.zeros_like(drop_sorted)
    np.put_along_axis(drop, order, drop_sorted, axis=-1)
    return np.where(drop, -np.inf, logits)


def softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def process_logits(logits: np.ndarray, ids: np.ndarray, temperature: float, top_k: int | None = None,
                   top_p: float | None = None, repetition_penalty: float = 1.0) -> np.ndarray:
    """The logits sampling draws from: penalty, then /temperature, top-k, top-p (temperature > 0)."""
    logits = apply_repetition_penalty(logits, ids, repetition_penalty)
    return top_p_filter(top_k_filter(logits / temperature, top_k), top_p)


def sample_next(logits: np.ndarray, temperature: float, top_k: int | None, top_p: float | None,
                rng: np.random.Generator) -> np.ndarray:
    """One token per row from logits (B, vocab): greedy at temperature 0, else top-k / nucleus sampling."""
    if temperature == 0:
        return logits.argmax(axis=-1)
    return sample(top_p_filter(top_k_filter(logits / temperature, top_k), top_p), rng)


def sample(logits: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One draw per row from softmax(logits) by inverse CDF (one uniform per row)."""
    probs = softmax(logits)
    cdf = np.cumsum(probs, axis=-1)
    bad = ~np.isfinite(cdf[:, -1])  # NaN total: a +inf or NaN logit, or a row of -inf (would draw token 0)
    if bad.any():
        raise FloatingPointError(
            f"generate: cannot sample row(s) {np.flatnonzero(bad).tolist()[:10]}: softmax of the processed logits "
            "is not finite (a logit is +inf or NaN, or every logit is -inf; logits / temperature overflows "
            "float64 at a tiny temperature: use temperature=0 for greedy decoding)")
    u = rng.random((probs.shape[0], 1)) * cdf[:, -1:]  # scaled by the total so rounding cannot overshoot
    return (cdf <= u).sum(axis=-1)  # first index whose cdf exceeds u: always a token with p > 0


# ============================================================================ the options
def _is_int(x) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


@dataclass(frozen=True)
class GenerationConfig:
    """Every option of GPT.generate and GPT.stream, checked once, when it is made.

    The fields, in this order, are the arguments after `idx` of generate and stream (by
    position or by keyword). eos_token_id's upper bound (the vocabulary) is checked against
    the model when generation starts.
    """

    max_new_tokens: int                  # tokens to add (int >= 0)
    temperature: float = 1.0             # logits / temperature before sampling; 0 = greedy (argmax)
    top_k: int | None = None             # sample among the k most likely tokens
    top_p: float | None = None           # nucleus: the most likely tokens holding probability p
    repetition_penalty: float = 1.0      # CTRL / Hugging Face; > 1 discourages repeats, 1 = off
    num_return_sequences: int = 1        # each prompt row repeated n times
    eos_token_id: int | None = None      # a row that emits it is finished (then padded with it)
    seed: int | None = None              # a private RNG for this call (else tinygpt's global one)
    use_cache: bool = True               # KV cache (O(T) per token); False re-runs the context

    def __post_init__(self):
        if not _is_int(self.max_new_tokens) or self.max_new_tokens < 0:
            raise ValueError(f"generate: max_new_tokens must be an int >= 0, got {self.max_new_tokens!r}")
        t = self.temperature
        if not isinstance(t, numbers.Real) or not math.isfinite(t) or t < 0:
            raise ValueError(f"generate: temperature must be a finite number >= 0 (0 = greedy), got {t!r}")
        if self.top_k is not None and (not _is_int(self.top_k) or self.top_k < 1):
            raise ValueError(f"generate: top_k must be an int >= 1 or None, got {self.top_k!r}")
        p = self.top_p
        if p is not None and (not isinstance(p, numbers.Real) or not 0.0 < p <= 1.0):
            raise ValueError(f"generate: top_p must be in (0, 1] or None, got {p!r}")
        r = self.repetition_penalty
        if not isinstance(r, numbers.Real) or not math.isfinite(r) or r <= 0:
            raise ValueError(f"generate: repetition_penalty must be a finite number > 0 (1 = off), got {r!r}")
        if not _is_int(self.num_return_sequences) or self.num_return_sequences < 1:
            raise ValueError(f"generate: num_return_sequences must be an int >= 1, got {self.num_return_sequences!r}")
        if self.eos_token_id is not None and (not _is_int(self.eos_token_id) or self.eos_token_id < 0):
            raise ValueError(f"generate: eos_token_id must be None or a token id >= 0, got {self.eos_token_id!r}")
        if self.seed is not None and (not _is_int(self.seed) or self.seed < 0):
            raise ValueError(f"generate: seed must be None or an int >= 0, got {self.seed!r}")
        if not isinstance(self.use_cache, bool):
            raise TypeError(f"generate: use_cache must be True or False, got {self.use_cache!r}")
        object.__setattr__(self, "temperature", float(t))  # frozen: set once, here
        object.__setattr__(self, "repetition_penalty", float(r))

    @classmethod
    def from_args(cls, *args, **kwargs) -> GenerationConfig:
        """The options of generate(idx, ...) / stream(idx, ...): one GenerationConfig, or its fields."""
        if len(args) == 1 and not kwargs and isinstance(args[0], cls):
            return args[0]
        return cls(*args, **kwargs)


# ============================================================================ the loop
def prepare_prompt(idx, vocab_size: int, block_size: int) -> np.ndarray:
    """Prompt ids as a host int64 (B, T) array (a 1-D prompt is one row); warns when T > block_size."""
    raw = idx.data if isinstance(idx, Tensor) else idx
    ids = to_numpy(raw) if hasattr(raw, "dtype") else np.asarray(raw)
    if ids.ndim == 1:
        ids = ids[None, :]
    if ids.ndim != 2:
        raise ValueError(f"generate: idx must have shape (batch, time) or (time,), got {ids.shape}")
    if ids.shape[0] == 0 or ids.shape[1] == 0:
        raise ValueError(f"generate: empty prompt (shape {ids.shape}); give at least one token per row")
    if ids.dtype.kind not in "iu":
        raise TypeError(f"generate: token ids must be integers, got dtype {ids.dtype}")
    lo, hi = int(ids.min()), int(ids.max())
    if lo < 0 or hi >= vocab_size:
        raise ValueError(f"generate: token id {lo if lo < 0 else hi} is out of the vocabulary [0, {vocab_size})")
    if ids.shape[1] > block_size:
        warnings.warn(f"generate: the prompt has {ids.shape[1]} tokens, more than the context (block_size "
                      f"{block_size}); it is cropped from the left and the model sees only the last {block_size}",
                      stacklevel=3)
    return np.array(ids, dtype=np.int64)


class _Inference:
    """eval() + no_grad for one forward, restoring both (nothing leaks across a stream's yields)."""

    def __init__(self, model):
        self.model, self.grad = model, no_grad()

    def __enter__(self):
        self.was_training = self.model.training
        if self.was_training:
            self.model.eval()
        self.grad.__enter__()

    def __exit__(self, *exc):
        self.grad.__exit__(*exc)
        if self.was_training:
            self.model.train(True)


def next_logits(model, ids: np.ndarray, cache: KVCache | None, state: dict) -> np.ndarray:
    """float64 logits (B, vocab) for the token after ids (B, N), as the model sees the last block_size.

    Without a cache: one forward of the cropped context. With one: feed the tokens not yet
    cached; when they would overflow the context, reset and re-prefill the last block_size
    (state['start'] is the index in ids of the first cached token)."""
    bs = model.config.block_size
    N = ids.shape[1]
    if cache is None:
        feed = ids[:, -bs:]
    else:
        n_new = N - state["start"] - cache.length  # tokens of ids not cached yet
        if cache.length == 0 or cache.length + n_new > bs:  # first call, or the window slides
            cache.reset()
            state["start"] = max(0, N - bs)
        feed = ids[:, state["start"] + cache.length:]
    feed = to_device(feed, model.device)
    with _Inference(model):
        # with a cache, one native call from ids to the last logits where it covers the model (models/fastpath.py)
        logits = fastpath.cached_logits(model, feed, cache) if cache is not None else None
        if logits is None:
            h = model.hidden_states(feed, kv_cache=cache) if cache is not None else model.hidden_states(feed)
            logits = model.lm_head(h[:, -1:, :]).data[:, 0, :]  # last position only: (B, 1, C) -> (B, vocab)
    return to_numpy(logits).astype(np.float64)


def check_finite(logits: np.ndarray, step: int, n_steps: int) -> None:
    """FloatingPointError naming the step and what is not finite when the model's logits (B, vocab)
    hold NaN or inf (sampling from them would silently pick token 0)."""
    if np.isfinite(logits).all():
        return
    nan, pos, neg = np.isnan(logits), np.isposinf(logits), np.isneginf(logits)
    rows = np.flatnonzero((nan | pos | neg).any(axis=-1)).tolist()
    shown = ", ".join(map(str, rows[:10])) + (", ..." if len(rows) > 10 else "")
    raise FloatingPointError(
        f"generate: step {step + 1} of {n_steps}: the model's next-token logits are not finite "
        f"({int(nan.sum())} NaN, {int(pos.sum())} +inf, {int(neg.sum())} -inf) in row(s) {shown}; "
        "a weight or an activation is NaN/inf (check the parameters with np.isfinite)")


def stream_tokens(model, ids: np.ndarray, opts: GenerationConfig):
    """The iterator behind GPT.generate and GPT.stream: checks `opts` against the model now and
    returns generate_tokens' generator over the prompt ids (B, T) repeated num_return_sequences times."""
    vocab_size = model.config.vocab_size
    if opts.eos_token_id is not None and opts.eos_token_id >= vocab_size:
        raise ValueError(f"generate: eos_token_id must be None or a token id in [0, {vocab_size}), "
                         f"got {opts.eos_token_id!r}")
    rng = np.random.default_rng(opts.seed) if opts.seed is not None else _random.generator()
    ids = np.repeat(ids, opts.num_return_sequences, axis=0)  # (B, T) -> (B * n, T)
    return generate_tokens(model, ids, opts, rng)


def generate_tokens(model, ids: np.ndarray, opts: GenerationConfig, rng: np.random.Generator):
    """Yield one (B,) int64 array of new tokens per step; `ids` (B, T) is extended in a copy.

    Rows that produced opts.eos_token_id are finished: they yield eos_token_id from then on
    (padding), and the loop stops early once every row is finished.
    """
    B = ids.shape[0]
    cache = KVCache.for_model(model, B) if opts.use_cache and opts.max_new_tokens > 0 else None
    state = {"start": 0}
    finished = np.zeros(B, dtype=bool)
    eos = opts.eos_token_id
    for step in range(opts.max_new_tokens):
        logits = next_logits(model, ids, cache, state)
        check_finite(logits, step, opts.max_new_tokens)
        logits = apply_repetition_penalty(logits, ids, opts.repetition_penalty)
        nxt = sample_next(logits, opts.temperature, opts.top_k, opts.top_p, rng).astype(np.int64)
        if eos is not None:
            nxt = np.where(finished, eos, nxt)
            finished |= nxt == eos
        ids = np.concatenate([ids, nxt[:, None]], axis=1)
        yield nxt.copy()
        if finished.all():
            return
