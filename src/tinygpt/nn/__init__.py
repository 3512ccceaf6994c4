"""Neural-network modules (PyTorch-shaped): Module, Parameter and the GPT layers."""
from . import utils
from .attention import MLP, Block, CausalSelfAttention
from .layers import GELU, Dropout, Embedding, LayerNorm, Linear, sinusoidal_positions
from .module import Module, ModuleList, Parameter
from .moe import MoE, ExpertLinear

__all__ = ["Module", "ModuleList", "Parameter", "Linear", "Embedding", "LayerNorm", "Dropout", "GELU",
           "CausalSelfAttention", "MLP", "MoE", "ExpertLinear", "Block", "sinusoidal_positions", "utils"]
