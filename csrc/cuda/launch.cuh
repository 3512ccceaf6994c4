// Launch helpers shared by the CUDA launchers: a bound pointer argument as a typed pointer, the SM
// count of the current device and the block count of a grid-stride loop.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "common.h"

namespace tinygpt {
namespace cuda_launch {

// A device pointer passed from Python as an integer (0: absent).
template <typename Ptr>
Ptr ptr(std::uintptr_t p) {
  return reinterpret_cast<Ptr>(p);
}

// Streaming multiprocessors of the current device, queried once per device. Launches come from
// Python threads holding no lock: a race only recomputes the same value.
inline int sm_count() {
  int dev = 0;
  TG_CUDA_CHECK(cudaGetDevice(&dev));
  static int cached_dev = -1, cached = 0;
  if (dev != cached_dev) {
    int v = 0;
    TG_CUDA_CHECK(cudaDeviceGetAttribute(&v, cudaDevAttrMultiProcessorCount, dev));
    cached = v > 0 ? v : 1;
    cached_dev = dev;
  }
  return cached;
}

// Blocks for a grid-stride loop over `items` work items, `per_block` of them per block: enough to
// cover them once, at most `blocks_per_sm` per SM (the threads then loop), at least one.
inline unsigned grid_stride_blocks(int64_t items, int64_t per_block, int blocks_per_sm) {
  const int64_t want = (items + per_block - 1) / per_block;
  const int64_t cap = static_cast<int64_t>(blocks_per_sm) * sm_count();
  return static_cast<unsigned>(want < 1 ? 1 : want < cap ? want : cap);
}

}  // namespace cuda_launch
}  // namespace tinygpt
