"""LoRA: low-rank adapters on a model's Linear layers (Hu et al. 2021, "LoRA").

A wrapped Linear computes ``y = x W^T + b + scale * (dropout(x) A^T) B^T`` with
``A`` (rank, in) drawn as PyTorch's kaiming-uniform Linear init (U(-1/sqrt(in), 1/sqrt(in))),
``B`` (out, rank) zeros (so the adapted model starts out equal to the base one) and
``scale = alpha / rank``. Every other parameter is frozen (requires_grad False: no grad,
optimisers skip it), so training touches the adapters (and any modules named in
`trainable`, e.g. a classifier head) only.

    import tinygpt.lora as lora
    lora.apply(model, rank=8, alpha=16, targets=("c_attn",))
    opt = tg.optim.AdamW(lora.trainable_parameters(model), lr=1e-3)
    ...                                        # train
    lora.save_lora(model, "adapters.safetensors")   # only the adapter weights
    lora.load_lora(fresh_base_model, "adapters.safetensors")   # applies and loads them
    lora.merge(model)                          # W += scale * B @ A; plain Linear layers again

Parameter names: a wrapped ``...attn.c_attn`` keeps ``.weight``/``.bias`` (so base
checkpoints still line up) and adds ``.lora_A``/``.lora_B``.
"""
from __future__ import annotations

import math
import os
from collections import OrderedDict

import numpy as np

from . import backend
from . import functional as F
from . import random as _random
from .checkpoint import CheckpointError, load_checkpoint, read_checkpoint_metadata, save_checkpoint
from .nn import Dropout, Linear, Module, Parameter

__all__ = ["LoRALinear", "apply", "merge", "lora_state_dict", "save_lora", "load_lora", "trainable_parameters"]


class LoRALinear(Module):
    """A Linear's weight and bias (the same Parameter objects) plus adapters lora_A, lora_B."""

    def __init__(self, base: Linear, rank: int, alpha: float, dropout: float = 0.0):
        super().__init__()
        self.in_features, self.out_features = base.in_features, base.out_features
        self.rank, self.alpha, self.scale = int(rank), float(alpha), float(alpha) / int(rank)
        self.weight = base.weight
        self.bias = base.bias
        w = base.weight
        bound = 1.0 / math.sqrt(self.in_features)
        a = _random.generator().uniform(-bound, bound, (self.rank, self.in_features))
        self.lora_A = Parameter(backend.to_device(a.astype(w.dtype), w.device))  # (r, in)
        self.lora_B = Parameter(w.xp.zeros((self.out_features, self.rank), dtype=w.dtype))  # (out, r)
        self.lora_dropout = Dropout(dropout)

    def forward(self, x):
        y = F.linear(x, self.weight, self.bias)  # (..., in) -> (..., out)
        u = F.linear(self.lora_dropout(x), self.lora_A)  # (..., in) -> (..., r)
        return y + F.linear(u, self.lora_B) * self.scale  # (..., r) -> (..., out)

    def delta_weight(self):
        """scale * B @ A as a raw array (out, in)."""
        return (self.lora_B.data @ self.lora_A.data) * self.lora_B.data.dtype.type(self.scale)

    def extra_repr(self):
        return (f"{self.in_features}, {self.out_features}, bias={self.bias is not None}, rank={self.rank}, "
                f"alpha={self.alpha}, dropout={self.lora_dropout.p}")


# ---------------------------------------------------------------------------- helpers
def _matches(name: str, suffixes) -> bool:
    return any(name == s or name.endswith("." + s) for s in suffixes)


def _parent(model: Module, name: str):
    """(parent module, attribute name) of the submodule called `name`."""
    *path, attr = name.split(".")
    mod = model
    for part in path:
        mod = mod._modules[part]
    return mod, attr


def _replace(model: Module, name: str, new: Module) -> None:
    """Put `new` where submodule `name` is, keeping its place in the registry (parameter order)."""
    parent, attr = _parent(model, name)
    parent._modules[attr] = new  # an existing key keeps its position
    object.__setattr__(parent, attr, new)


def _adapters(model: Module):
    return [(name, m) for name, m in model.named_modules() if isinstance(m, LoRALinear)]


def _as_names(value, what: str) -> tuple:
    names = (value,) if isinstance(value, str) else tuple(value)
    if any(not isinstance(n, str) or not n for n in names):
        raise TypeError(f"lora: {what} must be module-name suffixes (non-empty strings), got {value!r}")
    return names


def trainable_parameters(model: Module) -> list:
    """The parameters that are not frozen (what to hand the optimiser)."""
    return [p for p in model.parameters() if p.requires_grad]


# ---------------------------------------------------------------------------- apply / merge
def apply(model: Module, rank: int, alpha: float | None = None, targets=("c_attn",), dropout: float = 0.0,
          trainable=()) -> Module:
    """Wrap every Linear whose name ends with one of `targets` in a LoRALinear; freeze the rest.

    Parameters
    ----------
    model : Module (changed in place, and returned)
    rank : int >= 1
    alpha : float > 0, optional
        The update is scaled by alpha / rank; default alpha = rank (scale 1).
    targets : str or sequence of str
        Module-name suffixes ('c_attn', 'attn.c_proj', 'mlp.c_fc', 'transformer.h.0.attn.c_attn', ...).
    dropout : float in [0, 1)
        Dropout on the adapter's input (the base path has none).
    trainable : str or sequence of str
        Module-name suffixes whose parameters stay trainable too (e.g. 'head' of a GPTClassifier);
        they are saved with the adapters by `save_lora`.
    """
    if isinstance(rank, bool) or not isinstance(rank, (int, np.integer)) or rank < 1:
        raise ValueError(f"lora.apply: rank must be an int >= 1, got {rank!r}")
    alpha = float(rank if alpha is None else alpha)
    if not alpha > 0:
        raise ValueError(f"lora.apply: alpha must be > 0, got {alpha}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"lora.apply: dropout must be in [0, 1), got {dropout}")
    targets, trainable = _as_names(targets, "targets"), _as_names(trainable, "trainable")
    if not targets:
        raise ValueError("lora.apply: targets is empty")
    if _adapters(model):
        raise ValueError("lora.apply: the model already has LoRA adapters (merge() them first)")
    modules = list(model.named_modules())
    chosen = [(name, m) for name, m in modules if name and _matches(name, targets)]
    if not chosen:
        linears = [name for name, m in modules if isinstance(m, Linear)]
        raise ValueError(f"lora.apply: no module matches targets {targets}; the Linear layers are "
                         f"{linears[:8]}{' ...' if len(linears) > 8 else ''}")
    wrong = [f"{name} ({type(m).__name__})" for name, m in chosen if type(m) is not Linear]
    if wrong:
        raise ValueError(f"lora.apply: targets {targets} match modules that are not Linear layers: {wrong}")
    keep = [(name, m) for name, m in modules if name and _matches(name, trainable)]
    missing = [t for t in trainable if not any(_matches(name, (t,)) for name, _ in keep)]
    if missing:
        raise ValueError(f"lora.apply: no module matches trainable {missing}")
    # a weight shared with another module (GPT's lm_head is tied to wte) cannot be merged into
    counts = {}
    for _, m in modules:
        for p in m._parameters.values():
            if p is not None:
                counts[id(p)] = counts.get(id(p), 0) + 1
    tied = [name for name, m in chosen if counts[id(m.weight)] > 1]
    if tied:
        raise ValueError(f"lora.apply: {tied} share their weight with another module (tied embeddings); "
                         f"LoRA on a tied weight would change both and could not be merged")

    for p in model.parameters():
        p.requires_grad_(False)
        p.grad = None
    for name, m in chosen:
        _replace(model, name, LoRALinear(m, rank, alpha, dropout))
    for _, m in keep:
        for p in m.parameters():
            p.requires_grad_(True)
    model.lora_config = {"rank": int(rank), "alpha": alpha, "targets": list(targets), "dropout": float(dropout),
                         "trainable": list(trainable)}
    return model


def merge(model: Module) -> Module:
    """Fold every adapter into its base weight (W += alpha/rank * B @ A) and restore plain Linears.

    The requires_grad flags stay as they are (call ``model.requires_grad_(True)`` to train
    everything again). Returns the model.
    """
    found = _adapters(model)
    if not found:
        raise ValueError("lora.merge: the model has no LoRA adapters")
    for name, m in found:
        m.weight.data += m.delta_weight()
        lin = Linear.__new__(Linear)  # no fresh random init (it would move the global RNG)
        Module.__init__(lin)
        lin.in_features, lin.out_features = m.in_features, m.out_features
        lin.weight, lin.bias = m.weight, m.bias
        _replace(model, name, lin)
    model.__dict__.pop("lora_config", None)
    return model


# ---------------------------------------------------------------------------- saving
def lora_state_dict(model: Module) -> OrderedDict:
    """name -> array of the adapter weights (and of the `trainable` modules' parameters)."""
    if not _adapters(model):
        raise ValueError("lora.lora_state_dict: the model has no LoRA adapters (call lora.apply first)")
    trainable = tuple(getattr(model, "lora_config", {}).get("trainable", ()))
    prefixes = [name for name, _ in model.named_modules() if name and trainable and _matches(name, trainable)]
    out = OrderedDict()
    for name, p in model.named_parameters():
        leaf = name.rsplit(".", 1)[-1]
        if leaf in ("lora_A", "lora_B") or any(name.startswith(pre + ".") for pre in prefixes):
            out[name] = p.data
    return out


class _Subset:
    """The state_dict interface over some of a model's parameters (for the checkpoint helpers)."""

    def __init__(self, model: Module, names):
        params = dict(model.named_parameters())
        self.params = OrderedDict((n, params[n]) for n in names)

    def state_dict(self):
        return OrderedDict((n, p.data) for n, p in self.params.items())

    def load_state_dict(self, state, strict=True):
        missing = [n for n in self.params if n not in state]
        unexpected = [n for n in state if n not in self.params]
        problems = [f"missing keys: {missing}"] if missing else []
        problems += [f"unexpected keys: {unexpected}"] if unexpected else []
        problems += [f"shape mismatch for {n}: file {tuple(state[n].shape)}, model {p.shape}"
                     for n, p in self.params.items() if n in state and tuple(state[n].shape) != p.shape]
        if problems:
            raise ValueError("; ".join(problems))
        for n, p in self.params.items():
            p.data[...] = backend.xp(p.data).asarray(state[n], dtype=p.dtype)
        return [], []


def save_lora(model: Module, path) -> None:
    """Write only the adapter weights (plus `trainable` modules) and the LoRA settings (atomic safetensors)."""
    names = list(lora_state_dict(model))
    config = dict(getattr(model, "lora_config", None) or {})
    if not config:
        first = _adapters(model)[0][1]
        config = {"rank": first.rank, "alpha": first.alpha, "targets": [n for n, _ in _adapters(model)],
                  "dropout": first.lora_dropout.p, "trainable": []}
    save_checkpoint(path, _Subset(model, names), extra={"lora": config})


def load_lora(model: Module, path) -> Module:
    """Load adapters written by `save_lora`; a model without adapters gets them applied first."""
    path = os.fspath(path)
    meta = read_checkpoint_metadata(path)
    config = (meta["extra"] or {}).get("lora")
    if config is None:
        raise CheckpointError(f"{path} is not a LoRA adapter file (no 'lora' settings in its metadata)")
    if not _adapters(model):
        apply(model, config["rank"], config["alpha"], tuple(config["targets"]), config["dropout"],
              tuple(config.get("trainable", ())))
    load_checkpoint(path, _Subset(model, list(lora_state_dict(model))), restore_rng=False)
    return model
