// Kernels with known bugs and known results, for tests/test_cuda_emulator.py: each emulator
// check (include/tg_emu.h) must fire on its bug, and the built-ins must compute what CUDA's do.
// Compiled into tg_cuda_emu only (never into tinygpt._C), through translate.py like csrc/cuda.
#include <cuda_runtime.h>
#include <mma.h>

#include <cstdint>
#include <string>

#include "common.h"

namespace {

using namespace nvcuda;

__global__ void early_return_then_sync(float* out) {
  if (threadIdx.x < 16) return;
  __syncthreads();
  out[threadIdx.x] = 1.0f;
}

__global__ void half_warp_shuffle(float* out) {
  float v = static_cast<float>(threadIdx.x);
  if (threadIdx.x < 16) v = __shfl_xor_sync(0xffffffffu, v, 1);
  out[threadIdx.x] = v;
}

__global__ void shared_overflow(float* out) {
  __shared__ float small[32];
  small[threadIdx.x] = 1.0f;  // 64 threads
  __syncthreads();
  out[threadIdx.x] = small[threadIdx.x % 32];
}

__global__ void missing_barrier(float* out) {
  __shared__ float s[64];
  s[threadIdx.x] = static_cast<float>(threadIdx.x);
  out[threadIdx.x] = s[63 - threadIdx.x];  // no __syncthreads between the write and the read
}

__global__ void with_barrier(float* out) {
  __shared__ float s[64];
  s[threadIdx.x] = static_cast<float>(threadIdx.x);
  __syncthreads();
  out[threadIdx.x] = s[63 - threadIdx.x];
}

__device__ __forceinline__ void cp16(float* dst, const float* src) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(
                   static_cast<unsigned>(__cvta_generic_to_shared(dst))),
               "l"(src), "r"(16));
}

// 16 threads copy 64 floats into shared memory; wait: 0 = cp.async.wait_group 0 before the
// barrier (correct), 1 = no wait (the data may not have landed).
__global__ void cp_async_copy(const float* src, float* out, int wait) {
  extern __shared__ float dyn[];
  cp16(dyn + 4 * threadIdx.x, src + 4 * threadIdx.x);
  asm volatile("cp.async.commit_group;\n" ::);
  if (wait) asm volatile("cp.async.wait_group %0;\n" ::"n"(0) : "memory");
  __syncthreads();
  for (int i = 0; i < 4; ++i) out[4 * threadIdx.x + i] = dyn[4 * threadIdx.x + i];
}

__global__ void lane_shuffle(const float* in, float* out, int mask) {
  out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, in[threadIdx.x], mask);
}

// One m16n16k8 TF32 MMA: c (16 x 16, row-major) = a (16 x 8) b (8 x 16) + c; a_col / b_col pick
// the fragment layouts (a stored 8 x 16 / b stored 16 x 8 when column-major).
template <class LA, class LB>
__global__ void mma_tf32(const float* a, const float* b, float* c) {
  wmma::fragment<wmma::matrix_a, 16, 16, 8, wmma::precision::tf32, LA> fa;
  wmma::fragment<wmma::matrix_b, 16, 16, 8, wmma::precision::tf32, LB> fb;
  wmma::fragment<wmma::accumulator, 16, 16, 8, float> fc;
  wmma::load_matrix_sync(fa, a, std::is_same<LA, wmma::col_major>::value ? 16 : 8);
  wmma::load_matrix_sync(fb, b, std::is_same<LB, wmma::col_major>::value ? 8 : 16);
  for (int t = 0; t < fa.num_elements; ++t) fa.x[t] = wmma::__float_to_tf32(fa.x[t]);
  for (int t = 0; t < fb.num_elements; ++t) fb.x[t] = wmma::__float_to_tf32(fb.x[t]);
  wmma::fill_fragment(fc, 0.0f);
  wmma::mma_sync(fc, fa, fb, fc);
  wmma::store_matrix_sync(c, fc, 16, wmma::mem_row_major);
}

__global__ void nothing(float*) {}

__global__ void __launch_bounds__(64) bounded(float* out) { out[threadIdx.x] = 1.0f; }

}  // namespace

void tg_emu_selftest(const std::string& name, std::uintptr_t out, std::uintptr_t in, int arg) {
  float* o = reinterpret_cast<float*>(out);
  const float* i = reinterpret_cast<const float*>(in);
  if (name == "early_return_then_sync") {
    early_return_then_sync<<<1, 64>>>(o);
  } else if (name == "half_warp_shuffle") {
    half_warp_shuffle<<<1, 32>>>(o);
  } else if (name == "shared_overflow") {
    shared_overflow<<<1, 64>>>(o);
  } else if (name == "missing_barrier") {
    missing_barrier<<<1, 64>>>(o);
  } else if (name == "with_barrier") {
    with_barrier<<<1, 64>>>(o);
  } else if (name == "cp_async_copy") {  // arg: 0 no wait, 1 wait; in misaligned when arg == 2
    cp_async_copy<<<1, 16, 64 * sizeof(float)>>>(arg == 2 ? i + 1 : i, o, arg != 0);
  } else if (name == "lane_shuffle") {
    lane_shuffle<<<1, 32>>>(i, o, arg);
  } else if (name == "mma_tf32") {  // arg bit 0: a column-major, bit 1: b column-major
    const float* a = i;
    const float* b = i + 128;
    switch (arg) {
      case 0: mma_tf32<wmma::row_major, wmma::row_major><<<1, 32>>>(a, b, o); break;
      case 1: mma_tf32<wmma::col_major, wmma::row_major><<<1, 32>>>(a, b, o); break;
      case 2: mma_tf32<wmma::row_major, wmma::col_major><<<1, 32>>>(a, b, o); break;
      default: mma_tf32<wmma::col_major, wmma::col_major><<<1, 32>>>(a, b, o); break;
    }
  } else if (name == "above_launch_bounds") {
    bounded<<<1, 128>>>(o);
  } else if (name == "too_many_threads") {
    nothing<<<1, 2048>>>(o);
  } else if (name == "too_much_dynamic_smem") {
    nothing<<<1, 32, 64 * 1024>>>(o);
  } else {
    TG_CHECK(false, "no self-test ", name);
  }
  TG_CUDA_CHECK_LAUNCH();
}
