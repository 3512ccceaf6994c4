"""The GPT model: embeddings, a stack of Blocks, a final LayerNorm and a tied LM head."""
from __future__ import annotations

import numpy as np

from .. import functional as F
from .. import random as _random
from ..autograd import no_grad
from ..backend import array_device, to_device, to_numpy
from ..nn import Block, Dropout, Embedding, LayerNorm, Linear, Module, ModuleList, sinusoidal_positions
from ..tensor import Tensor
from .config import GPTConfig


class GPT(Module):
    """A decoder-only transformer with GPT-2's parameter names (as nanoGPT).

    forward(idx, targets=None) -> (logits (B, T, vocab), loss or None).
    """

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        c = config
        transformer = Module()
        transformer.wte = Embedding(c.vocab_size, c.n_embd)
        if c.position == "learned":
            transformer.wpe = Embedding(c.block_size, c.n_embd)
        else:
            transformer.register_buffer("wpe", sinusoidal_positions(c.block_size, c.n_embd), persistent=False)
        transformer.drop = Dropout(c.dropout)
        transformer.h = ModuleList(
            Block(c.n_embd, c.n_head, c.dropout, c.bias, c.norm, c.layer_window(i), c.n_layer, gelu=c.gelu,
                  eps=c.layer_norm_eps)
            for i in range(c.n_layer)
        )
        if c.final_norm:
            transformer.ln_f = LayerNorm(c.n_embd, bias=c.bias, eps=c.layer_norm_eps)
        self.transformer = transformer
        self.lm_head = Linear(c.n_embd, c.vocab_size, bias=False)
        if c.tie_weights:
            self.lm_head.weight = transformer.wte.weight  # one Parameter, two names

    # ------------------------------------------------------------------ forward
    @property
    def device(self) -> str:
        """The device of the model's parameters ('cpu' or 'cuda')."""
        return self.transformer.wte.weight.device

    def _on_device(self, ids, what: str):
        """Token ids as a raw array on the model's device: host arrays and lists are moved there,
        a Tensor must already be on it (as torch)."""
        device = self.device
        if isinstance(ids, Tensor):
            if ids.device != device:
                raise ValueError(f"GPT: {what} is on {ids.device} but the model is on {device}; "
                                 f"move it with .to('{device}') (or pass a numpy array)")
            return ids.data
        if array_device(ids) is None:
            ids = np.asarray(ids)
        return to_device(ids, device)

    def _check_idx(self, idx):
        ids = idx.data if isinstance(idx, Tensor) else idx
        if not hasattr(ids, "dtype"):
            ids = np.asarray(ids)
        if ids.dtype.kind not in "iu":
            raise TypeError(f"GPT: token ids must be integers, got dtype {ids.dtype}")
        if ids.ndim != 2:
            raise ValueError(f"GPT: idx must have shape (batch, time), got {ids.shape}")
        T = ids.shape[1]
        if T > self.config.block_size:
            raise ValueError(f"GPT: sequence length {T} is longer than the context (block_size {self.config.block_size})")
        if T == 0:
            raise ValueError("GPT: empty sequence (time dimension 0)")
        lo, hi = int(ids.min()), int(ids.max())
        if lo < 0 or hi >= self.config.vocab_size:
            bad = lo if lo < 0 else hi
            raise ValueError(f"GPT: token id {bad} is out of the vocabulary [0, {self.config.vocab_size})")
        return ids

    def hidden_states(self, idx) -> Tensor:
        """The final hidden states (B, T, C), before the LM head."""
        ids = self._check_idx(self._on_device(idx, "idx"))
        tr = self.transformer
        T = ids.shape[1]
        tok = tr.wte(ids)  # (B, T) -> (B, T, C)
        if self.config.position == "learned":
            pos = tr.wpe(tr.wpe.weight.xp.arange(T))  # (T, C)
        else:
            pos = Tensor._wrap(tr.wpe[:T])
        x = tr.drop(tok + pos)
        for block in tr.h:
            x = block(x)
        if self.config.final_norm:
            x = tr.ln_f(x)
        return x

    def forward(self, idx, targets=None, ignore_index: int = -1):
        x = self.hidden_states(idx)
        logits = self.lm_head(x)  # (B, T, C) -> (B, T, vocab)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits, self._on_device(targets, "targets"), ignore_index=ignore_index)
        return logits, loss

    # ------------------------------------------------------------------ bookkeeping
    def num_params(self, non_embedding: bool = False) -> int:
        """Parameter count (a tied head counted once); non_embedding drops learned positions, as nanoGPT."""
        n = self.num_parameters()
        if non_embedding and self.config.position == "learned":
            n -= self.transformer.wpe.weight.size
        return n

    def flops_per_token(self) -> int:
        """Training FLOPs per token (forward + backward), PaLM appendix B: 6N + 12 L H Q T."""
        c = self.config
        return 6 * self.num_params() + 12 * c.n_layer * c.n_head * (c.n_embd // c.n_head) * c.block_size

    def estimate_mfu(self, fwdbwd_per_iter: int, dt: float, peak_flops: float = 312e12) -> float:
        """Model FLOPs utilisation: achieved FLOP/s over `peak_flops` (default: A100 bf16, as nanoGPT)."""
        flops_per_iter = self.flops_per_token() * self.config.block_size * fwdbwd_per_iter
        return flops_per_iter / dt / peak_flops

    def configure_optimizers(self, weight_decay: float, learning_rate: float, betas=(0.9, 0.999), eps: float = 1e-8):
        """AdamW with weight decay on 2-D weights only (matmuls, embeddings), none on biases and norms."""
        from ..optim import AdamW  # noqa: PLC0415 - optim imports nothing from models

        params = self.parameters()
        decay = [p for p in params if p.ndim >= 2]
        no_decay = [p for p in params if p.ndim < 2]
        groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        return AdamW(groups, lr=learning_rate, betas=betas, eps=eps)

    # ------------------------------------------------------------------ Hugging Face GPT-2 files
    @classmethod
    def from_pretrained(cls, path, **overrides) -> GPT:
        """A GPT from a Hugging Face GPT-2 directory (config.json + model.safetensors); see models/hf.py."""
        from . import hf  # noqa: PLC0415

        return hf.from_pretrained(cls, path, **overrides)

    def save_pretrained(self, path, dtype=np.float32) -> None:
        """Write config.json + model.safetensors that transformers' GPT2LMHeadModel loads; see models/hf.py."""
        from . import hf  # noqa: PLC0415

        hf.save_pretrained(self, path, dtype=dtype)

    # ------------------------------------------------------------------ generation
    def generate(self, idx, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
                 top_p: float | None = None, seed: int | None = None):
        """Append `max_new_tokens` sampled tokens to idx (B, T). temperature 0 = greedy.

        Returns the same kind as given (Tensor or array). Contexts longer than block_size
        are cropped to the last block_size tokens.
        """
        if max_new_tokens < 0:
            raise ValueError(f"generate: max_new_tokens must be >= 0, got {max_new_tokens}")
        if temperature < 0:
            raise ValueError(f"generate: temperature must be >= 0, got {temperature}")
        if top_k is not None and top_k < 1:
            raise ValueError(f"generate: top_k must be >= 1, got {top_k}")
        if top_p is not None and not 0.0 < top_p <= 1.0:
            raise ValueError(f"generate: top_p must be in (0, 1], got {top_p}")
        as_tensor = isinstance(idx, Tensor)
        raw = idx.data if as_tensor else idx
        out_device = array_device(raw) or "cpu"  # hand the result back where the input was
        ids = np.array(to_numpy(raw), dtype=np.int64)  # the running sequence stays on the host
        if ids.ndim == 1:
            ids = ids[None, :]
        self._check_idx(ids[:, -self.config.block_size:])
        rng = np.random.default_rng(seed) if seed is not None else _random.generator()
        was_training = self.training
        self.eval()
        try:
            with no_grad():
                for _ in range(max_new_tokens):
                    cond = to_device(ids[:, -self.config.block_size:], self.device)  # (B, <=T) ids to the model
                    logits, _ = self(cond)
                    last = to_numpy(logits.data[:, -1, :]).astype(np.float64)  # (B, vocab)
                    ids = np.concatenate([ids, sample_next(last, temperature, top_k, top_p, rng)[:, None]], axis=1)
        finally:
            self.train(was_training)
        if as_tensor:
            return Tensor(ids, device=out_device)
        return to_device(ids, out_device) if out_device != "cpu" else ids


def sample_next(logits: np.ndarray, temperature: float, top_k: int | None, top_p: float | None,
                rng: np.random.Generator) -> np.ndarray:
    """One token per row from logits (B, vocab): greedy at temperature 0, else top-k / nucleus sampling."""
    if temperature == 0:
        return logits.argmax(axis=-1)
    logits = logits / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = np.partition(logits, -top_k, axis=-1)[:, -top_k][:, None]
        logits = np.where(logits < kth, -np.inf, logits)
    probs = np.exp(logits - logits.max(axis=-1, keepdims=True))
    probs /= probs.sum(axis=-1, keepdims=True)
    if top_p is not None and top_p < 1.0:
        order = np.argsort(-probs, axis=-1)
        sorted_p = np.take_along_axis(probs, order, axis=-1)
        # keep the smallest prefix whose mass reaches top_p (always at least the top token)
        drop_sorted = np.cumsum(sorted_p, axis=-1) - sorted_p >= top_p
        drop = np.zeros_like(drop_sorted)
        np.put_along_axis(drop, order, drop_sorted, axis=-1)
        probs = np.where(drop, 0.0, probs)
        probs /= probs.sum(axis=-1, keepdims=True)
    cdf = np.cumsum(probs, axis=-1)
    u = rng.random((probs.shape[0], 1)) * cdf[:, -1:]  # scaled by the total so rounding cannot overshoot
    return (cdf <= u).sum(axis=-1)  # first index whose cdf exceeds u: always a token with p > 0
