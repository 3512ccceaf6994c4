"""The CPU emulator behind TINYGPT_CUDA_EMULATOR=1 (tests/cuda_emu).

Its verdicts on csrc/cuda are only worth something if (1) each check it claims fires on the bug
it is for, (2) its built-ins (shuffles, WMMA, cp.async) compute what CUDA's do, and (3)
translate.py rewrites exactly the constructs csrc/cuda uses and refuses others. The kernels with
known bugs and known results are in tests/cuda_emu/selftest.cu.
"""
import os
import platform
import shutil
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "cuda_emu"))
import translate  # noqa: E402

buildable = pytest.mark.skipif(
    platform.machine() not in ("x86_64", "AMD64") or shutil.which(os.environ.get("CXX", "g++")) is None,
    reason="the emulator needs g++ on x86-64")


@pytest.fixture(scope="module")
def emu():
    pytest.importorskip("pybind11")
    import build

    return build.load()


def _run(emu, name, out, inp=None, arg=0):
    emu.selftest(name, out.ctypes.data, 0 if inp is None else inp.ctypes.data, arg)
    return out


# ------------------------------------------------------------------ the checks fire
@buildable
@pytest.mark.parametrize("name,message", [
    ("early_return_then_sync", r"__syncthreads after 16 of the block's 64 threads returned"),
    ("half_warp_shuffle", r"returned while lanes of its warp wait|deadlock"),
    ("shared_overflow", r"wrote past the end of __shared__ small \(128 bytes\)"),
    ("above_launch_bounds", r"128 threads per block, above its __launch_bounds__\(64\)"),
])
def test_device_bugs_are_errors(emu, name, message):
    with pytest.raises(RuntimeError, match=message) as info:
        _run(emu, name, np.zeros(64, np.float32))
    assert "CUDA emulator: kernel" in str(info.value)


@buildable
def test_a_missing_barrier_reads_poison(emu):
    """Threads run until a barrier, so a read before the barrier sees shared memory unwritten (NaN)."""
    bad = _run(emu, "missing_barrier", np.zeros(64, np.float32))
    good = _run(emu, "with_barrier", np.zeros(64, np.float32))
    np.testing.assert_array_equal(good, np.arange(64)[::-1])
    assert np.isnan(bad).any()


@buildable
def test_cp_async_lands_at_wait_group(emu):
    src_aligned = np.zeros(64 + 16, np.float32)
    off = (-(src_aligned.ctypes.data // 4)) % 4  # a 16-byte aligned start
    src = src_aligned[off:off + 64]
    src[:] = np.arange(64)
    np.testing.assert_array_equal(_run(emu, "cp_async_copy", np.zeros(64, np.float32), src, 1), src)
    assert np.isnan(_run(emu, "cp_async_copy", np.zeros(64, np.float32), src, 0)).all()  # no wait: not landed
    with pytest.raises(RuntimeError, match="cp.async: global source not 16-byte aligned"):
        _run(emu, "cp_async_copy", np.zeros(64, np.float32), src, 2)


@buildable
@pytest.mark.parametrize("name,error", [("too_many_threads", "cudaErrorInvalidConfiguration"),
                                        ("too_much_dynamic_smem", "cudaErrorInvalidValue")])
def test_launch_limits_are_cuda_errors(emu, name, error):
    with pytest.raises(RuntimeError, match=f"CUDA error {error}"):
        _run(emu, name, np.zeros(64, np.float32))


# ------------------------------------------------------------------ the built-ins compute what CUDA's do
@buildable
@pytest.mark.parametrize("mask", [1, 2, 8, 16, 31])
def test_shfl_xor(emu, mask):
    x = np.random.default_rng(mask).standard_normal(32).astype(np.float32)
    out = _run(emu, "lane_shuffle", np.zeros(32, np.float32), x, mask)
    np.testing.assert_array_equal(out, x[np.arange(32) ^ mask])


def _tf32_rna(a):
    bits = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)
    return ((bits + np.uint32(0x1000)) & np.uint32(0xFFFFE000)).view(np.float32)


@buildable
@pytest.mark.parametrize("layouts", [0, 1, 2, 3])
def test_wmma_tf32_mma(emu, layouts):
    """c = a @ b on TF32-rounded inputs, for row/column-major a and b fragments."""
    rng = np.random.default_rng(layouts)
    a = rng.standard_normal((16, 8)).astype(np.float32)
    b = rng.standard_normal((8, 16)).astype(np.float32)
    buf = np.zeros(256 + 8, np.float32)
    off = (-(buf.ctypes.data // 4)) % 8  # 32-byte aligned, as load_matrix_sync requires
    packed = buf[off:off + 256]
    packed[:128] = (a.T if layouts & 1 else a).ravel()
    packed[128:] = (b.T if layouts & 2 else b).ravel()
    c = np.zeros(256 + 8, np.float32)
    coff = (-(c.ctypes.data // 4)) % 8
    out = c[coff:coff + 256]
    emu.selftest("mma_tf32", out.ctypes.data, packed.ctypes.data, layouts)
    want = _tf32_rna(a).astype(np.float64) @ _tf32_rna(b).astype(np.float64)
    np.testing.assert_allclose(out.reshape(16, 16), want, rtol=1e-6, atol=1e-6)
    assert not np.allclose(out.reshape(16, 16), a.astype(np.float64) @ b, rtol=1e-7, atol=0)  # really TF32


# ------------------------------------------------------------------ translate.py
def test_translate_launches_shared_and_cp_async():
    src = '''
__global__ void k(float* o) {
  __shared__ float red[8][33];
  extern __shared__ __align__(128) unsigned char raw[];
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\\n" ::"r"(addr(o)), "l"(o), "r"(n));
  asm volatile("cp.async.commit_group;\\n" ::);
  asm volatile("cp.async.wait_group %0;\\n" ::"n"(1) : "memory");
}
void launch(float* o, cudaStream_t s) {
  k<<<dim3(2, 3), 64, 0, s>>>(o);
  kt<float, 4><<<1,
                32>>>(o, 1);
}
'''
    out = translate.translate(src.replace("__global__ void k(", "__global__ void __launch_bounds__(64, 2) k("), "x.cu")
    assert "k(float* o) { ::tg_emu::check_launch_bounds(64);" in out
    assert 'auto& red = ::tg_emu::shared_var<float[8][33]>(__COUNTER__, "red");' in out
    assert "unsigned char* raw = ::tg_emu::dynamic_smem<unsigned char>();" in out
    assert "::tg_emu::cp_async(static_cast<unsigned>(addr(o)), o, 16, n)" in out
    assert "::tg_emu::cp_async_commit()" in out and "::tg_emu::cp_async_wait(1)" in out
    assert '::tg_emu::launch_kernel("k", k, ::tg_emu::LaunchConfig(dim3(2, 3), 64, 0, s), o);' in out
    assert '::tg_emu::launch_kernel("kt<float, 4>", kt<float, 4>, ::tg_emu::LaunchConfig(1,\n' in out
    assert out.count("\n") == src.count("\n")  # compiler messages keep their line numbers


@pytest.mark.parametrize("src,message", [
    ('asm volatile("mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 ...;" ::);', "inline PTX the emulator does not know"),
    ("__shared__ float *p;", "__shared__ declaration the emulator cannot rewrite"),
])
def test_translate_refuses_what_it_cannot_emulate(src, message):
    with pytest.raises(translate.TranslationError, match=message):
        translate.translate(src, "x.cu")


def test_translate_handles_every_csrc_cuda_file():
    root = os.path.join(os.path.dirname(__file__), "..", "csrc", "cuda")
    for name in sorted(os.listdir(root)):
        if name.endswith((".cu", ".cuh")):
            with open(os.path.join(root, name)) as f:
                text = f.read()
            out = translate.translate(text, name)
            assert "<<<" not in out  # (a __shared__ or asm left over would have raised)
            assert out.count("\n") == text.count("\n")


# ------------------------------------------------------------------ benchmarks/gpu_launches.py
@buildable
def test_gpu_step_launch_count(emu, monkeypatch):
    """One Shakespeare-model training step on the GPU path: AdamW and clip_grad_norm_ are multi-tensor
    launches, leaf gradients are not copied, and the step stays near its 217 launches with our GEMM on
    every layer (247 with cuBLAS on every layer; 904 before the multi-tensor work)."""
    from helpers import load_benchmark

    bench = load_benchmark("gpu_launches", monkeypatch)
    cublas, _ = bench.count_step("shakespeare", matmul="cublas")
    assert cublas["cupy matmul"] == 75 and sum(cublas.values()) <= 255
    counts, n_params = bench.count_step("shakespeare")
    assert n_params == 76
    assert counts["native adamw_multi_step"] == 2  # two param groups (decay / no decay)
    # the clip scale is computed on the device (grad_clip), never read back: no grad_scale with a host value
    assert counts["native grad_norm"] == 1 and counts["native grad_clip"] == 1 and "native grad_scale" not in counts
    assert "native adamw_step" not in counts and "cupy absolute" not in counts and "cupy copy" not in counts
    assert counts["native qkv_attention_forward"] == counts["native qkv_attention_backward"] == 6
    assert "cupy matmul" not in counts and counts["native linear_forward"] == 25
    assert sum(counts.values()) <= 225, sorted(counts.items(), key=lambda kv: -kv[1])[:10]
