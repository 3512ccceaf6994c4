// Warp-per-row helpers shared by the CUDA row kernels (softmax.cu, cross_entropy.cu): warp
// reductions, the online (max, sum of exp) pair, row visitors that load the 16-byte aligned body
// of a row as float4, and the grid size for a grid-stride loop over rows.
//
// A row r of C floats starts at base + r * C, so its alignment varies with r; the visitors take
// the few leading elements up to the next 16-byte boundary one by one, then float4s, then the
// tail. Every array a visitor touches must have the same address modulo 16 (the launchers check
// and fall back to the scalar path, VEC = false, when they do not).
#pragma once

#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <initializer_list>

#include "common.h"
#include "cuda/launch.cuh"

namespace tinygpt {
namespace cuda_rows {

constexpr int kWarpsPerBlock = 8;  // 256 threads: one warp per row, grid-stride over rows

__device__ __forceinline__ float warp_sum(float x) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
  return x;
}

// Adds v to the running (m = max, s = sum exp(x - m)) of a lane. -inf adds nothing (also when
// m is still -inf, where exp(v - m) would be nan); nan propagates into s.
__device__ __forceinline__ void online_add(float& m, float& s, float v) {
  if (v > m) {
    s = s * expf(m - v) + 1.0f;  // m = -inf: s is 0 and exp(-inf) = 0
    m = v;
  } else if (v != -INFINITY) {
    s += expf(v - m);
  }
}

// Merges (m2, s2) into (m, s).
__device__ __forceinline__ void online_merge(float& m, float& s, float m2, float s2) {
  const float mn = fmaxf(m, m2);
  if (mn == -INFINITY) {  // both empty so far
    s += s2;              // 0, or nan if either carried one
    return;
  }
  s = (m == -INFINITY ? 0.0f : s * expf(m - mn)) + (m2 == -INFINITY ? 0.0f : s2 * expf(m2 - mn));
  m = mn;
}

// The (max, sum exp) of a row from each lane's pair, on every lane.
__device__ __forceinline__ void warp_online(float& m, float& s) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const float m2 = __shfl_xor_sync(0xffffffffu, m, o);
    const float s2 = __shfl_xor_sync(0xffffffffu, s, o);
    online_merge(m, s, m2, s2);
  }
}

// Floats before the first 16-byte boundary of p (at most C).
__device__ __forceinline__ int64_t head_len(const float* p, int64_t C) {
  const int64_t h = static_cast<int64_t>((4u - ((reinterpret_cast<std::uintptr_t>(p) >> 2) & 3u)) & 3u);
  return h < C ? h : C;
}

// f(c, a[c], b[c]) for every c < C, lane-strided (b may equal a).
template <bool VEC, typename F>
__device__ __forceinline__ void read_row(const float* a, const float* b, int64_t C, int lane, F&& f) {
  if constexpr (VEC) {
    const int64_t head = head_len(a, C);
    if (lane < head) f(lane, a[lane], b[lane]);
    const int64_t n4 = (C - head) >> 2;
    const float4* a4 = reinterpret_cast<const float4*>(a + head);
    const float4* b4 = reinterpret_cast<const float4*>(b + head);
    for (int64_t k = lane; k < n4; k += 32) {
      const float4 u = a4[k], w = b4[k];
      const int64_t c = head + 4 * k;
      f(c, u.x, w.x);
      f(c + 1, u.y, w.y);
      f(c + 2, u.z, w.z);
      f(c + 3, u.w, w.w);
    }
    for (int64_t c = head + 4 * n4 + lane; c < C; c += 32) f(c, a[c], b[c]);
  } else {
    for (int64_t c = lane; c < C; c += 32) f(c, a[c], b[c]);
  }
}

// out[c] = f(c, a[c], b[c]) for every c < C, lane-strided (a, b, out aligned alike; b may equal a).
template <bool VEC, typename F>
__device__ __forceinline__ void map_row(float* out, const float* a, const float* b, int64_t C, int lane, F&& f) {
  if constexpr (VEC) {
    const int64_t head = head_len(a, C);
    if (lane < head) out[lane] = f(lane, a[lane], b[lane]);
    const int64_t n4 = (C - head) >> 2;
    const float4* a4 = reinterpret_cast<const float4*>(a + head);
    const float4* b4 = reinterpret_cast<const float4*>(b + head);
    float4* o4 = reinterpret_cast<float4*>(out + head);
    for (int64_t k = lane; k < n4; k += 32) {
      const float4 u = a4[k], w = b4[k];
      const int64_t c = head + 4 * k;
      float4 r;
      r.x = f(c, u.x, w.x);
      r.y = f(c + 1, u.y, w.y);
      r.z = f(c + 2, u.z, w.z);
      r.w = f(c + 3, u.w, w.w);
      o4[k] = r;
    }
    for (int64_t c = head + 4 * n4 + lane; c < C; c += 32) out[c] = f(c, a[c], b[c]);
  } else {
    for (int64_t c = lane; c < C; c += 32) out[c] = f(c, a[c], b[c]);
  }
}

// Whether every pointer has the same address modulo 16 (the float4 paths need that).
inline bool same_alignment(std::initializer_list<std::uintptr_t> ptrs) {
  const std::uintptr_t first = *ptrs.begin() & 15u;
  for (std::uintptr_t p : ptrs)
    if ((p & 15u) != first) return false;
  return true;
}

// Blocks of kWarpsPerBlock warps for `rows` rows: one row per warp, capped at 8 blocks per SM
// (a full SM of 256-thread blocks); the kernels grid-stride over the rest.
inline unsigned row_blocks(int64_t rows) { return cuda_launch::grid_stride_blocks(rows, kWarpsPerBlock, 8); }

// First row of this warp and the stride over rows.
__device__ __forceinline__ int64_t first_row() {
  return static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / 32;
}
__device__ __forceinline__ int64_t row_stride() { return static_cast<int64_t>(gridDim.x) * kWarpsPerBlock; }

}  // namespace cuda_rows
}  // namespace tinygpt
