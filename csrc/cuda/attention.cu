// Scaled-dot-product attention on the GPU, flash-attention style, float32, forward and backward.
//
//   out = softmax(q k^T * scale + mask) (dropout) v   q (BH, Tq, D), k (BH, Tk, D), v (BH, Tk, Dv)
//
// Same function and masks as tinygpt/kernels/reference.py attention_forward/_backward and
// csrc/cpu/attention.cpp: query i sits at key position Tk - Tq + i; `causal` hides later keys,
// `window` w > 0 keeps keys with position > query - w (and < query + w when not causal). Every
// query sees one contiguous key span [lo_i, hi_i), monotone in i, so a tile of queries sees the
// contiguous key range [lo(first row), hi(last row)): key tiles outside it are never visited.
//
// Tiling (one template per head-size class HD = 32, 64, 128 with B = 64, HD = 256 with B = 32):
// a block of NT = B/4 * 16 threads (256 for B = 64) owns a B-row tile. Thread (ty, tx) =
// (tid / 16, tid % 16) owns rows ty*4 .. ty*4+3; in a B x B score tile it owns columns
// tx + 16 j (j < B/16), in a B x HD output tile columns tx + 16 jj (jj < HD/16). Operands sit in
// shared memory row-major with odd row strides (HD + 1, B + 1), so every shared load in the two
// inner loops (tile_dot: A[row][d] * B[col][d]; tile_acc: W[row][c] * M[c][col]) is either a
// broadcast or 16 distinct banks. The 16 threads of a row are 16 consecutive lanes, so row
// reductions are 4 __shfl_xor steps.
//
// Forward (grid BH x ceil(Tq/B), last query tiles first: they see the most keys): q tile * scale
// in shared memory; per key tile, K and V tiles in shared memory, S = Q K^T in registers, online
// softmax (running max m, sum l per row; exp(-inf) handled, so fully masked tiles are harmless),
// P (dropped) to shared memory, O += P V in registers. Saved: out, m (row max of the scaled
// scores) and l (row sum of the undropped exp(S - m)). Keeping m and l apart (not their
// logsumexp) lets backward rebuild P = exp(S - m) / l to float32 rounding even for huge logits.
// No Tq x Tk matrix ever reaches global memory.
// Backward (FlashAttention-2, without atomics): (1) D = rowsum(dO * O), one warp per row, into
// the caller's workspace; (2) dK/dV kernel, grid BH x key tiles: K, V tiles stay in shared memory,
// loop over the query tiles that see them: rebuild P, dV += Pd^T dO, dP = dO V^T,
// dS = P (dP * keep - D), dK += dS^T (q * scale); (3) dQ kernel, grid BH x query tiles:
// dQ = scale * sum dS K, recomputing S and dP. The dQ kernel repeats two of the five matmuls
// (7 instead of 5) but needs no float atomics and no zeroed accumulator, and is deterministic.
// Layouts: every (head, position) row of q, k, v, out (and of dq, dk, dv, dO, which share them) is
// addressed through a Layout (batch, head and row strides; bh = b * H + h), so the same kernels run
// on split heads (BH, T, hs) and in place on c_attn's packed (B, T, 3C) output, writing the merged
// (B, T, C) output directly (qkv_attention: no split / merge copies, as the CPU kernel).
// Dropout: the counter-based mask of csrc/cpu/rng.h with the flat index of the (BH, Tq, Tk)
// attention matrix, regenerated per tile in every kernel, bit-identical to
// reference.dropout_mask(att.shape, p, seed).
//
// Napkin math (causal, T = 1024, hs = 64, B*nh = 96): forward 2 matmuls of 2 T^2 hs / 2 flops
// (half the tiles are masked) = 12.9 GFLOP; bytes = q, k, v, out ~ 4 * 96 * 1024 * 64 * 4 =
// 100 MB (k/v re-read per query tile mostly from L2): compute-bound. The inner loops do 16 FMA
// per 8 shared loads (32-bit), so shared-memory bandwidth (one 128-byte wavefront per clock per
// SM) caps them near half of the FP32 FMA peak (~67 TFLOP/s on an H100 SXM). Next steps, to be
// measured on the GPU: a larger register tile per thread (8 x 8: 4 FMA per load), cp.async
// double buffering of the K/V tiles, and TF32 mma where the tests' fp32 tolerance allows it.
// Occupancy (ptxas, sm_90): HD = 64 forward 126 registers, 66.5 KB shared -> 2 blocks (16 warps)
// per SM; backward kernels 120-177 registers, up to 149.5 KB shared (HD = 128) -> 1 block.
// Backward: 7 matmuls of the forward's size (3.5x forward; FlashAttention-2 counts 5, 2.5x).
#include <cuda_runtime.h>

#include <cfloat>
#include <cmath>
#include <cstdint>

#include "common.h"
#include "cpu/rng.h"
#include "registry.h"

namespace tinygpt {
namespace cuda_attention {

// Element (bh, t, 0) of a head-major tensor sits at (bh / H) * sb + (bh % H) * sh + t * st.
struct Layout {
  int64_t sb, sh, st;
};

struct Params {
  const float* q;
  const float* k;
  const float* v;
  int H;                   // heads per batch row of the layouts (1 for split heads)
  Layout lq, lk, lv, lo;   // q / dq, k / dk, v / dv, out / dO
  int Tq, Tk, D, Dv;
  bool causal;
  int window;  // 0: no window
  float scale;
  bool dropout;
  uint64_t seed;
  uint32_t threshold;  // rng::keep_threshold(p)
  float drop_scale;    // float32(1 / (1 - p))
};

__device__ __forceinline__ int64_t row_offset(const Params& P, const Layout& L, int64_t bh, int64_t t) {
  return (bh / P.H) * L.sb + (bh % P.H) * L.sh + t * L.st;
}

// Visible key span [lo, hi) of query i (reference.attention_mask, row i); empty for i >= Tq.
__device__ __forceinline__ void key_span(const Params& P, int i, int& lo, int& hi) {
  if (i >= P.Tq) {
    lo = 0;
    hi = 0;
    return;
  }
  const int pos = P.Tk - P.Tq + i;  // may be negative when not causal (Tq > Tk)
  lo = 0;
  hi = P.Tk;
  if (P.causal) hi = min(hi, pos + 1);
  if (P.window > 0) {
    lo = max(lo, pos - P.window + 1);
    if (!P.causal) hi = min(hi, pos + P.window);
  }
}

// 0 where the mask drops element (i, j) of head bh, else drop_scale (1 without dropout).
__device__ __forceinline__ float keep_factor(const Params& P, int64_t bh, int i, int j) {
  if (!P.dropout) return 1.0f;
  const uint64_t idx = (static_cast<uint64_t>(bh) * static_cast<uint64_t>(P.Tq) + static_cast<uint64_t>(i)) *
                           static_cast<uint64_t>(P.Tk) + static_cast<uint64_t>(j);
  return rng::bits24(P.seed, idx) >= P.threshold ? P.drop_scale : 0.0f;
}

template <int HD, int B>
struct Cfg {
  static constexpr int TX = 16;         // threads per row group
  static constexpr int TY = B / 4;      // row groups (4 rows each)
  static constexpr int NT = TX * TY;    // threads per block
  static constexpr int CN = B / 16;     // score columns per thread
  static constexpr int DN = HD / 16;    // output columns per thread
  static constexpr int LD = HD + 1;     // row stride of (B, HD) shared tiles
  static constexpr int LP = B + 1;      // row stride of the (B, B) shared tile
  static_assert(B % 16 == 0 && HD % 16 == 0, "tile sizes");
};

// dst[r][d] = src[r * stride + d] * mult for r < nrows, d < ncols; zero elsewhere in (B, HD).
template <int HD, int B>
__device__ __forceinline__ void load_rows(float* dst, const float* src, int nrows, int ncols, int64_t stride,
                                          float mult) {
  using C = Cfg<HD, B>;
  for (int e = threadIdx.x; e < B * HD; e += C::NT) {
    const int r = e / HD, d = e % HD;
    dst[r * C::LD + d] = (r < nrows && d < ncols) ? src[static_cast<int64_t>(r) * stride + d] * mult : 0.0f;
  }
}

// acc[i][j] = sum_{d < D} A[row_i][d] * Bm[col_j][d], row_i = ty*4 + i, col_j = tx + 16 j.
template <int HD, int B>
__device__ __forceinline__ void tile_dot(float (&acc)[4][Cfg<HD, B>::CN], const float* A, const float* Bm, int D,
                                         int ty, int tx) {
  using C = Cfg<HD, B>;
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int j = 0; j < C::CN; ++j) acc[i][j] = 0.0f;
  const float* a0 = A + ty * 4 * C::LD;
  const float* b0 = Bm + tx * C::LD;
#pragma unroll 4
  for (int d = 0; d < D; ++d) {
    float a[4], b[C::CN];
#pragma unroll
    for (int i = 0; i < 4; ++i) a[i] = a0[i * C::LD + d];
#pragma unroll
    for (int j = 0; j < C::CN; ++j) b[j] = b0[j * 16 * C::LD + d];
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
      for (int j = 0; j < C::CN; ++j) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
  }
}

// out[i][jj] += sum_{c < B} W(row_i, c) * M[c][tx + 16 jj], W(r, c) = W[r * wr + c * wc].
template <int HD, int B>
__device__ __forceinline__ void tile_acc(float (&out)[4][Cfg<HD, B>::DN], const float* W, int wr, int wc,
                                         const float* M, int ty, int tx) {
  using C = Cfg<HD, B>;
  const float* w0 = W + ty * 4 * wr;
  const float* m0 = M + tx;
#pragma unroll 4
  for (int c = 0; c < B; ++c) {
    float w[4], m[C::DN];
#pragma unroll
    for (int i = 0; i < 4; ++i) w[i] = w0[i * wr + c * wc];
#pragma unroll
    for (int jj = 0; jj < C::DN; ++jj) m[jj] = m0[c * C::LD + jj * 16];
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
      for (int jj = 0; jj < C::DN; ++jj) out[i][jj] = fmaf(w[i], m[jj], out[i][jj]);
  }
}

// Reductions over the 16 lanes that share a row (consecutive lanes: xor offsets < 16).
__device__ __forceinline__ float row_max16(float x) {
#pragma unroll
  for (int o = 8; o > 0; o >>= 1) x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, o));
  return x;
}
__device__ __forceinline__ float row_sum16(float x) {
#pragma unroll
  for (int o = 8; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
  return x;
}

template <int HD, int B>
constexpr size_t fwd_smem_floats() { return 3 * B * (HD + 1) + B * (B + 1); }
template <int HD, int B>
constexpr size_t bwd_smem_floats() { return 4 * B * (HD + 1) + B * (B + 1); }

// ------------------------------------------------------------------------------------ forward
template <int HD, int B>
__global__ void __launch_bounds__(Cfg<HD, B>::NT) attention_forward_kernel(Params P, float* __restrict__ out,
                                                                           float* __restrict__ mrow,
                                                                           float* __restrict__ lrow) {
  using C = Cfg<HD, B>;
  extern __shared__ float smem[];
  float* Qs = smem;              // (B, LD) q * scale
  float* Ks = Qs + B * C::LD;    // (B, LD)
  float* Vs = Ks + B * C::LD;    // (B, LD)
  float* Ps = Vs + B * C::LD;    // (B, LP) probabilities (dropped), rows = queries
  const int64_t bh = blockIdx.x;
  const int i0 = (gridDim.y - 1 - blockIdx.y) * B;
  const int nq = min(B, P.Tq - i0);
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
  const float* q = P.q + row_offset(P, P.lq, bh, i0);
  const float* k = P.k + row_offset(P, P.lk, bh, 0);
  const float* v = P.v + row_offset(P, P.lv, bh, 0);

  load_rows<HD, B>(Qs, q, nq, P.D, P.lq.st, P.scale);
  int lo_first, hi_first, lo_last, hi_last, lo[4], hi[4];
  key_span(P, i0, lo_first, hi_first);
  key_span(P, i0 + nq - 1, lo_last, hi_last);
#pragma unroll
  for (int i = 0; i < 4; ++i) key_span(P, i0 + ty * 4 + i, lo[i], hi[i]);

  float m[4], l[4], acc[4][C::DN];
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    m[i] = -INFINITY;
    l[i] = 0.0f;
#pragma unroll
    for (int jj = 0; jj < C::DN; ++jj) acc[i][jj] = 0.0f;
  }

  for (int j0 = lo_first / B * B; j0 < hi_last; j0 += B) {
    const int nk = min(B, P.Tk - j0);
    __syncthreads();  // the previous tile's readers of Ks, Vs, Ps are done
    load_rows<HD, B>(Ks, k + j0 * P.lk.st, nk, P.D, P.lk.st, 1.0f);
    load_rows<HD, B>(Vs, v + j0 * P.lv.st, nk, P.Dv, P.lv.st, 1.0f);
    __syncthreads();
    float s[4][C::CN];
    tile_dot<HD, B>(s, Qs, Ks, P.D, ty, tx);  // (B, D) @ (D, B) -> (B, B) scores
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      float mt = -INFINITY;
#pragma unroll
      for (int j = 0; j < C::CN; ++j) {
        const int key = j0 + tx + 16 * j;
        if (key < lo[i] || key >= hi[i]) s[i][j] = -INFINITY;
        mt = fmaxf(mt, s[i][j]);
      }
      const float mnew = fmaxf(m[i], row_max16(mt));
      const float msafe = mnew == -INFINITY ? 0.0f : mnew;  // nothing visible yet: exp(-inf) = 0
      const float alpha = expf(m[i] - msafe);
      float ls = 0.0f;
#pragma unroll
      for (int j = 0; j < C::CN; ++j) {
        const float p = expf(s[i][j] - msafe);
        ls += p;
        const int key = j0 + tx + 16 * j;
        // dropped weights count in l but not in O; O is scaled by drop_scale / l at the end
        Ps[(ty * 4 + i) * C::LP + tx + 16 * j] =
            (P.dropout && p != 0.0f && keep_factor(P, bh, i0 + ty * 4 + i, key) == 0.0f) ? 0.0f : p;
      }
      l[i] = l[i] * alpha + row_sum16(ls);
      m[i] = mnew;
#pragma unroll
      for (int jj = 0; jj < C::DN; ++jj) acc[i][jj] *= alpha;
    }
    __syncthreads();
    tile_acc<HD, B>(acc, Ps, C::LP, 1, Vs, ty, tx);  // (B, B) @ (B, Dv) -> (B, Dv)
  }

#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int r = ty * 4 + i;
    if (r >= nq) continue;
    const int64_t row = bh * P.Tq + i0 + r;
    float* o = out + row_offset(P, P.lo, bh, i0 + r);
    const float inv = P.drop_scale / l[i];
#pragma unroll
    for (int jj = 0; jj < C::DN; ++jj) {
      const int d = tx + 16 * jj;
      if (d < P.Dv) o[d] = acc[i][jj] * inv;
    }
    if (tx == 0) {
      mrow[row] = m[i];
      lrow[row] = l[i];
    }
  }
}

// ------------------------------------------------------------------------------------ backward
// D[r] = sum_d dO[r][d] * O[r][d] for rows r = bh * Tq + t, one warp per row.
__global__ void attention_rowdot_kernel(Params P, float* __restrict__ Drow, const float* __restrict__ g,
                                        const float* __restrict__ o, int64_t rows) {
  const int lane = threadIdx.x % 32;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * (blockDim.x / 32);
  for (int64_t r = blockIdx.x * static_cast<int64_t>(blockDim.x / 32) + threadIdx.x / 32; r < rows; r += warps) {
    const int64_t off = row_offset(P, P.lo, r / P.Tq, r % P.Tq);
    float acc = 0.0f;
    for (int d = lane; d < P.Dv; d += 32) acc = fmaf(g[off + d], o[off + d], acc);
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, off);
    if (lane == 0) Drow[r] = acc;
  }
}

// Rebuilds P (undropped) and dS = P * (dP * keep - D) for one (query tile, key tile) pair.
// Rows = queries (ty*4 + i), columns = keys (tx + 16 j). Qs holds q * scale.
template <int HD, int B>
__device__ __forceinline__ void probs_and_dscores(const Params& P, int64_t bh, int i0, int j0, const float* Qs,
                                                  const float* dOs, const float* Ks, const float* Vs,
                                                  const float (&mr)[4], const float (&linv)[4], const float (&Dr)[4],
                                                  float (&p)[4][Cfg<HD, B>::CN], float (&pd)[4][Cfg<HD, B>::CN],
                                                  float (&ds)[4][Cfg<HD, B>::CN], int ty, int tx) {
  using C = Cfg<HD, B>;
  float dp[4][C::CN];
  tile_dot<HD, B>(p, Qs, Ks, P.D, ty, tx);    // scores (B, B)
  tile_dot<HD, B>(dp, dOs, Vs, P.Dv, ty, tx);  // dP = dO V^T (B, B)
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    int lo, hi;
    key_span(P, i0 + ty * 4 + i, lo, hi);
#pragma unroll
    for (int j = 0; j < C::CN; ++j) {
      const int key = j0 + tx + 16 * j;
      const bool vis = key >= lo && key < hi;
      const float pr = vis ? expf(p[i][j] - mr[i]) * linv[i] : 0.0f;
      const float kf = vis ? keep_factor(P, bh, i0 + ty * 4 + i, key) : 0.0f;
      p[i][j] = pr;
      pd[i][j] = pr * kf;
      ds[i][j] = pr * (dp[i][j] * kf - Dr[i]);
    }
  }
}

template <int HD, int B>
__device__ __forceinline__ void load_row_stats(const Params& P, int64_t bh, int i0, const float* mrow,
                                               const float* lrow, const float* Drow, float (&mr)[4],
                                               float (&linv)[4], float (&Dr)[4], int ty) {
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int r = i0 + ty * 4 + i;
    const bool ok = r < P.Tq;
    const int64_t row = bh * P.Tq + r;
    mr[i] = ok ? mrow[row] : 0.0f;
    linv[i] = ok ? 1.0f / lrow[row] : 0.0f;
    Dr[i] = ok ? Drow[row] : 0.0f;
  }
}

// dK, dV for one key tile of one head; loops over the query tiles that see it.
template <int HD, int B>
__global__ void __launch_bounds__(Cfg<HD, B>::NT) attention_backward_kv_kernel(
    Params P, const float* __restrict__ g, const float* __restrict__ mrow, const float* __restrict__ lrow,
    const float* __restrict__ Drow, float* __restrict__ dk, float* __restrict__ dv) {
  using C = Cfg<HD, B>;
  extern __shared__ float smem[];
  float* Ks = smem;               // (B, LD) this block's keys
  float* Vs = Ks + B * C::LD;     // (B, LD)
  float* Qs = Vs + B * C::LD;     // (B, LD) q * scale of the current query tile
  float* dOs = Qs + B * C::LD;    // (B, LD)
  float* Ps = dOs + B * C::LD;    // (B, LP) Pd, then dS; rows = queries, columns = keys
  const int64_t bh = blockIdx.x;
  const int j0 = blockIdx.y * B;
  const int nk = min(B, P.Tk - j0);
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
  load_rows<HD, B>(Ks, P.k + row_offset(P, P.lk, bh, j0), nk, P.D, P.lk.st, 1.0f);
  load_rows<HD, B>(Vs, P.v + row_offset(P, P.lv, bh, j0), nk, P.Dv, P.lv.st, 1.0f);

  float dK[4][C::DN], dV[4][C::DN];  // rows = keys ty*4 + i
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int jj = 0; jj < C::DN; ++jj) dK[i][jj] = dV[i][jj] = 0.0f;

  const int nqt = (P.Tq + B - 1) / B;
  for (int qt = 0; qt < nqt; ++qt) {
    const int i0 = qt * B;
    const int nq = min(B, P.Tq - i0);
    int lo_first, hi_first, lo_last, hi_last;
    key_span(P, i0, lo_first, hi_first);
    key_span(P, i0 + nq - 1, lo_last, hi_last);
    if (hi_last <= j0 || lo_first >= j0 + nk) continue;  // no query of this tile sees these keys (uniform)
    __syncthreads();  // previous readers of Qs, dOs, Ps are done
    load_rows<HD, B>(Qs, P.q + row_offset(P, P.lq, bh, i0), nq, P.D, P.lq.st, P.scale);
    load_rows<HD, B>(dOs, g + row_offset(P, P.lo, bh, i0), nq, P.Dv, P.lo.st, 1.0f);
    float mr[4], linv[4], Dr[4];
    load_row_stats<HD, B>(P, bh, i0, mrow, lrow, Drow, mr, linv, Dr, ty);
    __syncthreads();
    float p[4][C::CN], pd[4][C::CN], ds[4][C::CN];
    probs_and_dscores<HD, B>(P, bh, i0, j0, Qs, dOs, Ks, Vs, mr, linv, Dr, p, pd, ds, ty, tx);
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
      for (int j = 0; j < C::CN; ++j) Ps[(ty * 4 + i) * C::LP + tx + 16 * j] = pd[i][j];
    __syncthreads();
    tile_acc<HD, B>(dV, Ps, 1, C::LP, dOs, ty, tx);  // dV += Pd^T dO: (B keys, B queries) @ (B, Dv)
    __syncthreads();
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
      for (int j = 0; j < C::CN; ++j) Ps[(ty * 4 + i) * C::LP + tx + 16 * j] = ds[i][j];
    __syncthreads();
    tile_acc<HD, B>(dK, Ps, 1, C::LP, Qs, ty, tx);  // dK += dS^T (q * scale): (B, B) @ (B, D)
  }

#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int r = ty * 4 + i;
    if (r >= nk) continue;
    float* dkr = dk + row_offset(P, P.lk, bh, j0 + r);
    float* dvr = dv + row_offset(P, P.lv, bh, j0 + r);
#pragma unroll
    for (int jj = 0; jj < C::DN; ++jj) {
      const int d = tx + 16 * jj;
      if (d < P.D) dkr[d] = dK[i][jj];
      if (d < P.Dv) dvr[d] = dV[i][jj];
    }
  }
}

// dQ for one query tile of one head; loops over the key tiles it sees (recomputing S and dP).
template <int HD, int B>
__global__ void __launch_bounds__(Cfg<HD, B>::NT) attention_backward_q_kernel(
    Params P, const float* __restrict__ g, const float* __restrict__ mrow, const float* __restrict__ lrow,
    const float* __restrict__ Drow, float* __restrict__ dq) {
  using C = Cfg<HD, B>;
  extern __shared__ float smem[];
  float* Qs = smem;               // (B, LD) q * scale
  float* dOs = Qs + B * C::LD;    // (B, LD)
  float* Ks = dOs + B * C::LD;    // (B, LD) current key tile
  float* Vs = Ks + B * C::LD;     // (B, LD)
  float* Ps = Vs + B * C::LD;     // (B, LP) dS, rows = queries
  const int64_t bh = blockIdx.x;
  const int i0 = (gridDim.y - 1 - blockIdx.y) * B;
  const int nq = min(B, P.Tq - i0);
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
  load_rows<HD, B>(Qs, P.q + row_offset(P, P.lq, bh, i0), nq, P.D, P.lq.st, P.scale);
  load_rows<HD, B>(dOs, g + row_offset(P, P.lo, bh, i0), nq, P.Dv, P.lo.st, 1.0f);
  float mr[4], linv[4], Dr[4];
  load_row_stats<HD, B>(P, bh, i0, mrow, lrow, Drow, mr, linv, Dr, ty);
  int lo_first, hi_first, lo_last, hi_last;
  key_span(P, i0, lo_first, hi_first);
  key_span(P, i0 + nq - 1, lo_last, hi_last);

  float dQ[4][C::DN];
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int jj = 0; jj < C::DN; ++jj) dQ[i][jj] = 0.0f;

  for (int j0 = lo_first / B * B; j0 < hi_last; j0 += B) {
    const int nk = min(B, P.Tk - j0);
    __syncthreads();  // previous readers of Ks, Vs, Ps are done
    load_rows<HD, B>(Ks, P.k + row_offset(P, P.lk, bh, j0), nk, P.D, P.lk.st, 1.0f);
    load_rows<HD, B>(Vs, P.v + row_offset(P, P.lv, bh, j0), nk, P.Dv, P.lv.st, 1.0f);
    __syncthreads();
    float p[4][C::CN], pd[4][C::CN], ds[4][C::CN];
    probs_and_dscores<HD, B>(P, bh, i0, j0, Qs, dOs, Ks, Vs, mr, linv, Dr, p, pd, ds, ty, tx);
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
      for (int j = 0; j < C::CN; ++j) Ps[(ty * 4 + i) * C::LP + tx + 16 * j] = ds[i][j];
    __syncthreads();
    tile_acc<HD, B>(dQ, Ps, C::LP, 1, Ks, ty, tx);  // dQ += dS K: (B, B) @ (B, D)
  }

#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int r = ty * 4 + i;
    if (r >= nq) continue;
    float* dqr = dq + row_offset(P, P.lq, bh, i0 + r);
#pragma unroll
    for (int jj = 0; jj < C::DN; ++jj) {
      const int d = tx + 16 * jj;
      if (d < P.D) dqr[d] = dQ[i][jj] * P.scale;
    }
  }
}

// ------------------------------------------------------------------------------------ launchers
Params make_params(std::uintptr_t q, std::uintptr_t k, std::uintptr_t v, int64_t BH, int64_t Tq, int64_t Tk,
                   int64_t D, int64_t Dv, bool causal, int64_t window, double dropout_p, uint64_t seed,
                   double scale) {
  TG_CHECK(BH >= 0 && BH < (int64_t(1) << 31), "attention (cuda): batch * heads must be < 2^31, got ", BH);
  TG_CHECK(Tq >= 0 && Tk >= 0 && Tq < (int64_t(1) << 30) && Tk < (int64_t(1) << 30),
           "attention (cuda): sequence lengths must be in [0, 2^30), got Tq = ", Tq, ", Tk = ", Tk);
  TG_CHECK(D >= 0 && Dv >= 0 && D <= 256 && Dv <= 256,
           "attention (cuda): head sizes up to 256 are supported, got q/k ", D, ", v ", Dv);
  TG_CHECK(window >= 0, "attention (cuda): window must be >= 0 (0: none), got ", window);
  TG_CHECK(dropout_p >= 0.0 && dropout_p < 1.0, "attention (cuda): dropout_p must be in [0, 1), got ", dropout_p);
  Params P{};
  P.q = reinterpret_cast<const float*>(q);
  P.k = reinterpret_cast<const float*>(k);
  P.v = reinterpret_cast<const float*>(v);
  P.H = 1;  // split heads: (BH, T, hs) each
  P.lq = {Tq * D, 0, D};
  P.lk = {Tk * D, 0, D};
  P.lv = {Tk * Dv, 0, Dv};
  P.lo = {Tq * Dv, 0, Dv};
  P.Tq = static_cast<int>(Tq);
  P.Tk = static_cast<int>(Tk);
  P.D = static_cast<int>(D);
  P.Dv = static_cast<int>(Dv);
  P.causal = causal;
  // a window >= Tq + Tk hides nothing more than no window: clamp so position arithmetic stays in int
  P.window = static_cast<int>(window > Tq + Tk + 1 ? Tq + Tk + 1 : window);
  P.scale = static_cast<float>(scale);
  P.dropout = dropout_p > 0.0;
  P.seed = seed;
  P.threshold = rng::keep_threshold(dropout_p);
  P.drop_scale = static_cast<float>(1.0 / (1.0 - dropout_p));
  return P;
}

// c_attn's packed output qkv (B, T, 3C), C = n_head * hs: q, k, v read in place, out (and dO) the
// merged (B, T, C), dq / dk / dv written into a (B, T, 3C) dqkv.
Params make_packed_params(std::uintptr_t qkv, int64_t B, int64_t T, int64_t n_head, int64_t hs, bool causal,
                          int64_t window, double dropout_p, uint64_t seed, double scale) {
  TG_CHECK(B >= 0 && T >= 0 && n_head >= 1 && hs >= 1,
           "qkv_attention (cuda): need B, T >= 0 and n_head, hs >= 1, got B = ", B, ", T = ", T, ", n_head = ",
           n_head, ", hs = ", hs);
  TG_CHECK(n_head * hs < (int64_t(1) << 24), "qkv_attention (cuda): n_embd ", n_head * hs, " is too large");
  const int64_t C = n_head * hs;
  Params P = make_params(qkv, qkv + sizeof(float) * C, qkv + 2 * sizeof(float) * C, B * n_head, T, T, hs, hs,
                         causal, window, dropout_p, seed, scale);
  P.H = static_cast<int>(n_head);
  P.lq = P.lk = P.lv = {T * 3 * C, hs, 3 * C};
  P.lo = {T * C, hs, C};
  return P;
}

template <typename Kernel>
void set_smem(Kernel kernel, size_t bytes) {
  TG_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)));
}

template <int HD, int B>
void forward_hd(const Params& P, int64_t BH, float* out, float* m, float* l, cudaStream_t stream) {
  const int64_t nqt = (P.Tq + B - 1) / B;
  TG_CHECK(nqt <= 65535, "attention (cuda): Tq = ", P.Tq, " needs more than 65535 query tiles");
  const size_t smem = fwd_smem_floats<HD, B>() * sizeof(float);
  set_smem(attention_forward_kernel<HD, B>, smem);
  attention_forward_kernel<HD, B><<<dim3(static_cast<unsigned>(BH), static_cast<unsigned>(nqt)), Cfg<HD, B>::NT,
                                    smem, stream>>>(P, out, m, l);
  TG_CUDA_CHECK_LAUNCH();
}

template <int HD, int B>
void backward_hd(const Params& P, int64_t BH, const float* g, const float* m, const float* l, const float* Drow,
                 float* dq, float* dk, float* dv, cudaStream_t stream) {
  const int64_t nqt = (P.Tq + B - 1) / B, nkt = (P.Tk + B - 1) / B;
  TG_CHECK(nqt <= 65535 && nkt <= 65535, "attention (cuda): Tq = ", P.Tq, ", Tk = ", P.Tk,
           " need more than 65535 tiles");
  const size_t smem = bwd_smem_floats<HD, B>() * sizeof(float);
  if (nkt > 0) {
    set_smem(attention_backward_kv_kernel<HD, B>, smem);
    attention_backward_kv_kernel<HD, B><<<dim3(static_cast<unsigned>(BH), static_cast<unsigned>(nkt)),
                                          Cfg<HD, B>::NT, smem, stream>>>(P, g, m, l, Drow, dk, dv);
    TG_CUDA_CHECK_LAUNCH();
  }
  if (nqt > 0) {
    set_smem(attention_backward_q_kernel<HD, B>, smem);
    attention_backward_q_kernel<HD, B><<<dim3(static_cast<unsigned>(BH), static_cast<unsigned>(nqt)),
                                         Cfg<HD, B>::NT, smem, stream>>>(P, g, m, l, Drow, dq);
    TG_CUDA_CHECK_LAUNCH();
  }
}

int head_class(int64_t D, int64_t Dv) {
  const int64_t h = D > Dv ? D : Dv;
  return h <= 32 ? 32 : h <= 64 ? 64 : h <= 128 ? 128 : 256;
}

void forward(const Params& P, int64_t BH, std::uintptr_t out, std::uintptr_t row_max, std::uintptr_t row_sum,
             std::uintptr_t stream) {
  if (BH == 0 || P.Tq == 0) return;
  TG_CHECK(P.Tk > 0, "attention_forward (cuda): no keys (Tk = 0) for ", P.Tq, " queries");
  auto s = reinterpret_cast<cudaStream_t>(stream);
  auto* o = reinterpret_cast<float*>(out);
  auto* m = reinterpret_cast<float*>(row_max);
  auto* l = reinterpret_cast<float*>(row_sum);
  switch (head_class(P.D, P.Dv)) {
    case 32: forward_hd<32, 64>(P, BH, o, m, l, s); break;
    case 64: forward_hd<64, 64>(P, BH, o, m, l, s); break;
    case 128: forward_hd<128, 64>(P, BH, o, m, l, s); break;
    default: forward_hd<256, 32>(P, BH, o, m, l, s); break;
  }
}

// Needs Tq > 0 and Tk > 0 (the callers handle the empty cases).
void backward(const Params& P, int64_t BH, std::uintptr_t dq, std::uintptr_t dk, std::uintptr_t dv,
              std::uintptr_t drow, std::uintptr_t grad, std::uintptr_t out, std::uintptr_t row_max,
              std::uintptr_t row_sum, cudaStream_t s) {
  const auto* g = reinterpret_cast<const float*>(grad);
  const auto* o = reinterpret_cast<const float*>(out);
  const auto* m = reinterpret_cast<const float*>(row_max);
  const auto* l = reinterpret_cast<const float*>(row_sum);
  auto* Dp = reinterpret_cast<float*>(drow);
  const int64_t rows = BH * P.Tq;
  const int64_t blocks = (rows + 7) / 8;
  attention_rowdot_kernel<<<static_cast<unsigned>(blocks < 65536 ? blocks : 65536), 256, 0, s>>>(P, Dp, g, o, rows);
  TG_CUDA_CHECK_LAUNCH();
  auto* dqp = reinterpret_cast<float*>(dq);
  auto* dkp = reinterpret_cast<float*>(dk);
  auto* dvp = reinterpret_cast<float*>(dv);
  switch (head_class(P.D, P.Dv)) {
    case 32: backward_hd<32, 64>(P, BH, g, m, l, Dp, dqp, dkp, dvp, s); break;
    case 64: backward_hd<64, 64>(P, BH, g, m, l, Dp, dqp, dkp, dvp, s); break;
    case 128: backward_hd<128, 64>(P, BH, g, m, l, Dp, dqp, dkp, dvp, s); break;
    default: backward_hd<256, 32>(P, BH, g, m, l, Dp, dqp, dkp, dvp, s); break;
  }
}

}  // namespace cuda_attention
}  // namespace tinygpt

namespace tinygpt {
namespace cuda {
namespace {

using namespace cuda_attention;

// ------------------------------------------------------------------------------ launchers
void attention_forward(std::uintptr_t out, std::uintptr_t row_max, std::uintptr_t row_sum, std::uintptr_t q,
                               std::uintptr_t k, std::uintptr_t v, int64_t BH, int64_t Tq, int64_t Tk, int64_t D,
                               int64_t Dv, bool causal, int64_t window, double dropout_p, uint64_t seed,
                               double scale, std::uintptr_t stream) {
  forward(make_params(q, k, v, BH, Tq, Tk, D, Dv, causal, window, dropout_p, seed, scale), BH, out, row_max,
          row_sum, stream);
}

void attention_backward(std::uintptr_t dq, std::uintptr_t dk, std::uintptr_t dv, std::uintptr_t drow,
                                std::uintptr_t grad, std::uintptr_t q, std::uintptr_t k, std::uintptr_t v,
                                std::uintptr_t out, std::uintptr_t row_max, std::uintptr_t row_sum, int64_t BH,
                                int64_t Tq, int64_t Tk, int64_t D, int64_t Dv, bool causal, int64_t window,
                                double dropout_p, uint64_t seed, double scale, std::uintptr_t stream) {
  const Params P = make_params(q, k, v, BH, Tq, Tk, D, Dv, causal, window, dropout_p, seed, scale);
  if (BH == 0) return;
  auto s = reinterpret_cast<cudaStream_t>(stream);
  auto* dkp = reinterpret_cast<float*>(dk);
  auto* dvp = reinterpret_cast<float*>(dv);
  if (Tq == 0) {  // no query: nothing flows back to the keys
    if (Tk > 0 && D > 0) TG_CUDA_CHECK(cudaMemsetAsync(dkp, 0, sizeof(float) * BH * Tk * D, s));
    if (Tk > 0 && Dv > 0) TG_CUDA_CHECK(cudaMemsetAsync(dvp, 0, sizeof(float) * BH * Tk * Dv, s));
    return;
  }
  TG_CHECK(Tk > 0, "attention_backward (cuda): no keys (Tk = 0) for ", Tq, " queries");
  backward(P, BH, dq, dk, dv, drow, grad, out, row_max, row_sum, s);
}

void qkv_attention_forward(std::uintptr_t out, std::uintptr_t row_max, std::uintptr_t row_sum,
                                   std::uintptr_t qkv, int64_t B, int64_t T, int64_t n_head, int64_t hs, bool causal,
                                   int64_t window, double dropout_p, uint64_t seed, double scale,
                                   std::uintptr_t stream) {
  forward(make_packed_params(qkv, B, T, n_head, hs, causal, window, dropout_p, seed, scale), B * n_head, out,
          row_max, row_sum, stream);
}

void qkv_attention_backward(std::uintptr_t dqkv, std::uintptr_t drow, std::uintptr_t grad, std::uintptr_t qkv,
                                    std::uintptr_t out, std::uintptr_t row_max, std::uintptr_t row_sum, int64_t B,
                                    int64_t T, int64_t n_head, int64_t hs, bool causal, int64_t window,
                                    double dropout_p, uint64_t seed, double scale, std::uintptr_t stream) {
  const Params P = make_packed_params(qkv, B, T, n_head, hs, causal, window, dropout_p, seed, scale);
  if (B == 0 || T == 0) return;  // dqkv is empty
  const int64_t C = n_head * hs;
  backward(P, B * n_head, dqkv, dqkv + sizeof(float) * C, dqkv + 2 * sizeof(float) * C, drow, grad, out, row_max,
           row_sum, reinterpret_cast<cudaStream_t>(stream));
}

}  // namespace

#ifndef __CUDA_ARCH__  // host pass only (registry.h)
void bind_attention(py::module_& m) {
  const auto nogil = py::call_guard<py::gil_scoped_release>();
  m.def("attention_forward", &attention_forward, py::arg("out"), py::arg("row_max"), py::arg("row_sum"), py::arg("q"),
        py::arg("k"), py::arg("v"), py::arg("BH"), py::arg("Tq"), py::arg("Tk"), py::arg("D"), py::arg("Dv"),
        py::arg("causal"), py::arg("window"), py::arg("dropout_p"), py::arg("seed"), py::arg("scale"), py::arg("stream"),
        nogil, "Flash attention forward on raw device pointers (window 0: none).");
  m.def("attention_backward", &attention_backward, py::arg("dq"), py::arg("dk"), py::arg("dv"), py::arg("drow"),
        py::arg("grad"), py::arg("q"), py::arg("k"), py::arg("v"), py::arg("out"), py::arg("row_max"),
        py::arg("row_sum"), py::arg("BH"), py::arg("Tq"), py::arg("Tk"), py::arg("D"), py::arg("Dv"),
        py::arg("causal"), py::arg("window"), py::arg("dropout_p"), py::arg("seed"), py::arg("scale"), py::arg("stream"),
        nogil, "Flash attention backward (dq, dk, dv) on raw device pointers; drow is a (BH, Tq) workspace.");
  m.def("qkv_attention_forward", &qkv_attention_forward, py::arg("out"), py::arg("row_max"), py::arg("row_sum"),
        py::arg("qkv"), py::arg("B"), py::arg("T"), py::arg("n_head"), py::arg("hs"), py::arg("causal"),
        py::arg("window"), py::arg("dropout_p"), py::arg("seed"), py::arg("scale"), py::arg("stream"), nogil,
        "Flash attention forward reading c_attn's packed qkv (B, T, 3C) in place; out is the merged (B, T, C).");
  m.def("qkv_attention_backward", &qkv_attention_backward, py::arg("dqkv"), py::arg("drow"), py::arg("grad"),
        py::arg("qkv"), py::arg("out"), py::arg("row_max"), py::arg("row_sum"), py::arg("B"), py::arg("T"),
        py::arg("n_head"), py::arg("hs"), py::arg("causal"), py::arg("window"), py::arg("dropout_p"), py::arg("seed"),
        py::arg("scale"), py::arg("stream"), nogil,
        "Flash attention backward into a packed dqkv (B, T, 3C); grad is the merged (B, T, C).");
}
#endif

}  // namespace cuda
}  // namespace tinygpt
