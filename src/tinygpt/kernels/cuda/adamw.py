"""adamw_step and adamw_multi_step on CuPy arrays (csrc/cuda/adamw.cu): in-place AdamW updates in
torch.optim.AdamW's order of operations, one tensor per launch or a whole param group in one."""
from __future__ import annotations

from . import arg, launch, launcher, tensor_table

LAUNCHERS = {"adamw_step": ("adamw_step",), "adamw_multi_step": ("adamw_multi_step", "adamw_multi_chunk")}


def _state(op, param, grad, exp_avg, exp_avg_sq):
    """The four arrays of one parameter, checked: float32, contiguous, all of param's size; and that size."""
    arrays = [arg(f"{op}: param", param)]
    n = param.size
    for name, a in (("grad", grad), ("exp_avg", exp_avg), ("exp_avg_sq", exp_avg_sq)):
        arrays.append(arg(f"{op}: {name}", a))
        if a.size != n:
            raise ValueError(f"{op}: {name} must have param's size {n}, got shape {tuple(a.shape)}")
    return arrays, n


def _check_step(op, step):
    if int(step) < 1:
        raise ValueError(f"{op}: step must be >= 1 (it counts from 1), got {step}")


def adamw_step(param, grad, exp_avg, exp_avg_sq, *, lr, beta1, beta2, eps, weight_decay, step):
    """In-place AdamW update of float32 param, exp_avg, exp_avg_sq from grad (reference.adamw_step)."""
    op = "adamw_step"
    _check_step(op, step)
    arrays, n = _state(op, param, grad, exp_avg, exp_avg_sq)
    launch(op, *arrays, n, float(lr), float(beta1), float(beta2), float(eps), float(weight_decay), int(step))


def adamw_multi_step(params, grads, exp_avgs, exp_avg_sqs, *, lr, beta1, beta2, eps, weight_decay, step):
    """adamw_step on every (param, grad, exp_avg, exp_avg_sq) of the lists, in one launch (one param
    group: the scalars are shared)."""
    op = "adamw_multi_step"
    _check_step(op, step)
    lists = (params, grads, exp_avgs, exp_avg_sqs)
    if len({len(a) for a in lists}) != 1:
        raise ValueError(f"{op}: params, grads, exp_avgs and exp_avg_sqs must have the same length, got "
                         f"{[len(a) for a in lists]}")
    if not params:
        return
    rows = []
    for i, four in enumerate(zip(*lists)):
        arrays, n = _state(f"{op}: tensor {i}", *four)
        rows.append((*(a.data.ptr for a in arrays), n))
    table, starts, blocks = tensor_table(rows, launcher("adamw_multi_chunk")())
    launch(op, table, starts, len(params), blocks, float(lr), float(beta1), float(beta2), float(eps),
           float(weight_decay), int(step))
