// The CUDA linear family: linear and linear_gelu on the GEMM engine of gemm.cuh (Python side:
// tinygpt/kernels/cuda/linear.py, which may send a product to cuBLAS instead: kernels/policy.py).
//   linear forward  y  = x  W^T (+ bias, and gelu for linear_gelu, in the GEMM's epilogue)
//   dx = dY W,  dW = dY^T x (split-K over rows when dW has few output tiles)
//   db = column sums of dY: two deterministic passes (per-chunk partial sums to a workspace, then
//   one thread per column adds the chunks in order), no atomics.
#include <cuda_runtime.h>

#include <cstdint>

#include "common.h"
#include "cuda/gemm.cuh"
#include "cuda/launch.cuh"
#include "registry.h"

namespace tinygpt {
namespace cuda_linear {
namespace {
// ------------------------------------------------------------------------------ column sums
// out[j] = sum_i g[i, j] for g (rows x n): kernel 1 writes per-chunk partial sums
// partial[chunk, j] (chunk = blockIdx.y, rows split evenly), each block 32 columns x 8 row lanes
// (coalesced 128-byte row segments); kernel 2 adds the chunks in order, one thread per column.
// Deterministic for a given (rows, n, chunks).
constexpr int kColLanes = 8;

__global__ void colsum_partial_kernel(const float* __restrict__ g, float* __restrict__ partial,
                                      int rows, int n, int rows_per_chunk) {
  __shared__ float red[kColLanes][33];
  const int j = blockIdx.x * 32 + threadIdx.x;
  const int r_begin = blockIdx.y * rows_per_chunk;
  const int r_end = min(rows, r_begin + rows_per_chunk);
  float s = 0.0f;
  if (j < n)
    for (int r = r_begin + threadIdx.y; r < r_end; r += kColLanes)
      s += __ldg(g + static_cast<long long>(r) * n + j);
  red[threadIdx.y][threadIdx.x] = s;
  __syncthreads();
  if (threadIdx.y == 0 && j < n) {
    float t = 0.0f;
#pragma unroll
    for (int l = 0; l < kColLanes; ++l) t += red[l][threadIdx.x];
    partial[static_cast<long long>(blockIdx.y) * n + j] = t;
  }
}

__global__ void colsum_finish_kernel(const float* __restrict__ partial, float* __restrict__ out,
                                     int chunks, int n) {
  const int j = blockIdx.x * blockDim.x + threadIdx.x;
  if (j >= n) return;
  float s = 0.0f;
  for (int c = 0; c < chunks; ++c) s += partial[static_cast<long long>(c) * n + j];
  out[j] = s;
}

}  // namespace
}  // namespace cuda_linear

namespace cuda {
namespace {

using namespace cuda_gemm;
using namespace cuda_linear;
using cuda_launch::ptr;
// ------------------------------------------------------------------------------ launchers
void linear_forward(std::uintptr_t out, std::uintptr_t gelu_out, std::uintptr_t x, std::uintptr_t weight,
                    std::uintptr_t bias, int rows, int n_in, int n_out, int precision, std::uintptr_t stream) {
  GemmArgs a{};
  a.a = ptr<const float*>(x);
  a.b = ptr<const float*>(weight);
  a.c = ptr<float*>(out);
  a.gelu_out = ptr<float*>(gelu_out);
  a.bias = ptr<const float*>(bias);
  a.lda = n_in;  // x (rows, in)
  a.ldb = n_in;  // W (out, in): B = W^T, K-major
  a.M = rows;
  a.N = n_out;
  a.K = n_in;
  launch_gemm<true, true>(a, precision, reinterpret_cast<cudaStream_t>(stream));
}

void linear_backward_dx(std::uintptr_t dx, std::uintptr_t grad, std::uintptr_t weight, int rows, int n_in,
                        int n_out, int precision, std::uintptr_t stream) {
  GemmArgs a{};
  a.a = ptr<const float*>(grad);  // (rows, out): M = rows, K = out, K-major
  a.b = ptr<const float*>(weight);  // (out, in): K x N row-major, N-major
  a.c = ptr<float*>(dx);
  a.lda = n_out;
  a.ldb = n_in;
  a.M = rows;
  a.N = n_in;
  a.K = n_out;
  launch_gemm<true, false>(a, precision, reinterpret_cast<cudaStream_t>(stream));
}

int linear_dw_splits(int rows, int n_in, int n_out) {
  // dW = dY^T X has K = rows (up to 16384) but often few output tiles (768 x 768: 36 large, 144
  // small tiles for 132 SMs): split K until there are ~2 waves of small tiles, keeping >= 16
  // k-tiles (512 rows) per split, at most 8 splits. NOT YET MEASURED (no GPU when written).
  if (rows <= 0 || n_in <= 0 || n_out <= 0) return 1;
  const long long sms = sm_count();
  const long long large = static_cast<long long>((n_out + 127) / 128) * ((n_in + 127) / 128);
  if (large >= sms) return 1;
  const long long small = static_cast<long long>((n_out + 63) / 64) * ((n_in + 63) / 64);
  long long s = (2 * sms + small - 1) / small;
  const long long by_k = ((rows + BK - 1) / BK) / 16;
  if (s > by_k) s = by_k;
  if (s > 8) s = 8;
  return s < 1 ? 1 : static_cast<int>(s);
}

void linear_backward_dw(std::uintptr_t dw, std::uintptr_t grad, std::uintptr_t x, std::uintptr_t workspace,
                        int rows, int n_in, int n_out, int splits, int precision, std::uintptr_t stream) {
  TG_CHECK(splits >= 1 && splits <= 64, "linear_backward_dw: splits must be in [1, 64], got ",
           splits);
  GemmArgs a{};
  a.a = ptr<const float*>(grad);  // stored (rows, out) = K x M: M-major
  a.b = ptr<const float*>(x);     // (rows, in) = K x N row-major: N-major
  a.c = ptr<float*>(dw);          // (out, in)
  a.lda = n_out;
  a.ldb = n_in;
  a.M = n_out;
  a.N = n_in;
  a.K = rows;
  cudaStream_t st = reinterpret_cast<cudaStream_t>(stream);
  const int kt_all = rows > 0 ? (rows + BK - 1) / BK : 0;
  if (splits == 1 || kt_all < 2 || n_in <= 0 || n_out <= 0) {
    launch_gemm<false, false>(a, precision, st);
    return;
  }
  // Split-K: split z accumulates k-tiles [z * per, (z + 1) * per) into workspace[z] (M x N),
  // then the splits are added in order into dw.
  TG_CHECK(workspace != 0, "linear_backward_dw: split-K needs a workspace of splits * ", n_out,
           " * ", n_in, " floats");
  const int per = (kt_all + splits - 1) / splits;
  const int used = (kt_all + per - 1) / per;  // <= splits
  a.c = ptr<float*>(workspace);
  a.kt_per_split = per;
  launch_gemm<false, false>(a, precision, st);
  const long long mn = static_cast<long long>(n_out) * n_in;
  splitk_reduce_kernel<<<tinygpt::cuda_launch::grid_stride_blocks(mn, 256, 16), 256, 0, st>>>(
      ptr<const float*>(workspace), ptr<float*>(dw), mn, used);
  TG_CUDA_CHECK_LAUNCH();
}

void column_sums(std::uintptr_t out, std::uintptr_t g, std::uintptr_t partial, int rows, int n, int chunks,
                 std::uintptr_t stream) {
  TG_CHECK(rows >= 0 && n >= 0, "column_sums: negative size (", rows, ", ", n, ")");
  TG_CHECK(chunks >= 1 && chunks <= 65535, "column_sums: chunks must be in [1, 65535], got ", chunks);
  if (n == 0) return;
  cudaStream_t s = reinterpret_cast<cudaStream_t>(stream);
  const int rows_per_chunk = rows == 0 ? 1 : (rows + chunks - 1) / chunks;
  colsum_partial_kernel<<<dim3((n + 31) / 32, chunks), dim3(32, kColLanes), 0, s>>>(
      ptr<const float*>(g), ptr<float*>(partial), rows, n, rows_per_chunk);
  TG_CUDA_CHECK_LAUNCH();
  colsum_finish_kernel<<<(n + 255) / 256, 256, 0, s>>>(ptr<const float*>(partial), ptr<float*>(out),
                                                       chunks, n);
  TG_CUDA_CHECK_LAUNCH();
}

}  // namespace

#ifndef __CUDA_ARCH__  // host pass only (registry.h)
void bind_linear(py::module_& m) {
  const auto nogil = py::call_guard<py::gil_scoped_release>();
  m.def("linear_forward", &linear_forward, py::arg("out"), py::arg("gelu_out"), py::arg("x"), py::arg("weight"),
        py::arg("bias"), py::arg("rows"), py::arg("n_in"), py::arg("n_out"), py::arg("precision"), py::arg("stream"),
        nogil, "out = x @ weight^T + bias (and gelu_out = gelu_tanh(out) when gelu_out != 0).");
  m.def("linear_backward_dx", &linear_backward_dx, py::arg("dx"), py::arg("grad"), py::arg("weight"), py::arg("rows"),
        py::arg("n_in"), py::arg("n_out"), py::arg("precision"), py::arg("stream"), nogil, "dx = grad @ weight.");
  m.def("linear_backward_dw", &linear_backward_dw, py::arg("dw"), py::arg("grad"), py::arg("x"), py::arg("workspace"),
        py::arg("rows"), py::arg("n_in"), py::arg("n_out"), py::arg("splits"), py::arg("precision"), py::arg("stream"),
        nogil, "dw = grad^T @ x (split-K over rows when splits > 1, via workspace).");
  m.def("linear_dw_splits", &linear_dw_splits, py::arg("rows"), py::arg("n_in"), py::arg("n_out"), nogil,
        "The split-K count for dw on the current device (1: none).");
  m.def("column_sums", &column_sums, py::arg("out"), py::arg("g"), py::arg("partial"), py::arg("rows"), py::arg("n"),
        py::arg("chunks"), py::arg("stream"), nogil,
        "out = column sums of g (rows, n), deterministic, via a (chunks, n) workspace.");
}
#endif

}  // namespace cuda
}  // namespace tinygpt
