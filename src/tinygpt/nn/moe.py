"""Mixture-of-experts MLP (Switch Transformer / GShard / Mixtral style), experts batched.

A router Linear(C, E) scores each token, softmax gives probabilities p (N, E), and each
token goes to its top-k experts (k = 1: Switch; k = 2: GShard, Mixtral). With k = 2 the two
gates are renormalised to sum to 1 (p_a / (p_a + p_b), as Mixtral); with k = 1 the gate is
the raw probability p_a (as Switch, so the router still gets a gradient from the output).

Capacity: every expert takes at most `capacity = ceil(capacity_factor * N * k / E)` tokens
(N = tokens in the batch). Priority is deterministic: all first choices before any second
choice (GShard), and within one rank tokens in flattened (batch, time) order. Assignments
over capacity are dropped: their contribution is 0, so the residual stream carries those
tokens unchanged through this layer. capacity_factor = 0 is "dropless" (as Mixtral or
MegaBlocks): the capacity is the busiest expert's load, so nothing is dropped and a token's
output no longer depends on the other tokens in the batch (at the cost of E * max-load rows).

Compute: tokens are gathered into an (E, capacity, C) buffer and each expert projection is
ONE batched matmul, (E, cap, C) @ (E, C, 4C), so the work is E * cap ~ capacity_factor * N * k
rows, independent of E. The gather (getitem with index arrays) has a scatter-add backward,
so gradients reach the inputs, the experts and (through the gates) the router.

Load balancing (Switch Transformer eq. 4): aux = E * sum_i f_i * P_i, with f_i the fraction
of the N * k router assignments that chose expert i (before capacity dropping; with k = 1 the
fraction of tokens whose top choice is i) and P_i the mean router probability of expert i.
f is a constant (argmax has no gradient); P carries the gradient into the router. aux is 1
for a perfectly uniform router and grows to E when everything goes to one expert.
"""
from __future__ import annotations

import math

import numpy as np

from .. import functional as F
from ..backend import xp as array_module
from ..tensor import Tensor
from .layers import Dropout, Linear, _normal
from .module import Module, Parameter


class ExpertLinear(Module):
    """E independent Linear layers applied as one batched matmul: (E, M, in) -> (E, M, out).

    weight has shape (E, in, out) (stored input-major so x @ weight needs no transpose;
    note: transposed relative to Linear's (out, in)), bias (E, out).
    """

    def __init__(self, n_expert: int, in_features: int, out_features: int, bias: bool = True, std: float = 0.02):
        super().__init__()
        self.n_expert, self.in_features, self.out_features = n_expert, in_features, out_features
        self.weight = Parameter(_normal((n_expert, in_features, out_features), std))
        self.bias = Parameter(np.zeros((n_expert, out_features), dtype=np.float32)) if bias else None

    def forward(self, x):
        E, _, C = x.shape
        if E != self.n_expert or C != self.in_features:
            raise ValueError(f"ExpertLinear: input {x.shape} does not match (n_expert, tokens, in) = "
                             f"({self.n_expert}, *, {self.in_features})")
        y = x @ self.weight  # (E, M, in) @ (E, in, out) -> (E, M, out)
        if self.bias is not None:
            y = y + self.bias.reshape(E, 1, self.out_features)
        return y

    def extra_repr(self):
        return f"{self.n_expert} x ({self.in_features}, {self.out_features}), bias={self.bias is not None}"


def expert_capacity(n_tokens: int, n_expert: int, top_k: int, capacity_factor: float) -> int:
    """Slots per expert: ceil(capacity_factor * tokens * k / n_expert), at least 1."""
    return max(1, math.ceil(capacity_factor * n_tokens * top_k / n_expert))


def route(probs, top_k: int, capacity: int | None):
    """Top-k experts per token and their slots, from router probabilities probs (N, E) (raw array).

    Returns (experts (N, k) int, slots (N, k) int, keep (N, k) bool, capacity): token n's j-th
    choice is expert experts[n, j], in row slots[n, j] of that expert's buffer when keep[n, j].
    Ties pick the lower expert index. Priority: rank j = 0 for all tokens, then j = 1 (each in
    token order); a choice whose running count at its expert reaches `capacity` is dropped.
    capacity None = dropless: the capacity is the busiest expert's load, nothing is dropped.
    """
    xp = array_module(probs)
    N, E = probs.shape
    first = xp.argmax(probs, axis=-1)  # (N,)  first maximum = lowest index on ties
    choices = [first]
    if top_k == 2:
        masked = probs.copy()
        masked[xp.arange(N), first] = -1.0
        choices.append(xp.argmax(masked, axis=-1))
    experts = xp.stack(choices, axis=1)  # (N, k)
    order = experts.T.reshape(-1)  # (k * N,) rank-major: all first choices, then all second choices
    onehot = (order[:, None] == xp.arange(E)[None, :]).astype(xp.int64)  # (k*N, E)
    position = (xp.cumsum(onehot, axis=0) - onehot)[xp.arange(order.size), order]  # earlier picks of that expert
    position = position.reshape(top_k, N).T  # (k*N,) -> (N, k)
    if capacity is None:
        capacity = int(position.max()) + 1
    keep = position < capacity
    slots = xp.where(keep, position, 0)
    return experts, slots, keep, capacity


class MoE(Module):
    """Top-k mixture of `n_expert` GELU MLPs (C -> 4C -> C) with capacity and a load-balancing loss.

    forward(x (B, T, C)) -> (B, T, C). After each call `self.aux_loss` holds this layer's
    load-balancing loss (a 0-d Tensor connected to the router) and `self.stats` a dict with
    'capacity', 'tokens_per_expert' (router choices, before dropping) and 'dropped' (count).
    """

    def __init__(self, n_embd: int, n_expert: int, top_k: int = 2, capacity_factor: float = 1.25,
                 dropout: float = 0.0, bias: bool = True, proj_std: float = 0.02, approximate: str = "tanh"):
        super().__init__()
        if not isinstance(n_expert, int) or n_expert < 1:
            raise ValueError(f"MoE: n_expert must be a positive int, got {n_expert!r}")
        if top_k not in (1, 2) or top_k > n_expert:
            raise ValueError(f"MoE: top_k must be 1 or 2 (and <= n_expert {n_expert}), got {top_k!r}")
        if not capacity_factor >= 0:
            raise ValueError(f"MoE: capacity_factor must be > 0 (or 0: dropless), got {capacity_factor!r}")
        self.n_embd, self.n_expert, self.top_k, self.capacity_factor = n_embd, n_expert, top_k, capacity_factor
        self.approximate = approximate
        self.router = Linear(n_embd, n_expert, bias=False)
        self.c_fc = ExpertLinear(n_expert, n_embd, 4 * n_embd, bias=bias)
        self.c_proj = ExpertLinear(n_expert, 4 * n_embd, n_embd, bias=bias, std=proj_std)
        self.dropout = Dropout(dropout)
        self.aux_loss = None
        self.stats = {}

    def forward(self, x):
        B, T, C = x.shape
        N, E, k = B * T, self.n_expert, self.top_k
        xf = x.reshape(N, C)  # (B, T, C) -> (N, C)
        probs = F.softmax(self.router(xf), axis=-1)  # (N, E)
        cap = expert_capacity(N, E, k, self.capacity_factor) if self.capacity_factor else None
        experts, slots, keep, cap = route(probs.data, k, cap)  # (N, k) each, raw arrays
        xp = array_module(probs.data)
        rows = xp.arange(N)[:, None]
        gates = probs[rows, experts]  # (N, k)
        if k == 2:
            gates = gates / gates.sum(axis=-1, keepdims=True)  # renormalise the two gates

        # dispatch: slot (e, s) holds token index; empty slots read token 0 and are never combined
        token_of_slot = xp.zeros((E, cap), dtype=xp.int64)
        token_of_slot[experts[keep], slots[keep]] = xp.broadcast_to(rows, (N, k))[keep]
        h = xf[token_of_slot]  # (N, C) -> (E, cap, C)
        h = F.gelu(self.c_fc(h), self.approximate)  # (E, cap, C) -> (E, cap, 4C)
        out = self.c_proj(h)  # (E, cap, 4C) -> (E, cap, C)

        # combine: y_n = sum_j keep_nj * gate_nj * out[e_nj, s_nj]
        picked = out.reshape(E * cap, C)[experts * cap + slots]  # (E*cap, C) -> (N, k, C)
        weights = gates * keep.astype(probs.dtype)  # dropped choices weigh 0
        y = (picked * weights.reshape(N, k, 1)).sum(axis=1)  # (N, k, C) -> (N, C)

        counts = xp.bincount(experts.reshape(-1), minlength=E)  # (E,) router choices before dropping
        f = (counts / (N * k)).astype(probs.dtype)
        self.aux_loss = (probs.mean(axis=0) * f).sum() * E  # E * sum_i f_i P_i
        self.stats = {"capacity": cap, "tokens_per_expert": counts, "dropped": int((~keep).sum())}
        return self.dropout(y.reshape(B, T, C))  # (N, C) -> (B, T, C)

    def extra_repr(self):
        return (f"n_embd={self.n_embd}, n_expert={self.n_expert}, top_k={self.top_k}, "
                f"capacity_factor={self.capacity_factor}")


def collect_aux_loss(model: Module) -> Tensor | None:
    """Mean of the MoE layers' aux losses from their last forward (None without MoE layers).

    Each layer's `aux_loss` is replaced by a detached copy, so no graph outlives the step.
    """
    losses = []
    for m in model.modules():
        if isinstance(m, MoE) and m.aux_loss is not None:
            losses.append(m.aux_loss)
            m.aux_loss = m.aux_loss.detach()
    if not losses:
        return None
    total = losses[0]
    for a in losses[1:]:
        total = total + a
    return total / len(losses)
