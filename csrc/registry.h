// How kernel families get into tinygpt._C, one family per file (forward and backward together):
//  - CPU: csrc/cpu/<family>.cpp defines `void bind_<family>(pybind11::module_&)`, declared
//    below; register_cpu_kernels calls it and records "cpu.<family>".
//  - CUDA: csrc/cuda/<family>.cu defines plain launchers declared in cuda/api.h;
//    register_cuda_kernels binds them and records "cuda.<family>".
// build_info()["kernels"] reports the recorded names.
#pragma once

#include <pybind11/pybind11.h>

#include <string>
#include <vector>

namespace tinygpt {

using KernelFamilies = std::vector<std::string>;

// csrc/cpu/registry.cpp: fills the submodule tinygpt._C.cpu.
void register_cpu_kernels(pybind11::module_& m, KernelFamilies& families);
void bind_attention(pybind11::module_& m);  // csrc/cpu/attention.cpp
void bind_dropout(pybind11::module_& m);    // csrc/cpu/dropout.cpp
void bind_softmax(pybind11::module_& m);        // csrc/cpu/softmax.cpp (last axis)
void bind_cross_entropy(pybind11::module_& m);  // csrc/cpu/cross_entropy.cpp
void bind_adamw(pybind11::module_& m);          // csrc/cpu/adamw.cpp
void bind_layernorm(pybind11::module_& m);      // csrc/cpu/layernorm.cpp (+ add_layernorm)
void bind_gelu(pybind11::module_& m);           // csrc/cpu/gelu.cpp
void bind_matmul(pybind11::module_& m);         // csrc/cpu/matmul.cpp (linear, linear_gelu, sgemm)
void bind_embedding(pybind11::module_& m);      // csrc/cpu/embedding.cpp

#ifdef TINYGPT_WITH_CUDA
// csrc/cuda/registry.cpp: fills the submodule tinygpt._C.cuda.
void register_cuda_kernels(pybind11::module_& m, KernelFamilies& families);
#endif

}  // namespace tinygpt
