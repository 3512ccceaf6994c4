"""GPT-1-style supervised fine-tuning: a linear classifier on the last token's hidden state.

Radford et al. 2018 ("Improving Language Understanding by Generative Pre-Training"),
section 3.2: the input goes through the pre-trained transformer, the final hidden state of
the last token h_l feeds a linear output layer, P(y | x) = softmax(h_l W_y), and training
minimises L3 = L2 (task cross-entropy) + lambda * L1 (language modelling on the same
inputs), which the paper found helps generalisation and convergence (lambda = 0.5).

Padded batches are right-padded: row b holds its `lengths[b]` real tokens first. With
causal attention a real position never attends to the padding after it, so the padding's
content changes neither the class logits nor the LM loss (its positions are ignored).
"""
from __future__ import annotations

import numpy as np

from .. import backend
from .. import functional as F
from ..nn import Dropout, Linear, Module
from ..tensor import Tensor
from .gpt import GPT


class GPTClassifier(Module):
    """A GPT body, dropout and a linear head W_y (n_embd -> n_classes) on the last real token.

    Parameters
    ----------
    gpt : GPT
        The (pre-trained) model; its ``lm_head`` gives the auxiliary LM loss.
    n_classes : int (>= 2)
    lm_weight : float (>= 0)
        lambda in L = L_task + lambda * L_LM; 0 skips the LM head entirely.
    dropout : float
        Dropout on the pooled hidden state before the head (GPT-1: 0.1).

    forward(idx, labels=None, lengths=None, attention_mask=None)
        -> (class_logits (B, n_classes), loss or None, parts {'task': Tensor, 'lm': Tensor or None})
    """

    def __init__(self, gpt: GPT, n_classes: int, lm_weight: float = 0.5, dropout: float = 0.1):
        super().__init__()
        if not isinstance(gpt, GPT):
            raise TypeError(f"GPTClassifier: gpt must be a tinygpt GPT, got {type(gpt).__name__}")
        if not isinstance(n_classes, (int, np.integer)) or n_classes < 2:
            raise ValueError(f"GPTClassifier: n_classes must be an int >= 2, got {n_classes!r}")
        if not lm_weight >= 0:
            raise ValueError(f"GPTClassifier: lm_weight must be >= 0, got {lm_weight}")
        self.n_classes, self.lm_weight = int(n_classes), float(lm_weight)
        self.gpt = gpt
        self.dropout = Dropout(dropout)
        self.head = Linear(gpt.config.n_embd, self.n_classes)  # W_y (and a bias)
        w = gpt.transformer.wte.weight
        if w.device != "cpu" or w.dtype != self.head.weight.dtype:
            self.head.to(w.device, w.dtype)

    # ------------------------------------------------------------------ inputs
    def _lengths(self, ids, lengths, attention_mask):
        """Host int64 array (B,) of real lengths, checked against the right-padding convention."""
        B, T = ids.shape
        if lengths is not None and attention_mask is not None:
            raise ValueError("GPTClassifier: pass lengths or attention_mask, not both")
        if attention_mask is not None:
            mask = backend.to_numpy(attention_mask.data if isinstance(attention_mask, Tensor) else attention_mask)
            mask = np.asarray(mask)
            if mask.shape != (B, T):
                raise ValueError(f"GPTClassifier: attention_mask must have the shape of idx {(B, T)}, got {mask.shape}")
            lengths = (mask != 0).sum(axis=1)
            if not np.array_equal(mask != 0, np.arange(T)[None, :] < lengths[:, None]):
                raise ValueError("GPTClassifier: attention_mask must be ones then zeros in every row "
                                 "(right padding: the real tokens first)")
        if lengths is None:
            return np.full(B, T, dtype=np.int64)
        lengths = backend.to_numpy(lengths.data if isinstance(lengths, Tensor) else lengths)
        lengths = np.asarray(lengths)
        if lengths.shape != (B,) or lengths.dtype.kind not in "iu":
            raise ValueError(f"GPTClassifier: lengths must be {B} ints (one per row), got shape {lengths.shape} "
                             f"dtype {lengths.dtype}")
        bad = np.flatnonzero((lengths < 1) | (lengths > T))
        if bad.size:
            raise ValueError(f"GPTClassifier: lengths[{int(bad[0])}] = {int(lengths[bad[0]])} is outside [1, {T}] "
                             f"(every row needs at least one real token)")
        return lengths.astype(np.int64)

    # ------------------------------------------------------------------ forward
    def forward(self, idx, labels=None, lengths=None, attention_mask=None):
        ids = idx.data if isinstance(idx, Tensor) else idx
        if not hasattr(ids, "dtype"):
            ids = np.asarray(ids)
        ids = self.gpt._check_idx(ids)
        B, T = ids.shape
        n = self._lengths(ids, lengths, attention_mask)
        h = self.gpt.hidden_states(ids)  # (B, T, C)
        xp = h.xp
        rows, last = xp.arange(B), xp.asarray(n - 1)
        pooled = h[rows, last]  # (B, T, C) -> (B, C): each row's last real token
        logits = self.head(self.dropout(pooled))  # (B, C) -> (B, n_classes)
        if labels is None:
            return logits, None, {}
        y = labels.data if isinstance(labels, Tensor) else labels
        y = backend.to_device(np.asarray(y) if not hasattr(y, "dtype") else y, h.device)
        if y.shape != (B,):
            raise ValueError(f"GPTClassifier: labels must have shape ({B},), got {tuple(y.shape)}")
        if y.dtype.kind not in "iu" or int(y.min()) < 0 or int(y.max()) >= self.n_classes:
            raise ValueError(f"GPTClassifier: labels must be ints in [0, {self.n_classes}), "
                             f"got dtype {y.dtype} range [{y.min()}, {y.max()}]")
        task = F.cross_entropy(logits, y.astype(np.int64))
        loss, lm = task, None
        if self.lm_weight > 0 and int(n.max()) > 1:  # at least one next-token target
            tgt = np.full((B, T), -1, dtype=np.int64)
            tgt[:, :-1] = backend.to_numpy(ids[:, 1:])  # position t predicts token t + 1
            tgt[np.arange(T)[None, :] >= (n - 1)[:, None]] = -1  # no target at or after the last real token
            lm = F.cross_entropy(self.gpt.lm_head(h), backend.to_device(tgt, h.device), ignore_index=-1)
            loss = task + lm * self.lm_weight
        return logits, loss, {"task": task, "lm": lm}

    def predict(self, idx, lengths=None, attention_mask=None) -> np.ndarray:
        """Class ids (B,) as a host array (argmax of the logits; call eval() first for no dropout)."""
        logits, _, _ = self(idx, lengths=lengths, attention_mask=attention_mask)
        return logits.numpy().argmax(axis=-1)

    def configure_optimizers(self, weight_decay: float, learning_rate: float, betas=(0.9, 0.999), eps: float = 1e-8):
        """AdamW over the trainable parameters (frozen ones left out), decay on 2-D weights only."""
        from ..optim import AdamW  # noqa: PLC0415 - optim imports nothing from models

        params = [p for p in self.parameters() if p.requires_grad]
        if not params:
            raise ValueError("GPTClassifier.configure_optimizers: every parameter is frozen")
        groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
                  {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
        return AdamW([g for g in groups if g["params"]], lr=learning_rate, betas=betas, eps=eps)

    def extra_repr(self):
        return f"n_classes={self.n_classes}, lm_weight={self.lm_weight}"
