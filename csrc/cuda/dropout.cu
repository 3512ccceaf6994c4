// Inverted dropout on the GPU: y = x * keep * float32(1 / (1 - p)), forward and backward (the
// backward is the same map applied to the gradient with the same seed), as csrc/cpu/dropout.cpp.
//
// The keep-mask is counter-based (csrc/cpu/rng.h, compiled here as device code): element i of
// the flat array is kept iff bits24(seed, i) >= ceil(p * 2^24), bit for bit
// reference.dropout_mask, so no mask is stored: forward saves (seed, shape) and backward
// regenerates it. The product is x * k * scale (k = 0 or 1; two roundings, no FMA contraction
// since there is no add), the same float32 arithmetic as the reference and the CPU kernel:
// outputs agree bit for bit.
//
// Grid-stride loop, each thread one float4 (4 consecutive elements, 4 hashes) per step when both
// arrays are 16-byte aligned, else single floats. Napkin math: 8 bytes per element (one read, one
// write) and ~25 integer ops for the splitmix64 hash (three 64-bit multiplies): at H100 rates
// (3.35 TB/s, ~14 T int ops/s) the hash keeps up with memory, so the target is copy bandwidth.
#include <cuda_runtime.h>

#include <cstdint>

#include "common.h"
#include "cpu/rng.h"
#include "registry.h"
#include "cuda/launch.cuh"

namespace tinygpt {
namespace cuda_dropout {

__device__ __forceinline__ float kept(uint64_t seed, uint64_t i, uint32_t threshold) {
  return rng::bits24(seed, i) >= threshold ? 1.0f : 0.0f;
}

template <bool VEC>
__global__ void __launch_bounds__(256) dropout_kernel(float* __restrict__ y, const float* __restrict__ x, int64_t n,
                                                      uint64_t seed, uint32_t threshold, float scale) {
  const int64_t start = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  int64_t done = 0;
  if constexpr (VEC) {
    const int64_t n4 = n / 4;
    const float4* x4 = reinterpret_cast<const float4*>(x);
    float4* y4 = reinterpret_cast<float4*>(y);
    for (int64_t k = start; k < n4; k += stride) {
      float4 v = x4[k];
      const uint64_t i = static_cast<uint64_t>(4 * k);
      v.x = v.x * kept(seed, i, threshold) * scale;
      v.y = v.y * kept(seed, i + 1, threshold) * scale;
      v.z = v.z * kept(seed, i + 2, threshold) * scale;
      v.w = v.w * kept(seed, i + 3, threshold) * scale;
      y4[k] = v;
    }
    done = 4 * n4;
  }
  for (int64_t i = done + start; i < n; i += stride)
    y[i] = x[i] * kept(seed, static_cast<uint64_t>(i), threshold) * scale;
}

}  // namespace cuda_dropout
}  // namespace tinygpt

namespace tinygpt {
namespace cuda {
namespace {

using namespace cuda_dropout;

// ------------------------------------------------------------------------------ launchers
void dropout(std::uintptr_t y, std::uintptr_t x, int64_t n, double p, uint64_t seed, std::uintptr_t stream) {
  TG_CHECK(p >= 0.0 && p < 1.0, "dropout (cuda): p must be in [0, 1), got ", p);
  TG_CHECK(n >= 0, "dropout (cuda): n must be >= 0, got ", n);
  if (n == 0) return;
  const uint32_t threshold = tinygpt::rng::keep_threshold(p);
  const float scale = static_cast<float>(1.0 / (1.0 - p));  // as NumPy: float32(python float)
  auto s = reinterpret_cast<cudaStream_t>(stream);
  auto* yp = reinterpret_cast<float*>(y);
  const auto* xp = reinterpret_cast<const float*>(x);
  const bool vec = ((y | x) & 15u) == 0;
  const int64_t items = vec ? (n + 3) / 4 : n;
  const unsigned blocks = tinygpt::cuda_launch::grid_stride_blocks(items, 256, 8);
  if (vec)
    dropout_kernel<true><<<blocks, 256, 0, s>>>(yp, xp, n, seed, threshold, scale);
  else
    dropout_kernel<false><<<blocks, 256, 0, s>>>(yp, xp, n, seed, threshold, scale);
  TG_CUDA_CHECK_LAUNCH();
}

}  // namespace

#ifndef __CUDA_ARCH__  // host pass only (registry.h)
void bind_dropout(py::module_& m) {
  const auto nogil = py::call_guard<py::gil_scoped_release>();
  // one launcher, two names: backward is the same map (same mask and scale) applied to the gradient
  for (const char* name : {"dropout_forward", "dropout_backward"})
    m.def(name, &dropout, py::arg("y"), py::arg("x"), py::arg("n"), py::arg("p"), py::arg("seed"), py::arg("stream"),
          nogil, "y = x * keep * (1 / (1 - p)) with the counter-based mask of `seed` (forward; backward on the gradient).");
}
#endif

}  // namespace cuda
}  // namespace tinygpt
