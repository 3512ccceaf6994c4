"""Build `tg_cuda_emu`: tinygpt._C.cuda's launchers over csrc/cuda's kernels, run on the CPU.

The CUDA sources are rewritten by translate.py, compiled by g++ against the emulator's
headers (include/: cuda_runtime.h, mma.h, cuda_bf16.h) with csrc/cuda/registry.cpp's own
bindings and runtime.cpp's fiber scheduler, and linked into one Python extension. The result is
cached under build/cuda-emu/<hash of every input>/ in the repository, so the suite builds it
once per source change (about a minute on 2 cores).

    python tests/cuda_emu/build.py        # build (if needed) and print the module's directory

tests/conftest.py calls `build()` when TINYGPT_CUDA_EMULATOR=1 and runs the CUDA kernel tests
(tests/test_cuda_*.py) on it; see tests/cuda_emu/include/tg_emu.h for what is and is not checked.
"""
from __future__ import annotations

import concurrent.futures
import hashlib
import os
import pathlib
import shutil
import subprocess
import sys
import sysconfig
import tempfile

HERE = pathlib.Path(__file__).resolve().parent
REPO = HERE.parents[1]
CSRC = REPO / "csrc"
MODULE = "tg_cuda_emu"
NOT_EMULATED = "runtime.cu"  # the real driver queries behind tinygpt._C.cuda_status(); the bindings need none
FLAGS = ["-std=c++17", "-O2", "-fPIC", "-fvisibility=hidden", "-pthread", "-Wall", "-Wno-unknown-pragmas",
         "-Wno-unused-function", "-Wno-unused-variable", "-Wno-unused-but-set-variable",
         "-D__CUDACC__", "-DTINYGPT_WITH_CUDA"]

sys.path.insert(0, str(HERE))
import translate  # noqa: E402


def _inputs() -> list[pathlib.Path]:
    cuda = sorted(p for p in (CSRC / "cuda").iterdir()
                  if p.suffix in {".cu", ".cuh", ".h", ".cpp"} and p.name != NOT_EMULATED)
    own = sorted(p for p in HERE.rglob("*") if p.suffix in {".h", ".cpp", ".cu", ".py"})
    return cuda + own + [CSRC / "common.h", CSRC / "registry.h", CSRC / "cpu" / "rng.h"]


def _key(cxx: str) -> str:
    h = hashlib.sha256()
    for p in _inputs():
        h.update(str(p.relative_to(REPO)).encode() + b"\0" + p.read_bytes() + b"\0")
    h.update(" ".join([cxx, *FLAGS, sys.version, sysconfig.get_config_var("EXT_SUFFIX") or ""]).encode())
    return h.hexdigest()[:16]


def _pybind11_include() -> str:
    import pybind11

    return pybind11.get_include()


def build(out_root: pathlib.Path | None = None, jobs: int | None = None, quiet: bool = True) -> pathlib.Path:
    """Build (or reuse) the module; returns the directory to put on sys.path."""
    cxx = os.environ.get("CXX", "g++")
    out_root = pathlib.Path(out_root or REPO / "build" / "cuda-emu")
    final = out_root / _key(cxx)
    suffix = sysconfig.get_config_var("EXT_SUFFIX") or ".so"
    if (final / (MODULE + suffix)).exists():
        return final
    out_root.mkdir(parents=True, exist_ok=True)
    work = pathlib.Path(tempfile.mkdtemp(prefix="tmp-", dir=out_root))
    try:
        src = work / "src"
        (src / "cuda").mkdir(parents=True)
        units = []
        for p in sorted((CSRC / "cuda").iterdir()):
            if p.name == NOT_EMULATED:
                continue
            if p.suffix in {".cu", ".cuh"}:
                text = translate.translate(p.read_text(), str(p.relative_to(REPO)))
                dst = src / "cuda" / (p.name + (".cpp" if p.suffix == ".cu" else ""))
                # Compiler messages name the original file and lines (the rewrite keeps lines).
                dst.write_text(f'#line 1 "{p}"\n' + text)
                if p.suffix == ".cu":
                    units.append(dst)
            elif p.suffix == ".h":
                shutil.copy(p, src / "cuda" / p.name)
        selftest = src / "selftest.cu.cpp"
        selftest.write_text(f'#line 1 "{HERE / "selftest.cu"}"\n' + translate.translate(
            (HERE / "selftest.cu").read_text(), "tests/cuda_emu/selftest.cu"))
        units += [selftest, HERE / "runtime.cpp", HERE / "module.cpp"]
        includes = ["-I", str(HERE / "include"), "-I", str(src), "-I", str(CSRC),
                    "-isystem", _pybind11_include(), "-isystem", sysconfig.get_paths()["include"]]

        def compile_one(unit: pathlib.Path) -> pathlib.Path:
            obj = work / (unit.name + ".o")
            cmd = [cxx, *FLAGS, *includes, "-c", str(unit), "-o", str(obj)]
            r = subprocess.run(cmd, capture_output=True, text=True)
            if r.returncode != 0:
                raise RuntimeError(f"CUDA emulator: compiling {unit.name} failed:\n{r.stderr[-6000:]}")
            if r.stderr.strip() and not quiet:
                print(r.stderr, file=sys.stderr)
            return obj

        with concurrent.futures.ThreadPoolExecutor(jobs or os.cpu_count() or 2) as pool:
            objs = list(pool.map(compile_one, units))
        lib = work / (MODULE + suffix)
        r = subprocess.run([cxx, "-shared", "-pthread", "-o", str(lib), *map(str, objs)], capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"CUDA emulator: linking failed:\n{r.stderr[-6000:]}")
        final.mkdir()
        os.replace(lib, final / lib.name)
        return final
    finally:
        shutil.rmtree(work, ignore_errors=True)


def load():
    """Import the emulated module (building it first if needed)."""
    path = str(build())
    if path not in sys.path:
        sys.path.insert(0, path)
    import importlib

    return importlib.import_module(MODULE)


if __name__ == "__main__":
    print(build(quiet=False))
