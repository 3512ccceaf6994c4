// Flash-attention tile kernels for one instruction set, written once over the vector layer
// (simd.h). NOT a normal header: attention.cpp compiles it once per ISA (per_isa.h: inside
// namespace portable / avx2 / avx512, under the matching `#pragma GCC target`, TG_ISA 1 / 2 / 3).
// Everything ISA-independent (Problem, layouts, the OpenMP drivers) lives in attention.cpp; this file
// holds a register-blocked GEMM micro-kernel and the two tile routines the drivers call through
// function pointers.
//
// Orientation: every score tile is kept TRANSPOSED, S^T (keys x queries), so queries run along
// SIMD lanes. Then the online-softmax statistics (row max, row sum) are lane-wise max/add over
// the tile's rows, the per-query logsumexp pieces load as vectors, and no GEMM needs a packed
// transpose of k or v: k and v are read in place as the broadcast ("A") operand. Only q (and
// dO in backward) are transposed, once per query tile.

#include "simd.h"  // the vector layer of this ISA: vf, W, vload, vfma, vexp, vkeep, ...

constexpr int NVMAX = kVectorRegisters == 32 ? 4 : 2;  // vectors per micro-kernel row: 6 x NVMAX accumulators

static inline uint64_t z_of(uint64_t seed, uint64_t index) { return seed + (index + 1) * rng::kGolden; }

// Lane offsets of the dropout counters for W queries `stride` apart (stride = Tk, one row of the
// attention matrix): even lanes' offsets first, then the odd lanes', as vkeep expects.
static inline void lane_offsets(uint64_t* off, uint64_t stride) {
  for (int c = 0; c < W; ++c) off[(c % 2) * (W / 2) + c / 2] = static_cast<uint64_t>(c) * stride * rng::kGolden;
}

// ============================================================================ GEMM
// C[r][0:NV*W] (+)= sum_k A[r*sr + k*sk] * B[k*ldb + 0:NV*W] for r < R. A is broadcast one
// element at a time, so it may be any strided view (a transpose costs nothing); B rows are
// loaded as vectors. R x NV accumulators stay in registers across the whole K loop.
template <int R, int NV>
static inline void micro(float* C, int64_t ldc, const float* A, int64_t sr, int64_t sk, const float* B,
                         int64_t ldb, int K, bool accumulate) {
  vf c[R][NV];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) c[r][v] = accumulate ? vload(C + r * ldc + v * W) : vzero();
  for (int k = 0; k < K; ++k) {
    vf b[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) b[v] = vload(B + v * W);
    const float* a = A + k * sk;
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const vf ar = vset1(a[r * sr]);
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) c[r][v] = vfma(ar, b[v], c[r][v]);
    }
    B += ldb;
  }
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) vstore(C + r * ldc + v * W, c[r][v]);
}

constexpr int RMAX = 6;

template <int NV>
static inline void micro_rows(int r, float* C, int64_t ldc, const float* A, int64_t sr, int64_t sk, const float* B,
                              int64_t ldb, int K, bool acc) {
  switch (r) {
    case 1: micro<1, NV>(C, ldc, A, sr, sk, B, ldb, K, acc); break;
    case 2: micro<2, NV>(C, ldc, A, sr, sk, B, ldb, K, acc); break;
    case 3: micro<3, NV>(C, ldc, A, sr, sk, B, ldb, K, acc); break;
    case 4: micro<4, NV>(C, ldc, A, sr, sk, B, ldb, K, acc); break;
    case 5: micro<5, NV>(C, ldc, A, sr, sk, B, ldb, K, acc); break;
    default: micro<RMAX, NV>(C, ldc, A, sr, sk, B, ldb, K, acc); break;
  }
}

// All of it: the default ranges of gemm_ex.
struct AllRows {
  int M;
  void operator()(int, int, int& b, int& e) const { b = 0; e = M; }
};
struct AllKs {
  int K;
  void operator()(int, int, int, int, int& b, int& e) const { b = 0; e = K; }
};

// C (M x N, row stride ldc) (+)= A (M x K, strides sr/sk) @ B (K x N, row stride ldb), where N is a
// multiple of W (callers pad) and M, K are anything. Banded version for masked tiles: the column
// panel [n0, n1) only needs rows [b, e) = rows(n0, n1) (others are left untouched), and the
// row block [m0, m1) of that panel only needs k in ks(n0, n1, m0, m1) (the rest of A is zero
// there). Panels are at most nvcap vectors wide (narrow panels skip more of a triangle).
template <class Rows, class Ks>
static void gemm_ex(float* C, int64_t ldc, const float* A, int64_t sr, int64_t sk, const float* B, int64_t ldb,
                    int M, int N, int K, bool acc, int nvcap, const Rows& rows, const Ks& ks) {
  for (int n = 0; n < N;) {
    const int left = (N - n) / W;
    const int nv = (left >= NVMAX && nvcap >= NVMAX) ? NVMAX : (left >= 2 && nvcap >= 2) ? 2 : 1;
    const int n1 = n + nv * W;
    int mb, me;
    rows(n, n1, mb, me);
    mb = std::max(mb, 0);
    me = std::min(me, M);
    for (int m = mb; m < me; m += RMAX) {
      const int r = std::min(RMAX, me - m);
      int kb, ke;
      ks(n, n1, m, m + r, kb, ke);
      kb = std::max(kb, 0);
      ke = std::max(std::min(ke, K), kb);
      if (acc && ke == kb) continue;
      float* c = C + m * ldc + n;
      const float* a = A + m * sr + kb * sk;
      const float* b = B + kb * ldb + n;
      if (nv == NVMAX) micro_rows<NVMAX>(r, c, ldc, a, sr, sk, b, ldb, ke - kb, acc);
      else if (nv == 2) micro_rows<2>(r, c, ldc, a, sr, sk, b, ldb, ke - kb, acc);
      else micro_rows<1>(r, c, ldc, a, sr, sk, b, ldb, ke - kb, acc);
    }
    n = n1;
  }
}

static void gemm(float* C, int64_t ldc, const float* A, int64_t sr, int64_t sk, const float* B, int64_t ldb,
                 int M, int N, int K, bool acc) {
  gemm_ex(C, ldc, A, sr, sk, B, ldb, M, N, K, acc, NVMAX, AllRows{M}, AllKs{K});
}

// ============================================================================ forward, one query
// A tile of a single query (decoding: Tq = 1) would fill one of the W lanes the tile below runs its
// queries along. This row version vectorises along the head size for the scores (W keys at a time,
// one accumulator each, summed by a transpose), along the keys for the softmax, and along Dv for the
// output, with the same online softmax over key blocks of Bc. Without dropout only (the tile keeps
// the dropout path). Scores are (q * scale) . k as in the tile; only the summation order differs.
static void forward_row(const Problem& P, int64_t bh, int64_t i, float* ws, float* out, float* m_out, float* l_out) {
  const int64_t D = P.D, Dv = P.Dv, ks = P.lk.st, vs = P.lv.st;
  const FwdLayout L = fwd_layout(P);
  float* qs = ws + L.qT;  // (D,) q * scale
  float* s = ws + L.sT;   // (Bc rounded up to W,) the block's scores, then probabilities
  float* o = ws + L.oT;   // (Dv,) output accumulator
  const float* q = P.q + P.lq.off(bh) + i * P.lq.st;
  const float* k = P.k + P.lk.off(bh);
  const float* v = P.v + P.lv.off(bh);
  for (int64_t d = 0; d < D; ++d) qs[d] = q[d] * P.scale;
  std::fill(o, o + Dv, 0.0f);
  const int64_t dfull = D / W * W;
  const vmask dtail = vmask_first(static_cast<int>(D - dfull));
  float m = -INFINITY, l = 0.0f;
  for (int j0 = P.lo[i]; j0 < P.hi[i]; j0 += P.Bc) {
    const int nk = std::min<int>(P.Bc, P.hi[i] - j0);
    // scores of keys j0 + [jb, jb + W): W dot products over D, then one transpose sums each one's lanes
    for (int jb = 0; jb < nk; jb += W) {
      const int n = std::min(W, nk - jb);
      vf acc[W];
      for (int c = 0; c < W; ++c) acc[c] = vzero();
      // key by key, each row read start to end (the hardware prefetchers follow rows in order far better than
      // the same loads taken column by column); every accumulator sums its products in the same order as before
      for (int c = 0; c < n; ++c) {
        const float* kr = k + (j0 + jb + c) * ks;
        for (int64_t d = 0; d < dfull; d += W) acc[c] = vfma(vload(qs + d), vload(kr + d), acc[c]);
        if (dfull < D) acc[c] = vfma(vload_masked(qs + dfull, dtail), vload_masked(kr + dfull, dtail), acc[c]);
      }
      vtranspose(acc);
      vf sum = acc[0];
      for (int c = 1; c < W; ++c) sum = vadd(sum, acc[c]);
      vstore(s + jb, sum);
      for (int c = n; c < W; ++c) s[jb + c] = -INFINITY;  // keys past the block
    }
    float mx = m;
    for (int j = 0; j < nk; ++j) mx = std::max(mx, s[j]);
    const float msafe = std::max(-FLT_MAX, mx);  // every score -inf so far: exp(-inf) = 0, not NaN
    const float a = std::exp(m - msafe);
    vf lsum = vzero();
    for (int jb = 0; jb < nk; jb += W) {
      const vf p = vexp(vsub(vload(s + jb), vset1(msafe)));
      lsum = vadd(lsum, p);
      vstore(s + jb, p);
    }
    float part[W];
    vstore(part, lsum);
    float block = 0.0f;
    for (int c = 0; c < W; ++c) block += part[c];
    l = l * a + block;
    m = mx;
    // o = a o + sum_j p_j v_j, four vectors of Dv at a time (independent FMA chains)
    for (int64_t d0 = 0; d0 < Dv; d0 += 4 * W) {
      const int nv = static_cast<int>(std::min<int64_t>(4, (Dv - d0 + W - 1) / W));
      const vmask last = vmask_first(static_cast<int>(std::min<int64_t>(W, Dv - d0 - (nv - 1) * W)));
      vf acc[4];
      for (int u = 0; u < nv; ++u) {
        const float* op = o + d0 + u * W;
        acc[u] = vmul(u == nv - 1 ? vload_masked(op, last) : vload(op), vset1(a));
      }
      for (int j = 0; j < nk; ++j) {
        const vf pj = vset1(s[j]);
        const float* vr = v + (j0 + j) * vs + d0;
        for (int u = 0; u < nv - 1; ++u) acc[u] = vfma(pj, vload(vr + u * W), acc[u]);
        acc[nv - 1] = vfma(pj, vload_masked(vr + (nv - 1) * W, last), acc[nv - 1]);
      }
      for (int u = 0; u < nv - 1; ++u) vstore(o + d0 + u * W, acc[u]);
      vstore_masked(o + d0 + (nv - 1) * W, last, acc[nv - 1]);
    }
  }
  float* dst = out + P.lout.off(bh) + i * P.lout.st;
  const float inv = P.drop_scale / l;
  for (int64_t d = 0; d < Dv; ++d) dst[d] = o[d] * inv;
  m_out[bh * P.Tq + i] = m;
  l_out[bh * P.Tq + i] = l;
}

// ============================================================================ forward tile
// Output rows [i0, i0 + nq) of head bh: online softmax over key blocks of Bc, only over the key
// span [lo(i0), hi(i0 + nq - 1)) that some query of the tile can see. Blocks every query sees
// whole ("full") run unmasked GEMMs; the others (the causal diagonal, window edges) run banded
// GEMMs over W-query panels that skip the keys no query of the panel sees. Writes out rows, and
// the row max m and row sum l (of the undropped exponentials) for backward.
static void forward_tile(const Problem& P, int64_t bh, int64_t i0, int nq, float* ws, float* out, float* m_out,
                         float* l_out) {
  if (nq == 1 && !P.dropout) {
    forward_row(P, bh, i0, ws, out, m_out, l_out);
    return;
  }
  const int64_t D = P.D, Dv = P.Dv, Tq = P.Tq, Tk = P.Tk;
  const int Brp = static_cast<int>(round_up(nq, W));
  const FwdLayout L = fwd_layout(P);
  float* qT = ws + L.qT;      // (D, Brp): q rows transposed, times scale
  float* sT = ws + L.sT;      // (Bc, Brp): scores, then probabilities
  float* oT = ws + L.oT;      // (Dv, Brp): output accumulator
  float* m = ws + L.m;        // (Brp,) running max
  float* l = ws + L.l;        // (Brp,) running sum
  float* alpha = ws + L.alpha;
  int* lo = reinterpret_cast<int*>(ws + L.lo);
  int* hi = reinterpret_cast<int*>(ws + L.hi);

  const int64_t qs = P.lq.st, ks = P.lk.st, vs = P.lv.st, os = P.lout.st;  // row strides
  const float* q = P.q + P.lq.off(bh) + i0 * qs;
  const float* k = P.k + P.lk.off(bh);
  const float* v = P.v + P.lv.off(bh);
  for (int d = 0; d < D; ++d) {
    float* row = qT + d * Brp;
    for (int c = 0; c < nq; ++c) row[c] = q[c * qs + d] * P.scale;
    for (int c = nq; c < Brp; ++c) row[c] = 0.0f;
  }
  for (int c = 0; c < Brp; ++c) {
    lo[c] = c < nq ? P.lo[i0 + c] : 1;  // padding columns see nothing (lo > hi)
    hi[c] = c < nq ? P.hi[i0 + c] : 0;
    m[c] = -INFINITY;
    l[c] = 0.0f;
  }
  std::memset(oT, 0, sizeof(float) * Dv * Brp);
  uint64_t off[W];
  if (P.dropout) lane_offsets(off, static_cast<uint64_t>(Tk));

  const int jlo = lo[0], jhi = hi[nq - 1];        // the tile's key span (lo, hi are monotone)
  const int lo_max = lo[nq - 1], hi_min = hi[0];  // keys in [lo_max, hi_min) are visible to every row
  for (int j0 = jlo; j0 < jhi; j0 += P.Bc) {
    const int nk = std::min<int>(P.Bc, jhi - j0);
    // this key block's k and v rows (kr + (j - j0) * ksb: contiguous copies when strided)
    const float* kr = k + j0 * ks;
    const float* vr = v + j0 * vs;
    int64_t ksb = ks, vsb = vs;
    if (P.strided_kv) {
      float* kb = ws + L.kb;
      float* vb = ws + L.vb;
      for (int j = 0; j < nk; ++j) {
        std::memcpy(kb + j * D, kr + j * ks, sizeof(float) * D);
        std::memcpy(vb + j * Dv, vr + j * vs, sizeof(float) * Dv);
      }
      kr = kb, vr = vb, ksb = D, vsb = Dv;
    }
    const bool full = lo_max <= j0 && j0 + nk <= hi_min;
    // rows (keys - j0) that some query among columns [n0, n1) of the tile sees
    auto band = [&](int n0, int n1, int& b, int& e) {
      n1 = std::min(n1, nq);
      if (n0 >= n1) { b = e = 0; return; }
      b = std::min(std::max(lo[n0] - j0, 0), nk);
      e = std::max(std::min(hi[n1 - 1] - j0, nk), b);
    };
    if (full) {
      gemm(sT, Brp, kr, ksb, 1, qT, Brp, nk, Brp, static_cast<int>(D), false);  // S^T = K Q^T
    } else {
      gemm_ex(sT, Brp, kr, ksb, 1, qT, Brp, nk, Brp, static_cast<int>(D), false, 1, band,
              AllKs{static_cast<int>(D)});
    }
    for (int cc = 0; cc < Brp; cc += W) {
      int rb = 0, re = nk;
      if (!full) band(cc, cc + W, rb, re);
      vf mx = vset1(-INFINITY);
      if (full) {
        for (int j = 0; j < nk; ++j) mx = vmax(mx, vload(sT + j * Brp + cc));
      } else {
        for (int j = rb; j < re; ++j) {
          const vf s = vmask_range(vload(sT + j * Brp + cc), -INFINITY, j0 + j, lo + cc, hi + cc);
          vstore(sT + j * Brp + cc, s);
          mx = vmax(mx, s);
        }
      }
      const vf mold = vload(m + cc);
      const vf mnew = vmax(mx, mold);
      const vf msafe = vmax(vset1(-FLT_MAX), mnew);  // a column with nothing visible yet: exp(-inf) = 0
      const vf a = vexp(vsub(mold, msafe));
      vf lsum = vzero();
      for (int j = 0; j < rb; ++j) vstore(sT + j * Brp + cc, vzero());
      for (int j = re; j < nk; ++j) vstore(sT + j * Brp + cc, vzero());
      for (int j = rb; j < re; ++j) {
        vf p = vexp(vsub(vload(sT + j * Brp + cc), msafe));
        lsum = vadd(lsum, p);
        if (P.dropout) {
          const uint64_t idx = static_cast<uint64_t>((bh * Tq + i0 + cc) * Tk + j0 + j);
          p = vmul(p, vkeep(z_of(P.seed, idx), off, P.threshold, 1.0f));
        }
        vstore(sT + j * Brp + cc, p);
      }
      vstore(l + cc, vfma(vload(l + cc), a, lsum));
      vstore(m + cc, mnew);
      vstore(alpha + cc, a);
    }
    if (j0 != jlo) {
      for (int d = 0; d < Dv; ++d)
        for (int cc = 0; cc < Brp; cc += W) vstore(oT + d * Brp + cc, vmul(vload(oT + d * Brp + cc), vload(alpha + cc)));
    }
    if (full) {
      gemm(oT, Brp, vr, 1, vsb, sT, Brp, static_cast<int>(Dv), Brp, nk, true);  // O^T += V^T P^T
    } else {
      gemm_ex(oT, Brp, vr, 1, vsb, sT, Brp, static_cast<int>(Dv), Brp, nk, true, 1,
              AllRows{static_cast<int>(Dv)}, [&](int n0, int n1, int, int, int& b, int& e) { band(n0, n1, b, e); });
    }
  }
  float* o = out + P.lout.off(bh) + i0 * os;
  for (int c = 0; c < nq; ++c) {
    const float inv = P.drop_scale / l[c];
    for (int d = 0; d < Dv; ++d) o[c * os + d] = oT[d * Brp + c] * inv;
    m_out[bh * Tq + i0 + c] = m[c];
    l_out[bh * Tq + i0 + c] = l[c];
  }
}

// ============================================================================ backward task
// Key blocks kt = split, split + nsplit, ... of head bh (FlashAttention-2's loop order: key block
// outer, so dK and dV of a block accumulate in a small buffer and are written once; dQ accumulates
// in a per-task buffer). Probabilities are rebuilt as exp(S - m) / l from the saved row stats.
// Masked (key block, query tile) pairs run banded GEMMs, as in forward.
static void backward_task(const Problem& P, int64_t bh, int split, int nsplit, float* ws, const float* grad,
                          const float* out, const float* m_saved, const float* l_saved, float* dq_dst,
                          int64_t dq_stride, float* dk, float* dv) {
  const int64_t D = P.D, Dv = P.Dv, Tq = P.Tq, Tk = P.Tk;
  const int Br = P.Br, Bc = P.Bc;
  const BwdLayout L = bwd_layout(P);
  const int64_t nqt = (Tq + Br - 1) / Br;
  const int64_t Dp = P.Dp, Dvp = P.Dvp;
  float* qT = ws + L.qT;    // (nqt, D, Br): q^T * scale per query tile
  float* doT = ws + L.doT;  // (nqt, Dv, Br): dO^T per query tile
  float* mrow = ws + L.m;   // (nqt * Br,) row max
  float* linv = ws + L.linv;
  float* Drow = ws + L.Drow;  // rowsum(dO * O)
  int* lo = reinterpret_cast<int*>(ws + L.lo);
  int* hi = reinterpret_cast<int*>(ws + L.hi);
  float* dqa = ws + L.dq;    // (Tq, Dp)
  float* sT = ws + L.sT;     // (Bc, Br): S^T, then P^T (dropped)
  float* dpT = ws + L.dpT;   // (Bc, Br): dP^T, then dS^T
  float* dka = ws + L.dk;    // (Bc, Dp)
  float* dva = ws + L.dv;    // (Bc, Dvp)

  const int64_t qs = P.lq.st, ks = P.lk.st, vs = P.lv.st, os = P.lout.st;  // row strides (grad: os)
  const float* q = P.q + P.lq.off(bh);
  const float* k = P.k + P.lk.off(bh);
  const float* v = P.v + P.lv.off(bh);
  const float* g = grad + P.lout.off(bh);
  const float* o = out + P.lout.off(bh);
  // B operands in natural layout need contiguous rows padded to a multiple of 16 floats
  auto padded = [](float* dst, const float* src, int64_t rows, int64_t width, int64_t stride, int64_t wpad) {
    for (int64_t i = 0; i < rows; ++i) {
      std::memcpy(dst + i * wpad, src + i * stride, sizeof(float) * width);
      std::memset(dst + i * wpad + width, 0, sizeof(float) * (wpad - width));
    }
    return dst;
  };
  const float* qn = P.pad_q ? padded(ws + L.qn, q, Tq, D, qs, Dp) : q;
  const float* kn = P.pad_k ? padded(ws + L.kn, k, Tk, D, ks, Dp) : k;
  const float* gn = P.pad_g ? padded(ws + L.gn, g, Tq, Dv, os, Dvp) : g;
  // k and v as the A operands of S^T = K Q^T and dP^T = V dO^T: contiguous copies when strided
  // (packed qkv), which the GEMMs stream far better than rows 3C apart
  const float* ka = P.pad_k ? kn : k;
  const int64_t ksa = P.pad_k ? Dp : ks;
  const float* va = vs != Dv ? padded(ws + L.vn, v, Tk, Dv, vs, Dv) : v;
  const int64_t vsa = vs != Dv ? Dv : vs;
  for (int64_t t = 0; t < nqt; ++t) {
    float* qt = qT + t * D * Br;
    float* gt = doT + t * Dv * Br;
    for (int c = 0; c < Br; ++c) {
      const int64_t i = t * Br + c;
      const bool valid = i < Tq;
      for (int64_t d = 0; d < D; ++d) qt[d * Br + c] = valid ? q[i * qs + d] * P.scale : 0.0f;
      float dot = 0.0f;
      for (int64_t d = 0; d < Dv; ++d) {
        const float gv = valid ? g[i * os + d] : 0.0f;
        gt[d * Br + c] = gv;
        dot += valid ? gv * o[i * os + d] : 0.0f;
      }
      Drow[i] = dot;
      mrow[i] = valid ? m_saved[bh * Tq + i] : 0.0f;
      linv[i] = valid ? 1.0f / l_saved[bh * Tq + i] : 0.0f;  // padding rows: P = 0
      lo[i] = valid ? P.lo[i] : 1;
      hi[i] = valid ? P.hi[i] : 0;
    }
  }
  std::memset(dqa, 0, sizeof(float) * Tq * Dp);
  uint64_t off[W];
  if (P.dropout) lane_offsets(off, static_cast<uint64_t>(Tk));
  const vf vscale = vset1(P.scale);

  const int64_t nkt = (Tk + Bc - 1) / Bc;
  for (int64_t kt = split; kt < nkt; kt += nsplit) {
    const int j0 = static_cast<int>(kt * Bc);
    const int nk = static_cast<int>(std::min<int64_t>(Bc, Tk - j0));
    const int j1 = j0 + nk;
    std::memset(dka, 0, sizeof(float) * nk * Dp);
    std::memset(dva, 0, sizeof(float) * nk * Dvp);
    // queries that see some key of [j0, j1): hi > j0 and lo < j1 (both monotone in the query)
    const int64_t ia = std::upper_bound(P.hi, P.hi + Tq, j0) - P.hi;
    const int64_t ib = std::lower_bound(P.lo, P.lo + Tq, j1) - P.lo;
    for (int64_t t = ia / Br; t * Br < ib; ++t) {
      const int c0 = static_cast<int>(t * Br);
      const int nq = static_cast<int>(std::min<int64_t>(Br, Tq - c0));
      const bool full = P.lo[c0 + nq - 1] <= j0 && j1 <= P.hi[c0];
      // rows (keys - j0) that some query among columns [n0, n1) of the tile sees
      auto band = [&](int n0, int n1, int& b, int& e) {
        n1 = std::min(n1, nq);
        if (n0 >= n1) { b = e = 0; return; }
        b = std::min(std::max(P.lo[c0 + n0] - j0, 0), nk);
        e = std::max(std::min(P.hi[c0 + n1 - 1] - j0, nk), b);
      };
      // queries (- c0) that see some key among rows [m0, m1) of the block
      auto queries = [&](int, int, int m0, int m1, int& b, int& e) {
        b = static_cast<int>(std::upper_bound(P.hi + c0, P.hi + c0 + nq, j0 + m0) - P.hi) - c0;
        e = static_cast<int>(std::lower_bound(P.lo + c0, P.lo + c0 + nq, j0 + m1) - P.lo) - c0;
      };
      // keys (- j0) that some query among rows [m0, m1) of the tile sees
      auto keys = [&](int, int, int m0, int m1, int& b, int& e) {
        b = P.lo[c0 + m0] - j0;
        e = P.hi[c0 + m1 - 1] - j0;
      };
      const float* qB = qT + t * D * Br;
      const float* gB = doT + t * Dv * Br;
      if (full) {
        gemm(sT, Br, ka + j0 * ksa, ksa, 1, qB, Br, nk, Br, static_cast<int>(D), false);      // S^T = K Q^T
        gemm(dpT, Br, va + j0 * vsa, vsa, 1, gB, Br, nk, Br, static_cast<int>(Dv), false);  // dP^T = V dO^T
      } else {
        gemm_ex(sT, Br, ka + j0 * ksa, ksa, 1, qB, Br, nk, Br, static_cast<int>(D), false, 1, band,
                AllKs{static_cast<int>(D)});
        gemm_ex(dpT, Br, va + j0 * vsa, vsa, 1, gB, Br, nk, Br, static_cast<int>(Dv), false, 1, band,
                AllKs{static_cast<int>(Dv)});
      }
      for (int cc = 0; cc < Br; cc += W) {
        int rb = 0, re = nk;
        if (!full) band(cc, cc + W, rb, re);  // 0 <= rb <= re <= nk
        for (int j = 0; j < rb; ++j) {
          vstore(sT + j * Br + cc, vzero());
          vstore(dpT + j * Br + cc, vzero());
        }
        for (int j = re; j < nk; ++j) {
          vstore(sT + j * Br + cc, vzero());
          vstore(dpT + j * Br + cc, vzero());
        }
        const vf mr = vload(mrow + c0 + cc), li = vload(linv + c0 + cc), dr = vload(Drow + c0 + cc);
        for (int j = rb; j < re; ++j) {
          vf p = vmul(vexp(vsub(vload(sT + j * Br + cc), mr)), li);
          if (!full) p = vmask_range(p, 0.0f, j0 + j, lo + c0 + cc, hi + c0 + cc);
          vf dp = vload(dpT + j * Br + cc);
          vf pd = p;
          if (P.dropout) {
            const uint64_t idx = static_cast<uint64_t>((bh * Tq + c0 + cc) * Tk + j0 + j);
            const vf kp = vkeep(z_of(P.seed, idx), off, P.threshold, P.drop_scale);
            pd = vmul(p, kp);
            dp = vmul(dp, kp);
          }
          vstore(sT + j * Br + cc, pd);                                      // P^T (dropped)
          vstore(dpT + j * Br + cc, vmul(vmul(p, vsub(dp, dr)), vscale));  // dS^T * scale
        }
      }
      const float* gN = gn + int64_t(c0) * Dvp;
      const float* qN = qn + int64_t(c0) * Dp;
      const float* kN = kn + int64_t(j0) * Dp;
      if (full) {
        gemm(dva, Dvp, sT, Br, 1, gN, Dvp, nk, static_cast<int>(Dvp), nq, true);           // dV += P^T dO
        gemm(dka, Dp, dpT, Br, 1, qN, Dp, nk, static_cast<int>(Dp), nq, true);             // dK += dS^T Q
        gemm(dqa + c0 * Dp, Dp, dpT, 1, Br, kN, Dp, nq, static_cast<int>(Dp), nk, true);   // dQ += dS K
      } else {
        gemm_ex(dva, Dvp, sT, Br, 1, gN, Dvp, nk, static_cast<int>(Dvp), nq, true, NVMAX, AllRows{nk}, queries);
        gemm_ex(dka, Dp, dpT, Br, 1, qN, Dp, nk, static_cast<int>(Dp), nq, true, NVMAX, AllRows{nk}, queries);
        gemm_ex(dqa + c0 * Dp, Dp, dpT, 1, Br, kN, Dp, nq, static_cast<int>(Dp), nk, true, NVMAX, AllRows{nq}, keys);
      }
    }
    for (int j = 0; j < nk; ++j) {
      std::memcpy(dk + P.lk.off(bh) + (j0 + j) * ks, dka + j * Dp, sizeof(float) * D);
      std::memcpy(dv + P.lv.off(bh) + (j0 + j) * vs, dva + j * Dvp, sizeof(float) * Dv);
    }
  }
  for (int64_t i = 0; i < Tq; ++i) std::memcpy(dq_dst + i * dq_stride, dqa + i * Dp, sizeof(float) * D);
}
