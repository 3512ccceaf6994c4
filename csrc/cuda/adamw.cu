// The CUDA AdamW family: the fused in-place update of one float32 parameter, with the argument list
// and semantics of the CPU `adamw_step` (csrc/cpu/adamw.cpp, torch.optim.AdamW's order of
// operations), and a multi-tensor launch updating a list of parameters that share the scalars
// (one param group) in one kernel.
//   p *= 1 - lr * wd;  m += (g - m) (1 - beta1);  v = v beta2 + g g (1 - beta2)
//   p -= lr / (1 - beta1^step) * (m / (sqrt(v) / sqrt(1 - beta2^step) + eps))
// The scalars are formed in float64 on the host exactly as the CPU kernel does and rounded to
// float32 once; sqrtf and the division are IEEE-exact (no fast-math); nvcc may contract a*b + c
// into an FMA, which only removes roundings.
// One pass: read p, g, m, v, write p, m, v (28 B per element); float4 when all four arrays are
// 16-byte aligned. Napkin math (H100 3.35 TB/s): GPT-2 small, 124M parameters -> 3.5 GB -> ~1 ms
// at 100%. The multi-tensor kernel saves the per-parameter launches (~150 for GPT-2 small, ~3 us
// each) that dominate for small tensors: each block finds its tensor in a device table by binary
// search over the tensors' first block indices, then updates a kChunk-element chunk of it.
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>

#include "common.h"
#include "registry.h"
#include "cuda/launch.cuh"
#include "cuda/multi_tensor.cuh"

namespace tinygpt {
namespace cuda_adamw {
namespace {

struct Scalars {
  float decay, one_m_b1, beta2, one_m_b2, bc2_sqrt, eps, step_size;
};

__device__ __forceinline__ void update(float& p, float g, float& m, float& v, const Scalars& s) {
  const float mi = m + (g - m) * s.one_m_b1;
  const float vi = v * s.beta2 + g * g * s.one_m_b2;
  m = mi;
  v = vi;
  const float denom = sqrtf(vi) / s.bc2_sqrt + s.eps;
  p = p * s.decay - s.step_size * (mi / denom);
}

// Elements [begin, end) of one tensor, by the threads of a block (stride `step`, first `first`).
__device__ __forceinline__ void update_range(float* __restrict__ p, const float* __restrict__ g,
                                             float* __restrict__ m, float* __restrict__ v,
                                             long long begin, long long end, long long first,
                                             long long step, bool vec, const Scalars& s) {
  if (vec) {  // begin % 4 == 0 (callers), pointers 16-byte aligned
    const long long b4 = begin / 4, e4 = end / 4;
    for (long long i = b4 + first; i < e4; i += step) {
      float4 pv = reinterpret_cast<float4*>(p)[i];
      const float4 gv = __ldg(reinterpret_cast<const float4*>(g) + i);
      float4 mv = reinterpret_cast<float4*>(m)[i];
      float4 vv = reinterpret_cast<float4*>(v)[i];
      update(pv.x, gv.x, mv.x, vv.x, s);
      update(pv.y, gv.y, mv.y, vv.y, s);
      update(pv.z, gv.z, mv.z, vv.z, s);
      update(pv.w, gv.w, mv.w, vv.w, s);
      reinterpret_cast<float4*>(p)[i] = pv;
      reinterpret_cast<float4*>(m)[i] = mv;
      reinterpret_cast<float4*>(v)[i] = vv;
    }
    begin = e4 * 4;
  }
  for (long long i = begin + first; i < end; i += step) {
    float pv = p[i], mv = m[i], vv = v[i];
    update(pv, __ldg(g + i), mv, vv, s);
    p[i] = pv;
    m[i] = mv;
    v[i] = vv;
  }
}

__global__ void __launch_bounds__(256)
    adamw_kernel(float* p, const float* g, float* m, float* v, long long n, bool vec, Scalars s) {
  const long long step = static_cast<long long>(gridDim.x) * blockDim.x;
  const long long first = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x;
  update_range(p, g, m, v, 0, n, first, step, vec, s);
}

// Multi-tensor (csrc/cuda/multi_tensor.cuh): table[5 * t + 0..3] = p, g, m, v device pointers of
// tensor t, table[5 * t + 4] = its size. Block b updates elements [c * kChunk, (c + 1) * kChunk) of
// its tensor, c = b - block_start[t].
using multi_tensor::kChunk;

__global__ void __launch_bounds__(256)
    adamw_multi_kernel(const long long* __restrict__ table, const long long* __restrict__ block_start,
                       int T, Scalars s) {
  const multi_tensor::Chunk c = multi_tensor::chunk_of(table, 5, block_start, T, blockIdx.x);
  const long long* e = c.row;
  float* p = reinterpret_cast<float*>(e[0]);
  const float* g = reinterpret_cast<const float*>(e[1]);
  float* m = reinterpret_cast<float*>(e[2]);
  float* v = reinterpret_cast<float*>(e[3]);
  const bool vec = ((e[0] | e[1] | e[2] | e[3]) & 15) == 0;
  update_range(p, g, m, v, c.begin, c.end, threadIdx.x, blockDim.x, vec, s);
}

Scalars make_scalars(double lr, double beta1, double beta2, double eps, double weight_decay,
                     long long step) {
  TG_CHECK(step >= 1, "adamw_step: step must be >= 1 (it counts from 1), got ", step);
  Scalars s;
  s.decay = static_cast<float>(1.0 - lr * weight_decay);
  s.one_m_b1 = static_cast<float>(1.0 - beta1);
  s.beta2 = static_cast<float>(beta2);
  s.one_m_b2 = static_cast<float>(1.0 - beta2);
  s.bc2_sqrt = static_cast<float>(std::sqrt(1.0 - std::pow(beta2, static_cast<double>(step))));
  s.eps = static_cast<float>(eps);
  s.step_size = static_cast<float>(lr / (1.0 - std::pow(beta1, static_cast<double>(step))));
  return s;
}

}  // namespace
}  // namespace cuda_adamw
}  // namespace tinygpt

namespace tinygpt {
namespace cuda {
namespace {

using namespace cuda_adamw;

// ------------------------------------------------------------------------------ launchers
void adamw_step(std::uintptr_t param, std::uintptr_t grad, std::uintptr_t exp_avg,
                        std::uintptr_t exp_avg_sq, long long n, double lr, double beta1,
                        double beta2, double eps, double weight_decay, long long step,
                        std::uintptr_t stream) {
  const Scalars s = make_scalars(lr, beta1, beta2, eps, weight_decay, step);
  TG_CHECK(n >= 0, "adamw_step: negative size ", n);
  if (n == 0) return;
  const bool vec = ((param | grad | exp_avg | exp_avg_sq) & 15) == 0;
  const unsigned blocks = tinygpt::cuda_launch::grid_stride_blocks(vec ? n / 4 : n, 256, 8);
  adamw_kernel<<<blocks, 256, 0, reinterpret_cast<cudaStream_t>(stream)>>>(
      reinterpret_cast<float*>(param), reinterpret_cast<const float*>(grad),
      reinterpret_cast<float*>(exp_avg), reinterpret_cast<float*>(exp_avg_sq), n, vec, s);
  TG_CUDA_CHECK_LAUNCH();
}

long long adamw_multi_chunk() { return kChunk; }

void adamw_multi_step(std::uintptr_t table, std::uintptr_t block_start, int num_tensors,
                              long long num_blocks, double lr, double beta1, double beta2,
                              double eps, double weight_decay, long long step,
                              std::uintptr_t stream) {
  const Scalars s = make_scalars(lr, beta1, beta2, eps, weight_decay, step);
  TG_CHECK(num_tensors >= 1, "adamw_multi_step: need at least one tensor, got ", num_tensors);
  TG_CHECK(num_blocks >= 0 && num_blocks <= 2147483647LL,
           "adamw_multi_step: bad block count ", num_blocks);
  if (num_blocks == 0) return;
  adamw_multi_kernel<<<static_cast<unsigned>(num_blocks), 256, 0,
                       reinterpret_cast<cudaStream_t>(stream)>>>(
      reinterpret_cast<const long long*>(table), reinterpret_cast<const long long*>(block_start),
      num_tensors, s);
  TG_CUDA_CHECK_LAUNCH();
}

}  // namespace

#ifndef __CUDA_ARCH__  // host pass only (registry.h)
void bind_adamw(py::module_& m) {
  const auto nogil = py::call_guard<py::gil_scoped_release>();
  m.def("adamw_step", &adamw_step, py::arg("param"), py::arg("grad"), py::arg("exp_avg"), py::arg("exp_avg_sq"),
        py::arg("n"), py::arg("lr"), py::arg("beta1"), py::arg("beta2"), py::arg("eps"), py::arg("weight_decay"),
        py::arg("step"), py::arg("stream"), nogil, "In-place AdamW update of one parameter.");
  m.def("adamw_multi_chunk", &adamw_multi_chunk, "Elements per block of adamw_multi_step.");
  m.def("adamw_multi_step", &adamw_multi_step, py::arg("table"), py::arg("block_start"), py::arg("num_tensors"),
        py::arg("num_blocks"), py::arg("lr"), py::arg("beta1"), py::arg("beta2"), py::arg("eps"),
        py::arg("weight_decay"), py::arg("step"), py::arg("stream"), nogil,
        "In-place AdamW update of a list of parameters (one param group) in one launch.");
}
#endif

}  // namespace cuda
}  // namespace tinygpt
