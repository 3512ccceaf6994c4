"""Reference kernels: the ground truth every native kernel is tested against.

Plain array code through `xp` (numpy or cupy). Each fused op has `<op>_forward` returning
`(out, saved)` and `<op>_backward(grad, ..., saved)`; `saved` is whatever that
implementation's backward needs and is opaque to the caller, so a native kernel may save
something else (row statistics instead of the attention matrix, say).
"""
from __future__ import annotations

import math

import numpy as np

from .. import backend
from ..backend import xp as array_module

_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_GELU_TANH_C = 0.044715


# ----------------------------------------------------------------------------- linear
def linear_forward(x, weight, bias):
    """y = x @ weight.T + bias for x (..., in), weight (out, in), bias (out,) or None."""
    y = x.reshape(-1, x.shape[-1]) @ weight.T  # (N, in) @ (in, out) -> (N, out)
    if bias is not None:
        y += bias
    return y.reshape(x.shape[:-1] + (weight.shape[0],)), ()


def linear_backward(grad, x, weight, has_bias, saved):
    g2 = grad.reshape(-1, grad.shape[-1])  # (N, out)
    gx = (g2 @ weight).reshape(x.shape)
    gw = g2.T @ x.reshape(-1, x.shape[-1])  # (out, N) @ (N, in) -> (out, in)
    gb = g2.sum(axis=0) if has_bias else None
    return gx, gw, gb


def linear_gelu_forward(x, weight, bias):
    """y = gelu_tanh(x @ weight.T + bias): the MLP's first projection and its activation, fused.

    Saves the pre-activation h and tanh(u(h)) (what gelu_backward needs)."""
    h, _ = linear_forward(x, weight, bias)
    y, (t,) = gelu_forward(h, "tanh")
    return y, (h, t)


def linear_gelu_backward(grad, x, weight, has_bias, saved):
    h, t = saved
    dh = gelu_backward(grad, h, "tanh", (t,))
    return linear_backward(dh, x, weight, has_bias, ())


# ----------------------------------------------------------------------------- quantized_linear
QUANTIZED_BLOCK_ROWS = 4096  # output channels dequantized at a time: never a float copy of a whole big table


def quantized_weight(q, scale, dtype):
    """The float weight (out, in) that int8 q (out, in) with scale (out,), or packed int4 q (out, in/2)
    with group scales (out, in/group), stands for (tinygpt.quantize's layouts), in `dtype`."""
    from ..quantize import dequantize_int4  # noqa: PLC0415 - quantize imports the kernels

    if q.dtype == np.uint8:
        return dequantize_int4(q, scale, dtype)
    return q.astype(dtype) * scale.astype(dtype)[:, None]


def quantized_linear_forward(x, q, scale, bias, block_rows=QUANTIZED_BLOCK_ROWS):
    """y = x @ W.T + bias for W = quantized_weight(q, scale): dequantize `block_rows` output channels, matmul."""
    xp = array_module(x)
    out_f, in_f = q.shape[0], q.shape[1] * (2 if q.dtype == np.uint8 else 1)
    x2 = x.reshape(-1, in_f)  # (..., in) -> (N, in)
    y = xp.empty((x2.shape[0], out_f), dtype=x.dtype)
    for o in range(0, out_f, block_rows):
        w = quantized_weight(q[o:o + block_rows], scale[o:o + block_rows], x.dtype)  # (rows, in)
        y[:, o:o + block_rows] = x2 @ w.T  # (N, in) @ (in, rows)
    if bias is not None:
        y += bias.astype(x.dtype)
    return y.reshape(x.shape[:-1] + (out_f,)), ()


def quantized_linear_backward(grad, q, scale, block_rows=QUANTIZED_BLOCK_ROWS):
    """dx = grad @ W: the input gradient (the int weights have none)."""
    xp = array_module(grad)
    out_f, in_f = q.shape[0], q.shape[1] * (2 if q.dtype == np.uint8 else 1)
    g2 = grad.reshape(-1, out_f)  # (N, out)
    dx = xp.zeros((g2.shape[0], in_f), dtype=grad.dtype)
    for o in range(0, out_f, block_rows):
        dx += g2[:, o:o + block_rows] @ quantized_weight(q[o:o + block_rows], scale[o:o + block_rows], grad.dtype)
    return dx.reshape(grad.shape[:-1] + (in_f,))


def quantized_linear_gelu_forward(x, q, scale, bias, block_rows=QUANTIZED_BLOCK_ROWS):
    """y = gelu_tanh(h), h = quantized_linear_forward(x, q, scale, bias): the quantized MLP's first projection
    and its activation (as linear_gelu). Saves h and tanh(u(h))."""
    h, _ = quantized_linear_forward(x, q, scale, bias, block_rows)
    y, (t,) = gelu_forward(h, "tanh")
    return y, (h, t)


def quantized_linear_gelu_backward(grad, q, scale, saved, block_rows=QUANTIZED_BLOCK_ROWS):
    """dx = (grad * gelu_tanh'(h)) @ W."""
    h, t = saved
    return quantized_linear_backward(gelu_backward(grad, h, "tanh", (t,)), q, scale, block_rows)


# ----------------------------------------------------------------------------- embedding
def embedding_forward(ids, weight):
    return weight[ids], ()  # (...,) -> (..., C)


def embedding_backward(grad, ids, weight_shape, saved):
    xp = array_module(grad)
    gw = xp.zeros(weight_shape, dtype=grad.dtype)
    flat = grad.reshape(-1, weight_shape[1])
    backend.scatter_add(gw, ids.reshape(-1), flat)  # rows of repeated ids accumulate
    return gw


# ----------------------------------------------------------------------------- layer_norm
def layer_norm_forward(x, weight, bias, eps):
    """Normalise over the last axis; saves mean and 1/std (each (..., 1)).

    A float32 row whose variance overflows (values beyond ~1e19) is recomputed alone in float64
    (_wide_rows), so it normalises as the float64 formula does; every other row is untouched.
    """
    xp = array_module(x)
    with np.errstate(over="ignore", invalid="ignore"):
        mean = x.mean(axis=-1, keepdims=True)
        xc = x - mean
        var = (xc * xc).mean(axis=-1, keepdims=True)
    rstd = 1.0 / xp.sqrt(var + eps)
    y = xc * rstd
    wide = ~xp.isfinite(var[..., 0])  # (...,): the row sum or the sum of squares overflowed
    if wide.any():
        xw = x[wide].astype(xp.float64)
        mean[wide], rstd[wide], xhat = _stats64(xw, eps)
        y[wide] = xhat
    if weight is not None:
        y *= weight
    if bias is not None:
        y += bias
    return y, (mean, rstd)


def _stats64(x, eps):
    """float64 mean (k, 1), 1/std (k, 1) and the normalised rows of float64 rows x (k, C): two passes."""
    xp = array_module(x)
    mean = x.mean(axis=-1, keepdims=True)
    xc = x - mean
    rstd = 1.0 / xp.sqrt((xc * xc).mean(axis=-1, keepdims=True) + eps)
    return mean, rstd, xc * rstd


def layer_norm_rstd_min(C, dtype):
    """The smallest saved 1/std for which layer_norm_backward's float formulas are safe: rstd normal
    and |x - mean| <= std sqrt(C) within half the dtype's range. Rows below it (std beyond ~1e36 in
    float32) are recomputed in float64, forward statistics included."""
    info = np.finfo(dtype)
    return max(float(info.tiny), 2.0 * math.sqrt(C) / float(info.max))


def layer_norm_backward(grad, x, weight, saved):
    """Returns (dx, dweight, dbias) (the last two None when the op has no weight/bias)."""
    xp = array_module(x)
    mean, rstd = saved
    C = x.shape[-1]
    dxhat = grad * weight if weight is not None else grad
    with np.errstate(over="ignore", invalid="ignore"):
        xhat = (x - mean) * rstd
        dx = rstd * (dxhat - dxhat.mean(axis=-1, keepdims=True) - xhat * (dxhat * xhat).mean(axis=-1, keepdims=True))
    wide = rstd[..., 0] < layer_norm_rstd_min(C, x.dtype)  # (...,): rows float arithmetic cannot carry
    if wide.any():  # recomputed in float64 from x (eps is far below these rows' variance)
        _, rstd64, xhat64 = _stats64(x[wide].astype(xp.float64), 0.0)
        d64 = dxhat[wide].astype(xp.float64)
        xhat[wide] = xhat64
        dx[wide] = rstd64 * (d64 - d64.mean(axis=-1, keepdims=True) - xhat64 * (d64 * xhat64).mean(axis=-1, keepdims=True))
    g2 = grad.reshape(-1, C)
    gw = (g2 * xhat.reshape(-1, C)).sum(axis=0) if weight is not None else None
    gb = g2.sum(axis=0)
    return dx, gw, gb


def add_layer_norm_forward(x, residual, weight, bias, eps):
    """Fused residual add + layer_norm: s = x + residual, y = layer_norm(s). Returns ((s, y), saved).

    saved is (mean, rstd) of s; backward rebuilds s from x and residual.
    """
    s = x + residual
    y, saved = layer_norm_forward(s, weight, bias, eps)
    return (s, y), saved


def add_layer_norm_backward(grad_s, grad_y, x, residual, weight, saved):
    """Returns (dx, dresidual, dweight, dbias); dx is dresidual (the same array).

    grad_s may be None (s itself fed nothing that needs a gradient): it then counts as zero.
    """
    dx, gw, gb = layer_norm_backward(grad_y, x + residual, weight, saved)
    if grad_s is not None:
        dx = dx + grad_s
    return dx, dx, gw, gb


# ----------------------------------------------------------------------------- gelu
def erf(x):
    """Vectorised error function, accurate to ~1e-15 relative in float64 (no SciPy needed).

    |x| < 2.5: erf(x) = 2/sqrt(pi) exp(-x^2) sum_n 2^n x^(2n+1) / (2n+1)!!  (all terms positive,
    so no cancellation; 40 terms suffice). |x| >= 2.5: erfc by its continued fraction,
    erfc(x) = exp(-x^2)/sqrt(pi) / (x + (1/2)/(x + 1/(x + (3/2)/(x + ...)))), 40 levels.
    """
    if array_module(x) is not np:
        return backend.erf(x)  # cupyx.scipy.special.erf
    dtype = x.dtype
    a = np.abs(x.astype(np.float64))
    out = np.empty_like(a)
    small = a < 2.5
    s = a[small]
    s2 = s * s
    term, total = s.copy(), s.copy()
    for n in range(40):
        term *= 2.0 * s2 / (2 * n + 3)
        total += term
    out[small] = (2.0 / math.sqrt(math.pi)) * np.exp(-s2) * total
    big = a[~small]
    k = np.zeros_like(big)
    for n in range(40, 0, -1):
        k = (n / 2.0) / (big + k)
    out[~small] = 1.0 - np.exp(-big * big) / math.sqrt(math.pi) / (big + k)
    return (np.sign(x) * out).astype(dtype, copy=False)


def gelu_forward(x, approximate):
    """GELU: 'tanh' is GPT-2's approximation, 'none' the exact x * Phi(x)."""
    xp = array_module(x)
    if approximate == "tanh":
        t = xp.tanh(_SQRT_2_OVER_PI * (x + _GELU_TANH_C * x * x * x))
        return 0.5 * x * (1.0 + t), (t,)
    cdf = 0.5 * (1.0 + erf(x * (1.0 / math.sqrt(2.0))))
    return x * cdf, (cdf,)


def gelu_backward(grad, x, approximate, saved):
    xp = array_module(x)
    if approximate == "tanh":
        (t,) = saved
        inner = _SQRT_2_OVER_PI * (1.0 + 3.0 * _GELU_TANH_C * x * x)
        return grad * (0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * inner)
    (cdf,) = saved
    pdf = xp.exp(-0.5 * x * x) * (1.0 / math.sqrt(2.0 * math.pi))
    return grad * (cdf + x * pdf)


# ----------------------------------------------------------------------------- softmax
def softmax_forward(x, axis):
    xp = array_module(x)
    e = xp.exp(x - x.max(axis=axis, keepdims=True))
    e /= e.sum(axis=axis, keepdims=True)
    return e, ()


def softmax_backward(grad, y, axis, saved):
    return y * (grad - (grad * y).sum(axis=axis, keepdims=True))


def log_softmax_forward(x, axis):
    xp = array_module(x)
    shifted = x - x.max(axis=axis, keepdims=True)
    return shifted - xp.log(xp.exp(shifted).sum(axis=axis, keepdims=True)), ()


def log_softmax_backward(grad, y, axis, saved):
    xp = array_module(y)
    return grad - xp.exp(y) * grad.sum(axis=axis, keepdims=True)


# ----------------------------------------------------------------------------- cross-entropy
def cross_entropy_forward(logits, targets, ignore_index):
    """Mean negative log-likelihood over rows whose target is not ignore_index.

    logits (N, V), targets (N,) ints. Saves the row logsumexp; the probability matrix is
    rebuilt in backward. With every target ignored the mean is 0/0 = nan, as in PyTorch, and its
    gradient is exactly 0 (see cross_entropy_backward).
    """
    xp = array_module(logits)
    valid = targets != ignore_index
    m = logits.max(axis=-1, keepdims=True)
    lse = m + xp.log(xp.exp(logits - m).sum(axis=-1, keepdims=True))  # (N, 1)
    safe = xp.where(valid, targets, 0)
    picked = xp.take_along_axis(logits, safe[:, None], axis=-1)  # (N, 1)
    count = valid.sum()
    with np.errstate(invalid="ignore", divide="ignore"):
        loss = ((lse - picked)[:, 0] * valid).sum() / count
    return loss.astype(logits.dtype), (lse, valid, count)


def cross_entropy_backward(grad, logits, targets, saved):
    xp = array_module(logits)
    lse, valid, count = saved
    probs = xp.exp(logits - lse)  # (N, V)
    rows = xp.arange(logits.shape[0])
    probs[rows, xp.where(valid, targets, 0)] -= 1.0
    # Ignored rows get exactly 0 whatever grad is; with every row ignored (count 0) the loss does not
    # depend on the logits at all, so its gradient is 0 (PyTorch's), never grad / 0.
    scale = grad / xp.maximum(count, 1)
    probs *= xp.where(valid, scale, 0.0).astype(logits.dtype)[:, None]
    return probs


# ----------------------------------------------------------------------------- dropout
_GOLDEN = 0x9E3779B97F4A7C15  # 2^64 / golden ratio: splitmix64's counter increment
_MIX1 = 0xBF58476D1CE4E5B9
_MIX2 = 0x94D049BB133111EB
_MASK_CHUNK = 1 << 20  # elements hashed per step (bounds the uint64 temporaries to ~8 MiB each)


def keep_threshold(p):
    """The integer t with (r >= t) == (r * 2^-24 >= p) for every 24-bit r: t = ceil(p * 2^24)."""
    return min(max(math.ceil(float(p) * 16777216.0), 0), 16777216)


def dropout_mask(shape, p, seed, xp):
    """Keep-mask (bool) of `shape` from a per-call seed; counter-based, so any element can be made alone.

    Element i of the mask (flat C-order index, as uint64) hashes its own counter with
    splitmix64 (Steele, Lea & Flood 2014), all arithmetic mod 2^64:
        z = seed + (i + 1) * 0x9E3779B97F4A7C15
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9
        z = (z ^ (z >> 27)) * 0x94D049BB133111EB
        z = z ^ (z >> 31)
        u = (z >> 40) * 2^-24        # 24 random bits: a float32-exact uniform in [0, 1)
        keep = u >= p                # evaluated exactly, as (z >> 40) >= ceil(p * 2^24)
    The native kernels (csrc/cpu/rng.h) compute the same bits, so native and reference masks
    are identical, and a kernel can regenerate any part of a mask in backward (dropout saves
    only the seed; attention tiles regenerate their block of the (B, nh, Tq, Tk) mask).
    The seed is taken mod 2^64.
    """
    n = math.prod(shape)
    keep = xp.empty(n, dtype=bool)
    s = xp.uint64(int(seed) % (1 << 64))
    golden, mix1, mix2 = xp.uint64(_GOLDEN), xp.uint64(_MIX1), xp.uint64(_MIX2)
    threshold = xp.uint64(keep_threshold(p))
    for start in range(0, n, _MASK_CHUNK):
        stop = min(n, start + _MASK_CHUNK)
        z = xp.arange(start + 1, stop + 1, dtype=xp.uint64)  # the counter i + 1
        z *= golden  # uint64 array arithmetic wraps mod 2^64 (no overflow checks on arrays)
        z += s
        z ^= z >> xp.uint64(30)
        z *= mix1
        z ^= z >> xp.uint64(27)
        z *= mix2
        z ^= z >> xp.uint64(31)
        keep[start:stop] = (z >> xp.uint64(40)) >= threshold
    return keep.reshape(shape)


def dropout_seed_for_rows(seed, shape, row_offset):
    """The seed under which an array of `shape` holding rows ``row_offset ...`` of a larger batch draws
    exactly those rows of the mask the whole batch draws under `seed` (the batch axis leading).

    Rows from `row_offset` on start at flat counter ``row_offset * prod(shape[1:])``, and shifting the
    seed by that many counter increments moves dropout_mask's counter there (the hash sees only
    ``seed + (i + 1) * golden``). Data-parallel ranks use it so that masks do not depend on the split.
    """
    per_row = math.prod(shape[1:]) if len(shape) > 1 else 1
    return (int(seed) + int(row_offset) * per_row * _GOLDEN) % (1 << 64)


def dropout_forward(x, p, seed):
    xp = array_module(x)
    keep = dropout_mask(x.shape, p, seed, xp)
    return x * keep * (1.0 / (1.0 - p)), (keep,)


def dropout_backward(grad, p, saved):
    (keep,) = saved
    return grad * keep * (1.0 / (1.0 - p))


# ----------------------------------------------------------------------------- attention
def attention_mask(t_q, t_k, causal, window, xp):
    """Boolean (t_q, t_k) mask of visible keys, or None when every key is visible.

    Queries are the last t_q positions of the t_k keys (so a KV cache lines up): query i
    sits at position t_k - t_q + i. Causal: keys at or before it. `window` w: only the w
    most recent keys, itself included (GPT-3's locally banded layers).
    """
    if not causal and window is None:
        return None
    q_pos = xp.arange(t_k - t_q, t_k)[:, None]
    k_pos = xp.arange(t_k)[None, :]
    mask = xp.ones((t_q, t_k), dtype=bool)
    if causal:
        mask &= k_pos <= q_pos
    if window is not None:
        mask &= k_pos > q_pos - window
        if not causal:
            mask &= k_pos < q_pos + window
    return mask


def attention_forward(q, k, v, causal, window, dropout_p, seed, scale):
    """softmax(q k^T * scale + mask) (dropout) v for q (B, nh, Tq, hs), k, v (B, nh, Tk, hs)."""
    xp = array_module(q)
    att = (q @ xp.swapaxes(k, -1, -2)) * scale  # (B, nh, Tq, hs) @ (B, nh, hs, Tk) -> (B, nh, Tq, Tk)
    mask = attention_mask(q.shape[-2], k.shape[-2], causal, window, xp)
    if mask is not None:
        att = xp.where(mask, att, -xp.inf)
    att, _ = softmax_forward(att, -1)
    keep = None
    att_d = att
    if dropout_p > 0.0:
        keep = dropout_mask(att.shape, dropout_p, seed, xp)
        att_d = att * keep * (1.0 / (1.0 - dropout_p))
    out = att_d @ v  # (B, nh, Tq, Tk) @ (B, nh, Tk, hs) -> (B, nh, Tq, hs)
    return out, (att, keep)


def attention_backward(grad, q, k, v, dropout_p, scale, saved):
    xp = array_module(q)
    att, keep = saved
    att_d = att if keep is None else att * keep * (1.0 / (1.0 - dropout_p))
    dv = xp.swapaxes(att_d, -1, -2) @ grad  # (B, nh, Tk, Tq) @ (B, nh, Tq, hs)
    datt = grad @ xp.swapaxes(v, -1, -2)  # (B, nh, Tq, hs) @ (B, nh, hs, Tk)
    if keep is not None:
        datt = datt * keep * (1.0 / (1.0 - dropout_p))
    ds = att * (datt - (datt * att).sum(axis=-1, keepdims=True))  # softmax backward
    ds *= scale
    dq = ds @ k
    dk = xp.swapaxes(ds, -1, -2) @ q
    return dq, dk, dv


# ----------------------------------------------------------------------------- attention on packed qkv
# c_attn's output (B, T, 3C) holds q, k, v side by side, each C = n_head * hs wide. These split it into
# contiguous (B, nh, T, hs) heads, run attention, and merge the heads back into (B, T, C): what the
# native kernels (qkv_attention) do without the copies, by reading and writing with strides.
def split_qkv(qkv, n_head):
    """(B, T, 3C) -> three contiguous (B, nh, T, hs) arrays q, k, v."""
    xp = array_module(qkv)
    B, T, C3 = qkv.shape
    if n_head < 1 or C3 % (3 * n_head):
        raise ValueError(f"qkv_attention: qkv's last dim {C3} must be 3 * n_embd with n_embd divisible by n_head {n_head}")
    heads = qkv.reshape(B, T, 3, n_head, C3 // (3 * n_head)).transpose(2, 0, 3, 1, 4)  # (3, B, nh, T, hs)
    return tuple(xp.ascontiguousarray(a) for a in heads)


def merge_heads(y):
    """(B, nh, T, hs) -> contiguous (B, T, nh * hs)."""
    B, nh, T, hs = y.shape
    return array_module(y).ascontiguousarray(y.transpose(0, 2, 1, 3)).reshape(B, T, nh * hs)


def split_heads(y, n_head):
    """(B, T, C) -> contiguous (B, nh, T, hs), the inverse of merge_heads."""
    B, T, C = y.shape
    return array_module(y).ascontiguousarray(y.reshape(B, T, n_head, C // n_head).transpose(0, 2, 1, 3))


def merge_qkv(dq, dk, dv):
    """Three (B, nh, T, hs) gradients -> dqkv (B, T, 3C), the inverse of split_qkv."""
    xp = array_module(dq)
    B, nh, T, hs = dq.shape
    return xp.ascontiguousarray(xp.stack((dq, dk, dv)).transpose(1, 3, 0, 2, 4)).reshape(B, T, 3 * nh * hs)


def qkv_attention_forward(qkv, n_head, causal, window, dropout_p, seed, scale):
    """attention_forward on qkv (B, T, 3C) split into heads; the output merged back into (B, T, C)."""
    q, k, v = split_qkv(qkv, n_head)
    out, saved = attention_forward(q, k, v, causal, window, dropout_p, seed, scale)
    return merge_heads(out), saved


def qkv_attention_backward(grad, qkv, n_head, dropout_p, scale, saved):
    """dqkv (B, T, 3C) from grad (B, T, C): attention_backward on the split heads, merged."""
    q, k, v = split_qkv(qkv, n_head)
    return merge_qkv(*attention_backward(split_heads(grad, n_head), q, k, v, dropout_p, scale, saved))


def kv_attention(qkv, k_cache, v_cache, start, n_head, window, dropout_p, seed, scale):
    """Attention of T new tokens against a KV cache (inference, no backward). qkv (B, T, 3C) is c_attn's
    output for positions start..start+T-1: their keys and values are stored into k_cache, v_cache
    (B, nh, max_length, hs) in place, then the queries attend (causally, within `window`) over positions
    0..start+T-1. Returns out (B, T, C), heads merged."""
    q, k, v = split_qkv(qkv, n_head)
    end = start + qkv.shape[1]
    if start < 0 or end > k_cache.shape[2]:
        raise ValueError(f"kv_attention: {qkv.shape[1]} new tokens at position {start} do not fit the cache's "
                         f"{k_cache.shape[2]} positions")
    k_cache[:, :, start:end] = k
    v_cache[:, :, start:end] = v
    # the cache's first `end` positions as views: matmul reads them strided, no per-step copy
    out, _ = attention_forward(q, k_cache[:, :, :end], v_cache[:, :, :end], True, window, dropout_p, seed, scale)
    return merge_heads(out)


# ----------------------------------------------------------------------------- AdamW
def adamw_step(param, grad, exp_avg, exp_avg_sq, *, lr, beta1, beta2, eps, weight_decay, step):
    """One in-place AdamW update, in torch.optim.AdamW's order of operations."""
    xp = array_module(param)
    if weight_decay != 0.0:
        param *= 1.0 - lr * weight_decay
    exp_avg += (grad - exp_avg) * (1.0 - beta1)  # lerp towards grad, as torch
    exp_avg_sq *= beta2
    exp_avg_sq += grad * grad * (1.0 - beta2)
    bias_correction1 = 1.0 - beta1**step
    bias_correction2_sqrt = math.sqrt(1.0 - beta2**step)
    denom = xp.sqrt(exp_avg_sq) / bias_correction2_sqrt + eps
    param -= (lr / bias_correction1) * (exp_avg / denom)
