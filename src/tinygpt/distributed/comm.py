"""Communicators: the collectives data parallelism needs, over MPI (CPU) or NCCL (GPU), or none (1 process).

Everything above this file (the gradient reducer, ZeRO-1, broadcast, evaluation) calls only this
interface, so the CPU and GPU paths share one code path:

  device collectives, on the arrays of `comm.device` (numpy for MPI, cupy for NCCL); each starts the
  operation and returns a `Work` whose `wait()` blocks until it is done (bounded by `comm.timeout`):
    all_reduce(buf)            buf = the sum of every rank's buf (in place)
    reduce_scatter(send, recv) recv = chunk `rank` of the sum of every rank's send (len(send) = size * len(recv))
    all_gather(buf)            in place: chunk r of buf (size equal chunks) becomes rank r's chunk r
    broadcast(buf, root)       buf = root's buf
  host collectives, on small numpy arrays, blocking but bounded (flags, digests, losses, the NCCL id):
    host_all_reduce(a, op), host_all_gather(a), host_broadcast(a, root), barrier()

MPI progresses a non-blocking collective only inside MPI calls (MPICH has no progress thread unless
asked for one), so `Work.test()` is called from the backward hooks to move started reductions on,
and every wait polls `Test` with a deadline instead of blocking in `Wait`: a peer that died or
stopped calling collectives makes the wait raise `DistributedTimeout` rather than hang.

The NCCL communicator runs its collectives on its own CUDA stream, ordered after the work already
queued on CuPy's current stream (an event), so a bucket's all-reduce overlaps the rest of the
backward; `wait()` makes the current stream wait for it again. NCCL's unique id travels over MPI.
"""
from __future__ import annotations

import array
import os
import stat
import sys
import time

import numpy as np

from .. import backend

DEFAULT_TIMEOUT = 600.0  # seconds a rank waits for its peers in one collective (TINYGPT_DIST_TIMEOUT)


class DistributedError(RuntimeError):
    """A collective failed or a peer is gone."""


class DistributedTimeout(DistributedError):
    """A collective did not complete within the communicator's timeout."""


def _timeout_from_env() -> float:
    raw = os.environ.get("TINYGPT_DIST_TIMEOUT")
    if raw is None:
        return DEFAULT_TIMEOUT
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"TINYGPT_DIST_TIMEOUT must be a number of seconds, got {raw!r}") from None
    if not value > 0:
        raise ValueError(f"TINYGPT_DIST_TIMEOUT must be > 0 seconds, got {raw!r}")
    return value


class Work:
    """A started collective. `test()`: done yet (and progress it); `wait()`: block until done (bounded)."""

    def test(self) -> bool:
        raise NotImplementedError

    def wait(self) -> None:
        raise NotImplementedError


class DoneWork(Work):
    """A collective that completed when it was started (one process, or a blocking call)."""

    def test(self) -> bool:
        return True

    def wait(self) -> None:
        pass


DONE = DoneWork()


class Communicator:
    """The collectives of one group of ranks. Subclasses: LocalComm, MPIComm, NCCLComm."""

    name = "?"
    rank = 0
    size = 1
    device = "cpu"
    timeout = DEFAULT_TIMEOUT

    def __repr__(self):
        return f"{type(self).__name__}(rank={self.rank}, size={self.size}, device={self.device!r})"

    # device collectives (see the module docstring); each returns a Work
    def all_reduce(self, buf) -> Work:
        raise NotImplementedError

    def reduce_scatter(self, send, recv) -> Work:
        raise NotImplementedError

    def all_gather(self, buf) -> Work:
        raise NotImplementedError

    def broadcast(self, buf, root: int = 0) -> Work:
        raise NotImplementedError

    # host collectives on numpy arrays (blocking, bounded)
    def host_all_reduce(self, a, op: str = "sum") -> np.ndarray:
        raise NotImplementedError

    def host_all_gather(self, a) -> np.ndarray:
        """(size, *a.shape): every rank's a."""
        raise NotImplementedError

    def host_broadcast(self, a, root: int = 0) -> np.ndarray:
        raise NotImplementedError

    def barrier(self) -> None:
        raise NotImplementedError

    def abort(self, code: int = 1) -> None:
        """End every rank of the job now (after the caller printed why)."""
        os._exit(code)

    def close(self) -> None:
        pass

    # shared argument checks
    def _check_chunks(self, op, whole, part_len=None):
        n = whole.size
        if n % self.size:
            raise ValueError(f"{op}: the buffer's {n} elements do not split into {self.size} equal chunks")
        if part_len is not None and part_len * self.size != n:
            raise ValueError(f"{op}: send has {n} elements, recv {part_len}: expected send = {self.size} x recv")


def _check_buffer(op, buf, device):
    if backend.device_of(buf) != device:
        raise TypeError(f"{op}: a {backend.device_of(buf)} array on a {device} communicator")
    if not buf.flags.c_contiguous:
        raise ValueError(f"{op}: the buffer must be C-contiguous")


class LocalComm(Communicator):
    """One process: every collective is the identity (no MPI needed)."""

    name = "local"

    def __init__(self, device: str = "cpu"):
        self.device = backend.normalize_device(device)
        self.timeout = _timeout_from_env()

    def all_reduce(self, buf):
        _check_buffer("all_reduce", buf, self.device)
        return DONE

    def reduce_scatter(self, send, recv):
        _check_buffer("reduce_scatter", send, self.device)
        self._check_chunks("reduce_scatter", send, recv.size)
        recv[...] = send.reshape(recv.shape)
        return DONE

    def all_gather(self, buf):
        _check_buffer("all_gather", buf, self.device)
        return DONE

    def broadcast(self, buf, root=0):
        if root != 0:
            raise ValueError(f"broadcast: root {root} is not a rank of a 1-process group")
        return DONE

    def host_all_reduce(self, a, op="sum"):
        _host_op(op)
        return np.array(a, copy=True)

    def host_all_gather(self, a):
        return np.asarray(a)[None].copy()

    def host_broadcast(self, a, root=0):
        return np.array(a, copy=True)

    def barrier(self):
        pass


def _host_op(op):
    if op not in ("sum", "max", "min"):
        raise ValueError(f"host_all_reduce: op must be 'sum', 'max' or 'min', got {op!r}")
    return op


def poll(test, what: str, comm: Communicator) -> None:
    """Call `test()` until it returns True; raise DistributedTimeout after `comm.timeout` seconds.

    Polls with a yield of the CPU in between for the first 50 ms (as MPICH's own blocking wait does: a
    peer that shares this core runs, and one that arrives is seen at once), then in 1 ms naps, so that a
    rank waiting long (for a checkpoint written by rank 0, say) does not keep a core busy.
    """
    if test():
        return
    start = time.perf_counter()
    while not test():
        waited = time.perf_counter() - start
        if waited > comm.timeout:
            raise DistributedTimeout(
                f"rank {comm.rank} of {comm.size}: {what} did not complete within {comm.timeout:g} s; a peer rank "
                "has died, exited early, or stopped calling the same collectives (the wait limit is "
                "TINYGPT_DIST_TIMEOUT or init(timeout=...))")
        if waited < 0.05:
            os.sched_yield()
        else:
            time.sleep(1e-3)


class _MPIWork(Work):
    __slots__ = ("req", "what", "comm", "keep")

    def __init__(self, req, what, comm, keep=None):
        self.req, self.what, self.comm, self.keep = req, what, comm, keep  # keep: buffers alive until done

    def test(self):
        return self.req is None or self._test()

    def _test(self):
        if self.req.Test():
            self.req, self.keep = None, None
            return True
        return False

    def wait(self):
        if self.req is not None:
            poll(self._test, self.what, self.comm)


class MPIComm(Communicator):
    """Collectives of an mpi4py communicator on numpy arrays (MPI_COMM_WORLD by default)."""

    name = "mpi"

    def __init__(self, mpi_comm=None, timeout: float | None = None):
        from mpi4py import MPI  # noqa: PLC0415 - optional dependency

        self.MPI = MPI
        self.comm = MPI.COMM_WORLD if mpi_comm is None else mpi_comm
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()
        self.timeout = _timeout_from_env() if timeout is None else float(timeout)
        self._ops = {"sum": MPI.SUM, "max": MPI.MAX, "min": MPI.MIN}

    def _work(self, req, what, keep=None):
        return _MPIWork(req, what, self, keep)

    def all_reduce(self, buf):
        _check_buffer("all_reduce", buf, "cpu")
        return self._work(self.comm.Iallreduce(self.MPI.IN_PLACE, buf, op=self.MPI.SUM),
                          f"all_reduce of {buf.nbytes} bytes")

    def reduce_scatter(self, send, recv):
        _check_buffer("reduce_scatter", send, "cpu")
        _check_buffer("reduce_scatter", recv, "cpu")
        self._check_chunks("reduce_scatter", send, recv.size)
        return self._work(self.comm.Ireduce_scatter_block(send, recv, op=self.MPI.SUM),
                          f"reduce_scatter of {send.nbytes} bytes")

    def all_gather(self, buf):
        _check_buffer("all_gather", buf, "cpu")
        self._check_chunks("all_gather", buf)
        return self._work(self.comm.Iallgather(self.MPI.IN_PLACE, buf), f"all_gather of {buf.nbytes} bytes")

    def broadcast(self, buf, root=0):
        _check_buffer("broadcast", buf, "cpu")
        return self._work(self.comm.Ibcast(buf, root=root), f"broadcast of {buf.nbytes} bytes from rank {root}")

    def host_all_reduce(self, a, op="sum"):
        out = np.ascontiguousarray(np.array(a, copy=True))
        self._work(self.comm.Iallreduce(self.MPI.IN_PLACE, out, op=self._ops[_host_op(op)]),
                   f"host all_reduce ({op}) of {out.nbytes} bytes").wait()
        return out

    def host_all_gather(self, a):
        a = np.ascontiguousarray(a)
        out = np.empty((self.size,) + a.shape, dtype=a.dtype)
        self._work(self.comm.Iallgather(a, out), f"host all_gather of {a.nbytes} bytes", keep=a).wait()
        return out

    def host_broadcast(self, a, root=0):
        out = np.ascontiguousarray(np.array(a, copy=True))
        self._work(self.comm.Ibcast(out, root=root), f"host broadcast of {out.nbytes} bytes from rank {root}").wait()
        return out

    def barrier(self):
        self._work(self.comm.Ibarrier(), "barrier").wait()

    def abort(self, code=1):
        try:
            wait_until_read(sys.stdout, sys.stderr)
            self.comm.Abort(code)
        finally:  # MPICH's MPI_Abort may return before the launcher has killed this process
            os._exit(code)


def wait_until_read(*streams, limit: float = 3.0) -> None:
    """Flush the streams, then wait (at most `limit` s) until the launcher has read what they hold in a pipe.

    MPI_Abort makes MPICH's launcher kill every process of the job, and it drops what is still unread in a
    pipe: under load the failing rank's own message was lost that way.
    """
    try:
        import fcntl  # noqa: PLC0415 - POSIX only
        import termios  # noqa: PLC0415
    except ImportError:
        return
    deadline = time.monotonic() + limit
    for stream in streams:
        try:
            stream.flush()
            fd = stream.fileno()
            if not stat.S_ISFIFO(os.fstat(fd).st_mode):
                continue  # a terminal or file keeps what was written
            unread = array.array("i", [0])
            while time.monotonic() < deadline:
                fcntl.ioctl(fd, termios.FIONREAD, unread, True)  # bytes in the pipe, not yet read
                if unread[0] == 0:
                    break
                time.sleep(0.01)
        except (OSError, ValueError, AttributeError):  # no fd (a replaced stream) or no ioctl: nothing to wait for
            continue


class _NCCLWork(Work):
    __slots__ = ("event", "what", "comm", "keep")

    def __init__(self, event, what, comm, keep=None):
        self.event, self.what, self.comm, self.keep = event, what, comm, keep

    def test(self):
        if self.event is None:
            return True
        if self.event.done:
            self.keep = None
            return True
        return False

    def wait(self):
        if self.event is None:
            return
        # Bounded: poll the event (and NCCL's asynchronous error state) rather than block in a
        # synchronize that a dead peer would make endless; then order the current stream after it.
        def done():
            self.comm.check_async_error()
            return self.event.done
        try:
            poll(done, self.what, self.comm)
        except DistributedError:
            self.comm.nccl_abort()
            raise
        self.comm.cp.cuda.get_current_stream().wait_event(self.event)
        self.event, self.keep = None, None


class NCCLComm(Communicator):
    """NCCL collectives on CuPy arrays (cupy.cuda.nccl), one GPU per rank; host collectives over MPI.

    Parameters
    ----------
    host : MPIComm
        Bootstraps NCCL (rank 0's unique id is broadcast over it) and carries the host collectives.
    """

    name = "nccl"
    device = "cuda"

    def __init__(self, host: MPIComm):
        cp, nccl = backend.cupy(), backend.nccl()
        self.cp, self.nccl, self.host = cp, nccl, host
        self.rank, self.size, self.timeout = host.rank, host.size, host.timeout
        uid = np.zeros(128, dtype=np.int8)
        if self.rank == 0:
            uid[:] = np.array(nccl.get_unique_id(), dtype=np.int64).astype(np.int8)
        uid = host.host_broadcast(uid, root=0)
        self.comm = nccl.NcclCommunicator(self.size, tuple(int(v) for v in uid), self.rank)
        self.stream = cp.cuda.Stream(non_blocking=True)  # the collectives' own stream
        self._dtypes = {np.dtype(np.float32): nccl.NCCL_FLOAT32, np.dtype(np.float64): nccl.NCCL_FLOAT64,
                        np.dtype(np.float16): nccl.NCCL_FLOAT16, np.dtype(np.int32): nccl.NCCL_INT32,
                        np.dtype(np.int64): nccl.NCCL_INT64, np.dtype(np.uint8): nccl.NCCL_UINT8}

    def _dtype(self, op, buf):
        _check_buffer(op, buf, "cuda")
        try:
            return self._dtypes[np.dtype(buf.dtype)]
        except KeyError:
            raise TypeError(f"{op}: NCCL does not reduce {buf.dtype} here") from None

    def _launch(self, what, call, *keep):
        """Run `call(stream_ptr)` on the comm stream after the current stream's queued work; a Work for it."""
        cp = self.cp
        ready = cp.cuda.Event(disable_timing=True)
        ready.record(cp.cuda.get_current_stream())
        self.stream.wait_event(ready)
        call(self.stream.ptr)
        done = cp.cuda.Event(disable_timing=True)
        done.record(self.stream)
        return _NCCLWork(done, what, self, keep)

    def all_reduce(self, buf):
        dt = self._dtype("all_reduce", buf)
        ptr = buf.data.ptr
        return self._launch(f"all_reduce of {buf.nbytes} bytes",
                            lambda s: self.comm.allReduce(ptr, ptr, buf.size, dt, self.nccl.NCCL_SUM, s), buf)

    def reduce_scatter(self, send, recv):
        dt = self._dtype("reduce_scatter", send)
        if self._dtype("reduce_scatter", recv) != dt:
            raise TypeError("reduce_scatter: send and recv dtypes differ")
        self._check_chunks("reduce_scatter", send, recv.size)
        return self._launch(f"reduce_scatter of {send.nbytes} bytes",
                            lambda s: self.comm.reduceScatter(send.data.ptr, recv.data.ptr, recv.size, dt,
                                                              self.nccl.NCCL_SUM, s), send, recv)

    def all_gather(self, buf):
        dt = self._dtype("all_gather", buf)
        self._check_chunks("all_gather", buf)
        count = buf.size // self.size
        # in place: NCCL's own convention, sendbuff = recvbuff + rank * count
        send = buf.data.ptr + self.rank * count * buf.itemsize
        return self._launch(f"all_gather of {buf.nbytes} bytes",
                            lambda s: self.comm.allGather(send, buf.data.ptr, count, dt, s), buf)

    def broadcast(self, buf, root=0):
        dt = self._dtype("broadcast", buf)
        ptr = buf.data.ptr
        return self._launch(f"broadcast of {buf.nbytes} bytes from rank {root}",
                            lambda s: self.comm.bcast(ptr, buf.size, dt, root, s), buf)

    def check_async_error(self):
        try:
            self.comm.check_async_error()
        except Exception as exc:
            raise DistributedError(f"rank {self.rank}: NCCL reported an error: {exc}") from exc

    def nccl_abort(self):
        try:
            self.comm.abort()
        except Exception:  # already torn down: the job is being aborted anyway
            pass

    def host_all_reduce(self, a, op="sum"):
        return self.host.host_all_reduce(a, op)

    def host_all_gather(self, a):
        return self.host.host_all_gather(a)

    def host_broadcast(self, a, root=0):
        return self.host.host_broadcast(a, root)

    def barrier(self):
        self.host.barrier()

    def abort(self, code=1):
        self.nccl_abort()
        self.host.abort(code)

    def close(self):
        self.stream.synchronize()
        self.comm.destroy()
