"""GPTConfig: one dataclass describes every model in the GPT family."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass


@dataclass
class GPTConfig:
    vocab_size: int = 65
    block_size: int = 256          # context length
    n_layer: int = 6
    n_head: int = 6
    n_embd: int = 384
    dropout: float = 0.0
    bias: bool = True              # biases in Linear and LayerNorm (GPT-2: True)
    norm: str = "pre"              # 'pre' (GPT-2 and later) or 'post' (GPT-1)
    position: str = "learned"      # 'learned' (GPT) or 'sinusoidal' (the original Transformer)
    tie_weights: bool = True       # LM head shares the token embedding matrix
    final_norm: bool | None = None  # final LayerNorm; None = present for pre-norm, absent for post-norm
    attention_window: int | None = None  # band width of locally banded (sparse) layers
    sparse_pattern: str = "dense"  # 'dense' or 'alternating' (GPT-3: every other layer banded)
    gelu: str = "tanh"             # GELU form: 'tanh' (GPT-2) or 'none' (exact erf)

    def __post_init__(self):
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"GPTConfig: {name} must be a positive int, got {value!r}")
        if self.n_embd % self.n_head:
            raise ValueError(f"GPTConfig: n_embd {self.n_embd} is not divisible by n_head {self.n_head}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"GPTConfig: dropout must be in [0, 1), got {self.dropout}")
        choices = {"norm": ("pre", "post"), "position": ("learned", "sinusoidal"),
                   "sparse_pattern": ("dense", "alternating"), "gelu": ("tanh", "none")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"GPTConfig: {name} must be one of {allowed}, got {getattr(self, name)!r}")
        if self.sparse_pattern != "dense" and not self.attention_window:
            raise ValueError("GPTConfig: sparse_pattern 'alternating' needs attention_window (the band width)")
        if self.position == "sinusoidal" and self.n_embd % 2:
            raise ValueError(f"GPTConfig: sinusoidal positions need an even n_embd, got {self.n_embd}")
        if self.final_norm is None:
            self.final_norm = self.norm == "pre"

    def layer_window(self, layer: int) -> int | None:
        """The attention band of layer `layer` (None = dense): GPT-3 alternates dense and banded."""
        if self.sparse_pattern == "alternating":
            return self.attention_window if layer % 2 == 1 else None
        return None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> GPTConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"GPTConfig.from_dict: unknown fields {unknown}")
        return cls(**d)
