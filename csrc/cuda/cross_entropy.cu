// Fused cross-entropy over the vocabulary on the GPU: log-softmax + NLL forward and its
// gradient, float32 logits (N, V), int64 targets (N,), as csrc/cpu/cross_entropy.cpp and
// reference.cross_entropy_* (rows whose target is ignore_index count for nothing).
//
// forward   kernel 1, one warp per row (rowwise.cuh, float4 loads of the aligned body): online
//           (max m, sum s of exp(x - m)) in ONE read of the row; lane 0 writes row_max = m,
//           row_logsum = log s (float32) and the row loss (m - x[t]) + log s in float64 (0 for
//           an ignored row, nan for a target outside [0, V): no out-of-bounds read; F.cross_entropy
//           rejects such targets before any kernel runs). Kernel 2, one block: loss = sum / count
//           in float64 (nan when count = 0, as the reference) and the count, both left on the device.
//           No float atomics: the reduction order is fixed, the loss deterministic.
//           saved = (row_max (N,), row_logsum (N,), ignore_index, count (0-d int64 on the GPU)).
// backward  one warp per row, one read and one write: d = exp((x - m) - log s) * g/count, minus
//           g/count at the target ((p - 1) * scale: p ~ 1 does not cancel badly); ignored rows get
//           exactly 0, also when every row is ignored (count = 0: the loss is nan, its gradient 0, as
//           PyTorch). g and count are read on the device: nothing waits for the host.
// Keeping m and log s apart keeps x - m exact near the max for logits of magnitude 1e4.
// Napkin math (N = 8192, V = 50304): the logits are 8192 * 50304 * 4 B = 1.65 GB; forward reads
// them once (~0.49 ms at 3.35 TB/s), backward reads and writes them once (~0.98 ms); one exp per
// element either way (MUFU throughput is ~4x what HBM can feed).
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>

#include "common.h"
#include "registry.h"
#include "cuda/rowwise.cuh"

namespace tinygpt {
namespace cuda_cross_entropy {

using namespace cuda_rows;

template <bool VEC>
__global__ void __launch_bounds__(kWarpsPerBlock * 32)
    ce_forward_rows_kernel(float* __restrict__ rmax, float* __restrict__ rlogsum, double* __restrict__ rowloss,
                           const float* __restrict__ logits, const int64_t* __restrict__ targets, int64_t N,
                           int64_t V, int64_t ignore_index) {
  const int lane = threadIdx.x % 32;
  for (int64_t r = first_row(); r < N; r += row_stride()) {
    const float* x = logits + r * V;
    float m = -INFINITY, s = 0.0f;
    read_row<VEC>(x, x, V, lane, [&](int64_t, float v, float) { online_add(m, s, v); });
    warp_online(m, s);
    if (lane == 0) {
      const float ls = logf(s);
      rmax[r] = m;
      rlogsum[r] = ls;
      const int64_t t = targets[r];
      double loss = 0.0;
      if (t != ignore_index)
        loss = (t >= 0 && t < V) ? (static_cast<double>(m) - static_cast<double>(x[t])) + static_cast<double>(ls)
                                 : static_cast<double>(NAN);
      rowloss[r] = loss;
    }
  }
}

constexpr int kReduceThreads = 1024;

__global__ void __launch_bounds__(kReduceThreads)
    ce_forward_reduce_kernel(float* __restrict__ loss, int64_t* __restrict__ count_out,
                             const double* __restrict__ rowloss, const int64_t* __restrict__ targets, int64_t N,
                             int64_t ignore_index) {
  __shared__ double tot_s[kReduceThreads / 32];
  __shared__ long long cnt_s[kReduceThreads / 32];
  double tot = 0.0;
  long long cnt = 0;
  for (int64_t i = threadIdx.x; i < N; i += kReduceThreads) {
    tot += rowloss[i];  // 0 for ignored rows
    cnt += targets[i] != ignore_index ? 1 : 0;
  }
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    tot += __shfl_xor_sync(0xffffffffu, tot, o);
    cnt += __shfl_xor_sync(0xffffffffu, cnt, o);
  }
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) {
    tot_s[warp] = tot;
    cnt_s[warp] = cnt;
  }
  __syncthreads();
  if (warp == 0) {
    tot = lane < kReduceThreads / 32 ? tot_s[lane] : 0.0;
    cnt = lane < kReduceThreads / 32 ? cnt_s[lane] : 0;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
      tot += __shfl_xor_sync(0xffffffffu, tot, o);
      cnt += __shfl_xor_sync(0xffffffffu, cnt, o);
    }
    if (lane == 0) {
      *loss = cnt > 0 ? static_cast<float>(tot / static_cast<double>(cnt)) : NAN;
      *count_out = cnt;
    }
  }
}

template <bool VEC>
__global__ void __launch_bounds__(kWarpsPerBlock * 32)
    ce_backward_kernel(float* __restrict__ dlogits, const float* __restrict__ logits,
                       const int64_t* __restrict__ targets, const float* __restrict__ rmax,
                       const float* __restrict__ rlogsum, const double* __restrict__ grad,
                       const int64_t* __restrict__ count, int64_t N, int64_t V, int64_t ignore_index) {
  // g / count in float64, then float32, as the reference's (grad / count).astype(float32)
  // (count == 0: every row is ignored and takes the fill below; scale is never used)
  const float scale = *count > 0 ? static_cast<float>(*grad / static_cast<double>(*count)) : 0.0f;
  const float fill = 0.0f;  // ignored rows: exactly 0, whatever g is (PyTorch's gradient)
  const int lane = threadIdx.x % 32;
  for (int64_t r = first_row(); r < N; r += row_stride()) {
    const float* x = logits + r * V;
    float* d = dlogits + r * V;
    const int64_t t = targets[r];
    if (t == ignore_index) {
      map_row<VEC>(d, x, x, V, lane, [&](int64_t, float, float) { return fill; });
      continue;
    }
    const float m = rmax[r], ls = rlogsum[r];
    map_row<VEC>(d, x, x, V, lane, [&](int64_t c, float v, float) {
      const float p = expf((v - m) - ls);
      return (c == t ? p - 1.0f : p) * scale;
    });
  }
}

}  // namespace cuda_cross_entropy
}  // namespace tinygpt

namespace tinygpt {
namespace cuda {
namespace {

using namespace cuda_cross_entropy;

// ------------------------------------------------------------------------------ launchers
void cross_entropy_forward(std::uintptr_t loss, std::uintptr_t count, std::uintptr_t row_max,
                                   std::uintptr_t row_logsum, std::uintptr_t row_loss, std::uintptr_t logits,
                                   std::uintptr_t targets, int64_t N, int64_t V, int64_t ignore_index,
                                   std::uintptr_t stream) {
  TG_CHECK(N >= 0 && V >= 1, "cross_entropy_forward (cuda): need N >= 0 rows and V >= 1 classes, got N = ", N,
           ", V = ", V);
  auto s = reinterpret_cast<cudaStream_t>(stream);
  auto* mp = reinterpret_cast<float*>(row_max);
  auto* lp = reinterpret_cast<float*>(row_logsum);
  auto* rl = reinterpret_cast<double*>(row_loss);
  const auto* xp = reinterpret_cast<const float*>(logits);
  const auto* tp = reinterpret_cast<const int64_t*>(targets);
  if (N > 0) {
    const unsigned blocks = row_blocks(N);
    if (same_alignment({logits}))  // only the logits are read as float4
      ce_forward_rows_kernel<true><<<blocks, kWarpsPerBlock * 32, 0, s>>>(mp, lp, rl, xp, tp, N, V, ignore_index);
    else
      ce_forward_rows_kernel<false><<<blocks, kWarpsPerBlock * 32, 0, s>>>(mp, lp, rl, xp, tp, N, V, ignore_index);
    TG_CUDA_CHECK_LAUNCH();
  }
  ce_forward_reduce_kernel<<<1, kReduceThreads, 0, s>>>(reinterpret_cast<float*>(loss),
                                                        reinterpret_cast<int64_t*>(count), rl, tp, N, ignore_index);
  TG_CUDA_CHECK_LAUNCH();
}

void cross_entropy_backward(std::uintptr_t dlogits, std::uintptr_t logits, std::uintptr_t targets,
                                    std::uintptr_t row_max, std::uintptr_t row_logsum, std::uintptr_t grad,
                                    std::uintptr_t count, int64_t N, int64_t V, int64_t ignore_index,
                                    std::uintptr_t stream) {
  TG_CHECK(N >= 0 && V >= 1, "cross_entropy_backward (cuda): need N >= 0 rows and V >= 1 classes, got N = ", N,
           ", V = ", V);
  if (N == 0) return;
  auto s = reinterpret_cast<cudaStream_t>(stream);
  auto* dp = reinterpret_cast<float*>(dlogits);
  const auto* xp = reinterpret_cast<const float*>(logits);
  const auto* tp = reinterpret_cast<const int64_t*>(targets);
  const auto* mp = reinterpret_cast<const float*>(row_max);
  const auto* lp = reinterpret_cast<const float*>(row_logsum);
  const auto* gp = reinterpret_cast<const double*>(grad);
  const auto* cp = reinterpret_cast<const int64_t*>(count);
  const unsigned blocks = row_blocks(N);
  if (same_alignment({dlogits, logits}))
    ce_backward_kernel<true><<<blocks, kWarpsPerBlock * 32, 0, s>>>(dp, xp, tp, mp, lp, gp, cp, N, V, ignore_index);
  else
    ce_backward_kernel<false><<<blocks, kWarpsPerBlock * 32, 0, s>>>(dp, xp, tp, mp, lp, gp, cp, N, V, ignore_index);
  TG_CUDA_CHECK_LAUNCH();
}

}  // namespace

#ifndef __CUDA_ARCH__  // host pass only (registry.h)
void bind_cross_entropy(py::module_& m) {
  const auto nogil = py::call_guard<py::gil_scoped_release>();
  m.def("cross_entropy_forward", &cross_entropy_forward, py::arg("loss"), py::arg("count"), py::arg("row_max"),
        py::arg("row_logsum"), py::arg("row_loss"), py::arg("logits"), py::arg("targets"), py::arg("N"), py::arg("V"),
        py::arg("ignore_index"), py::arg("stream"), nogil, "Mean cross-entropy and its row statistics, on the device.");
  m.def("cross_entropy_backward", &cross_entropy_backward, py::arg("dlogits"), py::arg("logits"), py::arg("targets"),
        py::arg("row_max"), py::arg("row_logsum"), py::arg("grad"), py::arg("count"), py::arg("N"), py::arg("V"),
        py::arg("ignore_index"), py::arg("stream"), nogil,
        "dlogits = (softmax - onehot) * grad / count (0 on ignored rows).");
}
#endif

}  // namespace cuda
}  // namespace tinygpt
