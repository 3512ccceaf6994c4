"""tests/test_gpu.py's test bodies on the CPU, with a NumPy-backed stand-in for CuPy (fake_cupy.py).

This runs everywhere and checks the GPU path's wiring: every op, Function, the model, the
optimisers, checkpoints, generation and the example keep their data on the 'cuda' device (a
host array leaking in would raise a mixed-device error) and give the CPU's results. It does
not check CuPy itself or the CUDA kernels: tests/test_gpu.py does that on a real GPU.
"""
import numpy as np
import pytest

import fake_cupy
import test_gpu
from test_gpu import *  # noqa: F401,F403 - the test functions, collected here a second time

pytestmark = [pytest.mark.usefixtures("simulated_gpu"),
              pytest.mark.skipif(int(np.__version__.split(".")[0]) < 2,
                                 reason="the stand-in needs NumPy 2 (0-d results through __array_wrap__)")]


@pytest.fixture
def simulated_gpu(monkeypatch):
    if test_gpu.backend.cuda_available():
        pytest.skip("a real GPU is present: tests/test_gpu.py runs there")
    fake_cupy.install(monkeypatch)
    yield


def test_the_stand_in_is_in_use():
    import tinygpt as tg

    x = tg.zeros(2, device="cuda")
    assert x.device == "cuda" and isinstance(x.data, fake_cupy.GpuArray)
    assert (x + 1.0).sum().device == "cuda"  # 0-d results stay on the 'device'
    with pytest.raises(ValueError, match="add: tensors on different devices"):
        x + tg.zeros(2)


def test_gpu_benchmark_runs_on_the_stand_in(monkeypatch, tmp_path, capsys):
    """benchmarks/gpu.py end to end on tiny configurations (its code paths, not its timings)."""
    from helpers import run_tiny_gpu_benchmark

    report = run_tiny_gpu_benchmark(monkeypatch, tmp_path)
    assert report["device"]["gpu"] == "Fake GPU (numpy)" and report["device"]["peaks"] is None
    for r in report["model"]:
        assert r["errors"] == {} and set(r["results"]) == {"tinygpt-ref"}
        assert r["results"]["tinygpt-ref"]["tokens_per_s"] > 0
    assert len(report["kernels"]) == 2 * 14 and not [r for r in report["kernels"] if "error" in r]
    text = capsys.readouterr().out
    assert "tinygpt-ref" in text and "attention causal" in text
