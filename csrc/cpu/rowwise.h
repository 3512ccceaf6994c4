// Helpers shared by the CPU row kernels (softmax, cross-entropy): row reductions on GCC vectors
// (the thread split is parallel.h, the exp simd.h).
//
// The row kernels are plain float code under `#pragma omp simd`, compiled once per instruction set
// with TG_PER_ISA (isa.h). Everything inlined into such a copy is vectorised for its target: the exp
// (simd.h: exp_lanes<Scalar<I>>) and the row reductions on GCC vectors (vfloat). Such files also need
// -fno-math-errno -fno-trapping-math (set per file in CMakeLists.txt).
#pragma once

#include <cstdint>
#include <cstring>
#include <limits>

#include "isa.h"
#include "parallel.h"
#include "simd.h"

// The 64-byte vector helpers below are always inlined, so the ABI note GCC gives for passing
// them by value in the non-AVX-512 copies never applies.
#pragma GCC diagnostic ignored "-Wpsabi"

namespace tinygpt {
namespace cpu {

// 16 floats as one GCC vector: a zmm register on AVX-512, two ymm on AVX2, four xmm on SSE2.
// Used for the row reductions: `#pragma omp simd reduction` would also vectorise them, but GCC
// ends those by storing the lanes and adding them one by one, which costs more than the whole
// loop for short rows (V = 65 characters); here the lanes combine in a 4-step tree instead.
constexpr int64_t kLanes = 16;
typedef float vfloat __attribute__((vector_size(kLanes * sizeof(float))));
typedef int32_t vint __attribute__((vector_size(kLanes * sizeof(int32_t))));

TG_INLINE vfloat vload(const float* p) {
  vfloat v;
  std::memcpy(&v, p, sizeof v);  // unaligned load
  return v;
}

TG_INLINE vfloat vbroadcast(float x) { return vfloat{} + x; }

// Lanes combined pairwise: halves, then quarters, ... (op is + or max).
template <typename Op>
TG_INLINE float vreduce(vfloat v, Op op) {
  v = op(v, __builtin_shuffle(v, vint{8, 9, 10, 11, 12, 13, 14, 15, 0, 1, 2, 3, 4, 5, 6, 7}));
  v = op(v, __builtin_shuffle(v, vint{4, 5, 6, 7, 0, 1, 2, 3, 12, 13, 14, 15, 8, 9, 10, 11}));
  v = op(v, __builtin_shuffle(v, vint{2, 3, 0, 1, 6, 7, 4, 5, 10, 11, 8, 9, 14, 15, 12, 13}));
  v = op(v, __builtin_shuffle(v, vint{1, 0, 3, 2, 5, 4, 7, 6, 9, 8, 11, 10, 13, 12, 15, 14}));
  return v[0];
}

// max(a, b) per lane, keeping a where b is NaN (so NaN never wins; see row_max).
TG_INLINE vfloat vmax(vfloat a, vfloat b) { return b > a ? b : a; }

// max of x[0..C) (-inf for C == 0). NaNs are skipped here and surface through exp(x - max).
TG_INLINE float row_max(const float* __restrict x, int64_t C) {
  const float ninf = -std::numeric_limits<float>::infinity();
  vfloat m0 = vbroadcast(ninf), m1 = m0;
  int64_t c = 0;
  for (; c + 2 * kLanes <= C; c += 2 * kLanes) {
    m0 = vmax(m0, vload(x + c));
    m1 = vmax(m1, vload(x + c + kLanes));
  }
  if (c + kLanes <= C) {
    m0 = vmax(m0, vload(x + c));
    c += kLanes;
  }
  if (c < C) {
    if (C >= kLanes) {  // the last kLanes elements, overlapping ones already seen (max allows it)
      m1 = vmax(m1, vload(x + C - kLanes));
    } else {  // a row shorter than one vector
      float m = ninf;
      for (; c < C; ++c) m = x[c] > m ? x[c] : m;
      m1 = vmax(m1, vbroadcast(m));
    }
  }
  return vreduce(vmax(m0, m1), [](vfloat a, vfloat b) { return vmax(a, b); });
}

// Sum of buf[0..n), n <= kSumBlock; zero-pads buf up to a multiple of kLanes (it must have room).
TG_INLINE float sum_block(float* __restrict buf, int64_t n) {
  for (int64_t i = n; i % kLanes != 0; ++i) buf[i] = 0.0f;
  vfloat s0 = vfloat{}, s1 = vfloat{};
  int64_t i = 0;
  for (; i + 2 * kLanes <= n; i += 2 * kLanes) {
    s0 += vload(buf + i);
    s1 += vload(buf + i + kLanes);
  }
  for (; i < n; i += kLanes) s0 += vload(buf + i);
  return vreduce(s0 + s1, [](vfloat a, vfloat b) { return a + b; });
}

// sum of term(c) for c in [0, n), term inlined into a vectorised loop. Blocked: the terms of
// kSumBlock-long blocks go to a stack buffer (L1) and are summed in float, 32 lanes wide; the
// block sums accumulate in float64. So the rounding error is bounded by the block length
// (~kSumBlock / 32 additions per lane) instead of growing with n.
constexpr int64_t kSumBlock = 512;

template <typename Term>
TG_INLINE double blocked_sum(int64_t n, Term term) {
  alignas(64) float buf[kSumBlock];
  double total = 0.0;
  for (int64_t b = 0; b < n; b += kSumBlock) {
    const int64_t len = b + kSumBlock < n ? kSumBlock : n - b;
#pragma omp simd
    for (int64_t i = 0; i < len; ++i) buf[i] = term(b + i);
    total += sum_block(buf, len);
  }
  return total;
}

}  // namespace cpu
}  // namespace tinygpt
