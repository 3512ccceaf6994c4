// The GEMV dot products of quantized_linear for one instruction set. NOT a normal header: quantized_linear.cpp
// compiles it once per ISA (per_isa.h: namespace portable / avx2 / avx512, TG_ISA 1 / 2 / 3) and
// dispatches on cpu::isa(). Each function is up to four output channels against one prepared activation
// row (quantized_linear.cpp: prepare_w8 / prepare_w4), with no threads inside.
//
// Activations arrive as int8 per block of 32 with a float scale d_b (q8_0-style, "A8 blocks"), so the
// inner products are exact integer dots and only the per-block sums see float rounding:
//   w8: y_o = s_o * sum_b d_b * (sum_{k in b} q_ok xq_k)
//   w4: y_o =       sum_g s_og * d_g * (sum_{k in g} q_ok xq_k)        (groups of 32 = the x blocks)
// AVX2 (no VNNI on Zen 1): int8 x int8 dots are vpmaddubsw(|x|, sign(w, x)) (|pair| <= 2 * 127^2 <
// 2^15) + vpmaddwd(., 1); int4 nibbles are used unsigned as q + 8 (the ^ 0x88 below) and the offset
// comes back through the per-row correction c_g = -8 d_g sum(xq in g). Four channels per pass share the
// activation loads and scales; the int32 lanes of each block are scaled into float accumulators (the
// scales differ per block, so integers cannot be summed across blocks), one horizontal sum per channel.
// The AVX-512 copy compiles this same 256-bit code for x86-64-v4 (which has no VNNI either).

#if TG_ISA >= 2
static inline float ql_hsum_ps(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}
#endif

// out[c] = sum_b d[b] * dot(w_c, xq) over block b, for the nc <= 4 channels w_c = w + c * ldw and `in`
// inputs (the last block may be partial). xa = |xq|. AVX2: the x loads and d[b] are shared by the four
// channels; each block's 8 int32 lanes are converted and scaled into one float accumulator per channel
// (one horizontal sum per channel at the end, not per block).
static inline void ql_dot4_w8(const int8_t* w, int64_t ldw, const int8_t* xq, const int8_t* xa, const float* d,
                              int64_t in, int nc, float* out) {
  int64_t b = 0;
  float part[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#if TG_ISA >= 2
  const int64_t nfull = in / 32;
  if (nc == 4) {
    const __m256i ones = _mm256_set1_epi16(1);
    __m256 acc = _mm256_setzero_ps();  // [c0 c1 c2 c3 | c0 c1 c2 c3]: two partial sums per channel
    for (; b < nfull; ++b) {
      const int64_t o = b * 32;
      const __m256i xv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq + o));
      const __m256i av = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xa + o));
      __m256i p[4];
#pragma GCC unroll 4
      for (int j = 0; j < 4; ++j) {
        const __m256i wv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + j * ldw + o));
        // the next four channels' rows, a quad ahead: rows of 768 bytes are too short for the
        // hardware prefetcher to ramp up on four interleaved streams
        _mm_prefetch(reinterpret_cast<const char*>(w + (4 + j) * ldw + o), _MM_HINT_T0);
        // |x| * sign(w, x): |pair| <= 2 * 127^2 < 2^15; 4 products per int32 lane
        p[j] = _mm256_madd_epi16(_mm256_maddubs_epi16(av, _mm256_sign_epi8(wv, xv)), ones);
      }
      // the block's dots of the 4 channels, each as two halves (<= 16 * 127^2 < 2^24: exact in float)
      const __m256i h = _mm256_hadd_epi32(_mm256_hadd_epi32(p[0], p[1]), _mm256_hadd_epi32(p[2], p[3]));
      acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(h), _mm256_broadcast_ss(d + b), acc);
    }
    const __m128 sum = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
    _mm_storeu_ps(part, sum);
  }
#else
  (void)xa;
#endif
  for (int j = 0; j < nc; ++j) {
    const int8_t* wj = w + j * ldw;
    float total = part[j];
    for (int64_t bb = b; bb * 32 < in; ++bb) {  // portable / single channels: every block; else the partial last one
      const int64_t k0 = bb * 32, k1 = k0 + 32 < in ? k0 + 32 : in;
      int32_t dot = 0;
      for (int64_t k = k0; k < k1; ++k) dot += static_cast<int32_t>(wj[k]) * static_cast<int32_t>(xq[k]);
      total += d[bb] * static_cast<float>(dot);
    }
    out[j] = total;
  }
}

// The int4 activation layout (prepare_w4): groups in pairs, 64 bytes per pair: the even elements of
// group 2p (16), of group 2p+1 (16), then the odd elements of 2p, of 2p+1. A 32-byte load of packed
// weights (groups 2p and 2p+1) masked to its low nibbles then lines up with the first 32 bytes, its high
// nibbles with the second. d and c are per group, in natural order.
static inline int64_t ql_w4_even_offset(int64_t g) { return (g >> 1) * 64 + (g & 1) * 16; }

// sum_g s[g] * d_g * dot(q, xq) over group g (signed nibbles), one group at a time (the portable path and
// the odd last group of the SIMD path), from group g0.
static inline float ql_dot_w4_tail(const uint8_t* w, const float* s, const int8_t* xq, const float* d, int64_t g0,
                                   int64_t G) {
  float total = 0.0f;
  for (int64_t g = g0; g < G; ++g) {
    const uint8_t* wg = w + g * 16;
    const int8_t* xe = xq + ql_w4_even_offset(g);
    const int8_t* xo = xe + 32;
    int32_t dot = 0;
    for (int i = 0; i < 16; ++i) {
      const int32_t lo = static_cast<int32_t>(wg[i] & 0x0F), hi = static_cast<int32_t>(wg[i] >> 4);
      dot += (lo >= 8 ? lo - 16 : lo) * xe[i] + (hi >= 8 ? hi - 16 : hi) * xo[i];
    }
    total += s[g] * (d[g] * static_cast<float>(dot));
  }
  return total;
}

#if TG_ISA >= 2
// [a x4 | b x4]
static inline __m256 ql_pair(const float* a, const float* b) {
  return _mm256_insertf128_ps(_mm256_castps128_ps256(_mm_broadcast_ss(a)), _mm_broadcast_ss(b), 1);
}
#endif

// out[c] = sum_g s_c[g] * d_g * dot(q_c, xq) over group g, for the nc <= 4 channels w + c * ldw (scales
// s + c * lds). AVX2: a pair of groups per 32-byte load of each channel, the x loads and the pair's d and
// c = -8 d sum(xq) (the q + 8 offset) shared by the channels; one float accumulator per channel, one
// horizontal sum per channel at the end.
static inline void ql_dot4_w4(const uint8_t* w, int64_t ldw, const float* s, int64_t lds, const int8_t* xq,
                              const float* d, const float* c, int64_t G, int nc, float* out) {
  int64_t g = 0;
  float part[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#if TG_ISA >= 2
  if (nc == 4) {
    const __m256i ones = _mm256_set1_epi16(1), low = _mm256_set1_epi8(0x0F), flip = _mm256_set1_epi8(0x08 | 0x80);
    __m256 acc = _mm256_setzero_ps();  // [c0 c1 c2 c3 | c0 c1 c2 c3]: even and odd groups' sums per channel
    for (; g + 2 <= G; g += 2) {
      const int8_t* x = xq + g / 2 * 64;
      const __m256i xe = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x));
      const __m256i xo = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + 32));
      __m256i p[4];
#pragma GCC unroll 4
      for (int j = 0; j < 4; ++j) {
        // nibble n (two's complement q) ^ 8 = q + 8 in [1, 15], unsigned for vpmaddubsw
        const __m256i b = _mm256_xor_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + j * ldw + g * 16)), flip);
        _mm_prefetch(reinterpret_cast<const char*>(w + (8 + j) * ldw + g * 16), _MM_HINT_T0);  // two quads ahead
        const __m256i lo = _mm256_and_si256(b, low), hi = _mm256_and_si256(_mm256_srli_epi16(b, 4), low);
        // |pair sums| <= 2 * 15 * 127 each, two of them: < 2^15
        const __m256i s16 = _mm256_add_epi16(_mm256_maddubs_epi16(lo, xe), _mm256_maddubs_epi16(hi, xo));
        p[j] = _mm256_madd_epi16(s16, ones);  // [g x4 | g+1 x4]
      }
      // [g: c0 c1 c2 c3 | g+1: c0 c1 c2 c3], whole group dots (|.| <= 32 * 15 * 127 < 2^24: exact in float)
      const __m256 dots =
          _mm256_cvtepi32_ps(_mm256_hadd_epi32(_mm256_hadd_epi32(p[0], p[1]), _mm256_hadd_epi32(p[2], p[3])));
      // the four channels' scales of groups g and g+1 in the same order
      const __m128 s01 = _mm_unpacklo_ps(_mm_castpd_ps(_mm_load_sd(reinterpret_cast<const double*>(s + g))),
                                         _mm_castpd_ps(_mm_load_sd(reinterpret_cast<const double*>(s + lds + g))));
      const __m128 s23 = _mm_unpacklo_ps(_mm_castpd_ps(_mm_load_sd(reinterpret_cast<const double*>(s + 2 * lds + g))),
                                         _mm_castpd_ps(_mm_load_sd(reinterpret_cast<const double*>(s + 3 * lds + g))));
      const __m256 sc = _mm256_insertf128_ps(_mm256_castps128_ps256(_mm_movelh_ps(s01, s23)), _mm_movehl_ps(s23, s01), 1);
      acc = _mm256_fmadd_ps(_mm256_fmadd_ps(dots, ql_pair(d + g, d + g + 1), ql_pair(c + g, c + g + 1)), sc, acc);
    }
    _mm_storeu_ps(part, _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1)));
  }
#else
  (void)c;
#endif
  for (int j = 0; j < nc; ++j) out[j] = part[j] + ql_dot_w4_tail(w + j * ldw, s + j * lds, xq, d, g, G);
}

constexpr QlKernels kernels = {ql_dot4_w8, ql_dot4_w4};
