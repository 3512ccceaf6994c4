// Plain C++ entry points defined in csrc/cuda/*.cu and bound by host-compiled code. Free of
// pybind11 and of CUDA headers. Kernel launchers follow one convention: device pointers and
// the stream arrive as std::uintptr_t (CuPy's `array.data.ptr` and
// `cupy.cuda.get_current_stream().ptr`), the launch goes on that stream, nothing allocates
// (outputs and workspaces come from CuPy's pool), and errors throw via TG_CUDA_CHECK.
#pragma once

#include <cstdint>
#include <string>

// CUDART_VERSION this module was compiled and statically linked against, e.g. 13000.
int tg_cuda_runtime_version();

// Number of visible CUDA devices; 0 (never an exception) when there is no driver or device,
// with the reason written to *reason when given.
int tg_cuda_device_count(std::string* reason = nullptr);
