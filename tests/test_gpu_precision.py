"""The GEMM precision of GPU training (kernels/policy.py), on the NumPy-backed CuPy stand-in.

Training on the GPU defaults to TF32 (as nanoGPT), fp32 stays one flag away, and every cuBLAS product
tinygpt runs, the autotuner's measurements included, uses the same precision as our GEMM (CuPy's
float32 compute type), so 'auto' compares like with like.
"""
import numpy as np
import pytest

import fake_cupy
import tinygpt as tg
from tinygpt.cli import train as train_cli
from tinygpt.kernels import policy

pytestmark = pytest.mark.skipif(int(np.__version__.split(".")[0]) < 2,
                                reason="the stand-in needs NumPy 2 (0-d results through __array_wrap__)")
L = fake_cupy._Linalg
TYPE = {"fp32": L.COMPUTE_TYPE_DEFAULT, "tf32": L.COMPUTE_TYPE_TF32, "bf16": L.COMPUTE_TYPE_BF16}


@pytest.fixture
def fake(monkeypatch):
    if tg.backend.cuda_available() and not isinstance(tg.backend._cupy, fake_cupy.FakeCupy):
        pytest.skip("a real GPU is present: the stand-in records the compute types")
    cp = fake_cupy.install(monkeypatch)
    monkeypatch.setattr(policy, "_matmul_precision", "fp32")
    monkeypatch.setattr(policy, "_matmul_choices", {})
    monkeypatch.delenv("TINYGPT_MATMUL_PRECISION", raising=False)
    return cp


def test_training_defaults_to_tf32_on_the_gpu_only(fake, monkeypatch):
    assert policy.training_matmul_precision("cuda") == "tf32"
    assert policy.training_matmul_precision("cpu") == "fp32"
    assert policy.training_matmul_precision("cuda", "fp32") == "fp32"  # the flag wins
    monkeypatch.setenv("TINYGPT_MATMUL_PRECISION", "bf16")
    monkeypatch.setattr(policy, "_matmul_precision", "bf16")  # as read at import
    assert policy.training_matmul_precision("cuda") == "bf16"  # then the environment
    with pytest.raises(ValueError, match="matmul precision must be one of"):
        policy.training_matmul_precision("cuda", "fp16")


@pytest.mark.parametrize("precision", ["fp32", "tf32", "bf16"])
@pytest.mark.parametrize("backend", ["auto", "cublas"])
def test_cublas_runs_in_our_gemms_precision(fake, monkeypatch, precision, backend):
    linalg = fake._core._routines_linalg
    seen, ran = [], []
    monkeypatch.setattr(policy, "_matmul_backend", backend)
    with policy.matmul_precision(precision, "cpu"):  # our GEMM's setting only: CuPy's stays DEFAULT
        policy.run_gemm("linear", "forward", 8, 4, 4, lambda: ran.append("ours"),
                        lambda: seen.append(linalg.get_compute_type(np.float32)))  # what cupy.matmul would use
    assert seen and set(seen) == {TYPE[precision]}  # measured and run in the same precision as ours
    assert ("ours" in ran) == (backend == "auto")
    assert linalg.get_compute_type(np.float32) == L.COMPUTE_TYPE_DEFAULT  # restored after each product
    if backend == "auto":
        (key, choice), = policy.matmul_choices().items()
        assert key[-1] == precision  # the choice is kept per precision


def test_train_cli_trains_in_tf32_on_the_gpu_and_restores(fake, tmp_path):
    args = ["--device", "cuda", "--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--block-size", "16",
            "--batch-size", "2", "--max-iters", "2", "--eval-interval", "2", "--eval-iters", "1",
            "--final-eval-iters", "1", "--sample-tokens", "0", "--no-plot", "--no-progress"]
    linalg = fake._core._routines_linalg
    summary = train_cli.main(args + ["--out-dir", str(tmp_path / "a")])
    assert summary["args"]["matmul_precision"] == "tf32"
    assert policy.get_matmul_precision() == "fp32" and linalg.get_compute_type(np.float32) == L.COMPUTE_TYPE_DEFAULT
    summary = train_cli.main(args + ["--out-dir", str(tmp_path / "b"), "--matmul-precision", "fp32"])
    assert summary["args"]["matmul_precision"] == "fp32"
    summary = train_cli.main(args[2:] + ["--out-dir", str(tmp_path / "c")])  # the CPU: fp32, nothing to switch
    assert summary["args"]["matmul_precision"] == "fp32"


def test_the_run_sets_cupys_compute_type_for_the_reference_too(fake):
    linalg = fake._core._routines_linalg
    with policy.matmul_precision("tf32"):
        assert policy.get_matmul_precision() == "tf32"
        assert linalg.get_compute_type(np.float32) == L.COMPUTE_TYPE_TF32
    assert policy.get_matmul_precision() == "fp32"
    assert linalg.get_compute_type(np.float32) == L.COMPUTE_TYPE_DEFAULT
