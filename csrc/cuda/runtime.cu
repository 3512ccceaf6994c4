// CUDA runtime queries behind tinygpt._C.build_info(), cuda_device_count() and cuda_status().
#include <cuda_runtime.h>

#include "common.h"
#include "registry.h"

namespace tinygpt {
namespace cuda {

int runtime_version() { return CUDART_VERSION; }

int device_count(std::string* reason) {
  int count = 0;
  const cudaError_t err = cudaGetDeviceCount(&count);
  if (err == cudaSuccess) return count;
  cudaGetLastError();  // clear it so a later TG_CUDA_CHECK_LAUNCH() does not report it
  if (reason != nullptr) {
    int driver = 0;
    if (cudaDriverGetVersion(&driver) != cudaSuccess || driver == 0) {
      *reason = "no CUDA driver found";
    } else if (err == cudaErrorInsufficientDriver) {
      *reason = detail::concat("CUDA driver ", driver / 1000, ".", driver % 1000 / 10,
                               " is older than the CUDA runtime ", CUDART_VERSION / 1000, ".",
                               CUDART_VERSION % 1000 / 10, " tinygpt was built with");
    } else if (err == cudaErrorNoDevice) {
      *reason = "no CUDA device found";
    } else {
      *reason = cudaGetErrorString(err);
    }
  }
  return 0;
}

}  // namespace cuda
}  // namespace tinygpt
