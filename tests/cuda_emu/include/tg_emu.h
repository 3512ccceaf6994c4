// tg_emu: runs csrc/cuda's kernels on the CPU, for the test suite on machines without a GPU.
//
// tests/cuda_emu/translate.py rewrites each .cu file (launches `k<<<g, b, smem, s>>>(...)`,
// `__shared__` declarations, the cp.async inline PTX) into calls to this header; g++ then
// compiles the result with these headers standing in for cuda_runtime.h, mma.h and cuda_bf16.h.
//
// Execution model. A launch runs its blocks one after another (or on a few host threads, one
// block per thread at a time). Inside a block every CUDA thread is a fiber with its own stack:
// a fiber runs until it reaches a barrier (__syncthreads, a warp shuffle, a WMMA collective)
// or returns, so threads interleave only at barriers, as the CUDA memory model allows. The
// emulator is strict where the hardware is undefined:
//   - __syncthreads reached by only part of the block (some threads returned, or wait at a
//     warp op) is an error, not a hang; so is a warp shuffle some lanes never reach;
//   - shared memory starts filled with 0xFF bytes (NaN as floats), so reads of unwritten
//     shared memory poison results, and writes past a shared array are caught by canaries;
//   - cp.async copies land only at cp.async.wait_group (as late as the hardware may land
//     them), and a misaligned cp.async or WMMA pointer is an error;
//   - launch limits (1024 threads, the kernel's __launch_bounds__, 48 KiB static / dynamic shared
//     memory without the cudaFuncSetAttribute opt-in, 227 KiB at most) are checked as on an H100.
// What it cannot check: timing, occupancy, bank conflicts, register pressure, and the
// hardware's own accumulation order inside a tensor-core MMA (it accumulates in fp32 order).
#pragma once

#include <cfloat>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>

// ------------------------------------------------------------------------------ qualifiers
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__
#define __launch_bounds__(...)
#define __align__(n) alignas(n)

// ------------------------------------------------------------------------------ vector types
struct uint3 {
  unsigned x, y, z;
};
struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
struct alignas(8) float2 {
  float x, y;
};
struct alignas(16) float4 {
  float x, y, z, w;
};
struct alignas(16) uint4 {  // csrc/cuda/quantized_linear.cu: 16-byte weight loads
  unsigned x, y, z, w;
};
inline float2 make_float2(float x, float y) { return {x, y}; }
inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }

constexpr int warpSize = 32;

// Built-in variables: set by the scheduler before it resumes a fiber (one host thread runs the
// fibers of one block, so per host thread is per CUDA thread at any moment).
extern __thread uint3 threadIdx;
extern __thread uint3 blockIdx;
extern __thread uint3 blockDim;
extern __thread uint3 gridDim;

// ------------------------------------------------------------------------------ runtime API
enum cudaError_t {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorInvalidConfiguration = 9,
};
using cudaStream_t = struct CUstream_st*;
enum cudaDeviceAttr { cudaDevAttrMultiProcessorCount = 16, cudaDevAttrMaxSharedMemoryPerBlockOptin = 97 };
enum cudaFuncAttribute { cudaFuncAttributeMaxDynamicSharedMemorySize = 8 };
#define CUDART_VERSION 13000

cudaError_t cudaGetLastError();
const char* cudaGetErrorName(cudaError_t err);
const char* cudaGetErrorString(cudaError_t err);
cudaError_t cudaGetDevice(int* dev);
cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int dev);
cudaError_t cudaMemsetAsync(void* p, int value, size_t bytes, cudaStream_t stream = nullptr);

namespace tg_emu {

[[noreturn]] void fail(const std::string& what);  // a device-side error: the launch throws it

cudaError_t func_set_attribute(const void* func, cudaFuncAttribute attr, int value);
// What cudaDevAttrMultiProcessorCount reports: 132 (an H100 SXM) or the environment's TG_EMU_SM_COUNT
// (1 sends every GEMM to the large tiling, 1000 to the small one with split-K); returns the old value.
int set_sm_count(int n);

struct LaunchConfig {
  dim3 grid, block;
  size_t smem;
  cudaStream_t stream;
  LaunchConfig(dim3 g, dim3 b, size_t s = 0, cudaStream_t st = nullptr)
      : grid(g), block(b), smem(s), stream(st) {}
};

// Runs body(ctx) once per thread of the grid; an invalid configuration sets the error that
// cudaGetLastError reports (as a real launch does); errors inside the kernel throw.
void run_grid(const char* name, const void* func, const LaunchConfig& cfg, void (*body)(void*),
              void* ctx);

template <class... P, class... A>
void launch_kernel(const char* name, void (*kernel)(P...), const LaunchConfig& cfg, A&&... args) {
  struct Ctx {
    void (*kernel)(P...);
    std::tuple<std::decay_t<P>...> params;  // by value, as a launch copies its arguments
  };
  Ctx ctx{kernel, std::tuple<std::decay_t<P>...>(std::forward<A>(args)...)};
  run_grid(name, reinterpret_cast<const void*>(kernel), cfg,
           [](void* c) {
             Ctx* x = static_cast<Ctx*>(c);
             std::apply(x->kernel, x->params);
           },
           &ctx);
}

// A kernel declared __launch_bounds__(n) launched with more than n threads per block: an error.
void check_launch_bounds(long long n);

// Block-level built-ins.
void syncthreads();
// The calling lane's value goes to the warp's exchange buffer; returns all lanes' values once
// every lane of the warp has arrived. on_full (if any) runs once, in the last lane to arrive,
// before anyone continues.
const uint64_t* warp_exchange(uint64_t mine, void (*on_full)(const uint64_t* all, int n) = nullptr);
int lane_id();
int warp_size_here();  // lanes in this warp (< 32 only for a block's partial last warp)

// Shared memory of the running block.
void* shared_alloc(long id, const char* name, size_t bytes, size_t align);
void* dynamic_smem_base();
size_t shared_offset(const void* p);  // __cvta_generic_to_shared
template <class T>
T& shared_var(long id, const char* name) {
  return *static_cast<T*>(shared_alloc(id, name, sizeof(T), alignof(T) < 16 ? 16 : alignof(T)));
}
template <class T>
T* dynamic_smem() {
  return static_cast<T*>(dynamic_smem_base());
}

// cp.async (sm_80): queued per thread, landed by cp_async_wait.
void cp_async(unsigned smem_dst, const void* src, int cp_size, int src_size);
void cp_async_commit();
void cp_async_wait(int groups_left);

template <class T>
T shfl_xor(T v, int lane_mask, int width) {
  static_assert(sizeof(T) <= 8, "__shfl_*_sync of a type wider than 8 bytes");
  uint64_t bits = 0;
  std::memcpy(&bits, &v, sizeof(T));
  const uint64_t* all = warp_exchange(bits);
  const int lane = lane_id();
  int src = (lane & ~(width - 1)) | ((lane ^ lane_mask) & (width - 1));
  if (src >= warp_size_here()) src = lane;
  T out;
  std::memcpy(&out, &all[src], sizeof(T));
  return out;
}

}  // namespace tg_emu

inline void __syncthreads() { tg_emu::syncthreads(); }
inline void __syncwarp(unsigned = 0xffffffffu) { tg_emu::warp_exchange(0); }
template <class T>
inline T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32) {
  if (mask != 0xffffffffu) tg_emu::fail("__shfl_xor_sync: only the full mask is emulated");
  return tg_emu::shfl_xor(v, lane_mask, width);
}
template <class T>
inline T __ldg(const T* p) {
  if (reinterpret_cast<std::uintptr_t>(p) % alignof(T) != 0) tg_emu::fail("__ldg: misaligned address");
  return *p;
}
inline size_t __cvta_generic_to_shared(const void* p) { return tg_emu::shared_offset(p); }

// Device min / max of mixed integer and floating types, as CUDA's math headers provide them.
template <class A, class B>
inline std::common_type_t<A, B> max(A a, B b) {
  using C = std::common_type_t<A, B>;
  return static_cast<C>(a) < static_cast<C>(b) ? static_cast<C>(b) : static_cast<C>(a);
}
template <class A, class B>
inline std::common_type_t<A, B> min(A a, B b) {
  using C = std::common_type_t<A, B>;
  return static_cast<C>(b) < static_cast<C>(a) ? static_cast<C>(b) : static_cast<C>(a);
}

template <class T>
cudaError_t cudaFuncSetAttribute(T* func, cudaFuncAttribute attr, int value) {
  return tg_emu::func_set_attribute(reinterpret_cast<const void*>(func), attr, value);
}
