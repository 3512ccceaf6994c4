"""What the tests that launch `mpiexec` jobs share (tests/test_distributed.py, tests/test_distributed_cli.py):
finding mpiexec, the `mpi` mark with its skip, and the children's environment.

Without mpi4py or mpiexec the tests skip, saying why (`pip install ".[mpi]"` provides both); with
TINYGPT_REQUIRE_MPI=1 (CI after installing the extra) their absence is an error instead.
"""
import os
import shutil
import sys
from pathlib import Path

import pytest


def _find_mpiexec():
    beside = Path(sys.executable).parent / "mpiexec"  # a venv's bin (the mpich wheel puts it there)
    return str(beside) if beside.exists() else shutil.which("mpiexec")


try:
    import mpi4py  # noqa: F401
    _MISSING = None if _find_mpiexec() else "no mpiexec on PATH or beside the interpreter (pip install \".[mpi]\")"
except ImportError:
    _MISSING = "mpi4py is not installed (pip install \".[mpi]\" installs mpi4py and MPICH)"
if _MISSING and os.environ.get("TINYGPT_REQUIRE_MPI") == "1":  # CI, after installing the [mpi] extra
    raise RuntimeError(f"TINYGPT_REQUIRE_MPI=1, but {_MISSING}")


def needs_mpi(test):
    """Marked `mpi` (CI's MPI pass selects these) and skipped without MPI."""
    return pytest.mark.mpi(pytest.mark.skipif(_MISSING is not None, reason=_MISSING or "")(test))


_LAUNCHER_VARS = ("PMI_", "OMPI_", "PMIX_", "MV2_")


def _env(**extra):
    """The children's environment: one thread per rank (2 cores), a short wait limit, no launcher variables
    (a child started without mpiexec is then one process); tinygpt comes from where it does for pytest."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(_LAUNCHER_VARS)}
    env.update(OMP_NUM_THREADS="1", TINYGPT_DIST_TIMEOUT="60")
    env.update(extra)
    return env
