// CUDA runtime queries behind tinygpt._C.cuda_device_count() and cuda_status().
#include <cuda_runtime.h>

#include "common.h"
#include "cuda/api.h"

int tg_cuda_runtime_version() { return CUDART_VERSION; }

int tg_cuda_device_count(std::string* reason) {
  int count = 0;
  const cudaError_t err = cudaGetDeviceCount(&count);
  if (err == cudaSuccess) return count;
  cudaGetLastError();  // clear it so a later TG_CUDA_CHECK_LAUNCH() does not report it
  if (reason != nullptr) {
    int driver = 0;
    if (cudaDriverGetVersion(&driver) != cudaSuccess || driver == 0) {
      *reason = "no CUDA driver found";
    } else if (err == cudaErrorInsufficientDriver) {
      *reason = tinygpt::detail::concat("CUDA driver ", driver / 1000, ".", driver % 1000 / 10,
                                        " is older than the CUDA runtime ", CUDART_VERSION / 1000,
                                        ".", CUDART_VERSION % 1000 / 10, " tinygpt was built with");
    } else if (err == cudaErrorNoDevice) {
      *reason = "no CUDA device found";
    } else {
      *reason = cudaGetErrorString(err);
    }
  }
  return 0;
}
