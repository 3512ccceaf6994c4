"""Data-parallel training over MPI (CPU processes, mpi4py) and NCCL (GPUs, CuPy), with ZeRO-1.

    mpiexec -n 4 python train.py           # any MPI launcher: mpiexec, mpirun, srun

One process per rank; every rank holds the whole model, takes its slice of each global batch (drawn
from one seeded stream that all ranks share), and the gradients are summed over ranks, so N ranks
train the same model as one process with the same global batch (to float32 summation order). See
docs/distributed.md for the API with a complete training loop, the semantics and the scaling analysis.

Public API::

    init(), comm(), rank(), world_size(), local_rank(), is_main(), print0(), shutdown()
    broadcast_parameters(model), verify_replicas(model)         # identical starting weights
    batch_slice(n), local_batch(x, y)                           # this rank's rows of a global batch
    GradReducer(model, shard=False)                             # bucketed, overlapped all-reduce
    shard_optimizer(adamw, reducer)                             # ZeRO-1 (reducer built with shard=True)
    gathered_state(optimizer)                                   # gather ZeRO-1 state once; rank 0 saves
    all_reduce(values, op), evaluate(model, batches)            # host reductions, split evaluation
    batch_rows(row_offset), dropout_seed(seed, shape, row_offset)  # dropout masks independent of N

`import tinygpt` never imports this package's MPI or NCCL parts; without a launcher `init()` returns
a one-process group that needs neither.
"""
from __future__ import annotations

import hashlib

import numpy as np

from .. import backend
from ..kernels import reference
from ..random import batch_rows
from ..tensor import Tensor
from .comm import (Communicator, DistributedError, DistributedTimeout, LocalComm, MPIComm, NCCLComm,  # noqa: F401
                   Work)
from .reducer import DEFAULT_BUCKET_MB, GradReducer
from . import runtime
from .runtime import (comm, describe_ranks, init, install_fault_handler, is_initialized, is_main,  # noqa: F401
                      launched_by_mpi, local_rank, local_world_size, print0, rank, shutdown, world_size)
from .zero import ZeroShard, gathered_state, optimizer_state_nbytes, shard_optimizer

__all__ = [
    "init", "comm", "rank", "world_size", "local_rank", "local_world_size", "is_main", "is_initialized",
    "print0", "shutdown", "launched_by_mpi", "describe_ranks", "install_fault_handler",
    "Communicator", "LocalComm", "MPIComm", "NCCLComm", "Work", "DistributedError", "DistributedTimeout",
    "broadcast_parameters", "verify_replicas", "batch_slice", "local_batch", "all_reduce", "evaluate",
    "GradReducer", "DEFAULT_BUCKET_MB", "shard_optimizer", "ZeroShard", "gathered_state", "optimizer_state_nbytes",
    "dropout_seed", "batch_rows",
]


def _arrays(model_or_params):
    """(name, array) pairs: a Module's state_dict (parameters and persistent buffers), or params by position."""
    if hasattr(model_or_params, "state_dict") and callable(model_or_params.state_dict):
        return list(model_or_params.state_dict().items())
    out, seen = [], set()
    for i, p in enumerate(model_or_params):
        a = p.data if isinstance(p, Tensor) else p
        if id(a) not in seen:
            seen.add(id(a))
            out.append((f"params[{i}]", a))
    return out


def broadcast_parameters(model_or_params, root: int = 0, verify: bool = True, comm=None) -> None:
    """Copy rank `root`'s parameters (and persistent buffers, for a Module) into every rank's, in place.

    With verify (the default) every rank then checks that all ranks hold identical bytes
    (`verify_replicas`), so a model built differently on some rank fails here, by name.
    """
    c = comm if comm is not None else runtime.comm()
    arrays = _arrays(model_or_params)
    if c.size > 1:
        layout = ";".join(f"{name}:{a.dtype}:{tuple(a.shape)}" for name, a in arrays).encode()
        table = c.host_all_gather(np.array([len(arrays), _digest_of(np.frombuffer(layout, np.uint8))], np.int64))
        bad = [r for r in range(c.size) if (table[r] != table[root]).any()]
        if bad:
            raise DistributedError(f"broadcast_parameters: rank(s) {bad} have a different set of parameter names, "
                                   f"shapes or dtypes than rank {root} (the same model must be built on every rank)")
    works = []
    for name, a in arrays:
        if backend.device_of(a) != c.device:
            raise ValueError(f"broadcast_parameters: {name} is on {backend.device_of(a)}, the communicator on "
                             f"{c.device}")
        if not a.flags.c_contiguous:
            raise ValueError(f"broadcast_parameters: {name} is not C-contiguous")
        works.append(c.broadcast(a.reshape(-1), root))
    for w in works:
        w.wait()
    if verify:
        verify_replicas(model_or_params, comm=c)


def _digest_of(a) -> int:
    return int.from_bytes(hashlib.blake2b(np.ascontiguousarray(a).tobytes(), digest_size=8).digest(), "little") >> 1


def verify_replicas(model_or_params, comm=None) -> None:
    """Raise DistributedError naming the ranks and arrays that differ from rank 0's (bitwise); a collective."""
    c = comm if comm is not None else runtime.comm()
    if c.size == 1:
        return
    arrays = _arrays(model_or_params)
    mine = np.array([_digest_of(backend.to_numpy(a)) for _, a in arrays] or [0], dtype=np.int64)
    table = c.host_all_gather(mine)
    if table.shape[1] != mine.shape[0] or not (table == table[0]).all():
        diffs = []
        for r in range(1, c.size):
            names = [arrays[i][0] for i in np.flatnonzero(table[r] != table[0])[:5]]
            if names:
                diffs.append(f"rank {r}: {', '.join(names)}")
        raise DistributedError("verify_replicas: the parameters differ between ranks (" + "; ".join(diffs) + ")")


def batch_slice(n: int, rank_: int | None = None, size: int | None = None) -> tuple[int, int]:
    """(start, stop): this rank's rows of a global batch of n rows, split as evenly as possible (the first
    ``n % size`` ranks take one row more, as numpy.array_split). Every rank gets at least one row."""
    r = rank() if rank_ is None else rank_
    N = world_size() if size is None else size
    if n < N:
        raise ValueError(f"batch_slice: a global batch of {n} rows cannot give each of {N} ranks a row "
                         f"(use a batch of at least {N})")
    base, extra = divmod(n, N)
    start = r * base + min(r, extra)
    return start, start + base + (1 if r < extra else 0)


def local_batch(*arrays):
    """This rank's rows of a global batch: ``(*slices, share)`` with ``share = rows here / global rows``.

    Scale the local mean loss by `share` before backward: the summed gradients are then those of the
    mean over the global batch, also for uneven splits (batch 5 on 2 ranks: shares 3/5 and 2/5).
    """
    if not arrays:
        raise ValueError("local_batch: give at least one array")
    n = len(arrays[0])
    if any(len(a) != n for a in arrays):
        raise ValueError(f"local_batch: the arrays have different numbers of rows: {[len(a) for a in arrays]}")
    start, stop = batch_slice(n)
    return (*(a[start:stop] for a in arrays), (stop - start) / n)


def all_reduce(values, op: str = "sum", comm=None):
    """Reduce host numbers over ranks (a float, or a list/array of them); every rank gets the result."""
    c = comm if comm is not None else runtime.comm()
    scalar = np.ndim(values) == 0
    out = c.host_all_reduce(np.atleast_1d(np.asarray(values, dtype=np.float64)), op)
    return float(out[0]) if scalar else out


def evaluate(model, batches, comm=None) -> float:
    """The mean of ``model(x, y)[1]`` (the loss) over `batches`, split across ranks and reduced.

    `batches` is the same iterable of global (x, y) batches on every rank (e.g. from identically
    seeded samplers); rank r computes batches r, r + N, r + 2N, ... whole (so each batch's loss is the
    one-process number) and every rank returns the mean over all of them. Runs in eval mode without
    grad and restores the mode.
    """
    from ..autograd import no_grad  # noqa: PLC0415

    c = comm if comm is not None else runtime.comm()
    total, count = 0.0, 0
    was_training = getattr(model, "training", False)
    if hasattr(model, "eval"):
        model.eval()
    try:
        with no_grad():
            for i, (x, y) in enumerate(batches):
                count += 1
                if i % c.size == c.rank:
                    total += float(model(x, y)[1].item())
    finally:
        if was_training:
            model.train()
    if count == 0:
        raise ValueError("evaluate: no batches")
    return float(c.host_all_reduce(np.array([total]), "sum")[0]) / count


def dropout_seed(seed: int, shape, row_offset: int) -> int:
    """The seed under which an array of `shape` holding rows ``row_offset ...`` of a global batch draws
    exactly those rows of the mask that the whole batch draws under `seed`
    (kernels.reference.dropout_seed_for_rows; inside ``batch_rows(row_offset)`` every dropout call of
    tinygpt.functional applies it itself)."""
    return reference.dropout_seed_for_rows(seed, shape, row_offset)
