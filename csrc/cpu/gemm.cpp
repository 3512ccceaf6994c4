// The CPU GEMM engine behind gemm.h: sgemm (packed, register-blocked, OpenMP-parallel) and the
// vectorised GELU rows its epilogue shares with linear_gelu's backward. linear.cpp is its user.
//
// Layout: C (M x N) = A (M x K) B (K x N). Packed A: MR-row panels, k-major (panel[k * MR + r]);
// packed B: NR-column panels, k-major (panel[k * NR + c]). The micro-kernel keeps an MR x NR tile of
// C in registers, per k loads NR floats of B (vectors) and broadcasts MR floats of A, and writes the
// tile once (adding bias / the old C), with masks at the N edge and a template instance per row
// count at the M edge, so nothing is computed for padding rows.
#include "gemm.h"

// The AVX2 / AVX-512 kernels are compiled per ISA with `#pragma GCC target` (no -march flags: the
// wheel runs on any x86-64) and picked by cpu::isa() (isa.h); other compilers and CPUs get the
// baseline path.
#include "isa.h"
#if TG_X86_ISAS
#include <immintrin.h>
#endif

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "parallel.h"

namespace tinygpt {
namespace cpu {
namespace {

constexpr float kSqrt2OverPi = 0.7978845608028654f;
constexpr float kGeluC = 0.044715f;
// |h| beyond this: gelu(h) = h or 0 and gelu'(h) = 1 or 0 to float precision (tanh(u) = +-1 for
// |u| > 9, and u(12) = 71). Clamping first keeps h^3 finite for huge inputs.
constexpr float kGeluClamp = 12.0f;

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
inline int64_t round_up(int64_t a, int64_t b) { return ceil_div(a, b) * b; }

// A 64-byte aligned scratch buffer that only grows; thread_local instances are reused across calls
// (the OpenMP pool keeps its threads), so steady-state GEMMs allocate nothing.
class Scratch {
 public:
  Scratch() = default;
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  ~Scratch() { std::free(ptr_); }
  float* get(int64_t n) {
    if (n > cap_) {
      std::free(ptr_);
      cap_ = round_up(std::max<int64_t>(n, 1024), 16);
      ptr_ = static_cast<float*>(std::aligned_alloc(64, static_cast<size_t>(cap_) * sizeof(float)));
      if (ptr_ == nullptr) {
        cap_ = 0;
        throw std::bad_alloc();
      }
    }
    return ptr_;
  }

 private:
  float* ptr_ = nullptr;
  int64_t cap_ = 0;
};

// ------------------------------------------------------------------------------------ scalar
// Portable fallback (any x86-64 / any CPU): MR x NR = 4 x 16, plain loops the compiler
// vectorises with the baseline ISA.
namespace scalar {

constexpr int MR = 4, NR = 16;

inline float sigmoid_2u(float h) {  // 0.5 * (1 + tanh(u(h))) = 1 / (1 + exp(-2u))
  const float x = std::min(std::max(h, -kGeluClamp), kGeluClamp);
  const float u = kSqrt2OverPi * x * (1.0f + kGeluC * x * x);
  return 1.0f / (1.0f + std::exp(-2.0f * u));
}

// C tile (mr x nr at c) = A panel @ B panel (+ bias) (+ C if acc); if y: y tile = gelu(C tile).
void tile(int64_t kc, const float* __restrict a, const float* __restrict b, float* __restrict c,
          int64_t ldc, int mr, int nr, const float* __restrict bias, bool acc, float* __restrict y,
          int64_t ldy) {
  float t[MR][NR] = {};
  for (int64_t k = 0; k < kc; ++k, a += MR, b += NR) {
    for (int i = 0; i < MR; ++i) {
      const float ai = a[i];
      for (int j = 0; j < NR; ++j) t[i][j] += ai * b[j];
    }
  }
  for (int i = 0; i < mr; ++i) {
    float* ci = c + i * ldc;
    for (int j = 0; j < nr; ++j) {
      float v = t[i][j];
      if (bias != nullptr) v += bias[j];
      if (acc) v += ci[j];
      ci[j] = v;
      if (y != nullptr) y[i * ldy + j] = v * sigmoid_2u(v);
    }
  }
}

void gelu_rows(const float* h, float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] = h[i] * sigmoid_2u(h[i]);
}

void gelu_grad_rows(const float* g, const float* h, float* dh, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const float x = std::min(std::max(h[i], -kGeluClamp), kGeluClamp);
    const float u = kSqrt2OverPi * x * (1.0f + kGeluC * x * x);
    const float q = std::exp(std::min(-2.0f * u, 88.0f));
    const float s = 1.0f / (1.0f + q);
    // d/dh [h * sigmoid(2u)] = s + h * 2 s (1 - s) u',  1 - s = q s,  u' = sqrt(2/pi) (1 + 3c h^2)
    const float du = kSqrt2OverPi * (1.0f + 3.0f * kGeluC * x * x);
    dh[i] = g[i] * (s + 2.0f * x * du * (q * s) * s);
  }
}

}  // namespace scalar

#if TG_X86_ISAS
// ------------------------------------------------------------------------------------ AVX2
#pragma GCC push_options
#pragma GCC target("arch=x86-64-v3")
namespace avx2 {

constexpr int MR = 6, NR = 16;

inline __m256i lane_mask(int n) {  // lanes [0, n) set, n in [0, 8]
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

// exp(x) for the whole float range: Cephes' polynomial on [-ln2/2, ln2/2] times 2^n, with
// explicit underflow to 0 and overflow to inf outside [-87.3, 88.3].
inline __m256 exp_ps(__m256 x0) {
  const __m256 x = _mm256_min_ps(_mm256_max_ps(x0, _mm256_set1_ps(-87.3f)), _mm256_set1_ps(88.3f));
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.9875691500e-4f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
  p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
  const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  __m256 y = _mm256_mul_ps(p, _mm256_castsi256_ps(e));
  y = _mm256_blendv_ps(y, _mm256_setzero_ps(), _mm256_cmp_ps(x0, _mm256_set1_ps(-87.3f), _CMP_LT_OQ));
  return _mm256_blendv_ps(y, _mm256_set1_ps(INFINITY), _mm256_cmp_ps(x0, _mm256_set1_ps(88.3f), _CMP_GT_OQ));
}

// u(h) = sqrt(2/pi) (h + c h^3) on h clamped to [-12, 12].
inline __m256 clamp_h(__m256 h) {
  return _mm256_min_ps(_mm256_max_ps(h, _mm256_set1_ps(-kGeluClamp)), _mm256_set1_ps(kGeluClamp));
}

inline __m256 gelu_ps(__m256 h) {  // h * sigmoid(2u) = 0.5 h (1 + tanh(u))
  const __m256 x = clamp_h(h);
  const __m256 x2 = _mm256_mul_ps(x, x);
  const __m256 u = _mm256_mul_ps(_mm256_mul_ps(_mm256_set1_ps(kSqrt2OverPi), x),
                                 _mm256_fmadd_ps(_mm256_set1_ps(kGeluC), x2, _mm256_set1_ps(1.0f)));
  const __m256 q = exp_ps(_mm256_mul_ps(_mm256_set1_ps(-2.0f), u));
  return _mm256_div_ps(h, _mm256_add_ps(_mm256_set1_ps(1.0f), q));
}

inline __m256 gelu_grad_ps(__m256 g, __m256 h) {
  const __m256 x = clamp_h(h);
  const __m256 x2 = _mm256_mul_ps(x, x);
  const __m256 u = _mm256_mul_ps(_mm256_mul_ps(_mm256_set1_ps(kSqrt2OverPi), x),
                                 _mm256_fmadd_ps(_mm256_set1_ps(kGeluC), x2, _mm256_set1_ps(1.0f)));
  const __m256 q = exp_ps(_mm256_min_ps(_mm256_mul_ps(_mm256_set1_ps(-2.0f), u), _mm256_set1_ps(88.0f)));
  const __m256 s = _mm256_div_ps(_mm256_set1_ps(1.0f), _mm256_add_ps(_mm256_set1_ps(1.0f), q));
  const __m256 du = _mm256_mul_ps(_mm256_set1_ps(2.0f * kSqrt2OverPi),
                                  _mm256_fmadd_ps(_mm256_set1_ps(3.0f * kGeluC), x2, _mm256_set1_ps(1.0f)));
  // s + 2 x u'/sqrt... : s + x * (2 sqrt(2/pi) (1 + 3c x^2)) * (q s) * s
  const __m256 t = _mm256_mul_ps(_mm256_mul_ps(x, du), _mm256_mul_ps(_mm256_mul_ps(q, s), s));
  return _mm256_mul_ps(g, _mm256_add_ps(s, t));
}

template <int M, int NV>
void ukr(int64_t kc, const float* __restrict a, const float* __restrict b, float* __restrict c,
         int64_t ldc, int nr, const float* __restrict bias, bool acc, float* __restrict y, int64_t ldy) {
  __m256 r[M][NV];
#pragma GCC unroll 8
  for (int i = 0; i < M; ++i) {
    __builtin_prefetch(c + i * ldc, 1, 3);  // the C (and y) tile's misses overlap the k loop
    if (y != nullptr) __builtin_prefetch(y + i * ldy, 1, 3);
#pragma GCC unroll 2
    for (int v = 0; v < NV; ++v) r[i][v] = _mm256_setzero_ps();
  }
#pragma GCC unroll 2
  for (int64_t k = 0; k < kc; ++k) {
    __m256 bv[NV];
#pragma GCC unroll 2
    for (int v = 0; v < NV; ++v) bv[v] = _mm256_load_ps(b + 8 * v);
#pragma GCC unroll 8
    for (int i = 0; i < M; ++i) {
      const __m256 ai = _mm256_broadcast_ss(a + i);
#pragma GCC unroll 2
      for (int v = 0; v < NV; ++v) r[i][v] = _mm256_fmadd_ps(ai, bv[v], r[i][v]);
    }
    a += MR;
    b += NR;
  }
  __m256i mk[NV];
  __m256 bb[NV];
#pragma GCC unroll 2
  for (int v = 0; v < NV; ++v) {
    mk[v] = lane_mask(std::min(8, nr - 8 * v));
    bb[v] = bias != nullptr ? _mm256_maskload_ps(bias + 8 * v, mk[v]) : _mm256_setzero_ps();
  }
#pragma GCC unroll 8
  for (int i = 0; i < M; ++i) {
    float* ci = c + i * ldc;
#pragma GCC unroll 2
    for (int v = 0; v < NV; ++v) {
      __m256 x = _mm256_add_ps(r[i][v], bb[v]);
      if (acc) x = _mm256_add_ps(x, _mm256_maskload_ps(ci + 8 * v, mk[v]));
      _mm256_maskstore_ps(ci + 8 * v, mk[v], x);
      if (y != nullptr) _mm256_maskstore_ps(y + i * ldy + 8 * v, mk[v], gelu_ps(x));  // fused GELU
    }
  }
}

using Ukr = void (*)(int64_t, const float*, const float*, float*, int64_t, int, const float*, bool, float*,
                    int64_t);
const Ukr kTable[MR][2] = {
    {ukr<1, 1>, ukr<1, 2>}, {ukr<2, 1>, ukr<2, 2>}, {ukr<3, 1>, ukr<3, 2>},
    {ukr<4, 1>, ukr<4, 2>}, {ukr<5, 1>, ukr<5, 2>}, {ukr<6, 1>, ukr<6, 2>},
};

void tile(int64_t kc, const float* a, const float* b, float* c, int64_t ldc, int mr, int nr,
          const float* bias, bool acc, float* y, int64_t ldy) {
  kTable[mr - 1][nr > 8](kc, a, b, c, ldc, nr, bias, acc, y, ldy);
}

void gelu_rows(const float* h, float* y, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, gelu_ps(_mm256_loadu_ps(h + i)));
  if (i < n) {
    const __m256i m = lane_mask(static_cast<int>(n - i));
    _mm256_maskstore_ps(y + i, m, gelu_ps(_mm256_maskload_ps(h + i, m)));
  }
}

void gelu_grad_rows(const float* g, const float* h, float* dh, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    _mm256_storeu_ps(dh + i, gelu_grad_ps(_mm256_loadu_ps(g + i), _mm256_loadu_ps(h + i)));
  if (i < n) {
    const __m256i m = lane_mask(static_cast<int>(n - i));
    _mm256_maskstore_ps(dh + i, m, gelu_grad_ps(_mm256_maskload_ps(g + i, m), _mm256_maskload_ps(h + i, m)));
  }
}

// dst[k * stride + r] = src[r * ld + k] for r < rows (rows <= width <= 8), zero for rows <= r < width,
// k < kc: an MR- or NR-wide panel from `rows` rows that are contiguous in k, 8 x 8 blocks at a time.
void transpose_pack(int rows, int64_t kc, const float* src, int64_t ld, float* dst, int stride, int width) {
  const __m256i wmask = lane_mask(width);
  int64_t k0 = 0;
  for (; k0 < kc; k0 += 8) {
    const int kn = static_cast<int>(std::min<int64_t>(8, kc - k0));
    const __m256i kmask = lane_mask(kn);
    __m256 r[8];
#pragma GCC unroll 8
    for (int i = 0; i < 8; ++i)
      r[i] = i < rows ? (kn == 8 ? _mm256_loadu_ps(src + i * ld + k0) : _mm256_maskload_ps(src + i * ld + k0, kmask))
                      : _mm256_setzero_ps();
    const __m256 t0 = _mm256_unpacklo_ps(r[0], r[1]), t1 = _mm256_unpackhi_ps(r[0], r[1]);
    const __m256 t2 = _mm256_unpacklo_ps(r[2], r[3]), t3 = _mm256_unpackhi_ps(r[2], r[3]);
    const __m256 t4 = _mm256_unpacklo_ps(r[4], r[5]), t5 = _mm256_unpackhi_ps(r[4], r[5]);
    const __m256 t6 = _mm256_unpacklo_ps(r[6], r[7]), t7 = _mm256_unpackhi_ps(r[6], r[7]);
    const __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xEE);
    const __m256 u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xEE);
    const __m256 u4 = _mm256_shuffle_ps(t4, t6, 0x44), u5 = _mm256_shuffle_ps(t4, t6, 0xEE);
    const __m256 u6 = _mm256_shuffle_ps(t5, t7, 0x44), u7 = _mm256_shuffle_ps(t5, t7, 0xEE);
    __m256 c[8];
    c[0] = _mm256_permute2f128_ps(u0, u4, 0x20);
    c[1] = _mm256_permute2f128_ps(u1, u5, 0x20);
    c[2] = _mm256_permute2f128_ps(u2, u6, 0x20);
    c[3] = _mm256_permute2f128_ps(u3, u7, 0x20);
    c[4] = _mm256_permute2f128_ps(u0, u4, 0x31);
    c[5] = _mm256_permute2f128_ps(u1, u5, 0x31);
    c[6] = _mm256_permute2f128_ps(u2, u6, 0x31);
    c[7] = _mm256_permute2f128_ps(u3, u7, 0x31);
    float* d = dst + k0 * stride;
    if (width == 8) {
      for (int j = 0; j < kn; ++j) _mm256_storeu_ps(d + j * stride, c[j]);
    } else {
      for (int j = 0; j < kn; ++j) _mm256_maskstore_ps(d + j * stride, wmask, c[j]);
    }
  }
}

}  // namespace avx2
#pragma GCC pop_options

// ------------------------------------------------------------------------------------ AVX-512
#pragma GCC push_options
#pragma GCC target("arch=x86-64-v4")
namespace avx512 {

constexpr int MR = 14, NR = 32;

inline __mmask16 lane_mask(int n) {  // lanes [0, n), n in [0, 16]
  return n >= 16 ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << std::max(n, 0)) - 1u);
}

// exp(x): Cephes' polynomial on [-ln2/2, ln2/2], scaled by 2^n with scalef (which underflows to 0
// and overflows to inf by itself).
inline __m512 exp_ps(__m512 x) {
  x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-150.0f)), _mm512_set1_ps(150.0f));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.9875691500e-4f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
  p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
  return _mm512_scalef_ps(p, n);
}

inline __m512 clamp_h(__m512 h) {
  return _mm512_min_ps(_mm512_max_ps(h, _mm512_set1_ps(-kGeluClamp)), _mm512_set1_ps(kGeluClamp));
}

inline __m512 gelu_ps(__m512 h) {
  const __m512 x = clamp_h(h);
  const __m512 x2 = _mm512_mul_ps(x, x);
  const __m512 u = _mm512_mul_ps(_mm512_mul_ps(_mm512_set1_ps(kSqrt2OverPi), x),
                                 _mm512_fmadd_ps(_mm512_set1_ps(kGeluC), x2, _mm512_set1_ps(1.0f)));
  const __m512 q = exp_ps(_mm512_mul_ps(_mm512_set1_ps(-2.0f), u));
  return _mm512_div_ps(h, _mm512_add_ps(_mm512_set1_ps(1.0f), q));
}

inline __m512 gelu_grad_ps(__m512 g, __m512 h) {
  const __m512 x = clamp_h(h);
  const __m512 x2 = _mm512_mul_ps(x, x);
  const __m512 u = _mm512_mul_ps(_mm512_mul_ps(_mm512_set1_ps(kSqrt2OverPi), x),
                                 _mm512_fmadd_ps(_mm512_set1_ps(kGeluC), x2, _mm512_set1_ps(1.0f)));
  const __m512 q = exp_ps(_mm512_min_ps(_mm512_mul_ps(_mm512_set1_ps(-2.0f), u), _mm512_set1_ps(88.0f)));
  const __m512 s = _mm512_div_ps(_mm512_set1_ps(1.0f), _mm512_add_ps(_mm512_set1_ps(1.0f), q));
  const __m512 du = _mm512_mul_ps(_mm512_set1_ps(2.0f * kSqrt2OverPi),
                                  _mm512_fmadd_ps(_mm512_set1_ps(3.0f * kGeluC), x2, _mm512_set1_ps(1.0f)));
  const __m512 t = _mm512_mul_ps(_mm512_mul_ps(x, du), _mm512_mul_ps(_mm512_mul_ps(q, s), s));
  return _mm512_mul_ps(g, _mm512_add_ps(s, t));
}

template <int M, int NV>
void ukr(int64_t kc, const float* __restrict a, const float* __restrict b, float* __restrict c,
         int64_t ldc, int nr, const float* __restrict bias, bool acc, float* __restrict y, int64_t ldy) {
  __m512 r[M][NV];
#pragma GCC unroll 16
  for (int i = 0; i < M; ++i) {
    // Start fetching the C tile now: its (write-allocate) misses then overlap the k loop.
#pragma GCC unroll 2
    for (int v = 0; v < NV; ++v) {
      __builtin_prefetch(c + i * ldc + 16 * v, 1, 3);
      if (y != nullptr) __builtin_prefetch(y + i * ldy + 16 * v, 1, 3);
    }
#pragma GCC unroll 2
    for (int v = 0; v < NV; ++v) r[i][v] = _mm512_setzero_ps();
  }
#pragma GCC unroll 2
  for (int64_t k = 0; k < kc; ++k) {
    __m512 bv[NV];
#pragma GCC unroll 2
    for (int v = 0; v < NV; ++v) bv[v] = _mm512_load_ps(b + 16 * v);
#pragma GCC unroll 16
    for (int i = 0; i < M; ++i) {
      const __m512 ai = _mm512_set1_ps(a[i]);
#pragma GCC unroll 2
      for (int v = 0; v < NV; ++v) r[i][v] = _mm512_fmadd_ps(ai, bv[v], r[i][v]);
    }
    a += MR;
    b += NR;
  }
  __mmask16 mk[NV];
  __m512 bb[NV];
#pragma GCC unroll 2
  for (int v = 0; v < NV; ++v) {
    mk[v] = lane_mask(nr - 16 * v);
    bb[v] = bias != nullptr ? _mm512_maskz_loadu_ps(mk[v], bias + 16 * v) : _mm512_setzero_ps();
  }
  if (nr == 16 * NV) {  // a full tile: plain loads and stores
#pragma GCC unroll 16
    for (int i = 0; i < M; ++i) {
      float* ci = c + i * ldc;
#pragma GCC unroll 2
      for (int v = 0; v < NV; ++v) {
        __m512 x = _mm512_add_ps(r[i][v], bb[v]);
        if (acc) x = _mm512_add_ps(x, _mm512_loadu_ps(ci + 16 * v));
        _mm512_storeu_ps(ci + 16 * v, x);
        if (y != nullptr) _mm512_storeu_ps(y + i * ldy + 16 * v, gelu_ps(x));  // fused GELU
      }
    }
    return;
  }
#pragma GCC unroll 16
  for (int i = 0; i < M; ++i) {
    float* ci = c + i * ldc;
#pragma GCC unroll 2
    for (int v = 0; v < NV; ++v) {
      __m512 x = _mm512_add_ps(r[i][v], bb[v]);
      if (acc) x = _mm512_add_ps(x, _mm512_maskz_loadu_ps(mk[v], ci + 16 * v));
      _mm512_mask_storeu_ps(ci + 16 * v, mk[v], x);
      if (y != nullptr) _mm512_mask_storeu_ps(y + i * ldy + 16 * v, mk[v], gelu_ps(x));
    }
  }
}

using Ukr = void (*)(int64_t, const float*, const float*, float*, int64_t, int, const float*, bool, float*,
                    int64_t);
const Ukr kTable[MR][2] = {
    {ukr<1, 1>, ukr<1, 2>},   {ukr<2, 1>, ukr<2, 2>},   {ukr<3, 1>, ukr<3, 2>},
    {ukr<4, 1>, ukr<4, 2>},   {ukr<5, 1>, ukr<5, 2>},   {ukr<6, 1>, ukr<6, 2>},
    {ukr<7, 1>, ukr<7, 2>},   {ukr<8, 1>, ukr<8, 2>},   {ukr<9, 1>, ukr<9, 2>},
    {ukr<10, 1>, ukr<10, 2>}, {ukr<11, 1>, ukr<11, 2>}, {ukr<12, 1>, ukr<12, 2>},
    {ukr<13, 1>, ukr<13, 2>}, {ukr<14, 1>, ukr<14, 2>},
};

// The N edge when it is narrow (N = 65: a last panel of one column): vectorise over the tile's rows
// instead, one accumulator per column, so a 1-column edge costs 1 FMA per k, not 14.
template <int NC>
void ukr_cols(int64_t kc, const float* __restrict a, const float* __restrict b, float* __restrict c, int64_t ldc,
              int mr, const float* __restrict bias, bool acc, float* __restrict y, int64_t ldy) {
  __m512 r[NC];
#pragma GCC unroll 8
  for (int j = 0; j < NC; ++j) r[j] = _mm512_setzero_ps();
  const __mmask16 am = lane_mask(MR);
  for (int64_t k = 0; k < kc; ++k, a += MR, b += NR) {
    const __m512 av = _mm512_maskz_loadu_ps(am, a);  // rows 0..MR-1 of column k of A
#pragma GCC unroll 8
    for (int j = 0; j < NC; ++j) r[j] = _mm512_fmadd_ps(av, _mm512_set1_ps(b[j]), r[j]);
  }
  alignas(64) float t[16];
  for (int j = 0; j < NC; ++j) {
    __m512 x = r[j];
    if (bias != nullptr) x = _mm512_add_ps(x, _mm512_set1_ps(bias[j]));
    if (acc) {
      for (int i = 0; i < mr; ++i) t[i] = c[i * ldc + j];
      x = _mm512_add_ps(x, _mm512_maskz_load_ps(lane_mask(mr), t));
    }
    _mm512_store_ps(t, x);
    for (int i = 0; i < mr; ++i) c[i * ldc + j] = t[i];
    if (y != nullptr) {
      _mm512_store_ps(t, gelu_ps(x));
      for (int i = 0; i < mr; ++i) y[i * ldy + j] = t[i];
    }
  }
}

using ColUkr = void (*)(int64_t, const float*, const float*, float*, int64_t, int, const float*, bool, float*,
                        int64_t);
const ColUkr kColTable[8] = {ukr_cols<1>, ukr_cols<2>, ukr_cols<3>, ukr_cols<4>,
                             ukr_cols<5>, ukr_cols<6>, ukr_cols<7>, ukr_cols<8>};

void tile(int64_t kc, const float* a, const float* b, float* c, int64_t ldc, int mr, int nr,
          const float* bias, bool acc, float* y, int64_t ldy) {
  if (nr <= 8) {
    kColTable[nr - 1](kc, a, b, c, ldc, mr, bias, acc, y, ldy);
  } else {
    kTable[mr - 1][nr > 16](kc, a, b, c, ldc, nr, bias, acc, y, ldy);
  }
}

void gelu_rows(const float* h, float* y, int64_t n) {
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 m = lane_mask(static_cast<int>(std::min<int64_t>(16, n - i)));
    _mm512_mask_storeu_ps(y + i, m, gelu_ps(_mm512_maskz_loadu_ps(m, h + i)));
  }
}

void gelu_grad_rows(const float* g, const float* h, float* dh, int64_t n) {
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 m = lane_mask(static_cast<int>(std::min<int64_t>(16, n - i)));
    _mm512_mask_storeu_ps(dh + i, m, gelu_grad_ps(_mm512_maskz_loadu_ps(m, g + i), _mm512_maskz_loadu_ps(m, h + i)));
  }
}

// As avx2::transpose_pack with 16 x 16 blocks: rows <= width <= 16.
void transpose_pack(int rows, int64_t kc, const float* src, int64_t ld, float* dst, int stride, int width) {
  const __mmask16 wmask = lane_mask(width);
  for (int64_t k0 = 0; k0 < kc; k0 += 16) {
    const int kn = static_cast<int>(std::min<int64_t>(16, kc - k0));
    const __mmask16 kmask = lane_mask(kn);
    __m512 r[16];
#pragma GCC unroll 16
    for (int i = 0; i < 16; ++i)
      r[i] = i < rows ? _mm512_maskz_loadu_ps(kmask, src + i * ld + k0) : _mm512_setzero_ps();
    __m512 t[16];
#pragma GCC unroll 8
    for (int i = 0; i < 16; i += 2) {
      t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
      t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
    }
#pragma GCC unroll 4
    for (int i = 0; i < 16; i += 4) {
      r[i] = _mm512_shuffle_ps(t[i], t[i + 2], 0x44);
      r[i + 1] = _mm512_shuffle_ps(t[i], t[i + 2], 0xEE);
      r[i + 2] = _mm512_shuffle_ps(t[i + 1], t[i + 3], 0x44);
      r[i + 3] = _mm512_shuffle_ps(t[i + 1], t[i + 3], 0xEE);
    }
    // r[4q + j] holds, in 128-bit lane L, column (4L + j) of rows 4q..4q+3.
#pragma GCC unroll 4
    for (int j = 0; j < 4; ++j) {
      // t[j] = [rows 0-3 | rows 0-3 | rows 4-7 | rows 4-7] of columns [j, 8+j, j, 8+j], etc.
      t[j] = _mm512_shuffle_f32x4(r[j], r[4 + j], 0x88);
      t[4 + j] = _mm512_shuffle_f32x4(r[j], r[4 + j], 0xDD);
      t[8 + j] = _mm512_shuffle_f32x4(r[8 + j], r[12 + j], 0x88);
      t[12 + j] = _mm512_shuffle_f32x4(r[8 + j], r[12 + j], 0xDD);
    }
#pragma GCC unroll 4
    for (int j = 0; j < 4; ++j) {
      r[j] = _mm512_shuffle_f32x4(t[j], t[8 + j], 0x88);        // column j
      r[8 + j] = _mm512_shuffle_f32x4(t[j], t[8 + j], 0xDD);    // column 8 + j
      r[4 + j] = _mm512_shuffle_f32x4(t[4 + j], t[12 + j], 0x88);  // column 4 + j
      r[12 + j] = _mm512_shuffle_f32x4(t[4 + j], t[12 + j], 0xDD); // column 12 + j
    }
    float* d = dst + k0 * stride;
    for (int j = 0; j < kn; ++j) _mm512_mask_storeu_ps(d + j * stride, wmask, r[j]);
  }
}

}  // namespace avx512
#pragma GCC pop_options
#endif  // TG_X86_ISAS

// ------------------------------------------------------------------------------------ packing
// Transposes `rows` rows contiguous in k (leading dimension ld) into dst[k * stride + r], writing
// `width` lanes per k (zeros past rows); an ISA's SIMD version, or nullptr for plain loops.
using TransposeFn = void (*)(int, int64_t, const float*, int64_t, float*, int, int);

// A block (mc x kc at a, strides rsa, csa) -> MR-row panels, k-major: dst[p * MR * kc + k * MR + r].
template <int MR, TransposeFn TP>
void pack_a(int64_t mc, int64_t kc, const float* a, int64_t rsa, int64_t csa, float* dst) {
  for (int64_t i0 = 0; i0 < mc; i0 += MR, dst += MR * kc) {
    const int mr = static_cast<int>(std::min<int64_t>(MR, mc - i0));
    const float* src = a + i0 * rsa;
    if (rsa == 1) {  // A^T stored row-major (dW = g^T x): each k is a contiguous run of rows
      if (mr == MR) {
        for (int64_t k = 0; k < kc; ++k)
          for (int r = 0; r < MR; ++r) dst[k * MR + r] = src[k * csa + r];
      } else {
        for (int64_t k = 0; k < kc; ++k)
          for (int r = 0; r < MR; ++r) dst[k * MR + r] = r < mr ? src[k * csa + r] : 0.0f;
      }
    } else if (csa == 1 && TP != nullptr) {  // rows contiguous in k (x, g): a transpose
      TP(mr, kc, src, rsa, dst, MR, MR);
    } else {
      for (int64_t k = 0; k < kc; ++k)
        for (int r = 0; r < MR; ++r) dst[k * MR + r] = r < mr ? src[r * rsa + k * csa] : 0.0f;
    }
  }
}

// Columns [j, j + nr) of the kc x n block of B -> one NR-column panel, k-major, zero-padded to NR
// (the kernel loads whole vectors of it). W: lanes per transpose block.
template <int NR, TransposeFn TP, int W>
void pack_b_panel(int64_t kc, int nr, const float* b, int64_t rsb, int64_t csb, float* dst) {
  if (csb == 1) {  // rows of B contiguous (dx = g W, dW = g^T x)
    if (nr == NR) {
      for (int64_t k = 0; k < kc; ++k)
        for (int c = 0; c < NR; ++c) dst[k * NR + c] = b[k * rsb + c];
    } else {
      for (int64_t k = 0; k < kc; ++k)
        for (int c = 0; c < NR; ++c) dst[k * NR + c] = c < nr ? b[k * rsb + c] : 0.0f;
    }
  } else if (rsb == 1 && TP != nullptr) {  // B = W^T (forward): columns contiguous, a transpose
    for (int h = 0; h < NR; h += W)
      TP(std::max(0, std::min(W, nr - h)), kc, b + h * csb, csb, dst + h, NR, W);
  } else {
    for (int64_t k = 0; k < kc; ++k)
      for (int c = 0; c < NR; ++c) dst[k * NR + c] = c < nr ? b[k * rsb + c * csb] : 0.0f;
  }
}

// ------------------------------------------------------------------------------------ driver
using TileFn = void (*)(int64_t, const float*, const float*, float*, int64_t, int, int, const float*, bool, float*,
                       int64_t);
using PackAFn = void (*)(int64_t, int64_t, const float*, int64_t, int64_t, float*);
using PackBFn = void (*)(int64_t, int, const float*, int64_t, int64_t, float*);
using RowsFn = void (*)(const float*, float*, int64_t);
using GradRowsFn = void (*)(const float*, const float*, float*, int64_t);

struct GemmIsa {
  int mr, nr;
  int64_t kc, mc, nc;  // cache blocking: KC (reduction), MC (rows of A per L2 block), NC (columns of B)
  TileFn tile;
  PackAFn pack_a;
  PackBFn pack_b;
  RowsFn gelu;
  GradRowsFn gelu_grad;
};

// Indexed by cpu::Isa (baseline, avx2, avx512).
const GemmIsa kGemm[] = {
    {scalar::MR, scalar::NR, 256, 128, 4096, scalar::tile, pack_a<scalar::MR, nullptr>,
     pack_b_panel<scalar::NR, nullptr, 1>, scalar::gelu_rows, scalar::gelu_grad_rows},
#if TG_X86_ISAS
    // KC / MC from single-thread sweeps on Zen 4 (benchmarks/kernels/matmul.py shapes): KC = 512 keeps
    // a 14 x 32 tile's A and B panels streaming from L2 while cutting the passes over C.
    {avx2::MR, avx2::NR, 384, 144, 4096, avx2::tile, pack_a<avx2::MR, avx2::transpose_pack>,
     pack_b_panel<avx2::NR, avx2::transpose_pack, 8>, avx2::gelu_rows, avx2::gelu_grad_rows},
    {avx512::MR, avx512::NR, 512, 140, 4096, avx512::tile, pack_a<avx512::MR, avx512::transpose_pack>,
     pack_b_panel<avx512::NR, avx512::transpose_pack, 16>, avx512::gelu_rows, avx512::gelu_grad_rows},
#endif
};

const GemmIsa& current_gemm() { return kGemm[static_cast<int>(isa())]; }

// Products below this many flops (~45 us on one core) run on the calling thread: a fork/join of the
// static partition below costs ~1 us on an idle machine, so from here two threads pay.
constexpr double kParallelFlops = 1 << 22;

void fill_rows(int64_t M, int64_t N, float* c, int64_t ldc, bool accumulate, const GemmEpilogue& ep,
               const GemmIsa& isa) {  // K = 0: C = (C +) bias, then the epilogue
  for (int64_t i = 0; i < M; ++i) {
    float* ci = c + i * ldc;
    for (int64_t j = 0; j < N; ++j) ci[j] = (accumulate ? ci[j] : 0.0f) + (ep.bias ? ep.bias[j] : 0.0f);
    if (ep.gelu_out != nullptr) isa.gelu(ci, ep.gelu_out + i * ep.ld_gelu, N);
  }
}

}  // namespace

void gelu_tanh_rows(const float* h, float* y, int64_t n) { current_gemm().gelu(h, y, n); }
void gelu_tanh_grad_rows(const float* g, const float* h, float* dh, int64_t n) {
  current_gemm().gelu_grad(g, h, dh, n);
}

namespace {

// Packed B of at most this many floats per thread: each thread packs a whole NC block of its column
// chunk (every KC block) once and reuses it for all its row blocks (wider B: NC shrinks).
constexpr int64_t kFullB = int64_t(4) << 20;

// One thread's GEMM (no OpenMP inside) on private buffers: ap holds mc x kc_max, bp kc_max x nc_max.
// Used by each thread of the K-split below; bias is added by the first KC block.
void gemm_serial(const GemmIsa& isa, int64_t M, int64_t N, int64_t K, const float* a, int64_t rsa, int64_t csa,
                 const float* b, int64_t rsb, int64_t csb, float* c, int64_t ldc, bool accumulate,
                 const float* bias, float* ap, float* bp, int64_t kc_max, int64_t nc_max, int64_t mc) {
  const int MR = isa.mr, NR = isa.nr;
  for (int64_t jc = 0; jc < N; jc += nc_max) {
    const int64_t nc = std::min(nc_max, N - jc);
    for (int64_t pc = 0; pc < K; pc += kc_max) {
      const int64_t kc = std::min(kc_max, K - pc);
      const bool first = pc == 0;
      for (int64_t j = 0; j < nc; j += NR)
        isa.pack_b(kc, static_cast<int>(std::min<int64_t>(NR, nc - j)), b + pc * rsb + (jc + j) * csb, rsb, csb,
                   bp + j * kc);
      for (int64_t ic = 0; ic < M; ic += mc) {
        const int64_t m = std::min(mc, M - ic);
        isa.pack_a(m, kc, a + ic * rsa + pc * csa, rsa, csa, ap);
        for (int64_t j = 0; j < nc; j += NR) {
          const int nr = static_cast<int>(std::min<int64_t>(NR, nc - j));
          const float* bt = (first && bias != nullptr) ? bias + jc + j : nullptr;
          for (int64_t ir = 0; ir < m; ir += MR)
            isa.tile(kc, ap + ir * kc, bp + j * kc, c + (ic + ir) * ldc + jc + j, ldc,
                     static_cast<int>(std::min<int64_t>(MR, m - ir)), nr, bt, accumulate || !first, nullptr, 0);
        }
      }
    }
  }
}

// A long reduction (the weight gradient dW = g^T x reduces over B*T rows): each thread takes a
// contiguous K range into its own C (thread 0 into c, the others into scratch), packing its own A and
// B: nothing is shared until one barrier before the sum, so a preempted thread never stalls the
// other mid-way. Deterministic for a given thread count (the sum runs in thread order).
void sgemm_ksplit(const GemmIsa& isa, int nt, int64_t M, int64_t N, int64_t K, const float* a, int64_t rsa,
                  int64_t csa, const float* b, int64_t rsb, int64_t csb, float* c, int64_t ldc, bool accumulate,
                  const GemmEpilogue& ep) {
  const int64_t kpart = ceil_div(K, nt);
  const int64_t kc_max = ceil_div(kpart, ceil_div(kpart, isa.kc));
  const int64_t nc_max = round_up(ceil_div(N, ceil_div(N, isa.nc)), isa.nr);
  const int64_t mc = std::min(isa.mc, round_up(M, isa.mr));
  const int64_t asize = round_up(mc * kc_max, 16) + 64, bsize = round_up(kc_max * nc_max, 16) + 64;
  const int64_t psize = round_up(M * N, 16);
  thread_local Scratch scratch;
  float* const buf = scratch.get(nt * (asize + bsize) + (nt - 1) * psize);
  float* const parts = buf + nt * (asize + bsize);
#pragma omp parallel num_threads(nt)
  {
    const int t = thread_id();
    const int64_t k0 = K * t / nt, k1 = K * (t + 1) / nt;
    float* const ct = t == 0 ? c : parts + (t - 1) * psize;
    const int64_t ldt = t == 0 ? ldc : N;
    if (k1 > k0) {
      gemm_serial(isa, M, N, k1 - k0, a + k0 * csa, rsa, csa, b + k0 * rsb, rsb, csb, ct, ldt, t == 0 && accumulate,
                  t == 0 ? ep.bias : nullptr, buf + t * (asize + bsize), buf + t * (asize + bsize) + asize, kc_max,
                  nc_max, mc);
    } else if (t > 0) {
      std::fill(ct, ct + M * N, 0.0f);
    }
#pragma omp barrier
#pragma omp for schedule(static)
    for (int64_t i = 0; i < M; ++i) {
      float* ci = c + i * ldc;
      for (int u = 1; u < nt; ++u) {
        const float* pi = parts + (u - 1) * psize + i * N;
#pragma omp simd
        for (int64_t j = 0; j < N; ++j) ci[j] += pi[j];
      }
      if (ep.gelu_out != nullptr) isa.gelu(ci, ep.gelu_out + i * ep.ld_gelu, N);
    }
  }
}

}  // namespace

void sgemm(int64_t M, int64_t N, int64_t K, const float* a, int64_t rsa, int64_t csa, const float* b,
           int64_t rsb, int64_t csb, float* c, int64_t ldc, bool accumulate, const GemmEpilogue& ep) {
  const GemmIsa& isa = current_gemm();
  if (M <= 0 || N <= 0) return;
  if (K <= 0) {
    fill_rows(M, N, c, ldc, accumulate, ep, isa);
    return;
  }
  const int MR = isa.mr, NR = isa.nr;
  int nt = max_threads();
  if (2.0 * M * N * K < kParallelFlops) nt = 1;
  // A reduction much longer than both sides (dW = g^T x over B*T rows): split K, not the tiles.
  if (nt > 1 && K >= 2 * isa.kc && K >= 2 * std::max(M, N)) {
    sgemm_ksplit(isa, nt, M, N, K, a, rsa, csa, b, rsb, csb, c, ldc, accumulate, ep);
    return;
  }
  // Balanced blocks: K = 600 with KC 512 gives two blocks of 300, not 512 + 88.
  const int64_t kc_max = ceil_div(K, ceil_div(K, isa.kc));
  const int64_t nkb = ceil_div(K, kc_max);
  const int64_t nc_cap = std::min(isa.nc, std::max<int64_t>(NR, kFullB / (nkb * kc_max) / NR * NR));
  const int64_t nc_max = round_up(ceil_div(N, ceil_div(N, nc_cap)), NR);
  const int64_t ntiles_max = nc_max / NR;

  // Static partition, nothing shared: the work is cut into tasks of (a row block) x (a chunk of
  // NR-column tiles), ordered column chunk by column chunk, and thread t owns the contiguous range
  // [ntasks t / nt, ntasks (t + 1) / nt). Rows are split first, so with enough rows each thread owns
  // one band of rows of C, the same band on every call of this shape; columns are split only when
  // M is short. Each thread packs the B panels its tasks use into its own buffer (with a row split
  // that is all of B: the second thread repeats the packing, ~1/(2 M) of the flops), so no thread
  // reads data the other wrote and the threads meet only at fork and join.
  // Work stealing keeps a late thread from holding up the product: a thread claims each task (one
  // atomic flag) just before running it, its own range front to back; when done it takes the
  // others' unclaimed tasks from the back. Balanced runs steal nothing. Static bands with private B
  // rather than dynamic scheduling over a shared B: two cores that share no data stay fast when the
  // VM places them far apart (the measurements are in BENCHMARKS.md, SGEMM vs OpenBLAS).
  // Row blocks: at most MC rows (the A block stays in L2), a multiple of the thread count, split
  // evenly in whole MR tiles (768 rows = 55 tiles -> 9,9,9,9,9,10, not 5 x 140 + 68).
  const int64_t mtiles = ceil_div(M, MR);
  int64_t mblocks = round_up(ceil_div(M, isa.mc), nt);
  mblocks = std::min(mblocks, mtiles);
  const int64_t mc = ceil_div(mtiles, mblocks) * MR;  // the largest block
  int64_t nchunks = 1;
  if (nt > 1 && mblocks < nt) nchunks = std::min(ntiles_max, ceil_div(nt, mblocks));
  const int64_t ntasks = mblocks * nchunks;
  if (ntasks < nt) nt = static_cast<int>(std::max<int64_t>(1, ntasks));

  // One scratch block per calling thread, reused across calls (allocated here, outside the parallel
  // region, so a failure is a clean bad_alloc): per thread, its packed B (one NC block, all of K)
  // then its packed A block.
  thread_local Scratch scratch;
  const int64_t kblock = kc_max * nc_max;  // floats per packed KC block of B
  const int64_t bsize = round_up(nkb * kblock, 16) + 64, asize = round_up(mc * kc_max, 16) + 64;
  float* const buf = scratch.get(nt * (bsize + asize));
  const int64_t njc = ceil_div(N, nc_max);
  std::vector<std::atomic<unsigned char>> claimed(nt > 1 ? static_cast<size_t>(njc * ntasks) : 0);  // all 0

#pragma omp parallel num_threads(nt) if (nt > 1)
  {
    const int tid = thread_id();
    float* const bp = buf + tid * (bsize + asize);
    float* const ap = bp + bsize;
    for (int64_t jc = 0; jc < N; jc += nc_max) {
      const int64_t nc = std::min(nc_max, N - jc);
      const int64_t npanels = ceil_div(nc, NR);
      const int64_t chunk = ceil_div(npanels, nchunks);  // tiles per column chunk
      std::atomic<unsigned char>* const flags = nt > 1 ? claimed.data() + (jc / nc_max) * ntasks : nullptr;
      int64_t packed = -1;                               // the column chunk now in bp
      auto run = [&](int64_t t) {
        if (flags != nullptr && flags[t].exchange(1, std::memory_order_acq_rel) != 0) return;  // taken
        const int64_t blk = t % mblocks, cchunk = t / mblocks;
        const int64_t ic = mtiles * blk / mblocks * MR;
        const int64_t m = std::min(M, mtiles * (blk + 1) / mblocks * MR) - ic;
        const int64_t p0 = cchunk * chunk, p1 = std::min(npanels, p0 + chunk);
        if (p0 >= p1) return;
        if (cchunk != packed) {  // this chunk's panels of B, every KC block
          for (int64_t q = 0; q < nkb; ++q) {
            const int64_t pc = q * kc_max, kc = std::min(kc_max, K - pc);
            for (int64_t p = p0; p < p1; ++p) {
              const int64_t j = jc + p * NR;
              isa.pack_b(kc, static_cast<int>(std::min<int64_t>(NR, N - j)), b + pc * rsb + j * csb, rsb, csb,
                         bp + q * kblock + p * NR * kc);
            }
          }
          packed = cchunk;
        }
        for (int64_t q = 0; q < nkb; ++q) {
          const int64_t pc = q * kc_max, kc = std::min(kc_max, K - pc);
          const bool first = q == 0, last = q == nkb - 1;
          isa.pack_a(m, kc, a + ic * rsa + pc * csa, rsa, csa, ap);
          for (int64_t p = p0; p < p1; ++p) {
            const int64_t jr = jc + p * NR;
            const int nr = static_cast<int>(std::min<int64_t>(NR, N - jr));
            const float* bpanel = bp + q * kblock + p * NR * kc;
            const float* bias = (first && ep.bias != nullptr) ? ep.bias + jr : nullptr;
            for (int64_t ir = 0; ir < m; ir += MR) {
              const int mr = static_cast<int>(std::min<int64_t>(MR, m - ir));
              float* ct = c + (ic + ir) * ldc + jr;
              float* yt = (last && ep.gelu_out != nullptr) ? ep.gelu_out + (ic + ir) * ep.ld_gelu + jr : nullptr;
              isa.tile(kc, ap + ir * kc, bpanel, ct, ldc, mr, nr, bias, accumulate || !first, yt, ep.ld_gelu);
            }
          }
        }
      };
      for (int64_t t = ntasks * tid / nt; t < ntasks * (tid + 1) / nt; ++t) run(t);  // own range, in order
      for (int u = 1; u < nt; ++u) {  // then what the others have not started, from the back
        const int o = (tid + u) % nt;
        for (int64_t t = ntasks * (o + 1) / nt - 1; t >= ntasks * o / nt; --t) run(t);
      }
    }
  }
}

}  // namespace cpu
}  // namespace tinygpt
