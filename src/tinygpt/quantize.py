"""Weight-only quantization for inference: int8 per output channel (or int4 in groups), symmetric absmax.

`quantize(model)` replaces, in place, every Linear with a QuantizedLinear, every MoE
ExpertLinear with a QuantizedExpertLinear and (embeddings=True) every Embedding with a
QuantizedEmbedding. Each output channel c gets one float32 scale s_c = max_i |w_ci| / 127 and
int8 weights q_ci = round(w_ci / s_c) in [-127, 127], so |w - q s| <= s / 2 elementwise
(the weight-only scheme of LLM.int8() without its outlier decomposition, as in GPTQ/AWQ-style
"W8A16" inference). The product y = x @ (q * s).T + b is the `quantized_linear` kernel op: natively,
up to 8 rows (decode) are quantized per block of 32 to int8 and multiplied with integer dot products
straight from the int8 / int4 tables (q8_0-style activations, as llama.cpp), more rows by the float
GEMM on dequantized panels; the reference dequantizes a block of output rows at a time. No full float
copy of a weight matrix is ever held.

Tied LM head: the head's output channels are the embedding's rows, so with embeddings=True the
head and `wte` share ONE int8 table and one scale per token row (stored once, under
`transformer.wte`); with embeddings=False the head gets its own int8 copy and `wte` stays float.
MoE routers stay float32 (tiny, and rounding could flip routing decisions).

bits=4: int4 in [-7, 7], two per byte (element 2i in the low nibble), with one float32 scale per
`group_size` (default 32) consecutive input weights of an output channel (scale = group absmax / 7,
the group-wise layout of GPTQ/AWQ-style 4-bit checkpoints); each row block is dequantized before
its matmul. Experts are stored output-major, (E, out, in/2), so groups and packing run along `in`.

Quantized modules are inference-only: in training mode their forward raises, and a backward
through them raises (int8 weights have no gradient).

Checkpoints: save_checkpoint stores a quantized model's int8 / packed int4 tables and scales and
records `quantization_info(model)` ({'bits', 'group_size', 'embeddings'}) in the metadata;
tinygpt.checkpoint.load_model rebuilds the model with `build_quantized` (the quantized modules
directly, never the float weights) and loads the tables into it.
"""
from __future__ import annotations

import contextlib
import threading

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
QMAX4 = 7
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


def pack_int4(q):
    """int8 values in [-8, 7], (..., 2m) -> uint8 (..., m): element 2i in the low nibble, 2i+1 in the high."""
    xp = array_module(q)
    u = (q.astype(xp.int16) & 0xF).astype(xp.uint8)  # two's complement nibbles
    return u[..., 0::2] | (u[..., 1::2] << 4)


# byte -> its (low, high) nibbles as signed int4: one gather unpacks (a decode step's embedding row among them)
_NIBBLES = np.array([[lo - 16 * (lo >= 8), hi - 16 * (hi >= 8)] for lo, hi in ((b & 0xF, b >> 4) for b in range(256))],
                    dtype=np.int8)


def unpack_int4(packed):
    """The inverse of pack_int4: uint8 (..., m) -> int8 (..., 2m) in [-8, 7]."""
    xp = array_module(packed)
    nib = (_NIBBLES if xp is np else xp.asarray(_NIBBLES))[packed]  # (..., m) -> (..., m, 2)
    return nib.reshape(*packed.shape[:-1], 2 * packed.shape[-1])  # (..., m, 2) -> (..., 2m)


def quantize_int4(w, group_size: int):
    """Symmetric absmax int4 in groups of `group_size` along the last axis (scale = absmax/7), packed.

    Returns (packed uint8 (..., n/2), scale float32 (..., n/group_size)); |w - deq| <= scale/2.
    """
    xp = array_module(w)
    n = w.shape[-1]
    g = w.astype(xp.float64).reshape(*w.shape[:-1], n // group_size, group_size)  # (..., n) -> (..., G, gs)
    scale = xp.abs(g).max(axis=-1, keepdims=True) / QMAX4
    safe = xp.where(scale == 0, 1.0, scale)
    q = xp.clip(xp.rint(g / safe), -QMAX4, QMAX4).astype(xp.int8).reshape(w.shape)
    return pack_int4(q), scale[..., 0].astype(xp.float32)


def dequantize_int4(packed, scale, dtype=np.float32):
    """Packed int4 (..., n/2) with group scales (..., G) -> float (..., n)."""
    q = unpack_int4(packed).astype(dtype)
    shape = q.shape
    return (q.reshape(*shape[:-1], scale.shape[-1], -1) * scale.astype(dtype)[..., None]).reshape(shape)


def quantized_linear(x, q, scale, bias, bits=8, gelu=False, block_rows=4096):
    """y = x @ (q * scale).T + bias on arrays (gelu=True: gelu_tanh of it) through the `quantized_linear` op
    (`quantized_linear_gelu`; tinygpt.kernels): the native kernel (integer GEMV for up to 8 rows, dequantized
    panels + SGEMM above) or the reference, which dequantizes `block_rows` output channels at a time. No full
    float copy of the weight is ever made. QuantizedLinear's forward and the cached decode path
    (models/fastpath.py) both run it.

    q (out, in) int8 with scale (out,), or bits=4: q (out, in/2) packed int4 with group scales (out, in/group).
    """
    out_f, in_f = q.shape[0], q.shape[1] * (2 if bits == 4 else 1)
    if x.shape[-1] != in_f:
        raise ValueError(f"QuantizedLinear: input {x.shape} does not match weight (out, in) = {(out_f, in_f)}")
    flat = x.ndim == 2 and x.flags.c_contiguous  # decode passes (M, in) rows as they are
    x2 = x if flat else array_module(x).ascontiguousarray(x.reshape(-1, in_f))  # (..., in) -> (M, in)
    kernel = kernels.select("quantized_linear_gelu" if gelu else "quantized_linear", x2, q, scale, bias)
    extra = {"block_rows": block_rows} if kernel.name == "reference" else {}
    y = kernel.forward(x2, q, scale, bias, **extra)[0]  # (M, out)
    return y if flat else y.reshape(*x.shape[:-1], out_f)  # (M, out) -> (..., out)


class _Int8Linear(Function):
    """QuantizedLinear's op: `quantized_linear` under autograd, which refuses a backward (no weight gradient)."""

    @staticmethod
    def forward(ctx, x, q, scale, bias, block_rows=4096, bits=8, gelu=False):
        return quantized_linear(x, q, scale, bias, bits=bits, gelu=gelu, block_rows=block_rows)

    @staticmethod
    def backward(ctx, g):
        raise RuntimeError("QuantizedLinear " + _NO_TRAINING)


class _Int8ExpertLinear(Function):
    """y[e] = (x[e] @ q[e]) * scale[e] + bias[e] for q (E, in, out) int8, one expert at a time."""

    @staticmethod
    def forward(ctx, x, q, scale, bias, bits=8):
        xp = array_module(x)
        if bits == 4:  # q (E, out, in/2) packed, scale (E, out, in/group)
            E, out_f, in_f = q.shape[0], q.shape[1], 2 * q.shape[2]
        else:
            E, in_f, out_f = q.shape
        if x.ndim != 3 or x.shape[0] != E or x.shape[2] != in_f:
            raise ValueError(f"QuantizedExpertLinear: input {x.shape} does not match (n_expert, tokens, in) = "
                             f"({E}, *, {in_f})")
        y = xp.empty((E, x.shape[1], out_f), dtype=x.dtype)
        for e in range(E):
            if bits == 4:
                y[e] = x[e] @ dequantize_int4(q[e], scale[e], x.dtype).T  # (M, in) @ (in, out)
            else:
                y[e] = x[e] @ q[e].astype(x.dtype)  # (M, in) @ (in, out)
        if bits == 8:
            y *= scale.astype(x.dtype)[:, None, :]
        if bias is not None:
            y += bias.astype(x.dtype)[:, None, :]
        return y

    @staticmethod
    def backward(ctx, g):
        raise RuntimeError("QuantizedExpertLinear " + _NO_TRAINING)


class _QuantizedModule(Module):
    def __init__(self, qweight=None, scale=None, tied: Module | None = None):
        super().__init__()
        object.__setattr__(self, "_tied", tied)  # not a child module: the table is stored once, by its owner
        if tied is None:
            self.register_buffer("qweight", qweight)
            self.register_buffer("scale", scale)

    def _set_bias(self, bias):
        if bias is not None:
            self.register_buffer("bias", bias)
        else:
            self.bias = None

    def _rows_cols(self):
        """(rows, logical columns) of a 2-D table: int4 packs two columns per byte."""
        q = self._table()[0]
        return q.shape[0], q.shape[1] * (2 if self.bits == 4 else 1)

    def _check_mode(self):
        if self.training:
            raise RuntimeError(f"{type(self).__name__} {_NO_TRAINING}")

    def _table(self):
        """(qweight, scale): this module's own, or those of the module it is tied to."""
        src = self if self._tied is None else self._tied
        return src.qweight, src.scale

    @property
    def bits(self) -> int:
        """8 (int8 per output channel) or 4 (packed int4, group scales), read from the stored table."""
        return 8 if self._table()[0].dtype == np.int8 else 4

    @property
    def weight(self) -> Tensor:
        """A dequantized float32 copy of the weight (computed on access; no gradient)."""
        q, s = self._table()
        if self.bits == 4:
            w = dequantize_int4(q, s)
            return Tensor._wrap(w.swapaxes(1, 2) if w.ndim == 3 else w)  # experts: (E, out, in) -> (E, in, out)
        return Tensor._wrap(dequantize(q, s, self._reduce_axis))


class QuantizedLinear(_QuantizedModule):
    """A Linear with int8 weights (out, in) and per-output-channel float32 scales (out,).

    Buffers: qweight (int8), scale (float32), bias (float, when present). A head tied to a
    QuantizedEmbedding (`tied`) holds no table of its own and reads the embedding's.
    """

    _reduce_axis = 1

    def __init__(self, qweight=None, scale=None, bias=None, tied: Module | None = None, block_rows: int = 4096):
        super().__init__(qweight, scale, tied)
        self._set_bias(bias)
        self.block_rows = block_rows
        self.out_features, self.in_features = self._rows_cols()

    @classmethod
    def from_linear(cls, linear: Linear, block_rows: int = 4096, bits: int = 8, group_size: int = 32,
                    empty: bool = False):
        w = linear.weight.data
        if empty:  # tables to be filled by load_state_dict (build_quantized): w is not read
            q, s = _empty_table(w.shape, bits, group_size, axis=1)
        else:
            q, s = quantize_int4(w, group_size) if bits == 4 else quantize_absmax(w, axis=1)
        bias = None if linear.bias is None else linear.bias.data.copy()
        return cls(q, s, bias, block_rows=block_rows)

    def forward(self, x):
        self._check_mode()
        q, s = self._table()
        return _Int8Linear.apply(x, q, s, self.bias, block_rows=self.block_rows, bits=self.bits)

    def forward_gelu(self, x):
        """gelu_tanh(self(x)) in one op (MLP's fused first projection, as F.linear_gelu for a float Linear)."""
        self._check_mode()
        q, s = self._table()
        return _Int8Linear.apply(x, q, s, self.bias, block_rows=self.block_rows, bits=self.bits, gelu=True)

    def extra_repr(self):
        tied = ", tied to an embedding" if self._tied is not None else ""
        return f"{self.in_features}, {self.out_features}, bias={self.bias is not None}, int{self.bits}{tied}"


class QuantizedEmbedding(_QuantizedModule):
    """An Embedding with int8 rows and one float32 scale per row (a token row = a tied head's output channel)."""

    _reduce_axis = 1

    def __init__(self, qweight=None, scale=None, tied: Module | None = None):
        super().__init__(qweight, scale, tied=tied)
        self.num_embeddings, self.embedding_dim = self._rows_cols()

    @classmethod
    def from_embedding(cls, emb: Embedding, bits: int = 8, group_size: int = 32, empty: bool = False):
        w = emb.weight.data
        if empty:
            return cls(*_empty_table(w.shape, bits, group_size, axis=1))
        return cls(*(quantize_int4(w, group_size) if bits == 4 else quantize_absmax(w, axis=1)))

    def forward(self, ids):
        self._check_mode()
        q, s = self._table()
        ids = ids.data if isinstance(ids, Tensor) else ids if hasattr(ids, "dtype") else np.asarray(ids)
        _check_ids("QuantizedEmbedding", ids, q.shape[0])
        if self.bits == 4:
            return Tensor._wrap(dequantize_int4(q[ids], s[ids], s.dtype))  # ids (...) -> (..., C)
        return Tensor._wrap(q[ids].astype(s.dtype) * s[ids][..., None])  # ids (...) -> (..., C)

    def extra_repr(self):
        return f"{self.num_embeddings}, {self.embedding_dim}, int{self.bits}"


class QuantizedExpertLinear(_QuantizedModule):
    """An ExpertLinear with int8 weights (E, in, out) and float32 scales (E, out), one per expert output channel."""

    _reduce_axis = 1

    def __init__(self, qweight, scale, bias=None):
        super().__init__(qweight, scale)
        self._set_bias(bias)
        if self.bits == 4:  # stored output-major (E, out, in/2) so groups and packing run along `in`
            E, out_f, half_in = qweight.shape
            self.n_expert, self.out_features, self.in_features = E, out_f, 2 * half_in
        else:
            self.n_expert, self.in_features, self.out_features = qweight.shape

    @classmethod
    def from_expert_linear(cls, lin: ExpertLinear, bits: int = 8, group_size: int = 32, empty: bool = False):
        w = lin.weight.data
        if empty:
            E, n_in, n_out = w.shape
            q, s = _empty_table((E, n_out, n_in) if bits == 4 else w.shape, bits, group_size, axis=1)
        elif bits == 4:
            q, s = quantize_int4(array_module(w).ascontiguousarray(w.swapaxes(1, 2)), group_size)  # (E, out, in)
        else:
            q, s = quantize_absmax(w, axis=1)
        return cls(q, s, None if lin.bias is None else lin.bias.data.copy())

    def forward(self, x):
        self._check_mode()
        return _Int8ExpertLinear.apply(x, self.qweight, self.scale, self.bias, bits=self.bits)

    def extra_repr(self):
        return (f"{self.n_expert} x ({self.in_features}, {self.out_features}), bias={self.bias is not None}, "
                f"int{self.bits}")


def quantize(model: Module, bits: int = 8, embeddings: bool = True, block_rows: int = 4096,
             group_size: int | None = None, *, _empty: bool = False) -> Module:
    """Weight-only quantization of `model`, in place; returns the model, in eval mode.

    bits=8: int8, one scale per output channel. bits=4: int4 packed two per byte, one scale per
    `group_size` (default 32) consecutive input weights of an output channel.
    Linear -> QuantizedLinear, ExpertLinear -> QuantizedExpertLinear, and with `embeddings`
    Embedding -> QuantizedEmbedding (a head tied to an embedding then shares its table).
    LayerNorms, biases and MoE routers stay float. Inference only (see the module docstring).
    """
    if bits not in (8, 4):
        raise ValueError(f"quantize: bits must be 8 (int8 per output channel) or 4 (int4 in groups), got {bits!r}")
    if bits == 8 and group_size is not None:
        raise ValueError("quantize: group_size applies to bits=4 only (int8 uses one scale per output channel)")
    if bits == 4:
        group_size = 32 if group_size is None else group_size
        if not isinstance(group_size, int) or group_size < 2 or group_size % 2:
            raise ValueError(f"quantize: group_size must be a positive even int, got {group_size!r}")
    if not isinstance(model, Module):
        raise TypeError(f"quantize: expected a tinygpt Module, got {type(model).__name__}")
    if block_rows < 1:
        raise ValueError(f"quantize: block_rows must be >= 1, got {block_rows}")
    order = {id(m): i for i, (_, m) in enumerate(model.named_modules())}  # depth first: wte before lm_head
    sites = sorted(((parent, name, child) for _, parent in model.named_modules()
                    for name, child in parent._modules.items()), key=lambda site: order[id(site[2])])
    done = {}  # id(float weight Parameter) -> the quantized module that owns its int8 table
    replaced = {}  # id(old module) -> its replacement (a module registered under two names stays one)
    qargs = {"bits": bits, "group_size": group_size} if bits == 4 else {}
    if _empty:  # build_quantized: the module structure only, tables left for load_state_dict
        qargs["empty"] = True
    for parent, name, child in sites:
        key = id(getattr(child, "weight", None))
        if bits == 4 and id(child) not in replaced and isinstance(child, (Linear, Embedding, ExpertLinear)):
            n_in = child.weight.shape[1]  # Linear (out, in), Embedding (V, C), ExpertLinear (E, in, out)
            if n_in % group_size:
                raise ValueError(f"quantize: {type(child).__name__} {name!r} has {n_in} input features, "
                                 f"not a multiple of group_size {group_size}")
        if id(child) in replaced:
            new = replaced[id(child)]
        elif isinstance(child, Linear) and not (isinstance(parent, MoE) and name == "router"):
            owner = done.get(key)
            if isinstance(owner, QuantizedEmbedding):  # tied head: rows of the embedding = output channels
                bias = None if child.bias is None else child.bias.data.copy()
                new = QuantizedLinear(bias=bias, tied=owner, block_rows=block_rows)
            else:
                new = QuantizedLinear.from_linear(child, block_rows, **qargs)
        elif isinstance(child, Embedding) and embeddings:
            owner = done.get(key)
            new = QuantizedEmbedding(tied=owner) if isinstance(owner, QuantizedLinear) \
                else QuantizedEmbedding.from_embedding(child, **qargs)
        elif isinstance(child, ExpertLinear):
            new = QuantizedExpertLinear.from_expert_linear(child, **qargs)
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


# ------------------------------------------------------------------ quantized checkpoints (save / load)
def _empty_table(shape, bits: int, group_size, axis: int):
    """Uninitialised (table, scales) of the layout quantize_absmax (bits 8, one scale per slice along
    `axis`) or quantize_int4 (bits 4, packed along the last axis, one scale per group) gives for a
    float weight of `shape`; build_quantized fills them from a checkpoint."""
    shape = tuple(shape)
    if bits == 4:
        return (np.empty(shape[:-1] + (shape[-1] // 2,), dtype=np.uint8),
                np.empty(shape[:-1] + (shape[-1] // group_size,), dtype=np.float32))
    return np.empty(shape, dtype=np.int8), np.empty(shape[:axis] + shape[axis + 1:], dtype=np.float32)


_QUANTIZED = (QuantizedLinear, QuantizedEmbedding, QuantizedExpertLinear)


def quantization_info(model: Module) -> dict | None:
    """{'bits', 'group_size', 'embeddings'} of a model quantized by `quantize`, or None for a float model.

    group_size is None for int8 (one scale per output channel); embeddings says whether the
    embeddings are quantized too. What save_checkpoint records, and build_quantized rebuilds from.
    """
    bits, groups, embeddings = set(), set(), False
    for m in model.modules():
        if not isinstance(m, _QUANTIZED):
            continue
        embeddings = embeddings or isinstance(m, QuantizedEmbedding)
        if m._tied is not None:
            continue
        bits.add(m.bits)
        if m.bits == 4:
            n_in = m.embedding_dim if isinstance(m, QuantizedEmbedding) else m.in_features
            groups.add(n_in // m.scale.shape[-1])
    if not bits:
        return None
    if len(bits) > 1 or len(groups) > 1:
        raise ValueError(f"quantization_info: the model mixes int{sorted(bits)} tables or group sizes {sorted(groups)}; "
                         f"a checkpoint records one setting (quantize the whole float model once)")
    b = bits.pop()
    return {"bits": b, "group_size": groups.pop() if b == 4 else None, "embeddings": embeddings}


@contextlib.contextmanager
def _no_float_init():
    """While active (in this thread only), new Linear / Embedding / ExpertLinear weights are zero-stride
    views of one float (no memory, no RNG draws): the skeleton build_quantized converts to int tables."""
    import sys  # noqa: PLC0415

    from .nn import layers  # noqa: PLC0415

    original = layers._normal
    owner = threading.get_ident()

    def placeholder(shape, std, dtype=np.float32):
        if threading.get_ident() != owner:  # another thread building a real model
            return original(shape, std, dtype)
        return np.broadcast_to(np.zeros((), dtype=dtype), shape)

    patched = [m for name, m in list(sys.modules.items())
               if name.startswith(__package__ + ".") and getattr(m, "_normal", None) is original]
    for m in patched:
        m._normal = placeholder
    try:
        yield
    finally:
        for m in patched:
            m._normal = original


def _is_placeholder(a) -> bool:
    return isinstance(a, np.ndarray) and a.size > 1 and 0 in a.strides


def build_quantized(cls, config, bits: int = 8, group_size: int | None = None, embeddings: bool = True) -> Module:
    """A quantized `cls(config)` (e.g. GPT) with uninitialised int tables, for load_state_dict to fill.

    The float weights that quantization replaces are never allocated: the model is built with
    zero-stride placeholder weights, converted by `quantize`'s own traversal (same modules, same
    ties, same state_dict names) into empty int8 / packed int4 tables; only the parameters that stay
    float (LayerNorms, biases, MoE routers, unquantized embeddings) get real arrays.
    Used by tinygpt.checkpoint.load_model for quantized checkpoints.
    """
    with _no_float_init():
        model = cls(config)
    quantize(model, bits=bits, embeddings=embeddings, group_size=group_size, _empty=True)
    for p in model.parameters():  # what stays float is loaded from the file: give it memory
        if _is_placeholder(p.data):
            p.data = np.zeros(p.shape, dtype=p.dtype)
    return model
