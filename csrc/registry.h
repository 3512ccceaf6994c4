// How kernel families get into tinygpt._C: one family per file, forward and backward together, its
// pybind11 bindings at the end of the file.
//   csrc/cpu/<family>.cpp  defines cpu::bind_<family>(m): checks NumPy arguments and returns what
//                          tinygpt/kernels/reference.py returns; registered into tinygpt._C.cpu.
//   csrc/cuda/<family>.cu  defines cuda::bind_<family>(m): launchers on raw device pointers and a
//                          stream (tinygpt/kernels/cuda/<family>.py checks and allocates); into _C.cuda.
// A new family is one X(<family>) below; build_info()["kernels"] reports "cpu.<family>" / "cuda.<family>".
#pragma once

// nvcc compiles a .cu once for the host and once per GPU architecture (__CUDA_ARCH__ defined). The
// bindings are host code, so the device passes skip this header and each .cu's bind_<family>: pybind11
// is parsed once per file instead of three times (a third of each .cu's compile time).
#ifdef __CUDA_ARCH__
#pragma nv_diag_suppress 177  // the host launchers, referenced only from the skipped bindings
#else
#include <pybind11/pybind11.h>

#include <string>
#include <vector>

#define TG_FAMILIES(X) X(linear) X(embedding) X(layer_norm) X(gelu) X(softmax) X(cross_entropy) X(dropout) \
  X(attention) X(adamw) X(quantized_linear)
#define TG_CPU_FAMILIES(X) TG_FAMILIES(X) X(decode)
#define TG_CUDA_FAMILIES(X) TG_FAMILIES(X) X(grad_norm)

namespace tinygpt {

namespace py = pybind11;
using KernelFamilies = std::vector<std::string>;

namespace cpu {
#define TG_DECLARE_BIND(family) void bind_##family(py::module_& m);
TG_CPU_FAMILIES(TG_DECLARE_BIND)
// csrc/cpu/registry.cpp: the thread and instruction-set controls every CPU kernel shares.
void bind_controls(py::module_& m);
}  // namespace cpu

inline void register_cpu_kernels(py::module_& m, KernelFamilies& families) {
  cpu::bind_controls(m);
#define TG_BIND_CPU(family) cpu::bind_##family(m), families.push_back("cpu." #family);
  TG_CPU_FAMILIES(TG_BIND_CPU)
#undef TG_BIND_CPU
}

#ifdef TINYGPT_WITH_CUDA
namespace cuda {
TG_CUDA_FAMILIES(TG_DECLARE_BIND)
// csrc/cuda/runtime.cu: CUDART_VERSION this module was compiled and statically linked against, and
// the number of visible devices (0, never an exception, without driver or device; the reason in *reason).
int runtime_version();
int device_count(std::string* reason = nullptr);
}  // namespace cuda

inline void register_cuda_kernels(py::module_& m, KernelFamilies& families) {
#define TG_BIND_CUDA(family) cuda::bind_##family(m), families.push_back("cuda." #family);
  TG_CUDA_FAMILIES(TG_BIND_CUDA)
#undef TG_BIND_CUDA
}
#endif
#undef TG_DECLARE_BIND

}  // namespace tinygpt
#endif  // __CUDA_ARCH__
