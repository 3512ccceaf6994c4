"""GPTConfig: one dataclass describes every model in the GPT family."""
from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass


SPARSE_PATTERNS = ("dense", "alternating", "banded")


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_real(x) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


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
    # which layers are banded: 'dense' (none), 'alternating' (odd layers, GPT-3), 'banded' (all),
    # or one entry per layer: 'dense', 'banded' (attention_window) or an int (that layer's own band)
    sparse_pattern: str | tuple = "dense"
    gelu: str = "tanh"             # GELU form: 'tanh' (GPT-2) or 'none' (exact erf)
    layer_norm_eps: float = 1e-5   # every LayerNorm's epsilon (GPT-2: 1e-5)
    # mixture of experts (GPT-4-style option; Switch Transformer / GShard / Mixtral), see nn/moe.py
    n_expert: int = 0              # experts per MoE layer; 0 = dense MLP everywhere
    expert_top_k: int = 2          # experts per token: 1 (Switch) or 2 (GShard, Mixtral)
    capacity_factor: float = 1.25  # expert capacity = ceil(capacity_factor * tokens * k / n_expert); 0 = dropless
    moe_aux_loss_coef: float = 0.01  # weight of the load-balancing loss added in training
    moe_every: int = 1             # MoE in layers i with i % moe_every == moe_every - 1 (2: layers 1, 3, ...)

    def __post_init__(self):
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            value = getattr(self, name)
            if not _is_int(value) or value < 1:
                raise ValueError(f"GPTConfig: {name} must be a positive int, got {value!r}")
        if self.n_embd % self.n_head:
            raise ValueError(f"GPTConfig: n_embd {self.n_embd} is not divisible by n_head {self.n_head}")
        if not _is_real(self.dropout) or not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"GPTConfig: dropout must be a number in [0, 1), got {self.dropout!r}")
        for name in ("bias", "tie_weights"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"GPTConfig: {name} must be True or False, got {getattr(self, name)!r}")
        if self.final_norm is not None and not isinstance(self.final_norm, bool):
            raise ValueError(f"GPTConfig: final_norm must be True, False or None (by norm), got {self.final_norm!r}")
        choices = {"norm": ("pre", "post"), "position": ("learned", "sinusoidal"), "gelu": ("tanh", "none")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"GPTConfig: {name} must be one of {allowed}, got {getattr(self, name)!r}")
        if not _is_real(self.layer_norm_eps) or not 0 < self.layer_norm_eps < math.inf:
            raise ValueError(f"GPTConfig: layer_norm_eps must be a finite number > 0, got {self.layer_norm_eps!r}")
        self._check_sparse_pattern()
        if self.position == "sinusoidal" and self.n_embd % 2:
            raise ValueError(f"GPTConfig: sinusoidal positions need an even n_embd, got {self.n_embd}")
        if self.final_norm is None:
            self.final_norm = self.norm == "pre"
        self._check_moe()

    def _check_moe(self):
        if not _is_int(self.n_expert) or self.n_expert < 0:
            raise ValueError(f"GPTConfig: n_expert must be an int >= 0 (0 = dense MLP), got {self.n_expert!r}")
        if not _is_int(self.moe_every) or self.moe_every < 1:
            raise ValueError(f"GPTConfig: moe_every must be a positive int, got {self.moe_every!r}")
        if not _is_int(self.expert_top_k) or self.expert_top_k not in (1, 2):
            raise ValueError(f"GPTConfig: expert_top_k must be 1 or 2, got {self.expert_top_k!r}")
        if self.n_expert and self.expert_top_k > self.n_expert:
            raise ValueError(f"GPTConfig: expert_top_k {self.expert_top_k} exceeds n_expert {self.n_expert}")
        if self.n_expert and self.moe_every > self.n_layer:  # layers moe_every-1, 2*moe_every-1, ...: none
            raise ValueError(f"GPTConfig: moe_every {self.moe_every} is larger than n_layer {self.n_layer}, so no "
                             f"layer would be a mixture of experts (n_expert {self.n_expert})")
        if not _is_real(self.capacity_factor) or not 0 <= self.capacity_factor < math.inf:
            raise ValueError(f"GPTConfig: capacity_factor must be a finite number > 0 (or 0: dropless), "
                             f"got {self.capacity_factor!r}")
        if not _is_real(self.moe_aux_loss_coef) or not 0 <= self.moe_aux_loss_coef < math.inf:
            raise ValueError(f"GPTConfig: moe_aux_loss_coef must be a finite number >= 0, got {self.moe_aux_loss_coef!r}")

    def layer_moe(self, layer: int) -> dict | None:
        """MoE settings for layer `layer` (keyword arguments of nn.MoE), or None for a dense MLP."""
        if self.n_expert and layer % self.moe_every == self.moe_every - 1:
            return {"n_expert": self.n_expert, "top_k": self.expert_top_k, "capacity_factor": self.capacity_factor}
        return None

    def _check_sparse_pattern(self):
        w, pattern = self.attention_window, self.sparse_pattern
        if w is not None and (isinstance(w, bool) or not isinstance(w, int) or w < 1):
            raise ValueError(f"GPTConfig: attention_window must be a positive int or None, got {w!r}")
        if isinstance(pattern, str):
            if pattern not in SPARSE_PATTERNS:
                raise ValueError(f"GPTConfig: sparse_pattern must be one of {SPARSE_PATTERNS} or a sequence "
                                 f"of n_layer entries ('dense', 'banded' or an int band), got {pattern!r}")
        else:
            try:
                pattern = tuple(pattern)
            except TypeError:
                raise ValueError(f"GPTConfig: sparse_pattern must be a string or a sequence, got {pattern!r}") from None
            if len(pattern) != self.n_layer:
                raise ValueError(f"GPTConfig: sparse_pattern has {len(pattern)} entries, n_layer is {self.n_layer}")
            for i, e in enumerate(pattern):
                ok = e in ("dense", "banded") if isinstance(e, str) else (
                    isinstance(e, int) and not isinstance(e, bool) and e >= 1)
                if not ok:
                    raise ValueError(f"GPTConfig: sparse_pattern[{i}] must be 'dense', 'banded' or a positive int, "
                                     f"got {e!r}")
            self.sparse_pattern = pattern  # a tuple (a list from JSON comes back equal)
        if w is None and _uses_window(pattern):
            raise ValueError(f"GPTConfig: sparse_pattern {self.sparse_pattern!r} needs attention_window (the band width)")
        if w is not None and not _uses_window(pattern):  # else the model is silently dense
            raise ValueError(f"GPTConfig: attention_window {w} is set but sparse_pattern {self.sparse_pattern!r} "
                             "bands no layer with it; choose sparse_pattern 'alternating' (GPT-3), 'banded' or "
                             "per layer, or attention_window=None for a dense model")

    def layer_window(self, layer: int) -> int | None:
        """The attention band of layer `layer` (None = dense): GPT-3 alternates dense and banded."""
        pattern = self.sparse_pattern
        if pattern == "alternating":
            return self.attention_window if layer % 2 == 1 else None
        if pattern == "banded":
            return self.attention_window
        if isinstance(pattern, tuple):
            e = pattern[layer]
            return None if e == "dense" else self.attention_window if e == "banded" else e
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

    # ------------------------------------------------------------------ GPT family presets
    @classmethod
    def gpt1(cls, **overrides) -> GPTConfig:
        """GPT-1 (Radford et al. 2018): 12 x 768, 12 heads, 512 context, 40478 BPE tokens,
        post-norm blocks and no final LayerNorm, tanh GELU, learned positions, tied head."""
        base = dict(vocab_size=40478, block_size=512, n_layer=12, n_head=12, n_embd=768, norm="post",
                    final_norm=False, gelu="tanh", position="learned", tie_weights=True, bias=True)
        return cls(**{**base, **overrides})

    @classmethod
    def gpt2(cls, size: str = "124M", **overrides) -> GPTConfig:
        """GPT-2 (Radford et al. 2019) of `size` in GPT2_SIZES: pre-norm, final LayerNorm,
        tanh GELU, learned positions, 1024 context, 50257 tokens, tied head."""
        n_layer, n_head, n_embd = _preset("gpt2", size, GPT2_SIZES)
        base = dict(vocab_size=50257, block_size=1024, n_layer=n_layer, n_head=n_head, n_embd=n_embd,
                    norm="pre", final_norm=True, gelu="tanh", position="learned", tie_weights=True, bias=True)
        return cls(**{**base, **overrides})

    @classmethod
    def gpt3(cls, size: str = "125M", **overrides) -> GPTConfig:
        """GPT-3 (Brown et al. 2020, Table 2.1) of `size` in GPT3_SIZES: GPT-2's block, 2048
        context, dense and locally banded attention alternating layer by layer.

        The paper gives no band width; the default GPT3_WINDOW = 256 keys (1/8 of the context)
        is tinygpt's choice (override attention_window=..., or sparse_pattern=...)."""
        n_layer, n_head, n_embd = _preset("gpt3", size, GPT3_SIZES)
        base = dict(vocab_size=50257, block_size=2048, n_layer=n_layer, n_head=n_head, n_embd=n_embd,
                    norm="pre", final_norm=True, gelu="tanh", position="learned", tie_weights=True, bias=True,
                    sparse_pattern="alternating", attention_window=GPT3_WINDOW)
        config = {**base, **overrides}
        if "attention_window" not in overrides and not _uses_window(config["sparse_pattern"]):
            config["attention_window"] = None  # e.g. sparse_pattern='dense': the preset's band has no use
        return cls(**config)

    def num_params(self, non_embedding: bool = False) -> int:
        """The parameter count of GPT(self), computed without allocating (a tied head counted
        once); non_embedding drops the learned position table, as GPT.num_params."""
        C, V, b = self.n_embd, self.vocab_size, int(self.bias)
        ln = C * (1 + b)  # weight (+ bias)
        attn = (C * 3 * C + 3 * C * b) + (C * C + C * b)  # c_attn, c_proj
        mlp = (C * 4 * C + 4 * C * b) + (4 * C * C + C * b)  # c_fc, c_proj
        n = V * C + self.n_layer * (2 * ln + attn + mlp)
        for i in range(self.n_layer):  # mixture-of-experts layers: E expert MLPs and a router (no bias)
            if self.layer_moe(i):
                n += (self.n_expert - 1) * mlp + C * self.n_expert
        n += ln if self.final_norm else 0
        n += 0 if self.tie_weights else V * C
        if self.position == "learned" and not non_embedding:
            n += self.block_size * C
        return n


def _uses_window(pattern) -> bool:
    """Whether sparse_pattern bands some layer with attention_window ('alternating', 'banded', or a
    per-layer 'banded'); False for anything else, invalid patterns included (checked elsewhere)."""
    entries = (pattern,) if isinstance(pattern, str) else pattern
    try:
        return any(isinstance(e, str) and e in ("alternating", "banded") for e in entries)
    except TypeError:  # not a sequence
        return False


def _preset(family: str, size: str, table: dict) -> tuple:
    if size not in table:
        raise ValueError(f"GPTConfig.{family}: unknown size {size!r}; valid sizes: {', '.join(map(repr, table))}")
    return table[size]


# (n_layer, n_head, n_embd)
GPT2_SIZES = {"124M": (12, 12, 768), "355M": (24, 16, 1024), "774M": (36, 20, 1280), "1558M": (48, 25, 1600)}
# GPT-3 paper Table 2.1. Two rows are not self-consistent there: XL lists d_model 2048 with
# 24 heads of 128 (2048 is not 24 x 128) and 13B lists d_model 5140 with 40 heads of 128
# (5140 is not divisible by 40). tinygpt keeps d_head 128 and the size: XL = 2048 with 16
# heads, 13B = 5120 with 40 heads (the 5120 used by reimplementations, e.g. OPT-13B).
GPT3_SIZES = {"125M": (12, 12, 768), "350M": (24, 16, 1024), "760M": (24, 16, 1536), "1.3B": (24, 16, 2048),
              "2.7B": (32, 32, 2560), "6.7B": (32, 32, 4096), "13B": (40, 40, 5120), "175B": (96, 96, 12288)}
GPT3_WINDOW = 256  # band of GPT-3's locally banded layers: not in the paper, tinygpt's choice
