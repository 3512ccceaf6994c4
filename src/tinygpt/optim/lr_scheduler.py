"""Learning-rate schedules: linear warmup then cosine decay (nanoGPT's get_lr)."""
from __future__ import annotations

import math


def cosine_with_warmup(step: int, *, max_lr: float, min_lr: float, warmup_steps: int, decay_steps: int) -> float:
    """The learning rate at `step` (0-based).

    ``max_lr * (step + 1) / warmup_steps`` while ``step < warmup_steps``, then a cosine from
    ``max_lr`` (at ``warmup_steps``) down to ``min_lr`` (at ``decay_steps``), ``min_lr`` after.
    """
    if step < 0:
        raise ValueError(f"cosine_with_warmup: step must be >= 0, got {step}")
    if not 0 <= warmup_steps <= decay_steps:
        raise ValueError(f"cosine_with_warmup: need 0 <= warmup_steps <= decay_steps, "
                         f"got warmup_steps={warmup_steps}, decay_steps={decay_steps}")
    if min_lr < 0 or max_lr < 0:
        raise ValueError(f"cosine_with_warmup: learning rates must be >= 0, got max_lr={max_lr}, min_lr={min_lr}")
    if step < warmup_steps:
        return max_lr * (step + 1) / warmup_steps
    if step >= decay_steps:
        return min_lr
    ratio = (step - warmup_steps) / (decay_steps - warmup_steps)  # 0 -> 1
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (max_lr - min_lr)


class CosineWarmupScheduler:
    """Sets every parameter group's lr from `cosine_with_warmup`.

    The constructor applies the lr of step 0; call `step()` after each ``optimizer.step()``
    (as with torch schedulers) to move to the next step's lr.
    """

    def __init__(self, optimizer, *, max_lr, min_lr, warmup_steps, decay_steps):
        self.optimizer = optimizer
        self.options = dict(max_lr=max_lr, min_lr=min_lr, warmup_steps=warmup_steps, decay_steps=decay_steps)
        self.last_step = 0
        self._apply()

    def get_lr(self) -> float:
        """The lr for the current step."""
        return cosine_with_warmup(self.last_step, **self.options)

    def _apply(self) -> None:
        lr = self.get_lr()
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def step(self) -> float:
        """Advance one step, set the groups' lr and return it."""
        self.last_step += 1
        self._apply()
        return self.get_lr()

    def state_dict(self) -> dict:
        return {"last_step": self.last_step, **self.options}

    def load_state_dict(self, state: dict) -> None:
        self.options = {k: state[k] for k in self.options}
        self.last_step = int(state["last_step"])
        self._apply()
