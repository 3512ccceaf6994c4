// Softmax and log-softmax over the last axis of float32 (rows, C), forward and backward, as
// csrc/cpu/softmax.cpp and reference.softmax_* / log_softmax_* (same arguments and returns).
//
// One warp per row, 8 warps per 256-thread block, grid-stride over rows (rowwise.cuh). Each lane
// reads float4s of the row's 16-byte aligned body (and single floats at the ragged ends).
//   softmax      fwd  pass 1: online (max m, sum s of exp(x - m)) per lane, merged over the warp;
//                     pass 2: y = exp(x - m) * (1 / s)
//                bwd  pass 1: d = sum g*y;  pass 2: dx = y * (g - d)
//   log_softmax  fwd  pass 1 as softmax;  pass 2: y = (x - m) - log s
//                bwd  pass 1: gs = sum g;  pass 2: dx = g - exp(y) * gs
// Napkin math: pass 2 re-reads the row the warp has just read (L1/L2 hits while the rows in
// flight, ~8448 warps x C x 4 B on an H100, fit in its 50 MB L2, i.e. C up to ~1500), so DRAM
// traffic is one read and one write per element (two reads for backward): 8 (12) bytes per
// element against the copy kernel's 8; about 1.25 exp per element (MUFU at 16/clk/SM has ~4x
// headroom over HBM at 3.35 TB/s). `saved` is (), as the reference: backward needs only y.
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>

#include "common.h"
#include "registry.h"
#include "cuda/rowwise.cuh"

namespace tinygpt {
namespace cuda_softmax {

using namespace cuda_rows;

template <bool VEC, bool LOG>
__global__ void __launch_bounds__(kWarpsPerBlock * 32)
    softmax_forward_kernel(float* __restrict__ y, const float* __restrict__ x, int64_t rows, int64_t C) {
  const int lane = threadIdx.x % 32;
  for (int64_t r = first_row(); r < rows; r += row_stride()) {
    const float* xr = x + r * C;
    float* yr = y + r * C;
    float m = -INFINITY, s = 0.0f;
    read_row<VEC>(xr, xr, C, lane, [&](int64_t, float v, float) { online_add(m, s, v); });
    warp_online(m, s);
    if constexpr (LOG) {
      const float ls = logf(s);
      map_row<VEC>(yr, xr, xr, C, lane, [&](int64_t, float v, float) { return (v - m) - ls; });
    } else {
      const float inv = 1.0f / s;
      map_row<VEC>(yr, xr, xr, C, lane, [&](int64_t, float v, float) { return expf(v - m) * inv; });
    }
  }
}

template <bool VEC, bool LOG>
__global__ void __launch_bounds__(kWarpsPerBlock * 32)
    softmax_backward_kernel(float* __restrict__ dx, const float* __restrict__ g, const float* __restrict__ y,
                            int64_t rows, int64_t C) {
  const int lane = threadIdx.x % 32;
  for (int64_t r = first_row(); r < rows; r += row_stride()) {
    const float* gr = g + r * C;
    const float* yr = y + r * C;
    float* dr = dx + r * C;
    float acc = 0.0f;
    if constexpr (LOG) {
      read_row<VEC>(gr, yr, C, lane, [&](int64_t, float gv, float) { acc += gv; });
      const float gs = warp_sum(acc);
      map_row<VEC>(dr, gr, yr, C, lane, [&](int64_t, float gv, float yv) { return gv - expf(yv) * gs; });
    } else {
      read_row<VEC>(gr, yr, C, lane, [&](int64_t, float gv, float yv) { acc = fmaf(gv, yv, acc); });
      const float d = warp_sum(acc);
      map_row<VEC>(dr, gr, yr, C, lane, [&](int64_t, float gv, float yv) { return yv * (gv - d); });
    }
  }
}

void check_sizes(int64_t rows, int64_t C, const char* op) {
  TG_CHECK(rows >= 0 && C >= 0, op, " (cuda): rows and C must be >= 0, got ", rows, ", ", C);
}

template <bool LOG>
void forward(std::uintptr_t y, std::uintptr_t x, int64_t rows, int64_t C, std::uintptr_t stream, const char* op) {
  check_sizes(rows, C, op);
  if (rows == 0 || C == 0) return;
  auto s = reinterpret_cast<cudaStream_t>(stream);
  auto* yp = reinterpret_cast<float*>(y);
  const auto* xp = reinterpret_cast<const float*>(x);
  const unsigned blocks = row_blocks(rows);
  if (same_alignment({y, x}))
    softmax_forward_kernel<true, LOG><<<blocks, kWarpsPerBlock * 32, 0, s>>>(yp, xp, rows, C);
  else
    softmax_forward_kernel<false, LOG><<<blocks, kWarpsPerBlock * 32, 0, s>>>(yp, xp, rows, C);
  TG_CUDA_CHECK_LAUNCH();
}

template <bool LOG>
void backward(std::uintptr_t dx, std::uintptr_t grad, std::uintptr_t y, int64_t rows, int64_t C,
              std::uintptr_t stream, const char* op) {
  check_sizes(rows, C, op);
  if (rows == 0 || C == 0) return;
  auto s = reinterpret_cast<cudaStream_t>(stream);
  auto* dp = reinterpret_cast<float*>(dx);
  const auto* gp = reinterpret_cast<const float*>(grad);
  const auto* yp = reinterpret_cast<const float*>(y);
  const unsigned blocks = row_blocks(rows);
  if (same_alignment({dx, grad, y}))
    softmax_backward_kernel<true, LOG><<<blocks, kWarpsPerBlock * 32, 0, s>>>(dp, gp, yp, rows, C);
  else
    softmax_backward_kernel<false, LOG><<<blocks, kWarpsPerBlock * 32, 0, s>>>(dp, gp, yp, rows, C);
  TG_CUDA_CHECK_LAUNCH();
}

}  // namespace cuda_softmax
}  // namespace tinygpt

namespace tinygpt {
namespace cuda {
namespace {

using namespace cuda_softmax;

// ------------------------------------------------------------------------------ launchers
void softmax_forward(std::uintptr_t y, std::uintptr_t x, int64_t rows, int64_t C, std::uintptr_t stream) {
  forward<false>(y, x, rows, C, stream, "softmax_forward");
}

void softmax_backward(std::uintptr_t dx, std::uintptr_t grad, std::uintptr_t y, int64_t rows, int64_t C,
                              std::uintptr_t stream) {
  backward<false>(dx, grad, y, rows, C, stream, "softmax_backward");
}

void log_softmax_forward(std::uintptr_t y, std::uintptr_t x, int64_t rows, int64_t C,
                                 std::uintptr_t stream) {
  forward<true>(y, x, rows, C, stream, "log_softmax_forward");
}

void log_softmax_backward(std::uintptr_t dx, std::uintptr_t grad, std::uintptr_t y, int64_t rows,
                                  int64_t C, std::uintptr_t stream) {
  backward<true>(dx, grad, y, rows, C, stream, "log_softmax_backward");
}

}  // namespace

#ifndef __CUDA_ARCH__  // host pass only (registry.h)
void bind_softmax(py::module_& m) {
  const auto nogil = py::call_guard<py::gil_scoped_release>();
  m.def("softmax_forward", &softmax_forward, py::arg("y"), py::arg("x"), py::arg("rows"), py::arg("C"),
        py::arg("stream"), nogil, "y = softmax(x) over rows of C floats.");
  m.def("softmax_backward", &softmax_backward, py::arg("dx"), py::arg("grad"), py::arg("y"), py::arg("rows"),
        py::arg("C"), py::arg("stream"), nogil, "dx = y * (grad - rowsum(grad * y)).");
  m.def("log_softmax_forward", &log_softmax_forward, py::arg("y"), py::arg("x"), py::arg("rows"), py::arg("C"),
        py::arg("stream"), nogil, "y = log_softmax(x) over rows of C floats.");
  m.def("log_softmax_backward", &log_softmax_backward, py::arg("dx"), py::arg("grad"), py::arg("y"), py::arg("rows"),
        py::arg("C"), py::arg("stream"), nogil, "dx = grad - exp(y) * rowsum(grad).");
}
#endif

}  // namespace cuda
}  // namespace tinygpt
