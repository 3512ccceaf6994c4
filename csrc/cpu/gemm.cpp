// The CPU GEMM engine behind gemm.h: sgemm (packed, register-blocked, OpenMP-parallel) and the
// vectorised GELU rows its epilogue shares with linear_gelu's backward and F.gelu. linear.cpp and
// gelu.cpp are its users.
//
// Layout: C (M x N) = A (M x K) B (K x N). Packed A: MR-row panels, k-major (panel[k * MR + r]);
// packed B: NR-column panels, k-major (panel[k * NR + c]). The micro-kernels (gemm_tiles.h) are
// written once over the SIMD layer and compiled per instruction set; cpu::isa() picks the copy.
#include "gemm.h"

#include "isa.h"
#if TG_X86_ISAS
#include <immintrin.h>
#endif

#include <algorithm>
#include <array>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <utility>
#include <vector>

#include "parallel.h"
#include "simd.h"

namespace tinygpt {
namespace cpu {
namespace {

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
using GemvFn = void (*)(int, int, int64_t, const float*, int64_t, const float*, int64_t, float*, int64_t, bool,
                        const float*, float*, int64_t);

struct GemmIsa {
  int mr, nr;
  int64_t kc, mc, nc;  // cache blocking: KC (reduction), MC (rows of A per L2 block), NC (columns of B)
  TileFn tile;
  PackAFn pack_a;
  PackBFn pack_b;
  RowsFn gelu;
  GradRowsFn gelu_grad;
  GemvFn gemv;    // gemv_block: up to gemv_width channels of a GEMV of up to gemv_rows rows
  int gemv_width, gemv_rows;
};

// One copy of gemm_tiles.h per instruction set; kGemm is indexed by cpu::Isa.
#define TG_TILES "gemm_tiles.h"
#include "per_isa.h"
#if TG_X86_ISAS
const GemmIsa kGemm[] = {portable::kernels, avx2::kernels, avx512::kernels};
#else
const GemmIsa kGemm[] = {portable::kernels};
#endif

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

// Decode products: at most isa.gemv_rows rows of A, times a B stored as w^T (w's rows contiguous in k,
// a Linear's weight), run as a GEMV over w without packing it: packing would read and write the whole
// weight for the few rows that use it. Threads take contiguous ranges of channel blocks.
void sgemm_gemv(const GemmIsa& isa, int64_t M, int64_t N, int64_t K, const float* a, int64_t lda, const float* w,
                int64_t ldw, float* c, int64_t ldc, bool accumulate, const GemmEpilogue& ep) {
  const int bw = isa.gemv_width;
  const int64_t nblocks = (N + bw - 1) / bw;
  parallel_blocks(nblocks, bw * K, [&](int64_t b0, int64_t b1, int) {
    for (int64_t blk = b0; blk < b1; ++blk) {
      const int64_t j = blk * bw;
      const int n = static_cast<int>(std::min<int64_t>(bw, N - j));
      isa.gemv(static_cast<int>(M), n, K, a, lda, w + j * ldw, ldw, c + j, ldc, accumulate,
               ep.bias == nullptr ? nullptr : ep.bias + j, ep.gelu_out == nullptr ? nullptr : ep.gelu_out + j,
               ep.ld_gelu);
    }
  });
}

void sgemm(int64_t M, int64_t N, int64_t K, const float* a, int64_t rsa, int64_t csa, const float* b,
           int64_t rsb, int64_t csb, float* c, int64_t ldc, bool accumulate, const GemmEpilogue& ep) {
  const GemmIsa& isa = current_gemm();
  if (M <= 0 || N <= 0) return;
  if (K <= 0) {
    fill_rows(M, N, c, ldc, accumulate, ep, isa);
    return;
  }
  // Rows a multiple of 4 KiB apart (K = 3072) share L1 sets: there 8 rows run faster packed (Zen 4, 768 x 3072,
  // 1 thread: 1.18 ms packed, 1.50 ms as a GEMV; at 4 rows the GEMV wins, 0.71 ms against 1.04).
  const int64_t gemv_rows = csb % 1024 == 0 ? std::min(4, isa.gemv_rows) : isa.gemv_rows;
  if (M <= gemv_rows && csa == 1 && rsb == 1) {
    sgemm_gemv(isa, M, N, K, a, rsa, b, csb, c, ldc, accumulate, ep);
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
