"""The CUDA kernel bindings and wrapper settings that can be checked without a GPU.

The GPU tests (tests/test_cuda_*.py) skip when `tinygpt.kernels.cuda.has(op)` is False, so a
launcher name that does not match LAUNCHERS would silently turn them into skips: this file fails
instead, wherever the extension was built with CUDA. The launchers' argument checks run before
any CUDA call, so they are exercised here too (no driver needed).
"""
import pytest

from tinygpt import kernels
from tinygpt.kernels import cuda as kcuda

_C = kernels._native
built_with_cuda = _C is not None and bool(_C.build_info().get("cuda"))
needs_cuda_build = pytest.mark.skipif(not built_with_cuda, reason="tinygpt._C was built without CUDA")

OURS = ["linear", "linear_gelu", "layernorm", "add_layernorm", "gelu", "adamw_step", "adamw_multi_step", "grad_norm",
        "attention", "attention_qkv", "softmax", "log_softmax", "cross_entropy", "dropout", "embedding"]


@needs_cuda_build
def test_every_wrapped_op_has_its_launchers():
    for family in ("cuda.matmul", "cuda.layernorm", "cuda.gelu", "cuda.adamw", "cuda.grad_norm", "cuda.attention",
                   "cuda.softmax", "cuda.cross_entropy", "cuda.dropout", "cuda.embedding"):
        assert family in _C.build_info()["kernels"]
    for op in OURS:
        missing = [n for n in kcuda.LAUNCHERS[op] if not hasattr(_C.cuda, n)]
        assert not missing and kcuda.has(op), f"{op}: launchers missing from tinygpt._C.cuda: {missing}"


@needs_cuda_build
def test_launcher_argument_checks_need_no_gpu():
    c = _C.cuda
    with pytest.raises(ValueError, match="matmul: precision must be 0"):
        c.linear_forward_launch(0, 0, 0, 0, 0, 4, 4, 4, 7, 0)
    with pytest.raises(ValueError, match="matmul: negative size"):
        c.linear_backward_dx_launch(0, 0, 0, -1, 4, 4, 1, 0)
    c.linear_backward_dw_launch(0, 0, 0, 0, 5, 0, 3, 1, 1, 0)  # empty output (N = 0): nothing to launch
    with pytest.raises(ValueError, match=r"linear_backward_dw: splits must be in \[1, 64\]"):
        c.linear_backward_dw_launch(0, 0, 0, 0, 5, 4, 3, 0, 1, 0)
    assert c.linear_dw_splits(0, 768, 768) == 1  # nothing to split (no device query needed)
    with pytest.raises(ValueError, match=r"colsum: chunks must be in \[1, 65535\]"):
        c.colsum_launch(0, 0, 0, 4, 4, 0, 0)
    with pytest.raises(ValueError, match="layernorm_forward: residual and s_out must be given together"):
        c.layernorm_forward_launch(0, 0, 0, 0, 0, 8, 0, 0, 1, 4, 1e-5, 0)
    with pytest.raises(ValueError, match="layernorm_backward: weight and dweight must be given together"):
        c.layernorm_backward_launch(0, 0, 0, 0, 0, 0, 8, 0, 0, 0, 1, 4, 1, 0)
    with pytest.raises(ValueError, match="gelu_forward: negative size"):
        c.gelu_forward_launch(0, 0, -1, True, 0)
    c.gelu_backward_launch(0, 0, 0, 0, False, 0)  # n = 0: nothing to launch
    with pytest.raises(ValueError, match="adamw_step: step must be >= 1"):
        c.adamw_step_launch(0, 0, 0, 0, 4, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0, step=0,
                            stream=0)
    with pytest.raises(ValueError, match="adamw_multi_step: need at least one tensor"):
        c.adamw_multi_step_launch(0, 0, 0, 0, 1e-3, 0.9, 0.999, 1e-8, 0.0, 1, 0)
    assert c.adamw_multi_chunk() % 4 == 0
    with pytest.raises(ValueError, match=r"embedding_forward \(cuda\): need n >= 0, V >= 1 and C >= 1"):
        c.embedding_forward_launch(0, 0, 0, 3, 0, 4, 0)
    with pytest.raises(ValueError, match=r"embedding_keys \(cuda\): n \* \(V \+ 1\) = .* overflows the int64 sort keys"):
        c.embedding_keys_launch(0, 0, 2**40, 2**30, 0)
    c.embedding_keys_launch(0, 0, 0, 5, 0)  # n = 0: nothing to launch


def test_precision_and_backend_settings():
    assert kcuda.get_matmul_precision() in ("fp32", "tf32", "bf16")
    old = kcuda.set_matmul_precision("tf32")
    try:
        assert kcuda.get_matmul_precision() == "tf32"
        with pytest.raises(ValueError, match="matmul precision must be one of"):
            kcuda.set_matmul_precision("fp16")
        assert kcuda.get_matmul_precision() == "tf32"
    finally:
        kcuda.set_matmul_precision(old)
    old = kcuda.set_matmul_backend("ours")
    try:
        assert kcuda.matmul_policy("linear", 4096, 768, 768)
        kcuda.set_matmul_backend("cublas")
        assert not kcuda.matmul_policy("linear_gelu", 4096, 768, 3072)
        kcuda.set_matmul_backend("auto")  # measured per shape class on the GPU (tests/test_cuda_matmul.py)
        with pytest.raises(ValueError, match="matmul backend must be"):
            kcuda.set_matmul_backend("cutlass")
    finally:
        kcuda.set_matmul_backend(old)


def test_workspace_sizes():
    assert kcuda._colsum_chunks(0) == 1 and kcuda._colsum_chunks(33) == 2 and kcuda._colsum_chunks(10**6) == 256
    assert kcuda._ln_chunks(1) == 1 and kcuda._ln_chunks(17) == 3 and kcuda._ln_chunks(10**6) == 512
