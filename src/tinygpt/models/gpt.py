"""The GPT model: embeddings, a stack of Blocks, a final LayerNorm and a tied LM head."""
from __future__ import annotations

import numpy as np

from .. import functional as F
from .. import backend
from ..backend import array_device, device_of, to_device
from ..backend import xp as array_module
from ..nn import Block, Dropout, Embedding, LayerNorm, Linear, Module, ModuleList, sinusoidal_positions
from ..nn.moe import collect_aux_loss
from ..tensor import Tensor
from .config import GPTConfig
from .fastpath import cached_blocks
from .generation import GenerationConfig, KVCache, embedding_array, prepare_prompt, stream_tokens


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
        transformer.h = ModuleList(Block(c, layer=i) for i in range(c.n_layer))
        if c.final_norm:
            transformer.ln_f = LayerNorm(c.n_embd, bias=c.bias, eps=c.layer_norm_eps)
        self.transformer = transformer
        self.lm_head = Linear(c.n_embd, c.vocab_size, bias=False)
        if c.tie_weights:
            self.lm_head.weight = transformer.wte.weight  # one Parameter, two names
        self.moe_aux_loss = None  # the last forward's mean MoE load-balancing loss (0-d Tensor), see forward

    # ------------------------------------------------------------------ forward
    @property
    def device(self) -> str:
        """The device of the model's parameters ('cpu' or 'cuda')."""
        return device_of(embedding_array(self.transformer.wte))  # never a quantized table's dequantized .weight

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
        B, T = ids.shape
        if T > self.config.block_size:
            raise ValueError(f"GPT: sequence length {T} is longer than the context (block_size {self.config.block_size})")
        if B == 0 or T == 0:  # an error, not an empty result: a loss over no tokens would be NaN
            raise ValueError(f"GPT: empty input: idx has shape {ids.shape}; batch size and sequence length "
                             "must be at least 1")
        if backend.is_cupy_array(ids):  # on the GPU the embedding checks the range on the device (deferred)
            return ids
        lo, hi = int(ids.min()), int(ids.max())
        if lo < 0 or hi >= self.config.vocab_size:
            bad = lo if lo < 0 else hi
            raise ValueError(f"GPT: token id {bad} is out of the vocabulary [0, {self.config.vocab_size})")
        return ids

    def hidden_states(self, idx, kv_cache: KVCache | None = None) -> Tensor:
        """The final hidden states (B, T, C), before the LM head.

        kv_cache (inference, under no_grad): idx holds the next T tokens after the cache's
        `length` ones, at positions length..length+T-1; the cache is filled and advanced.
        """
        ids = self._check_idx(self._on_device(idx, "idx"))
        tr = self.transformer
        T = ids.shape[1]
        t0 = 0
        if kv_cache is not None:
            kv_cache.check(ids.shape[0], T, len(tr.h))
            t0 = kv_cache.length  # position offset of the new tokens
        tok = tr.wte(ids)  # (B, T) -> (B, T, C)
        if self.config.position == "learned":
            pos = tr.wpe(array_module(ids).arange(t0, t0 + T))  # (T, C)
        else:
            pos = Tensor._wrap(tr.wpe[t0:t0 + T])
        x = tr.drop(tok + pos)
        if kv_cache is None:
            for block in tr.h:
                x = block(x)
        else:  # inference: the blocks straight on the arrays where fastpath covers them (the same kernels)
            y = cached_blocks(tr.h, x.data, kv_cache)
            if y is not None:
                x = Tensor._wrap(y)
            else:
                for i, block in enumerate(tr.h):
                    x = block(x, kv_cache=kv_cache.layer(i))
            kv_cache.advance(T)
        if self.config.final_norm:
            x = tr.ln_f(x)
        return x

    def forward(self, idx, targets=None, ignore_index: int = -1, kv_cache: KVCache | None = None):
        x = self.hidden_states(idx, kv_cache=kv_cache)
        logits = self.lm_head(x)  # (B, T, C) -> (B, T, vocab)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits, self._on_device(targets, "targets"), ignore_index=ignore_index)
        # MoE: mean load-balancing loss of the MoE layers (None without), added to the loss in training only
        aux = collect_aux_loss(self)
        self.moe_aux_loss = None if aux is None else aux.detach()
        if loss is not None and aux is not None and self.training and self.config.moe_aux_loss_coef:
            loss = loss + self.config.moe_aux_loss_coef * aux
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

    def save_pretrained(self, path, dtype=np.float32, tokenizer=None) -> None:
        """Write config.json + model.safetensors that transformers' GPT2LMHeadModel loads (and the
        tokenizer's files, if given, so from_pretrained(path, with_tokenizer=True) reads both); see models/hf.py."""
        from . import hf  # noqa: PLC0415

        hf.save_pretrained(self, path, dtype=dtype, tokenizer=tokenizer)

    # ------------------------------------------------------------------ generation
    def generate(self, idx, *args, **kwargs):
        """Append up to max_new_tokens tokens to idx (B, T) (or (T,)); returns (B * n, T + new) of the
        kind given (Tensor or array).

        The arguments after idx are GenerationConfig's fields (their meaning is documented there), by
        position or by keyword, or one GenerationConfig: generate(idx, max_new_tokens, temperature=1.0,
        top_k=None, top_p=None, repetition_penalty=1.0, num_return_sequences=1, eos_token_id=None,
        seed=None, use_cache=True).

        Row b's n = num_return_sequences copies are rows b*n..b*n+n-1. A row that emits eos_token_id
        is padded with it, and generation stops once every row has (the result may be shorter than
        T + max_new_tokens). Prompts longer than block_size are cropped from the left for the model
        (with a warning) but returned whole. Non-finite logits raise FloatingPointError naming the step.
        """
        as_tensor = isinstance(idx, Tensor)
        out_device = array_device(idx.data if as_tensor else idx) or "cpu"  # hand the result back where it came from
        ids = prepare_prompt(idx, self.config.vocab_size, self.config.block_size)
        opts = GenerationConfig.from_args(*args, **kwargs)
        new = list(stream_tokens(self, ids, opts))
        ids = np.repeat(ids, opts.num_return_sequences, axis=0)
        if new:
            ids = np.concatenate([ids, np.stack(new, axis=1)], axis=1)
        if as_tensor:
            return Tensor(ids, device=out_device)
        return to_device(ids, out_device) if out_device != "cpu" else ids

    def stream(self, idx, *args, **kwargs):
        """generate() as an iterator (the same arguments): yields each new token batch, a (B * n,)
        int64 numpy array, as soon as it is sampled. Arguments are checked at the call, not at the
        first next()."""
        ids = prepare_prompt(idx, self.config.vocab_size, self.config.block_size)
        return stream_tokens(self, ids, GenerationConfig.from_args(*args, **kwargs))
