// The CUDA grad-norm family, for clip_grad_norm_ on the GPU (tinygpt/nn/utils.py): the joint norm of
// a list of float32 gradients and their in-place scaling, each in one multi-tensor launch instead of
// several array ops per parameter (5 CuPy kernels per gradient for the norm alone, ~380 launches per
// step for the 76 parameters of the nanoGPT Shakespeare model).
//
//   norm:  partial[b] = sum g^2 (float64) over block b's chunk (or max |g|); a second one-block
//          kernel combines the partials in a fixed order into a 0-d float64 (no atomics: the result is
//          deterministic). NaN propagates through both (also through max, as numpy's max does).
//   scale: g *= scale (float32 multiply, as `g *= coef` on a float32 array with a Python float).
//   clip:  the same scale computed on the device from the norm's 0-d result (no host read).
// Tensors are described as in every multi-tensor launch (csrc/cuda/multi_tensor.cuh): table[2 t] =
// device pointer of tensor t, table[2 t + 1] = its size; each block one kChunk-element chunk of one tensor.
// Napkin math: one read of every gradient (4 B/element) for the norm, read + write (8 B) for the scale;
// GPT-2 small, 124M gradients -> 0.5 GB -> ~0.15 ms at 3.35 TB/s.
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>

#include "common.h"
#include "registry.h"
#include "cuda/multi_tensor.cuh"

namespace tinygpt {
namespace cuda_grad_norm {
namespace {

using multi_tensor::kChunk;
constexpr int kThreads = 256;

__device__ __forceinline__ double combine(double a, double b, bool max_abs) {
  if (!max_abs) return a + b;
  return (a != a || b != b) ? a + b : fmax(a, b);  // a NaN wins, as numpy's max
}

// The block's threads' values combined in a fixed order (warp shuffles, then the 8 warps in order);
// the result in thread 0.
__device__ __forceinline__ double block_combine(double v, bool max_abs) {
  __shared__ double red[kThreads / 32];
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = combine(v, __shfl_xor_sync(0xffffffffu, v, o), max_abs);
  if (threadIdx.x % 32 == 0) red[threadIdx.x / 32] = v;
  __syncthreads();
  if (threadIdx.x == 0) {
    v = red[0];
    for (int w = 1; w < kThreads / 32; ++w) v = combine(v, red[w], max_abs);
  }
  return v;
}

__global__ void __launch_bounds__(kThreads)
    norm_partial_kernel(const long long* __restrict__ table, const long long* __restrict__ block_start, int T,
                        bool max_abs, double* __restrict__ partial) {
  const long long b = blockIdx.x;
  const multi_tensor::Chunk c = multi_tensor::chunk_of(table, 2, block_start, T, b);
  const float* g = reinterpret_cast<const float*>(c.row[0]);
  double acc = 0.0;
  for (long long i = c.begin + threadIdx.x; i < c.end; i += kThreads) {
    const double v = static_cast<double>(__ldg(g + i));
    acc = max_abs ? combine(acc, fabs(v), true) : fma(v, v, acc);
  }
  acc = block_combine(acc, max_abs);
  if (threadIdx.x == 0) partial[b] = acc;
}

__global__ void __launch_bounds__(kThreads)
    norm_finish_kernel(const double* __restrict__ partial, long long num_blocks, bool max_abs,
                       double* __restrict__ out) {
  double acc = 0.0;
  for (long long i = threadIdx.x; i < num_blocks; i += kThreads) acc = combine(acc, partial[i], max_abs);
  acc = block_combine(acc, max_abs);
  if (threadIdx.x == 0) out[0] = acc;
}

__global__ void __launch_bounds__(kThreads)
    scale_kernel(const long long* __restrict__ table, const long long* __restrict__ block_start, int T,
                 float scale) {
  const multi_tensor::Chunk c = multi_tensor::chunk_of(table, 2, block_start, T, blockIdx.x);
  float* g = reinterpret_cast<float*>(c.row[0]);
  for (long long i = c.begin + threadIdx.x; i < c.end; i += kThreads) g[i] *= scale;
}

// clip_grad_norm_'s scale with the norm left on the device: total = sqrt(sum) (or the max), coef =
// max_norm / (total + 1e-6) in float64 as the host computed it, and g *= float32(coef) unless coef >= 1
// (so a NaN norm scales by NaN, as torch). Every thread derives coef from the one value: no host read.
__global__ void __launch_bounds__(kThreads)
    clip_kernel(const long long* __restrict__ table, const long long* __restrict__ block_start, int T,
                const double* __restrict__ norm, double max_norm, bool max_abs) {
  const double v = *norm;
  const double coef = max_norm / ((max_abs ? v : sqrt(v)) + 1e-6);
  if (coef >= 1.0) return;
  const float scale = static_cast<float>(coef);
  const multi_tensor::Chunk c = multi_tensor::chunk_of(table, 2, block_start, T, blockIdx.x);
  float* g = reinterpret_cast<float*>(c.row[0]);
  for (long long i = c.begin + threadIdx.x; i < c.end; i += kThreads) g[i] *= scale;
}

void check_counts(const char* op, int num_tensors, long long num_blocks) {
  TG_CHECK(num_tensors >= 1, op, ": need at least one tensor, got ", num_tensors);
  TG_CHECK(num_blocks >= 0 && num_blocks <= 2147483647LL, op, ": bad block count ", num_blocks);
}

}  // namespace
}  // namespace cuda_grad_norm
}  // namespace tinygpt

namespace tinygpt {
namespace cuda {
namespace {

using namespace cuda_grad_norm;

// ------------------------------------------------------------------------------ launchers
long long grad_norm_chunk() { return kChunk; }

void grad_norm(std::uintptr_t out, std::uintptr_t partial, std::uintptr_t table, std::uintptr_t block_start,
                       int num_tensors, long long num_blocks, bool max_abs, std::uintptr_t stream) {
  check_counts("grad_norm", num_tensors, num_blocks);
  auto s = reinterpret_cast<cudaStream_t>(stream);
  auto* o = reinterpret_cast<double*>(out);
  if (num_blocks == 0) {  // only empty tensors: the sum (or max) of nothing is 0
    TG_CUDA_CHECK(cudaMemsetAsync(o, 0, sizeof(double), s));
    return;
  }
  auto* p = reinterpret_cast<double*>(partial);
  norm_partial_kernel<<<static_cast<unsigned>(num_blocks), kThreads, 0, s>>>(
      reinterpret_cast<const long long*>(table), reinterpret_cast<const long long*>(block_start), num_tensors,
      max_abs, p);
  TG_CUDA_CHECK_LAUNCH();
  norm_finish_kernel<<<1, kThreads, 0, s>>>(p, num_blocks, max_abs, o);
  TG_CUDA_CHECK_LAUNCH();
}

void grad_scale(std::uintptr_t table, std::uintptr_t block_start, int num_tensors, long long num_blocks,
                        double scale, std::uintptr_t stream) {
  check_counts("grad_scale", num_tensors, num_blocks);
  if (num_blocks == 0) return;
  scale_kernel<<<static_cast<unsigned>(num_blocks), kThreads, 0, reinterpret_cast<cudaStream_t>(stream)>>>(
      reinterpret_cast<const long long*>(table), reinterpret_cast<const long long*>(block_start), num_tensors,
      static_cast<float>(scale));
  TG_CUDA_CHECK_LAUNCH();
}

void grad_clip(std::uintptr_t table, std::uintptr_t block_start, int num_tensors, long long num_blocks,
               std::uintptr_t norm, double max_norm, bool max_abs, std::uintptr_t stream) {
  check_counts("grad_clip", num_tensors, num_blocks);
  TG_CHECK(norm != 0, "grad_clip: norm must be a device pointer");
  if (num_blocks == 0) return;
  clip_kernel<<<static_cast<unsigned>(num_blocks), kThreads, 0, reinterpret_cast<cudaStream_t>(stream)>>>(
      reinterpret_cast<const long long*>(table), reinterpret_cast<const long long*>(block_start), num_tensors,
      reinterpret_cast<const double*>(norm), max_norm, max_abs);
  TG_CUDA_CHECK_LAUNCH();
}

}  // namespace

#ifndef __CUDA_ARCH__  // host pass only (registry.h)
void bind_grad_norm(py::module_& m) {
  const auto nogil = py::call_guard<py::gil_scoped_release>();
  m.def("grad_norm_chunk", &grad_norm_chunk, "Elements per block of grad_norm / grad_scale.");
  m.def("grad_norm", &grad_norm, py::arg("out"), py::arg("partial"), py::arg("table"), py::arg("block_start"),
        py::arg("num_tensors"), py::arg("num_blocks"), py::arg("max_abs"), py::arg("stream"), nogil,
        "out (0-d float64) = sum of squares (or max |g|) over a list of float32 tensors, one multi-tensor launch.");
  m.def("grad_scale", &grad_scale, py::arg("table"), py::arg("block_start"), py::arg("num_tensors"),
        py::arg("num_blocks"), py::arg("scale"), py::arg("stream"), nogil,
        "Every tensor of the list *= float32(scale), in place, one launch.");
  m.def("grad_clip", &grad_clip, py::arg("table"), py::arg("block_start"), py::arg("num_tensors"),
        py::arg("num_blocks"), py::arg("norm"), py::arg("max_norm"), py::arg("max_abs"), py::arg("stream"), nogil,
        "clip_grad_norm_'s scale from the 0-d float64 grad_norm result on the device (sum of squares, or the "
        "max with max_abs): every tensor *= float32(max_norm / (norm + 1e-6)) when that is below 1.");
}
#endif

}  // namespace cuda
}  // namespace tinygpt
