// Scaled-dot-product attention, forward and backward, flash-attention style on the CPU.
//
//   out = softmax(q k^T * scale + mask) (dropout) v    for q (..., Tq, hs), k (..., Tk, hs),
//                                                       v (..., Tk, hv); leading dims flattened to BH
//
// Same arguments and gradients as tinygpt/kernels/reference.py: attention_forward/_backward.
// Queries sit at the last Tq key positions (query i at Tk - Tq + i); `causal` hides later keys,
// `window` w keeps only keys with position > query - w (and < query + w when not causal). Every
// query therefore sees one contiguous key span [lo_i, hi_i), monotone in i: tiles outside a
// tile's span are skipped, tiles inside every row's span are not masked at all.
//
// Forward (per (head, query tile) task, OpenMP over tasks): for key blocks of Bc, S = q k^T,
// online softmax (running max m and sum l per query), O += P v; the Tq x Tk matrix never exists.
// Saved: (out, m, l, causal, window, seed). Keeping the row max and sum (not only their
// logsumexp m + log l) lets backward rebuild P = exp(S - m) / l to float32 rounding even for
// logits of 1e4, where a float32 logsumexp would already be off by ~1e-3 in absolute terms.
// Backward (FlashAttention-2): D = rowsum(dO * O) first; per (head, key-block set) task, key
// blocks outer, query tiles inner: rebuild P, dV += P^T dO, dP = dO v^T, dS = P (dP - D),
// dK += dS^T q, dQ += dS k. dK/dV of a key block belong to one task (no races); dQ goes to a
// per-task buffer, summed afterwards only when a head's key blocks were split across tasks
// (few heads, many threads).
// Dropout on the attention weights uses the counter-based mask of rng.h with the flat index of
// the (..., Tq, Tk) matrix, so it equals reference.dropout_mask(att.shape, p, seed) exactly and
// both passes regenerate it per tile.
//
// Packed variant (qkv_attention_forward/_backward, what CausalSelfAttention runs in training): q, k,
// v are read in place from c_attn's (B, T, 3C) output and out is written as (B, T, C), heads merged;
// dqkv comes back in qkv's layout. Only the addressing differs (HeadLayout), so the results are
// bit-identical to attention_forward/_backward on split heads, and the split and merge copies (plus
// their backward) disappear from the training step.
// Cached variant (kv_attention, decoding with a KVCache; forward only): the new tokens' k and v are
// copied from qkv into the cache (B, nh, max_length, hs), then q (from qkv) attends over the cache's
// first start + T positions in place (each head's rows are contiguous there), so no step copies the
// cache; a banded layer's tiles before its window are skipped as above.
//
// SIMD: attention_tiles.h is compiled three times (AVX-512, AVX2+FMA, portable) and cpu::isa()
// (isa.h) picks the copy that runs.
// Tile sizes: attention_tiles().
#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <optional>
#include <string>
#include <vector>

#include "isa.h"
#include "ops.h"
#if TG_X86_ISAS
#include <immintrin.h>
#endif

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#endif

#include "parallel.h"
#include "py_common.h"
#include "registry.h"
#include "rng.h"
#include "simd.h"

namespace tinygpt {
namespace attn {

constexpr int64_t kAlign = 16;  // floats: buffers, tiles and padded rows are multiples of 64 bytes

inline int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

// Where head bh's rows of a (B * H heads, T, width) operand live: row t of head bh = b * H + h at
// base + b * sb + h * sh + t * st. The plain kernels take contiguous (BH, T, width) arrays (H = 1,
// sb = T * width, st = width); the packed ones read q, k, v straight out of c_attn's (B, T, 3C)
// output (sb = 3 T C, sh = hs, st = 3C) and write out / take grad in (B, T, C) (st = C), so the
// head split and merge need no copies. Gradients of q, k, v use their inputs' layouts.
struct HeadLayout {
  int64_t H = 1, sb = 0, sh = 0, st = 0;
  int64_t off(int64_t bh) const { return (bh / H) * sb + (bh % H) * sh; }
  static HeadLayout contiguous(int64_t T, int64_t width) { return HeadLayout{1, T * width, 0, width}; }
};

struct Problem {
  const float* q;
  const float* k;
  const float* v;
  int64_t BH, Tq, Tk, D, Dv;
  int64_t Dp, Dvp;       // D, Dv rounded up to kAlign (row length of padded natural-layout copies)
  const int* lo;         // (Tq,) first visible key of each query
  const int* hi;         // (Tq,) one past the last visible key
  float scale;
  bool dropout;
  uint64_t seed;
  uint32_t threshold;    // rng::keep_threshold(p)
  float drop_scale;      // float32(1 / (1 - p))
  int Br, Bc;            // query tile (multiple of kAlign), key block
  HeadLayout lq, lk, lv, lout;  // q (and dq), k (dk), v (dv), out (and its grad)
  // backward reads q, k and grad also as plain row-major B operands with rows of Dp / Dvp floats:
  // true when they must first be copied (width not a multiple of kAlign, or rows strided)
  bool pad_q, pad_k, pad_g;
  // forward: k and v rows are not contiguous (packed qkv); each key block is copied into a
  // contiguous buffer first, which streams through the GEMMs far better than rows 3C apart
  bool strided_kv;
};

// Carves one thread's workspace into regions (offsets in floats, each 64-byte aligned). Under
// AddressSanitizer every region is followed by a poisoned guard, so a tile index that strays out
// of its buffer is reported even though all buffers of a thread share one allocation.
#if defined(__SANITIZE_ADDRESS__)
constexpr int64_t kGuard = kAlign;
#else
constexpr int64_t kGuard = 0;
#endif

struct Carver {
  static constexpr int kMax = 20;
  int64_t at = 0;
  int n = 0;
  int64_t end[kMax] = {};   // one past each region's last float
  int64_t next[kMax] = {};  // where the following region starts
  int64_t take(int64_t len) {
    const int64_t o = at;
    at += round_up(len, kAlign) + kGuard;
    end[n] = o + len;
    next[n++] = at;
    return o;
  }
};

struct FwdLayout {
  int64_t qT, sT, oT, m, l, alpha, lo, hi, kb, vb, total;
  Carver carver;
};

inline FwdLayout fwd_layout(const Problem& P) {
  const int64_t Brp = P.Br;
  FwdLayout L{};
  Carver& c = L.carver;
  L.qT = c.take(P.D * Brp);
  L.sT = c.take(int64_t(P.Bc) * Brp);
  L.oT = c.take(P.Dv * Brp);
  L.m = c.take(Brp);
  L.l = c.take(Brp);
  L.alpha = c.take(Brp);
  L.lo = c.take(Brp);
  L.hi = c.take(Brp);
  L.kb = c.take(P.strided_kv ? int64_t(P.Bc) * P.D : 0);
  L.vb = c.take(P.strided_kv ? int64_t(P.Bc) * P.Dv : 0);
  L.total = c.at;
  return L;
}

struct BwdLayout {
  int64_t qT, doT, m, linv, Drow, lo, hi, qn, kn, gn, vn, dq, sT, dpT, dk, dv, total;
  Carver carver;
};

inline BwdLayout bwd_layout(const Problem& P) {
  const int64_t Br = P.Br, nqt = (P.Tq + Br - 1) / Br, rows = nqt * Br;
  BwdLayout L{};
  Carver& c = L.carver;
  L.qT = c.take(nqt * P.D * Br);
  L.doT = c.take(nqt * P.Dv * Br);
  L.m = c.take(rows);
  L.linv = c.take(rows);
  L.Drow = c.take(rows);
  L.lo = c.take(rows);
  L.hi = c.take(rows);
  L.qn = c.take(P.pad_q ? P.Tq * P.Dp : 0);
  L.kn = c.take(P.pad_k ? P.Tk * P.Dp : 0);
  L.gn = c.take(P.pad_g ? P.Tq * P.Dvp : 0);
  L.vn = c.take(P.lv.st != P.Dv ? P.Tk * P.Dv : 0);
  L.dq = c.take(P.Tq * P.Dp);
  L.sT = c.take(int64_t(P.Bc) * Br);
  L.dpT = c.take(int64_t(P.Bc) * Br);
  L.dk = c.take(int64_t(P.Bc) * P.Dp);
  L.dv = c.take(int64_t(P.Bc) * P.Dvp);
  L.total = c.at;
  return L;
}

using FwdTileFn = void (*)(const Problem&, int64_t, int64_t, int, float*, float*, float*, float*);
using BwdTaskFn = void (*)(const Problem&, int64_t, int, int, float*, const float*, const float*, const float*,
                           const float*, float*, int64_t, float*, float*);

// ------------------------------------------------------------------ the ISA-specific kernels
#define TG_TILES "attention_tiles.h"
#include "per_isa.h"

struct Kernels {
  FwdTileFn forward;
  BwdTaskFn backward;
};

// Indexed by cpu::Isa (baseline, avx2, avx512).
const Kernels kKernels[] = {
    {portable::forward_tile, portable::backward_task},
#if TG_X86_ISAS
    {avx2::forward_tile, avx2::backward_task},
    {avx512::forward_tile, avx512::backward_task},
#endif
};

int g_fwd_br = 64, g_fwd_bc = 64, g_bwd_br = 64, g_bwd_bc = 64;

const Kernels& current_kernels() { return kKernels[static_cast<int>(cpu::isa())]; }

using cpu::max_threads;
using cpu::thread_id;

// One workspace per thread, 64-byte aligned, allocated before the parallel region.
struct Workspace {
  std::vector<float> storage;
  int64_t per_thread = 0;
  Workspace(int threads, const Carver& layout)
      : storage(threads * round_up(layout.at, kAlign) + kAlign), per_thread(round_up(layout.at, kAlign)) {
#if defined(__SANITIZE_ADDRESS__)
    for (int t = 0; t < threads; ++t)
      for (int i = 0; i < layout.n; ++i)
        ASAN_POISON_MEMORY_REGION(get(t) + layout.end[i], sizeof(float) * (layout.next[i] - layout.end[i]));
#endif
  }
  ~Workspace() {
#if defined(__SANITIZE_ADDRESS__)
    ASAN_UNPOISON_MEMORY_REGION(storage.data(), sizeof(float) * storage.size());
#endif
  }
  float* get(int t) {
    const auto base = reinterpret_cast<std::uintptr_t>(storage.data());
    const std::uintptr_t aligned = (base + 63) & ~std::uintptr_t(63);
    return reinterpret_cast<float*>(aligned) + t * per_thread;
  }
};

// Tiny problems (a few microseconds of work, e.g. one decoding step of a small model) run on
// the calling thread: waking a thread team would cost more than it saves.
// Decode (one query per head) reads each head's keys and values once, mostly from memory (the weights streamed
// since the last step evicted them): a second thread's bandwidth pays for the fork from 64K cached floats on.
bool worth_threads(const Problem& P) {
  const int64_t work = P.BH * P.Tq * P.Tk * (P.D + P.Dv);
  return work >= (int64_t(1) << 20) || (P.Tq == 1 && work >= (int64_t(1) << 16));
}

void run_forward(const Kernels& isa, const Problem& P, float* out, float* m, float* l) {
  const int64_t nqt = (P.Tq + P.Br - 1) / P.Br, tasks = P.BH * nqt;
  if (tasks == 0) return;
  const int threads = max_threads();
  Workspace ws(threads, fwd_layout(P).carver);
#pragma omp parallel for schedule(dynamic, 1) if (tasks > 1 && worth_threads(P))
  for (int64_t t = 0; t < tasks; ++t) {
    const int64_t bh = t % P.BH, qt = nqt - 1 - t / P.BH;  // last query tiles (most keys) first
    const int64_t i0 = qt * P.Br;
    isa.forward(P, bh, i0, static_cast<int>(std::min<int64_t>(P.Br, P.Tq - i0)), ws.get(thread_id()), out, m, l);
  }
}

void run_backward(const Kernels& isa, const Problem& P, const float* grad, const float* out, const float* m,
                  const float* l, float* dq, float* dk, float* dv) {
  if (P.BH == 0) return;
  const int threads = max_threads();
  const int64_t nkt = (P.Tk + P.Bc - 1) / P.Bc;
  // split a head's key blocks over several tasks only when heads alone cannot keep threads busy
  int nsplit = static_cast<int>(std::min<int64_t>(std::max<int64_t>(1, (4 * threads + P.BH - 1) / P.BH), std::max<int64_t>(nkt, 1)));
  if (P.Tq == 0) nsplit = 1;
  const int64_t tasks = P.BH * nsplit, head = P.Tq * P.D;
  std::vector<float> partial(nsplit > 1 ? nsplit * P.BH * head : 0);
  Workspace ws(threads, bwd_layout(P).carver);
#pragma omp parallel for schedule(dynamic, 1) if (tasks > 1 && worth_threads(P))
  for (int64_t t = 0; t < tasks; ++t) {
    const int64_t bh = t / nsplit;
    const int s = static_cast<int>(t % nsplit);
    if (nsplit > 1) {  // dq of this part: contiguous rows of D
      isa.backward(P, bh, s, nsplit, ws.get(thread_id()), grad, out, m, l, partial.data() + (s * P.BH + bh) * head,
                   P.D, dk, dv);
    } else {
      isa.backward(P, bh, s, nsplit, ws.get(thread_id()), grad, out, m, l, dq + P.lq.off(bh), P.lq.st, dk, dv);
    }
  }
  if (nsplit > 1) {
    const int64_t n = P.BH * head, rows = P.BH * P.Tq;
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < rows; ++r) {
      float* dst = dq + P.lq.off(r / P.Tq) + (r % P.Tq) * P.lq.st;
      for (int64_t d = 0; d < P.D; ++d) {
        float acc = 0.0f;
        for (int s = 0; s < nsplit; ++s) acc += partial[s * n + r * P.D + d];
        dst[d] = acc;
      }
    }
  }
}

// ------------------------------------------------------------------ bindings
struct Shapes {
  std::vector<py::ssize_t> lead;  // leading (batch, head, ...) dims
  int64_t BH = 1, Tq = 0, Tk = 0, D = 0, Dv = 0;
};

Shapes check_qkv(const char* op, const py::array& q, const py::array& k, const py::array& v) {
  const std::string o(op);
  check_array<float>(q, (o + ": q").c_str());
  check_array<float>(k, (o + ": k").c_str());
  check_array<float>(v, (o + ": v").c_str());
  TG_CHECK(q.ndim() >= 2, op, ": q must be (..., Tq, hs), got shape ", shape_str(q));
  TG_CHECK(k.ndim() == q.ndim(), op, ": k must have q's number of dimensions ", q.ndim(), ", got shape ", shape_str(k));
  TG_CHECK(v.ndim() == q.ndim(), op, ": v must have q's number of dimensions ", q.ndim(), ", got shape ", shape_str(v));
  const py::ssize_t nd = q.ndim();
  Shapes s;
  for (py::ssize_t i = 0; i < nd - 2; ++i) {
    TG_CHECK(k.shape(i) == q.shape(i), op, ": k must have q's leading dims ", shape_str(q), ", got shape ", shape_str(k));
    s.lead.push_back(q.shape(i));
    s.BH *= q.shape(i);
  }
  s.Tq = q.shape(nd - 2);
  s.D = q.shape(nd - 1);
  s.Tk = k.shape(nd - 2);
  TG_CHECK(k.shape(nd - 1) == s.D, op, ": k must have q's head size ", s.D, ", got shape ", shape_str(k));
  for (py::ssize_t i = 0; i < nd - 1; ++i)
    TG_CHECK(v.shape(i) == k.shape(i), op, ": v must match k ", shape_str(k), " except in the last dim, got shape ",
             shape_str(v));
  s.Dv = v.shape(nd - 1);
  TG_CHECK(s.Tk < (int64_t(1) << 30) && s.Tq < (int64_t(1) << 30), op, ": sequence lengths must be < 2^30");
  return s;
}

std::optional<int64_t> window_from_py(const py::object& window, const char* op) {
  if (window.is_none()) return std::nullopt;
  TG_CHECK(py::isinstance<py::int_>(window) || py::hasattr(window, "__index__"), op,
           ": window must be None or a positive int, got ", std::string(py::str(window)));
  const int64_t w = int64_from_py(window, (std::string(op) + ": window").c_str());
  TG_CHECK(w >= 1, op, ": window must be None or a positive int, got ", w);
  return w;
}

// The visible key span [lo_i, hi_i) of every query (see reference.attention_mask).
void key_spans(const char* op, int64_t Tq, int64_t Tk, bool causal, std::optional<int64_t> window,
               std::vector<int>& lo, std::vector<int>& hi) {
  lo.resize(Tq);
  hi.resize(Tq);
  for (int64_t i = 0; i < Tq; ++i) {
    const int64_t pos = Tk - Tq + i;
    int64_t a = 0, b = Tk;
    if (causal) b = std::min(b, pos + 1);
    if (window) {
      a = std::max(a, pos - *window + 1);
      if (!causal) b = std::min(b, pos + *window);
    }
    TG_CHECK(a < b, op, ": query ", i, " (position ", pos, " of ", Tk, " keys) sees no key",
             causal ? " (causal attention needs Tq <= Tk)" : "", "; its softmax would be undefined");
    lo[i] = static_cast<int>(a);
    hi[i] = static_cast<int>(b);
  }
}

std::vector<py::ssize_t> with_tail(const std::vector<py::ssize_t>& lead, std::initializer_list<py::ssize_t> tail) {
  std::vector<py::ssize_t> s(lead);
  s.insert(s.end(), tail);
  return s;
}

void check_dropout_p(double p, const char* op) {
  TG_CHECK(p >= 0.0 && p < 1.0, op, ": dropout_p must be in [0, 1), got ", p);
}

Problem make_problem(int64_t BH, int64_t Tq, int64_t Tk, int64_t D, int64_t Dv, const float* q, const float* k,
                     const float* v, const HeadLayout& lq, const HeadLayout& lk, const HeadLayout& lv,
                     const HeadLayout& lout, const std::vector<int>& lo, const std::vector<int>& hi, double scale,
                     double p, uint64_t seed, bool backward) {
  Problem P{};
  P.q = q;
  P.k = k;
  P.v = v;
  P.BH = BH;
  P.Tq = Tq;
  P.Tk = Tk;
  P.D = D;
  P.Dv = Dv;
  P.Dp = round_up(std::max<int64_t>(D, 1), kAlign);
  P.Dvp = round_up(std::max<int64_t>(Dv, 1), kAlign);
  P.lo = lo.data();
  P.hi = hi.data();
  P.scale = static_cast<float>(scale);
  P.dropout = p > 0.0;
  P.seed = seed;
  P.threshold = rng::keep_threshold(p);
  P.drop_scale = static_cast<float>(1.0 / (1.0 - p));
  const int br = backward ? g_bwd_br : g_fwd_br;
  P.Br = static_cast<int>(std::min<int64_t>(br, round_up(std::max<int64_t>(Tq, 1), kAlign)));
  P.Bc = backward ? g_bwd_bc : g_fwd_bc;
  P.lq = lq;
  P.lk = lk;
  P.lv = lv;
  P.lout = lout;
  P.pad_q = P.Dp != D || lq.st != P.Dp;
  P.pad_k = P.Dp != D || lk.st != P.Dp;
  P.pad_g = P.Dvp != Dv || lout.st != P.Dvp;
  P.strided_kv = lk.st != D || lv.st != Dv;
  return P;
}

// The plain kernels' problem: q, k, v, out contiguous (..., T, width).
Problem make_problem(const Shapes& s, const py::array& q, const py::array& k, const py::array& v,
                     const std::vector<int>& lo, const std::vector<int>& hi, double scale, double p,
                     uint64_t seed, bool backward) {
  return make_problem(s.BH, s.Tq, s.Tk, s.D, s.Dv, static_cast<const float*>(q.data()),
                      static_cast<const float*>(k.data()), static_cast<const float*>(v.data()),
                      HeadLayout::contiguous(s.Tq, s.D), HeadLayout::contiguous(s.Tk, s.D),
                      HeadLayout::contiguous(s.Tk, s.Dv), HeadLayout::contiguous(s.Tq, s.Dv), lo, hi, scale, p, seed,
                      backward);
}

// The packed kernels' operand: qkv (B, T, 3C) as c_attn returns it, C = n_head * hs, in nh heads of hs.
struct Packed {
  int64_t B, T, C, nh, hs;
};

Packed check_packed(const char* op, const py::array& qkv, int64_t n_head) {
  check_array<float>(qkv, (std::string(op) + ": qkv").c_str());
  TG_CHECK(qkv.ndim() == 3, op, ": qkv must be (B, T, 3 * n_embd), got shape ", shape_str(qkv));
  TG_CHECK(n_head >= 1, op, ": n_head must be >= 1, got ", n_head);
  const int64_t c3 = qkv.shape(2);
  TG_CHECK(c3 % (3 * n_head) == 0, op, ": qkv's last dim ", c3, " must be 3 * n_embd with n_embd divisible by n_head ",
           n_head);
  TG_CHECK(qkv.shape(1) < (int64_t(1) << 30), op, ": sequence length must be < 2^30");
  return Packed{qkv.shape(0), qkv.shape(1), c3 / 3, n_head, c3 / 3 / n_head};
}

// q, k, v (B * nh heads) inside qkv: row t of head (b, h) at qkv + b T 3C + t 3C + which C + h hs.
Problem packed_problem(const Packed& d, const float* qkv, const std::vector<int>& lo, const std::vector<int>& hi,
                       double scale, double p, uint64_t seed, bool backward) {
  const HeadLayout in{d.nh, d.T * 3 * d.C, d.hs, 3 * d.C}, out{d.nh, d.T * d.C, d.hs, d.C};
  return make_problem(d.B * d.nh, d.T, d.T, d.hs, d.hs, qkv, qkv + d.C, qkv + 2 * d.C, in, in, in, out, lo, hi, scale,
                      p, seed, backward);
}

// attention_forward's `saved` (out, row max, row sum, causal, window, seed), checked against the
// shapes backward expects: out (and grad) `oshape`, the row statistics `rshape`.
struct Saved {
  py::array out, mx, sum;
  bool causal;
  std::optional<int64_t> window;
  uint64_t seed;
};

void check_exact_shape(const py::array& a, const std::string& what, const std::vector<py::ssize_t>& shape) {
  check_array<float>(a, what.c_str());
  check_shape(a, what.c_str(), shape);
}

Saved unpack_saved(const char* op, const py::tuple& saved, const py::array& grad,
                   const std::vector<py::ssize_t>& oshape, const std::vector<py::ssize_t>& rshape) {
  const std::string o(op);
  TG_CHECK(saved.size() == 6, op, ": saved must be the 6-tuple returned by the forward, got ", saved.size(), " items");
  Saved s{saved[0].cast<py::array>(), saved[1].cast<py::array>(), saved[2].cast<py::array>(), saved[3].cast<bool>(),
          window_from_py(saved[4], op), seed_from_py(saved[5], (o + ": saved seed").c_str())};
  check_exact_shape(grad, o + ": grad", oshape);
  check_exact_shape(s.out, o + ": saved out", oshape);
  check_exact_shape(s.mx, o + ": saved row max", rshape);
  check_exact_shape(s.sum, o + ": saved row sum", rshape);
  return s;
}

// Runs forward into out and the row statistics; returns (out, saved) as attention_forward does.
py::tuple forward_result(const Problem& P, py::array_t<float> out, py::array_t<float> mx, py::array_t<float> sum,
                         bool causal, std::optional<int64_t> w, uint64_t seed) {
  const Kernels& isa = current_kernels();
  float* op_ = out.mutable_data();
  float* mp = mx.mutable_data();
  float* lp = sum.mutable_data();
  {
    py::gil_scoped_release nogil;
    run_forward(isa, P, op_, mp, lp);
  }
  py::object win = w ? py::object(py::int_(*w)) : py::object(py::none());
  return py::make_tuple(out, py::make_tuple(out, mx, sum, causal, win, py::int_(seed)));
}

}  // namespace attn

namespace cpu {

void kv_attention_rows(const float* qkv, float* k_cache, float* v_cache, int64_t B, int64_t T, int64_t n_head,
                       int64_t C, int64_t L, int64_t start, std::optional<int64_t> window, double dropout_p,
                       uint64_t seed, double scale, float* out) {
  using namespace tinygpt::attn;
  const int64_t hs = C / n_head, BH = B * n_head;
  std::vector<int> lo, hi;
  key_spans("kv_attention", T, start + T, true, window, lo, hi);  // the new queries are the last T of start + T keys
  // k, v rows of head (b, h) at cache + ((b nh + h) L + position) hs: contiguous per head
  const HeadLayout in{n_head, T * 3 * C, hs, 3 * C}, cache{n_head, n_head * L * hs, L * hs, hs},
      merged{n_head, T * C, hs, C};
  const Problem P = make_problem(BH, T, start + T, hs, hs, qkv, k_cache, v_cache, in, cache, cache, merged, lo, hi,
                                 scale, dropout_p, seed, false);
  std::vector<float> mx(BH * T), sum(BH * T);
  for (int64_t bh = 0; bh < BH; ++bh)  // store the new keys and values first: the queries see them
    for (int64_t t = 0; t < T; ++t) {
      const float* row = qkv + in.off(bh) + t * in.st;
      std::copy(row + C, row + C + hs, k_cache + cache.off(bh) + (start + t) * hs);
      std::copy(row + 2 * C, row + 2 * C + hs, v_cache + cache.off(bh) + (start + t) * hs);
    }
  run_forward(current_kernels(), P, out, mx.data(), sum.data());
}

void bind_attention(py::module_& m) {
  using namespace tinygpt::attn;
  m.def(
      "attention_forward",
      [](const py::array& q, const py::array& k, const py::array& v, bool causal, const py::object& window,
         double dropout_p, const py::object& seed, double scale) {
        const char* op = "attention_forward";
        const Shapes s = check_qkv(op, q, k, v);
        const std::optional<int64_t> w = window_from_py(window, op);
        check_dropout_p(dropout_p, op);
        const uint64_t sd = seed_from_py(seed, "attention_forward: seed");
        std::vector<int> lo, hi;
        key_spans(op, s.Tq, s.Tk, causal, w, lo, hi);
        py::array_t<float> out = aligned_array(with_tail(s.lead, {s.Tq, s.Dv}));
        py::array_t<float> mx(with_tail(s.lead, {s.Tq}));
        py::array_t<float> sum(with_tail(s.lead, {s.Tq}));
        return forward_result(make_problem(s, q, k, v, lo, hi, scale, dropout_p, sd, false), out, mx, sum, causal, w,
                              sd);
      },
      py::arg("q"), py::arg("k"), py::arg("v"), py::arg("causal"), py::arg("window"), py::arg("dropout_p"),
      py::arg("seed"), py::arg("scale"),
      "Flash attention forward: returns (out, saved), saved = (out, row max, row sum, causal, window, seed).");

  m.def(
      "attention_backward",
      [](const py::array& grad, const py::array& q, const py::array& k, const py::array& v, double dropout_p,
         double scale, const py::tuple& saved) {
        const char* op = "attention_backward";
        const Shapes s = check_qkv(op, q, k, v);
        check_dropout_p(dropout_p, op);
        const Saved sv = unpack_saved(op, saved, grad, with_tail(s.lead, {s.Tq, s.Dv}), with_tail(s.lead, {s.Tq}));
        std::vector<int> lo, hi;
        key_spans(op, s.Tq, s.Tk, sv.causal, sv.window, lo, hi);
        py::array_t<float> dq = aligned_array(with_tail(s.lead, {s.Tq, s.D}));
        py::array_t<float> dk = aligned_array(with_tail(s.lead, {s.Tk, s.D}));
        py::array_t<float> dv = aligned_array(with_tail(s.lead, {s.Tk, s.Dv}));
        const Problem P = make_problem(s, q, k, v, lo, hi, scale, dropout_p, sv.seed, true);
        const Kernels& isa = current_kernels();
        const float* gp = static_cast<const float*>(grad.data());
        const float* outp = static_cast<const float*>(sv.out.data());
        const float* mp = static_cast<const float*>(sv.mx.data());
        const float* lp = static_cast<const float*>(sv.sum.data());
        float* dqp = dq.mutable_data();
        float* dkp = dk.mutable_data();
        float* dvp = dv.mutable_data();
        {
          py::gil_scoped_release nogil;
          if (s.Tq == 0) {  // no query: nothing flows back
            std::fill(dkp, dkp + s.BH * s.Tk * s.D, 0.0f);
            std::fill(dvp, dvp + s.BH * s.Tk * s.Dv, 0.0f);
          } else {
            run_backward(isa, P, gp, outp, mp, lp, dqp, dkp, dvp);
          }
        }
        return py::make_tuple(dq, dk, dv);
      },
      py::arg("grad"), py::arg("q"), py::arg("k"), py::arg("v"), py::arg("dropout_p"), py::arg("scale"),
      py::arg("saved"), "Flash attention backward: returns (dq, dk, dv).");

  m.def(
      "qkv_attention_forward",
      [](const py::array& qkv, const py::object& n_head, bool causal, const py::object& window, double dropout_p,
         const py::object& seed, double scale) {
        const char* op = "qkv_attention_forward";
        const Packed d = check_packed(op, qkv, int64_from_py(n_head, "qkv_attention_forward: n_head"));
        const std::optional<int64_t> w = window_from_py(window, op);
        check_dropout_p(dropout_p, op);
        const uint64_t sd = seed_from_py(seed, "qkv_attention_forward: seed");
        std::vector<int> lo, hi;
        key_spans(op, d.T, d.T, causal, w, lo, hi);
        py::array_t<float> out = aligned_array({d.B, d.T, d.C});
        py::array_t<float> mx({d.B, d.nh, d.T});
        py::array_t<float> sum({d.B, d.nh, d.T});
        const Problem P = packed_problem(d, static_cast<const float*>(qkv.data()), lo, hi, scale, dropout_p, sd, false);
        return forward_result(P, out, mx, sum, causal, w, sd);
      },
      py::arg("qkv"), py::arg("n_head"), py::arg("causal"), py::arg("window"), py::arg("dropout_p"), py::arg("seed"),
      py::arg("scale"),
      "attention_forward on q, k, v read in place from qkv (B, T, 3C) = c_attn's output, out (B, T, C) with the "
      "heads already merged: the same numbers as splitting and merging heads around attention_forward.");

  m.def(
      "qkv_attention_backward",
      [](const py::array& grad, const py::array& qkv, const py::object& n_head, double dropout_p, double scale,
         const py::tuple& saved) {
        const char* op = "qkv_attention_backward";
        const Packed d = check_packed(op, qkv, int64_from_py(n_head, "qkv_attention_backward: n_head"));
        check_dropout_p(dropout_p, op);
        const Saved sv = unpack_saved(op, saved, grad, {d.B, d.T, d.C}, {d.B, d.nh, d.T});
        std::vector<int> lo, hi;
        key_spans(op, d.T, d.T, sv.causal, sv.window, lo, hi);
        py::array_t<float> dqkv = aligned_array({d.B, d.T, 3 * d.C});
        const Problem P =
            packed_problem(d, static_cast<const float*>(qkv.data()), lo, hi, scale, dropout_p, sv.seed, true);
        const Kernels& isa = current_kernels();
        const float* gp = static_cast<const float*>(grad.data());
        const float* outp = static_cast<const float*>(sv.out.data());
        const float* mp = static_cast<const float*>(sv.mx.data());
        const float* lp = static_cast<const float*>(sv.sum.data());
        float* dp = dqkv.mutable_data();
        if (d.T > 0) {
          py::gil_scoped_release nogil;
          run_backward(isa, P, gp, outp, mp, lp, dp, dp + d.C, dp + 2 * d.C);
        }
        return dqkv;
      },
      py::arg("grad"), py::arg("qkv"), py::arg("n_head"), py::arg("dropout_p"), py::arg("scale"), py::arg("saved"),
      "Backward of qkv_attention_forward: returns dqkv (B, T, 3C).");

  m.def(
      "kv_attention",
      [](const py::array& qkv, const py::array& k_cache, const py::array& v_cache, const py::object& start,
         const py::object& n_head, const py::object& window, double dropout_p, const py::object& seed, double scale) {
        const char* op = "kv_attention";
        const Packed d = check_packed(op, qkv, int64_from_py(n_head, "kv_attention: n_head"));
        const int64_t s0 = int64_from_py(start, "kv_attention: start");
        for (const py::array* c : {&k_cache, &v_cache}) {
          const char* what = c == &k_cache ? "kv_attention: k_cache" : "kv_attention: v_cache";
          check_array<float>(*c, what, 4);
          TG_CHECK(c->writeable(), what, " must be writable (the new keys and values are stored in it)");
          TG_CHECK(c->shape(0) == d.B && c->shape(1) == d.nh && c->shape(3) == d.hs, what, " must be (B ", d.B,
                   ", n_head ", d.nh, ", max_length, head size ", d.hs, "), got shape ", shape_str(*c));
        }
        TG_CHECK(v_cache.shape(2) == k_cache.shape(2), op, ": v_cache must have k_cache's shape ", shape_str(k_cache),
                 ", got ", shape_str(v_cache));
        const int64_t L = k_cache.shape(2);
        TG_CHECK(s0 >= 0 && s0 + d.T <= L, op, ": ", d.T, " new tokens at position ", s0, " do not fit the cache's ",
                 L, " positions");
        TG_CHECK(k_cache.data() != v_cache.data(), op, ": k_cache and v_cache must be different arrays");
        const std::optional<int64_t> w = window_from_py(window, op);
        check_dropout_p(dropout_p, op);
        const uint64_t sd = seed_from_py(seed, "kv_attention: seed");
        py::array_t<float> out = aligned_array({d.B, d.T, d.C});
        float* K = static_cast<float*>(const_cast<void*>(k_cache.data()));
        float* V = static_cast<float*>(const_cast<void*>(v_cache.data()));
        {
          py::gil_scoped_release nogil;
          kv_attention_rows(static_cast<const float*>(qkv.data()), K, V, d.B, d.T, d.nh, d.C, L, s0, w, dropout_p, sd,
                            scale, out.mutable_data());
        }
        return out;
      },
      py::arg("qkv"), py::arg("k_cache"), py::arg("v_cache"), py::arg("start"), py::arg("n_head"), py::arg("window"),
      py::arg("dropout_p"), py::arg("seed"), py::arg("scale"),
      "Attention of T new tokens against a KV cache (inference, no backward): stores the keys and values of qkv "
      "(B, T, 3C) into k_cache, v_cache (B, n_head, max_length, hs) at start..start+T-1, then attends causally over "
      "positions 0..start+T-1 read in place; returns out (B, T, C), heads merged.");

  m.def(
      "attention_tiles",
      [](const py::object& fwd_br, const py::object& fwd_bc, const py::object& bwd_br, const py::object& bwd_bc) {
        auto set = [](int& slot, const py::object& value, const char* what, bool query) {
          if (value.is_none()) return;
          const int64_t x = int64_from_py(value, (std::string("attention_tiles: ") + what).c_str());
          TG_CHECK(x >= 1 && x <= 1024 && (!query || x % kAlign == 0), "attention_tiles: ", what,
                   query ? " must be a multiple of 16 in [16, 1024], got " : " must be in [1, 1024], got ", x);
          slot = static_cast<int>(x);
        };
        set(g_fwd_br, fwd_br, "fwd_br", true);
        set(g_fwd_bc, fwd_bc, "fwd_bc", false);
        set(g_bwd_br, bwd_br, "bwd_br", true);
        set(g_bwd_bc, bwd_bc, "bwd_bc", false);
        return py::make_tuple(g_fwd_br, g_fwd_bc, g_bwd_br, g_bwd_bc);
      },
      py::arg("fwd_br") = py::none(), py::arg("fwd_bc") = py::none(), py::arg("bwd_br") = py::none(),
      py::arg("bwd_bc") = py::none(),
      "Tile sizes (query tile, key block) of forward and backward; pass values to change them. "
      "Returns (fwd_br, fwd_bc, bwd_br, bwd_bc).");
}

}  // namespace cpu
}  // namespace tinygpt
