// OpenMP helpers shared by the CPU kernels: the thread count, this thread's index, and a split of
// n items into one contiguous block per thread. Without OpenMP everything runs on one thread.
#pragma once

#include <cstdint>

#ifdef TINYGPT_WITH_OPENMP
#include <omp.h>
#endif

namespace tinygpt {
namespace cpu {

// Upper bound on the threads a parallel region starts (OMP_NUM_THREADS / set_num_threads).
inline int max_threads() {
#ifdef TINYGPT_WITH_OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}

inline int thread_id() {
#ifdef TINYGPT_WITH_OPENMP
  return omp_get_thread_num();
#else
  return 0;
#endif
}

// Splits [0, n) into `parts` near-equal ranges; returns part p's [begin, end).
inline void split(int64_t n, int parts, int p, int64_t* begin, int64_t* end) {
  *begin = n * p / parts;
  *end = n * (p + 1) / parts;
}

// Calls f(begin, end, thread) on contiguous blocks covering [0, n): one per OpenMP thread when the
// job is big enough to pay for waking the team (n * cost >= kParallelMin, cost ~ floats touched per
// item), else f(0, n, 0) on the calling thread. Blocks are a fixed function of n and the thread
// count, so per-thread partial sums combine in a deterministic order.
constexpr int64_t kParallelMin = int64_t{1} << 15;

template <typename F>
void parallel_blocks(int64_t n, int64_t cost, F&& f) {
#ifdef TINYGPT_WITH_OPENMP
  if (n > 1 && n * cost >= kParallelMin && omp_get_max_threads() > 1) {
#pragma omp parallel
    {
      const int64_t nt = omp_get_num_threads(), t = omp_get_thread_num();
      const int64_t begin = n * t / nt, end = n * (t + 1) / nt;
      if (begin < end) f(begin, end, static_cast<int>(t));
    }
    return;
  }
#endif
  f(int64_t{0}, n, 0);
}

}  // namespace cpu
}  // namespace tinygpt
