"""Models: GPTConfig, GPT, generation (its options and the KV cache) and the GPT-1-style classifier."""
from .classifier import GPTClassifier
from .config import GPTConfig
from .generation import GenerationConfig, KVCache
from .gpt import GPT

__all__ = ["GPT", "GPTConfig", "GenerationConfig", "KVCache", "GPTClassifier"]
