"""Models: GPTConfig, GPT, the KV cache and the GPT-1-style classifier."""
from .classifier import GPTClassifier
from .config import GPTConfig
from .generation import KVCache
from .gpt import GPT

__all__ = ["GPT", "GPTConfig", "KVCache", "GPTClassifier"]
