"""`tinygpt train` on N processes: `mpiexec -n N python examples/train_shakespeare.py <flags>`.

Started by an MPI launcher with more than one process, the training program joins the group
(tinygpt.distributed: MPI for --device cpu, NCCL for --device cuda with each rank on its local GPU)
and trains the same model as one process with the same flags: --batch-size stays the global batch;
every rank draws the same global batch from the identically seeded sampler and keeps its rows
(`batch_slice`), scales its loss by its share of the rows, and the gradients are summed by a
GradReducer (bucketed, overlapped with backward; reduce-scattered with --zero 1), only on the last
--grad-accum micro-step. Dropout runs inside `batch_rows(first row)`, so the masks are the global
batch's whatever N. Clipping uses the global norm, the logged loss is the global mean, evaluation
batches are split across ranks and reduced; only rank 0 prints, shows bars, logs, plots, samples and
writes checkpoints (ZeRO-1's state gathered first, so the file is the same whatever N and --zero).

Without a launcher (or with one process) none of this runs and mpi4py is never imported: the
training program is the one-process code, bit for bit.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys

import numpy as np

from ..distributed.comm import wait_until_read


class AllRanksStop(SystemExit):
    """A stop every rank reaches together (a check they all computed alike): rank 0 reports it, then every
    rank exits with status 1, with no MPI_Abort and so no race to deliver the message."""


class DataParallel:
    """What the training program needs from the group: the reducer's hooks for `train_step`, the
    global statistics of a step, the split evaluation and rank-0-only output."""

    def __init__(self, dist, comm, zero: bool):
        self.dist, self.comm, self.zero = dist, comm, bool(zero)
        self.rank, self.size, self.is_main = comm.rank, comm.size, comm.rank == 0
        self.reducer = None
        self.share, self.offset = 1.0, 0
        self._stop = None  # the process's StopRequest (its own Ctrl-C)
        self.stop_requested = False  # any rank's, agreed once per step

    # ------------------------------------------------------------------ set-up
    def attach(self, run, fail) -> None:
        """Check that every rank holds the same run, copy rank 0's weights, build the reducer (after the
        model is on its device and the checkpoint loaded) and, with --zero 1, shard the optimiser."""
        dist, args = self.dist, run.args
        if args.batch_size < self.size:
            raise AllRanksStop(fail(f"--batch-size {args.batch_size} is the global batch: it cannot give each of "
                                    f"{self.size} ranks a sequence (use --batch-size {self.size} or more, or fewer "
                                    f"ranks)").code)
        what = {"training data": run.splits["train"][0], "validation data": run.splits["val"][0],
                "tokenizer": np.frombuffer(json.dumps(run.tokenizer.to_dict(), sort_keys=True).encode(), np.uint8)}
        mine = np.array([_digest(a) for a in what.values()], dtype=np.int64)
        table = self.comm.host_all_gather(mine)
        bad = [f"rank {r}: {name}" for r in range(1, self.size) for k, name in enumerate(what)
               if table[r, k] != table[0, k]]
        if bad:
            raise AllRanksStop(fail(f"the ranks do not hold the same run ({'; '.join(bad)} differ from rank 0's): "
                                    f"--data and OUT_DIR must be the same files on every host").code)
        dist.broadcast_parameters(run.model)  # identical already (same seed or checkpoint): copied and verified
        self.reducer = dist.GradReducer(run.model, shard=self.zero)
        if self.zero:
            dist.shard_optimizer(run.optimizer, self.reducer)
        run.evaluate.parallel = self
        run.parallel = self

    def describe(self) -> str:
        mib = self.reducer.bytes_per_step / 2**20
        mode = ("ZeRO-1: AdamW moments sharded, gradients reduce-scattered" if self.zero
                else "replicated AdamW, gradients all-reduced")
        return (f"data parallel: {self.size} ranks ({self.comm.name}), {mode} in {len(self.reducer.buckets)} "
                f"bucket(s), {mib:.2f} MiB per step; --batch-size is the global batch")

    # ------------------------------------------------------------------ train_step's hooks
    def zero_grad(self) -> None:
        self.reducer.zero_grad()

    def local(self, batches) -> list:
        """This rank's rows of each global micro-batch; sets the rank's share of the rows and its offset."""
        n = len(batches[0][0])
        start, stop = self.dist.batch_slice(n)
        self.share, self.offset = (stop - start) / n, start
        return [(x[start:stop], y[start:stop]) for x, y in batches]

    def micro_step(self, k: int, n: int):
        """Around micro-step k of n: dropout draws the global batch's mask rows; gradients are reduced
        only by the last micro-step's backward."""
        stack = contextlib.ExitStack()
        stack.enter_context(self.dist.batch_rows(self.offset))
        if k < n - 1:
            stack.enter_context(self.reducer.no_sync())
        return stack

    def reduce_gradients(self, params) -> None:
        self.reducer.wait()

    def clip_grad_norm_(self, params, max_norm: float) -> float:
        return self.reducer.clip_grad_norm_(max_norm)

    # ------------------------------------------------------------------ the loop
    def stop_flag(self, stop):
        """A view of `stop` whose `requested` is any rank's request, agreed in `reduce_stats`: every rank
        stops after the same step (a rank that stopped alone would leave the others waiting)."""
        self._stop = stop
        return _AgreedStop(self)

    def reduce_stats(self, stats: dict) -> dict:
        """The step's statistics over the global batch (share-weighted means), one host all-reduce that
        also carries the stop requests."""
        aux, dropped = stats["moe_aux_loss"], stats["moe_dropped_frac"]
        stop = bool(self._stop is not None and self._stop.requested)
        v = np.array([stats["loss"], aux or 0.0, dropped or 0.0, 0.0]) * self.share
        v[3] = float(stop)
        total = self.comm.host_all_reduce(v, "sum")
        self.stop_requested = bool(total[3] > 0)
        return {"loss": float(total[0]), "moe_aux_loss": None if aux is None else float(total[1]),
                "moe_dropped_frac": None if dropped is None else float(total[2])}

    def evaluates(self, i: int) -> bool:
        """Whether this rank computes evaluation batch i (batches r, r + N, ... whole: one-process numbers)."""
        return i % self.size == self.rank

    def mean(self, local_values, count: int) -> float:
        """The mean over all ranks' values (count of them in all)."""
        return float(self.comm.host_all_reduce(np.array([float(np.sum(local_values))]), "sum")[0]) / count

    def gathered_state(self, optimizer):
        return self.dist.gathered_state(optimizer)


class _AgreedStop:
    def __init__(self, parallel):
        self._parallel = parallel

    @property
    def requested(self) -> bool:
        return self._parallel.stop_requested


class NullLog:
    """The metrics log of ranks other than 0: writes nothing."""

    def write(self, record) -> None:
        pass

    def close(self) -> None:
        pass


def _digest(a) -> int:
    return int.from_bytes(hashlib.blake2b(np.ascontiguousarray(a).tobytes(), digest_size=8).digest(), "little") >> 1


@contextlib.contextmanager
def session(args):
    """Yields None for one process (no launcher, or a launcher with one process: nothing is changed), else
    a DataParallel for this rank. Ranks other than 0 print nothing on stdout and show no bars. A rank that
    ends with an error (a SystemExit with a message, Ctrl-C twice) aborts the whole job, so no rank is
    left waiting for it; other exceptions do so through tinygpt.distributed's exception hook."""
    from .. import distributed as dist  # noqa: PLC0415 - only under a launcher

    if not dist.launched_by_mpi():
        yield None
        return
    comm = dist.init(device=args.device)
    if comm.size == 1:
        yield None
        return
    par = DataParallel(dist, comm, args.zero == 1)
    stdout = sys.stdout
    if not par.is_main:
        args.no_progress = True  # no bars (training's, BPE's)
        sys.stdout = open(os.devnull, "w", encoding="utf-8")  # noqa: SIM115 - closed below
    try:
        yield par
    except AllRanksStop as exc:
        if par.is_main:
            sys.stderr.write(f"{exc.code}\n")
        wait_until_read(sys.stderr)
        comm.barrier()  # rank 0's message is read before any rank exits (an exit may end the others)
        raise SystemExit(1) from None
    except SystemExit as exc:
        if exc.code is None or exc.code == 0:
            raise
        msg = exc.code if isinstance(exc.code, str) else f"exit status {exc.code}"
        # one write: another rank's abort may kill this process between two
        sys.stderr.write((f"{msg}\n" if par.is_main else f"rank {par.rank} of {par.size}: {msg}\n") +
                         f"tinygpt.distributed: aborting all {par.size} ranks because rank {par.rank} stopped\n")
        comm.abort(exc.code if isinstance(exc.code, int) else 1)
    except KeyboardInterrupt:
        sys.stderr.write(f"rank {par.rank} of {par.size}: interrupted; aborting all ranks\n")
        comm.abort(130)
    finally:
        if sys.stdout is not stdout:
            sys.stdout.close()
            sys.stdout = stdout
