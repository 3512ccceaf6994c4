// The GEMM's micro-kernels and GELU rows for one instruction set, written once over the vector layer
// (simd.h). NOT a normal header: gemm.cpp compiles it once per ISA (per_isa.h: inside namespace
// portable / avx2 / avx512, under the matching `#pragma GCC target`, TG_ISA 1 / 2 / 3); the packing
// and the parallel driver are ISA-independent and live in gemm.cpp. It defines `kernels`, this ISA's
// row of the table gemm.cpp dispatches on.
//
// Micro-kernel: an MR x NR tile of C (NR = NV vectors) stays in registers while k runs over the
// packed panels: per k, NV loads of B and MR broadcasts of A, MR * NV FMAs. The tile is written once,
// adding bias (and the old C when accumulating), and with a GELU output its gelu in the same pass.
// The N edge uses masked loads/stores (a narrower instance when it fits in fewer vectors), the M edge
// a template instance per row count, so nothing is computed for padding rows. Where a vector is at
// least as tall as the tile (AVX-512: W 16 >= MR 14), edges of at most 8 columns run a column
// kernel instead, one accumulator per column over the tile's rows: 1 FMA per k for a 1-column edge.
#include "simd.h"

#if TG_ISA == 3
constexpr int MR = 14, NV = 2;
constexpr int64_t KC = 512, MC = 140;  // single-thread sweeps on Zen 4 (benchmarks/kernels/linear.py shapes)
constexpr bool kColumnEdge = true;
#elif TG_ISA == 2
constexpr int MR = 6, NV = 2;  // 12 accumulators + 2 loads + 1 broadcast of 16 registers
constexpr int64_t KC = 384, MC = 144;
constexpr bool kColumnEdge = false;
#else
constexpr int MR = 4, NV = 4;
constexpr int64_t KC = 256, MC = 128;
constexpr bool kColumnEdge = false;
#endif
constexpr int NR = NV * W;

// C tile = r + bias (+ C when accumulating), and y = gelu of it when y is given; Full: all NVX * W
// columns, else the columns of mk.
template <bool Full, int M, int NVX>
TG_INLINE void store_tile(const vf (&r)[M][NVX], const vmask* mk, const vf* bb, float* __restrict c, int64_t ldc,
                          bool acc, float* __restrict y, int64_t ldy) {
#pragma GCC unroll 16
  for (int i = 0; i < M; ++i) {
    float* ci = c + i * ldc;
#pragma GCC unroll 4
    for (int v = 0; v < NVX; ++v) {
      vf x = vadd(r[i][v], bb[v]);
      if (acc) x = vadd(x, Full ? vload(ci + W * v) : vload_masked(ci + W * v, mk[v]));
      if (Full) {
        vstore(ci + W * v, x);
        if (y != nullptr) vstore(y + i * ldy + W * v, vgelu(x));  // fused GELU
      } else {
        vstore_masked(ci + W * v, mk[v], x);
        if (y != nullptr) vstore_masked(y + i * ldy + W * v, mk[v], vgelu(x));
      }
    }
  }
}

template <int M, int NVX>
void ukr(int64_t kc, const float* __restrict a, const float* __restrict b, float* __restrict c, int64_t ldc, int nr,
         const float* __restrict bias, bool acc, float* __restrict y, int64_t ldy) {
  vf r[M][NVX];
#pragma GCC unroll 16
  for (int i = 0; i < M; ++i) {
    // Start fetching the C (and y) tile now: its (write-allocate) misses then overlap the k loop.
#pragma GCC unroll 4
    for (int v = 0; v < NVX; ++v) {
      __builtin_prefetch(c + i * ldc + W * v, 1, 3);
      if (y != nullptr) __builtin_prefetch(y + i * ldy + W * v, 1, 3);
      r[i][v] = vzero();
    }
  }
#pragma GCC unroll 2
  for (int64_t k = 0; k < kc; ++k) {
    vf bv[NVX];
#pragma GCC unroll 4
    for (int v = 0; v < NVX; ++v) bv[v] = vload(b + W * v);
#pragma GCC unroll 16
    for (int i = 0; i < M; ++i) {
      const vf ai = vset1(a[i]);
#pragma GCC unroll 4
      for (int v = 0; v < NVX; ++v) r[i][v] = vfma(ai, bv[v], r[i][v]);
    }
    a += MR;
    b += NR;
  }
  vmask mk[NVX];
  vf bb[NVX];
#pragma GCC unroll 4
  for (int v = 0; v < NVX; ++v) {
    mk[v] = vmask_first(nr - W * v);
    bb[v] = bias != nullptr ? vload_masked(bias + W * v, mk[v]) : vzero();
  }
  if (nr == W * NVX) {  // a full tile: plain loads and stores
    store_tile<true>(r, mk, bb, c, ldc, acc, y, ldy);
  } else {
    store_tile<false>(r, mk, bb, c, ldc, acc, y, ldy);
  }
}

// The N edge of at most 8 columns, vectorised over the tile's rows (kColumnEdge: W >= MR).
template <int NC>
void ukr_cols(int64_t kc, const float* __restrict a, const float* __restrict b, float* __restrict c, int64_t ldc,
              int mr, const float* __restrict bias, bool acc, float* __restrict y, int64_t ldy) {
  vf r[NC];
#pragma GCC unroll 8
  for (int j = 0; j < NC; ++j) r[j] = vzero();
  const vmask am = vmask_first(MR);
  for (int64_t k = 0; k < kc; ++k, a += MR, b += NR) {
    const vf av = vload_masked(a, am);  // rows 0..MR-1 of column k of A
#pragma GCC unroll 8
    for (int j = 0; j < NC; ++j) r[j] = vfma(av, vset1(b[j]), r[j]);
  }
  alignas(64) float t[W];
  for (int j = 0; j < NC; ++j) {
    vf x = r[j];
    if (bias != nullptr) x = vadd(x, vset1(bias[j]));
    if (acc) {
      for (int i = 0; i < mr; ++i) t[i] = c[i * ldc + j];
      x = vadd(x, vload_masked(t, vmask_first(mr)));
    }
    vstore(t, x);
    for (int i = 0; i < mr; ++i) c[i * ldc + j] = t[i];
    if (y != nullptr) {
      vstore(t, vgelu(x));
      for (int i = 0; i < mr; ++i) y[i * ldy + j] = t[i];
    }
  }
}

using Ukr = void (*)(int64_t, const float*, const float*, float*, int64_t, int, const float*, bool, float*, int64_t);

template <int M, int... V>
constexpr std::array<Ukr, NV> ukr_row(std::integer_sequence<int, V...>) {
  return {ukr<M, V + 1>...};
}
template <int... M>
constexpr std::array<std::array<Ukr, NV>, MR> ukr_table(std::integer_sequence<int, M...>) {
  return {ukr_row<M + 1>(std::make_integer_sequence<int, NV>{})...};
}
// kTable[rows - 1][vectors - 1] for a tile of `rows` rows and `vectors` vectors of columns.
constexpr auto kTable = ukr_table(std::make_integer_sequence<int, MR>{});
constexpr Ukr kColTable[8] = {ukr_cols<1>, ukr_cols<2>, ukr_cols<3>, ukr_cols<4>,
                              ukr_cols<5>, ukr_cols<6>, ukr_cols<7>, ukr_cols<8>};

// C tile (mr x nr at c) = A panel @ B panel (+ bias) (+ C if acc); if y: y tile = gelu(C tile).
void tile(int64_t kc, const float* a, const float* b, float* c, int64_t ldc, int mr, int nr, const float* bias,
          bool acc, float* y, int64_t ldy) {
  if (kColumnEdge && nr <= 8) {
    kColTable[nr - 1](kc, a, b, c, ldc, mr, bias, acc, y, ldy);
  } else {
    kTable[mr - 1][(nr - 1) / W](kc, a, b, c, ldc, nr, bias, acc, y, ldy);
  }
}

// y = gelu(h) and dh = g * gelu'(h) over n floats (the GELU of the GEMM's epilogue, linear_gelu's
// backward and F.gelu's tanh form).
void gelu_rows(const float* h, float* y, int64_t n) {
  int64_t i = 0;
  for (; i + W <= n; i += W) vstore(y + i, vgelu(vload(h + i)));
  if (i < n) {
    const vmask m = vmask_first(static_cast<int>(n - i));
    vstore_masked(y + i, m, vgelu(vload_masked(h + i, m)));
  }
}

void gelu_grad_rows(const float* g, const float* h, float* dh, int64_t n) {
  int64_t i = 0;
  for (; i + W <= n; i += W) vstore(dh + i, vgelu_grad(vload(g + i), vload(h + i)));
  if (i < n) {
    const vmask m = vmask_first(static_cast<int>(n - i));
    vstore_masked(dh + i, m, vgelu_grad(vload_masked(g + i, m), vload_masked(h + i, m)));
  }
}

// dst[k * stride + r] = src[r * ld + k] for r < rows (rows <= width <= W), zero for rows <= r < width,
// k < kc: an MR- or NR-wide panel from `rows` rows that are contiguous in k, W x W blocks at a time.
void transpose_pack(int rows, int64_t kc, const float* src, int64_t ld, float* dst, int stride, int width) {
  const vmask wmask = vmask_first(width);
  for (int64_t k0 = 0; k0 < kc; k0 += W) {
    const int kn = static_cast<int>(std::min<int64_t>(W, kc - k0));
    const vmask kmask = vmask_first(kn);
    vf r[W];
#pragma GCC unroll 16
    for (int i = 0; i < W; ++i)
      r[i] = i < rows ? (kn == W ? vload(src + i * ld + k0) : vload_masked(src + i * ld + k0, kmask)) : vzero();
    vtranspose(r);
    float* d = dst + k0 * stride;
    for (int j = 0; j < kn; ++j) {
      if (width == W) {
        vstore(d + j * stride, r[j]);
      } else {
        vstore_masked(d + j * stride, wmask, r[j]);
      }
    }
  }
}

// GEMV for decode (gemm.cpp: sgemm_gemv): c[r, j] (+)= sum_k a[r, k] * w[j, k] for rows r < m <= kGemvRows
// and the n <= W channels j of one block, w's rows ldw apart and contiguous in k (a Linear's weight,
// B = w^T). Each product streams the weights once, in order, with no packing: one row, gemv_row; 2-8 rows
// (batched decode), gemv_rows, which reads each weight row once against all of them.
constexpr int kGemvRows = 8;
constexpr int64_t kGemvPrefetch = 8192;  // gemv_rows: L2 prefetch distance in each weight row, bytes
// The epilogue of one row's results t (n <= W channels): + bias (+ the old c), stored; gelu of it into y.
TG_INLINE void gemv_store(vf t, int n, vmask nmask, float* cr, bool acc, const float* bias, float* yr) {
  if (n == W) {
    if (bias != nullptr) t = vadd(t, vload(bias));
    if (acc) t = vadd(t, vload(cr));
    vstore(cr, t);
    if (yr != nullptr) vstore(yr, vgelu(t));
  } else {
    if (bias != nullptr) t = vadd(t, vload_masked(bias, nmask));
    if (acc) t = vadd(t, vload_masked(cr, nmask));
    vstore_masked(cr, nmask, t);
    if (yr != nullptr) vstore_masked(yr, nmask, vgelu(t));
  }
}

// One row of a (decode, batch 1): each channel's weight row is read start to end with four accumulators,
// so the weights stream strictly in order, one row after the other, which the hardware prefetchers follow
// best (one Zen 4 core: 23 GB/s, against 19-22 interleaving the block's W rows, with or without software
// prefetch). The lanes of each channel are summed in order.
void gemv_row(int n, int64_t K, const float* x, const float* w, int64_t ldw, float* c, bool acc, const float* bias,
              float* y) {
  const vmask kmask = vmask_first(static_cast<int>(K % W)), nmask = vmask_first(n);
  float lanes[W], res[W] = {};
  for (int j = 0; j < n; ++j) {
    const float* wr = w + j * ldw;
    vf a0 = vzero(), a1 = vzero(), a2 = vzero(), a3 = vzero();
    int64_t k = 0;
    for (; k + 4 * W <= K; k += 4 * W) {
      a0 = vfma(vload(wr + k), vload(x + k), a0);
      a1 = vfma(vload(wr + k + W), vload(x + k + W), a1);
      a2 = vfma(vload(wr + k + 2 * W), vload(x + k + 2 * W), a2);
      a3 = vfma(vload(wr + k + 3 * W), vload(x + k + 3 * W), a3);
    }
    for (; k + W <= K; k += W) a0 = vfma(vload(wr + k), vload(x + k), a0);
    if (k < K) a1 = vfma(vload_masked(wr + k, kmask), vload_masked(x + k, kmask), a1);
    vstore(lanes, vadd(vadd(a0, a1), vadd(a2, a3)));
    float sum = lanes[0];
    for (int i = 1; i < W; ++i) sum += lanes[i];
    res[j] = sum;
  }
  gemv_store(vload(res), n, nmask, c, acc, bias, y);
}

// 2..8 rows (batched decode): as gemv_row, each weight row read start to end, against every row of a at once
// (U accumulators per row: two where the registers allow). The rows of a stay in L1 / L2 while the weights
// stream past, prefetched kGemvPrefetch bytes ahead into L2: without it 4 rows streamed at 9-11 GB/s, with it
// 19-22 (one Zen 4 core; the packed SGEMM these rows ran before: 6-14).
template <int M>
void gemv_rows(int n, int64_t K, const float* a, int64_t lda, const float* w, int64_t ldw, float* c, int64_t ldc,
               bool acc, const float* bias, float* y, int64_t ldy) {
  constexpr int U = (W >= 16 || M <= 4) ? 2 : 1;  // AVX2 has 16 vector registers: one accumulator per row at 8
  const vmask kmask = vmask_first(static_cast<int>(K % W)), nmask = vmask_first(n);
  float lanes[W], res[M][W] = {};
  for (int j = 0; j < n; ++j) {
    const float* wr = w + j * ldw;
    vf s[U][M];
#pragma GCC unroll 16
    for (int r = 0; r < M; ++r) {
      s[0][r] = vzero();
      s[U - 1][r] = vzero();
    }
    int64_t k = 0;
    for (; k + U * W <= K; k += U * W) {
#pragma GCC unroll 2
      for (int u = 0; u < U; ++u) {
        __builtin_prefetch(wr + k + u * W + kGemvPrefetch / 4, 0, 2);
        const vf wv = vload(wr + k + u * W);
#pragma GCC unroll 8
        for (int r = 0; r < M; ++r) s[u][r] = vfma(wv, vload(a + r * lda + k + u * W), s[u][r]);
      }
    }
    for (; k + W <= K; k += W) {
      const vf wv = vload(wr + k);
#pragma GCC unroll 8
      for (int r = 0; r < M; ++r) s[0][r] = vfma(wv, vload(a + r * lda + k), s[0][r]);
    }
    if (k < K) {
      const vf wv = vload_masked(wr + k, kmask);
#pragma GCC unroll 8
      for (int r = 0; r < M; ++r) s[0][r] = vfma(wv, vload_masked(a + r * lda + k, kmask), s[0][r]);
    }
    for (int r = 0; r < M; ++r) {
      vstore(lanes, U == 2 ? vadd(s[0][r], s[U - 1][r]) : s[0][r]);
      float sum = lanes[0];
      for (int i = 1; i < W; ++i) sum += lanes[i];
      res[r][j] = sum;
    }
  }
  for (int r = 0; r < M; ++r)
    gemv_store(vload(res[r]), n, nmask, c + r * ldc, acc, bias, y == nullptr ? nullptr : y + r * ldy);
}

void gemv_block(int m, int n, int64_t K, const float* a, int64_t lda, const float* w, int64_t ldw, float* c,
                int64_t ldc, bool acc, const float* bias, float* y, int64_t ldy) {
  switch (m) {
    case 1: return gemv_row(n, K, a, w, ldw, c, acc, bias, y);
    case 2: return gemv_rows<2>(n, K, a, lda, w, ldw, c, ldc, acc, bias, y, ldy);
    case 3: return gemv_rows<3>(n, K, a, lda, w, ldw, c, ldc, acc, bias, y, ldy);
    case 4: return gemv_rows<4>(n, K, a, lda, w, ldw, c, ldc, acc, bias, y, ldy);
    case 5: return gemv_rows<5>(n, K, a, lda, w, ldw, c, ldc, acc, bias, y, ldy);
    case 6: return gemv_rows<6>(n, K, a, lda, w, ldw, c, ldc, acc, bias, y, ldy);
    case 7: return gemv_rows<7>(n, K, a, lda, w, ldw, c, ldc, acc, bias, y, ldy);
    default: return gemv_rows<8>(n, K, a, lda, w, ldw, c, ldc, acc, bias, y, ldy);  // m <= kGemvRows
  }
}

// The portable build packs with plain loops (nullptr): 4-float transposes would not pay.
constexpr TransposeFn kTranspose = W >= 8 ? transpose_pack : nullptr;
const GemmIsa kernels{MR, NR, KC, MC, 4096, tile, pack_a<MR, kTranspose>, pack_b_panel<NR, kTranspose, W>,
                      gelu_rows, gelu_grad_rows, gemv_block, W, kGemvRows};
