"""Gradient utilities."""
from __future__ import annotations

import math

import numpy as np

from .. import backend, kernels


def clip_grad_norm_(parameters, max_norm: float, norm_type: float = 2.0, error_if_nonfinite: bool = False) -> float:
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
        Raise RuntimeError when the total norm is nan or inf instead of scaling by it.

    Returns
    -------
    float
        The total norm before clipping.
    """
    if hasattr(parameters, "grad"):
        parameters = [parameters]
    grads = [p.grad.data for p in parameters if p.grad is not None and p.grad.data.size]
    norm_type = float(norm_type)
    if not norm_type > 0:
        raise ValueError(f"clip_grad_norm_: norm_type must be > 0 or inf, got {norm_type}")
    if not grads:
        return 0.0
    # On the GPU one multi-tensor CUDA launch reduces every grad (kernels.grad_norm; None where it does
    # not apply). Otherwise per-grad partial results stay on their device and are combined there in
    # order, so a GPU run synchronises once per device (one float() below), not once per parameter.
    fused = kernels.grad_norm(grads, norm_type)
    if fused is not None:
        partial = {"cuda": fused}
    else:
        partial = {}  # device -> running max or float64 sum, 0-d on that device
        for g in grads:
            xp = backend.xp(g)
            if math.isinf(norm_type):
                part = xp.abs(g).max().astype(np.float64)
                partial[xp] = part if xp not in partial else xp.maximum(partial[xp], part)
            else:  # sum |g|^p over every grad, accumulated in float64
                a = xp.abs(g.astype(np.float64, copy=False))
                part = xp.sum(a * a) if norm_type == 2.0 else xp.sum(a ** norm_type)
                partial[xp] = part if xp not in partial else partial[xp] + part
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
    return total
