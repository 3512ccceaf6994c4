"""Text data: a seeded batch sampler and dataset loading (CharTokenizer is re-exported from tinygpt.tokenizers)."""
from __future__ import annotations

import gzip
import hashlib
import importlib.resources
import os
import urllib.request

import numpy as np

from . import backend
from .checkpoint import atomic_write
from .tokenizers.char import CharTokenizer  # noqa: F401 - re-exported: tinygpt.data.CharTokenizer

TINY_SHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
_TINY_SHAKESPEARE_MD5 = "6fb458f1232090904fb40fe944165e91"  # of the text at that URL (1,115,394 bytes)


class BatchSampler:
    """Random (x, y) windows from a 1-D token array; y is x shifted by one token.

    Draws come from the sampler's own seeded generator, so a run resumed from
    `state_dict()` draws the same batches as an uninterrupted one.

    Parameters
    ----------
    tokens : 1-D int array
    batch_size, block_size : int
    seed : int
    device : 'cpu' (numpy batches) or 'cuda' (cupy batches; the windows are drawn and cut
        on the host, so the batches are the same on every device)
    """

    def __init__(self, tokens, batch_size: int, block_size: int, seed: int = 0, device: str = "cpu"):
        tokens = np.asarray(tokens)
        if tokens.ndim != 1 or not np.issubdtype(tokens.dtype, np.integer):
            raise ValueError(f"BatchSampler: tokens must be a 1-D int array, got shape {tokens.shape} "
                             f"dtype {tokens.dtype}")
        if batch_size < 1 or block_size < 1:
            raise ValueError(f"BatchSampler: batch_size and block_size must be >= 1, "
                             f"got {batch_size} and {block_size}")
        if len(tokens) < block_size + 1:
            raise ValueError(f"BatchSampler: {len(tokens)} tokens are too few for block_size={block_size} "
                             f"(need at least block_size + 1 = {block_size + 1})")
        self.device = backend.normalize_device(device)
        if self.device != "cpu":
            backend.cupy()  # fail here, saying what is missing, rather than at the first batch
        self.tokens, self.batch_size, self.block_size = tokens, batch_size, block_size
        self.rng = np.random.Generator(np.random.PCG64(seed))

    def sample(self) -> tuple[np.ndarray, np.ndarray]:
        """One batch: x and y, both int64 of shape (batch_size, block_size), on the sampler's device."""
        starts = self.rng.integers(0, len(self.tokens) - self.block_size, size=self.batch_size)
        idx = starts[:, None] + np.arange(self.block_size)  # (B, T)
        x, y = self.tokens[idx].astype(np.int64), self.tokens[idx + 1].astype(np.int64)
        if self.device != "cpu":
            x, y = backend.to_device(x, self.device), backend.to_device(y, self.device)
        return x, y

    def __iter__(self):
        return self

    def __next__(self):
        return self.sample()

    def state_dict(self) -> dict:
        return {"batch_size": self.batch_size, "block_size": self.block_size,
                "num_tokens": len(self.tokens), "rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict) -> None:
        mine = self.state_dict()
        for key in ("batch_size", "block_size", "num_tokens"):
            if state[key] != mine[key]:
                raise ValueError(f"BatchSampler.load_state_dict: saved {key}={state[key]}, "
                                 f"this sampler has {mine[key]}")
        self.rng.bit_generator.state = state["rng"]


DEFAULT_TEXT = os.path.join("data", "tinyshakespeare.txt")  # nanoGPT's place for it, relative to the working directory


def load_text(path=None, url: str | None = None, timeout: float = 30.0) -> str:
    """The text of `path`; if it is missing and `url` is given, download it there first.

    Without a path: DEFAULT_TEXT if that file exists, else the Tiny Shakespeare shipped in the package
    (no network needed)."""
    if path is None:
        if not os.path.exists(DEFAULT_TEXT):
            return tiny_shakespeare()
        path = DEFAULT_TEXT
    path = os.fspath(path)
    if not os.path.exists(path):
        if url is None:
            raise FileNotFoundError(f"load_text: no file at {os.path.abspath(path)}")
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                data = response.read()
            data.decode("utf-8")
        except Exception as exc:
            raise RuntimeError(
                f"load_text: {path} is missing and downloading it from {url} failed ({exc}). "
                f"Download that file yourself and save it as {os.path.abspath(path)}") from exc
        atomic_write(path, lambda tmp: _write_bytes(tmp, data))
    with open(path, encoding="utf-8") as f:
        return f.read()


def tiny_shakespeare() -> str:
    """Tiny Shakespeare (1,115,394 characters), from the gzip copy shipped inside the package
    (tinygpt/assets, see its README for the source), checked against the original's MD5."""
    data = gzip.decompress(importlib.resources.files("tinygpt").joinpath("assets/tinyshakespeare.txt.gz").read_bytes())
    if hashlib.md5(data).hexdigest() != _TINY_SHAKESPEARE_MD5:
        raise RuntimeError("tiny_shakespeare: the packaged copy is corrupted (MD5 mismatch); reinstall tinygpt")
    return data.decode("utf-8")


def train_val_split(tokens, val_fraction: float = 0.1):
    """(train, val): the first ``1 - val_fraction`` of `tokens` and the rest."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"train_val_split: val_fraction must be in [0, 1), got {val_fraction}")
    n = int(len(tokens) * (1.0 - val_fraction))
    return tokens[:n], tokens[n:]


def _write_bytes(path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
