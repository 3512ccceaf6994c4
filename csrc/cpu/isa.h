// The one instruction-set switch of the CPU kernels: its three names, which one runs, and how a kernel
// gets one compiled copy per instruction set.
//
//   baseline  x86-64 (SSE2), or any other CPU: what the compiler emits without -march flags
//   avx2      x86-64-v3: AVX2 + FMA (Haswell, Zen 1 and later)
//   avx512    x86-64-v4: AVX-512 F/CD/BW/DQ/VL (Skylake-X, Zen 4 and later)
//
// No -march flags are used (the wheel must run on any x86-64): a kernel's SIMD code is compiled once
// per ISA inside the same file, and isa() picks the copy that runs: the widest this CPU supports,
// capped by TINYGPT_CPU_ISA=avx2|baseline, and changed at run time by set_isa (tinygpt._C.cpu.set_isa:
// tests run every copy the CPU supports in one process). Two ways to get the copies:
//   - loops written as plain float code (vectorised by the compiler): TG_PER_ISA below;
//   - explicit SIMD on the vector layer (simd.h): a *_tiles.h file compiled once per ISA by per_isa.h.
#pragma once

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <string>

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define TG_X86_ISAS 1  // the per-ISA copies rely on GCC's target attributes and __builtin_cpu_supports
#define TG_TARGET_AVX512 __attribute__((target("arch=x86-64-v4")))
#define TG_TARGET_AVX2 __attribute__((target("arch=x86-64-v3")))
#else
#define TG_X86_ISAS 0
#endif

// Small helpers with simd loops called from per-ISA code are always inlined, so they are vectorised
// for the caller's instruction set (a plain call would run the baseline copy).
#define TG_INLINE inline __attribute__((always_inline))

namespace tinygpt {
namespace cpu {

enum class Isa { baseline = 0, avx2 = 1, avx512 = 2 };

inline const char* isa_name(Isa isa) {
  return isa == Isa::avx512 ? "avx512" : isa == Isa::avx2 ? "avx2" : "baseline";
}

// The ISA called `name`; false for a name that is none of the three.
inline bool isa_from_name(const std::string& name, Isa* out) {
  for (Isa isa : {Isa::baseline, Isa::avx2, Isa::avx512}) {
    if (name == isa_name(isa)) {
      *out = isa;
      return true;
    }
  }
  return false;
}

// Whether this CPU (and this build) can run the copies compiled for `isa`.
inline bool isa_supported(Isa isa) {
  if (isa == Isa::baseline) return true;
#if TG_X86_ISAS
  __builtin_cpu_init();
  return isa == Isa::avx2 ? __builtin_cpu_supports("x86-64-v3") : __builtin_cpu_supports("x86-64-v4");
#else
  return false;
#endif
}

// The widest supported ISA, capped by TINYGPT_CPU_ISA (a name above; anything else is no cap).
inline Isa default_isa() {
  const char* cap_env = std::getenv("TINYGPT_CPU_ISA");
  Isa cap = Isa::avx512;
  if (cap_env != nullptr) isa_from_name(cap_env, &cap);
  for (Isa isa : {Isa::avx512, Isa::avx2}) {
    if (static_cast<int>(isa) <= static_cast<int>(cap) && isa_supported(isa)) return isa;
  }
  return Isa::baseline;
}

inline std::atomic<int>& isa_slot() {
  static std::atomic<int> slot{static_cast<int>(default_isa())};
  return slot;
}

// The ISA whose copies run now.
inline Isa isa() { return static_cast<Isa>(isa_slot().load(std::memory_order_relaxed)); }

// Runs the copies of `isa` from now on (which must be supported); for tests and benchmarks, not
// while kernels run on other threads.
inline void set_isa(Isa isa) { isa_slot().store(static_cast<int>(isa), std::memory_order_relaxed); }

}  // namespace cpu
}  // namespace tinygpt

// TG_PER_ISA(name, body): `body` is a function template `template <Isa> TG_INLINE R body(args...)`
// holding a kernel's loops as plain float code; this defines `name`, a function object whose call
// name(args...) runs the copy of body compiled for isa() (the compiler vectorises each copy for its
// instruction set).
#if TG_X86_ISAS
#define TG_PER_ISA(name, body)                                                         \
  template <class... A>                                                                \
  TG_TARGET_AVX512 auto name##_avx512(A... a) {                                        \
    return body<::tinygpt::cpu::Isa::avx512>(a...);                                    \
  }                                                                                    \
  template <class... A>                                                                \
  TG_TARGET_AVX2 auto name##_avx2(A... a) {                                            \
    return body<::tinygpt::cpu::Isa::avx2>(a...);                                      \
  }                                                                                    \
  template <class... A>                                                                \
  auto name##_baseline(A... a) {                                                       \
    return body<::tinygpt::cpu::Isa::baseline>(a...);                                  \
  }                                                                                    \
  struct name##_per_isa {                                                              \
    template <class... A>                                                              \
    auto operator()(A... a) const {                                                    \
      switch (::tinygpt::cpu::isa()) {                                                 \
        case ::tinygpt::cpu::Isa::avx512: return name##_avx512(a...);                  \
        case ::tinygpt::cpu::Isa::avx2: return name##_avx2(a...);                      \
        default: return name##_baseline(a...);                                         \
      }                                                                                \
    }                                                                                  \
  };                                                                                   \
  [[maybe_unused]] constexpr name##_per_isa name{};
#else
#define TG_PER_ISA(name, body)                                                         \
  struct name##_per_isa {                                                              \
    template <class... A>                                                              \
    auto operator()(A... a) const {                                                    \
      return body<::tinygpt::cpu::Isa::baseline>(a...);                                \
    }                                                                                  \
  };                                                                                   \
  [[maybe_unused]] constexpr name##_per_isa name{};
#endif
