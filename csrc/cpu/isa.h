// Which SIMD variant a multi-versioned CPU kernel runs: the widest the CPU supports, capped by
// TINYGPT_CPU_ISA=avx2|baseline (so tests can run every variant on a machine that has them all).
#pragma once

#include <cstdlib>
#include <string>

namespace tinygpt {

enum class CpuIsa { baseline, avx2, avx512 };

inline CpuIsa cpu_isa() {
#if defined(__x86_64__) || defined(__i386__)
  const char* cap_env = std::getenv("TINYGPT_CPU_ISA");
  const std::string cap = cap_env != nullptr ? cap_env : "";
  __builtin_cpu_init();
  if (cap != "avx2" && cap != "baseline" && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
      __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("fma")) {
    return CpuIsa::avx512;
  }
  if (cap != "baseline" && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
    return CpuIsa::avx2;
  }
#endif
  return CpuIsa::baseline;
}

}  // namespace tinygpt
