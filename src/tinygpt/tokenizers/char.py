"""One token per character: `CharTokenizer` (its vocabulary is the text's characters)."""
from __future__ import annotations

import json

import numpy as np

from .. import backend
from ..checkpoint import atomic_write


class CharTokenizer:
    """One token per character; ids follow the order of `chars`.

    Parameters
    ----------
    chars : str or sequence of str
        The vocabulary, each character once.
    """

    def __init__(self, chars):
        chars = list(chars)
        if any(not isinstance(c, str) or len(c) != 1 for c in chars):
            raise ValueError("CharTokenizer: the vocabulary must be single characters")
        if len(set(chars)) != len(chars):
            raise ValueError("CharTokenizer: the vocabulary has repeated characters")
        self.chars = "".join(chars)
        self.stoi = {c: i for i, c in enumerate(chars)}

    @classmethod
    def from_text(cls, text: str) -> "CharTokenizer":
        """The vocabulary of `text`: its unique characters, sorted."""
        return cls(sorted(set(text)))

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def __len__(self):
        return self.vocab_size

    def __repr__(self):
        return f"CharTokenizer(vocab_size={self.vocab_size})"

    def encode(self, text: str) -> np.ndarray:
        """Token ids of `text` as an int64 array; an unknown character raises ValueError."""
        try:
            return np.array([self.stoi[c] for c in text], dtype=np.int64)
        except KeyError:
            pos, char = next((i, c) for i, c in enumerate(text) if c not in self.stoi)
            raise ValueError(f"CharTokenizer.encode: unknown character {char!r} at position {pos} "
                             f"(not in the {self.vocab_size}-character vocabulary)") from None

    def decode(self, ids) -> str:
        """The text of a 1-D sequence of ids (list, numpy array or Tensor)."""
        if hasattr(ids, "numpy") and not isinstance(ids, np.ndarray):
            ids = ids.numpy()
        ids = backend.to_numpy(ids)  # also a cupy array or a list
        if ids.ndim != 1 or (ids.size and not np.issubdtype(ids.dtype, np.integer)):
            raise ValueError(f"CharTokenizer.decode: expected a 1-D sequence of ints, got shape "
                             f"{ids.shape} dtype {ids.dtype}")
        bad = np.flatnonzero((ids < 0) | (ids >= self.vocab_size))
        if bad.size:
            raise ValueError(f"CharTokenizer.decode: id {int(ids[bad[0]])} at position {int(bad[0])} "
                             f"is out of range for vocab_size {self.vocab_size}")
        return "".join(self.chars[i] for i in ids.tolist())

    def to_dict(self) -> dict:
        return {"type": "char", "chars": self.chars}

    @classmethod
    def from_dict(cls, d: dict) -> "CharTokenizer":
        if not isinstance(d, dict) or d.get("type") != "char" or not isinstance(d.get("chars"), str):
            raise ValueError("CharTokenizer.from_dict: expected {'type': 'char', 'chars': str}")
        return cls(d["chars"])

    def save(self, path) -> None:
        """Write the vocabulary as JSON (atomically)."""
        data = json.dumps(self.to_dict(), ensure_ascii=False).encode("utf-8")
        atomic_write(path, lambda tmp: _write_bytes(tmp, data))

    @classmethod
    def load(cls, path) -> "CharTokenizer":
        with open(path, encoding="utf-8") as f:
            return cls.from_dict(json.load(f))


def _write_bytes(path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
