// The CUDA quantized_linear family: the decode GEMV y (rows, out) = x @ (q * s).T + b for up to kMaxRows
// rows, straight from int8 (out, in) per-channel or packed int4 (out, in/2) group-scaled weights
// (tinygpt/quantize.py's layouts). tinygpt/kernels/cuda/quantized_linear.py runs more rows (prefill) as
// dequantized panels through cuBLAS (the reference on CuPy arrays).
//
// One warp per output channel: lanes stride over the channel's weight row 16 bytes at a time (coalesced
// 512-byte warp loads: decode is a single pass over the weights, memory-bound), multiply by x in float
// (x stays float: a GPU has the FLOPs, so no activation quantization error), accumulate every row in
// registers, then reduce the warp with shuffles. Weights are read once per call whatever the row count.
// Napkin math (GPT-2 124M int8, H100 ~3.35 TB/s): 124 MB per token -> ~37 us at the bandwidth bound.
#include <cuda_runtime.h>

#include <cstdint>

#include "common.h"
#include "registry.h"
#include "cuda/launch.cuh"

namespace tinygpt {
namespace cuda_quantized_linear {
namespace {

constexpr int kMaxRows = 8;
constexpr int kWarps = 4;  // channels per block

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// One int4 nibble (two's complement) as float.
__device__ __forceinline__ float nib(unsigned v) { return static_cast<float>(static_cast<int>(v ^ 8u) - 8); }

// BITS 8: q int8 (out, in), s (out,). BITS 4: q uint8 (out, in/2), s (out, in/gs). in % 32 == 0 for the
// 16-byte loads (the wrapper checks); x (rows, in), y (rows, out), bias (out,) or null.
template <int BITS, int R>
__global__ void __launch_bounds__(kWarps * 32) quantized_gemv_kernel(float* __restrict__ y, const float* __restrict__ x,
                                                                     const uint8_t* __restrict__ q,
                                                                     const float* __restrict__ s,
                                                                     const float* __restrict__ bias, int rows, int in,
                                                                     int out, int gs) {
  const int lane = threadIdx.x & 31;
  const int o = blockIdx.x * kWarps + (threadIdx.x >> 5);
  if (o >= out) return;  // whole warps only: no barrier below
  const int bytes = BITS == 8 ? in : in / 2;
  const uint8_t* qo = q + static_cast<int64_t>(o) * bytes;
  float acc[R];
#pragma unroll
  for (int r = 0; r < R; ++r) acc[r] = 0.0f;
  for (int b0 = lane * 16; b0 < bytes; b0 += 32 * 16) {
    const uint4 w4 = __ldg(reinterpret_cast<const uint4*>(qo + b0));
    const unsigned words[4] = {w4.x, w4.y, w4.z, w4.w};
    float w[32];
    int n = 0;
    if (BITS == 8) {
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) w[n++] = static_cast<float>(static_cast<int8_t>((words[i] >> (8 * j)) & 0xFFu));
    } else {
      const float sg = __ldg(s + static_cast<int64_t>(o) * (in / gs) + (2 * b0) / gs);  // gs >= 32: one group
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          const unsigned byte = (words[i] >> (8 * j)) & 0xFFu;
          w[n++] = nib(byte & 0xFu) * sg;  // element 2k in the low nibble
          w[n++] = nib(byte >> 4) * sg;
        }
    }
    const int k0 = BITS == 8 ? b0 : 2 * b0;
    constexpr int kElems = BITS == 8 ? 16 : 32;
#pragma unroll
    for (int r = 0; r < R; ++r) {
      if (r < rows) {
        const float4* xr = reinterpret_cast<const float4*>(x + static_cast<int64_t>(r) * in + k0);
        float a = acc[r];
#pragma unroll
        for (int v = 0; v < kElems / 4; ++v) {
          const float4 xv = __ldg(xr + v);
          a = fmaf(w[4 * v], xv.x, a);
          a = fmaf(w[4 * v + 1], xv.y, a);
          a = fmaf(w[4 * v + 2], xv.z, a);
          a = fmaf(w[4 * v + 3], xv.w, a);
        }
        acc[r] = a;
      }
    }
  }
  const float so = BITS == 8 ? __ldg(s + o) : 1.0f;
  const float bo = bias != nullptr ? __ldg(bias + o) : 0.0f;
#pragma unroll
  for (int r = 0; r < R; ++r) {
    const float v = warp_sum(acc[r]);
    if (r < rows && lane == 0) y[static_cast<int64_t>(r) * out + o] = v * so + bo;
  }
}

template <int BITS>
void launch_gemv(float* y, const float* x, const uint8_t* q, const float* s, const float* bias, int rows, int in,
                 int out, int gs, cudaStream_t stream) {
  const dim3 grid((out + kWarps - 1) / kWarps), block(kWarps * 32);
  if (rows <= 1) {
    quantized_gemv_kernel<BITS, 1><<<grid, block, 0, stream>>>(y, x, q, s, bias, rows, in, out, gs);
  } else if (rows <= 4) {
    quantized_gemv_kernel<BITS, 4><<<grid, block, 0, stream>>>(y, x, q, s, bias, rows, in, out, gs);
  } else {
    quantized_gemv_kernel<BITS, kMaxRows><<<grid, block, 0, stream>>>(y, x, q, s, bias, rows, in, out, gs);
  }
  TG_CUDA_CHECK(cudaGetLastError());
}

}  // namespace
}  // namespace cuda_quantized_linear
}  // namespace tinygpt

namespace tinygpt {
namespace cuda {
namespace {

// y (rows, out) from x (rows, in) and the quantized weights; bits 8 or 4 (gs: int4 group size).
void quantized_gemv(std::uintptr_t y, std::uintptr_t x, std::uintptr_t q, std::uintptr_t s, std::uintptr_t bias,
                    int64_t rows, int64_t in, int64_t out, int64_t bits, int64_t gs, std::uintptr_t stream) {
  using namespace cuda_quantized_linear;
  TG_CHECK(rows >= 0 && rows <= kMaxRows, "quantized_gemv (cuda): rows must be in [0, ", kMaxRows, "], got ", rows);
  TG_CHECK(in > 0 && in % 32 == 0 && in <= (int64_t{1} << 30) && out >= 0 && out <= (int64_t{1} << 30),
           "quantized_gemv (cuda): in must be a positive multiple of 32, got in=", in, ", out=", out);
  TG_CHECK(bits == 8 || (bits == 4 && gs >= 32 && gs % 32 == 0 && in % gs == 0),
           "quantized_gemv (cuda): bits must be 8, or 4 with a group size that is a multiple of 32 dividing in; "
           "got bits=", bits, ", group size ", gs);
  if (rows == 0 || out == 0) return;
  auto* yp = reinterpret_cast<float*>(y);
  const auto* xp = reinterpret_cast<const float*>(x);
  const auto* qp = reinterpret_cast<const uint8_t*>(q);
  const auto* sp = reinterpret_cast<const float*>(s);
  const auto* bp = reinterpret_cast<const float*>(bias);
  const auto st = reinterpret_cast<cudaStream_t>(stream);
  if (bits == 8) {
    launch_gemv<8>(yp, xp, qp, sp, bp, static_cast<int>(rows), static_cast<int>(in), static_cast<int>(out), 0, st);
  } else {
    launch_gemv<4>(yp, xp, qp, sp, bp, static_cast<int>(rows), static_cast<int>(in), static_cast<int>(out),
                   static_cast<int>(gs), st);
  }
}

}  // namespace

#ifndef __CUDA_ARCH__  // host pass only (registry.h)
void bind_quantized_linear(py::module_& m) {
  m.def("quantized_gemv", &quantized_gemv, py::arg("y"), py::arg("x"), py::arg("q"), py::arg("scale"), py::arg("bias"),
        py::arg("rows"), py::arg("in_features"), py::arg("out_features"), py::arg("bits"), py::arg("group_size"),
        py::arg("stream"), py::call_guard<py::gil_scoped_release>(),
        "y (rows <= 8, out) = x @ (q * scale).T + bias from int8 (bits 8) or packed int4 (bits 4) weights.");
}
#endif

}  // namespace cuda
}  // namespace tinygpt
