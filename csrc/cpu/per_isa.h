// Compiles the explicit-SIMD file named by TG_TILES once per instruction set (isa.h): inside
// namespace `portable`, `avx2` and `avx512`, under the matching `#pragma GCC target`, with TG_ISA set
// to 1, 2 or 3 (simd.h gives each copy its vector layer). Include it where the copies belong:
//   #define TG_TILES "gemm_tiles.h"
//   #include "per_isa.h"      // then portable::kernels, avx2::kernels, avx512::kernels
// NOT a normal header: no include guard, it is meant to be included once per *_tiles.h file.
#ifndef TG_TILES
#error "per_isa.h: define TG_TILES as the file to compile once per instruction set"
#endif

namespace portable {
#define TG_ISA 1
#include TG_TILES
#undef TG_ISA
}  // namespace portable

#if TG_X86_ISAS
#pragma GCC push_options
#pragma GCC target("arch=x86-64-v3")  // TG_TARGET_AVX2
namespace avx2 {
#define TG_ISA 2
#include TG_TILES
#undef TG_ISA
}  // namespace avx2
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("arch=x86-64-v4")  // TG_TARGET_AVX512
namespace avx512 {
#define TG_ISA 3
#include TG_TILES
#undef TG_ISA
}  // namespace avx512
#pragma GCC pop_options
#endif

#undef TG_TILES
