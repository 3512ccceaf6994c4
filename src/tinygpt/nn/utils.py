"""Gradient utilities."""
from __future__ import annotations

import math

import numpy as np

from .. import backend, kernels
from ..tensor import Tensor


def clip_grad_norm_(parameters, max_norm: float, norm_type: float = 2.0, error_if_nonfinite: bool = False) -> Tensor:
    """Scale gradients in place so their joint norm is at most `max_norm` (torch semantics).

    The norm is taken over all gradients together, as if concatenated into one vector;
    gradients are multiplied by ``max_norm / (total_norm + 1e-6)`` when that is below 1.
    Parameters without a grad are ignored.

    Parameters
    ----------
    parameters : a Tensor or an iterable of Tensors
    max_norm : float
    norm_type : float
        p of the p-norm (> 0), or ``float('inf')`` for the largest absolute value.
    error_if_nonfinite : bool
        Raise RuntimeError when the total norm is nan or inf instead of scaling by it (on the GPU
        this reads the norm on the host, so the step waits for the GPU there).

    Returns
    -------
    Tensor
        The total norm before clipping, a 0-d float64 tensor on the gradients' device, as torch
        (``float(...)`` or ``.item()`` reads it). On the GPU the norm never leaves the device: the
        scale is computed there too, so clipping does not make the host wait for the GPU.
    """
    if hasattr(parameters, "grad"):
        parameters = [parameters]
    grads = [p.grad.data for p in parameters if p.grad is not None and p.grad.data.size]
    norm_type = float(norm_type)
    if not norm_type > 0:
        raise ValueError(f"clip_grad_norm_: norm_type must be > 0 or inf, got {norm_type}")
    if not grads:
        return Tensor(np.zeros((), np.float64))
    devices = {backend.array_device(g) for g in grads}
    if devices == {"cuda"} and not error_if_nonfinite:
        return Tensor(_clip_on_device(grads, max_norm, norm_type))
    # Per-grad partial results stay on their device and are combined there in order, so a run with
    # GPU grads synchronises once per device (one float() below), not once per parameter.
    partial = {}  # device -> running max or float64 sum, 0-d on that device
    for g in grads:
        xp = backend.xp(g)
        part = _partial(xp, g, norm_type)
        partial[xp] = part if xp not in partial else _combine(xp, partial[xp], part, norm_type)
    if math.isinf(norm_type):
        total = max((float(v) for v in partial.values()), default=0.0)
    else:
        total = sum(float(v) for v in partial.values()) ** (1.0 / norm_type)
    if error_if_nonfinite and not math.isfinite(total):
        raise RuntimeError(
            f"The total norm of order {norm_type} for gradients from `parameters` is non-finite, so it "
            "cannot be clipped. To disable this error and scale the gradients by the non-finite norm "
            "anyway, set `error_if_nonfinite=False`")
    coef = max_norm / (total + 1e-6)
    if not coef >= 1.0:  # also scales by nan when the norm is nan, as torch does
        kernels.grad_scale_(grads, coef)
    return Tensor(np.asarray(total, np.float64))


def _partial(xp, g, norm_type):
    """max |g| (inf) or sum |g|^p in float64, 0-d on g's device."""
    if math.isinf(norm_type):
        return xp.abs(g).max().astype(np.float64)
    a = xp.abs(g.astype(np.float64, copy=False))
    return xp.sum(a * a) if norm_type == 2.0 else xp.sum(a ** norm_type)


def _combine(xp, a, b, norm_type):
    return xp.maximum(a, b) if math.isinf(norm_type) else a + b


def _clip_on_device(grads, max_norm, norm_type):
    """clip_grad_norm_ on CuPy arrays without a host read: the norm (0-d float64) and the scale stay on
    the GPU. One grad_norm launch + one grad_clip launch where the CUDA kernels apply (float32 grads,
    norm 2 or inf), CuPy array ops otherwise."""
    inf = math.isinf(norm_type)
    xp = backend.xp(grads[0])
    reduced = kernels.grad_norm(grads, norm_type)  # sum of squares (or max) over every grad, or None
    if reduced is not None and kernels.grad_clip_(grads, reduced, max_norm, norm_type):
        return reduced if inf else xp.sqrt(reduced)
    if reduced is None:
        for g in grads:
            part = _partial(xp, g, norm_type)
            reduced = part if reduced is None else _combine(xp, reduced, part, norm_type)
    total = reduced if inf else xp.sqrt(reduced) if norm_type == 2.0 else reduced ** (1.0 / norm_type)
    coef = max_norm / (total + 1e-6)
    coef = xp.where(coef >= 1.0, 1.0, coef)  # a NaN norm scales by NaN, as torch
    for g in grads:
        g *= coef.astype(g.dtype)  # the scale rounded to the grad's dtype first, as `g *= python_float`
    return total
