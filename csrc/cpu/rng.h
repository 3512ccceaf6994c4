// Counter-based dropout randomness shared by the CPU kernels (dropout.cpp, attention.cpp).
//
// Element i (flat C-order index) of a dropout mask drawn with `seed` is kept iff
//     z = seed + (i + 1) * 0x9E3779B97F4A7C15              (mod 2^64)
//     z = splitmix64 finaliser(z)
//     u = (z >> 40) * 2^-24 >= p                           (24 bits: float32-exact in [0, 1))
// which is evaluated exactly in integers as (z >> 40) >= ceil(p * 2^24). This is bit for bit
// tinygpt/kernels/reference.py: dropout_mask, so native and reference masks are identical, and
// because each element hashes its own counter a kernel can regenerate any part of a mask
// (dropout's backward and attention's tiles do) instead of storing it.
#pragma once

#include <cmath>
#include <cstdint>

// mix64 / bits24 / keep also compile as device functions in the CUDA kernels (csrc/cuda/*.cu),
// so CPU, CUDA and reference masks come from this one definition.
#if defined(__CUDACC__)
#define TG_RNG_HD __host__ __device__ __forceinline__
#else
#define TG_RNG_HD inline
#endif

namespace tinygpt {
namespace rng {

constexpr uint64_t kGolden = 0x9E3779B97F4A7C15ull;  // splitmix64's counter increment
constexpr uint64_t kMix1 = 0xBF58476D1CE4E5B9ull;
constexpr uint64_t kMix2 = 0x94D049BB133111EBull;

// splitmix64's output function (Stafford's "Mix13" variant used by java.util.SplittableRandom).
TG_RNG_HD uint64_t mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * kMix1;
  z = (z ^ (z >> 27)) * kMix2;
  return z ^ (z >> 31);
}

// The 24 random bits of element `index` of the mask drawn with `seed`.
TG_RNG_HD uint32_t bits24(uint64_t seed, uint64_t index) {
  return static_cast<uint32_t>(mix64(seed + (index + 1) * kGolden) >> 40);
}

// t such that (r >= t) == (r * 2^-24 >= p) for every 24-bit r: ceil(p * 2^24), clamped.
inline uint32_t keep_threshold(double p) {
  if (!(p > 0.0)) return 0;             // p <= 0 (or nan): keep everything
  if (p >= 1.0) return 1u << 24;        // keep nothing
  return static_cast<uint32_t>(std::ceil(p * 16777216.0));  // exact: p * 2^24 only shifts the exponent
}

TG_RNG_HD bool keep(uint64_t seed, uint64_t index, uint32_t threshold) {
  return bits24(seed, index) >= threshold;
}

}  // namespace rng
}  // namespace tinygpt
