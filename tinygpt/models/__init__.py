"""Models: GPTConfig and GPT."""
from .config import GPTConfig
from .generation import KVCache
from .gpt import GPT

__all__ = ["GPT", "GPTConfig", "KVCache"]
