// Packed, register-blocked, OpenMP-parallel single-precision GEMM (implemented in gemm.cpp).
//
//   C[i, j] (=|+=) sum_k A[i, k] * B[k, j]  (+ bias[j])   then optionally  Y[i, j] = gelu_tanh(C[i, j])
//
// for i < M, j < N, k < K, with A[i, k] = a[i * rsa + k * csa] and B[k, j] = b[k * rsb + j * csb]:
// any strides, so a transposed operand is just swapped strides (it is repacked anyway). C is
// row-major with leading dimension ldc. M, N, K may be anything >= 0 (K = 0 gives C = bias or 0).
//
// Structure (BLIS / GotoBLAS): loops jc (NC columns) -> pc (KC of the reduction) -> row blocks, B
// packed into NR-wide k-major panels and A into MR-tall panels, an MR x NR register-tile micro-kernel
// per instruction set (gemm_tiles.h: AVX-512 14 x 32, AVX2 6 x 16, portable 4 x 16, picked by
// cpu::isa()). Threads own static bands of tasks (row blocks x column chunks) with private packed B,
// and steal what is left; a reduction much longer than both sides is split over K instead. Bias is
// added and GELU applied in the micro-kernel's epilogue, in registers.
#pragma once

#include <cstdint>

namespace tinygpt {
namespace cpu {

struct GemmEpilogue {
  const float* bias = nullptr;  // (N,) added to every row of C, or nullptr
  float* gelu_out = nullptr;    // if set: gelu_out[i * ld_gelu + j] = gelu_tanh(C[i, j]) (C keeps the pre-activation)
  int64_t ld_gelu = 0;
};

void sgemm(int64_t M, int64_t N, int64_t K, const float* a, int64_t rsa, int64_t csa, const float* b,
           int64_t rsb, int64_t csb, float* c, int64_t ldc, bool accumulate = false,
           const GemmEpilogue& epilogue = GemmEpilogue());

// y = gelu_tanh(h) and dh = g * gelu_tanh'(h), elementwise over n floats, vectorised for the ISA.
void gelu_tanh_rows(const float* h, float* y, int64_t n);
void gelu_tanh_grad_rows(const float* g, const float* h, float* dh, int64_t n);

}  // namespace cpu
}  // namespace tinygpt
