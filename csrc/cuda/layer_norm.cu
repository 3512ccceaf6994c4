// The CUDA layer_norm family: layer_norm and the fused residual add + layer_norm (add_layer_norm),
// forward and backward (Python side: tinygpt/kernels/cuda/layer_norm.py, same signatures as
// reference.py; saved = (mean, rstd) for layer_norm and (s, mean, rstd) for add_layer_norm, mean and
// rstd float32 of shape (N,), as the CPU kernels of csrc/cpu/layer_norm.cpp).
//
// Forward, per row of C: s = x (+ residual, written out), mean, then the corrected two-pass
// variance from registers: d1 = sum(s - mean), d2 = sum((s - mean)^2), mean += d1 / C,
// var = (d2 - d1^2 / C) / C (robust to a large common offset), rstd = 1 / sqrt(var + eps),
// y = (s - mean) rstd w + b.
// Backward, per row: xhat = (s - mean) rstd, dxhat = g w, a = mean(dxhat), b = mean(dxhat xhat),
// dx = rstd (dxhat - a - xhat b) (+ grad_s for the fused op). dweight = sum_rows g xhat and
// dbias = sum_rows g without float atomics: the rows are split into `chunks` blocks, each block
// writes its partial sums to row `blockIdx.x` of a (chunks, C) workspace, and a second small
// kernel adds the chunks in order (deterministic results for a given chunk count).
//
// Two kernel shapes:
//   warp per row (C % 4 == 0, 16-byte aligned pointers, C <= 1024): a row lives in registers as
//     NV float4 per lane (NV = ceil(C / 128), instantiated for 1, 2, 3, 4, 6, 8), one read of x
//     (and residual), one write of y (and s); warp shuffles only. 8 warps per block. Backward
//     accumulates dweight/dbias per lane in registers over the block's rows, then adds the 8 warps'
//     sums in shared memory in warp order.
//   block per row (anything else): 256 threads stride over the row; passes re-read the row from
//     L1/L2; the block's dweight/dbias partials accumulate in its own workspace row (each column
//     owned by one thread: no races).
// Wide rows (values beyond ~1e19, where the float sum of squares overflows): the forward detects
// one by a non-finite d2 (uniform over the row's warp or block) and recomputes it alone in float64
// (wide_row_forward); the backward detects one by a saved rstd below rstd_min(C) (where v - mean
// could overflow or rstd is subnormal) and recomputes its statistics in float64, then runs the
// float path on the row scaled by a power of two (exact), with sc = 1 for every other row, so
// ordinary rows keep their results bit for bit.
// Napkin math (H100, 3.35 TB/s HBM3): forward at N = 16384, C = 768 moves 2 x 50 MB -> ~30 us at
// 100%; the target is >= 80% of a device-to-device copy. Backward reads g and x, writes dx: 1.5x.
#include <cuda_runtime.h>

#include <cstdint>

#include "common.h"
#include "cuda/launch.cuh"
#include "registry.h"

namespace tinygpt {
namespace cuda_layer_norm {
namespace {

constexpr int kWarps = 8;  // warps per block in the warp-per-row kernels
constexpr int kBlock = 256;
// Blocks per SM the forward warp kernels are compiled for (main's occupancy before the wide-row path):
// the cold wide-row call and its float64 registers must not lower the occupancy of ordinary launches.
template <int NV> constexpr int kFwdMinBlocks = NV <= 3 ? 8 : NV <= 6 ? 6 : 4;

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// Sum over a block of kBlock threads; every thread gets the result. `red` holds kBlock / 32 floats.
__device__ __forceinline__ float block_sum(float v, float* red) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  v = warp_sum(v);
  __syncthreads();  // red is reused across calls
  if (lane == 0) red[warp] = v;
  __syncthreads();
  float t = 0.0f;
#pragma unroll
  for (int w = 0; w < kBlock / 32; ++w) t += red[w];
  return t;
}

// ------------------------------------------------------------------------------ wide rows (cold)
// A sum over the threads of one row: its warp (kWarp) or the block of kBlock threads (red: kBlock / 32
// doubles of shared memory).
template <bool kWarp>
__device__ __forceinline__ double row_sum64(double v, double* red) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  if (kWarp) return v;
  __syncthreads();
  if (threadIdx.x % 32 == 0) red[threadIdx.x / 32] = v;
  __syncthreads();
  double t = 0.0;
  for (int w = 0; w < kBlock / 32; ++w) t += red[w];
  return t;
}

// float64 mean and 1/sqrt(var + eps) of row v = x (+ res) of C floats, two passes.
template <bool kWarp>
__device__ __forceinline__ void row_stats64(const float* x, const float* res, int C, double eps, double* red,
                                            double* mean, double* rstd) {
  const int t = kWarp ? threadIdx.x % 32 : threadIdx.x, nt = kWarp ? 32 : kBlock;
  double sum = 0.0;
  for (int c = t; c < C; c += nt) sum += res != nullptr ? x[c] + res[c] : x[c];
  *mean = row_sum64<kWarp>(sum, red) / C;
  double ss = 0.0;
  for (int c = t; c < C; c += nt) {
    const double d = (res != nullptr ? x[c] + res[c] : x[c]) - *mean;
    ss += d * d;
  }
  *rstd = 1.0 / sqrt(row_sum64<kWarp>(ss, red) / C + eps);
}

// The forward of one wide row in float64 (x, res, y point at the row; s_out was already written).
template <bool kWarp>
__device__ __noinline__ void wide_row_forward(const float* x, const float* res, const float* w, const float* b,
                                              float* y, float* mean_out, float* rstd_out, int C, float eps,
                                              double* red) {
  double mean, rstd;
  row_stats64<kWarp>(x, res, C, eps, red, &mean, &rstd);
  const int t = kWarp ? threadIdx.x % 32 : threadIdx.x, nt = kWarp ? 32 : kBlock;
  for (int c = t; c < C; c += nt) {
    double o = ((res != nullptr ? x[c] + res[c] : x[c]) - mean) * rstd;
    if (w != nullptr) o *= w[c];
    if (b != nullptr) o += b[c];
    y[c] = static_cast<float>(o);
  }
  if (t == 0) {
    *mean_out = static_cast<float>(mean);
    *rstd_out = static_cast<float>(rstd);
  }
}

// What the backward uses for a row: xhat = (v * sc - mu) * rs and dx = rso * (...). An ordinary row
// has sc = 1, mu = mean, rs = rso = rstd (the saved values).
struct RowScale {
  float mu, rs, sc, rso;
};

// A wide row's RowScale: statistics recomputed in float64 from v (eps is far below its variance),
// v scaled by sc = 2^-k with 2^k ~ std (exact), so v * sc - mu and xhat stay in range.
template <bool kWarp>
__device__ __noinline__ RowScale wide_row_scale(const float* v, int C, double* red) {
  double mean, rstd;
  row_stats64<kWarp>(v, nullptr, C, 0.0, red, &mean, &rstd);
  const int k = ilogb(1.0 / rstd);
  const double sc = ldexp(1.0, -k);
  return {static_cast<float>(mean * sc), static_cast<float>(rstd / sc), static_cast<float>(sc),
          static_cast<float>(rstd)};
}

// The smallest saved rstd the float backward handles: a normal float, and |v - mean| <= std sqrt(C)
// within half of float's range.
__device__ __forceinline__ float rstd_min(int C) {
  return fmaxf(1.17549435e-38f, 2.0f * sqrtf(static_cast<float>(C)) / 3.40282347e+38f);
}

__device__ __forceinline__ float4 ld4(const float* p, int i) {
  return __ldg(reinterpret_cast<const float4*>(p) + i);
}

// ------------------------------------------------------------------------------ forward
template <int NV>
__global__ void __launch_bounds__(kWarps * 32, kFwdMinBlocks<NV>)
    ln_forward_warp(const float* __restrict__ x, const float* __restrict__ res,
                    const float* __restrict__ w, const float* __restrict__ b, float* __restrict__ s_out,
                    float* __restrict__ y, float* __restrict__ mean_out, float* __restrict__ rstd_out,
                    int N, int C, float eps) {
  const int lane = threadIdx.x % 32;
  const int row = blockIdx.x * kWarps + threadIdx.x / 32;
  if (row >= N) return;
  const int C4 = C / 4;
  const long long off4 = static_cast<long long>(row) * C4;
  float4 v[NV];
  float sum = 0.0f;
#pragma unroll
  for (int i = 0; i < NV; ++i) {
    const int c = lane + 32 * i;
    v[i] = make_float4(0.f, 0.f, 0.f, 0.f);
    if (c < C4) {
      v[i] = __ldg(reinterpret_cast<const float4*>(x) + off4 + c);
      if (res != nullptr) {
        const float4 r = __ldg(reinterpret_cast<const float4*>(res) + off4 + c);
        v[i].x += r.x; v[i].y += r.y; v[i].z += r.z; v[i].w += r.w;
        reinterpret_cast<float4*>(s_out)[off4 + c] = v[i];
      }
      sum += (v[i].x + v[i].y) + (v[i].z + v[i].w);
    }
  }
  const float inv_c = 1.0f / static_cast<float>(C);
  float mean = warp_sum(sum) * inv_c;
  float d1 = 0.0f, d2 = 0.0f;
#pragma unroll
  for (int i = 0; i < NV; ++i) {
    if (lane + 32 * i < C4) {
      const float a = v[i].x - mean, bb = v[i].y - mean, c = v[i].z - mean, d = v[i].w - mean;
      d1 += (a + bb) + (c + d);
      d2 += (a * a + bb * bb) + (c * c + d * d);
    }
  }
  d1 = warp_sum(d1);
  d2 = warp_sum(d2);
  if (!isfinite(d2)) {  // a wide row (the same d2 in every lane)
    const long long off = static_cast<long long>(row) * C;
    wide_row_forward<true>(x + off, res != nullptr ? res + off : nullptr, w, b, y + off, mean_out + row,
                           rstd_out + row, C, eps, nullptr);
    return;
  }
  const float var = fmaxf((d2 - d1 * d1 * inv_c) * inv_c, 0.0f);
  mean += d1 * inv_c;
  const float rstd = 1.0f / sqrtf(var + eps);
#pragma unroll
  for (int i = 0; i < NV; ++i) {
    const int c = lane + 32 * i;
    if (c < C4) {
      float4 o = make_float4((v[i].x - mean) * rstd, (v[i].y - mean) * rstd, (v[i].z - mean) * rstd,
                             (v[i].w - mean) * rstd);
      if (w != nullptr) {
        const float4 wv = ld4(w, c);
        o.x *= wv.x; o.y *= wv.y; o.z *= wv.z; o.w *= wv.w;
      }
      if (b != nullptr) {
        const float4 bv = ld4(b, c);
        o.x += bv.x; o.y += bv.y; o.z += bv.z; o.w += bv.w;
      }
      reinterpret_cast<float4*>(y)[off4 + c] = o;
    }
  }
  if (lane == 0) {
    mean_out[row] = mean;
    rstd_out[row] = rstd;
  }
}

__global__ void __launch_bounds__(kBlock)
    ln_forward_block(const float* __restrict__ x, const float* __restrict__ res,
                     const float* __restrict__ w, const float* __restrict__ b, float* s_out,
                     float* __restrict__ y, float* __restrict__ mean_out, float* __restrict__ rstd_out,
                     int N, int C, float eps) {
  __shared__ float red[kBlock / 32];
  __shared__ double red64[kBlock / 32];
  const int row = blockIdx.x;
  if (row >= N) return;
  const long long off = static_cast<long long>(row) * C;
  // Pass 1: s (written out for the fused op; this thread re-reads only its own writes) and sum.
  const float* src = res != nullptr ? s_out : x;
  float sum = 0.0f;
  for (int c = threadIdx.x; c < C; c += kBlock) {
    float v = x[off + c];
    if (res != nullptr) {
      v += res[off + c];
      s_out[off + c] = v;
    }
    sum += v;
  }
  const float inv_c = 1.0f / static_cast<float>(C);
  float mean = block_sum(sum, red) * inv_c;
  float d1 = 0.0f, d2 = 0.0f;
  for (int c = threadIdx.x; c < C; c += kBlock) {
    const float d = src[off + c] - mean;
    d1 += d;
    d2 += d * d;
  }
  d1 = block_sum(d1, red);
  d2 = block_sum(d2, red);
  if (!isfinite(d2)) {  // a wide row (the same d2 in every thread)
    wide_row_forward<false>(x + off, res != nullptr ? res + off : nullptr, w, b, y + off, mean_out + row,
                            rstd_out + row, C, eps, red64);
    return;
  }
  const float var = fmaxf((d2 - d1 * d1 * inv_c) * inv_c, 0.0f);
  mean += d1 * inv_c;
  const float rstd = 1.0f / sqrtf(var + eps);
  for (int c = threadIdx.x; c < C; c += kBlock) {
    float o = (src[off + c] - mean) * rstd;
    if (w != nullptr) o *= w[c];
    if (b != nullptr) o += b[c];
    y[off + c] = o;
  }
  if (threadIdx.x == 0) {
    mean_out[row] = mean;
    rstd_out[row] = rstd;
  }
}

// ------------------------------------------------------------------------------ backward
// Rows [blockIdx.x * rows_per_block, ...) of this block; partial_dw may be null (no weight).
template <int NV>
__global__ void __launch_bounds__(kWarps * 32)
    ln_backward_warp(const float* __restrict__ g, const float* __restrict__ xs,
                     const float* __restrict__ w, const float* __restrict__ mean,
                     const float* __restrict__ rstd, const float* __restrict__ grad_s,
                     float* __restrict__ dx, float* __restrict__ partial_dw,
                     float* __restrict__ partial_db, int N, int C, int rows_per_block) {
  extern __shared__ float4 sred4[];  // 2 * C floats: dweight, dbias of the block
  float* sred = reinterpret_cast<float*>(sred4);
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int C4 = C / 4;
  const float inv_c = 1.0f / static_cast<float>(C);
  float4 acc_w[NV], acc_b[NV], wv[NV];
#pragma unroll
  for (int i = 0; i < NV; ++i) {
    acc_w[i] = make_float4(0.f, 0.f, 0.f, 0.f);
    acc_b[i] = make_float4(0.f, 0.f, 0.f, 0.f);
    wv[i] = make_float4(1.f, 1.f, 1.f, 1.f);
    if (w != nullptr && lane + 32 * i < C4) wv[i] = ld4(w, lane + 32 * i);
  }
  const int r_begin = blockIdx.x * rows_per_block;
  const int r_end = min(N, r_begin + rows_per_block);
  const float rs_min = rstd_min(C);
  for (int row = r_begin + warp; row < r_end; row += kWarps) {
    const long long off4 = static_cast<long long>(row) * C4;
    RowScale sr = {mean[row], rstd[row], 1.0f, rstd[row]};
    if (sr.rs < rs_min) sr = wide_row_scale<true>(xs + off4 * 4, C, nullptr);  // the same in every lane
    const float mu = sr.mu, rs = sr.rs, sc = sr.sc, rso = sr.rso;
    float4 xh[NV], dh[NV];
    float sa = 0.0f, sb = 0.0f;
#pragma unroll
    for (int i = 0; i < NV; ++i) {
      const int c = lane + 32 * i;
      xh[i] = make_float4(0.f, 0.f, 0.f, 0.f);
      dh[i] = make_float4(0.f, 0.f, 0.f, 0.f);
      if (c < C4) {
        const float4 xv = __ldg(reinterpret_cast<const float4*>(xs) + off4 + c);
        const float4 gv = __ldg(reinterpret_cast<const float4*>(g) + off4 + c);
        xh[i] = make_float4((xv.x * sc - mu) * rs, (xv.y * sc - mu) * rs, (xv.z * sc - mu) * rs,
                            (xv.w * sc - mu) * rs);
        dh[i] = make_float4(gv.x * wv[i].x, gv.y * wv[i].y, gv.z * wv[i].z, gv.w * wv[i].w);
        acc_b[i].x += gv.x; acc_b[i].y += gv.y; acc_b[i].z += gv.z; acc_b[i].w += gv.w;
        acc_w[i].x += gv.x * xh[i].x; acc_w[i].y += gv.y * xh[i].y;
        acc_w[i].z += gv.z * xh[i].z; acc_w[i].w += gv.w * xh[i].w;
        sa += (dh[i].x + dh[i].y) + (dh[i].z + dh[i].w);
        sb += (dh[i].x * xh[i].x + dh[i].y * xh[i].y) + (dh[i].z * xh[i].z + dh[i].w * xh[i].w);
      }
    }
    const float a = warp_sum(sa) * inv_c, bm = warp_sum(sb) * inv_c;
#pragma unroll
    for (int i = 0; i < NV; ++i) {
      const int c = lane + 32 * i;
      if (c < C4) {
        float4 o = make_float4(rso * (dh[i].x - a - xh[i].x * bm), rso * (dh[i].y - a - xh[i].y * bm),
                               rso * (dh[i].z - a - xh[i].z * bm), rso * (dh[i].w - a - xh[i].w * bm));
        if (grad_s != nullptr) {
          const float4 gs = __ldg(reinterpret_cast<const float4*>(grad_s) + off4 + c);
          o.x += gs.x; o.y += gs.y; o.z += gs.z; o.w += gs.w;
        }
        reinterpret_cast<float4*>(dx)[off4 + c] = o;
      }
    }
  }
  // The block's column sums: warps add their registers into shared memory in warp order.
  float* sw = sred;
  float* sb = sred + C;
  for (int wv_i = 0; wv_i < kWarps; ++wv_i) {
    if (warp == wv_i) {
#pragma unroll
      for (int i = 0; i < NV; ++i) {
        const int c = lane + 32 * i;
        if (c < C4) {
          float4* pw = reinterpret_cast<float4*>(sw) + c;
          float4* pb = reinterpret_cast<float4*>(sb) + c;
          if (wv_i == 0) {
            *pw = acc_w[i];
            *pb = acc_b[i];
          } else {
            float4 t = *pw;
            t.x += acc_w[i].x; t.y += acc_w[i].y; t.z += acc_w[i].z; t.w += acc_w[i].w;
            *pw = t;
            t = *pb;
            t.x += acc_b[i].x; t.y += acc_b[i].y; t.z += acc_b[i].z; t.w += acc_b[i].w;
            *pb = t;
          }
        }
      }
    }
    __syncthreads();
  }
  const long long poff = static_cast<long long>(blockIdx.x) * C;
  for (int c = threadIdx.x; c < C; c += kWarps * 32) {
    if (partial_dw != nullptr) partial_dw[poff + c] = sw[c];
    partial_db[poff + c] = sb[c];
  }
}

__global__ void __launch_bounds__(kBlock)
    ln_backward_block(const float* __restrict__ g, const float* __restrict__ xs,
                      const float* __restrict__ w, const float* __restrict__ mean,
                      const float* __restrict__ rstd, const float* __restrict__ grad_s,
                      float* __restrict__ dx, float* __restrict__ partial_dw,
                      float* __restrict__ partial_db, int N, int C, int rows_per_block) {
  __shared__ float red[kBlock / 32];
  __shared__ double red64[kBlock / 32];
  const long long poff = static_cast<long long>(blockIdx.x) * C;
  for (int c = threadIdx.x; c < C; c += kBlock) {  // this block's workspace row, owned per column
    if (partial_dw != nullptr) partial_dw[poff + c] = 0.0f;
    partial_db[poff + c] = 0.0f;
  }
  const float inv_c = 1.0f / static_cast<float>(C);
  const int r_begin = blockIdx.x * rows_per_block;
  const int r_end = min(N, r_begin + rows_per_block);
  const float rs_min = rstd_min(C);
  for (int row = r_begin; row < r_end; ++row) {
    const long long off = static_cast<long long>(row) * C;
    RowScale sr = {mean[row], rstd[row], 1.0f, rstd[row]};
    if (sr.rs < rs_min) sr = wide_row_scale<false>(xs + off, C, red64);  // the same in every thread
    const float mu = sr.mu, rs = sr.rs, sc = sr.sc, rso = sr.rso;
    float sa = 0.0f, sb = 0.0f;
    for (int c = threadIdx.x; c < C; c += kBlock) {
      const float xh = (xs[off + c] * sc - mu) * rs;
      const float gv = g[off + c];
      const float dh = w != nullptr ? gv * w[c] : gv;
      sa += dh;
      sb += dh * xh;
      if (partial_dw != nullptr) partial_dw[poff + c] += gv * xh;
      partial_db[poff + c] += gv;
    }
    const float a = block_sum(sa, red) * inv_c;
    const float bm = block_sum(sb, red) * inv_c;
    for (int c = threadIdx.x; c < C; c += kBlock) {
      const float xh = (xs[off + c] * sc - mu) * rs;
      const float gv = g[off + c];
      const float dh = w != nullptr ? gv * w[c] : gv;
      float o = rso * (dh - a - xh * bm);
      if (grad_s != nullptr) o += grad_s[off + c];
      dx[off + c] = o;
    }
  }
}

// out[c] = sum over chunks of partial[chunk, c], in chunk order.
__global__ void ln_finish_kernel(const float* __restrict__ partial, float* __restrict__ out,
                                 int chunks, int C) {
  const int c = blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= C) return;
  float s = 0.0f;
  for (int k = 0; k < chunks; ++k) s += partial[static_cast<long long>(k) * C + c];
  out[c] = s;
}

inline bool aligned16(std::uintptr_t p) { return p % 16 == 0; }  // 0 (absent) counts as aligned

// NV for the warp kernels, or 0 for the block kernel.
int warp_nv(int C, bool aligned) {
  if (!aligned || C % 4 != 0 || C > 1024) return 0;
  const int nv = (C / 4 + 31) / 32;
  if (nv <= 4) return nv;  // 1, 2, 3, 4
  return nv <= 6 ? 6 : 8;
}

}  // namespace
}  // namespace cuda_layer_norm
}  // namespace tinygpt

namespace tinygpt {
namespace cuda {
namespace {

using namespace cuda_layer_norm;
using cuda_launch::ptr;

// ------------------------------------------------------------------------------ launchers
void layer_norm_forward(std::uintptr_t y, std::uintptr_t s_out, std::uintptr_t mean,
                               std::uintptr_t rstd, std::uintptr_t x, std::uintptr_t residual,
                               std::uintptr_t weight, std::uintptr_t bias, int N, int C, float eps,
                               std::uintptr_t stream) {
  TG_CHECK(N >= 0 && C >= 1, "layer_norm_forward: bad size N=", N, ", C=", C);
  TG_CHECK((residual == 0) == (s_out == 0),
           "layer_norm_forward: residual and s_out must be given together");
  if (N == 0) return;
  cudaStream_t st = reinterpret_cast<cudaStream_t>(stream);
  const bool aligned = aligned16(y) && aligned16(s_out) && aligned16(x) && aligned16(residual) &&
                       aligned16(weight) && aligned16(bias);
  const int nv = warp_nv(C, aligned);
  const dim3 grid_w((N + kWarps - 1) / kWarps);
#define TG_LN_FWD(NVV)                                                                        \
  ln_forward_warp<NVV><<<grid_w, kWarps * 32, 0, st>>>(                                      \
      ptr<const float*>(x), ptr<const float*>(residual), ptr<const float*>(weight),            \
      ptr<const float*>(bias), ptr<float*>(s_out), ptr<float*>(y), ptr<float*>(mean),          \
      ptr<float*>(rstd), N, C, eps)
  switch (nv) {
    case 1: TG_LN_FWD(1); break;
    case 2: TG_LN_FWD(2); break;
    case 3: TG_LN_FWD(3); break;
    case 4: TG_LN_FWD(4); break;
    case 6: TG_LN_FWD(6); break;
    case 8: TG_LN_FWD(8); break;
    default:
      ln_forward_block<<<N, kBlock, 0, st>>>(ptr<const float*>(x), ptr<const float*>(residual),
                                             ptr<const float*>(weight), ptr<const float*>(bias),
                                             ptr<float*>(s_out), ptr<float*>(y), ptr<float*>(mean),
                                             ptr<float*>(rstd), N, C, eps);
  }
#undef TG_LN_FWD
  TG_CUDA_CHECK_LAUNCH();
}

void layer_norm_backward(std::uintptr_t dx, std::uintptr_t dweight, std::uintptr_t dbias,
                                std::uintptr_t partial, std::uintptr_t grad, std::uintptr_t xs,
                                std::uintptr_t weight, std::uintptr_t mean, std::uintptr_t rstd,
                                std::uintptr_t grad_s, int N, int C, int chunks,
                                std::uintptr_t stream) {
  TG_CHECK(N >= 0 && C >= 1, "layer_norm_backward: bad size N=", N, ", C=", C);
  TG_CHECK(chunks >= 1 && chunks <= 65535, "layer_norm_backward: chunks must be in [1, 65535], got ",
           chunks);
  TG_CHECK((weight == 0) == (dweight == 0),
           "layer_norm_backward: weight and dweight must be given together");
  cudaStream_t st = reinterpret_cast<cudaStream_t>(stream);
  // Workspace: (chunks, C) partial dbias, then (chunks, C) partial dweight when there is a weight.
  float* pdb = ptr<float*>(partial);
  float* pdw = weight != 0 ? pdb + static_cast<long long>(chunks) * C : nullptr;
  const int rows_per_block = N == 0 ? 1 : (N + chunks - 1) / chunks;
  const bool aligned = aligned16(dx) && aligned16(grad) && aligned16(xs) && aligned16(weight) &&
                       aligned16(grad_s);
  const int nv = warp_nv(C, aligned);
#define TG_LN_BWD(NVV)                                                                        \
  ln_backward_warp<NVV><<<chunks, kWarps * 32, 2 * C * sizeof(float), st>>>(                  \
      ptr<const float*>(grad), ptr<const float*>(xs), ptr<const float*>(weight),               \
      ptr<const float*>(mean), ptr<const float*>(rstd), ptr<const float*>(grad_s),             \
      ptr<float*>(dx), pdw, pdb, N, C, rows_per_block)
  switch (nv) {
    case 1: TG_LN_BWD(1); break;
    case 2: TG_LN_BWD(2); break;
    case 3: TG_LN_BWD(3); break;
    case 4: TG_LN_BWD(4); break;
    case 6: TG_LN_BWD(6); break;
    case 8: TG_LN_BWD(8); break;
    default:
      ln_backward_block<<<chunks, kBlock, 0, st>>>(
          ptr<const float*>(grad), ptr<const float*>(xs), ptr<const float*>(weight),
          ptr<const float*>(mean), ptr<const float*>(rstd), ptr<const float*>(grad_s),
          ptr<float*>(dx), pdw, pdb, N, C, rows_per_block);
  }
#undef TG_LN_BWD
  TG_CUDA_CHECK_LAUNCH();
  const int fb = (C + 255) / 256;
  ln_finish_kernel<<<fb, 256, 0, st>>>(pdb, ptr<float*>(dbias), chunks, C);
  TG_CUDA_CHECK_LAUNCH();
  if (pdw != nullptr) {
    ln_finish_kernel<<<fb, 256, 0, st>>>(pdw, ptr<float*>(dweight), chunks, C);
    TG_CUDA_CHECK_LAUNCH();
  }
}

}  // namespace

#ifndef __CUDA_ARCH__  // host pass only (registry.h)
void bind_layer_norm(py::module_& m) {
  const auto nogil = py::call_guard<py::gil_scoped_release>();
  m.def("layer_norm_forward", &layer_norm_forward, py::arg("y"), py::arg("s_out"), py::arg("mean"), py::arg("rstd"),
        py::arg("x"), py::arg("residual"), py::arg("weight"), py::arg("bias"), py::arg("N"), py::arg("C"),
        py::arg("eps"), py::arg("stream"), nogil,
        "layer_norm (of x + residual when residual != 0, writing s_out) over rows of C.");
  m.def("layer_norm_backward", &layer_norm_backward, py::arg("dx"), py::arg("dweight"), py::arg("dbias"),
        py::arg("partial"), py::arg("grad"), py::arg("xs"), py::arg("weight"), py::arg("mean"), py::arg("rstd"),
        py::arg("grad_s"), py::arg("N"), py::arg("C"), py::arg("chunks"), py::arg("stream"), nogil,
        "layer_norm backward (+ grad_s when != 0); dweight/dbias via a chunked workspace.");
}
#endif

}  // namespace cuda
}  // namespace tinygpt
