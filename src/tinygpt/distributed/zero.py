"""ZeRO-1: AdamW with its moments sharded across ranks (Rajbhandari et al. 2020, stage 1).

Each rank keeps exp_avg and exp_avg_sq only for its chunk of every gradient bucket (1/N of the
optimiser state), updates only that chunk of the parameters from the reduce-scattered gradient sum,
and the chunks are then all-gathered into every rank's parameters. The update of each element is the
same fused AdamW arithmetic as the replicated optimiser's, so the two agree to the summation order of
the reduction.

The optimiser stays a `tinygpt.optim.AdamW` (its param_groups, lr schedule and class name are
unchanged): `shard_optimizer` hands its step and state to a `ZeroShard`. `state_dict()` gathers the
chunks back into exactly plain AdamW's format (per-parameter step, exp_avg, exp_avg_sq), so a checkpoint
is the same file whatever the world size and sharding, and `load_state_dict` takes such a state on any
number of ranks, each keeping its chunk.
"""
from __future__ import annotations

import contextlib

from .. import backend, kernels
from ..optim import AdamW
from ..optim.optimizer import Optimizer


def shard_optimizer(optimizer: AdamW, reducer) -> AdamW:
    """Turn `optimizer` (an AdamW over the reducer's parameters) into ZeRO-1 on the reducer's ranks; returns it.

    Any state it already has (e.g. just loaded from a checkpoint) is split into the shards.
    """
    if type(optimizer) is not AdamW:
        raise TypeError(f"shard_optimizer: ZeRO-1 is implemented for AdamW, got {type(optimizer).__name__}")
    if not reducer.shard:
        raise ValueError("shard_optimizer: the reducer must be built with shard=True (reduce-scatter layout)")
    if optimizer._sharded is not None:
        raise ValueError("shard_optimizer: this optimiser is sharded already")
    optimizer._sharded = ZeroShard(optimizer, reducer)
    return optimizer


class ZeroShard:
    """The per-rank part of a ZeRO-1 AdamW: moments for this rank's chunks, per-parameter step counts."""

    def __init__(self, optimizer: AdamW, reducer):
        self.opt, self.reducer, self.comm = optimizer, reducer, reducer.comm
        params = optimizer._params()
        self.index = {id(p): i for i, p in enumerate(params)}  # the optimiser's (state_dict's) numbering
        group_of = {id(p): g for g, group in enumerate(optimizer.param_groups) for p in group["params"]}
        reduced = {id(p) for p in reducer.params}
        trainable = {id(p) for p in params if p.requires_grad}
        if reduced != trainable:
            raise ValueError(f"shard_optimizer: the optimiser trains {len(trainable)} parameters, the reducer reduces "
                             f"{len(reduced)}; they must be the same parameters")
        xp = backend.module_for(self.comm.device)
        # per bucket: moments of this rank's chunk; segments (param, group, chunk start, chunk stop, start in param)
        self.exp_avg, self.exp_avg_sq, self.segments = [], [], []
        for b in reducer.buckets:
            chunk = b.hi - b.lo
            self.exp_avg.append(xp.zeros(chunk, dtype=b.grad.dtype))
            self.exp_avg_sq.append(xp.zeros(chunk, dtype=b.grad.dtype))
            segs = []
            for p, o in zip(b.members, b.offsets):
                lo, hi = max(o, b.lo), min(o + p.size, b.hi)
                if lo < hi:
                    segs.append((p, group_of[id(p)], lo - b.lo, hi - b.lo, lo - o))
            self.segments.append(segs)
        self.steps = {i: 0 for i in range(len(params))}
        self._snapshot = None  # the gathered state inside gathered_state()
        if optimizer.state:  # e.g. loaded before sharding: keep it, split into chunks
            self._take_shards()

    # ------------------------------------------------------------------ update
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for b in self.reducer.buckets:
            for p, view in zip(b.members, b.param_views):
                if p.data is not view:
                    raise RuntimeError("ZeRO-1: a parameter's array was replaced after the reducer was built (e.g. by "
                                       "model.to()); build the GradReducer after moving the model")
        touched = self.reducer.touched  # got a gradient on some rank this step
        stepped = set()
        for p, t in zip(self.reducer.params, touched):
            if t:
                self.steps[self.index[id(p)]] += 1
                stepped.add(id(p))
        for k, b in enumerate(self.reducer.buckets):
            by_key = {}  # (group, step) -> lists of param, grad, exp_avg, exp_avg_sq slices
            pf, gs, m, v = b.param_flat, b.grad_shard, self.exp_avg[k], self.exp_avg_sq[k]
            for p, g, s, e, _ in self.segments[k]:
                if id(p) not in stepped:
                    continue
                lists = by_key.setdefault((g, self.steps[self.index[id(p)]]), ([], [], [], []))
                for lst, a in zip(lists, (pf[b.lo + s:b.lo + e], gs[s:e], m[s:e], v[s:e])):
                    lst.append(a)
            for (g, step), lists in by_key.items():
                group = self.opt.param_groups[g]
                beta1, beta2 = group["betas"]
                kernels.adamw_multi_step(*lists, lr=group["lr"], beta1=beta1, beta2=beta2, eps=group["eps"],
                                         weight_decay=group["weight_decay"], step=step)
        works = [self.comm.all_gather(b.param_flat) for b in self.reducer.buckets]
        for w in works:
            w.wait()
        return loss

    # ------------------------------------------------------------------ state
    def state_nbytes(self) -> int:
        """Bytes of optimiser state this rank holds (the moments of its chunks)."""
        return sum(a.nbytes for a in self.exp_avg + self.exp_avg_sq)

    def state_dict(self) -> dict:
        """Plain AdamW's state_dict, gathered from every rank's chunks (a collective: call it on every rank,
        or inside `gathered_state`, which gathers once so that rank 0 alone can then save)."""
        if self._snapshot is not None:
            return self._snapshot
        xp = backend.module_for(self.comm.device)
        state = {}
        for k, b in enumerate(self.reducer.buckets):
            full = []
            for shard in (self.exp_avg[k], self.exp_avg_sq[k]):
                whole = xp.zeros(b.size, dtype=shard.dtype)
                whole[b.lo:b.hi] = shard
                full.append((whole, self.comm.all_gather(whole)))
            for _, work in full:
                work.wait()
            for p, o in zip(b.members, b.offsets):
                i = self.index[id(p)]
                if self.steps[i]:
                    state[i] = {"step": self.steps[i],
                                "exp_avg": full[0][0][o:o + p.size].reshape(p.shape).copy(),
                                "exp_avg_sq": full[1][0][o:o + p.size].reshape(p.shape).copy()}
        return {"state": dict(sorted(state.items())), "param_groups": self.opt._groups_state()}

    def load_state_dict(self, state_dict: dict) -> None:
        """Take plain AdamW's state_dict (from any world size); keep this rank's chunks of it."""
        Optimizer._restore(self.opt, state_dict)  # validation, group options, full per-parameter arrays
        self._take_shards()

    def _take_shards(self) -> None:
        """Move `opt.state` (full per-parameter arrays) into this rank's chunks and free it."""
        state = self.opt.state
        for p in self.opt._params():
            entry = state.get(id(p))
            self.steps[self.index[id(p)]] = int(entry["step"]) if entry else 0
        for k, _ in enumerate(self.reducer.buckets):
            for p, _, s, e, start in self.segments[k]:
                entry = state.get(id(p))
                for shard, key in ((self.exp_avg[k], "exp_avg"), (self.exp_avg_sq[k], "exp_avg_sq")):
                    if entry is None:
                        shard[s:e] = 0
                    else:
                        shard[s:e] = entry[key].reshape(-1)[start:start + (e - s)]
        self.opt.state = {}


def optimizer_state_nbytes(optimizer) -> int:
    """Bytes of optimiser state (arrays) this process holds: all of it for a plain optimiser, this rank's
    chunks for a sharded one."""
    if getattr(optimizer, "_sharded", None) is not None:
        return optimizer._sharded.state_nbytes()
    return sum(v.nbytes for st in optimizer.state.values() for v in st.values() if hasattr(v, "nbytes"))



@contextlib.contextmanager
def gathered_state(optimizer):
    """Gather a sharded optimiser's state once, on every rank (a collective), so that inside the block
    ``optimizer.state_dict()`` needs no communication: rank 0 can write the checkpoint alone::

        with dist.gathered_state(optimizer):   # every rank
            if dist.is_main():
                save_checkpoint(path, model, optimizer, ...)

    A no-op for an optimiser that is not sharded.
    """
    shard = getattr(optimizer, "_sharded", None)
    if shard is None:
        yield
        return
    shard._snapshot = shard.state_dict()
    try:
        yield
    finally:
        shard._snapshot = None
