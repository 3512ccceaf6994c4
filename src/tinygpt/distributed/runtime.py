"""The process group: init from the launcher's environment, rank / world size / local rank, rank-0 output,
and fault handling (a failing rank ends the whole job, naming itself and the cause)."""
from __future__ import annotations

import os
import socket
import sys
import traceback

import numpy as np

from .. import backend as _backend
from .comm import Communicator, LocalComm

# Environment variables a launcher sets in every process it starts: MPICH/Intel MPI (Hydra, PMI), Open MPI,
# PMIx (srun --mpi=pmix, prterun), MVAPICH. With none of them this is a single process: no MPI is touched.
_LAUNCHER_SIZE_VARS = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_SIZE", "MV2_COMM_WORLD_SIZE")
_LAUNCHER_RANK_VARS = ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK", "MV2_COMM_WORLD_RANK")

_comm: Communicator | None = None
_local_rank = 0
_local_size = 1
_previous_excepthook = None


def launched_by_mpi() -> bool:
    """True when this process was started by an MPI launcher (mpiexec, mpirun, srun with PMI/PMIx)."""
    return any(v in os.environ for v in _LAUNCHER_SIZE_VARS + _LAUNCHER_RANK_VARS)


def init(backend: str | None = None, *, device: str = "cpu", timeout: float | None = None,
         handle_faults: bool = True, verbose: bool = True) -> Communicator:
    """Join the process group the launcher started (or be a group of one) and return its communicator.

    Parameters
    ----------
    backend : None, 'local', 'mpi' or 'nccl'
        None: 'nccl' for device 'cuda' and 'mpi' for 'cpu' when started by an MPI launcher, else
        'local' (one process; mpi4py is not imported). 'local' with several launched processes is an
        error (each would train alone).
    device : 'cpu' or 'cuda'
        With 'cuda' each rank takes GPU ``local_rank % number of GPUs`` (ranks on one host split its
        GPUs) and the collectives go through NCCL.
    timeout : float, optional
        Seconds a rank waits for its peers in one collective before it ends the job (default
        TINYGPT_DIST_TIMEOUT or 600).
    handle_faults : bool
        With more than one rank, an uncaught exception on any rank prints the rank, host, pid and
        traceback, then aborts the whole job (MPI_Abort): the launcher exits non-zero, no rank hangs.
    verbose : bool
        Rank 0 prints one line with the group (every rank's pid and host, to tell which one a
        launcher's "BAD TERMINATION ... PID" message names).

    Calling init again returns the existing communicator.
    """
    global _comm, _local_rank, _local_size
    if _comm is not None:
        return _comm
    device = _backend.normalize_device(device)
    if backend is None:
        backend = ("nccl" if device == "cuda" else "mpi") if launched_by_mpi() else "local"
    if backend not in ("local", "mpi", "nccl"):
        raise ValueError(f"init: backend must be 'local', 'mpi' or 'nccl', got {backend!r}")
    if backend == "nccl" and device != "cuda":
        raise ValueError("init: the 'nccl' backend is for device 'cuda'")
    if backend == "local":
        size = _launcher_size()
        if size > 1:
            raise RuntimeError(f"init: backend 'local' but the launcher started {size} processes")
        comm = LocalComm(device)
        if timeout is not None:
            comm.timeout = float(timeout)
        if device == "cuda":
            _backend.cupy()  # fail now, saying what is missing
        _comm = comm
        return comm

    mpi = _import_mpi()
    from .comm import MPIComm, NCCLComm  # noqa: PLC0415

    host = MPIComm(mpi.COMM_WORLD, timeout=timeout)
    local = mpi.COMM_WORLD.Split_type(mpi.COMM_TYPE_SHARED, key=host.rank)  # the ranks on this host
    _local_rank, _local_size = local.Get_rank(), local.Get_size()
    local.Free()
    comm = host
    if device == "cuda":
        cp = _backend.cupy()
        n_gpus = cp.cuda.runtime.getDeviceCount()
        cp.cuda.Device(_local_rank % n_gpus).use()
        comm = NCCLComm(host) if backend == "nccl" else host
    _comm = comm
    if handle_faults and comm.size > 1:
        install_fault_handler()
    if verbose and comm.size > 1:
        table = describe_ranks()
        if comm.rank == 0:
            print(f"tinygpt.distributed: {comm.size} ranks ({comm.name}, {device}): {table}", file=sys.stderr,
                  flush=True)
    return comm


def _launcher_size() -> int:
    for v in _LAUNCHER_SIZE_VARS:
        if v in os.environ:
            try:
                return int(os.environ[v])
            except ValueError:
                pass
    return 1


def _import_mpi():
    try:
        import mpi4py  # noqa: PLC0415 - optional dependency
    except ImportError as exc:
        raise RuntimeError('tinygpt.distributed: MPI needs mpi4py and an MPI library: pip install ".[mpi]" '
                           f"(mpi4py, mpich) ({exc})") from exc
    if "mpi4py.MPI" not in sys.modules:
        # Only the main thread calls MPI, so a lower thread level than mpi4py's default (multiple)
        # spares MPICH its locks.
        mpi4py.rc.thread_level = "funneled"
    from mpi4py import MPI  # noqa: PLC0415

    return MPI


def comm() -> Communicator:
    """The communicator of `init()`, or a one-process one when init was not called."""
    return _comm if _comm is not None else LocalComm()


def is_initialized() -> bool:
    return _comm is not None


def rank() -> int:
    """This process's rank (0 without init)."""
    return _comm.rank if _comm is not None else 0


def world_size() -> int:
    """How many ranks there are (1 without init)."""
    return _comm.size if _comm is not None else 1


def local_rank() -> int:
    """The rank among the processes on this host (selects the GPU)."""
    return _local_rank


def local_world_size() -> int:
    return _local_size


def is_main() -> bool:
    """True on rank 0, the one that prints, logs and writes checkpoints."""
    return rank() == 0


def print0(*args, **kwargs) -> None:
    """print() on rank 0 only (flushed, so lines from a job under a launcher come out in order)."""
    if is_main():
        kwargs.setdefault("flush", True)
        print(*args, **kwargs)


def describe_ranks() -> str:
    """'rank 0 pid 123 on host-a, rank 1 pid 124 on host-a, ...' (a collective: every rank calls it)."""
    c = comm()
    me = np.zeros(72, dtype=np.uint8)
    me[:8] = np.frombuffer(np.int64(os.getpid()).tobytes(), dtype=np.uint8)
    name = socket.gethostname().encode()[:64]
    me[8:8 + len(name)] = np.frombuffer(name, dtype=np.uint8)
    table = c.host_all_gather(me)
    parts = []
    for r, row in enumerate(table):
        pid = int(np.frombuffer(row[:8].tobytes(), dtype=np.int64)[0])
        host = row[8:].tobytes().rstrip(b"\0").decode(errors="replace")
        parts.append(f"rank {r} pid {pid} on {host}")
    return ", ".join(parts)


def install_fault_handler() -> None:
    """Make an uncaught exception on this rank print where and why, then abort the whole job.

    Without it the other ranks would wait forever in their next collective for a rank that is gone.
    """
    global _previous_excepthook
    if _previous_excepthook is None:
        _previous_excepthook = sys.excepthook
        sys.excepthook = _abort_on_exception


def _abort_on_exception(exc_type, exc, tb):
    c = comm()
    head = (f"tinygpt.distributed: rank {c.rank} of {c.size} (pid {os.getpid()} on {socket.gethostname()}) failed: "
            f"{exc_type.__name__}: {exc}")
    try:
        sys.stderr.write(head + "\n" + "".join(traceback.format_exception(exc_type, exc, tb)) +
                         f"tinygpt.distributed: aborting all {c.size} ranks because rank {c.rank} failed\n")
        sys.stderr.flush()
    finally:
        c.abort(1)


def shutdown() -> None:
    """Release the communicator (NCCL's) and forget the group; MPI itself is finalised at exit by mpi4py."""
    global _comm, _previous_excepthook
    if _comm is not None:
        _comm.close()
    _comm = None
    if _previous_excepthook is not None:
        sys.excepthook = _previous_excepthook
        _previous_excepthook = None
