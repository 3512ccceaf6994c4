"""The CUDA kernel bindings and wrapper settings that can be checked without a GPU.

The GPU tests (tests/test_cuda_*.py) skip when `tinygpt.kernels.cuda.has(op)` is False, so a
launcher name that does not match LAUNCHERS would silently turn them into skips: this file fails
instead, wherever the extension was built with CUDA. The launchers' argument checks run before
any CUDA call, so they are exercised here too (no driver needed).
"""
import pytest

from tinygpt import kernels
from tinygpt.kernels import cuda as kcuda
from tinygpt.kernels import policy as kpolicy

_C = kernels._native
built_with_cuda = _C is not None and bool(_C.build_info().get("cuda"))
needs_cuda_build = pytest.mark.skipif(not built_with_cuda, reason="tinygpt._C was built without CUDA")

OURS = ["linear", "linear_gelu", "layer_norm", "add_layer_norm", "gelu", "adamw_step", "adamw_multi_step", "grad_norm",
        "attention", "qkv_attention", "softmax", "log_softmax", "cross_entropy", "dropout", "embedding"]


@needs_cuda_build
def test_every_wrapped_op_has_its_launchers():
    built = _C.build_info()["kernels"]
    for family in sorted({kernels.OPS[op].family for op in OURS}):  # each op's family, as csrc/registry.h names it
        assert f"cuda.{family}" in built, f"cuda.{family} missing from build_info()['kernels']: {built}"
    for op in OURS:
        missing = [n for n in kcuda.module(op).LAUNCHERS[op] if not hasattr(_C.cuda, n)]
        assert not missing and kcuda.has(op), f"{op}: launchers missing from tinygpt._C.cuda: {missing}"


@needs_cuda_build
def test_launcher_argument_checks_need_no_gpu():
    c = _C.cuda
    with pytest.raises(ValueError, match="gemm: precision must be 0"):
        c.linear_forward(0, 0, 0, 0, 0, 4, 4, 4, 7, 0)
    with pytest.raises(ValueError, match="gemm: negative size"):
        c.linear_backward_dx(0, 0, 0, -1, 4, 4, 1, 0)
    c.linear_backward_dw(0, 0, 0, 0, 5, 0, 3, 1, 1, 0)  # empty output (N = 0): nothing to launch
    with pytest.raises(ValueError, match=r"linear_backward_dw: splits must be in \[1, 64\]"):
        c.linear_backward_dw(0, 0, 0, 0, 5, 4, 3, 0, 1, 0)
    assert c.linear_dw_splits(0, 768, 768) == 1  # nothing to split (no device query needed)
    with pytest.raises(ValueError, match=r"column_sums: chunks must be in \[1, 65535\]"):
        c.column_sums(0, 0, 0, 4, 4, 0, 0)
    with pytest.raises(ValueError, match="layer_norm_forward: residual and s_out must be given together"):
        c.layer_norm_forward(0, 0, 0, 0, 0, 8, 0, 0, 1, 4, 1e-5, 0)
    with pytest.raises(ValueError, match="layer_norm_backward: weight and dweight must be given together"):
        c.layer_norm_backward(0, 0, 0, 0, 0, 0, 8, 0, 0, 0, 1, 4, 1, 0)
    with pytest.raises(ValueError, match="gelu_forward: negative size"):
        c.gelu_forward(0, 0, -1, True, 0)
    c.gelu_backward(0, 0, 0, 0, False, 0)  # n = 0: nothing to launch
    with pytest.raises(ValueError, match="adamw_step: step must be >= 1"):
        c.adamw_step(0, 0, 0, 0, 4, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0, step=0,
                            stream=0)
    with pytest.raises(ValueError, match="adamw_multi_step: need at least one tensor"):
        c.adamw_multi_step(0, 0, 0, 0, 1e-3, 0.9, 0.999, 1e-8, 0.0, 1, 0)
    assert c.adamw_multi_chunk() % 4 == 0
    with pytest.raises(ValueError, match=r"embedding_forward \(cuda\): need n >= 0, V >= 1 and C >= 1"):
        c.embedding_forward(0, 0, 0, 3, 0, 4, 0)
    with pytest.raises(ValueError, match=r"embedding_keys \(cuda\): n \* \(V \+ 1\) = .* overflows the int64 sort keys"):
        c.embedding_keys(0, 0, 2**40, 2**30, 0)
    c.embedding_keys(0, 0, 0, 5, 0)  # n = 0: nothing to launch


def test_precision_and_backend_settings():
    assert kpolicy.get_matmul_precision() in ("fp32", "tf32", "bf16")
    old = kpolicy.set_matmul_precision("tf32")
    try:
        assert kpolicy.get_matmul_precision() == "tf32"
        with pytest.raises(ValueError, match="matmul precision must be one of"):
            kpolicy.set_matmul_precision("fp16")
        assert kpolicy.get_matmul_precision() == "tf32"
    finally:
        kpolicy.set_matmul_precision(old)
    old = kpolicy.set_matmul_backend("ours")
    try:
        assert kpolicy.matmul_policy("linear", 4096, 768, 768)
        kpolicy.set_matmul_backend("cublas")
        assert not kpolicy.matmul_policy("linear_gelu", 4096, 768, 3072)
        kpolicy.set_matmul_backend("auto")  # measured per shape class on the GPU (tests/ops/test_linear.py)
        with pytest.raises(ValueError, match="matmul backend must be"):
            kpolicy.set_matmul_backend("cutlass")
    finally:
        kpolicy.set_matmul_backend(old)


def test_workspace_sizes():
    assert kcuda.linear.column_sum_chunks(0) == 1 and kcuda.linear.column_sum_chunks(33) == 2 and kcuda.linear.column_sum_chunks(10**6) == 256
    assert kcuda.layer_norm.backward_chunks(1) == 1 and kcuda.layer_norm.backward_chunks(17) == 3 and kcuda.layer_norm.backward_chunks(10**6) == 512
