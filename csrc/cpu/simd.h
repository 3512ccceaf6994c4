// The SIMD layer of the CPU kernels: one exp, one GELU (GPT-2's tanh form) and its gradient, written
// once, and the vector primitives of each instruction set (isa.h). Two parts:
//
//  1. Once per translation unit: exp_lanes, gelu_lanes and gelu_grad_lanes, templates over a "lane
//     type" L that supplies the value type L::V and a dozen operations on it (set1, add, sub, mul,
//     div, fma, min, max, round, pow2i, zero_below, inf_above). Scalar<I> is one float compiled for
//     instruction set I: for loops written as plain float code that the compiler vectorises
//     (TG_PER_ISA kernels: softmax, cross_entropy, gelu).
//  2. Each time this file is included with TG_ISA set (3 avx512, 2 avx2, 1 portable GCC vectors),
//     inside a per-ISA namespace and under the matching `#pragma GCC target`: the vector layer of
//     that ISA (vf, W lanes, vload, vfma, masks, an in-register transpose, ...) and Vec, its lane
//     type, with vexp / vgelu / vgelu_grad = the templates above on Vec. The explicit-SIMD kernels
//     (gemm_tiles.h, attention_tiles.h) include it so.
//
// The operations of Vec and Scalar<I> round identically (FMA exactly where the ISA has it, round to
// nearest even), so exp and GELU give the same bits in a hand-vectorised kernel and in a compiler-
// vectorised loop of the same ISA.
#ifndef TINYGPT_CPU_SIMD_COMMON
#define TINYGPT_CPU_SIMD_COMMON

#include <cstdint>
#include <cstring>
#include <limits>

#include "isa.h"
#include "rng.h"

namespace tinygpt {
namespace cpu {

constexpr float kSqrt2OverPi = 0.7978845608028654f;
constexpr float kGeluC = 0.044715f;
// |h| beyond this: gelu(h) = h or 0 and gelu'(h) = 1 or 0 to float precision (tanh(u) = +-1 for
// |u| > 9, and u(12) = 71). Clamping first keeps h^3 finite for huge inputs.
constexpr float kGeluClamp = 12.0f;

// exp(x), <= 2 ulp wherever the result is a normal float (x in [ln FLT_MIN, 88]): x = n ln2 + r with
// |r| <= ln2/2 (n rounded to nearest, ln2 split in two so that n * ln2_hi is exact), Cephes' degree-6
// polynomial for e^r, times 2^n in the exponent bits. Below ln FLT_MIN (-87.34; -inf included) 0,
// above 88 +inf (exp(88) is within 2x of FLT_MAX: callers treat it as overflow), NaN stays NaN.
template <class L>
TG_INLINE typename L::V exp_lanes(typename L::V x) {
  using V = typename L::V;
  constexpr float kLo = -87.33654f, kHi = 88.0f;  // 2^n stays a normal float: n in [-126, 127]
  const V xc = L::max(L::set1(kLo), L::min(L::set1(kHi), x));  // x second: NaN propagates
  const V n = L::round(L::mul(xc, L::set1(1.44269504088896341f)));
  V r = L::fma(n, L::set1(-0.693359375f), xc);
  r = L::fma(n, L::set1(2.12194440e-4f), r);
  V p = L::set1(1.9875691500e-4f);
  p = L::fma(p, r, L::set1(1.3981999507e-3f));
  p = L::fma(p, r, L::set1(8.3334519073e-3f));
  p = L::fma(p, r, L::set1(4.1665795894e-2f));
  p = L::fma(p, r, L::set1(1.6666665459e-1f));
  p = L::fma(p, r, L::set1(5.0000001201e-1f));
  const V y = L::add(L::fma(p, L::mul(r, r), r), L::set1(1.0f));
  return L::inf_above(L::zero_below(L::mul(y, L::pow2i(n)), x, kLo), x, kHi);
}

// x = h clamped to [-12, 12] (NaN stays NaN), u = sqrt(2/pi) (x + 0.044715 x^3).
template <class L>
TG_INLINE typename L::V gelu_u(typename L::V x, typename L::V x2) {
  return L::mul(L::mul(L::set1(kSqrt2OverPi), x), L::fma(L::set1(kGeluC), x2, L::set1(1.0f)));
}

// gelu(h) = 0.5 h (1 + tanh u) = h sigmoid(2u) = h / (1 + exp(-2u)): no cancellation in either tail.
template <class L>
TG_INLINE typename L::V gelu_lanes(typename L::V h) {
  const auto x = L::max(L::set1(-kGeluClamp), L::min(L::set1(kGeluClamp), h));
  const auto u = gelu_u<L>(x, L::mul(x, x));
  return L::div(h, L::add(L::set1(1.0f), exp_lanes<L>(L::mul(L::set1(-2.0f), u))));
}

// g * gelu'(h): with s = sigmoid(2u), 1 - s = q s (q = exp(-2u), capped at exp(88)), u' = sqrt(2/pi)
// (1 + 3c x^2): gelu' = s + h 2 s (1 - s) u' = s + x (2 u') (q s) s.
template <class L>
TG_INLINE typename L::V gelu_grad_lanes(typename L::V g, typename L::V h) {
  const auto x = L::max(L::set1(-kGeluClamp), L::min(L::set1(kGeluClamp), h));
  const auto x2 = L::mul(x, x);
  const auto u = gelu_u<L>(x, x2);
  const auto q = exp_lanes<L>(L::min(L::mul(L::set1(-2.0f), u), L::set1(88.0f)));
  const auto s = L::div(L::set1(1.0f), L::add(L::set1(1.0f), q));
  const auto du = L::mul(L::set1(2.0f * kSqrt2OverPi), L::fma(L::set1(3.0f * kGeluC), x2, L::set1(1.0f)));
  const auto t = L::mul(L::mul(x, du), L::mul(L::mul(q, s), s));
  return L::mul(g, L::add(s, t));
}

// One float, compiled for ISA I (inside a TG_PER_ISA body): fused multiply-add where I has FMA.
template <Isa I>
struct Scalar {
  using V = float;
  static TG_INLINE float set1(float x) { return x; }
  static TG_INLINE float add(float a, float b) { return a + b; }
  static TG_INLINE float sub(float a, float b) { return a - b; }
  static TG_INLINE float mul(float a, float b) { return a * b; }
  static TG_INLINE float div(float a, float b) { return a / b; }
  static TG_INLINE float fma(float a, float b, float c) {
    if constexpr (I == Isa::baseline) {
      return a * b + c;
    } else {
      return __builtin_fmaf(a, b, c);
    }
  }
  // x86's maxps / minps: the second operand when either is NaN.
  static TG_INLINE float max(float a, float b) { return a > b ? a : b; }
  static TG_INLINE float min(float a, float b) { return a < b ? a : b; }
  // To nearest, ties to even. SSE2 has no round instruction: adding and subtracting 1.5 * 2^23
  // rounds |x| < 2^22 exactly so (in the default rounding mode), and vectorises.
  static TG_INLINE float round(float x) {
    if constexpr (I == Isa::baseline) {
      constexpr float kMagic = 12582912.0f;
      return (x + kMagic) - kMagic;
    } else {
      return __builtin_nearbyintf(x);
    }
  }
  static TG_INLINE float pow2i(float n) {  // 2^n for integral n in [-126, 127]
    const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
    float v;
    std::memcpy(&v, &bits, sizeof v);
    return v;
  }
  static TG_INLINE float zero_below(float r, float x, float t) { return x < t ? 0.0f : r; }
  static TG_INLINE float inf_above(float r, float x, float t) {
    return x > t ? std::numeric_limits<float>::infinity() : r;
  }
};

}  // namespace cpu
}  // namespace tinygpt

#endif  // TINYGPT_CPU_SIMD_COMMON

// ================================================================================ the vector layer
#ifdef TG_ISA
#if TG_ISA == 3  // ------------------------------------------------------------ AVX-512
constexpr int W = 16;  // floats per vector
constexpr int kVectorRegisters = 32;
using vf = __m512;
using vmask = __mmask16;
static inline vf vload(const float* p) { return _mm512_loadu_ps(p); }
static inline void vstore(float* p, vf v) { _mm512_storeu_ps(p, v); }
static inline vf vset1(float x) { return _mm512_set1_ps(x); }
static inline vf vzero() { return _mm512_setzero_ps(); }
static inline vf vfma(vf a, vf b, vf c) { return _mm512_fmadd_ps(a, b, c); }
static inline vf vadd(vf a, vf b) { return _mm512_add_ps(a, b); }
static inline vf vsub(vf a, vf b) { return _mm512_sub_ps(a, b); }
static inline vf vmul(vf a, vf b) { return _mm512_mul_ps(a, b); }
static inline vf vdiv(vf a, vf b) { return _mm512_div_ps(a, b); }
// max/min(c, x) with x second: x86 returns the second operand when either is NaN, so NaN propagates
static inline vf vmax(vf a, vf b) { return _mm512_max_ps(a, b); }
static inline vf vmin(vf a, vf b) { return _mm512_min_ps(a, b); }
static inline vf vround(vf x) { return _mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
static inline vf vpow2i(vf n) {  // 2^n for integral n in [-126, 127]
  const __m512i e = _mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127));
  return _mm512_castsi512_ps(_mm512_slli_epi32(e, 23));
}
static inline vf vzero_below(vf r, vf x, float t) {  // x < t ? 0 : r
  return _mm512_maskz_mov_ps(~_mm512_cmp_ps_mask(x, _mm512_set1_ps(t), _CMP_LT_OQ), r);
}
static inline vf vinf_above(vf r, vf x, float t) {  // x > t ? +inf : r
  const __mmask16 m = _mm512_cmp_ps_mask(x, _mm512_set1_ps(t), _CMP_GT_OQ);
  return _mm512_mask_mov_ps(r, m, _mm512_set1_ps(std::numeric_limits<float>::infinity()));
}
// Lanes [0, n), n in [0, W]; loads leave the other lanes 0, stores leave their memory untouched.
static inline vmask vmask_first(int n) {
  return n >= 16 ? static_cast<vmask>(0xFFFF) : static_cast<vmask>((1u << (n > 0 ? n : 0)) - 1u);
}
static inline vf vload_masked(const float* p, vmask m) { return _mm512_maskz_loadu_ps(m, p); }
static inline void vstore_masked(float* p, vmask m, vf v) { _mm512_mask_storeu_ps(p, m, v); }
// r[j] becomes column j of the 16 x 16 block whose rows were r[0..15].
static inline void vtranspose(vf* r) {
  vf t[16];
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
    t[j] = _mm512_shuffle_f32x4(r[j], r[4 + j], 0x88);
    t[4 + j] = _mm512_shuffle_f32x4(r[j], r[4 + j], 0xDD);
    t[8 + j] = _mm512_shuffle_f32x4(r[8 + j], r[12 + j], 0x88);
    t[12 + j] = _mm512_shuffle_f32x4(r[8 + j], r[12 + j], 0xDD);
  }
#pragma GCC unroll 4
  for (int j = 0; j < 4; ++j) {
    r[j] = _mm512_shuffle_f32x4(t[j], t[8 + j], 0x88);
    r[8 + j] = _mm512_shuffle_f32x4(t[j], t[8 + j], 0xDD);
    r[4 + j] = _mm512_shuffle_f32x4(t[4 + j], t[12 + j], 0x88);
    r[12 + j] = _mm512_shuffle_f32x4(t[4 + j], t[12 + j], 0xDD);
  }
}
// v where lo[c] <= j < hi[c] (lane c), else fill
static inline vf vmask_range(vf v, float fill, int j, const int* lo, const int* hi) {
  const __m512i jv = _mm512_set1_epi32(j);
  const __mmask16 m = _mm512_cmple_epi32_mask(_mm512_loadu_si512(lo), jv) &
                      _mm512_cmplt_epi32_mask(jv, _mm512_loadu_si512(hi));
  return _mm512_mask_blend_ps(m, _mm512_set1_ps(fill), v);
}
static inline __m512i vmix64(__m512i z) {
  z = _mm512_mullo_epi64(_mm512_xor_si512(z, _mm512_srli_epi64(z, 30)), _mm512_set1_epi64((long long)rng::kMix1));
  z = _mm512_mullo_epi64(_mm512_xor_si512(z, _mm512_srli_epi64(z, 27)), _mm512_set1_epi64((long long)rng::kMix2));
  return _mm512_xor_si512(z, _mm512_srli_epi64(z, 31));
}
// Dropout multiplier for W consecutive mask elements: lane c holds `s` if the element with counter
// z0 + off(c) is kept (rng.h), else 0. off holds the even lanes' offsets, then the odd lanes'.
static inline vf vkeep(uint64_t z0, const uint64_t* off, uint32_t threshold, float s) {
  const __m512i base = _mm512_set1_epi64((long long)z0);
  const __m512i ze = vmix64(_mm512_add_epi64(base, _mm512_loadu_si512(off)));
  const __m512i zo = vmix64(_mm512_add_epi64(base, _mm512_loadu_si512(off + W / 2)));
  // the 24-bit draws, even lanes in the low halves and odd lanes in the high halves -> lane order
  const __m512i r = _mm512_or_si512(_mm512_srli_epi64(ze, 40), _mm512_slli_epi64(_mm512_srli_epi64(zo, 40), 32));
  const __mmask16 keep = _mm512_cmpge_epu32_mask(r, _mm512_set1_epi32((int)threshold));
  return _mm512_maskz_mov_ps(keep, _mm512_set1_ps(s));
}

#elif TG_ISA == 2  // ---------------------------------------------------------- AVX2 + FMA
constexpr int W = 8;
constexpr int kVectorRegisters = 16;
using vf = __m256;
using vmask = __m256i;
static inline vf vload(const float* p) { return _mm256_loadu_ps(p); }
static inline void vstore(float* p, vf v) { _mm256_storeu_ps(p, v); }
static inline vf vset1(float x) { return _mm256_set1_ps(x); }
static inline vf vzero() { return _mm256_setzero_ps(); }
static inline vf vfma(vf a, vf b, vf c) { return _mm256_fmadd_ps(a, b, c); }
static inline vf vadd(vf a, vf b) { return _mm256_add_ps(a, b); }
static inline vf vsub(vf a, vf b) { return _mm256_sub_ps(a, b); }
static inline vf vmul(vf a, vf b) { return _mm256_mul_ps(a, b); }
static inline vf vdiv(vf a, vf b) { return _mm256_div_ps(a, b); }
static inline vf vmax(vf a, vf b) { return _mm256_max_ps(a, b); }
static inline vf vmin(vf a, vf b) { return _mm256_min_ps(a, b); }
static inline vf vround(vf x) { return _mm256_round_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
static inline vf vpow2i(vf n) {
  const __m256i e = _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127));
  return _mm256_castsi256_ps(_mm256_slli_epi32(e, 23));
}
static inline vf vzero_below(vf r, vf x, float t) {
  return _mm256_andnot_ps(_mm256_cmp_ps(x, _mm256_set1_ps(t), _CMP_LT_OQ), r);
}
static inline vf vinf_above(vf r, vf x, float t) {
  const vf m = _mm256_cmp_ps(x, _mm256_set1_ps(t), _CMP_GT_OQ);
  return _mm256_blendv_ps(r, _mm256_set1_ps(std::numeric_limits<float>::infinity()), m);
}
static inline vmask vmask_first(int n) {
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}
static inline vf vload_masked(const float* p, vmask m) { return _mm256_maskload_ps(p, m); }
static inline void vstore_masked(float* p, vmask m, vf v) { _mm256_maskstore_ps(p, m, v); }
// r[j] becomes column j of the 8 x 8 block whose rows were r[0..7].
static inline void vtranspose(vf* r) {
  const vf t0 = _mm256_unpacklo_ps(r[0], r[1]), t1 = _mm256_unpackhi_ps(r[0], r[1]);
  const vf t2 = _mm256_unpacklo_ps(r[2], r[3]), t3 = _mm256_unpackhi_ps(r[2], r[3]);
  const vf t4 = _mm256_unpacklo_ps(r[4], r[5]), t5 = _mm256_unpackhi_ps(r[4], r[5]);
  const vf t6 = _mm256_unpacklo_ps(r[6], r[7]), t7 = _mm256_unpackhi_ps(r[6], r[7]);
  const vf u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xEE);
  const vf u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xEE);
  const vf u4 = _mm256_shuffle_ps(t4, t6, 0x44), u5 = _mm256_shuffle_ps(t4, t6, 0xEE);
  const vf u6 = _mm256_shuffle_ps(t5, t7, 0x44), u7 = _mm256_shuffle_ps(t5, t7, 0xEE);
  r[0] = _mm256_permute2f128_ps(u0, u4, 0x20);
  r[1] = _mm256_permute2f128_ps(u1, u5, 0x20);
  r[2] = _mm256_permute2f128_ps(u2, u6, 0x20);
  r[3] = _mm256_permute2f128_ps(u3, u7, 0x20);
  r[4] = _mm256_permute2f128_ps(u0, u4, 0x31);
  r[5] = _mm256_permute2f128_ps(u1, u5, 0x31);
  r[6] = _mm256_permute2f128_ps(u2, u6, 0x31);
  r[7] = _mm256_permute2f128_ps(u3, u7, 0x31);
}
static inline vf vmask_range(vf v, float fill, int j, const int* lo, const int* hi) {
  const __m256i jv = _mm256_set1_epi32(j);
  const __m256i lov = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(lo));
  const __m256i hiv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(hi));
  const __m256i vis = _mm256_andnot_si256(_mm256_cmpgt_epi32(lov, jv), _mm256_cmpgt_epi32(hiv, jv));
  return _mm256_blendv_ps(_mm256_set1_ps(fill), v, _mm256_castsi256_ps(vis));
}
static inline __m256i vmul64(__m256i a, uint64_t c) {  // a * c mod 2^64 per lane (no vpmullq in AVX2)
  const __m256i clo = _mm256_set1_epi64x((long long)(c & 0xffffffffu));
  const __m256i chi = _mm256_set1_epi64x((long long)(c >> 32));
  const __m256i lo = _mm256_mul_epu32(a, clo);
  const __m256i cross = _mm256_add_epi64(_mm256_mul_epu32(_mm256_srli_epi64(a, 32), clo), _mm256_mul_epu32(a, chi));
  return _mm256_add_epi64(lo, _mm256_slli_epi64(cross, 32));
}
static inline __m256i vmix64(__m256i z) {
  z = vmul64(_mm256_xor_si256(z, _mm256_srli_epi64(z, 30)), rng::kMix1);
  z = vmul64(_mm256_xor_si256(z, _mm256_srli_epi64(z, 27)), rng::kMix2);
  return _mm256_xor_si256(z, _mm256_srli_epi64(z, 31));
}
static inline vf vkeep(uint64_t z0, const uint64_t* off, uint32_t threshold, float s) {
  const __m256i base = _mm256_set1_epi64x((long long)z0);
  const __m256i ze = vmix64(_mm256_add_epi64(base, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(off))));
  const __m256i zo = vmix64(_mm256_add_epi64(base, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(off + W / 2))));
  const __m256i r = _mm256_or_si256(_mm256_srli_epi64(ze, 40), _mm256_slli_epi64(_mm256_srli_epi64(zo, 40), 32));
  // r < 2^24 and threshold <= 2^24, so the signed compare r > threshold - 1 is r >= threshold
  const __m256i keep = _mm256_cmpgt_epi32(r, _mm256_set1_epi32((int)threshold - 1));
  return _mm256_and_ps(_mm256_castsi256_ps(keep), _mm256_set1_ps(s));
}

#else  // ------------------------------------------------------------------------- portable
constexpr int W = 4;  // 16-byte vectors: SSE2 on any x86-64, NEON elsewhere
constexpr int kVectorRegisters = 16;
typedef float vf __attribute__((vector_size(16)));
typedef int32_t vint __attribute__((vector_size(16)));
using vmask = int;  // lanes [0, vmask)
static inline vf vload(const float* p) { vf v; __builtin_memcpy(&v, p, sizeof v); return v; }
static inline void vstore(float* p, vf v) { __builtin_memcpy(p, &v, sizeof v); }
static inline vf vset1(float x) { vf v = {x, x, x, x}; return v; }
static inline vf vzero() { return vset1(0.0f); }
static inline vf vfma(vf a, vf b, vf c) { return a * b + c; }  // no FMA in the baseline ISA: two roundings
static inline vf vadd(vf a, vf b) { return a + b; }
static inline vf vsub(vf a, vf b) { return a - b; }
static inline vf vmul(vf a, vf b) { return a * b; }
static inline vf vdiv(vf a, vf b) { return a / b; }
static inline vf vmax(vf a, vf b) { return a > b ? a : b; }
static inline vf vmin(vf a, vf b) { return a < b ? a : b; }
static inline vf vround(vf x) { return (x + vset1(12582912.0f)) - vset1(12582912.0f); }  // as Scalar<baseline>
static inline vf vpow2i(vf n) {
  const vint e = (__builtin_convertvector(n, vint) + vint{127, 127, 127, 127}) << vint{23, 23, 23, 23};
  vf v;
  __builtin_memcpy(&v, &e, sizeof v);
  return v;
}
static inline vf vzero_below(vf r, vf x, float t) { return x < vset1(t) ? vzero() : r; }
static inline vf vinf_above(vf r, vf x, float t) {
  return x > vset1(t) ? vset1(std::numeric_limits<float>::infinity()) : r;
}
static inline vmask vmask_first(int n) { return n; }
static inline vf vload_masked(const float* p, vmask m) {
  vf v = vzero();
  for (int c = 0; c < m && c < W; ++c) v[c] = p[c];
  return v;
}
static inline void vstore_masked(float* p, vmask m, vf v) {
  for (int c = 0; c < m && c < W; ++c) p[c] = v[c];
}
static inline void vtranspose(vf* r) {
  vf t[W];
  for (int i = 0; i < W; ++i)
    for (int j = 0; j < W; ++j) t[j][i] = r[i][j];
  for (int j = 0; j < W; ++j) r[j] = t[j];
}
static inline vf vmask_range(vf v, float fill, int j, const int* lo, const int* hi) {
  for (int c = 0; c < W; ++c) v[c] = (lo[c] <= j && j < hi[c]) ? v[c] : fill;
  return v;
}
static inline vf vkeep(uint64_t z0, const uint64_t* off, uint32_t threshold, float s) {
  vf r;
  for (int c = 0; c < W; ++c) {
    const uint64_t o = (c % 2 == 0) ? off[c / 2] : off[W / 2 + c / 2];
    r[c] = static_cast<uint32_t>(rng::mix64(z0 + o) >> 40) >= threshold ? s : 0.0f;
  }
  return r;
}
#endif

// This ISA's vectors as a lane type for the templates of part 1.
struct Vec {
  using V = vf;
  static inline vf set1(float x) { return vset1(x); }
  static inline vf add(vf a, vf b) { return vadd(a, b); }
  static inline vf sub(vf a, vf b) { return vsub(a, b); }
  static inline vf mul(vf a, vf b) { return vmul(a, b); }
  static inline vf div(vf a, vf b) { return vdiv(a, b); }
  static inline vf fma(vf a, vf b, vf c) { return vfma(a, b, c); }
  static inline vf max(vf a, vf b) { return vmax(a, b); }
  static inline vf min(vf a, vf b) { return vmin(a, b); }
  static inline vf round(vf x) { return vround(x); }
  static inline vf pow2i(vf n) { return vpow2i(n); }
  static inline vf zero_below(vf r, vf x, float t) { return vzero_below(r, x, t); }
  static inline vf inf_above(vf r, vf x, float t) { return vinf_above(r, x, t); }
};

static inline vf vexp(vf x) { return ::tinygpt::cpu::exp_lanes<Vec>(x); }
static inline vf vgelu(vf h) { return ::tinygpt::cpu::gelu_lanes<Vec>(h); }
static inline vf vgelu_grad(vf g, vf h) { return ::tinygpt::cpu::gelu_grad_lanes<Vec>(g, h); }
#endif  // TG_ISA
