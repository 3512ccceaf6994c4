"""Neural-network modules (PyTorch-shaped): Module, Parameter and the GPT layers."""
from . import utils
from .attention import CausalSelfAttention
from .block import Block
from .layers import GELU, Dropout, Embedding, LayerNorm, Linear, sinusoidal_positions
from .mlp import MLP
from .module import Module, ModuleList, Parameter
from .moe import ExpertLinear, MoE

__all__ = ["Module", "ModuleList", "Parameter", "Linear", "Embedding", "LayerNorm", "Dropout", "GELU",
           "CausalSelfAttention", "MLP", "MoE", "ExpertLinear", "Block", "sinusoidal_positions", "utils"]
