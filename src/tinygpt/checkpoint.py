"""Checkpoints as one safetensors file: arrays as tensors, everything else as JSON metadata.

Layout::

    model/<name>          model weights (dtypes as they are: float, or int8 / packed-int4 uint8
                          tables plus float32 scales for a quantized model)
    optim/<index>/<key>   optimiser state arrays (exp_avg, exp_avg_sq, momentum_buffer, ...)
    __metadata__          JSON strings: format, format_version, step, config, tokenizer,
                          optimizer (class, param_groups, scalar per-parameter state),
                          rng (tinygpt.random), sampler, extra, quantization (None, or
                          {'bits', 'group_size', 'embeddings'}) and two sha256 digests
                          (metadata; tensor names, dtypes, shapes and bytes)

No pickle anywhere. Writes are atomic: a crash leaves the previous file as it was. A process
killed in the middle of a write leaves its temp file behind; the next save or load in that
directory removes it (see `remove_stale_temp_files`).

Loading validates everything it is about to restore (the model's names, shapes and dtypes;
the optimiser's class, groups, hyperparameters and state; the RNG; the sampler) before it
changes anything, so a checkpoint that does not fit raises `CheckpointError` and leaves every
object as it was. `model_config` and `load_model` check a checkpoint's config against the
tensors in the file before a model is allocated.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import numbers
import os
import re
import secrets
import stat

import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

from . import backend
from . import random as tg_random

try:  # POSIX: writers hold a shared lock on the directory, so cleanup can tell live temp files from abandoned ones
    import fcntl
except ImportError:  # pragma: no cover - no flock (Windows): temp files are never removed automatically
    fcntl = None

FORMAT = "tinygpt"
FORMAT_VERSION = 1
_JSON_KEYS = ("step", "config", "tokenizer", "optimizer", "rng", "sampler", "extra")
_OPTIONAL_JSON_KEYS = ("quantization",)  # absent from files written before quantized checkpoints: None
_PUBLIC_KEYS = ("step", "config", "tokenizer", "extra", "sampler", "quantization", "format_version")
MAX_STEP = 2 ** 62  # steps are int64 in the kernels
# the temp files atomic_write creates: .<name>.<8 hex>.tmp (nothing else is ever removed)
_TMP_NAME = re.compile(r"^\..+\.[0-9a-f]{8}\.tmp$")
# per-parameter optimiser state: key -> kind ('count': int >= 0; 'array': finite float array of the
# parameter's shape; 'nonneg_array': the same, >= 0). Other optimisers get the generic checks.
_OPTIM_STATE = {"AdamW": {"step": "count", "exp_avg": "array", "exp_avg_sq": "nonneg_array"},
                "SGD": {"momentum_buffer": "array"}}
_MAX_SINUSOIDAL = 2 ** 28  # block_size * n_embd of a position table not stored in the file (1 GiB float32)


class CheckpointError(ValueError):
    """A checkpoint is missing, damaged, not a tinygpt checkpoint, or does not fit the model."""


# ----------------------------------------------------------------------------- atomic writes
def _lock_directory(directory, exclusive: bool):
    """An open descriptor of `directory` holding a flock (shared: blocking; exclusive: non-blocking), or
    None where that is not possible (no flock, a file system without locks, or -- exclusive -- a writer
    holding the shared lock). Closing the descriptor releases the lock; so does the death of the process."""
    if fcntl is None:
        return None
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB if exclusive else fcntl.LOCK_SH)
    except OSError:
        os.close(fd)
        return None
    return fd


def remove_stale_temp_files(directory) -> list:
    """Remove the temp files that `atomic_write` left in `directory` when its process died (kill -9).

    Every atomic_write holds a shared flock on its directory from before it creates its temp file
    until after the rename, so when this call gets the exclusive lock no write is in progress there
    and every temp file is abandoned. Only regular files named ``.<name>.<8 hex digits>.tmp`` (what
    atomic_write creates) are removed. Where the lock cannot be had (a write in progress, no flock on
    this system or file system) nothing is removed. Returns the paths removed.
    """
    removed = []
    fd = _lock_directory(directory, exclusive=True)
    if fd is None:
        return removed
    try:
        for name in os.listdir(directory):
            path = os.path.join(directory, name)
            try:
                if _TMP_NAME.match(name) and stat.S_ISREG(os.lstat(path).st_mode):  # no links, dirs, devices
                    os.remove(path)
                    removed.append(path)
            except OSError:
                continue
    finally:
        os.close(fd)
    return removed


def atomic_write(path, write) -> None:
    """Create `path` (and its directory) via ``write(tmp_path)`` on a temp file beside it.

    The temp file is fsynced, renamed over `path` (os.replace), and the directory fsynced;
    if `write` raises, the temp file is removed and `path` is untouched. Temp files that killed
    writers left in the directory are removed first; while writing, a shared lock on the
    directory marks the write as in progress (see remove_stale_temp_files).
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    remove_stale_temp_files(directory)
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{secrets.token_hex(4)}.tmp")
    lock = _lock_directory(directory, exclusive=False)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    finally:
        if lock is not None:
            os.close(lock)
    try:  # make the rename itself durable (not possible on every OS)
        dfd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


# ----------------------------------------------------------------------------- saving
def _json(value, what: str) -> str:
    def default(o):
        if isinstance(o, np.generic):
            return o.item()
        raise TypeError(f"{type(o).__name__} is not JSON-serialisable")

    try:
        return json.dumps(value, default=default, sort_keys=False)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"save_checkpoint: {what} must be JSON-serialisable ({exc})") from exc


def _is_array(v) -> bool:
    return hasattr(v, "shape") and hasattr(v, "dtype") and not isinstance(v, np.generic)


def _meta_digest(metadata: dict) -> str:
    h = hashlib.sha256()
    for key in sorted(metadata):
        if not key.endswith("sha256"):
            h.update(json.dumps([key, metadata[key]]).encode())
    return h.hexdigest()


def _data_digest(tensors: dict) -> str:
    h = hashlib.sha256()
    for name in sorted(tensors):
        a = np.ascontiguousarray(tensors[name])
        h.update(json.dumps([name, a.dtype.str, list(a.shape)]).encode())
        h.update(a.reshape(-1).view(np.uint8))
    return h.hexdigest()


def save_checkpoint(path, model, optimizer=None, *, step=0, config=None, tokenizer=None,
                    sampler=None, extra=None) -> None:
    """Write a checkpoint atomically.

    Parameters
    ----------
    path : str or PathLike
    model : Module (its ``state_dict()``); a quantized model (`tinygpt.quantize`) is stored
        as its int8 / packed int4 tables and scales, and recorded as quantized
    optimizer : Optimizer, optional
    step : int
        The training step to resume from.
    config : dataclass or dict, optional
        Stored as a dict (``dataclasses.asdict``), so tuples come back as lists.
    tokenizer : object with ``to_dict()``, or dict, optional
    sampler : object with ``state_dict()`` (e.g. BatchSampler), optional
    extra : JSON-serialisable dict, optional
        Anything else (best val loss, wall time, ...).

    The global RNG state (`tinygpt.random`) is always stored.
    """
    from .quantize import quantization_info  # noqa: PLC0415 - quantize imports the nn layers

    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        config = dataclasses.asdict(config)
    if tokenizer is not None and not isinstance(tokenizer, dict):
        tokenizer = tokenizer.to_dict()
    if isinstance(step, bool) or not isinstance(step, numbers.Integral) or not 0 <= step < MAX_STEP:
        raise ValueError(f"save_checkpoint: step must be an int in [0, 2**62), got {step!r}")
    quantization = quantization_info(model) if hasattr(model, "modules") else None  # any state_dict holder works
    if quantization is not None and optimizer is not None:
        raise ValueError("save_checkpoint: a quantized model is inference-only; it has no optimiser state to save")
    tensors = {f"model/{k}": np.ascontiguousarray(backend.to_numpy(v)) for k, v in model.state_dict().items()}
    optim_meta = None
    if optimizer is not None:
        sd = optimizer.state_dict()
        scalars = {}
        for index, entry in sd["state"].items():
            scalars[str(index)] = {}
            for key, v in entry.items():
                if _is_array(v):
                    tensors[f"optim/{index}/{key}"] = np.ascontiguousarray(backend.to_numpy(v))
                else:
                    scalars[str(index)][key] = v
        optim_meta = {"class": type(optimizer).__name__, "param_groups": sd["param_groups"], "state": scalars}
    pieces = {"step": int(step), "config": config, "tokenizer": tokenizer, "optimizer": optim_meta,
              "rng": tg_random.get_rng_state(),
              "sampler": sampler.state_dict() if sampler is not None else None, "extra": extra,
              "quantization": quantization}
    metadata = {"format": FORMAT, "format_version": str(FORMAT_VERSION)}
    metadata.update({k: _json(v, k) for k, v in pieces.items()})
    metadata["meta_sha256"] = _meta_digest(metadata)
    metadata["data_sha256"] = _data_digest(tensors)
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))


# ----------------------------------------------------------------------------- reading
def _is_int(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_real(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)


def _check_rng_state(state) -> None:
    """ValueError unless `state` is a PCG64 state that numpy accepts (tried on a throwaway generator)."""
    if not isinstance(state, dict) or state.get("bit_generator") != "PCG64":
        raise ValueError("expected a PCG64 state dict ({'bit_generator': 'PCG64', 'state': ..., ...})")
    try:
        np.random.PCG64().state = state
    except (TypeError, ValueError, KeyError, OverflowError) as exc:
        raise ValueError(f"numpy rejects it ({type(exc).__name__}: {exc})") from None


def _check_pieces(path, meta: dict) -> None:
    """The JSON pieces have the types a checkpoint writes (checked before anything uses them)."""
    def bad(what, why):
        raise CheckpointError(f"checkpoint {path}: {what} in the metadata {why}")

    step = meta["step"]
    if not _is_int(step) or not 0 <= step < MAX_STEP:
        bad("step", f"must be an int in [0, 2**62), got {step!r}")
    for key in ("config", "tokenizer", "sampler", "extra"):
        if meta[key] is not None and not isinstance(meta[key], dict):
            bad(key, f"must be a JSON object or null, got {type(meta[key]).__name__}")
    if meta["rng"] is not None:
        try:
            _check_rng_state(meta["rng"])
        except ValueError as exc:
            bad("the RNG state", f"is not valid: {exc}")
    opt = meta["optimizer"]
    if opt is not None:
        if not isinstance(opt, dict) or not isinstance(opt.get("class"), str) \
                or not isinstance(opt.get("param_groups"), list) or not isinstance(opt.get("state"), dict):
            bad("optimizer", "must be {'class': str, 'param_groups': list, 'state': dict}")
        for i, group in enumerate(opt["param_groups"]):
            if not isinstance(group, dict) or not isinstance(group.get("params"), list) \
                    or not all(_is_int(p) and p >= 0 for p in group["params"]):
                bad(f"optimizer param_groups[{i}]", "must be a dict with 'params': a list of ints >= 0")
        for index, entry in opt["state"].items():
            if not re.fullmatch(r"0|[1-9][0-9]{0,8}", index) or not isinstance(entry, dict):
                bad(f"optimizer state {index!r}", "must map a parameter index to a dict")
    q = meta["quantization"]
    if q is not None:
        if not isinstance(q, dict) or q.get("bits") not in (8, 4) or isinstance(q.get("bits"), bool) \
                or not isinstance(q.get("embeddings"), bool):
            bad("quantization", f"must be {{'bits': 8 or 4, 'group_size': ..., 'embeddings': bool}}, got {q!r}")
        gs = q.get("group_size")
        if (q["bits"] == 8 and gs is not None) or (q["bits"] == 4 and not (_is_int(gs) and gs >= 2 and gs % 2 == 0)):
            bad("quantization", f"has group_size {gs!r} for bits {q['bits']} (int4: an even int >= 2; int8: null)")


def _check_tensor_names(path, names) -> None:
    for name in names:
        if name.startswith("model/") and len(name) > len("model/"):
            continue
        m = re.fullmatch(r"optim/(0|[1-9][0-9]{0,8})/(.+)", name)
        if m is None:
            raise CheckpointError(f"checkpoint {path}: unexpected tensor {name!r} (expected model/<name> or "
                                  f"optim/<index>/<key>)")


def _read(path, with_tensors: bool):
    """(metadata pieces, tensors or None, header {name: (dtype, shape)}) after checking format,
    digests and the types of every metadata piece."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path}: no such file")
    remove_stale_temp_files(os.path.dirname(os.path.abspath(path)))
    try:
        with safe_open(path, framework="np") as f:
            raw = f.metadata() or {}
            if raw.get("format") != FORMAT:
                raise CheckpointError(f"checkpoint {path}: not a tinygpt checkpoint "
                                      f"(a safetensors file without tinygpt metadata)")
            if raw.get("format_version") != str(FORMAT_VERSION):
                raise CheckpointError(f"checkpoint {path}: format version {raw.get('format_version')}, "
                                      f"this tinygpt reads {FORMAT_VERSION}")
            if raw.get("meta_sha256") != _meta_digest(raw):
                raise CheckpointError(f"checkpoint {path}: corrupted metadata (checksum mismatch)")
            header = {}
            for k in f.keys():
                s = f.get_slice(k)
                header[k] = (str(s.get_dtype()), tuple(int(n) for n in s.get_shape()))
            tensors = {k: f.get_tensor(k) for k in f.keys()} if with_tensors else None
    except CheckpointError:
        raise
    except SafetensorError as exc:
        raise CheckpointError(f"checkpoint {path}: damaged or truncated file ({exc})") from exc
    except Exception as exc:  # OSError, or anything else a damaged header can provoke
        raise CheckpointError(f"checkpoint {path}: cannot read ({type(exc).__name__}: {exc})") from exc
    if tensors is not None and raw.get("data_sha256") != _data_digest(tensors):
        raise CheckpointError(f"checkpoint {path}: corrupted tensor data (checksum mismatch)")
    try:
        meta = {k: json.loads(raw[k]) for k in _JSON_KEYS}
        meta.update({k: json.loads(raw[k]) if k in raw else None for k in _OPTIONAL_JSON_KEYS})
    except (KeyError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {path}: incomplete metadata ({exc!r})") from exc
    meta["format_version"] = FORMAT_VERSION
    _check_pieces(path, meta)
    _check_tensor_names(path, header)
    return meta, tensors, header


def _public(meta: dict) -> dict:
    return {k: meta[k] for k in _PUBLIC_KEYS}


def read_checkpoint_metadata(path) -> dict:
    """The non-array contents of a checkpoint without loading its tensors (types checked).

    Returns
    -------
    dict with keys 'step', 'config', 'tokenizer', 'extra', 'sampler', 'quantization'
    (None, or {'bits': 8|4, 'group_size': int|None, 'embeddings': bool}), 'format_version'.
    """
    meta, _, _ = _read(path, with_tensors=False)
    return _public(meta)


def tensor_shapes(path) -> dict:
    """{tensor name: (dtype name, shape)} from a checkpoint's header, without reading the data."""
    return _read(path, with_tensors=False)[2]


# ----------------------------------------------------------------------------- validation before loading
def _check_model(path, model, tensors) -> dict:
    """The model's weights from `tensors`, after checking names, shapes and dtypes against the model."""
    weights = {k[len("model/"):]: v for k, v in tensors.items() if k.startswith("model/")}
    own = model.state_dict()
    problems = []
    missing = [k for k in own if k not in weights]
    unexpected = [k for k in weights if k not in own]
    if missing:
        problems.append(f"missing keys: {missing}")
    if unexpected:
        problems.append(f"unexpected keys: {unexpected}")
    for name, current in own.items():
        if name not in weights:
            continue
        value = weights[name]
        if tuple(value.shape) != tuple(current.shape):
            problems.append(f"shape mismatch for {name}: checkpoint {tuple(value.shape)}, model {tuple(current.shape)}")
        elif current.dtype.kind == "f" and value.dtype.kind != "f":
            problems.append(f"{name} is {value.dtype} in the checkpoint, the model holds floats ({current.dtype})")
        elif current.dtype.kind != "f" and value.dtype != current.dtype:
            problems.append(f"{name} is {value.dtype} in the checkpoint, the model holds {current.dtype}")
    if problems:
        raise CheckpointError(f"checkpoint {path} does not fit the model: " + "; ".join(problems))
    return weights


def _same_kind(saved, live) -> bool:
    """A saved (JSON) optimiser option is usable where the live group holds `live`."""
    if isinstance(live, bool):
        return isinstance(saved, bool)
    if isinstance(live, numbers.Real):
        return _is_real(saved)
    if isinstance(live, (tuple, list)):
        return isinstance(saved, list) and len(saved) == len(live) and all(
            _same_kind(s, v) for s, v in zip(saved, live))
    if live is None:
        return saved is None or _is_real(saved)
    return isinstance(saved, type(live))


def _check_optimizer(path, optimizer, saved, tensors) -> dict:
    """The state_dict to hand `optimizer.load_state_dict`, after checking every part of it."""
    def bad(msg):
        raise CheckpointError(f"checkpoint {path} does not fit the optimiser: {msg}")

    if saved is None:
        raise CheckpointError(f"checkpoint {path} has no optimiser state")
    name = type(optimizer).__name__
    if saved["class"] != name:
        raise CheckpointError(f"checkpoint {path} holds {saved['class']} state, not {name}")
    groups, live_groups = saved["param_groups"], optimizer.param_groups
    if len(groups) != len(live_groups):
        bad(f"the checkpoint has {len(groups)} parameter groups, the optimiser has {len(live_groups)}")
    params = [p for g in live_groups for p in g["params"]]
    indices = [i for g in groups for i in g["params"]]
    if sorted(indices) != list(range(len(params))):
        bad(f"the groups' parameter indices must be 0..{len(params) - 1}, each once")
    by_index = {}
    for k, (group, live) in enumerate(zip(groups, live_groups)):
        if len(group["params"]) != len(live["params"]):
            bad(f"parameter group {k} has {len(group['params'])} parameters in the checkpoint, "
                f"{len(live['params'])} in the optimiser")
        by_index.update(zip(group["params"], live["params"]))
        options = {key: v for key, v in group.items() if key != "params"}
        unknown = sorted(set(options) - set(live))
        if unknown:
            bad(f"parameter group {k} has options {unknown} that {name} does not have")
        for key, v in options.items():
            if not _same_kind(v, live[key]):
                bad(f"parameter group {k}: {key}={v!r} is not a finite value like the optimiser's {live[key]!r}")
        trial = {**live, **{key: tuple(v) if isinstance(v, list) else v for key, v in options.items()}}
        try:
            optimizer._check_group(trial)  # the optimiser's own range checks, on a copy
        except (ValueError, TypeError) as exc:
            bad(f"parameter group {k}: {exc}")
    schema = _OPTIM_STATE.get(name)
    state = {int(i): dict(scalars) for i, scalars in saved["state"].items()}
    for tname, array in tensors.items():
        if tname.startswith("optim/"):
            _, index, key = tname.split("/", 2)
            if int(index) not in state:
                bad(f"tensor {tname} belongs to no saved parameter state")
            state[int(index)][key] = array
    for index, entry in state.items():
        if index not in by_index:
            bad(f"state for parameter index {index}, which no parameter group lists")
        p = by_index[index]
        if schema is not None and set(entry) != set(schema):
            bad(f"state of parameter {index} has {sorted(entry)}, {name} keeps {sorted(schema)}")
        for key, v in entry.items():
            kind = schema[key] if schema is not None else ("array" if _is_array(v) else "scalar")
            if kind == "count":
                if not _is_int(v) or not 0 <= v < MAX_STEP:
                    bad(f"state {key!r} of parameter {index} must be an int in [0, 2**62), got {v!r}")
            elif kind == "scalar":
                if not (_is_real(v) or isinstance(v, bool)):
                    bad(f"state {key!r} of parameter {index} must be a finite number, got {v!r}")
            else:
                if not _is_array(v) or v.dtype.kind != "f":
                    bad(f"state {key!r} of parameter {index} must be a float array, got "
                        f"{getattr(v, 'dtype', type(v).__name__)}")
                if tuple(v.shape) != tuple(p.shape):
                    bad(f"state {key!r} of parameter {index} has shape {tuple(v.shape)}, the parameter {tuple(p.shape)}")
                if not np.isfinite(v).all():
                    bad(f"state {key!r} of parameter {index} holds NaN or infinity")
                if kind == "nonneg_array" and (v < 0).any():
                    bad(f"state {key!r} of parameter {index} holds negative values (a running mean of squares)")
    return {"state": state, "param_groups": groups}


def _check_sampler(path, sampler, saved) -> None:
    """Try the sampler state on the sampler and put its own state back (so nothing changes here)."""
    if saved is None:
        raise CheckpointError(f"checkpoint {path} has no sampler state")
    before = sampler.state_dict()
    try:
        sampler.load_state_dict(saved)
    except (KeyError, ValueError, TypeError, AttributeError, OverflowError, IndexError) as exc:
        raise CheckpointError(f"checkpoint {path} does not fit the sampler: {type(exc).__name__}: {exc}") from exc
    finally:
        sampler.load_state_dict(before)


def load_checkpoint(path, model=None, optimizer=None, *, sampler=None, restore_rng=True) -> dict:
    """Load a checkpoint into the given objects and return its metadata.

    Everything is checked before anything is changed: on CheckpointError the model,
    optimiser, sampler and global RNG are exactly as they were.

    Parameters
    ----------
    path : str or PathLike
    model : Module, optional
        Receives the weights via ``load_state_dict(strict=True)``; None to skip.
    optimizer : Optimizer, optional
        Must be the same class with the same groups as when saved.
    sampler : object with ``state_dict`` / ``load_state_dict``, optional
    restore_rng : bool
        Restore the global RNG (`tinygpt.random`) to its state at save time.

    Returns
    -------
    dict with keys 'step', 'config', 'tokenizer', 'extra', 'sampler', 'quantization', 'format_version'.

    Raises
    ------
    CheckpointError
        The file is missing, truncated, corrupted, not a tinygpt checkpoint, or does not
        match the model / optimiser / sampler given.
    """
    path = os.fspath(path)
    meta, tensors, _ = _read(path, with_tensors=model is not None or optimizer is not None)
    # 1. validate every part
    weights = _check_model(path, model, tensors) if model is not None else None
    opt_state = _check_optimizer(path, optimizer, meta["optimizer"], tensors) if optimizer is not None else None
    if sampler is not None:
        _check_sampler(path, sampler, meta["sampler"])
    # 2. apply (nothing above changed any state; nothing below can fail on a checked checkpoint)
    try:
        if sampler is not None:
            sampler.load_state_dict(meta["sampler"])
        if optimizer is not None:
            optimizer.load_state_dict(opt_state)
        if model is not None:
            model.load_state_dict(weights, strict=True)
    except (KeyError, ValueError, RuntimeError, TypeError) as exc:  # a check above missed something
        raise CheckpointError(f"checkpoint {path}: loading failed after validation ({exc})") from exc
    if restore_rng and meta["rng"] is not None:
        tg_random.set_rng_state(meta["rng"])
    return _public(meta)


# ----------------------------------------------------------------------------- GPT models
def _layer_indices(header, prefix: str) -> set:
    pattern = re.compile(re.escape(prefix) + r"transformer\.h\.(0|[1-9][0-9]*)\.")
    return {int(m.group(1)) for m in map(pattern.match, header) if m}


def _stored_params(header, prefix: str) -> int:
    """Logical parameter count of the model tensors under `prefix` (int4 tables hold two per byte;
    quantization scales are not parameters)."""
    n = 0
    for name, (dtype, shape) in header.items():
        if not name.startswith(prefix) or name.endswith(".scale"):
            continue
        size = math.prod(shape)
        n += 2 * size if (name.endswith(".qweight") and dtype.lower() in ("u8", "uint8")) else size
    return n


def model_config(path, *, prefix: str = ""):
    """The GPTConfig of a GPT checkpoint, checked against the tensors in the file before any model
    exists: n_layer, the vocabulary, width and context, and the total parameter count must be what
    the file holds (so a hostile config, e.g. n_layer=10**9, fails here instead of allocating).

    prefix: the GPT's name inside the saved module ('gpt.' for a GPTClassifier).
    """
    from .models.config import GPTConfig  # noqa: PLC0415 - models import this module

    path = os.fspath(path)
    meta, _, header = _read(path, with_tensors=False)
    d = meta["config"]
    if d is None:
        raise CheckpointError(f"checkpoint {path} has no model config in its metadata")
    n_layer = d.get("n_layer")
    layers = _layer_indices(header, "model/" + prefix)
    if not _is_int(n_layer) or len(layers) != n_layer or (layers and max(layers) != n_layer - 1):
        raise CheckpointError(f"checkpoint {path}: its config says n_layer={n_layer!r} but the file holds "
                              f"{len(layers)} layers of weights")
    try:
        config = GPTConfig.from_dict(d)
    except (ValueError, TypeError) as exc:
        raise CheckpointError(f"checkpoint {path}: invalid model config: {exc}") from exc
    q = meta["quantization"]
    expected = config.num_params()
    if q is not None and not q["embeddings"] and config.tie_weights:
        expected += config.vocab_size * config.n_embd  # the tied head's own int8 copy beside the float table
    stored = _stored_params(header, "model/" + prefix)
    if stored != expected:
        raise CheckpointError(
            f"checkpoint {path}: its config (vocab_size={config.vocab_size}, n_embd={config.n_embd}, "
            f"block_size={config.block_size}, n_layer={config.n_layer}, n_expert={config.n_expert}) describes "
            f"{expected:,} parameters, the file holds {stored:,}")
    if config.n_expert and config.capacity_factor > config.n_expert:
        raise CheckpointError(f"checkpoint {path}: capacity_factor {config.capacity_factor} exceeds n_expert "
                              f"{config.n_expert} (an expert's buffer would outgrow every token of the batch)")
    if config.position == "sinusoidal" and config.block_size * config.n_embd > _MAX_SINUSOIDAL:
        raise CheckpointError(f"checkpoint {path}: block_size {config.block_size} x n_embd {config.n_embd} "
                              f"sinusoidal positions exceed {_MAX_SINUSOIDAL:,} values")
    return config


def load_model(path, *, quantize: int | None = None, group_size: int | None = None, device: str = "cpu"):
    """(GPT in eval mode, metadata) from a checkpoint, float or quantized.

    A quantized checkpoint builds its quantized model directly (int8 / packed int4 tables and
    scales read from the file; the float weights are never allocated). `quantize` (8 or 4)
    quantizes a float checkpoint after loading it (`tinygpt.quantize`); asking for other bits
    than a quantized checkpoint holds is an error. The global RNG is left as it was.
    """
    from .models.gpt import GPT  # noqa: PLC0415 - models import this module
    from .quantize import build_quantized, quantize as quantize_model  # noqa: PLC0415

    path = os.fspath(path)
    config = model_config(path)
    meta = read_checkpoint_metadata(path)
    q = meta["quantization"]
    if quantize is not None and quantize not in (8, 4):
        raise ValueError(f"load_model: quantize must be 8, 4 or None, got {quantize!r}")
    if q is not None and quantize is not None and (quantize != q["bits"] or group_size not in (None, q["group_size"])):
        raise CheckpointError(f"checkpoint {path} is already quantized (int{q['bits']}, group size "
                              f"{q['group_size']}); it cannot be re-quantized to int{quantize}: quantize the float model")
    rng = tg_random.get_rng_state()
    try:
        if q is not None:
            model = build_quantized(GPT, config, bits=q["bits"], group_size=q["group_size"], embeddings=q["embeddings"])
        else:
            model = GPT(config)
    finally:
        tg_random.set_rng_state(rng)  # building a model draws its (overwritten) initial weights
    load_checkpoint(path, model, restore_rng=False)
    if q is None and quantize is not None:
        quantize_model(model, bits=quantize, group_size=group_size if quantize == 4 else None)
    if device != "cpu":
        model.to(device)
    return model.eval(), meta
