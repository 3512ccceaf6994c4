// GPT-2's tanh GELU on the GPU, one definition for the gelu family (gelu.cu) and the GEMM epilogue
// of linear_gelu (gemm.cuh), whose backward is gelu.cu's.
//   gelu(h) = 0.5 h (1 + tanh u) = h / (1 + exp(-2u)), u = sqrt(2/pi) (x + 0.044715 x^3), x = h
//   capped at 12 (beyond it the factor is 1 to float precision, and x^3 never overflows); 0 below -12
//   (|h| e^-142 at most), where h / (1 + e^80) would not be for |h| above ~1e29.
//   gelu'(h) = s + x 2 s (1 - s) u'(x), s = 1 / (1 + e), 1 - s = e s, e = exp(-2u) capped at exp(80).
// expf is the accurate libdevice version (no fast-math).
#pragma once

#include <cuda_runtime.h>

namespace tinygpt {
namespace cuda_gelu {

constexpr float kSqrt2OverPi = 0.7978845608028654f;
constexpr float kGeluC = 0.044715f;

__device__ __forceinline__ float gelu_tanh(float x) {
  if (x <= -12.0f) return 0.0f * x;
  const float xc = fminf(x, 12.0f);
  const float u = kSqrt2OverPi * (xc + kGeluC * xc * xc * xc);
  return x / (1.0f + expf(-2.0f * u));
}

// g * gelu'(x)
__device__ __forceinline__ float gelu_tanh_grad(float g, float x) {
  const float xc = fminf(fmaxf(x, -12.0f), 12.0f);
  const float u = kSqrt2OverPi * (xc + kGeluC * xc * xc * xc);
  const float e = expf(fminf(-2.0f * u, 80.0f));
  const float s = 1.0f / (1.0f + e);
  const float du = kSqrt2OverPi * (1.0f + 3.0f * kGeluC * xc * xc);
  return g * (s + xc * 2.0f * (e * s * s) * du);
}

}  // namespace cuda_gelu
}  // namespace tinygpt
