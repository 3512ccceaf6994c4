"""Hugging Face GPT-2 files <-> GPT, without PyTorch.

A Hugging Face GPT-2 directory holds ``config.json`` and ``model.safetensors``. The tensor
names are GPT-2's (the same as tinygpt's), with a ``transformer.`` prefix when saved from
GPT2LMHeadModel and without it when saved from GPT2Model. Differences handled here:

- HF's Conv1D stores weights (in, out); tinygpt's Linear is (out, in), as PyTorch: transposed.
- ``h.{i}.attn.bias`` / ``attn.masked_bias`` are causal-mask buffers, not weights: ignored.
- ``lm_head.weight`` is tied to ``wte`` (absent from the file) unless ``tie_word_embeddings`` is false.

No network access: a hub name ('gpt2') must be downloaded first and given as a directory.
"""
from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

from ..backend import to_numpy
from ..checkpoint import CheckpointError, atomic_write
from .config import GPTConfig

CONFIG_NAME, WEIGHTS_NAME = "config.json", "model.safetensors"
# HF activation_function -> GPTConfig.gelu ('gelu_new', 'gelu_fast' and 'gelu_pytorch_tanh' are all
# the tanh approximation; 'gelu' is the exact erf form)
_ACTIVATIONS = {"gelu_new": "tanh", "gelu_pytorch_tanh": "tanh", "gelu_fast": "tanh", "gelu": "none"}
_CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
_BUFFERS = (".attn.bias", ".attn.masked_bias")  # the dot: c_attn.bias is a weight


# ----------------------------------------------------------------------------- config.json
def config_from_hf(hf: dict, **overrides) -> GPTConfig:
    """GPTConfig from a GPT-2 config.json dict; settings tinygpt cannot reproduce raise ValueError.

    dropout is 0.0 unless overridden (HF's resid/embd/attn_pdrop are training settings)."""
    model_type = hf.get("model_type", "gpt2")
    if model_type != "gpt2":
        raise ValueError(f"config.json: model_type {model_type!r} is not supported (only 'gpt2')")
    act = hf.get("activation_function", "gelu_new")
    if act not in _ACTIVATIONS:
        raise ValueError(f"config.json: activation_function {act!r} is not supported "
                         f"(supported: {', '.join(_ACTIVATIONS)})")
    n_embd = hf.get("n_embd", 768)
    unsupported = {  # name: (value, the one tinygpt computes)
        "n_inner": (hf.get("n_inner"), (None, 4 * n_embd)),
        "scale_attn_weights": (hf.get("scale_attn_weights", True), (True,)),
        "scale_attn_by_inverse_layer_idx": (hf.get("scale_attn_by_inverse_layer_idx", False), (False,)),
        "add_cross_attention": (hf.get("add_cross_attention", False), (False,)),
    }
    for name, (value, allowed) in unsupported.items():
        if value not in allowed:
            raise ValueError(f"config.json: {name}={value!r} is not supported by tinygpt (needs one of {allowed})")
    n_positions = hf.get("n_positions", hf.get("n_ctx", 1024))
    if "n_ctx" in hf and hf["n_ctx"] != n_positions:
        raise ValueError(f"config.json: n_ctx {hf['n_ctx']} differs from n_positions {n_positions}")
    base = dict(vocab_size=hf.get("vocab_size", 50257), block_size=n_positions, n_layer=hf.get("n_layer", 12),
                n_head=hf.get("n_head", 12), n_embd=n_embd, dropout=0.0, bias=True, norm="pre",
                position="learned", tie_weights=bool(hf.get("tie_word_embeddings", True)), final_norm=True,
                sparse_pattern="dense", attention_window=None, gelu=_ACTIVATIONS[act],
                layer_norm_eps=float(hf.get("layer_norm_epsilon", 1e-5)))
    return GPTConfig(**{**base, **overrides})


def config_to_hf(cfg: GPTConfig) -> dict:
    """The GPT-2 config.json dict for `cfg`; ValueError for a model GPT-2 cannot express."""
    problems = []
    if cfg.norm != "pre" or not cfg.final_norm:
        problems.append(f"norm={cfg.norm!r}, final_norm={cfg.final_norm} (GPT-2: pre-norm with a final LayerNorm)")
    if cfg.position != "learned":
        problems.append(f"position={cfg.position!r} (GPT-2: 'learned')")
    if not cfg.bias:
        problems.append("bias=False (GPT-2 has biases)")
    if any(cfg.layer_window(i) is not None for i in range(cfg.n_layer)):
        problems.append(f"sparse_pattern={cfg.sparse_pattern!r} (GPT-2 attention is dense)")
    if problems:
        raise ValueError("save_pretrained: this model is not a GPT-2 and cannot be saved in its format: "
                         + "; ".join(problems))
    return {
        "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2",
        "vocab_size": cfg.vocab_size, "n_positions": cfg.block_size, "n_ctx": cfg.block_size,
        "n_embd": cfg.n_embd, "n_layer": cfg.n_layer, "n_head": cfg.n_head, "n_inner": None,
        "activation_function": "gelu_new" if cfg.gelu == "tanh" else "gelu",
        "layer_norm_epsilon": cfg.layer_norm_eps, "initializer_range": 0.02,
        "resid_pdrop": cfg.dropout, "embd_pdrop": cfg.dropout, "attn_pdrop": cfg.dropout,
        "scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False, "reorder_and_upcast_attn": False,
        "tie_word_embeddings": cfg.tie_weights, "use_cache": True,
    }


# ----------------------------------------------------------------------------- loading
def _files(path) -> tuple[str, str]:
    path = os.fspath(path)
    if not os.path.isdir(path):
        if os.path.exists(path):
            raise CheckpointError(f"from_pretrained: {path!r} is a file; give the directory that holds "
                                  f"{CONFIG_NAME} and {WEIGHTS_NAME}")
        raise CheckpointError(
            f"from_pretrained: {path!r} is not a local directory. tinygpt does not download (no network "
            f"access): fetch {CONFIG_NAME} and {WEIGHTS_NAME} of the model first, e.g. "
            f"`huggingface-cli download {path} {CONFIG_NAME} {WEIGHTS_NAME} --local-dir ./{os.path.basename(path)}`, "
            f"and pass that directory")
    files = os.path.join(path, CONFIG_NAME), os.path.join(path, WEIGHTS_NAME)
    for f in files:
        if not os.path.isfile(f):
            extra = " (only safetensors is read, not pytorch_model.bin)" if f.endswith(WEIGHTS_NAME) else ""
            raise CheckpointError(f"from_pretrained: {path!r} has no {os.path.basename(f)}{extra}")
    return files


def _read_config(config_path) -> dict:
    try:
        with open(config_path, encoding="utf-8") as f:
            hf = json.load(f)
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"from_pretrained: cannot read {config_path}: {exc}") from exc
    if not isinstance(hf, dict):
        raise CheckpointError(f"from_pretrained: {config_path} is not a JSON object")
    return hf


def _bf16_to_f32(raw: np.ndarray) -> np.ndarray:
    return (raw.astype(np.uint32) << 16).view(np.float32)


def read_safetensors(path) -> dict:
    """name -> numpy array for every tensor of a safetensors file (bfloat16 widened to float32)."""
    try:
        with safe_open(path, framework="np") as f:
            names = list(f.keys())
            out, bf16 = {}, []
            for name in names:
                try:
                    out[name] = f.get_tensor(name)
                except (TypeError, ValueError, SafetensorError) as exc:
                    if "bf16" not in str(exc).lower() and "bfloat16" not in str(exc).lower():
                        raise
                    bf16.append(name)
        if bf16:  # numpy has no bfloat16: read those tensors' raw bytes from the file
            with open(path, "rb") as fh:
                n = int.from_bytes(fh.read(8), "little")
                header = json.loads(fh.read(n))
                for name in bf16:
                    start, end = header[name]["data_offsets"]
                    fh.seek(8 + n + start)
                    raw = np.frombuffer(fh.read(end - start), dtype="<u2")
                    out[name] = _bf16_to_f32(raw).reshape(header[name]["shape"])
        return out
    except SafetensorError as exc:
        raise CheckpointError(f"from_pretrained: {path} is damaged or truncated ({exc})") from exc
    except Exception as exc:  # OSError, or anything else a damaged header can provoke
        raise CheckpointError(f"from_pretrained: cannot read {path} ({type(exc).__name__}: {exc})") from exc


def hf_to_state_dict(tensors: dict, cfg: GPTConfig) -> dict:
    """tinygpt state_dict (float32, (out, in) weights) from HF GPT-2 tensors; errors list every bad key."""
    C, V, T = cfg.n_embd, cfg.vocab_size, cfg.block_size
    expected = {"wte.weight": (V, C), "wpe.weight": (T, C), "ln_f.weight": (C,), "ln_f.bias": (C,)}
    for i in range(cfg.n_layer):
        for name, shape in {"ln_1": (C,), "ln_2": (C,), "attn.c_attn": (C, 3 * C), "attn.c_proj": (C, C),
                            "mlp.c_fc": (C, 4 * C), "mlp.c_proj": (4 * C, C)}.items():
            expected[f"h.{i}.{name}.weight"] = shape
            expected[f"h.{i}.{name}.bias"] = (shape[-1],)
    sd, seen, unexpected, problems = {}, set(), [], []
    for key, value in tensors.items():
        name = key[len("transformer."):] if key.startswith("transformer.") else key
        if name.endswith(_BUFFERS):
            continue
        if name == "lm_head.weight":
            if cfg.tie_weights:  # HF ties the head to wte on load whatever the file holds: so do we
                continue
            want = (V, C)
        elif name in expected:
            want = expected[name]
        else:
            unexpected.append(key)
            continue
        if name in seen:
            problems.append(f"{name} appears twice (with and without the 'transformer.' prefix)")
        seen.add(name)
        if tuple(value.shape) != want:
            problems.append(f"{key} has shape {tuple(value.shape)}, config.json implies {want}")
        elif value.dtype.kind != "f":
            problems.append(f"{key} has dtype {value.dtype}, expected a float type")
        else:
            value = value.astype(np.float32, copy=False)
            if name.endswith(_CONV1D):
                value = value.T  # Conv1D (in, out) -> Linear (out, in)
            sd[name if name == "lm_head.weight" else "transformer." + name] = np.ascontiguousarray(value)
    missing = [k for k in expected if k not in seen]
    if not cfg.tie_weights and "lm_head.weight" not in seen:
        missing.append("lm_head.weight (tie_word_embeddings is false)")
    if missing:
        problems.append(f"missing tensors: {missing}")
    if unexpected:
        problems.append(f"unexpected tensors: {unexpected}")
    if problems:
        raise CheckpointError("from_pretrained: the weights do not fit a GPT-2 of this config.json: "
                              + "; ".join(problems))
    return sd


def from_pretrained(cls, path, **overrides):
    """cls (GPT) built from the HF GPT-2 directory `path`; overrides go to GPTConfig (e.g. dropout=0.1)."""
    unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(GPTConfig)})
    if unknown:
        raise TypeError(f"from_pretrained: unknown GPTConfig fields {unknown}")
    config_path, weights_path = _files(path)
    hf = _read_config(config_path)
    try:
        cfg = config_from_hf(hf, **overrides)
    except (ValueError, TypeError) as exc:
        raise CheckpointError(f"from_pretrained: {config_path}: {exc}") from exc
    sd = hf_to_state_dict(read_safetensors(weights_path), cfg)
    model = cls(cfg)
    model.load_state_dict(sd, strict=True)
    return model


# ----------------------------------------------------------------------------- saving
def state_dict_to_hf(model, dtype=np.float32) -> dict:
    """HF GPT2LMHeadModel tensors ('transformer.' prefix, Conv1D (in, out) weights) from `model`."""
    out = {}
    for name, array in model.state_dict().items():
        a = to_numpy(array).astype(dtype)
        if name.endswith(_CONV1D):
            a = a.T  # Linear (out, in) -> Conv1D (in, out)
        out[name] = np.ascontiguousarray(a)
    return out


def save_pretrained(model, path, dtype=np.float32) -> None:
    """Write `path`/config.json and `path`/model.safetensors (each atomically) for transformers."""
    dtype = np.dtype(dtype)
    if dtype not in (np.float16, np.float32, np.float64):
        raise ValueError(f"save_pretrained: dtype must be float16, float32 or float64, got {dtype}")
    hf = config_to_hf(model.config)
    path = os.fspath(path)
    if os.path.exists(path) and not os.path.isdir(path):
        raise CheckpointError(f"save_pretrained: {path!r} exists and is not a directory")
    tensors = state_dict_to_hf(model, dtype)
    atomic_write(os.path.join(path, WEIGHTS_NAME),
                 lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"}))
    text = json.dumps(hf, indent=2) + "\n"

    def write_config(tmp):
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)

    atomic_write(os.path.join(path, CONFIG_NAME), write_config)
