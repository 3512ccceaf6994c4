"""tinygpt: a GPT engine from scratch — NumPy autograd, every GPT layer, AdamW, native kernels."""
from . import backend, checkpoint, functional, kernels, lora, models, nn, optim
from .autograd import Function, enable_grad, is_grad_enabled, no_grad
from .models import GPT, GenerationConfig, GPTConfig
from .quantize import quantize, weight_memory  # tinygpt.quantize is the function; the module: tinygpt.quantize.*
from .random import get_rng_state, manual_seed, set_rng_state
from .tensor import (Tensor, arange, cat, concatenate, full, maximum, minimum, ones, ones_like, rand, randn, split,
                     unbind,
                     stack, tensor, where, zeros, zeros_like)

__version__ = "0.1.0"

__all__ = [
    "Tensor", "tensor", "zeros", "ones", "full", "randn", "rand", "arange", "zeros_like", "ones_like",
    "where", "maximum", "minimum", "concatenate", "cat", "stack", "split", "unbind", "Function", "no_grad",
    "enable_grad", "is_grad_enabled", "manual_seed", "get_rng_state", "set_rng_state", "GPT", "GPTConfig",
    "GenerationConfig", "quantize", "weight_memory", "backend", "checkpoint", "functional", "kernels", "lora",
    "models", "nn", "optim", "__version__",
]
