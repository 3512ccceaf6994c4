"""Tokenizers: one character per token (`CharTokenizer`) and GPT-2's byte-level BPE (`ByteLevelBPE`).

Both have ``encode(text) -> int64 array``, ``decode(ids) -> str``, ``vocab_size`` and
``to_dict()`` / ``from_dict()`` (JSON-able, for checkpoint metadata); `from_dict` here picks
the class from the dict's 'type'. ``ByteLevelBPE.load(dir)`` / ``save(dir)`` read and write
Hugging Face tokenizer directories (tokenizers/pretrained.py).
"""
from .bpe import ENDOFTEXT, GPT2_SPLIT_PATTERN, ByteLevelBPE, bytes_to_unicode
from .char import CharTokenizer

__all__ = ["CharTokenizer", "ByteLevelBPE", "bytes_to_unicode", "GPT2_SPLIT_PATTERN", "ENDOFTEXT", "from_dict"]

_TYPES = {"char": CharTokenizer, "bpe": ByteLevelBPE}


def from_dict(d: dict):
    """The tokenizer described by `d` (a ``to_dict()`` result): CharTokenizer or ByteLevelBPE."""
    kind = d.get("type") if isinstance(d, dict) else None
    if kind not in _TYPES:
        raise ValueError(f"tokenizers.from_dict: unknown tokenizer type {kind!r} (expected one of {sorted(_TYPES)})")
    return _TYPES[kind].from_dict(d)
