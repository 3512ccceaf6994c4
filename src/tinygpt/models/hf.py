"""Hugging Face GPT-2 directories <-> GPT (and its tokenizer), without PyTorch.

A Hugging Face GPT-2 directory holds ``config.json`` and ``model.safetensors``, usually with
``generation_config.json`` and the tokenizer's files (``tokenizer.json`` and/or ``vocab.json`` +
``merges.txt``, ``tokenizer_config.json``). The tensor names are GPT-2's (the same as tinygpt's),
with a ``transformer.`` prefix when saved from GPT2LMHeadModel and without it from GPT2Model.
Differences handled here:

- HF's Conv1D stores weights (in, out); tinygpt's Linear is (out, in), as PyTorch: transposed.
- ``h.{i}.attn.bias`` / ``attn.masked_bias`` are causal-mask buffers, not weights: ignored.
- ``lm_head.weight`` is tied to ``wte`` (absent from the file) unless ``tie_word_embeddings`` is false.

Every config.json field GPT2Config defines is type-checked (an int is an int, a flag true or
false); the ones that change the function the model computes are read or refused. Sizes are
checked against the safetensors header (names, shapes, dtypes) before any weight is read or
any model allocated, so an absurd config.json fails at once.

No network access: a hub name ('gpt2') must be downloaded first and given as a directory.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import warnings

import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

from ..backend import to_numpy
from ..checkpoint import CheckpointError, atomic_write
from .config import GPTConfig

CONFIG_NAME, WEIGHTS_NAME, GENERATION_CONFIG_NAME = "config.json", "model.safetensors", "generation_config.json"
# HF activation_function -> GPTConfig.gelu ('gelu_new', 'gelu_fast' and 'gelu_pytorch_tanh' are all
# the tanh approximation; 'gelu' is the exact erf form)
_ACTIVATIONS = {"gelu_new": "tanh", "gelu_pytorch_tanh": "tanh", "gelu_fast": "tanh", "gelu": "none"}
_CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
_BUFFERS = (".attn.bias", ".attn.masked_bias")  # the dot: c_attn.bias is a weight
_DTYPES = {"F16": np.float16, "BF16": "bfloat16", "F32": np.float32, "F64": np.float64}
_SUMMARY_TYPES = ("last", "first", "mean", "cls_index", "attn")


# ----------------------------------------------------------------------------- strict JSON fields
def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _is_token_id(v) -> bool:
    return _is_int(v) and v >= 0


# kind -> (test, what a value of that kind is)
_KINDS = {
    "bool": (lambda v: isinstance(v, bool), "true or false"),
    "pos_int": (lambda v: _is_int(v) and v >= 1, "a positive integer"),
    "pos_int_or_null": (lambda v: v is None or (_is_int(v) and v >= 1), "a positive integer or null"),
    "prob": (lambda v: _is_number(v) and 0 <= v <= 1, "a number in [0, 1]"),
    "pos_number": (lambda v: _is_number(v) and v > 0, "a positive number"),
    "nonneg_number": (lambda v: _is_number(v) and v >= 0, "a number >= 0"),
    "str": (lambda v: isinstance(v, str), "a string"),
    "str_or_null": (lambda v: v is None or isinstance(v, str), "a string or null"),
    "strs_or_null": (lambda v: v is None or (isinstance(v, list) and all(isinstance(x, str) for x in v)),
                     "a list of strings or null"),
    "dict_or_null": (lambda v: v is None or isinstance(v, dict), "an object or null"),
    "id_or_null": (lambda v: v is None or _is_token_id(v), "a token id (an integer >= 0) or null"),
    "ids_or_null": (lambda v: v is None or _is_token_id(v) or (isinstance(v, list) and v and all(map(_is_token_id, v))),
                    "a token id, a list of token ids, or null"),
}

# config.json: every field of transformers' GPT2Config (and PretrainedConfig's that matter) -> (kind, default)
CONFIG_FIELDS = {
    "model_type": ("str", "gpt2"), "architectures": ("strs_or_null", None),
    "vocab_size": ("pos_int", 50257), "n_positions": ("pos_int", 1024), "n_ctx": ("pos_int", None),
    "n_embd": ("pos_int", 768), "n_layer": ("pos_int", 12), "n_head": ("pos_int", 12),
    "n_inner": ("pos_int_or_null", None), "activation_function": ("str", "gelu_new"),
    "resid_pdrop": ("prob", 0.1), "embd_pdrop": ("prob", 0.1), "attn_pdrop": ("prob", 0.1),
    "layer_norm_epsilon": ("pos_number", 1e-5), "initializer_range": ("nonneg_number", 0.02),
    "summary_type": ("str", "cls_index"), "summary_use_proj": ("bool", True),
    "summary_activation": ("str_or_null", None), "summary_proj_to_labels": ("bool", True),
    "summary_first_dropout": ("prob", 0.1), "scale_attn_weights": ("bool", True), "use_cache": ("bool", True),
    "bos_token_id": ("id_or_null", 50256), "eos_token_id": ("ids_or_null", 50256), "pad_token_id": ("id_or_null", None),
    "scale_attn_by_inverse_layer_idx": ("bool", False), "reorder_and_upcast_attn": ("bool", False),
    "add_cross_attention": ("bool", False), "tie_word_embeddings": ("bool", True),
    "dtype": ("str_or_null", None), "torch_dtype": ("str_or_null", None), "task_specific_params": ("dict_or_null", None),
}

# generation_config.json fields -> kind; the ones GPT.generate can follow are mapped in _generate_kwargs
GENERATION_FIELDS = {
    "bos_token_id": "id_or_null", "eos_token_id": "ids_or_null", "pad_token_id": "id_or_null",
    "do_sample": "bool", "temperature": "nonneg_number", "top_k": "pos_int_or_null", "top_p": "prob",
    "repetition_penalty": "pos_number", "max_new_tokens": "pos_int_or_null", "max_length": "pos_int_or_null",
    "num_beams": "pos_int", "num_return_sequences": "pos_int", "use_cache": "bool",
}
# generation settings GPT.generate has no equivalent for: value that means "off" (anything else: a warning)
_GENERATION_OFF = {"num_beams": 1, "num_beam_groups": 1, "penalty_alpha": None, "no_repeat_ngram_size": 0,
                   "min_length": 0, "min_new_tokens": None, "typical_p": 1.0, "epsilon_cutoff": 0.0,
                   "eta_cutoff": 0.0, "diversity_penalty": 0.0, "bad_words_ids": None, "force_words_ids": None,
                   "forced_bos_token_id": None, "forced_eos_token_id": None, "suppress_tokens": None,
                   "begin_suppress_tokens": None, "encoder_repetition_penalty": 1.0, "exponential_decay_length_penalty": None,
                   "max_length": None, "min_p": None, "constraints": None, "sequence_bias": None,
                   "guidance_scale": None, "watermarking_config": None, "max_time": None, "stop_strings": None}


def _check_fields(doc: dict, kinds: dict, where: str) -> None:
    for name, kind in kinds.items():
        if name in doc:
            ok, what = _KINDS[kind]
            if not ok(doc[name]):
                raise ValueError(f"{where}: {name} must be {what}, got {doc[name]!r} ({type(doc[name]).__name__})")


# ----------------------------------------------------------------------------- config.json
def config_from_hf(hf: dict, **overrides) -> GPTConfig:
    """GPTConfig from a GPT-2 config.json dict; wrong types and settings tinygpt cannot reproduce
    raise ValueError. dropout is 0.0 unless overridden (HF's resid/embd/attn_pdrop are training
    settings of the original run)."""
    if not isinstance(hf, dict):
        raise ValueError(f"config.json must be a JSON object, got {type(hf).__name__}")
    _check_fields(hf, {k: kind for k, (kind, _) in CONFIG_FIELDS.items()}, "config.json")
    c = {k: hf.get(k, default) for k, (_, default) in CONFIG_FIELDS.items()}
    if c["model_type"] != "gpt2":
        raise ValueError(f"config.json: model_type {c['model_type']!r} is not supported (only 'gpt2')")
    if c["activation_function"] not in _ACTIVATIONS:
        raise ValueError(f"config.json: activation_function {c['activation_function']!r} is not supported "
                         f"(supported: {', '.join(_ACTIVATIONS)})")
    if c["summary_type"] not in _SUMMARY_TYPES:
        raise ValueError(f"config.json: summary_type must be one of {_SUMMARY_TYPES}, got {c['summary_type']!r}")
    unsupported = {  # name: the values tinygpt computes
        "n_inner": (None, 4 * c["n_embd"]),
        "scale_attn_weights": (True,),  # tinygpt's attention always scales by 1/sqrt(head size)
        "scale_attn_by_inverse_layer_idx": (False,),  # and never by 1/(layer + 1)
        "add_cross_attention": (False,),
    }
    for name, allowed in unsupported.items():
        if c[name] not in allowed:
            raise ValueError(f"config.json: {name}={c[name]!r} is not supported by tinygpt (needs one of {allowed})")
    # reorder_and_upcast_attn only changes how float16 attention is computed; tinygpt computes it
    # in float32 (or float64), the same function: accepted.
    n_positions = hf.get("n_positions", hf.get("n_ctx", 1024))
    if "n_ctx" in hf and hf["n_ctx"] != n_positions:
        raise ValueError(f"config.json: n_ctx {hf['n_ctx']} differs from n_positions {n_positions}")
    base = dict(vocab_size=c["vocab_size"], block_size=n_positions, n_layer=c["n_layer"], n_head=c["n_head"],
                n_embd=c["n_embd"], dropout=0.0, bias=True, norm="pre", position="learned",
                tie_weights=c["tie_word_embeddings"], final_norm=True, sparse_pattern="dense", attention_window=None,
                gelu=_ACTIVATIONS[c["activation_function"]], layer_norm_eps=float(c["layer_norm_epsilon"]))
    return GPTConfig(**{**base, **overrides})


def config_to_hf(cfg: GPTConfig, tie_word_embeddings: bool | None = None, bos_token_id=None, eos_token_id=None) -> dict:
    """The GPT-2 config.json dict for `cfg` (GPT2Config's fields); ValueError for a model GPT-2 cannot express."""
    problems = []
    if cfg.norm != "pre" or not cfg.final_norm:
        problems.append(f"norm={cfg.norm!r}, final_norm={cfg.final_norm} (GPT-2: pre-norm with a final LayerNorm)")
    if cfg.position != "learned":
        problems.append(f"position={cfg.position!r} (GPT-2: 'learned')")
    if not cfg.bias:
        problems.append("bias=False (GPT-2 has biases)")
    if any(cfg.layer_window(i) is not None for i in range(cfg.n_layer)):
        problems.append(f"sparse_pattern={cfg.sparse_pattern!r} (GPT-2 attention is dense)")
    if any(cfg.layer_moe(i) for i in range(cfg.n_layer)):
        problems.append(f"n_expert={cfg.n_expert} (mixture-of-experts layers; GPT-2 has one dense MLP per block)")
    if problems:
        raise ValueError("save_pretrained: this model is not a GPT-2 and cannot be saved in its format: "
                         + "; ".join(problems) + ". Save it with tinygpt.checkpoint.save_checkpoint instead")
    tie = cfg.tie_weights if tie_word_embeddings is None else tie_word_embeddings
    return {
        "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2",
        "vocab_size": cfg.vocab_size, "n_positions": cfg.block_size, "n_ctx": cfg.block_size,
        "n_embd": cfg.n_embd, "n_layer": cfg.n_layer, "n_head": cfg.n_head, "n_inner": None,
        "activation_function": "gelu_new" if cfg.gelu == "tanh" else "gelu",
        "layer_norm_epsilon": cfg.layer_norm_eps, "initializer_range": 0.02,
        "resid_pdrop": cfg.dropout, "embd_pdrop": cfg.dropout, "attn_pdrop": cfg.dropout,
        "summary_type": "cls_index", "summary_use_proj": True, "summary_activation": None,
        "summary_proj_to_labels": True, "summary_first_dropout": 0.1,
        "scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False, "reorder_and_upcast_attn": False,
        "add_cross_attention": False, "tie_word_embeddings": tie, "use_cache": True,
        "bos_token_id": bos_token_id, "eos_token_id": eos_token_id, "pad_token_id": None,
    }


# ----------------------------------------------------------------------------- generation_config.json
def generation_kwargs(gen: dict, config: dict, where: str) -> dict:
    """GPT.generate keyword arguments from a generation_config.json dict (`gen`, may be empty)
    and config.json (`config`: its eos_token_id when `gen` has none). Settings generate cannot
    follow (beam search, ...) give a warning that names them."""
    if not isinstance(gen, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(gen).__name__}")
    _check_fields(gen, GENERATION_FIELDS, where)
    out = {}
    eos = gen.get("eos_token_id", config.get("eos_token_id", 50256))
    if isinstance(eos, list):
        if len(eos) > 1:
            warnings.warn(f"{where}: eos_token_id lists {eos}; tinygpt's generate stops at one token: using {eos[0]}",
                          stacklevel=3)
        eos = eos[0]
    vocab_size = config.get("vocab_size", 50257)
    if eos is not None and eos < vocab_size:  # an id past the vocabulary can never be generated
        out["eos_token_id"] = eos
    if gen.get("do_sample") is False:
        out["temperature"] = 0.0  # greedy
    elif gen.get("do_sample") is True:
        for name in ("temperature", "top_k", "top_p"):
            if gen.get(name) is not None:
                out[name] = gen[name]
    for name in ("repetition_penalty", "max_new_tokens", "num_return_sequences"):
        if gen.get(name) is not None:
            out[name] = gen[name]
    ignored = sorted(k for k, off in _GENERATION_OFF.items() if k in gen and gen[k] != off)
    if ignored:
        warnings.warn(f"{where}: tinygpt's generate has no equivalent of {', '.join(f'{k}={gen[k]!r}' for k in ignored)}; "
                      f"model.generation_config holds only what it follows", stacklevel=3)
    return out


def generation_config_to_hf(kwargs: dict, bos_token_id=None, eos_token_id=None) -> dict:
    """generation_config.json for GPT.generate keyword arguments (the inverse of generation_kwargs)."""
    out = {"bos_token_id": bos_token_id, "eos_token_id": kwargs.get("eos_token_id", eos_token_id)}
    if "temperature" in kwargs:
        if kwargs["temperature"] == 0:
            out["do_sample"] = False
        else:
            out.update(do_sample=True, temperature=kwargs["temperature"])
    for name in ("top_k", "top_p", "repetition_penalty", "max_new_tokens", "num_return_sequences"):
        if kwargs.get(name) is not None:
            out[name] = kwargs[name]
    return out


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


def _read_json(path, what="from_pretrained") -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{what}: cannot read {path}: {exc}") from exc
    if not isinstance(doc, dict):
        raise CheckpointError(f"{what}: {path} is not a JSON object")
    return doc


def _bf16_to_f32(raw: np.ndarray) -> np.ndarray:
    return (raw.astype(np.uint32) << 16).view(np.float32)


def read_safetensors_header(path) -> dict:
    """name -> (shape, safetensors dtype string) of every tensor, without reading the data."""
    try:
        with safe_open(path, framework="np") as f:
            return {name: (tuple(f.get_slice(name).get_shape()), f.get_slice(name).get_dtype()) for name in f.keys()}
    except SafetensorError as exc:
        raise CheckpointError(f"from_pretrained: {path} is damaged or truncated ({exc})") from exc
    except Exception as exc:  # OSError, or anything else a damaged header can provoke
        raise CheckpointError(f"from_pretrained: cannot read {path} ({type(exc).__name__}: {exc})") from exc


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


_LAYER = re.compile(r"h\.(\d+)\.(.+)")


def _layer_shapes(C: int) -> dict:
    shapes = {}
    for name, shape in {"ln_1": (C,), "ln_2": (C,), "attn.c_attn": (C, 3 * C), "attn.c_proj": (C, C),
                        "mlp.c_fc": (C, 4 * C), "mlp.c_proj": (4 * C, C)}.items():
        shapes[f"{name}.weight"], shapes[f"{name}.bias"] = shape, (shape[-1],)
    return shapes


def _ranges(indices) -> str:
    """'0..11' or '0..3, 7' for sorted ints."""
    out, start, prev = [], None, None
    for i in sorted(indices):
        if start is None:
            start = prev = i
        elif i == prev + 1:
            prev = i
        else:
            out.append(f"{start}..{prev}" if prev > start else str(start))
            start = prev = i
    if start is not None:
        out.append(f"{start}..{prev}" if prev > start else str(start))
    return ", ".join(out) or "none"


def check_tensors(header: dict, cfg: GPTConfig) -> None:
    """Check every tensor of the file (name -> (shape, dtype)) against `cfg` before anything is
    read or allocated; the work is bounded by the file, not by the config's sizes. Raises
    CheckpointError listing every problem."""
    C, V, T = cfg.n_embd, cfg.vocab_size, cfg.block_size
    top = {"wte.weight": (V, C), "wpe.weight": (T, C), "ln_f.weight": (C,), "ln_f.bias": (C,)}
    per_layer = _layer_shapes(C)
    seen, layers, unexpected, problems = set(), {}, [], []
    for key, (shape, dtype) in header.items():
        name = key[len("transformer."):] if key.startswith("transformer.") else key
        if name.endswith(_BUFFERS):
            continue
        m = _LAYER.fullmatch(name)
        if name == "lm_head.weight":
            if cfg.tie_weights:  # HF ties the head to wte on load whatever the file holds: so do we
                continue
            want = (V, C)
        elif name in top:
            want = top[name]
        elif m and m.group(2) in per_layer and not (len(m.group(1)) > 1 and m.group(1).startswith("0")):
            want = per_layer[m.group(2)]
            layers.setdefault(int(m.group(1)), set()).add(m.group(2))
        else:
            unexpected.append(key)
            continue
        if name in seen:
            problems.append(f"{name} appears twice (with and without the 'transformer.' prefix)")
        seen.add(name)
        if shape != want:
            problems.append(f"{key} has shape {shape}, config.json implies {want}")
        if dtype not in _DTYPES:
            problems.append(f"{key} has dtype {dtype}, expected a float type ({', '.join(_DTYPES)})")
    if len(layers) != cfg.n_layer or any(i >= cfg.n_layer for i in layers):  # never range(n_layer): it may be 10**9
        problems.append(f"config.json has n_layer={cfg.n_layer}, the weights hold layers {_ranges(layers)}")
    missing = [k for k in top if k not in seen]
    for i in sorted(layers):
        missing += [f"h.{i}.{k}" for k in per_layer if k not in layers[i]]
    if not cfg.tie_weights and "lm_head.weight" not in seen:
        missing.append("lm_head.weight (tie_word_embeddings is false)")
    if missing:
        problems.append(f"missing tensors: {missing}")
    if unexpected:
        problems.append(f"unexpected tensors: {unexpected}")
    if problems:
        raise CheckpointError("from_pretrained: the weights do not fit a GPT-2 of this config.json: "
                              + "; ".join(problems))


def hf_to_state_dict(tensors: dict, cfg: GPTConfig) -> dict:
    """tinygpt state_dict (float32, (out, in) weights) from HF GPT-2 tensors (checked first)."""
    check_tensors({k: (tuple(v.shape), "F32" if v.dtype.kind == "f" else str(v.dtype)) for k, v in tensors.items()}, cfg)
    sd = {}
    for key, value in tensors.items():
        name = key[len("transformer."):] if key.startswith("transformer.") else key
        if name.endswith(_BUFFERS) or (name == "lm_head.weight" and cfg.tie_weights):
            continue
        value = value.astype(np.float32, copy=False)
        if name.endswith(_CONV1D):
            value = value.T  # Conv1D (in, out) -> Linear (out, in)
        sd[name if name == "lm_head.weight" else "transformer." + name] = np.ascontiguousarray(value)
    return sd


def from_pretrained(cls, path, with_tokenizer: bool = False, **overrides):
    """cls (GPT) built from the HF GPT-2 directory `path`; overrides go to GPTConfig (e.g. dropout=0.1).

    The model's `generation_config` holds the GPT.generate keyword arguments the directory's
    generation_config.json asks for (its eos_token_id at least). with_tokenizer=True: returns
    (model, tokenizer), the tokenizer read from the same directory (ByteLevelBPE.load)."""
    if not isinstance(with_tokenizer, bool):
        raise TypeError(f"from_pretrained: with_tokenizer must be True or False, got {with_tokenizer!r}")
    unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(GPTConfig)})
    if unknown:
        raise TypeError(f"from_pretrained: unknown GPTConfig fields {unknown}")
    config_path, weights_path = _files(path)
    hf = _read_json(config_path)
    try:
        cfg = config_from_hf(hf, **overrides)
    except (ValueError, TypeError) as exc:
        raise CheckpointError(f"from_pretrained: {config_path}: {exc}") from exc
    gen_path = os.path.join(os.fspath(path), GENERATION_CONFIG_NAME)
    gen = _read_json(gen_path) if os.path.isfile(gen_path) else {}
    try:
        generation = generation_kwargs(gen, hf, gen_path if gen else config_path)
    except ValueError as exc:
        raise CheckpointError(f"from_pretrained: {exc}") from exc
    tokenizer = None
    if with_tokenizer:  # before the weights: a missing or unsupported tokenizer fails fast
        from ..tokenizers import ByteLevelBPE  # noqa: PLC0415

        try:
            tokenizer = ByteLevelBPE.load(path)
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"from_pretrained(with_tokenizer=True): {exc}") from exc
        if tokenizer.vocab_size > cfg.vocab_size:
            raise CheckpointError(f"from_pretrained: the tokenizer has {tokenizer.vocab_size} tokens, more than "
                                  f"the model's vocab_size {cfg.vocab_size}")
    check_tensors(read_safetensors_header(weights_path), cfg)  # before reading or allocating anything
    sd = hf_to_state_dict(read_safetensors(weights_path), cfg)
    model = cls(cfg)
    model.load_state_dict(sd, strict=True)
    model.generation_config = generation
    return (model, tokenizer) if with_tokenizer else model


# ----------------------------------------------------------------------------- saving
def _effective(module, name: str):
    """(weight, bias) as float arrays that compute what `module` computes: a quantized layer's
    dequantized weight, a LoRA layer's weight with its adapters merged in."""
    from ..lora import LoRALinear  # noqa: PLC0415 - lora imports the model stack
    from ..nn import Embedding, LayerNorm, Linear  # noqa: PLC0415
    from ..quantize import QuantizedEmbedding, QuantizedLinear  # noqa: PLC0415

    bias = getattr(module, "bias", None)
    bias = None if bias is None else to_numpy(getattr(bias, "data", bias))
    if isinstance(module, LoRALinear):  # W + scale * B @ A: what the adapted layer computes
        return to_numpy(module.weight.data + module.delta_weight()), bias
    if isinstance(module, (QuantizedLinear, QuantizedEmbedding)):  # q * scale: what the int8/int4 layer computes
        return to_numpy(module.weight.data), bias
    if isinstance(module, (Linear, Embedding, LayerNorm)):
        return to_numpy(module.weight.data), bias
    raise ValueError(f"save_pretrained: {name} is a {type(module).__name__}, which has no place in GPT-2's format")


def state_dict_to_hf(model, dtype=np.float32) -> tuple[dict, bool]:
    """(HF GPT2LMHeadModel tensors, tied head?) from `model`: 'transformer.' prefix, Conv1D (in, out)
    weights; quantized layers dequantized and LoRA adapters merged (the model is not changed).
    The head is written tied only when it equals wte; any tensor GPT-2 has no place for is an error."""
    modules = dict(model.named_modules())
    out, used = {}, []

    def put(path, hf_name, linear=False):
        if path not in modules:
            raise ValueError(f"save_pretrained: the model has no {path}, which GPT-2 needs")
        weight, bias = _effective(modules[path], path)
        used.append(path)
        out[hf_name + ".weight"] = weight.T if linear else weight  # Linear (out, in) -> Conv1D (in, out)
        if bias is not None:
            out[hf_name + ".bias"] = bias

    put("transformer.wte", "transformer.wte")
    put("transformer.wpe", "transformer.wpe")
    for i in range(model.config.n_layer):
        p = f"transformer.h.{i}."
        for sub in ("ln_1", "ln_2"):
            put(p + sub, p + sub)
        for sub in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"):
            put(p + sub, p + sub, linear=True)
    put("transformer.ln_f", "transformer.ln_f")
    put("lm_head", "lm_head")
    head = out.pop("lm_head.weight")
    out.pop("lm_head.bias", None)
    if getattr(modules["lm_head"], "bias", None) is not None:
        raise ValueError("save_pretrained: the LM head has a bias, which GPT-2's has not")
    tied = model.config.tie_weights and np.array_equal(head, out["transformer.wte.weight"])
    if not tied:
        out["lm_head.weight"] = head
    stray = [k for k in model.state_dict() if not any(k.startswith(p + ".") for p in used)]
    if stray:
        raise ValueError(f"save_pretrained: the model holds tensors GPT-2's format has no place for: {stray}")
    return {k: np.ascontiguousarray(v.astype(dtype)) for k, v in out.items()}, tied


def _write_text(path, text: str) -> None:
    def write(tmp):
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)

    atomic_write(path, write)


def save_pretrained(model, path, dtype=np.float32, tokenizer=None) -> None:
    """Write `path`/config.json, generation_config.json and model.safetensors (each atomically)
    for transformers' GPT2LMHeadModel, and with a tokenizer (ByteLevelBPE) its files too, so
    AutoTokenizer loads the same directory. A quantized model is written dequantized, LoRA
    adapters merged; a model that is not a GPT-2 (MoE, sparse attention, ...) is an error."""
    dtype = np.dtype(dtype)
    if dtype not in (np.float16, np.float32, np.float64):
        raise ValueError(f"save_pretrained: dtype must be float16, float32 or float64, got {dtype}")
    if tokenizer is not None:
        from ..tokenizers import ByteLevelBPE  # noqa: PLC0415

        if not isinstance(tokenizer, ByteLevelBPE):
            raise ValueError(f"save_pretrained: the tokenizer must be a ByteLevelBPE (GPT-2's kind; Hugging Face "
                             f"has no form for a {type(tokenizer).__name__}); save that one with its own save()")
        if tokenizer.vocab_size > model.config.vocab_size:
            raise ValueError(f"save_pretrained: the tokenizer has {tokenizer.vocab_size} tokens, more than the "
                             f"model's vocab_size {model.config.vocab_size}")
    config_to_hf(model.config)  # not a GPT-2: fail before anything is written
    path = os.fspath(path)
    if os.path.exists(path) and not os.path.isdir(path):
        raise CheckpointError(f"save_pretrained: {path!r} exists and is not a directory")
    tensors, tied = state_dict_to_hf(model, dtype)
    generation = dict(getattr(model, "generation_config", None) or {})
    if tokenizer is not None:
        bos = tokenizer.special_tokens.get(tokenizer.roles.get("bos_token"))
        eos = tokenizer.eos_token_id
        generation["eos_token_id"] = eos
        if eos is None:
            generation.pop("eos_token_id")
    else:
        bos = eos = generation.get("eos_token_id")  # GPT-2's convention: one <|endoftext|> for both
    hf = config_to_hf(model.config, tie_word_embeddings=tied, bos_token_id=bos, eos_token_id=eos)
    os.makedirs(path, exist_ok=True)
    atomic_write(os.path.join(path, WEIGHTS_NAME),
                 lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"}))
    _write_text(os.path.join(path, CONFIG_NAME), json.dumps(hf, indent=2) + "\n")
    _write_text(os.path.join(path, GENERATION_CONFIG_NAME),
                json.dumps(generation_config_to_hf(generation, bos, eos), indent=2) + "\n")
    if tokenizer is not None:
        tokenizer.save(path, model_max_length=model.config.block_size)
