// Checks shared by every kernel file. Free of pybind11 so that .cu files (compiled by nvcc)
// can include it cheaply; the NumPy-array helpers live in py_common.h.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>

namespace tinygpt {
namespace detail {

// Streams all parts into one string: concat("got ", 3, " dims") -> "got 3 dims".
template <typename... Parts>
std::string concat(const Parts&... parts) {
  std::ostringstream os;
  (os << ... << parts);
  return os.str();
}

}  // namespace detail
}  // namespace tinygpt

// Throws std::invalid_argument (ValueError in Python) when `cond` is false; the remaining
// arguments are streamed into the message, which should name the op and the argument:
//   TG_CHECK(w_len == C, "layernorm: weight must have shape (", C, ",), got (", w_len, ",)");
#define TG_CHECK(cond, ...)                                                     \
  do {                                                                          \
    if (!(cond)) throw std::invalid_argument(::tinygpt::detail::concat(__VA_ARGS__)); \
  } while (0)

#ifdef __CUDACC__
#include <cuda_runtime.h>

namespace tinygpt {
namespace detail {

[[noreturn]] inline void throw_cuda_error(cudaError_t err, const char* expr, const char* file,
                                          int line) {
  throw std::runtime_error(concat("CUDA error ", cudaGetErrorName(err), " (",
                                  cudaGetErrorString(err), ") from ", expr, " at ", file, ":",
                                  line));
}

}  // namespace detail
}  // namespace tinygpt

// Turns a failed CUDA runtime call into std::runtime_error (RuntimeError in Python) that
// names the call, file and line: TG_CUDA_CHECK(cudaMemsetAsync(p, 0, n, stream));
#define TG_CUDA_CHECK(expr)                                                     \
  do {                                                                          \
    const cudaError_t tg_err_ = (expr);                                         \
    if (tg_err_ != cudaSuccess)                                                 \
      ::tinygpt::detail::throw_cuda_error(tg_err_, #expr, __FILE__, __LINE__);  \
  } while (0)

// Right after a kernel launch: reports a bad launch (configuration, missing device code)
// without synchronizing; errors inside the kernel surface at the next synchronizing call.
#define TG_CUDA_CHECK_LAUNCH() TG_CUDA_CHECK(cudaGetLastError())
#endif  // __CUDACC__
