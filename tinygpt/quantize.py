"""Weight-only int8 quantization for inference (per-output-channel, symmetric absmax).

`quantize(model)` replaces, in place, every Linear with a QuantizedLinear, every MoE
ExpertLinear with a QuantizedExpertLinear and (embeddings=True) every Embedding with a
QuantizedEmbedding. Each output channel c gets one float32 scale s_c = max_i |w_ci| / 127 and
int8 weights q_ci = round(w_ci / s_c) in [-127, 127], so |w - q s| <= s / 2 elementwise
(the weight-only scheme of LLM.int8() without its outlier decomposition, as in GPTQ/AWQ-style
"W8A16" inference). Activations stay float: the product is computed as (x @ q.T) * s + b,
the int8 weight cast to float a block of output rows at a time and multiplied by the linear
kernel (native SGEMM where it qualifies; there is no int8 GEMM in this repo), so no full float
copy of a weight matrix is ever held.

Tied LM head: the head's output channels are the embedding's rows, so with embeddings=True the
head and `wte` share ONE int8 table and one scale per token row (stored once, under
`transformer.wte`); with embeddings=False the head gets its own int8 copy and `wte` stays float.
MoE routers stay float32 (tiny, and rounding could flip routing decisions).

Quantized modules are inference-only: in training mode their forward raises, and a backward
through them raises (int8 weights have no gradient).
"""
from __future__ import annotations

import numpy as np

from . import kernels
from .autograd import Function
from .backend import xp as array_module
from .functional import _check_ids
from .nn.layers import Embedding, Linear
from .nn.module import Module
from .nn.moe import ExpertLinear, MoE
from .tensor import Tensor

QMAX = 127
_NO_TRAINING = ("is inference-only (int8 weights have no gradient): train the float model, then quantize it; "
                "call model.eval() before running a quantized model")


def quantize_absmax(w, axis):
    """Symmetric absmax int8 quantization; one scale per slice, reducing over `axis`.

    Returns (q int8 like w, scale float32 with `axis` removed); w ~= q * scale (scale broadcast on axis).
    """
    xp = array_module(w)
    w = w.astype(xp.float64)
    scale = xp.abs(w).max(axis=axis, keepdims=True) / QMAX
    safe = xp.where(scale == 0, 1.0, scale)  # an all-zero channel: q = 0, scale 0
    q = xp.clip(xp.rint(w / safe), -QMAX, QMAX).astype(xp.int8)
    return q, xp.squeeze(scale, axis=axis).astype(xp.float32)


def dequantize(q, scale, axis):
    """q * scale with the scale broadcast along `axis` (the reduced axis of quantize_absmax)."""
    xp = array_module(q)
    return q.astype(xp.float32) * xp.expand_dims(scale, axis)


class _Int8Linear(Function):
    """y = (x @ q.T) * scale + bias, q (out, in) int8 cast to x's dtype `block_rows` rows at a time."""

    @staticmethod
    def forward(ctx, x, q, scale, bias, block_rows=4096):
        xp = array_module(x)
        out_f, in_f = q.shape
        if x.shape[-1] != in_f:
            raise ValueError(f"QuantizedLinear: input {x.shape} does not match weight (out, in) = {q.shape}")
        x2 = xp.ascontiguousarray(x.reshape(-1, in_f))  # (..., in) -> (M, in)
        y = xp.empty((x2.shape[0], out_f), dtype=x.dtype)
        for o in range(0, out_f, block_rows):
            w = q[o:o + block_rows].astype(x.dtype)  # (rows, in): a float copy of one block of output rows
            y[:, o:o + block_rows] = kernels.select("linear", x2, w, None).forward(x2, w, None)[0]  # (M, rows)
        y *= scale.astype(x.dtype)
        if bias is not None:
            y += bias.astype(x.dtype)
        return y.reshape(*x.shape[:-1], out_f)  # (M, out) -> (..., out)

    @staticmethod
    def backward(ctx, g):
        raise RuntimeError("QuantizedLinear " + _NO_TRAINING)


class _Int8ExpertLinear(Function):
    """y[e] = (x[e] @ q[e]) * scale[e] + bias[e] for q (E, in, out) int8, one expert at a time."""

    @staticmethod
    def forward(ctx, x, q, scale, bias):
        xp = array_module(x)
        E, in_f, out_f = q.shape
        if x.ndim != 3 or x.shape[0] != E or x.shape[2] != in_f:
            raise ValueError(f"QuantizedExpertLinear: input {x.shape} does not match (n_expert, tokens, in) = "
                             f"({E}, *, {in_f})")
        y = xp.empty((E, x.shape[1], out_f), dtype=x.dtype)
        for e in range(E):
            y[e] = x[e] @ q[e].astype(x.dtype)  # (M, in) @ (in, out)
        y *= scale.astype(x.dtype)[:, None, :]
        if bias is not None:
            y += bias.astype(x.dtype)[:, None, :]
        return y

    @staticmethod
    def backward(ctx, g):
        raise RuntimeError("QuantizedExpertLinear " + _NO_TRAINING)


class _QuantizedModule(Module):
    def _check_mode(self):
        if self.training:
            raise RuntimeError(f"{type(self).__name__} {_NO_TRAINING}")

    def _table(self):
        """(qweight, scale): this module's own, or those of the module it is tied to."""
        src = self if self._tied is None else self._tied
        return src.qweight, src.scale

    @property
    def weight(self) -> Tensor:
        """A dequantized float32 copy of the weight (computed on access; no gradient)."""
        q, s = self._table()
        return Tensor._wrap(dequantize(q, s, self._reduce_axis))


class QuantizedLinear(_QuantizedModule):
    """A Linear with int8 weights (out, in) and per-output-channel float32 scales (out,).

    Buffers: qweight (int8), scale (float32), bias (float, when present). A head tied to a
    QuantizedEmbedding (`tied`) holds no table of its own and reads the embedding's.
    """

    _reduce_axis = 1

    def __init__(self, qweight=None, scale=None, bias=None, tied: Module | None = None, block_rows: int = 4096):
        super().__init__()
        object.__setattr__(self, "_tied", tied)  # not a child module: the table is stored once, by its owner
        if tied is None:
            self.register_buffer("qweight", qweight)
            self.register_buffer("scale", scale)
        if bias is not None:
            self.register_buffer("bias", bias)
        else:
            self.bias = None
        self.block_rows = block_rows
        self.out_features, self.in_features = self._table()[0].shape

    @classmethod
    def from_linear(cls, linear: Linear, block_rows: int = 4096):
        q, s = quantize_absmax(linear.weight.data, axis=1)
        bias = None if linear.bias is None else linear.bias.data.copy()
        return cls(q, s, bias, block_rows=block_rows)

    def forward(self, x):
        self._check_mode()
        q, s = self._table()
        return _Int8Linear.apply(x, q, s, self.bias, block_rows=self.block_rows)

    def extra_repr(self):
        tied = ", tied to an embedding" if self._tied is not None else ""
        return f"{self.in_features}, {self.out_features}, bias={self.bias is not None}, int8{tied}"


class QuantizedEmbedding(_QuantizedModule):
    """An Embedding with int8 rows and one float32 scale per row (a token row = a tied head's output channel)."""

    _reduce_axis = 1

    def __init__(self, qweight=None, scale=None, tied: Module | None = None):
        super().__init__()
        object.__setattr__(self, "_tied", tied)
        if tied is None:
            self.register_buffer("qweight", qweight)
            self.register_buffer("scale", scale)
        self.num_embeddings, self.embedding_dim = self._table()[0].shape

    @classmethod
    def from_embedding(cls, emb: Embedding):
        return cls(*quantize_absmax(emb.weight.data, axis=1))

    def forward(self, ids):
        self._check_mode()
        q, s = self._table()
        ids = ids.data if isinstance(ids, Tensor) else ids if hasattr(ids, "dtype") else np.asarray(ids)
        _check_ids("QuantizedEmbedding", ids, q.shape[0])
        return Tensor._wrap(q[ids].astype(s.dtype) * s[ids][..., None])  # ids (...) -> (..., C)

    def extra_repr(self):
        return f"{self.num_embeddings}, {self.embedding_dim}, int8"


class QuantizedExpertLinear(_QuantizedModule):
    """An ExpertLinear with int8 weights (E, in, out) and float32 scales (E, out), one per expert output channel."""

    _reduce_axis = 1

    def __init__(self, qweight, scale, bias=None):
        super().__init__()
        object.__setattr__(self, "_tied", None)
        self.register_buffer("qweight", qweight)
        self.register_buffer("scale", scale)
        if bias is not None:
            self.register_buffer("bias", bias)
        else:
            self.bias = None
        self.n_expert, self.in_features, self.out_features = qweight.shape

    @classmethod
    def from_expert_linear(cls, lin: ExpertLinear):
        q, s = quantize_absmax(lin.weight.data, axis=1)
        return cls(q, s, None if lin.bias is None else lin.bias.data.copy())

    def forward(self, x):
        self._check_mode()
        return _Int8ExpertLinear.apply(x, self.qweight, self.scale, self.bias)

    def extra_repr(self):
        return f"{self.n_expert} x ({self.in_features}, {self.out_features}), bias={self.bias is not None}, int8"


def quantize(model: Module, bits: int = 8, embeddings: bool = True, block_rows: int = 4096) -> Module:
    """Weight-only int8 quantization of `model`, in place; returns the model, in eval mode.

    Linear -> QuantizedLinear, ExpertLinear -> QuantizedExpertLinear, and with `embeddings`
    Embedding -> QuantizedEmbedding (a head tied to an embedding then shares its int8 table).
    LayerNorms, biases and MoE routers stay float. Inference only (see the module docstring).
    """
    if bits != 8:
        raise ValueError(f"quantize: only bits=8 is supported (symmetric int8 per output channel), got {bits!r}")
    if not isinstance(model, Module):
        raise TypeError(f"quantize: expected a tinygpt Module, got {type(model).__name__}")
    if block_rows < 1:
        raise ValueError(f"quantize: block_rows must be >= 1, got {block_rows}")
    order = {id(m): i for i, (_, m) in enumerate(model.named_modules())}  # depth first: wte before lm_head
    sites = sorted(((parent, name, child) for _, parent in model.named_modules()
                    for name, child in parent._modules.items()), key=lambda site: order[id(site[2])])
    done = {}  # id(float weight Parameter) -> the quantized module that owns its int8 table
    replaced = {}  # id(old module) -> its replacement (a module registered under two names stays one)
    for parent, name, child in sites:
        key = id(getattr(child, "weight", None))
        if id(child) in replaced:
            new = replaced[id(child)]
        elif isinstance(child, Linear) and not (isinstance(parent, MoE) and name == "router"):
            owner = done.get(key)
            if isinstance(owner, QuantizedEmbedding):  # tied head: rows of the embedding = output channels
                bias = None if child.bias is None else child.bias.data.copy()
                new = QuantizedLinear(bias=bias, tied=owner, block_rows=block_rows)
            else:
                new = QuantizedLinear.from_linear(child, block_rows)
        elif isinstance(child, Embedding) and embeddings:
            owner = done.get(key)
            new = QuantizedEmbedding(tied=owner) if isinstance(owner, QuantizedLinear) \
                else QuantizedEmbedding.from_embedding(child)
        elif isinstance(child, ExpertLinear):
            new = QuantizedExpertLinear.from_expert_linear(child)
        else:
            continue
        done.setdefault(key, new)
        replaced[id(child)] = new
        parent._modules[name] = new  # replaced in place: the module order (and state_dict order) is kept
        object.__setattr__(parent, name, new)
    return model.eval()


def weight_memory(model: Module) -> dict:
    """Bytes held by the model's parameters and buffers, each array counted once (ties shared).

    Returns {'total': bytes, '<dtype>': bytes, ...}, e.g. {'total': ..., 'float32': ..., 'int8': ...}.
    """
    seen, out = set(), {"total": 0}
    arrays = [p.data for p in model.parameters()]
    arrays += [getattr(mod, attr) for _, mod, attr in model.named_buffers()]
    for a in arrays:
        if a is None or id(a) in seen:
            continue
        seen.add(id(a))
        out[str(a.dtype)] = out.get(str(a.dtype), 0) + a.nbytes
        out["total"] += a.nbytes
    return out
