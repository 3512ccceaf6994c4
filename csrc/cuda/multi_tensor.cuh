// Multi-tensor launches (adamw.cu's adamw_multi_step, grad_norm.cu): one launch over a list of
// tensors described by a device table, one block per kChunk-element chunk of one tensor.
// block_start[t] is tensor t's first block (cumulative ceil(n / kChunk); block_start[T] = blocks).
#pragma once

#include <cuda_runtime.h>

namespace tinygpt {
namespace multi_tensor {

constexpr long long kChunk = 16384;  // a multiple of 4: chunks start 16-byte aligned

// The tensor of block b: the last t with block_start[t] <= b (binary search).
__device__ __forceinline__ int tensor_of(const long long* __restrict__ block_start, int T, long long b) {
  int lo = 0, hi = T - 1;
  while (lo < hi) {
    const int mid = (lo + hi + 1) / 2;
    if (block_start[mid] <= b) lo = mid; else hi = mid - 1;
  }
  return lo;
}

// Block b's share: its tensor's row of the table (`width` entries, the size last) and the element range
// [begin, end) of its chunk.
struct Chunk {
  const long long* row;
  long long begin, end;
};
__device__ __forceinline__ Chunk chunk_of(const long long* __restrict__ table, int width,
                                          const long long* __restrict__ block_start, int T, long long b) {
  const int t = tensor_of(block_start, T, b);
  const long long* row = table + static_cast<long long>(width) * t;
  const long long n = row[width - 1];
  const long long begin = (b - block_start[t]) * kChunk;
  return {row, begin, begin + kChunk < n ? begin + kChunk : n};
}

}  // namespace multi_tensor
}  // namespace tinygpt
