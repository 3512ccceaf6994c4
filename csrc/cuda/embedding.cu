// The CUDA embedding family: out[i] = weight[ids[i]] and its deterministic gradient
// dW[v] = sum of grad[i] over ids[i] == v, summed in index order (bit for bit what
// reference.embedding_backward's numpy.add.at and csrc/cpu/embedding.cpp compute).
//
// Why not a scatter-add: cupyx.scatter_add (the reference on CuPy arrays) adds rows with float
// atomics, so the order of a repeated id's additions, and the rounding of dW, changes from run to
// run. Every other CUDA kernel of a training step is atomic-free; this one makes the step
// reproducible too. The backward is a segmented sum over the ids sorted by (id, position):
//   1. keys[i] = ids[i] * n + i (embedding_keys_kernel), so that sorting the keys (CuPy's radix
//      sort, by the wrapper in tinygpt/kernels/cuda/embedding.py) groups each id's positions in index
//      order whatever the sort's stability; an id outside [0, V) gets V * n + i (sorted last and
//      skipped: F.embedding rejects such ids before any kernel runs, the kernels only stay in bounds);
//   2. dW is zeroed (rows of ids that do not occur), then embedding_backward_kernel: a block owns
//      kSpan sorted positions and a column slice; for each run of one id that starts in its span it
//      adds the run's grad rows in order into one float per column (0 + g0 + g1 + ... exactly as
//      numpy.add.at on a zeroed dW) and writes dW's row once.
// Napkin math (Shakespeare: n = 64 * 256 = 16384 positions, C = 384, V = 65): 25 MB of grad read once
// (~8 us at 3.35 TB/s) plus the sort of 16384 int64 keys (~20 us). The longest run bounds the time: the
// most frequent character (the space, ~16%) is ~2600 dependent adds per column; kUnroll independent loads
// in flight per thread keep that latency-bound loop at ~2600 / 8 L2 round trips (~0.1 ms, well under 1% of
// a training step). GPT-2's 50257 BPE tokens have much shorter runs.
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <limits>

#include "common.h"
#include "registry.h"
#include "cuda/launch.cuh"

namespace tinygpt {
namespace cuda_embedding {
namespace {

constexpr int kThreads = 128;  // columns per block (one per thread)
constexpr int kSpan = 32;      // sorted positions per block: runs are found by the block whose span holds their head
constexpr int kUnroll = 8;     // independent grad loads in flight per thread

// out (n, C) = weight[ids] (float4 copies when C % 4 == 0 and both arrays are 16-byte aligned). An id
// outside [0, V) writes a NaN row instead of reading out of bounds.
template <bool VEC>
__global__ void __launch_bounds__(256) embedding_forward_kernel(float* __restrict__ out, const float* __restrict__ w,
                                                                const int64_t* __restrict__ ids, int64_t n, int64_t V,
                                                                int64_t C) {
  const int64_t per_row = VEC ? C / 4 : C;
  const int64_t total = n * per_row;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t k = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; k < total; k += stride) {
    const int64_t i = k / per_row, c = k - i * per_row;
    const int64_t v = __ldg(ids + i);
    const bool ok = v >= 0 && v < V;
    if constexpr (VEC) {
      const float nan = NAN;
      reinterpret_cast<float4*>(out)[k] =
          ok ? __ldg(reinterpret_cast<const float4*>(w) + v * per_row + c) : make_float4(nan, nan, nan, nan);
    } else {
      out[k] = ok ? __ldg(w + v * C + c) : NAN;
    }
  }
}

// keys[i] = ids[i] * n + i for ids in [0, V); V * n + i otherwise.
__global__ void __launch_bounds__(256) embedding_keys_kernel(int64_t* __restrict__ keys,
                                                             const int64_t* __restrict__ ids, int64_t n, int64_t V) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    const int64_t v = ids[i];
    keys[i] = (v >= 0 && v < V ? v : V) * n + i;
  }
}

// dW rows from the sorted keys: block (x, y) handles the runs whose first sorted position lies in
// [x * kSpan, (x + 1) * kSpan), columns [y * kThreads, (y + 1) * kThreads). dW is zero beforehand.
__global__ void __launch_bounds__(kThreads) embedding_backward_kernel(float* __restrict__ dw,
                                                                      const float* __restrict__ g,
                                                                      const int64_t* __restrict__ keys, int64_t n,
                                                                      int64_t V, int64_t C) {
  const int64_t c = static_cast<int64_t>(blockIdx.y) * kThreads + threadIdx.x;
  if (c >= C) return;  // no barriers below: each thread walks the keys on its own
  const int64_t first = static_cast<int64_t>(blockIdx.x) * kSpan;
  const int64_t last = first + kSpan < n ? first + kSpan : n;
  int64_t prev = first > 0 ? __ldg(keys + first - 1) / n : -1;
  for (int64_t head = first; head < last; ++head) {
    const int64_t v = __ldg(keys + head) / n;
    const bool starts = v != prev;
    prev = v;
    if (!starts || v >= V) continue;  // inside a run, or the out-of-range tail
    // The run is the keys from head on below (v + 1) * n. Walk it kUnroll keys at a time: the loads of
    // a group are independent (latency overlaps), the adds stay in index order.
    const int64_t base = v * n, stop = base + n;
    float acc = 0.0f;
    for (int64_t j = head;; j += kUnroll) {
      bool in[kUnroll];
      float x[kUnroll];
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const int64_t key = j + u < n ? __ldg(keys + j + u) : stop;
        in[u] = key < stop;
        x[u] = in[u] ? __ldg(g + (key - base) * C + c) : 0.0f;
      }
#pragma unroll
      for (int u = 0; u < kUnroll; ++u)
        if (in[u]) acc += x[u];  // 0 + g0 + g1 + ...: the roundings of numpy.add.at on a zeroed dW
      if (!in[kUnroll - 1]) break;
    }
    dw[v * C + c] = acc;
  }
}

void check_sizes(const char* op, int64_t n, int64_t V, int64_t C) {
  TG_CHECK(n >= 0 && V >= 1 && C >= 1, op, ": need n >= 0, V >= 1 and C >= 1, got n=", n, ", V=", V, ", C=", C);
  // keys reach (V + 1) * n: they must fit in int64
  TG_CHECK(n == 0 || V + 1 <= std::numeric_limits<int64_t>::max() / n, op, ": n * (V + 1) = ", n, " * ", V + 1,
           " overflows the int64 sort keys");
}

}  // namespace
}  // namespace cuda_embedding
}  // namespace tinygpt

namespace tinygpt {
namespace cuda {
namespace {

using namespace cuda_embedding;

// ------------------------------------------------------------------------------ launchers
using tinygpt::cuda_launch::grid_stride_blocks;

void embedding_forward(std::uintptr_t out, std::uintptr_t weight, std::uintptr_t ids, int64_t n, int64_t V,
                               int64_t C, std::uintptr_t stream) {
  check_sizes("embedding_forward (cuda)", n, V, C);
  if (n == 0) return;
  auto s = reinterpret_cast<cudaStream_t>(stream);
  auto* op = reinterpret_cast<float*>(out);
  const auto* wp = reinterpret_cast<const float*>(weight);
  const auto* ip = reinterpret_cast<const int64_t*>(ids);
  if (C % 4 == 0 && ((out | weight) & 15u) == 0) {
    embedding_forward_kernel<true><<<grid_stride_blocks(n * (C / 4), 256, 8), 256, 0, s>>>(op, wp, ip, n, V, C);
  } else {
    embedding_forward_kernel<false><<<grid_stride_blocks(n * C, 256, 8), 256, 0, s>>>(op, wp, ip, n, V, C);
  }
  TG_CUDA_CHECK_LAUNCH();
}

void embedding_keys(std::uintptr_t keys, std::uintptr_t ids, int64_t n, int64_t V, std::uintptr_t stream) {
  check_sizes("embedding_keys (cuda)", n, V, 1);
  if (n == 0) return;
  embedding_keys_kernel<<<grid_stride_blocks(n, 256, 8), 256, 0, reinterpret_cast<cudaStream_t>(stream)>>>(
      reinterpret_cast<int64_t*>(keys), reinterpret_cast<const int64_t*>(ids), n, V);
  TG_CUDA_CHECK_LAUNCH();
}

void embedding_backward(std::uintptr_t dw, std::uintptr_t grad, std::uintptr_t sorted_keys, int64_t n,
                                int64_t V, int64_t C, std::uintptr_t stream) {
  check_sizes("embedding_backward (cuda)", n, V, C);
  auto s = reinterpret_cast<cudaStream_t>(stream);
  TG_CUDA_CHECK(cudaMemsetAsync(reinterpret_cast<void*>(dw), 0, sizeof(float) * static_cast<size_t>(V * C), s));
  if (n == 0) return;
  const int64_t spans = (n + kSpan - 1) / kSpan, slices = (C + kThreads - 1) / kThreads;
  TG_CHECK(spans <= std::numeric_limits<int>::max() && slices <= 65535, "embedding_backward (cuda): n = ", n,
           " or C = ", C, " exceeds the launch grid");
  const dim3 grid(static_cast<unsigned>(spans), static_cast<unsigned>(slices));
  embedding_backward_kernel<<<grid, kThreads, 0, s>>>(reinterpret_cast<float*>(dw),
                                                      reinterpret_cast<const float*>(grad),
                                                      reinterpret_cast<const int64_t*>(sorted_keys), n, V, C);
  TG_CUDA_CHECK_LAUNCH();
}

}  // namespace

#ifndef __CUDA_ARCH__  // host pass only (registry.h)
void bind_embedding(py::module_& m) {
  const auto nogil = py::call_guard<py::gil_scoped_release>();
  m.def("embedding_forward", &embedding_forward, py::arg("out"), py::arg("weight"), py::arg("ids"), py::arg("n"),
        py::arg("V"), py::arg("C"), py::arg("stream"), nogil, "out (n, C) = weight[ids] for int64 ids (n,).");
  m.def("embedding_keys", &embedding_keys, py::arg("keys"), py::arg("ids"), py::arg("n"), py::arg("V"),
        py::arg("stream"), nogil, "keys = ids * n + position (int64), the sort keys of embedding_backward.");
  m.def("embedding_backward", &embedding_backward, py::arg("dw"), py::arg("grad"), py::arg("sorted_keys"), py::arg("n"),
        py::arg("V"), py::arg("C"), py::arg("stream"), nogil,
        "dw (V, C) = grad rows summed per id in position order (deterministic), from the sorted keys.");
}
#endif

}  // namespace cuda
}  // namespace tinygpt
