// tg_emu runtime: fibers, barriers, warp exchange, shared memory, cp.async and launch checks.
// See include/tg_emu.h for the execution model.
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "tg_emu.h"

__thread uint3 threadIdx;
__thread uint3 blockIdx;
__thread uint3 blockDim;
__thread uint3 gridDim;

// tg_emu_switch(save, next): saves the callee-saved registers and the stack pointer of the
// running context in *save and resumes the context whose stack pointer is `next`.
#if defined(__x86_64__)
extern "C" void tg_emu_switch(void** save_sp, void* new_sp);
asm(R"(
  .text
  .globl tg_emu_switch
  .type tg_emu_switch, @function
tg_emu_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size tg_emu_switch, .-tg_emu_switch
)");
#else
#error "the CUDA emulator's fiber switch is written for x86-64"
#endif

namespace tg_emu {
namespace {

constexpr int kMaxThreads = 1024;
constexpr size_t kPage = 4096;
constexpr size_t kStackBytes = 128 * 1024;  // per CUDA thread, plus a guard page below it
constexpr size_t kStaticSmemMax = 48 * 1024;
constexpr size_t kDynamicSmemDefault = 48 * 1024;
constexpr size_t kSmemOptinMax = 227 * 1024;  // H100: per block, static + dynamic
constexpr size_t kCanary = 64;
constexpr size_t kArenaBytes = kSmemOptinMax + 64 * 1024;
constexpr unsigned char kPoison = 0xff, kCanaryByte = 0xa5;

struct Copy {
  unsigned char* dst;
  const unsigned char* src;
  int size, src_size;
};

struct Fiber {
  enum State : uint8_t { kReady, kAtBarrier, kAtWarp, kDone };
  void* sp = nullptr;
  State state = kReady;
  uint3 tid{0, 0, 0};
  int warp = 0, lane = 0;
  unsigned warp_phase = 0;
  std::vector<Copy> copies;
  size_t copies_done = 0, groups_done = 0;
  std::vector<size_t> group_end;
};

struct Warp {
  int size = 32, exited = 0;
  int arrived[2] = {0, 0};
  uint64_t buf[2][32];
};

struct SharedVar {
  long id;
  size_t off, size;
  const char* name;
};

struct Worker {
  unsigned char* stacks = nullptr;
  size_t stacks_bytes = 0;
  int capacity = 0;
  std::vector<Fiber> fibers;
  void* sched_sp = nullptr;
  Fiber* cur = nullptr;

  int n = 0, exited = 0, at_barrier = 0;
  std::vector<Warp> warps;

  unsigned char* arena = nullptr;
  size_t dyn = 0, top = 0, static_bytes = 0;
  std::vector<SharedVar> vars;

  void (*body)(void*) = nullptr;
  void* ctx = nullptr;
  const char* kernel = "";
  bool failed = false;
  std::string error;

  Worker() {
    void* a = mmap(nullptr, kArenaBytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (a == MAP_FAILED) throw std::runtime_error("CUDA emulator: cannot map shared memory");
    arena = static_cast<unsigned char*>(a);
  }
  ~Worker() {
    if (stacks != nullptr) munmap(stacks, stacks_bytes);
    munmap(arena, kArenaBytes);
  }
  void reserve(int threads) {
    if (threads <= capacity) return;
    if (stacks != nullptr) munmap(stacks, stacks_bytes);
    const size_t slot = kStackBytes + kPage;
    stacks_bytes = slot * threads;
    void* s = mmap(nullptr, stacks_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (s == MAP_FAILED) throw std::runtime_error("CUDA emulator: cannot map fiber stacks");
    stacks = static_cast<unsigned char*>(s);
    for (int i = 0; i < threads; ++i) mprotect(stacks + slot * i, kPage, PROT_NONE);  // guard pages
    capacity = threads;
    fibers.resize(threads);
  }
};

thread_local Worker* t_worker = nullptr;
thread_local cudaError_t t_last_error = cudaSuccess;
std::mutex g_pool_mutex;
std::vector<std::unique_ptr<Worker>> g_pool;
std::mutex g_attr_mutex;
std::map<const void*, int> g_max_dynamic;
std::atomic<int> g_sm_count{[] {  // an H100 SXM's 132, or TG_EMU_SM_COUNT (the kernels' tiling heuristics)
  const char* e = std::getenv("TG_EMU_SM_COUNT");
  const int v = e != nullptr ? std::atoi(e) : 0;
  return v > 0 ? v : 132;
}()};

struct Error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

std::string str(uint3 v) {
  return "(" + std::to_string(v.x) + ", " + std::to_string(v.y) + ", " + std::to_string(v.z) + ")";
}

void record_failure(Worker& w, const std::string& what) {
  if (w.failed) return;
  w.failed = true;
  w.error = std::string("CUDA emulator: kernel ") + w.kernel + ", block " + str(blockIdx) + ", thread " +
            str(w.cur->tid) + ": " + what;
}

void yield(Worker& w, Fiber& f) { tg_emu_switch(&f.sp, w.sched_sp); }

void land(Fiber& f, size_t upto) {
  for (size_t i = f.copies_done; i < upto; ++i) {
    const Copy& c = f.copies[i];
    if (c.src_size > 0) std::memcpy(c.dst, c.src, static_cast<size_t>(c.src_size));
    std::memset(c.dst + c.src_size, 0, static_cast<size_t>(c.size - c.src_size));
  }
  f.copies_done = std::max(f.copies_done, upto);
}

void fiber_main() {
  Worker& w = *t_worker;
  Fiber& f = *w.cur;
  try {
    w.body(w.ctx);
    land(f, f.copies.size());  // copies still in flight at exit land anyway
  } catch (const std::exception& e) {
    record_failure(w, e.what());
  } catch (...) {
    record_failure(w, "unknown exception");
  }
  ++w.exited;
  ++w.warps[f.warp].exited;
  if (w.at_barrier > 0)
    record_failure(w, "returned while " + std::to_string(w.at_barrier) +
                          " threads of its block wait at __syncthreads");
  const Warp& W = w.warps[f.warp];
  if (W.arrived[0] > 0 || W.arrived[1] > 0)
    record_failure(w, "returned while lanes of its warp wait at a warp shuffle / __syncwarp / WMMA op");
  f.state = Fiber::kDone;
  tg_emu_switch(&f.sp, w.sched_sp);
  std::abort();  // a finished fiber is never resumed
}

void init_stack(Worker& w, int i) {
  const size_t slot = kStackBytes + kPage;
  auto top = reinterpret_cast<std::uintptr_t>(w.stacks + slot * (i + 1)) & ~std::uintptr_t(15);
  void** sp = reinterpret_cast<void**>(top);
  *--sp = nullptr;                                 // fiber_main's return address (it never returns)
  *--sp = reinterpret_cast<void*>(&fiber_main);    // where tg_emu_switch's `ret` goes
  for (int r = 0; r < 6; ++r) *--sp = nullptr;     // rbp, rbx, r12-r15
  w.fibers[i].sp = sp;
}

std::string describe_deadlock(const Worker& w) {
  int barrier = 0, warp = 0;
  for (int i = 0; i < w.n; ++i) {
    barrier += w.fibers[i].state == Fiber::kAtBarrier;
    warp += w.fibers[i].state == Fiber::kAtWarp;
  }
  std::string s = std::string("CUDA emulator: kernel ") + w.kernel + ", block " + str(blockIdx) +
                  ": deadlock (the hardware would hang or misbehave): " + std::to_string(barrier) +
                  " threads wait at __syncthreads, " + std::to_string(warp) +
                  " at warp ops, " + std::to_string(w.exited) + " returned, of " + std::to_string(w.n);
  for (size_t k = 0; k < w.warps.size(); ++k) {
    const Warp& W = w.warps[k];
    for (int p = 0; p < 2; ++p)
      if (W.arrived[p] > 0)
        s += "; warp " + std::to_string(k) + ": " + std::to_string(W.arrived[p]) + " of " +
             std::to_string(W.size) + " lanes at a warp op";
  }
  return s;
}

void check_canaries(const Worker& w) {
  auto intact = [&](size_t off) {
    for (size_t i = 0; i < kCanary; ++i)
      if (w.arena[off + i] != kCanaryByte) return false;
    return true;
  };
  if (!intact(w.dyn))
    throw Error(std::string("CUDA emulator: kernel ") + w.kernel + ", block " + str(blockIdx) +
                ": wrote past the end of its dynamic shared memory (" + std::to_string(w.dyn) + " bytes)");
  for (const SharedVar& v : w.vars)
    if (!intact(v.off + v.size))
      throw Error(std::string("CUDA emulator: kernel ") + w.kernel + ", block " + str(blockIdx) +
                  ": wrote past the end of __shared__ " + v.name + " (" + std::to_string(v.size) + " bytes)");
}

void run_block(Worker& w, uint3 block, size_t dyn) {
  blockIdx = block;
  const int n = w.n;
  w.exited = w.at_barrier = 0;
  w.failed = false;
  w.vars.clear();
  w.static_bytes = 0;
  w.dyn = dyn;
  std::memset(w.arena, kPoison, dyn);
  std::memset(w.arena + dyn, kCanaryByte, kCanary);
  w.top = dyn + kCanary;
  for (Warp& W : w.warps) W.exited = W.arrived[0] = W.arrived[1] = 0;
  for (int i = 0; i < n; ++i) {
    Fiber& f = w.fibers[i];
    f.state = Fiber::kReady;
    f.tid = {static_cast<unsigned>(i) % blockDim.x, static_cast<unsigned>(i) / blockDim.x % blockDim.y,
             static_cast<unsigned>(i) / (blockDim.x * blockDim.y)};
    f.warp = i / 32;
    f.lane = i % 32;
    f.warp_phase = 0;
    f.copies.clear();
    f.group_end.clear();
    f.copies_done = f.groups_done = 0;
    init_stack(w, i);
  }
  for (;;) {
    bool ran = false;
    for (int i = 0; i < n; ++i) {
      Fiber& f = w.fibers[i];
      if (f.state != Fiber::kReady) continue;
      ran = true;
      w.cur = &f;
      threadIdx = f.tid;
      tg_emu_switch(&w.sched_sp, f.sp);
      if (w.failed) throw Error(w.error);
    }
    if (w.exited == n) break;
    if (!ran) throw Error(describe_deadlock(w));
  }
  check_canaries(w);
}

Worker* acquire_worker() {
  {
    std::lock_guard<std::mutex> lock(g_pool_mutex);
    if (!g_pool.empty()) {
      Worker* w = g_pool.back().release();
      g_pool.pop_back();
      return w;
    }
  }
  return new Worker();
}

void release_worker(Worker* w) {
  std::lock_guard<std::mutex> lock(g_pool_mutex);
  g_pool.emplace_back(w);
}

int host_threads() {
  static const int n = [] {
    const char* e = std::getenv("TG_EMU_THREADS");
    int v = e != nullptr ? std::atoi(e) : static_cast<int>(std::thread::hardware_concurrency());
    return std::max(1, std::min(v, 8));
  }();
  return n;
}

}  // namespace

void fail(const std::string& what) { throw Error(what); }

int set_sm_count(int n) {
  const int old = g_sm_count.load();
  if (n > 0) g_sm_count = n;
  return old;
}

cudaError_t func_set_attribute(const void* func, cudaFuncAttribute attr, int value) {
  if (attr != cudaFuncAttributeMaxDynamicSharedMemorySize) return cudaErrorInvalidValue;
  if (value < 0 || static_cast<size_t>(value) > kSmemOptinMax) return cudaErrorInvalidValue;
  std::lock_guard<std::mutex> lock(g_attr_mutex);
  g_max_dynamic[func] = value;
  return cudaSuccess;
}

void run_grid(const char* name, const void* func, const LaunchConfig& cfg, void (*body)(void*), void* ctx) {
  const dim3 g = cfg.grid, b = cfg.block;
  const long long threads = static_cast<long long>(b.x) * b.y * b.z;
  if (threads < 1 || threads > kMaxThreads || b.x > 1024 || b.y > 1024 || b.z > 64 || g.x == 0 ||
      g.y == 0 || g.z == 0 || g.x > 2147483647u || g.y > 65535 || g.z > 65535) {
    t_last_error = cudaErrorInvalidConfiguration;
    return;
  }
  size_t limit = kDynamicSmemDefault;
  {
    std::lock_guard<std::mutex> lock(g_attr_mutex);
    auto it = g_max_dynamic.find(func);
    if (it != g_max_dynamic.end()) limit = std::max(limit, static_cast<size_t>(it->second));
  }
  if (cfg.smem > limit) {
    t_last_error = cudaErrorInvalidValue;  // as the runtime: too much dynamic shared memory
    return;
  }
  const long long blocks = static_cast<long long>(g.x) * g.y * g.z;
  int nworkers = static_cast<int>(std::min<long long>(host_threads(), blocks));
  if (blocks * threads < 4096) nworkers = 1;  // not worth a thread

  std::atomic<long long> next{0};
  std::atomic<bool> stop{false};
  std::mutex err_mutex;
  std::string first_error;
  auto work = [&] {
    Worker* w = nullptr;
    try {
      w = acquire_worker();
      w->reserve(static_cast<int>(threads));
      w->n = static_cast<int>(threads);
      w->warps.assign((threads + 31) / 32, Warp());
      for (size_t k = 0; k < w->warps.size(); ++k)
        w->warps[k].size = static_cast<int>(std::min<long long>(32, threads - 32 * static_cast<long long>(k)));
      w->body = body;
      w->ctx = ctx;
      w->kernel = name;
      t_worker = w;
      blockDim = {b.x, b.y, b.z};
      gridDim = {g.x, g.y, g.z};
      for (;;) {
        const long long k = next++;
        if (k >= blocks || stop) break;
        const uint3 blk{static_cast<unsigned>(k % g.x), static_cast<unsigned>(k / g.x % g.y),
                        static_cast<unsigned>(k / (static_cast<long long>(g.x) * g.y))};
        run_block(*w, blk, cfg.smem);
      }
    } catch (const std::exception& e) {
      std::lock_guard<std::mutex> lock(err_mutex);
      if (first_error.empty()) first_error = e.what();
      stop = true;
    }
    t_worker = nullptr;
    if (w != nullptr) release_worker(w);
  };
  if (nworkers <= 1) {
    work();
  } else {
    std::vector<std::thread> pool;
    for (int i = 1; i < nworkers; ++i) pool.emplace_back(work);
    work();
    for (auto& t : pool) t.join();
  }
  if (!first_error.empty()) throw std::runtime_error(first_error);
}

void check_launch_bounds(long long n) {
  const long long threads = static_cast<long long>(blockDim.x) * blockDim.y * blockDim.z;
  if (threads > n)
    fail("launched with " + std::to_string(threads) + " threads per block, above its __launch_bounds__(" +
         std::to_string(n) + ") (the hardware refuses: too many resources requested for launch)");
}

void syncthreads() {
  Worker& w = *t_worker;
  Fiber& f = *w.cur;
  if (w.exited > 0)
    fail("__syncthreads after " + std::to_string(w.exited) + " of the block's " + std::to_string(w.n) +
         " threads returned");
  if (++w.at_barrier == w.n) {
    w.at_barrier = 0;
    for (int i = 0; i < w.n; ++i)
      if (w.fibers[i].state == Fiber::kAtBarrier) w.fibers[i].state = Fiber::kReady;
    return;
  }
  f.state = Fiber::kAtBarrier;
  yield(w, f);
}

const uint64_t* warp_exchange(uint64_t mine, void (*on_full)(const uint64_t* all, int n)) {
  Worker& w = *t_worker;
  Fiber& f = *w.cur;
  Warp& W = w.warps[f.warp];
  if (W.exited > 0) fail("warp shuffle / __syncwarp / WMMA op after lanes of the warp returned");
  const int p = static_cast<int>(f.warp_phase & 1u);
  ++f.warp_phase;
  W.buf[p][f.lane] = mine;
  if (++W.arrived[p] == W.size) {
    W.arrived[p] = 0;
    if (on_full != nullptr) on_full(W.buf[p], W.size);
    for (int i = f.warp * 32; i < f.warp * 32 + W.size; ++i)
      if (w.fibers[i].state == Fiber::kAtWarp) w.fibers[i].state = Fiber::kReady;
    return W.buf[p];
  }
  f.state = Fiber::kAtWarp;
  yield(w, f);
  return W.buf[p];
}

int lane_id() { return t_worker->cur->lane; }
int warp_size_here() { return t_worker->warps[t_worker->cur->warp].size; }

void* shared_alloc(long id, const char* name, size_t bytes, size_t align) {
  Worker& w = *t_worker;
  for (const SharedVar& v : w.vars)
    if (v.id == id) return w.arena + v.off;
  const size_t off = (w.top + align - 1) / align * align;
  w.static_bytes += bytes;
  if (w.static_bytes > kStaticSmemMax)
    fail(std::string("__shared__ ") + name + ": static shared memory above 48 KiB");
  if (w.dyn + w.static_bytes > kSmemOptinMax || off + bytes + kCanary > kArenaBytes)
    fail(std::string("__shared__ ") + name + ": static + dynamic shared memory above 227 KiB");
  std::memset(w.arena + off, kPoison, bytes);
  std::memset(w.arena + off + bytes, kCanaryByte, kCanary);
  w.vars.push_back({id, off, bytes, name});
  w.top = off + bytes + kCanary;
  return w.arena + off;
}

void* dynamic_smem_base() { return t_worker->arena; }

size_t shared_offset(const void* p) {
  const Worker& w = *t_worker;
  const auto* c = static_cast<const unsigned char*>(p);
  if (c < w.arena || c >= w.arena + kArenaBytes) fail("__cvta_generic_to_shared: not a shared-memory address");
  return static_cast<size_t>(c - w.arena);
}

void cp_async(unsigned smem_dst, const void* src, int cp_size, int src_size) {
  Worker& w = *t_worker;
  Fiber& f = *w.cur;
  if (cp_size != 4 && cp_size != 8 && cp_size != 16) fail("cp.async: size must be 4, 8 or 16");
  if (src_size < 0 || src_size > cp_size) fail("cp.async: src-size outside [0, cp-size]");
  if (smem_dst % static_cast<unsigned>(cp_size) != 0)
    fail("cp.async: shared destination not " + std::to_string(cp_size) + "-byte aligned");
  bool inside = smem_dst + static_cast<size_t>(cp_size) <= w.dyn;
  for (const SharedVar& v : w.vars)
    inside = inside || (smem_dst >= v.off && smem_dst + static_cast<size_t>(cp_size) <= v.off + v.size);
  if (!inside) fail("cp.async: shared destination outside the block's shared memory");
  if (src_size > 0 && reinterpret_cast<std::uintptr_t>(src) % static_cast<unsigned>(cp_size) != 0)
    fail("cp.async: global source not " + std::to_string(cp_size) + "-byte aligned (misaligned address)");
  f.copies.push_back({w.arena + smem_dst, static_cast<const unsigned char*>(src), cp_size, src_size});
}

void cp_async_commit() {
  Fiber& f = *t_worker->cur;
  f.group_end.push_back(f.copies.size());
}

void cp_async_wait(int groups_left) {
  Fiber& f = *t_worker->cur;
  while (f.group_end.size() - f.groups_done > static_cast<size_t>(groups_left)) {
    land(f, f.group_end[f.groups_done]);
    ++f.groups_done;
  }
}

}  // namespace tg_emu

// ------------------------------------------------------------------------------ runtime API
cudaError_t cudaGetLastError() {
  const cudaError_t e = tg_emu::t_last_error;
  tg_emu::t_last_error = cudaSuccess;
  return e;
}

const char* cudaGetErrorName(cudaError_t err) {
  switch (err) {
    case cudaSuccess: return "cudaSuccess";
    case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
    case cudaErrorInvalidConfiguration: return "cudaErrorInvalidConfiguration";
  }
  return "cudaErrorUnknown";
}

const char* cudaGetErrorString(cudaError_t err) {
  switch (err) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
  }
  return "unknown error";
}

cudaError_t cudaGetDevice(int* dev) {
  *dev = 0;
  return cudaSuccess;
}

cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int dev) {
  if (dev != 0) return cudaErrorInvalidValue;
  switch (attr) {
    case cudaDevAttrMultiProcessorCount: *value = tg_emu::g_sm_count.load(); return cudaSuccess;
    case cudaDevAttrMaxSharedMemoryPerBlockOptin: *value = static_cast<int>(tg_emu::kSmemOptinMax); return cudaSuccess;
  }
  return cudaErrorInvalidValue;
}

cudaError_t cudaMemsetAsync(void* p, int value, size_t bytes, cudaStream_t) {
  if (bytes > 0 && p == nullptr) return cudaErrorInvalidValue;
  if (bytes > 0) std::memset(p, value, bytes);
  return cudaSuccess;
}
