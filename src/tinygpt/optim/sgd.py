"""Stochastic gradient descent with momentum, with torch.optim.SGD's semantics."""
from __future__ import annotations

from .optimizer import Optimizer


class SGD(Optimizer):
    """SGD with optional (Nesterov) momentum and L2 weight decay, as torch.optim.SGD::

        d = g + weight_decay * p
        buf = d (first step) or momentum * buf + (1 - dampening) * d
        d = d + momentum * buf if nesterov else buf          (when momentum != 0)
        p -= lr * d

    Parameters
    ----------
    params : iterable of Parameters or of group dicts
    lr, momentum, dampening, weight_decay : float
    nesterov : bool
    """

    def __init__(self, params, lr=1e-3, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False):
        super().__init__(params, dict(lr=lr, momentum=momentum, dampening=dampening,
                                      weight_decay=weight_decay, nesterov=nesterov))

    def _check_group(self, group):
        if not 0.0 <= group["lr"]:
            raise ValueError(f"Invalid learning rate: {group['lr']} (must be >= 0)")
        if not 0.0 <= group["momentum"]:
            raise ValueError(f"Invalid momentum value: {group['momentum']} (must be >= 0)")
        if not 0.0 <= group["weight_decay"]:
            raise ValueError(f"Invalid weight_decay value: {group['weight_decay']} (must be >= 0)")
        if group["nesterov"] and (group["momentum"] <= 0 or group["dampening"] != 0):
            raise ValueError("Nesterov momentum requires a momentum > 0 and zero dampening")

    def step(self, closure=None):
        """One update of every parameter that has a grad; returns ``closure()`` if given."""
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            lr, mom, damp, wd = group["lr"], group["momentum"], group["dampening"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None or not p.requires_grad:  # no grad, or frozen
                    continue
                d = p.grad.data
                if wd != 0:
                    d = d + wd * p.data
                if mom != 0:
                    state = self.state.setdefault(id(p), {})
                    buf = state.get("momentum_buffer")
                    if buf is None:
                        buf = state["momentum_buffer"] = d.copy()
                    else:
                        buf *= mom
                        buf += (1 - damp) * d
                    d = d + mom * buf if group["nesterov"] else buf
                p.data -= lr * d
        return loss
