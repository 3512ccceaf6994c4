// The GEMV dot products of quantized_linear for one instruction set. NOT a normal header: quantized_linear.cpp
// compiles it once per ISA (per_isa.h: namespace portable / avx2 / avx512, TG_ISA 1 / 2 / 3) and
// dispatches on cpu::isa(). Each function is one output channel against one prepared activation row
// (quantized_linear.cpp: prepare_w8 / prepare_w4), with no threads inside.
//
// Activations arrive as int8 per block of 32 with a float scale d_b (q8_0-style, "A8 blocks"), so the
// inner products are exact integer dots and only the per-block sums see float rounding:
//   w8: y_o = s_o * sum_b d_b * (sum_{k in b} q_ok xq_k)
//   w4: y_o =       sum_g s_og * d_g * (sum_{k in g} q_ok xq_k)        (groups of 32 = the x blocks)
// AVX2 (no VNNI on Zen 1): int8 x int8 dots are vpmaddubsw(|x|, sign(w, x)) (|pair| <= 2 * 127^2 <
// 2^15) + vpmaddwd(., 1); int4 nibbles are used unsigned as q + 8 (the ^ 0x88 below) and the offset
// comes back through the per-row correction c_g = -8 d_g sum(xq in g). Eight blocks are reduced
// together (vphaddd tree) so one convert + one FMA serves 256 weights.
// The AVX-512 copy compiles this same 256-bit code for x86-64-v4 (which has no VNNI either).

#if TG_ISA >= 2
static inline __m256i ql_hsum8_blocks(const __m256i* p) {
  // p[j]: 8 int32 partial sums of block j -> [b0 .. b7], block j's total in lane j.
  const __m256i h01 = _mm256_hadd_epi32(p[0], p[1]), h23 = _mm256_hadd_epi32(p[2], p[3]);
  const __m256i h45 = _mm256_hadd_epi32(p[4], p[5]), h67 = _mm256_hadd_epi32(p[6], p[7]);
  const __m256i a = _mm256_hadd_epi32(h01, h23);  // [b0..b3 low halves | b0..b3 high halves]
  const __m256i b = _mm256_hadd_epi32(h45, h67);
  return _mm256_add_epi32(_mm256_permute2x128_si256(a, b, 0x20), _mm256_permute2x128_si256(a, b, 0x31));
}

static inline int ql_hsum_epi32(__m256i v) {
  __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4E));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xB1));
  return _mm_cvtsi128_si32(s);
}

static inline float ql_hsum_ps(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}
#endif

// sum_b d[b] * dot(w, xq) over block b, for `in` inputs (the last block may be partial). xa = |xq|.
static inline float ql_dot_w8(const int8_t* w, const int8_t* xq, const int8_t* xa, const float* d, int64_t in) {
  int64_t b = 0;
  float total = 0.0f;
#if TG_ISA >= 2
  const int64_t nfull = in / 32;
  const __m256i ones = _mm256_set1_epi16(1);
  __m256 acc = _mm256_setzero_ps();
  for (; b + 8 <= nfull; b += 8) {
    __m256i p[8];
#pragma GCC unroll 8
    for (int j = 0; j < 8; ++j) {
      const int64_t o = (b + j) * 32;
      const __m256i wv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + o));
      const __m256i xv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq + o));
      const __m256i av = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xa + o));
      p[j] = _mm256_madd_epi16(_mm256_maddubs_epi16(av, _mm256_sign_epi8(wv, xv)), ones);
    }
    acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(ql_hsum8_blocks(p)), _mm256_loadu_ps(d + b), acc);
  }
  total = ql_hsum_ps(acc);
  for (; b < nfull; ++b) {
    const int64_t o = b * 32;
    const __m256i wv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + o));
    const __m256i xv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq + o));
    const __m256i av = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xa + o));
    total += d[b] * static_cast<float>(
                        ql_hsum_epi32(_mm256_madd_epi16(_mm256_maddubs_epi16(av, _mm256_sign_epi8(wv, xv)), ones)));
  }
#else
  (void)xa;
#endif
  for (; b * 32 < in; ++b) {  // portable: every block; AVX2: the partial last block
    const int64_t k0 = b * 32, k1 = k0 + 32 < in ? k0 + 32 : in;
    int32_t dot = 0;
    for (int64_t k = k0; k < k1; ++k) dot += static_cast<int32_t>(w[k]) * static_cast<int32_t>(xq[k]);
    total += d[b] * static_cast<float>(dot);
  }
  return total;
}

// The int4 activation layout (prepare_w4): groups in pairs, 64 bytes per pair: the even elements of
// group 2p (16), of group 2p+1 (16), then the odd elements of 2p, of 2p+1. A 32-byte load of packed
// weights (groups 2p and 2p+1) masked to its low nibbles then lines up with the first 32 bytes, its high
// nibbles with the second. d and c hold the groups of each full run of 8 in the order the reduction
// below yields [g0 g2 g4 g6 g1 g3 g5 g7], the leftover groups in natural order.
static inline int64_t ql_w4_even_offset(int64_t g) { return (g >> 1) * 64 + (g & 1) * 16; }

// sum_g s[g] * d_g * dot(q, xq) over group g (signed nibbles), for G groups of 32.
static inline float ql_dot_w4(const uint8_t* w, const float* s, const int8_t* xq, const float* d, const float* c,
                              int64_t G) {
  int64_t g = 0;
  float total = 0.0f;
#if TG_ISA >= 2
  const __m256i ones = _mm256_set1_epi16(1), low = _mm256_set1_epi8(0x0F), flip = _mm256_set1_epi8(0x08 | 0x80);
  const __m256i order = _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7);
  __m256 acc = _mm256_setzero_ps();
  for (; g + 8 <= G; g += 8) {
    __m256i p[4];
#pragma GCC unroll 4
    for (int j = 0; j < 4; ++j) {
      // two groups: nibble n (two's complement q) ^ 8 = q + 8 in [1, 15], unsigned for vpmaddubsw
      const __m256i b = _mm256_xor_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + (g + 2 * j) * 16)), flip);
      const __m256i lo = _mm256_and_si256(b, low), hi = _mm256_and_si256(_mm256_srli_epi16(b, 4), low);
      const int8_t* x = xq + (g + 2 * j) / 2 * 64;
      const __m256i xe = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x));
      const __m256i xo = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + 32));
      // |pair sums| <= 2 * 15 * 127 each, two of them: < 2^15
      const __m256i s16 = _mm256_add_epi16(_mm256_maddubs_epi16(lo, xe), _mm256_maddubs_epi16(hi, xo));
      p[j] = _mm256_madd_epi16(s16, ones);  // [g x4 | g+1 x4]
    }
    const __m256i a = _mm256_hadd_epi32(p[0], p[1]);   // [g0 g0 g2 g2 | g1 g1 g3 g3]
    const __m256i bb = _mm256_hadd_epi32(p[2], p[3]);  // [g4 g4 g6 g6 | g5 g5 g7 g7]
    const __m256 dots = _mm256_cvtepi32_ps(_mm256_hadd_epi32(a, bb));  // [g0 g2 g4 g6 | g1 g3 g5 g7]
    const __m256 sw = _mm256_permutevar8x32_ps(_mm256_loadu_ps(s + g), order);
    acc = _mm256_fmadd_ps(_mm256_fmadd_ps(dots, _mm256_loadu_ps(d + g), _mm256_loadu_ps(c + g)), sw, acc);
  }
  total = ql_hsum_ps(acc);
#else
  (void)c;
#endif
  for (; g < G; ++g) {  // signed nibbles, one group at a time
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

constexpr QlKernels kernels = {ql_dot_w8, ql_dot_w4};
