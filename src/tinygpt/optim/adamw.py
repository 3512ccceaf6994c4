"""AdamW (decoupled weight decay), with torch.optim.AdamW's semantics."""
from __future__ import annotations

from .. import backend, kernels
from .optimizer import Optimizer


class AdamW(Optimizer):
    """AdamW: Adam with decoupled weight decay (Loshchilov & Hutter).

    Per step and parameter (``step`` counts from 1, as torch)::

        p *= 1 - lr * weight_decay
        m = beta1 * m + (1 - beta1) * g;  v = beta2 * v + (1 - beta2) * g**2
        p -= lr / (1 - beta1**step) * m / (sqrt(v) / sqrt(1 - beta2**step) + eps)

    The update is one fused `tinygpt.kernels.adamw_step` call per parameter. Parameters
    whose grad is None or that are frozen (requires_grad False) are skipped (their state and step
    count do not advance).

    Parameters
    ----------
    params : iterable of Parameters or of group dicts (each may set its own options)
    lr : float
    betas : (float, float)
    eps : float
    weight_decay : float
    """

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01):
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay))

    def _check_group(self, group):
        lr, betas, eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
        if not 0.0 <= lr:
            raise ValueError(f"Invalid learning rate: {lr} (must be >= 0)")
        if not 0.0 <= eps:
            raise ValueError(f"Invalid epsilon value: {eps} (must be >= 0)")
        if len(betas) != 2:
            raise ValueError(f"Invalid betas: {betas} (expected a pair (beta1, beta2))")
        group["betas"] = tuple(betas)
        for i, beta in enumerate(betas):
            if not 0.0 <= beta < 1.0:
                raise ValueError(f"Invalid beta parameter at index {i}: {beta} (must be in [0, 1))")
        if not 0.0 <= wd:
            raise ValueError(f"Invalid weight_decay value: {wd} (must be >= 0)")

    def step(self, closure=None):
        """One update of every parameter that has a grad; returns ``closure()`` if given."""
        if self._sharded is not None:  # ZeRO-1 (tinygpt.distributed.shard_optimizer): this rank's chunks
            return self._sharded.step(closure)
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            by_step = {}  # step count -> the (param, grad, exp_avg, exp_avg_sq) lists updated with it
            for p in group["params"]:
                if p.grad is None or not p.requires_grad:  # no grad, or frozen
                    continue
                grad = p.grad.data
                if grad.shape != p.data.shape:
                    raise ValueError(f"AdamW: grad shape {grad.shape} != parameter shape {p.data.shape}")
                state = self.state.get(id(p))
                if state is None:
                    xp = backend.xp(p.data)
                    state = self.state[id(p)] = {
                        "step": 0, "exp_avg": xp.zeros_like(p.data), "exp_avg_sq": xp.zeros_like(p.data)}
                state["step"] += 1
                lists = by_step.setdefault(state["step"], ([], [], [], []))
                for lst, a in zip(lists, (p.data, grad, state["exp_avg"], state["exp_avg_sq"])):
                    lst.append(a)
            # Usually one bucket: every parameter has been updated as often as the others. On the GPU
            # a bucket is one multi-tensor launch; elsewhere one fused update per parameter.
            for step, lists in by_step.items():
                kernels.adamw_multi_step(*lists, lr=group["lr"], beta1=beta1, beta2=beta2, eps=group["eps"],
                                         weight_decay=group["weight_decay"], step=step)
        return loss
