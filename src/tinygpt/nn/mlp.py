"""The transformer's feed-forward network: Linear(C, 4C) -> GELU -> Linear(4C, C) -> dropout."""
from __future__ import annotations

from .layers import GELU, Dropout, Linear
from .module import Module


class MLP(Module):
    """Linear(C, 4C) -> GELU -> Linear(4C, C) -> dropout."""

    def __init__(self, n_embd: int, dropout: float = 0.0, bias: bool = True, proj_std: float = 0.02,
                 approximate: str = "tanh"):
        super().__init__()
        if not isinstance(n_embd, int) or isinstance(n_embd, bool) or n_embd < 1:
            raise ValueError(f"MLP: n_embd must be a positive int, got {n_embd!r}")
        self.c_fc = Linear(n_embd, 4 * n_embd, bias=bias)
        self.gelu = GELU(approximate)
        self.c_proj = Linear(4 * n_embd, n_embd, bias=bias, std=proj_std)
        self.dropout = Dropout(dropout)

    def forward(self, x):
        # c_fc + GELU fused in one op where c_fc has one (Linear, QuantizedLinear); a wrapped c_fc (LoRA) runs
        # its own forward
        if self.gelu.approximate == "tanh" and hasattr(self.c_fc, "forward_gelu"):
            h = self.c_fc.forward_gelu(x)
        else:  # the exact erf GELU stays a separate op
            h = self.gelu(self.c_fc(x))
        return self.dropout(self.c_proj(h))
