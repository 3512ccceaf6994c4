"""Optimizer base class: parameter groups, per-parameter state, state_dict in torch's shape.

Subclasses implement `step()` on the raw arrays (`p.data`, `p.grad.data`) in place, so an
update never builds a graph.
"""
from __future__ import annotations

import numpy as np

from .. import backend


class Optimizer:
    """Base for optimisers.

    Parameters
    ----------
    params : iterable of Parameters, or of dicts ``{'params': [...], **options}``
        Groups override the constructor's options (e.g. their own lr or weight_decay).
    defaults : dict
        The options every group starts from.

    Attributes
    ----------
    param_groups : list of dict
        Each group: ``'params'`` (list of Parameters) plus its options.
    state : dict
        Per-parameter state keyed by ``id(param)``: raw arrays and scalars such as ``'step'``.
    """

    # Set by tinygpt.distributed.shard_optimizer: a ZeRO-1 shard that takes over step() and the state
    # (state_dict() still returns this class's format, gathered from every rank).
    _sharded = None

    def __init__(self, params, defaults: dict):
        self.defaults = dict(defaults)
        self.param_groups: list[dict] = []
        self.state: dict[int, dict] = {}
        if isinstance(params, dict) or hasattr(params, "grad"):
            raise TypeError(f"{type(self).__name__}: params must be an iterable of Tensors or of group dicts, "
                            f"got {type(params).__name__}")
        params = list(params)
        if not params:
            raise ValueError(f"{type(self).__name__} got an empty parameter list")
        groups = params if isinstance(params[0], dict) else [{"params": params}]
        for group in groups:
            self.add_param_group(group)

    def __repr__(self):
        opts = ", ".join(f"{k}={v}" for k, v in self.defaults.items())
        return f"{type(self).__name__}({len(self.param_groups)} groups, {opts})"

    def _check_group(self, group: dict) -> None:
        """Validate a group's options; subclasses raise ValueError on bad hyperparameters."""

    def add_param_group(self, group: dict) -> None:
        """Add a group of parameters, filling unset options from the defaults (extra keys are kept)."""
        if not isinstance(group, dict) or "params" not in group:
            raise TypeError("a parameter group must be a dict with a 'params' entry")
        params = group["params"]
        params = [params] if hasattr(params, "data") and hasattr(params, "grad") else list(params)
        for p in params:
            if not (hasattr(p, "data") and hasattr(p, "grad")):
                raise TypeError(f"optimiser can only optimise Tensors, got {type(p).__name__}")
        group = {**self.defaults, **{k: v for k, v in group.items() if k != "params"}, "params": params}
        self._check_group(group)
        seen = {id(p) for g in self.param_groups for p in g["params"]}
        if len({id(p) for p in params}) != len(params) or seen & {id(p) for p in params}:
            raise ValueError("some parameters appear in more than one parameter group (or twice in one)")
        self.param_groups.append(group)

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Drop every gradient (``set_to_none=True``) or fill it with zeros."""
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if set_to_none:
                    p.grad = None
                else:
                    p.grad.data.fill(0)

    def step(self, closure=None):
        raise NotImplementedError

    # ---- checkpointing: {'state': {index: {...}}, 'param_groups': [{..., 'params': [indices]}]}

    def _params(self) -> list:
        return [p for g in self.param_groups for p in g["params"]]

    def state_dict(self) -> dict:
        """A copy of the state with parameters replaced by their running index (as torch)."""
        if self._sharded is not None:
            return self._sharded.state_dict()
        state = {}
        for i, p in enumerate(self._params()):
            if id(p) in self.state:
                state[i] = {k: (v.copy() if hasattr(v, "shape") else v) for k, v in self.state[id(p)].items()}
        return {"state": state, "param_groups": self._groups_state()}

    def _groups_state(self) -> list:
        """The groups' options with their parameters replaced by running indices (state_dict's 'param_groups')."""
        groups, index = [], 0
        for g in self.param_groups:
            n = len(g["params"])
            groups.append({**{k: v for k, v in g.items() if k != "params"},
                           "params": list(range(index, index + n))})
            index += n
        return groups

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore `state_dict()`'s output; arrays are copied to each parameter's device and dtype."""
        if self._sharded is not None:
            self._sharded.load_state_dict(state_dict)
        else:
            self._restore(state_dict)

    def _restore(self, state_dict: dict) -> None:
        """load_state_dict's work: check the state against the groups, then set the state and group options."""
        name = type(self).__name__
        saved_groups = state_dict["param_groups"]
        if len(saved_groups) != len(self.param_groups):
            raise ValueError(f"{name}.load_state_dict: the state has {len(saved_groups)} parameter groups, "
                             f"the optimiser has {len(self.param_groups)}")
        for i, (saved, group) in enumerate(zip(saved_groups, self.param_groups)):
            if len(saved["params"]) != len(group["params"]):
                raise ValueError(f"{name}.load_state_dict: parameter group {i} has {len(saved['params'])} "
                                 f"parameters in the state, {len(group['params'])} in the optimiser")
        saved_ids = [i for g in saved_groups for i in g["params"]]
        params = dict(zip(saved_ids, self._params()))
        saved_state = {int(k): v for k, v in state_dict["state"].items()}
        new_state = {}
        for index, entry in saved_state.items():
            if index not in params:
                raise ValueError(f"{name}.load_state_dict: state for parameter index {index}, "
                                 f"which no parameter group lists")
            p = params[index]
            xp = backend.xp(p.data)
            restored = {}
            for key, value in entry.items():
                if hasattr(value, "shape") and hasattr(value, "dtype"):  # an array
                    if tuple(value.shape) != tuple(p.shape):
                        raise ValueError(f"{name}.load_state_dict: state '{key}' of parameter {index} has "
                                         f"shape {tuple(value.shape)}, the parameter has {tuple(p.shape)}")
                    if xp is np:
                        value = backend.to_numpy(value)
                    value = xp.array(value, dtype=p.data.dtype, copy=True)
                restored[key] = value
            new_state[id(p)] = restored
        self.state = new_state
        for saved, group in zip(saved_groups, self.param_groups):
            for k, v in saved.items():
                if k != "params":
                    group[k] = tuple(v) if isinstance(v, list) else v  # JSON turns betas into a list
