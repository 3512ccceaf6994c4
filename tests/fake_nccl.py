"""cupy.cuda.nccl played over MPI on the host memory of tests/fake_cupy.py's arrays, to run tinygpt's NCCL
communicator (tinygpt.distributed.NCCLComm) without GPUs.

Like the real one, `NcclCommunicator` takes raw device pointers, element counts, NCCL dtype codes and a
stream handle; here each pointer is turned back into the array memory behind it (fake_cupy's GpuArrays
are host arrays) and the collective runs as the matching MPI call, so the pointer arithmetic (in-place
all-gather offsets, reduce-scatter counts), the dtype codes and the unique-id exchange are checked
against real peers. Streams and events are recorded, not run (everything is synchronous): each
collective must be issued on a side stream (non-zero handle) that was made to wait, since the previous
collective, for an event recorded on the current stream (the ordering NCCLComm promises). What this
cannot check: NCCL itself, real asynchrony between streams, GPU memory and timing.
"""
import ctypes
import os
import sys
import types

import numpy as np
from mpi4py import MPI

NCCL_INT8, NCCL_UINT8, NCCL_INT32, NCCL_UINT32, NCCL_INT64, NCCL_UINT64 = 0, 1, 2, 3, 4, 5
NCCL_FLOAT16, NCCL_FLOAT32, NCCL_FLOAT64 = 6, 7, 8
NCCL_SUM = 0
_DTYPES = {NCCL_INT8: np.int8, NCCL_UINT8: np.uint8, NCCL_INT32: np.int32, NCCL_UINT32: np.uint32,
           NCCL_INT64: np.int64, NCCL_UINT64: np.uint64, NCCL_FLOAT16: np.float16, NCCL_FLOAT32: np.float32,
           NCCL_FLOAT64: np.float64}
log = []  # (op, count, dtype) of every collective, for the test's checks


def _array(ptr, count, datatype):
    dtype = np.dtype(_DTYPES[datatype])
    raw = (ctypes.c_uint8 * (count * dtype.itemsize)).from_address(ptr)
    return np.frombuffer(raw, dtype=dtype, count=count)


class _Stream:
    def __init__(self, ptr):
        self.ptr, self.waited = ptr, []

    def wait_event(self, event):
        if self.ptr:  # the side stream's waits are checked by the next collective on it
            self.waited.append(event)

    def synchronize(self):
        pass


class _Event:
    def __init__(self, disable_timing=False):
        self.stream = None

    def record(self, stream=None):
        self.stream = stream

    @property
    def done(self):
        return self.stream is not None


_current = _Stream(0)
_next_ptr = [0x1000]


def _new_stream(non_blocking=False):
    _next_ptr[0] += 0x10
    return _Stream(_next_ptr[0])


_streams = {}


class _Device:
    id = 0

    def __init__(self, index=0):
        self.index = index

    def use(self):
        if self.index != 0:
            raise RuntimeError(f"fake GPU: device {self.index} does not exist (one per rank)")


def get_unique_id():
    return tuple(int(b) for b in np.frombuffer(os.urandom(128), dtype=np.int8))


class NcclCommunicator:
    def __init__(self, ndev, commId, rank):
        world = MPI.COMM_WORLD
        if len(commId) != 128:
            raise ValueError("commId must have 128 entries")
        if ndev != world.Get_size() or rank != world.Get_rank():
            raise ValueError(f"NcclCommunicator({ndev}, ..., {rank}) in a world of {world.Get_size()}, "
                             f"rank {world.Get_rank()}")
        ids = world.allgather(tuple(commId))
        if any(i != ids[0] for i in ids):
            raise RuntimeError("fake NCCL: the ranks were given different unique ids")
        self.world, self.rank = world, rank

    def _check_stream(self, op, stream):
        s = _streams.get(stream)
        if stream == 0 or s is None:
            raise RuntimeError(f"fake NCCL: {op} issued on stream {stream:#x}, not on a side stream")
        if not any(e.stream is _current for e in s.waited):
            raise RuntimeError(f"fake NCCL: {op}: the side stream did not wait for the current stream's work")
        s.waited.clear()

    def allReduce(self, sendbuf, recvbuf, count, datatype, op, stream):
        self._check_stream("allReduce", stream)
        assert op == NCCL_SUM
        log.append(("allReduce", count, datatype))
        recv = _array(recvbuf, count, datatype)
        if sendbuf == recvbuf:
            self.world.Allreduce(MPI.IN_PLACE, recv)
        else:
            self.world.Allreduce(_array(sendbuf, count, datatype).copy(), recv)

    def reduceScatter(self, sendbuf, recvbuf, recvcount, datatype, op, stream):
        self._check_stream("reduceScatter", stream)
        assert op == NCCL_SUM
        log.append(("reduceScatter", recvcount, datatype))
        send = _array(sendbuf, recvcount * self.world.Get_size(), datatype).copy()
        self.world.Reduce_scatter_block(send, _array(recvbuf, recvcount, datatype))

    def allGather(self, sendbuf, recvbuf, count, datatype, stream):
        self._check_stream("allGather", stream)
        log.append(("allGather", count, datatype))
        recv = _array(recvbuf, count * self.world.Get_size(), datatype)
        if sendbuf == recvbuf + self.rank * count * recv.itemsize:  # NCCL's in-place convention
            self.world.Allgather(MPI.IN_PLACE, recv)
        else:
            self.world.Allgather(_array(sendbuf, count, datatype).copy(), recv)

    def bcast(self, buff, count, datatype, root, stream):
        self._check_stream("bcast", stream)
        log.append(("bcast", count, datatype))
        self.world.Bcast(_array(buff, count, datatype), root=root)

    def check_async_error(self):
        pass

    def abort(self):
        pass

    def destroy(self):
        pass


def install():
    """Make tinygpt see fake_cupy's GPU with this NCCL behind `from cupy.cuda import nccl` (for a script)."""
    from _pytest.monkeypatch import MonkeyPatch

    here = os.path.dirname(os.path.abspath(__file__))
    if here not in sys.path:
        sys.path.insert(0, here)
    import fake_cupy

    fake = fake_cupy.install(MonkeyPatch())

    def stream(non_blocking=False):
        s = _new_stream(non_blocking)
        _streams[s.ptr] = s
        return s

    cuda = fake.cuda
    cuda.get_current_stream = lambda: _current
    cuda.Stream, cuda.Event, cuda.Device = stream, _Event, _Device
    cuda.nccl = types.SimpleNamespace(
        **{k: v for k, v in globals().items() if k.startswith("NCCL_")},
        available=True, get_unique_id=get_unique_id, NcclCommunicator=NcclCommunicator)
    sys.modules["cupy"] = fake
    sys.modules["cupy.cuda"] = cuda
    sys.modules["cupy.cuda.nccl"] = cuda.nccl
    return fake
