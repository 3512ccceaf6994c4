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
    # mixture of experts (GPT-4-style option; Switch Transformer / GShard / Mixtral), see nn/moe.py
    n_expert: int = 0              # experts per MoE layer; 0 = dense MLP everywhere
    expert_top_k: int = 2          # experts per token: 1 (Switch) or 2 (GShard, Mixtral)
    capacity_factor: float = 1.25  # expert capacity = ceil(capacity_factor * tokens * k / n_expert); 0 = dropless
    moe_aux_loss_coef: float = 0.01  # weight of the load-balancing loss added in training
    moe_every: int = 1             # MoE in layers i with i % moe_every == moe_every - 1 (2: layers 1, 3, ...)

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
        self._check_moe()

    def _check_moe(self):
        if not isinstance(self.n_expert, int) or self.n_expert < 0:
            raise ValueError(f"GPTConfig: n_expert must be an int >= 0 (0 = dense MLP), got {self.n_expert!r}")
        if not isinstance(self.moe_every, int) or self.moe_every < 1:
            raise ValueError(f"GPTConfig: moe_every must be a positive int, got {self.moe_every!r}")
        if self.expert_top_k not in (1, 2):
            raise ValueError(f"GPTConfig: expert_top_k must be 1 or 2, got {self.expert_top_k!r}")
        if self.n_expert and self.expert_top_k > self.n_expert:
            raise ValueError(f"GPTConfig: expert_top_k {self.expert_top_k} exceeds n_expert {self.n_expert}")
        if not self.capacity_factor >= 0:
            raise ValueError(f"GPTConfig: capacity_factor must be > 0 (or 0: dropless), got {self.capacity_factor!r}")
        if not self.moe_aux_loss_coef >= 0:
            raise ValueError(f"GPTConfig: moe_aux_loss_coef must be >= 0, got {self.moe_aux_loss_coef!r}")

    def layer_moe(self, layer: int) -> dict | None:
        """MoE settings for layer `layer` (keyword arguments of nn.MoE), or None for a dense MLP."""
        if self.n_expert and layer % self.moe_every == self.moe_every - 1:
            return {"n_expert": self.n_expert, "top_k": self.expert_top_k, "capacity_factor": self.capacity_factor}
        return None

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
