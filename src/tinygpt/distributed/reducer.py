"""Data-parallel gradients: bucketed all-reduce (or reduce-scatter for ZeRO-1) of flat gradient buffers,
started from the backward pass as each bucket's gradients become final.

Layout: the trainable parameters, in reverse registration order (the order in which backward finishes
them: last layer first), are packed into buckets of about `bucket_mb` MiB. Each bucket owns one flat,
contiguous gradient buffer, and every parameter's ``.grad`` is a view into it, so backward accumulates
straight into the buffer and one collective per bucket reduces it with no packing copy. With
``shard=True`` (ZeRO-1) a bucket is padded to a multiple of the world size N, each rank owns chunk
`rank` of every bucket, the gradients are reduce-scattered into that chunk, and the parameters also
live in one flat buffer per bucket (so the updated chunks are all-gathered straight into them).

Order: every rank must start the same collectives in the same order, whatever order its backward
finishes parameters in (a mixture-of-experts layer may leave an expert without tokens on one rank
only). So buckets are launched strictly in bucket order: bucket k starts once it is complete and
buckets 0..k-1 have started; `wait()` starts whatever the backward did not. Which parameters got a
gradient on any rank is reduced too, so that a parameter no rank touched has no gradient afterwards
(and is skipped by the optimiser), exactly as it would be in one process.
"""
from __future__ import annotations

import contextlib
import time

import numpy as np

from .. import backend, kernels
from ..tensor import Tensor
from . import runtime

DEFAULT_BUCKET_MB = 4.0


class _Bucket:
    __slots__ = ("index", "members", "offsets", "size", "grad", "views", "grad_tensors", "param_flat",
                 "param_views", "grad_shard", "lo", "hi", "ready", "work")

    def __init__(self, index):
        self.index, self.members, self.offsets = index, [], []
        self.ready, self.work = 0, None


class GradReducer:
    """Sums the gradients of `params` over every rank of `comm` after each step's backward.

    Parameters
    ----------
    params : Module or iterable of Parameters
        The trainable ones (requires_grad) are reduced; a parameter listed twice (tied) once.
    comm : Communicator, optional
        Default: the one of `tinygpt.distributed.init()`.
    bucket_mb : float
        Target bucket size in MiB (a larger parameter gets a bucket of its own).
    overlap : bool
        Start each bucket's collective from the backward pass as soon as it is complete (the
        default); False starts them all in `wait()`.
    shard : bool
        ZeRO-1 layout: reduce-scatter the gradients, each rank keeps the sum of its chunk only (in
        ``grad_shards``); use with `shard_optimizer`. The parameters' arrays become views into flat
        per-bucket buffers (build the reducer after moving the model to its device).

    Use (see docs/distributed.md)::

        reducer.zero_grad()                      # each step, instead of optimizer.zero_grad()
        for micro in range(accum):
            with reducer.no_sync() if micro < accum - 1 else contextlib.nullcontext():
                (loss * share / accum).backward()  # communication only in the last micro-step
        reducer.wait()                           # p.grad = the sum over ranks (replicated mode)
    """

    def __init__(self, params, comm=None, *, bucket_mb: float = DEFAULT_BUCKET_MB, overlap: bool = True,
                 shard: bool = False):
        self.comm = comm if comm is not None else runtime.comm()
        if hasattr(params, "parameters") and callable(params.parameters):
            params = params.parameters()
        seen, plist = set(), []
        for p in params:
            if not isinstance(p, Tensor):
                raise TypeError(f"GradReducer: expected Parameters, got {type(p).__name__}")
            if p.requires_grad and id(p) not in seen:
                seen.add(id(p))
                plist.append(p)
        if not plist:
            raise ValueError("GradReducer: no trainable parameters (none requires grad)")
        for p in plist:
            if p.device != self.comm.device:
                raise ValueError(f"GradReducer: a parameter is on {p.device}, the communicator on "
                                 f"{self.comm.device} (move the model before building the reducer)")
            if p.dtype.kind != "f":
                raise TypeError(f"GradReducer: parameters must be floating point, got {p.dtype}")
        if not bucket_mb > 0:
            raise ValueError(f"GradReducer: bucket_mb must be > 0, got {bucket_mb}")
        self.params, self.overlap, self.shard = plist, bool(overlap), bool(shard)
        self.bucket_bytes = int(bucket_mb * 2**20)
        self._where = {}  # id(param) -> (bucket, position in it)
        self.buckets = self._build_buckets()
        n = len(plist)
        self._param_index = {id(p): i for i, p in enumerate(plist)}
        self._touched = np.zeros(n, dtype=bool)  # got a gradient (any micro-step) since the last wait()
        self._marked = np.zeros(n, dtype=bool)   # hook fired during a synchronised backward
        self.touched = np.ones(n, dtype=bool)    # after wait(): got a gradient on any rank
        self._sync, self._next = True, 0
        self._fresh = True  # gradients since the last wait(): a second wait() would reduce sums again
        self._handles = [p.register_post_accumulate_grad_hook(self._on_grad) for p in plist]
        # timing of the last wait(): seconds blocked waiting for collectives, bytes sent into them
        self.last_wait_s, self.bytes_per_step = 0.0, sum(b.grad.nbytes for b in self.buckets)
        self.zero_grad()

    # ------------------------------------------------------------------ layout
    def _build_buckets(self):
        xp = backend.module_for(self.comm.device)
        N, r = self.comm.size, self.comm.rank
        groups, current, current_bytes = [], [], 0
        for p in reversed(self.params):
            nbytes = p.size * p.dtype.itemsize
            if current and (current_bytes + nbytes > self.bucket_bytes or p.dtype != current[0].dtype):
                groups.append(current)
                current, current_bytes = [], 0
            current.append(p)
            current_bytes += nbytes
        groups.append(current)
        buckets = []
        for k, members in enumerate(groups):
            b = _Bucket(k)
            offset = 0
            for j, p in enumerate(members):
                b.members.append(p)
                b.offsets.append(offset)
                self._where[id(p)] = (b, j)
                offset += p.size
            b.size = -(-offset // N) * N if self.shard else offset  # ZeRO: N equal chunks
            dtype = members[0].dtype
            b.grad = xp.zeros(b.size, dtype=dtype)
            b.views = [b.grad[o:o + p.size].reshape(p.shape) for o, p in zip(b.offsets, members)]
            b.grad_tensors = [Tensor._wrap(v) for v in b.views]
            b.param_flat = b.grad_shard = b.param_views = None
            chunk = b.size // N
            b.lo, b.hi = (r * chunk, (r + 1) * chunk) if self.shard else (0, b.size)
            if self.shard:
                b.param_flat = xp.zeros(b.size, dtype=dtype)
                b.param_views = []
                for o, p in zip(b.offsets, members):
                    view = b.param_flat[o:o + p.size].reshape(p.shape)
                    view[...] = p.data
                    p.data = view  # the parameter now lives in the flat buffer the all-gather fills
                    b.param_views.append(view)
                b.grad_shard = xp.zeros(chunk, dtype=dtype)
            buckets.append(b)
        return buckets

    def remove_hooks(self) -> None:
        """Stop reducing (unregister the backward hooks)."""
        for h in self._handles:
            h.remove()
        self._handles = []

    # ------------------------------------------------------------------ per step
    def zero_grad(self) -> None:
        """Zero the gradient buffers and point every ``p.grad`` at its view (call once per step before the
        first backward; ``optimizer.zero_grad()`` also works, at the cost of one copy per parameter)."""
        for b in self.buckets:
            b.grad.fill(0)
            for p, t in zip(b.members, b.grad_tensors):
                p.grad = t
        self._touched[:] = False
        self._fresh = True

    @contextlib.contextmanager
    def no_sync(self):
        """Backward passes inside only accumulate into the buffers (gradient accumulation's early
        micro-steps); the next synchronised backward (or `wait()`) reduces the total once."""
        previous, self._sync = self._sync, False
        try:
            yield
        finally:
            self._sync = previous

    def _on_grad(self, p) -> None:
        """Backward hook: p's gradient of this pass is final (and in p.grad)."""
        b, j = self._where[id(p)]
        i = self._param_index[id(p)]
        view = b.views[j]
        if p.grad.data is not view:  # .grad was reset to None (optimizer.zero_grad) or replaced: adopt it
            view[...] = p.grad.data
            p.grad = b.grad_tensors[j]
        self._touched[i] = True
        self._fresh = True
        if not self._sync:
            return
        if self._marked[i]:
            raise RuntimeError("GradReducer: a parameter received gradients from two synchronised backward passes "
                               "in one step; run the earlier micro-steps' backward inside reducer.no_sync()")
        self._marked[i] = True
        b.ready += 1
        if self.overlap:
            self._launch_ready()
        self._progress()

    def _launch_ready(self) -> None:
        buckets = self.buckets
        while self._next < len(buckets) and buckets[self._next].ready == len(buckets[self._next].members):
            self._start(buckets[self._next])
            self._next += 1

    def _start(self, b) -> None:
        for j, p in enumerate(b.members):  # a view no backward wrote since the last step may hold old values
            if not self._touched[self._param_index[id(p)]]:
                b.views[j].fill(0)
        if self.shard:
            b.work = self.comm.reduce_scatter(b.grad, b.grad_shard)
        else:
            b.work = self.comm.all_reduce(b.grad)

    def _progress(self) -> None:
        """Let MPI move the started collectives on (it progresses only inside MPI calls)."""
        for b in self.buckets[:self._next]:
            if b.work is not None and not b.work.test():
                break

    def wait(self) -> None:
        """Finish the step's reduction: start the buckets not started yet, wait for all of them (bounded by
        the communicator's timeout), and drop the gradient of every parameter that got none on any rank."""
        if not self._fresh:
            raise RuntimeError("GradReducer.wait: no gradients since the last wait() (reducing the sums again would "
                               "multiply them by the world size); call zero_grad() and backward() first")
        t0 = time.perf_counter()
        while self._next < len(self.buckets):
            self._start(self.buckets[self._next])
            self._next += 1
        for b in self.buckets:
            b.work.wait()
            b.work, b.ready = None, 0
        self.last_wait_s = time.perf_counter() - t0
        self.touched = self.comm.host_all_reduce(self._touched.astype(np.uint8), "max").astype(bool)
        for b in self.buckets:
            for j, p in enumerate(b.members):
                # ZeRO-1: p.grad holds only this rank's contribution; the sums are in grad_shards
                if self.shard or not self.touched[self._param_index[id(p)]]:
                    p.grad = None
        self._next = 0
        self._marked[:] = False
        self._touched[:] = False
        self._fresh = False

    # ------------------------------------------------------------------ after wait()
    @property
    def grad_shards(self) -> list:
        """ZeRO-1: this rank's chunk of every bucket's summed gradient (flat arrays)."""
        if not self.shard:
            raise RuntimeError("grad_shards: the reducer was built with shard=False")
        return [b.grad_shard for b in self.buckets]

    def clip_grad_norm_(self, max_norm: float, norm_type: float = 2.0) -> float:
        """Scale the reduced gradients so that their global norm is at most `max_norm` (torch semantics);
        returns the global norm before clipping, the same on every rank.

        Replicated: every rank holds the whole sum, so this is `nn.utils.clip_grad_norm_` on it (the
        same arithmetic as one process). ZeRO-1: each rank's chunk's partial norm, reduced over ranks.
        """
        if not self.shard:
            from ..nn.utils import clip_grad_norm_  # noqa: PLC0415 - nn imports the model layers

            return float(clip_grad_norm_(self.params, max_norm, norm_type))
        norm_type = float(norm_type)
        if norm_type not in (2.0, float("inf")):
            raise ValueError(f"clip_grad_norm_: ZeRO-1 supports norm_type 2 or inf, got {norm_type}")
        shards = [g for g in self.grad_shards if g.size]
        fused = kernels.grad_norm(shards, norm_type) if shards else None
        if fused is not None:
            local = float(fused)
        elif norm_type == 2.0:
            local = sum(float((g.astype(np.float64) ** 2).sum()) for g in shards)
        else:
            local = max((float(abs(g).max()) for g in shards), default=0.0)
        op = "sum" if norm_type == 2.0 else "max"
        total = float(self.comm.host_all_reduce(np.array([local], dtype=np.float64), op)[0])
        if norm_type == 2.0:
            total = total ** 0.5
        coef = max_norm / (total + 1e-6)
        if not coef >= 1.0:
            kernels.grad_scale_(shards, coef)
        return total
