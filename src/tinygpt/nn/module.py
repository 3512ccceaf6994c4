"""Module and Parameter: the containers every layer builds on (PyTorch-shaped)."""
from __future__ import annotations

from collections import OrderedDict

from .. import backend
from ..tensor import Tensor


class Parameter(Tensor):
    """A Tensor that a Module registers as trainable (requires_grad=True by default)."""

    __slots__ = ()

    def __init__(self, data, requires_grad=True, dtype=None):
        super().__init__(data.data if isinstance(data, Tensor) else data, requires_grad=requires_grad, dtype=dtype)

    def __repr__(self):
        return "Parameter(" + super().__repr__() + ")"


class Module:
    """Base class: assign Parameters, Modules and buffers as attributes and they are tracked."""

    def __init__(self):
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "_buffers", OrderedDict())
        object.__setattr__(self, "training", True)

    def __setattr__(self, name, value):
        if "_parameters" not in self.__dict__:
            raise RuntimeError(f"{type(self).__name__}: call super().__init__() before assigning attributes")
        for registry in (self._parameters, self._modules, self._buffers):
            registry.pop(name, None)
        if isinstance(value, Parameter):
            self._parameters[name] = value
        elif isinstance(value, Module):
            self._modules[name] = value
        object.__setattr__(self, name, value)

    def register_buffer(self, name: str, array, persistent: bool = True):
        """A non-trainable array that moves with the module (in state_dict when persistent)."""
        self._buffers[name] = persistent
        object.__setattr__(self, name, array)

    def forward(self, *args, **kwargs):
        raise NotImplementedError(f"{type(self).__name__} does not define forward()")

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    # ------------------------------------------------------------------ traversal
    def named_modules(self, prefix: str = ""):
        """(name, module) for this module and every descendant, depth first, each once."""
        seen, stack = set(), [(prefix, self)]
        while stack:
            name, mod = stack.pop()
            if id(mod) in seen:
                continue
            seen.add(id(mod))
            yield name, mod
            children = [(f"{name}.{k}" if name else k, m) for k, m in mod._modules.items()]
            stack.extend(reversed(children))

    def children(self):
        return iter(self._modules.values())

    def modules(self):
        return (m for _, m in self.named_modules())

    def named_parameters(self):
        """(qualified name, Parameter) pairs; a shared (tied) parameter appears once, first name."""
        seen = set()
        for mod_name, mod in self.named_modules():
            for name, p in mod._parameters.items():
                if p is not None and id(p) not in seen:
                    seen.add(id(p))
                    yield (f"{mod_name}.{name}" if mod_name else name), p

    def parameters(self):
        return [p for _, p in self.named_parameters()]

    def named_buffers(self, persistent_only: bool = False):
        for mod_name, mod in self.named_modules():
            for name, persistent in mod._buffers.items():
                if persistent or not persistent_only:
                    yield (f"{mod_name}.{name}" if mod_name else name), mod, name

    def zero_grad(self):
        for p in self.parameters():
            p.grad = None

    def requires_grad_(self, flag: bool = True):
        """Freeze (False) or unfreeze every parameter; a frozen one gets no grad and optimisers skip it."""
        for p in self.parameters():
            p.requires_grad_(flag)
            if not flag:
                p.grad = None
        return self

    # ------------------------------------------------------------------ modes and devices
    def train(self, mode: bool = True):
        for m in self.modules():
            object.__setattr__(m, "training", mode)
        return self

    def eval(self):
        return self.train(False)

    def to(self, device=None, dtype=None):
        """Move/cast every parameter and buffer in place (Parameter objects keep their identity)."""
        for p in self.parameters():
            data = p.data
            if dtype is not None and data.dtype.kind == "f":
                data = data.astype(dtype)
            if device is not None:
                data = backend.to_device(data, device)
            p.data = data
            p.grad = None
        for _, mod, name in self.named_buffers():
            data = getattr(mod, name)
            if dtype is not None and data.dtype.kind == "f":
                data = data.astype(dtype)
            if device is not None:
                data = backend.to_device(data, device)
            object.__setattr__(mod, name, data)
        return self

    # ------------------------------------------------------------------ state
    def state_dict(self) -> OrderedDict:
        """Name -> array for every parameter and persistent buffer (the arrays themselves, not copies)."""
        sd = OrderedDict((name, p.data) for name, p in self.named_parameters())
        for name, mod, attr in self.named_buffers(persistent_only=True):
            sd[name] = getattr(mod, attr)
        return sd

    def load_state_dict(self, state_dict, strict: bool = True):
        """Copy arrays into the parameters/buffers in place; errors name every bad key.

        Returns (missing_keys, unexpected_keys). With strict=True any of them is an error.
        """
        own = OrderedDict((name, ("param", p)) for name, p in self.named_parameters())
        for name, mod, attr in self.named_buffers(persistent_only=True):
            own[name] = ("buffer", (mod, attr))
        missing = [k for k in own if k not in state_dict]
        unexpected = [k for k in state_dict if k not in own]
        problems = []
        if strict and missing:
            problems.append(f"missing keys: {missing}")
        if strict and unexpected:
            problems.append(f"unexpected keys: {unexpected}")
        for name, (kind, target) in own.items():
            if name not in state_dict:
                continue
            value = state_dict[name]
            current = target.data if kind == "param" else getattr(*target)
            if tuple(value.shape) != tuple(current.shape):
                problems.append(f"shape mismatch for {name}: checkpoint {tuple(value.shape)}, model {tuple(current.shape)}")
        if problems:
            raise ValueError(f"{type(self).__name__}.load_state_dict: " + "; ".join(problems))
        for name, (kind, target) in own.items():
            if name not in state_dict:
                continue
            value = state_dict[name]
            current = target.data if kind == "param" else getattr(*target)
            if backend.array_device(value) is None:  # another array-like: through the host
                value = backend.to_numpy(value)
            value = backend.to_device(value, backend.device_of(current))  # e.g. a host checkpoint into a GPU model
            current[...] = value.astype(current.dtype, copy=False)
        return missing, unexpected

    def num_parameters(self) -> int:
        return sum(p.size for p in self.parameters())

    def extra_repr(self) -> str:
        return ""

    def __repr__(self):
        lines = [f"{type(self).__name__}({self.extra_repr()}"]
        for name, mod in self._modules.items():
            body = repr(mod).replace("\n", "\n  ")
            lines.append(f"  ({name}): {body}")
        return "\n".join(lines) + (")" if len(lines) == 1 else "\n)")


class ModuleList(Module):
    """A list of modules, registered under their indices ('0', '1', ...)."""

    def __init__(self, modules=()):
        super().__init__()
        for m in modules:
            self.append(m)

    def append(self, module: Module):
        setattr(self, str(len(self._modules)), module)
        return self

    def __getitem__(self, i):
        items = list(self._modules.values())
        return ModuleList(items[i]) if isinstance(i, slice) else items[i]

    def __len__(self):
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules.values())
