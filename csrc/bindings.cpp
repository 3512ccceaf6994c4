// tinygpt._C: what was built (build_info), the CUDA runtime's view of the machine, and the
// kernel submodules _C.cpu and (when compiled with CUDA) _C.cuda.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <sstream>
#include <string>

#include "registry.h"

#ifdef TINYGPT_WITH_OPENMP
#include <omp.h>
#endif

namespace py = pybind11;

namespace {

// Splits the comma-joined architecture list CMake passes ("80,90" -> ["80", "90"]).
py::list cuda_architectures() {
  py::list archs;
#ifdef TINYGPT_WITH_CUDA
  std::istringstream joined(TINYGPT_CUDA_ARCHITECTURES);
  for (std::string arch; std::getline(joined, arch, ',');) archs.append(arch);
#endif
  return archs;
}

py::dict build_info(const tinygpt::KernelFamilies& families) {
  py::dict info;
  info["version"] = TINYGPT_VERSION;
  info["compiler"] = TINYGPT_CXX_COMPILER;
  info["cxx_standard"] = __cplusplus / 100 % 100;  // 201703L -> 17
#ifdef TINYGPT_WITH_OPENMP
  info["openmp"] = true;
  info["openmp_version"] = _OPENMP;  // yyyymm of the supported spec, e.g. 201511
  info["openmp_max_threads"] = omp_get_max_threads();
#else
  info["openmp"] = false;
  info["openmp_version"] = py::none();
  info["openmp_max_threads"] = py::none();
#endif
#ifdef TINYGPT_WITH_CUDA
  info["cuda"] = true;
  info["cuda_runtime_version"] = tinygpt::cuda::runtime_version();
#else
  info["cuda"] = false;
  info["cuda_runtime_version"] = py::none();
#endif
  info["cuda_architectures"] = cuda_architectures();
  info["kernels"] = families;
  return info;
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "tinygpt native kernels; see build_info() for what this build contains.";

  tinygpt::KernelFamilies families;
  py::module_ cpu = m.def_submodule("cpu", "CPU kernels on NumPy float32 arrays.");
  tinygpt::register_cpu_kernels(cpu, families);
#ifdef TINYGPT_WITH_CUDA
  py::module_ cuda = m.def_submodule("cuda", "CUDA kernels on CuPy device pointers and streams.");
  tinygpt::register_cuda_kernels(cuda, families);
#endif

  m.def(
      "build_info", [families] { return build_info(families); },
      "Dict describing this build: version, compiler, OpenMP, CUDA, kernel families.");

  // cudaGetDeviceCount may initialise the driver (slow on first call): release the GIL.
  m.def(
      "cuda_device_count",
      [] {
#ifdef TINYGPT_WITH_CUDA
        return tinygpt::cuda::device_count();
#else
        return 0;
#endif
      },
      py::call_guard<py::gil_scoped_release>(),
      "Number of CUDA devices usable by the compiled kernels (0 without CUDA, driver or GPU).");
  m.def(
      "cuda_status",
      [] {
#ifdef TINYGPT_WITH_CUDA
        std::string reason;
        const int count = tinygpt::cuda::device_count(&reason);
        return count > 0 ? std::to_string(count) + " device(s)" : reason;
#else
        return std::string(
            "tinygpt._C was built without CUDA (reinstall with nvcc on PATH, or "
            "TINYGPT_CUDA=ON to require it)");
#endif
      },
      py::call_guard<py::gil_scoped_release>(),
      "Readable CUDA state: 'N device(s)', or why no device can be used.");
}
