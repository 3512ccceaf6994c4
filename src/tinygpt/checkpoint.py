"""Checkpoints as one safetensors file: arrays as tensors, everything else as JSON metadata.

Layout::

    model/<name>          model weights (dtypes as they are)
    optim/<index>/<key>   optimiser state arrays (exp_avg, exp_avg_sq, momentum_buffer, ...)
    __metadata__          JSON strings: format, format_version, step, config, tokenizer,
                          optimizer (class, param_groups, scalar per-parameter state),
                          rng (tinygpt.random), sampler, extra, and two sha256 digests
                          (metadata; tensor names, dtypes, shapes and bytes)

No pickle anywhere. Writes are atomic: a crash leaves the previous file as it was.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import secrets

import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

from . import backend
from . import random as tg_random

FORMAT = "tinygpt"
FORMAT_VERSION = 1
_JSON_KEYS = ("step", "config", "tokenizer", "optimizer", "rng", "sampler", "extra")


class CheckpointError(ValueError):
    """A checkpoint is missing, damaged, not a tinygpt checkpoint, or does not fit the model."""


def atomic_write(path, write) -> None:
    """Create `path` (and its directory) via ``write(tmp_path)`` on a temp file beside it.

    The temp file is fsynced, renamed over `path` (os.replace), and the directory fsynced;
    if `write` raises, the temp file is removed and `path` is untouched.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{secrets.token_hex(4)}.tmp")
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
    try:  # make the rename itself durable (not possible on every OS)
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


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
    model : Module (its ``state_dict()``)
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
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        config = dataclasses.asdict(config)
    if tokenizer is not None and not isinstance(tokenizer, dict):
        tokenizer = tokenizer.to_dict()
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
              "sampler": sampler.state_dict() if sampler is not None else None, "extra": extra}
    metadata = {"format": FORMAT, "format_version": str(FORMAT_VERSION)}
    metadata.update({k: _json(v, k) for k, v in pieces.items()})
    metadata["meta_sha256"] = _meta_digest(metadata)
    metadata["data_sha256"] = _data_digest(tensors)
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))


def _read(path, with_tensors: bool):
    """(metadata pieces, tensors or None) after checking format and digests."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path}: no such file")
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
    except (KeyError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {path}: incomplete metadata ({exc!r})") from exc
    meta["format_version"] = FORMAT_VERSION
    return meta, tensors


def read_checkpoint_metadata(path) -> dict:
    """The non-array contents of a checkpoint without loading its tensors.

    Returns
    -------
    dict with keys 'step', 'config', 'tokenizer', 'extra', 'sampler', 'format_version'.
    """
    meta, _ = _read(path, with_tensors=False)
    return {k: meta[k] for k in ("step", "config", "tokenizer", "extra", "sampler", "format_version")}


def load_checkpoint(path, model=None, optimizer=None, *, sampler=None, restore_rng=True) -> dict:
    """Load a checkpoint into the given objects and return its metadata.

    Parameters
    ----------
    path : str or PathLike
    model : Module, optional
        Receives the weights via ``load_state_dict(strict=True)``; None to skip.
    optimizer : Optimizer, optional
        Must be the same class with the same groups as when saved.
    sampler : object with ``load_state_dict``, optional
    restore_rng : bool
        Restore the global RNG (`tinygpt.random`) to its state at save time.

    Returns
    -------
    dict with keys 'step', 'config', 'tokenizer', 'extra', 'sampler', 'format_version'.

    Raises
    ------
    CheckpointError
        The file is missing, truncated, corrupted, not a tinygpt checkpoint, or does not
        match the model / optimiser / sampler given.
    """
    path = os.fspath(path)
    meta, tensors = _read(path, with_tensors=model is not None or optimizer is not None)
    if model is not None:
        weights = {k[len("model/"):]: v for k, v in tensors.items() if k.startswith("model/")}
        try:
            model.load_state_dict(weights, strict=True)
        except (KeyError, ValueError, RuntimeError, TypeError) as exc:
            raise CheckpointError(f"checkpoint {path} does not fit the model: {exc}") from exc
    if optimizer is not None:
        saved = meta["optimizer"]
        if saved is None:
            raise CheckpointError(f"checkpoint {path} has no optimiser state")
        if saved["class"] != type(optimizer).__name__:
            raise CheckpointError(f"checkpoint {path} holds {saved['class']} state, "
                                  f"not {type(optimizer).__name__}")
        state = {int(i): dict(scalars) for i, scalars in saved["state"].items()}
        for name, array in tensors.items():
            if name.startswith("optim/"):
                _, index, key = name.split("/", 2)
                state.setdefault(int(index), {})[key] = array
        try:
            optimizer.load_state_dict({"state": state, "param_groups": saved["param_groups"]})
        except (KeyError, ValueError, TypeError) as exc:
            raise CheckpointError(f"checkpoint {path} does not fit the optimiser: {exc}") from exc
    if sampler is not None:
        if meta["sampler"] is None:
            raise CheckpointError(f"checkpoint {path} has no sampler state")
        try:
            sampler.load_state_dict(meta["sampler"])
        except (KeyError, ValueError) as exc:
            raise CheckpointError(f"checkpoint {path} does not fit the sampler: {exc}") from exc
    if restore_rng and meta["rng"] is not None:
        tg_random.set_rng_state(meta["rng"])
    return {k: meta[k] for k in ("step", "config", "tokenizer", "extra", "sampler", "format_version")}
