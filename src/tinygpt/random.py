"""The global random number generator: dropout masks, init, sampling.

One seeded `numpy.random.Generator` (PCG64) drives every random draw tinygpt makes, so
`tg.manual_seed(s)` makes a run reproducible and its state can be saved in a checkpoint.

It stays on the host for every device: initial weights and `tg.randn(..., device='cuda')` are
drawn here and copied over, and dropout draws one seed per call here while the mask itself is
a counter hash of (seed, element index) computed where the data is (reference.dropout_mask, or
the native CPU/CUDA kernels with the same bits). So a seed gives the same weights, the same
batches and the same dropout masks on the CPU and on the GPU.
"""
from __future__ import annotations

import contextlib

import numpy as np

_generator = np.random.Generator(np.random.PCG64(0))
_row_offset = 0  # the global batch row where the arrays being computed start (data parallelism)


def manual_seed(seed: int) -> np.random.Generator:
    """Reseed the global generator (as `torch.manual_seed`); returns it."""
    global _generator
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"manual_seed: seed must be a non-negative int, got {seed!r}")
    _generator = np.random.Generator(np.random.PCG64(int(seed)))
    return _generator


def generator() -> np.random.Generator:
    """The global generator (use it, do not keep a reference across manual_seed)."""
    return _generator


def get_rng_state() -> dict:
    """A JSON-serialisable snapshot of the global generator's state."""
    return _generator.bit_generator.state


def set_rng_state(state: dict) -> None:
    """Restore a snapshot taken by `get_rng_state`."""
    if not isinstance(state, dict) or state.get("bit_generator") != "PCG64":
        raise ValueError("set_rng_state: expected a PCG64 state dict from get_rng_state()")
    _generator.bit_generator.state = state


def row_offset() -> int:
    """The global batch row at which this process's batch starts (0 outside `batch_rows`)."""
    return _row_offset


@contextlib.contextmanager
def batch_rows(offset: int):
    """Inside, the batches this process computes are rows ``offset ...`` of a larger global batch, and
    dropout draws exactly those rows of the global batch's masks (the seed drawn per call is the same;
    its counter is shifted to the row, see kernels.reference.dropout_seed_for_rows). A data-parallel rank
    wraps its forward passes in it so that the masks do not depend on the number of ranks. Offset 0 is
    the plain one-process behaviour."""
    global _row_offset
    if not isinstance(offset, (int, np.integer)) or offset < 0:
        raise ValueError(f"batch_rows: offset must be a non-negative int, got {offset!r}")
    previous, _row_offset = _row_offset, int(offset)
    try:
        yield
    finally:
        _row_offset = previous
