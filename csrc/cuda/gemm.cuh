// The CUDA GEMM engine behind linear.cu: a tiled tensor-core GEMM (WMMA) with fused bias / GELU
// epilogues and split-K, for the three operand layouts of a linear layer's products. Included by
// linear.cu only (it defines kernels).
//
//   C (M x N) = A (M x K) . B (K x N), fp32 in memory, fp32 accumulate; operand layouts:
//     A "K-major" (row-major M x K, lda = K)   or "M-major" (stored K x M, lda = M: A = stored^T)
//     B "K-major" (stored N x K, ldb = K: B = stored^T) or "N-major" (row-major K x N, ldb = N)
//   linear forward  y  = x  W^T : A = x  (rows, in)  K-major, B = W (out, in)  K-major   ("NT")
//   dx = dY W                   : A = dY (rows, out) K-major, B = W (out, in)  N-major   ("NN")
//   dW = dY^T x                 : A = dY (rows, out) M-major, B = x (rows, in) N-major   ("TN")
//
// Precision (one kernel template, picked per call by tinygpt.kernels.policy.set_matmul_precision):
//   kTF32  inputs rounded to TF32 (cvt.rna: 10-bit mantissa) in the fragments; m16n16k8 MMAs.
//   kFP32  "3xTF32": a = a_hi + a_lo with a_hi = tf32(a), a_lo = tf32(a - a_hi) (same for b);
//          acc += a_lo b_hi + a_hi b_lo + a_hi b_hi. ~22 significant bits per product (the dropped
//          a_lo b_lo term is < 2^-22 |ab|), i.e. fp32-class results at 3x the TF32 MMA count,
//          which on H100 (495 dense TF32 TFLOP/s vs 67 FP32) is still ~2.5x the FFMA peak.
//   kBF16  fp32 arrays rounded to bf16 (round-to-nearest-even) when the tile is stored to shared
//          memory; m16n16k16 MMAs. The arrays stay fp32 (the model keeps fp32 master weights and
//          activations; a bf16 copy would cost a separate pass), so bf16 halves shared-memory
//          traffic and doubles the MMA rate but not the global traffic.
//
// Tiling. Block tile BM x BN x BK (BK = 32 floats = one 128-byte line per tile row):
//   large: 128 x 128, 8 warps as 2 (M) x 4 (N), warp tile 64 x 32 = 4 x 2 fragments of 16 x 16.
//   small:  64 x  64, 4 warps as 2 x 2, warp tile 32 x 32 (used when the large tiling would leave
//           SMs idle: fewer blocks than 132 SMs, e.g. rows = 768, out = 768 -> 36 large tiles).
//   Shared-memory tiles keep the global layout (contiguous dimension contiguous, padded by 4 floats
//   / 8 bf16 against bank conflicts); WMMA's row/col_major fragments absorb the transposes.
//   TF32/FP32: a 3-stage cp.async pipeline (16-byte copies when the contiguous dimension is a
//   multiple of 4 and the pointers are 16-byte aligned; 4-byte copies otherwise), zero-filled
//   outside M, N, K so edges need no special code in the MMA loop.
//   BF16: register-staged double buffering (global loads for tile k+1 issued before the MMAs on
//   tile k, converted and stored after them), as cp.async cannot convert.
// Epilogue: the accumulators go through shared memory (reusing the pipeline's) so that threads
//   write whole rows: out = acc + bias, and for linear_gelu also y = gelu_tanh(out) (out is the
//   saved pre-activation h), float4 stores when N % 4 == 0.
// Napkin math (H100 SXM, rows 16384, C 768 -> 3072): 2*16384*768*3072 = 77 GFLOP; at ~60% of the
//   dense TF32 peak (~300 TFLOP/s) ~0.26 ms; global traffic per 128x128 tile per k-step is
//   2 * 128 * 32 * 4 B for 2 * 128 * 128 * 32 FLOP (64 FLOP/B), above the 495/3.35 ~ 150 FLOP/B
//   ridge only thanks to L2 reuse; hence the large tiles.
// Split-K for dW (K = rows up to 16384, but few output tiles: 768 x 768 is 36 large tiles for 132
//   SMs): blockIdx.z takes a range of k-tiles and writes its own (M, N) slice of a workspace; a
//   second kernel adds the slices in order (deterministic, no atomics). linear_dw_splits picks the
//   count. The heuristics (tile size switch, splits) and the 3xTF32 cost are NOT YET MEASURED
//   against cuBLAS (see the autotuner in tinygpt/kernels/policy.py).
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <mma.h>

#include <cstdint>
#include <type_traits>

#include "common.h"
#include "cuda/gelu.cuh"
#include "cuda/launch.cuh"

namespace tinygpt {
namespace cuda_gemm {
namespace {  // internal linkage, as for every kernel file

using namespace nvcuda;
using cuda_gelu::gelu_tanh;

constexpr int kTF32 = 0, kFP32 = 1, kBF16 = 2;  // the `precision` argument of the launchers
constexpr int BK = 32;
constexpr int kStages = 3;  // cp.async pipeline depth (TF32 / FP32)

// ------------------------------------------------------------------------------ cp.async helpers
__device__ __forceinline__ unsigned smem_addr(const void* p) {
  return static_cast<unsigned>(__cvta_generic_to_shared(p));
}
// Copies `src_bytes` (0 or 16) and zero-fills the rest of the 16 bytes.
__device__ __forceinline__ void cp_async16(void* dst, const void* src, int src_bytes) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(dst)), "l"(src),
               "r"(src_bytes));
}
__device__ __forceinline__ void cp_async4(void* dst, const void* src, int src_bytes) {
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(smem_addr(dst)), "l"(src),
               "r"(src_bytes));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

// ------------------------------------------------------------------------------ tile geometry
// A tile of TR rows x TC contiguous columns of a row-major global matrix (R x Cc, leading dim ld)
// starting at (r0, c0); in shared memory with leading dimension TC + pad.
template <typename SmemT>
struct Pad {
  static constexpr int value = sizeof(SmemT) == 4 ? 4 : 8;  // 16 bytes either way
};

// cp.async copy of one tile (float shared memory). vec: 16-byte chunks (requires Cc % 4 == 0,
// ld % 4 == 0 and a 16-byte aligned base), else 4-byte copies, each zero-filled outside.
template <int TR, int TC, int THREADS>
__device__ __forceinline__ void load_tile_async(float* s, const float* g, long long ld, int r0,
                                                int c0, int R, int Cc, bool vec) {
  constexpr int SLD = TC + 4;
  constexpr int CHUNKS = TR * TC / 4;
  static_assert(CHUNKS % THREADS == 0, "tile must split evenly over the threads");
#pragma unroll
  for (int it = 0; it < CHUNKS / THREADS; ++it) {
    const int i = it * THREADS + static_cast<int>(threadIdx.x);
    const int r = i / (TC / 4), c = (i % (TC / 4)) * 4;
    const int gr = r0 + r, gc = c0 + c;
    float* dst = s + r * SLD + c;
    if (vec) {
      const bool ok = gr < R && gc < Cc;
      const float* src = ok ? g + gr * ld + gc : g;
      cp_async16(dst, src, ok ? 16 : 0);
    } else {
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const bool ok = gr < R && gc + j < Cc;
        const float* src = ok ? g + gr * ld + gc + j : g;
        cp_async4(dst + j, src, ok ? 4 : 0);
      }
    }
  }
}

// Register staging for the bf16 path: the tile as float4 chunks per thread.
template <int TR, int TC, int THREADS>
struct Staged {
  static constexpr int N = TR * TC / 4 / THREADS;
  float4 v[N];

  __device__ __forceinline__ void load(const float* g, long long ld, int r0, int c0, int R, int Cc,
                                       bool vec) {
#pragma unroll
    for (int it = 0; it < N; ++it) {
      const int i = it * THREADS + static_cast<int>(threadIdx.x);
      const int r = i / (TC / 4), c = (i % (TC / 4)) * 4;
      const int gr = r0 + r, gc = c0 + c;
      float4 x = make_float4(0.f, 0.f, 0.f, 0.f);
      if (gr < R) {
        const float* p = g + gr * ld + gc;
        if (vec) {
          if (gc < Cc) x = __ldg(reinterpret_cast<const float4*>(p));
        } else {
          if (gc < Cc) x.x = __ldg(p);
          if (gc + 1 < Cc) x.y = __ldg(p + 1);
          if (gc + 2 < Cc) x.z = __ldg(p + 2);
          if (gc + 3 < Cc) x.w = __ldg(p + 3);
        }
      }
      v[it] = x;
    }
  }

  __device__ __forceinline__ void store(__nv_bfloat16* s) const {
    constexpr int SLD = TC + 8;
#pragma unroll
    for (int it = 0; it < N; ++it) {
      const int i = it * THREADS + static_cast<int>(threadIdx.x);
      const int r = i / (TC / 4), c = (i % (TC / 4)) * 4;
      __nv_bfloat162 lo = __floats2bfloat162_rn(v[it].x, v[it].y);
      __nv_bfloat162 hi = __floats2bfloat162_rn(v[it].z, v[it].w);
      __nv_bfloat162* d = reinterpret_cast<__nv_bfloat162*>(s + r * SLD + c);  // 8-byte aligned
      d[0] = lo;
      d[1] = hi;
    }
  }
};

// ------------------------------------------------------------------------------ the kernel
// Per precision: shared element type, fragment shape and element type.
template <int P>
struct Prec;
template <>
struct Prec<kTF32> {
  using SmemT = float;
  using FragT = wmma::precision::tf32;
  static constexpr int KF = 8;
};
template <>
struct Prec<kFP32> : Prec<kTF32> {};
template <>
struct Prec<kBF16> {
  using SmemT = __nv_bfloat16;
  using FragT = __nv_bfloat16;
  static constexpr int KF = 16;
};

template <int BM_, int BN_, int WARPS_M_, int WARPS_N_>
struct Tiling {
  static constexpr int BM = BM_, BN = BN_, WARPS_M = WARPS_M_, WARPS_N = WARPS_N_;
  static constexpr int THREADS = 32 * WARPS_M * WARPS_N;
  static constexpr int WM = BM / WARPS_M, WN = BN / WARPS_N;  // warp tile
  static constexpr int FM = WM / 16, FN = WN / 16;            // fragments per warp
};
using Large = Tiling<128, 128, 2, 4>;
using Small = Tiling<64, 64, 2, 2>;

// Shapes of the shared tiles of A and B (rows x contiguous columns) for a layout.
template <class T, bool A_KMAJOR, bool B_KMAJOR>
struct Shapes {
  static constexpr int A_R = A_KMAJOR ? T::BM : BK, A_C = A_KMAJOR ? BK : T::BM;
  static constexpr int B_R = B_KMAJOR ? T::BN : BK, B_C = B_KMAJOR ? BK : T::BN;
};

template <class T, int P, bool A_KMAJOR, bool B_KMAJOR>
constexpr int smem_bytes() {
  using S = Shapes<T, A_KMAJOR, B_KMAJOR>;
  using E = typename Prec<P>::SmemT;
  constexpr int pad = Pad<E>::value;
  constexpr int stage = (S::A_R * (S::A_C + pad) + S::B_R * (S::B_C + pad)) * int(sizeof(E));
  constexpr int stages = P == kBF16 ? 2 : kStages;
  constexpr int pipe = stage * stages;
  constexpr int epi = T::BM * (T::BN + 4) * 4;
  return pipe > epi ? pipe : epi;
}

struct GemmArgs {
  const float* a;
  const float* b;
  float* c;         // M x N row-major (ldc = N); the pre-activation h for the GELU epilogue
  float* gelu_out;  // nullptr, or y = gelu_tanh(c) (M x N)
  const float* bias;  // nullptr or (N,)
  long long lda, ldb;
  int M, N, K;
  int kt_per_split;  // split-K: k-tiles per blockIdx.z (0: one split); c then points at the
                     // (splits, M, N) workspace, bias and gelu_out must be null
  bool vec_a, vec_b, vec_c;
};


template <class T, int P, bool A_KMAJOR, bool B_KMAJOR>
__global__ void __launch_bounds__(T::THREADS) gemm_kernel(GemmArgs args) {
  using Pr = Prec<P>;
  using E = typename Pr::SmemT;
  using FragT = typename Pr::FragT;
  using S = Shapes<T, A_KMAJOR, B_KMAJOR>;
  constexpr int KF = Pr::KF;
  constexpr int PAD = Pad<E>::value;
  constexpr int A_LD = S::A_C + PAD, B_LD = S::B_C + PAD;
  constexpr int A_SIZE = S::A_R * A_LD, B_SIZE = S::B_R * B_LD;
  constexpr int STAGE = A_SIZE + B_SIZE;
  using ALayout = typename std::conditional<A_KMAJOR, wmma::row_major, wmma::col_major>::type;
  using BLayout = typename std::conditional<B_KMAJOR, wmma::col_major, wmma::row_major>::type;

  extern __shared__ __align__(128) unsigned char smem_raw[];
  E* smem = reinterpret_cast<E*>(smem_raw);

  const int m0 = blockIdx.y * T::BM, n0 = blockIdx.x * T::BN;
  const int warp = threadIdx.x / 32;
  const int wm = warp / T::WARPS_N, wn = warp % T::WARPS_N;
  const int M = args.M, N = args.N, K = args.K;
  const int KT_ALL = (K + BK - 1) / BK;
  // This block's k-tiles [kt0, kt0 + KT) (all of them without split-K).
  const int kt0 = args.kt_per_split > 0 ? static_cast<int>(blockIdx.z) * args.kt_per_split : 0;
  const int KT =
      args.kt_per_split > 0 ? max(0, min(KT_ALL, kt0 + args.kt_per_split) - kt0) : KT_ALL;

  wmma::fragment<wmma::accumulator, 16, 16, KF, float> acc[T::FM][T::FN];
#pragma unroll
  for (int i = 0; i < T::FM; ++i)
#pragma unroll
    for (int j = 0; j < T::FN; ++j) wmma::fill_fragment(acc[i][j], 0.0f);

  // Global tile origin of this block's k-tile kt_local for A and B, in (row, col) of the stored
  // matrices.
  auto a_rc = [&](int kt_local, int& r, int& c, int& R, int& C) {
    const int kt = kt0 + kt_local;
    if (A_KMAJOR) { r = m0; c = kt * BK; R = M; C = K; }
    else          { r = kt * BK; c = m0; R = K; C = M; }
  };
  auto b_rc = [&](int kt_local, int& r, int& c, int& R, int& C) {
    const int kt = kt0 + kt_local;
    if (B_KMAJOR) { r = n0; c = kt * BK; R = N; C = K; }
    else          { r = kt * BK; c = n0; R = K; C = N; }
  };

  // MMAs over one k-tile held in shared memory at `as`, `bs`.
  auto compute = [&](const E* as, const E* bs) {
#pragma unroll
    for (int ks = 0; ks < BK / KF; ++ks) {
      wmma::fragment<wmma::matrix_a, 16, 16, KF, FragT, ALayout> fa[T::FM];
      wmma::fragment<wmma::matrix_b, 16, 16, KF, FragT, BLayout> fb[T::FN];
#pragma unroll
      for (int i = 0; i < T::FM; ++i) {
        const int mm = wm * T::WM + i * 16, kk = ks * KF;
        const E* p = A_KMAJOR ? as + mm * A_LD + kk : as + kk * A_LD + mm;
        wmma::load_matrix_sync(fa[i], p, A_LD);
      }
#pragma unroll
      for (int j = 0; j < T::FN; ++j) {
        const int nn = wn * T::WN + j * 16, kk = ks * KF;
        const E* p = B_KMAJOR ? bs + nn * B_LD + kk : bs + kk * B_LD + nn;
        wmma::load_matrix_sync(fb[j], p, B_LD);
      }
      if constexpr (P == kBF16) {
#pragma unroll
        for (int i = 0; i < T::FM; ++i)
#pragma unroll
          for (int j = 0; j < T::FN; ++j) wmma::mma_sync(acc[i][j], fa[i], fb[j], acc[i][j]);
      } else if constexpr (P == kTF32) {
#pragma unroll
        for (int i = 0; i < T::FM; ++i)
#pragma unroll
          for (int t = 0; t < fa[i].num_elements; ++t) fa[i].x[t] = wmma::__float_to_tf32(fa[i].x[t]);
#pragma unroll
        for (int j = 0; j < T::FN; ++j)
#pragma unroll
          for (int t = 0; t < fb[j].num_elements; ++t) fb[j].x[t] = wmma::__float_to_tf32(fb[j].x[t]);
#pragma unroll
        for (int i = 0; i < T::FM; ++i)
#pragma unroll
          for (int j = 0; j < T::FN; ++j) wmma::mma_sync(acc[i][j], fa[i], fb[j], acc[i][j]);
      } else {  // kFP32: 3xTF32
        wmma::fragment<wmma::matrix_a, 16, 16, KF, FragT, ALayout> fa_lo[T::FM];
        wmma::fragment<wmma::matrix_b, 16, 16, KF, FragT, BLayout> fb_lo[T::FN];
#pragma unroll
        for (int i = 0; i < T::FM; ++i)
#pragma unroll
          for (int t = 0; t < fa[i].num_elements; ++t) {
            const float v = fa[i].x[t];
            const float hi = wmma::__float_to_tf32(v);
            fa[i].x[t] = hi;
            fa_lo[i].x[t] = wmma::__float_to_tf32(v - hi);
          }
#pragma unroll
        for (int j = 0; j < T::FN; ++j)
#pragma unroll
          for (int t = 0; t < fb[j].num_elements; ++t) {
            const float v = fb[j].x[t];
            const float hi = wmma::__float_to_tf32(v);
            fb[j].x[t] = hi;
            fb_lo[j].x[t] = wmma::__float_to_tf32(v - hi);
          }
#pragma unroll
        for (int i = 0; i < T::FM; ++i)
#pragma unroll
          for (int j = 0; j < T::FN; ++j) {
            wmma::mma_sync(acc[i][j], fa_lo[i], fb[j], acc[i][j]);  // small terms first
            wmma::mma_sync(acc[i][j], fa[i], fb_lo[j], acc[i][j]);
            wmma::mma_sync(acc[i][j], fa[i], fb[j], acc[i][j]);
          }
      }
    }
  };

  if constexpr (P == kBF16) {
    Staged<S::A_R, S::A_C, T::THREADS> ra;
    Staged<S::B_R, S::B_C, T::THREADS> rb;
    int r, c, R, C;
    if (KT > 0) {
      a_rc(0, r, c, R, C);
      ra.load(args.a, args.lda, r, c, R, C, args.vec_a);
      b_rc(0, r, c, R, C);
      rb.load(args.b, args.ldb, r, c, R, C, args.vec_b);
      ra.store(smem);
      rb.store(smem + A_SIZE);
    }
    __syncthreads();
    for (int kt = 0; kt < KT; ++kt) {
      E* cur = smem + (kt & 1) * STAGE;
      E* nxt = smem + ((kt + 1) & 1) * STAGE;
      const bool more = kt + 1 < KT;
      if (more) {  // global loads in flight during the MMAs below
        a_rc(kt + 1, r, c, R, C);
        ra.load(args.a, args.lda, r, c, R, C, args.vec_a);
        b_rc(kt + 1, r, c, R, C);
        rb.load(args.b, args.ldb, r, c, R, C, args.vec_b);
      }
      compute(cur, cur + A_SIZE);
      if (more) {  // `nxt` was last read in iteration kt - 1, before its closing barrier
        ra.store(nxt);
        rb.store(nxt + A_SIZE);
      }
      __syncthreads();
    }
  } else {
    auto load_stage = [&](int kt) {
      float* st = reinterpret_cast<float*>(smem) + (kt % kStages) * STAGE;
      int r, c, R, C;
      a_rc(kt, r, c, R, C);
      load_tile_async<S::A_R, S::A_C, T::THREADS>(st, args.a, args.lda, r, c, R, C, args.vec_a);
      b_rc(kt, r, c, R, C);
      load_tile_async<S::B_R, S::B_C, T::THREADS>(st + A_SIZE, args.b, args.ldb, r, c, R, C,
                                                  args.vec_b);
    };
#pragma unroll
    for (int s = 0; s < kStages - 1; ++s) {
      if (s < KT) load_stage(s);
      cp_async_commit();  // one group per k-tile, empty past the end: the wait count stays exact
    }
    for (int kt = 0; kt < KT; ++kt) {
      cp_async_wait<kStages - 2>();  // k-tile kt has landed (this thread's copies)
      __syncthreads();               // ... everyone's; and stage (kt - 1) % kStages is free
      if (kt + kStages - 1 < KT) load_stage(kt + kStages - 1);
      cp_async_commit();
      const E* st = smem + (kt % kStages) * STAGE;
      compute(st, st + A_SIZE);
    }
    cp_async_wait<0>();
    __syncthreads();
  }

  // Epilogue through shared memory (the pipeline's buffers are free after the last barrier).
  constexpr int C_LD = T::BN + 4;
  float* cs = reinterpret_cast<float*>(smem_raw);
#pragma unroll
  for (int i = 0; i < T::FM; ++i)
#pragma unroll
    for (int j = 0; j < T::FN; ++j)
      wmma::store_matrix_sync(cs + (wm * T::WM + i * 16) * C_LD + wn * T::WN + j * 16, acc[i][j],
                              C_LD, wmma::mem_row_major);
  __syncthreads();

  const float* bias = args.bias;
  float* out = args.c + static_cast<long long>(blockIdx.z) * M * N;  // z > 0 only with split-K
  float* gout = args.gelu_out;
  if (args.vec_c) {  // N % 4 == 0 and 16-byte aligned outputs / bias
    for (int i = threadIdx.x; i < T::BM * T::BN / 4; i += T::THREADS) {
      const int r = i / (T::BN / 4), cc = (i % (T::BN / 4)) * 4;
      const int gm = m0 + r, gn = n0 + cc;
      if (gm >= M || gn >= N) continue;
      float4 v = *reinterpret_cast<const float4*>(cs + r * C_LD + cc);
      if (bias != nullptr) {
        const float4 bv = __ldg(reinterpret_cast<const float4*>(bias + gn));
        v.x += bv.x; v.y += bv.y; v.z += bv.z; v.w += bv.w;
      }
      const long long off = static_cast<long long>(gm) * N + gn;
      *reinterpret_cast<float4*>(out + off) = v;
      if (gout != nullptr) {
        const float4 y = make_float4(gelu_tanh(v.x), gelu_tanh(v.y), gelu_tanh(v.z), gelu_tanh(v.w));
        *reinterpret_cast<float4*>(gout + off) = y;
      }
    }
  } else {
    for (int i = threadIdx.x; i < T::BM * T::BN; i += T::THREADS) {
      const int r = i / T::BN, cc = i % T::BN;
      const int gm = m0 + r, gn = n0 + cc;
      if (gm >= M || gn >= N) continue;
      float v = cs[r * C_LD + cc];
      if (bias != nullptr) v += __ldg(bias + gn);
      const long long off = static_cast<long long>(gm) * N + gn;
      out[off] = v;
      if (gout != nullptr) gout[off] = gelu_tanh(v);
    }
  }
}

// Split-K: out[i] = sum over splits of ws[split, i], in split order (deterministic).
__global__ void splitk_reduce_kernel(const float* __restrict__ ws, float* __restrict__ out,
                                     long long mn, int splits) {
  const long long stride = static_cast<long long>(gridDim.x) * blockDim.x;
  for (long long i = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x; i < mn;
       i += stride) {
    float s = 0.0f;
    for (int z = 0; z < splits; ++z) s += ws[z * mn + i];
    out[i] = s;
  }
}

// ------------------------------------------------------------------------------ launch plumbing
using cuda_launch::sm_count;
using cuda_launch::ptr;

inline bool aligned16(const void* p) { return reinterpret_cast<std::uintptr_t>(p) % 16 == 0; }

template <class T, int P, bool A_KMAJOR, bool B_KMAJOR>
void launch_one(const GemmArgs& args, cudaStream_t stream) {
  constexpr int bytes = smem_bytes<T, P, A_KMAJOR, B_KMAJOR>();
  auto kernel = gemm_kernel<T, P, A_KMAJOR, B_KMAJOR>;
  // Above 48 KiB dynamic shared memory needs an opt-in, once per kernel and device (a host-side
  // attribute, no synchronisation). Setting it again is harmless, so no lock.
  static int configured_for = -1;
  int dev = 0;
  TG_CUDA_CHECK(cudaGetDevice(&dev));
  if (bytes > 48 * 1024 && configured_for != dev) {
    TG_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes));
    configured_for = dev;
  }
  const int splits = args.kt_per_split > 0
                         ? ((args.K + BK - 1) / BK + args.kt_per_split - 1) / args.kt_per_split
                         : 1;
  const dim3 grid((args.N + T::BN - 1) / T::BN, (args.M + T::BM - 1) / T::BM, splits);
  kernel<<<grid, T::THREADS, bytes, stream>>>(args);
  TG_CUDA_CHECK_LAUNCH();
}

template <int P, bool A_KMAJOR, bool B_KMAJOR>
void launch_tiling(const GemmArgs& args, cudaStream_t stream) {
  const long long large_tiles =
      static_cast<long long>((args.M + 127) / 128) * ((args.N + 127) / 128);
  if (large_tiles >= sm_count())
    launch_one<Large, P, A_KMAJOR, B_KMAJOR>(args, stream);
  else
    launch_one<Small, P, A_KMAJOR, B_KMAJOR>(args, stream);
}

template <bool A_KMAJOR, bool B_KMAJOR>
void launch_gemm(GemmArgs args, int precision, cudaStream_t stream) {
  TG_CHECK(precision == kTF32 || precision == kFP32 || precision == kBF16,
           "gemm: precision must be 0 (tf32), 1 (fp32) or 2 (bf16), got ", precision);
  TG_CHECK(args.M >= 0 && args.N >= 0 && args.K >= 0, "gemm: negative size (", args.M, ", ",
           args.N, ", ", args.K, ")");
  if (args.M == 0 || args.N == 0) return;
  TG_CHECK(args.M <= 65535LL * 64, "gemm: too many rows (", args.M, ")");
  // The contiguous dimension of each stored operand: K (K-major) or M / N.
  const long long a_contig = A_KMAJOR ? args.K : args.M;
  const long long b_contig = B_KMAJOR ? args.K : args.N;
  args.vec_a = a_contig % 4 == 0 && args.lda % 4 == 0 && aligned16(args.a);
  args.vec_b = b_contig % 4 == 0 && args.ldb % 4 == 0 && aligned16(args.b);
  args.vec_c = args.N % 4 == 0 && aligned16(args.c) &&
               (args.gelu_out == nullptr || aligned16(args.gelu_out)) &&
               (args.bias == nullptr || aligned16(args.bias));
  if (args.a == nullptr || args.b == nullptr) args.K = 0;  // nothing to read (K == 0 arrays)
  switch (precision) {
    case kTF32: launch_tiling<kTF32, A_KMAJOR, B_KMAJOR>(args, stream); break;
    case kFP32: launch_tiling<kFP32, A_KMAJOR, B_KMAJOR>(args, stream); break;
    default: launch_tiling<kBF16, A_KMAJOR, B_KMAJOR>(args, stream); break;
  }
}

}  // namespace
}  // namespace cuda_gemm
}  // namespace tinygpt
