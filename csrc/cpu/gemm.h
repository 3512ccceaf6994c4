// Packed, register-blocked, OpenMP-parallel single-precision GEMM (implemented in matmul.cpp).
//
//   C[i, j] (=|+=) sum_k A[i, k] * B[k, j]  (+ bias[j])   then optionally  Y[i, j] = gelu_tanh(C[i, j])
//
// for i < M, j < N, k < K, with A[i, k] = a[i * rsa + k * csa] and B[k, j] = b[k * rsb + j * csb]:
// any strides, so a transposed operand is just swapped strides (it is repacked anyway). C is
// row-major with leading dimension ldc. M, N, K may be anything >= 0 (K = 0 gives C = bias or 0).
//
// Structure (BLIS / GotoBLAS): loops jc (NC columns) -> pc (KC of the reduction) -> row blocks,
// B's KC x NC block packed into NR-wide k-major panels shared by all threads (double-buffered: one
// barrier per KC block), each row block of A packed into MR-tall panels by the thread that takes it,
// and an MR x NR register-tile micro-kernel: AVX-512 14 x 32 or AVX2/FMA 6 x 16, picked by cpu::isa()
// (isa.h; a portable scalar 4 x 16 on the baseline), plus a column kernel for narrow
// N edges. Row blocks (x column chunks when M is short) are handed to threads dynamically, a few
// per thread. Bias is added and GELU applied in the micro-kernel's epilogue, in registers.
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
