// The GEMV dot products of quantized_linear for one instruction set. NOT a normal header: quantized_linear.cpp
// compiles it once per ISA (per_isa.h: namespace portable / avx2 / avx512, TG_ISA 1 / 2 / 3) and
// dispatches on cpu::isa(). Each function is up to four output channels against one prepared activation
// row (quantized_linear.cpp: prepare_w8 / prepare_w4), with no threads inside.
//
// Activations arrive as int8 per block of 32 with a float scale d_b (q8_0-style, "A8 blocks"), so the
// inner products are exact integer dots and only the per-block sums see float rounding:
//   w8: y_o = s_o * sum_b d_b * (sum_{k in b} q_ok xq_k)
//   w4: y_o =       sum_g s_og * d_g * (sum_{k in g} q_ok xq_k)        (groups of 32 = the x blocks)
// AVX2 (no VNNI): int8 x int8 dots are vpmaddubsw(|x|, sign(w, x)) (|pair| <= 2 * 127^2 < 2^15) +
// vpmaddwd(., 1); int4 nibbles are used unsigned as q + 8 (the ^ 0x88 below) and the offset comes back
// through the per-row correction c_g = -8 d_g sum(xq in g).
// AVX-512 (this copy adds AVX512-VNNI, so quantized_linear.cpp runs it only where the CPU has VNNI):
// vpdpbusd multiplies unsigned by signed bytes and adds each 4 products into an int32 lane, one
// instruction for what AVX2 needs three. The weights are made unsigned (int8: q ^ 0x80 = q + 128; int4:
// nibble ^ 8 = q + 8) and each lane starts from -offset * (sum of its 4 activations), itself a vpdpbusd
// of the activations shared by the channels, so every lane ends holding an exact signed integer dot.
// Both: four channels per pass share the activation loads and scales; the int32 lanes of each block are
// scaled into float accumulators (the scales differ per block, so integers cannot be summed across
// blocks), one horizontal sum per channel at the end.

#if TG_ISA >= 3
#pragma GCC push_options
#pragma GCC target("avx512vnni")  // added to per_isa.h's x86-64-v4
#endif

// Software prefetch, kQlPrefetch bytes ahead in each channel's row (the rows of a thread's channels are
// one contiguous stream), into L2: one thread reads only ~9 GB/s of int8 weights with the hardware
// prefetchers alone or an L1 prefetch one quad of channels ahead, ~20 GB/s (its read bandwidth) with
// this (Zen 4, measured by benchmarks/kernels/quantized_linear.py). Prefetches past the end are harmless.
constexpr int64_t kQlPrefetch = 8192;
static inline void ql_prefetch(const void* p, int64_t ahead = kQlPrefetch) {
#if TG_ISA >= 2
  _mm_prefetch(static_cast<const char*>(p) + ahead, _MM_HINT_T1);
#else
  (void)p;
  (void)ahead;
#endif
}

#if TG_ISA >= 2
static inline float ql_hsum_ps(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}
#endif

#if TG_ISA >= 3
// The four channels' totals [a0 a1 a2 a3] of four 16-lane accumulators.
static inline __m256 ql_fold_512(__m512 a) { return _mm256_add_ps(_mm512_castps512_ps256(a), _mm512_extractf32x8_ps(a, 1)); }
static inline __m128 ql_hsum4_512(__m512 a0, __m512 a1, __m512 a2, __m512 a3) {
  // [a0 a1 a2 a3 | a0 a1 a2 a3], each a sum of 4 of its 8 lanes
  const __m256 h = _mm256_hadd_ps(_mm256_hadd_ps(ql_fold_512(a0), ql_fold_512(a1)),
                                  _mm256_hadd_ps(ql_fold_512(a2), ql_fold_512(a3)));
  return _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
}

// 64 weight bytes as two 256-bit loads: a weight line streaming from memory is read ~20% faster so than
// by one 512-bit load (Zen 4, 1 thread: 24 vs 20 GB/s of int8 weights; equal in cache).
static inline __m512i ql_load_w(const void* p) {
  const __m256i* v = static_cast<const __m256i*>(p);
  return _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256(v)), _mm256_loadu_si256(v + 1), 1);
}

// n consecutive floats from p, each repeated 16 / n times: [p0 x16/n | p1 ... ] (n = 2 or 4)
static inline __m512 ql_spread(const float* p, int n) {
  const __m512i idx = n == 2 ? _mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0)
                             : _mm512_set_epi32(3, 3, 3, 3, 2, 2, 2, 2, 1, 1, 1, 1, 0, 0, 0, 0);
  const __m128 v = n == 2 ? _mm_castpd_ps(_mm_load_sd(reinterpret_cast<const double*>(p))) : _mm_loadu_ps(p);
  return _mm512_permutexvar_ps(idx, _mm512_castps128_ps512(v));
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
  // at least the next quad of channels ahead: with rows of 3072 bytes, 8 KiB from row j lands inside this
  // quad's own rows, barely ahead of where they are read
  const int64_t ahead = std::max<int64_t>(kQlPrefetch, 4 * ldw);
#if TG_ISA >= 3
  // Two blocks (64 bytes) per step: lanes 0-7 block b, 8-15 block b + 1.
  if (nc == 4 && in >= 64) {
    const __m512i zero = _mm512_setzero_si512(), bias = _mm512_set1_epi8(static_cast<char>(0x80));
    __m512 acc[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
    for (; b + 2 <= in / 32; b += 2) {
      const int64_t o = b * 32;
      const __m512i xv = _mm512_loadu_si512(xq + o);
      // -128 * (sum of each lane's 4 activations): removes the + 128 of the unsigned weights
      const __m512i corr = _mm512_sub_epi32(zero, _mm512_dpbusd_epi32(zero, bias, xv));
      const __m512 dv = ql_spread(d + b, 2);
#pragma GCC unroll 4
      for (int j = 0; j < 4; ++j) {
        const __m512i wv = _mm512_xor_si512(ql_load_w(w + j * ldw + o), bias);  // q + 128 in [1, 255]
        ql_prefetch(w + j * ldw + o, ahead);
        // each lane: an exact dot of 4 (|.| <= 4 * 127^2 < 2^24, exact in float)
        acc[j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_dpbusd_epi32(corr, wv, xv)), dv, acc[j]);
      }
    }
    _mm_storeu_ps(part, ql_hsum4_512(acc[0], acc[1], acc[2], acc[3]));
  }
#endif
#if TG_ISA >= 2
  const int64_t nfull = in / 32;
  if (nc == 4 && b < nfull) {
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
        ql_prefetch(w + j * ldw + o, ahead);
        // |x| * sign(w, x): |pair| <= 2 * 127^2 < 2^15; 4 products per int32 lane
        p[j] = _mm256_madd_epi16(_mm256_maddubs_epi16(av, _mm256_sign_epi8(wv, xv)), ones);
      }
      // the block's dots of the 4 channels, each as two halves (<= 16 * 127^2 < 2^24: exact in float)
      const __m256i h = _mm256_hadd_epi32(_mm256_hadd_epi32(p[0], p[1]), _mm256_hadd_epi32(p[2], p[3]));
      acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(h), _mm256_broadcast_ss(d + b), acc);
    }
    const __m128 sum = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
    _mm_storeu_ps(part, _mm_add_ps(_mm_loadu_ps(part), sum));
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

// The int4 activation layout (prepare_w4): groups in quads, 128 bytes per quad: the even elements of
// groups 4p, 4p+1, 4p+2, 4p+3 (16 each), then their odd elements 64 bytes later. A load of packed
// weights (16 bytes per group: 64 for the quad, 32 for a pair) masked to its low nibbles then lines up
// with the even elements of the same groups, its high nibbles with the odd ones. d and c are per group, in
// natural order. The last quad may be partial; its missing groups are never read.
static inline int64_t ql_w4_even_offset(int64_t g) { return (g >> 2) * 128 + (g & 3) * 16; }

// sum_g s[g] * d_g * dot(q, xq) over group g (signed nibbles), one group at a time (the portable path and
// the odd last group of the SIMD path), from group g0.
static inline float ql_dot_w4_tail(const uint8_t* w, const float* s, const int8_t* xq, const float* d, int64_t g0,
                                   int64_t G) {
  float total = 0.0f;
  for (int64_t g = g0; g < G; ++g) {
    const uint8_t* wg = w + g * 16;
    const int8_t* xe = xq + ql_w4_even_offset(g);
    const int8_t* xo = xe + 64;
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
#if TG_ISA >= 3
  // A quad of groups (64 bytes of each channel) per step: lanes 4i-4i+3 hold group g + i.
  if (nc == 4 && G >= 4) {
    const __m512i zero = _mm512_setzero_si512(), low = _mm512_set1_epi8(0x0F), eights = _mm512_set1_epi8(8);
    __m512 acc[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
    for (; g + 4 <= G; g += 4) {
      const int8_t* x = xq + ql_w4_even_offset(g);
      const __m512i xe = _mm512_loadu_si512(x), xo = _mm512_loadu_si512(x + 64);
      // -8 * (sum of each lane's 8 activations): removes the + 8 of the unsigned nibbles
      const __m512i corr = _mm512_sub_epi32(zero, _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(zero, eights, xe), eights, xo));
      const __m512 dv = ql_spread(d + g, 4);
#pragma GCC unroll 4
      for (int j = 0; j < 4; ++j) {
        // nibble n (two's complement q) ^ 8 = q + 8 in [1, 15]: (b & 0x0F) ^ 0x08 as one ternary-logic op
        // (imm 0x6A = (A & B) ^ C), and the same for the high nibbles after a shift
        const __m512i b = ql_load_w(w + j * ldw + g * 16);
        ql_prefetch(w + j * ldw + g * 16);
        if ((g & 15) == 0) ql_prefetch(s + j * lds + g, kQlPrefetch / 4);  // the scales: a line per 16 groups
        const __m512i lo = _mm512_ternarylogic_epi32(b, low, eights, 0x6A);
        const __m512i hi = _mm512_ternarylogic_epi32(_mm512_srli_epi16(b, 4), low, eights, 0x6A);
        // each lane: an exact dot of 8 (|.| <= 8 * 8 * 127 < 2^24, exact in float)
        const __m512i dot = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(corr, lo, xe), hi, xo);
        acc[j] = _mm512_fmadd_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(dot), dv), ql_spread(s + j * lds + g, 4), acc[j]);
      }
    }
    _mm_storeu_ps(part, ql_hsum4_512(acc[0], acc[1], acc[2], acc[3]));
  }
#endif
#if TG_ISA >= 2
  if (nc == 4 && g + 2 <= G) {
    const __m256i ones = _mm256_set1_epi16(1), low = _mm256_set1_epi8(0x0F), flip = _mm256_set1_epi8(0x08 | 0x80);
    __m256 acc = _mm256_setzero_ps();  // [c0 c1 c2 c3 | c0 c1 c2 c3]: even and odd groups' sums per channel
    for (; g + 2 <= G; g += 2) {
      const int8_t* x = xq + ql_w4_even_offset(g);  // g even: groups g and g + 1 are adjacent
      const __m256i xe = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x));
      const __m256i xo = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + 64));
      __m256i p[4];
#pragma GCC unroll 4
      for (int j = 0; j < 4; ++j) {
        // nibble n (two's complement q) ^ 8 = q + 8 in [1, 15], unsigned for vpmaddubsw
        const __m256i b = _mm256_xor_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + j * ldw + g * 16)), flip);
        ql_prefetch(w + j * ldw + g * 16);
        ql_prefetch(s + j * lds + g, kQlPrefetch / 4);
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
    _mm_storeu_ps(part, _mm_add_ps(_mm_loadu_ps(part), _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1))));
  }
#else
  (void)c;
#endif
  for (int j = 0; j < nc; ++j) out[j] = part[j] + ql_dot_w4_tail(w + j * ldw, s + j * lds, xq, d, g, G);
}

constexpr QlKernels kernels = {ql_dot4_w8, ql_dot4_w4};

#if TG_ISA >= 3
#pragma GCC pop_options
#endif
