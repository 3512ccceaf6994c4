"""Float64 NumPy references written independently of tinygpt, and the tolerances of the tests of
tinygpt.functional (tests/ops/test_<family>.py: value vs these, float64
finite-difference gradients, torch.nn.functional where installed). float32 tests there run on every
kernel implementation (fixture `kernel_impl`: reference, and native when built). Tolerances: float64 values 1e-12..1e-10;
finite differences rtol 1e-5 / atol 1e-6; float32 vs float64 NumPy or torch rtol 1e-5..1e-4.
"""
import math

import numpy as np
import pytest

VAL64 = dict(rtol=1e-12, atol=1e-12)
F32 = dict(rtol=1e-5, atol=1e-6)  # float32 forward vs float64
F32_GRAD = dict(rtol=1e-4, atol=1e-5)  # float32 grads vs torch float32
T64 = dict(rtol=1e-10, atol=1e-12)  # float64 vs torch float64


def tf():
    return pytest.importorskip("torch").nn.functional


# ------------------------------------------------------------------ independent NumPy references
def np_softmax(x, axis=-1):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def np_log_softmax(x, axis=-1):
    s = x - x.max(axis=axis, keepdims=True)
    return s - np.log(np.exp(s).sum(axis=axis, keepdims=True))


def np_layer_norm(x, w=None, b=None, eps=1e-5):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    y = (x - mu) / np.sqrt(var + eps)
    return y * (1.0 if w is None else w) + (0.0 if b is None else b)


np_erf = np.vectorize(math.erf)


def np_gelu(x, approximate):
    if approximate == "tanh":
        return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))
    return 0.5 * x * (1.0 + np_erf(x / math.sqrt(2.0)))


def np_cross_entropy(logits, targets, ignore_index=-1):
    lp = np_log_softmax(logits.reshape(-1, logits.shape[-1]))
    t = targets.reshape(-1)
    keep = t != ignore_index
    return -lp[np.flatnonzero(keep), t[keep]].mean()


def visible(t_q, t_k, causal, window):
    """(t_q, t_k) bool: query i sits at position t_k - t_q + i; it sees key j when j is not in its
    future (causal) and is within `window` positions of it (window)."""
    m = np.ones((t_q, t_k), bool)
    for i in range(t_q):
        pos = t_k - t_q + i
        for j in range(t_k):
            if causal and j > pos:
                m[i, j] = False
            if window is not None and abs(pos - j) >= window:
                m[i, j] = False
    return m


def np_attention(q, k, v, causal, window, scale=None):
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    s = np.einsum("...qd,...kd->...qk", q, k) * scale
    s = np.where(visible(q.shape[-2], k.shape[-2], causal, window), s, -np.inf)
    return np.einsum("...qk,...kd->...qd", np_softmax(s), v)
