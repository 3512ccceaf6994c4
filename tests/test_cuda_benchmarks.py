"""The GPU benchmarks' code paths with the CUDA kernels on: benchmarks/cuda_kernels.py --smoke and
benchmarks/gpu.py on tiny configurations. Marked `gpu`; without a GPU they run on the CPU emulator
(TINYGPT_CUDA_EMULATOR=1), so a benchmark that has never met a GPU does not first fail there.
Timings are not checked: only that every row is produced, without errors.
"""
import pytest

import tinygpt as tg
from tinygpt.kernels import cuda as kcuda

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not (kcuda.has("linear_gelu") and kcuda.has("qkv_attention")),
                                 reason="tinygpt._C was built without the CUDA kernels")]

from helpers import load_benchmark, run_tiny_gpu_benchmark


def test_cuda_kernels_smoke(monkeypatch, capsys):
    bench = load_benchmark("cuda_kernels", monkeypatch)
    assert bench.main(["--smoke"]) == 0
    text = capsys.readouterr().out
    for what in ("matmul", "ours-fp32", "ours-tf32", "ours-bf16", "cublas", "linear_gelu", "layer_norm",
                 "add_layer_norm", "gelu-tanh", "gelu-none", "adamw_step", "dropout", "softmax", "log_softmax",
                 "cross_entropy", "embedding", "attention", "attention full", "qkv_attention"):
        assert what in text, what
    assert "Traceback" not in text


def test_gpu_benchmark_with_the_cuda_kernels(monkeypatch, tmp_path, capsys):
    report = run_tiny_gpu_benchmark(monkeypatch, tmp_path)
    assert report["device"]["tinygpt_cuda_ops"] == tg.kernels.cuda_ops() and "qkv_attention" in tg.kernels.cuda_ops()
    for r in report["model"]:
        assert r["errors"] == {}, r["errors"]
        assert set(r["results"]) == {"tinygpt-cuda", "tinygpt-ref"}
        assert all(v["tokens_per_s"] > 0 for v in r["results"].values())
    # the 'auto' GEMM dispatch measured every linear layer's forward and backward, and says so
    choices = report["matmul_choices"]
    assert {(c["op"], c["direction"]) for c in choices} == {(op, d) for op in ("linear", "linear_gelu")
                                                           for d in ("forward", "backward")}
    assert all(c["choice"] in ("ours", "cublas") and c["ours_ms"] > 0 and c["cublas_ms"] > 0 for c in choices)
    assert "GEMM dispatch ('auto'" in capsys.readouterr().out
    assert not [r for r in report["kernels"] if "error" in r]
    assert any("native" in r.get("impls", {}) for r in report["kernels"])
