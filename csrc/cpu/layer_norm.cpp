// layer_norm over the last axis, and add_layer_norm: the fused residual add + layer_norm of the
// pre-norm block.
//
//   layer_norm_forward(x, weight, bias, eps) -> (y, (mean, rstd))
//   layer_norm_backward(grad, x, weight, (mean, rstd)) -> (dx, dweight | None, dbias)
//   add_layer_norm_forward(x, residual, weight, bias, eps) -> ((s, y), (s, mean, rstd))
//   add_layer_norm_backward(grad_s | None, grad_y, x, residual, weight, (s, mean, rstd))
//       -> (dx, dx, dweight | None, dbias)               (dx is dresidual: the same array)
//
// Same arguments and results as tinygpt/kernels/reference.py; x is (..., C), weight and bias
// (C,) or None; mean and rstd are (N,) float32 with N = x.size / C (the reference keeps them
// as (..., 1); `saved` is opaque to the caller).
//
// Per row (a row of C floats stays in L1 between passes; one read of x from memory):
//   forward:  sum -> mean; sum (v - mean), sum (v - mean)^2 -> corrected mean and variance
//             (the corrected two-pass algorithm: robust to a large common offset); then
//             y = (v - mean) * rstd * w + b. The fused op first writes s = x + residual and
//             normalises s from L1.
//   backward: one pass for sum(dxhat) and sum(dxhat * xhat) while accumulating
//             dweight += g * xhat and dbias += g, then one pass writing dx (+ grad_s for the
//             fused op, whose saved s replaces re-reading x and residual).
// Wide rows (float32 values beyond ~1e19, where the sum of squares overflows and the fast path
// would give rstd = 0, y = 0): the forward detects them by a non-finite sum of squares and the
// backward by a saved rstd below rstd_min(C); each such row alone is recomputed in float64
// (wide_row_forward / wide_row_backward), every other row keeps its float path bit for bit.
// dweight/dbias: rows are split into a fixed number of chunks (a function of N only); each
// chunk accumulates in double, and the chunks are added in chunk order, so the result is
// bitwise the same for any thread count (no atomics).
//
// SIMD: plain loops with `#pragma omp simd`, one copy per instruction set (isa.h: TG_PER_ISA).
// OpenMP splits rows over threads.
#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <optional>
#include <string>
#include <vector>

#include <pybind11/stl.h>

#include "isa.h"
#include "ops.h"
#include "py_common.h"
#include "registry.h"

namespace tinygpt {
namespace {

using index_t = std::int64_t;

template <bool kFma>
TG_INLINE float madd(float a, float b, float c) {
  if constexpr (kFma) {
    return __builtin_fmaf(a, b, c);
  } else {
    return a * b + c;
  }
}

// ------------------------------------------------------------------------ row kernels
// Mean and 1/sqrt(var + eps) of one row v[0..C), given sum = sum(v) (the caller's first pass).
// Returns false when the float sums overflowed (a wide row: the results are not usable).
template <bool kFma>
TG_INLINE bool row_stats(const float* v, float sum, index_t C, float eps, float* mean_out,
                         float* rstd_out) {
  const float m0 = sum / static_cast<float>(C);
  float s1 = 0.0f, s2 = 0.0f;
#pragma omp simd reduction(+ : s1, s2)
  for (index_t i = 0; i < C; ++i) {
    const float d = v[i] - m0;
    s1 += d;
    s2 = madd<kFma>(d, d, s2);
  }
  const double dm = static_cast<double>(s1) / static_cast<double>(C);
  const double var = std::max(0.0, (static_cast<double>(s2) - static_cast<double>(s1) * dm) / C);
  *mean_out = static_cast<float>(m0 + dm);
  *rstd_out = static_cast<float>(1.0 / std::sqrt(var + static_cast<double>(eps)));
  return std::isfinite(s2);  // an overflowing sum makes mean inf and s2 inf or nan too
}

// ------------------------------------------------------------------------ wide rows (cold)
// Rows beyond float's range for the float path, recomputed in float64 (two passes). One copy for
// every instruction set: they are rare (inputs near 1e19 and beyond), so speed does not matter.
double mean64(const float* v, index_t C) {
  double sum = 0.0;
  for (index_t i = 0; i < C; ++i) sum += v[i];
  return sum / static_cast<double>(C);
}
double var64(const float* v, double mean, index_t C) {
  double ss = 0.0;
  for (index_t i = 0; i < C; ++i) ss += (v[i] - mean) * (v[i] - mean);
  return ss / static_cast<double>(C);
}

[[gnu::noinline, gnu::cold]] void wide_row_forward(const float* v, const float* w, const float* b,
                                                   float* y, index_t C, float eps, float* mean_out,
                                                   float* rstd_out) {
  const double mean = mean64(v, C);
  const double rstd = 1.0 / std::sqrt(var64(v, mean, C) + static_cast<double>(eps));
  for (index_t i = 0; i < C; ++i) {
    double o = (v[i] - mean) * rstd;
    if (w != nullptr) o *= w[i];
    if (b != nullptr) o += b[i];
    y[i] = static_cast<float>(o);
  }
  *mean_out = static_cast<float>(mean);
  *rstd_out = static_cast<float>(rstd);
}

// The backward of one wide row; its statistics are recomputed from v (the saved rstd may be a
// float32 subnormal; eps is far below the variance of such a row).
[[gnu::noinline, gnu::cold]] void wide_row_backward(const float* g, const float* gs, const float* v,
                                                    const float* w, float* dx, double* dw,
                                                    double* db, index_t C) {
  const double mean = mean64(v, C);
  const double rstd = 1.0 / std::sqrt(var64(v, mean, C));
  double a = 0.0, c = 0.0;
  for (index_t i = 0; i < C; ++i) {
    const double dxhat = w != nullptr ? static_cast<double>(g[i]) * w[i] : g[i];
    a += dxhat;
    c += dxhat * ((v[i] - mean) * rstd);
  }
  a /= static_cast<double>(C);
  c /= static_cast<double>(C);
  for (index_t i = 0; i < C; ++i) {
    const double xhat = (v[i] - mean) * rstd;
    const double dxhat = w != nullptr ? static_cast<double>(g[i]) * w[i] : g[i];
    dx[i] = static_cast<float>(rstd * (dxhat - a - xhat * c) + (gs != nullptr ? gs[i] : 0.0f));
    if (dw != nullptr) dw[i] += g[i] * xhat;
    db[i] += g[i];
  }
}

// The smallest saved rstd the float backward handles: rstd a normal float and |v - mean|, at most
// std * sqrt(C), within half of float's range (so v - mean and xhat cannot overflow).
float rstd_min(index_t C) {
  return static_cast<float>(std::max(static_cast<double>(FLT_MIN),
                                     2.0 * std::sqrt(static_cast<double>(C)) / static_cast<double>(FLT_MAX)));
}

// y = (v - mean) * rstd * w + b for one row; w, b may be null. (v - mean is formed first,
// not v * rstd - mean * rstd: it is exact when v is near mean, so an ill-conditioned row,
// large offset and small spread, keeps its accuracy.)
template <bool kFma>
TG_INLINE void row_normalize(const float* v, const float* w, const float* b, float* y, index_t C,
                             float mean, float rstd) {
  if (w != nullptr && b != nullptr) {
#pragma omp simd
    for (index_t i = 0; i < C; ++i) y[i] = madd<kFma>((v[i] - mean) * rstd, w[i], b[i]);
  } else if (w != nullptr) {
#pragma omp simd
    for (index_t i = 0; i < C; ++i) y[i] = (v[i] - mean) * rstd * w[i];
  } else if (b != nullptr) {
#pragma omp simd
    for (index_t i = 0; i < C; ++i) y[i] = (v[i] - mean) * rstd + b[i];
  } else {
#pragma omp simd
    for (index_t i = 0; i < C; ++i) y[i] = (v[i] - mean) * rstd;
  }
}

// Forward over rows [r0, r1). With r != null the row is s = x + r (stored to s, and summed
// in the same pass) first.
template <bool kFma>
TG_INLINE void forward_rows(const float* x, const float* r, float* s, const float* w,
                            const float* b, float* y, float* mean, float* rstd, index_t r0,
                            index_t r1, index_t C, float eps) {
  for (index_t row = r0; row < r1; ++row) {
    const float* v = x + row * C;
    float sum = 0.0f;
    if (r != nullptr) {
      const float* rr = r + row * C;
      float* ss = s + row * C;
#pragma omp simd reduction(+ : sum)
      for (index_t i = 0; i < C; ++i) {
        ss[i] = v[i] + rr[i];
        sum += ss[i];
      }
      v = ss;
    } else {
#pragma omp simd reduction(+ : sum)
      for (index_t i = 0; i < C; ++i) sum += v[i];
    }
    if (!row_stats<kFma>(v, sum, C, eps, mean + row, rstd + row)) {
      wide_row_forward(v, w, b, y + row * C, C, eps, mean + row, rstd + row);
      continue;
    }
    row_normalize<kFma>(v, w, b, y + row * C, C, mean[row], rstd[row]);
  }
}

// Backward over rows [r0, r1) of v (the normalised input: x, or s for the fused op):
//   dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)) (+ gs when gs != null)
// with dxhat = g * w (or g); accumulates dw += g * xhat (when dw != null) and db += g.
template <bool kFma, bool kWeight>
TG_INLINE void backward_rows_impl(const float* g, const float* gs, const float* v, const float* w,
                                  const float* mean, const float* rstd, float* dx, double* dw,
                                  double* db, index_t r0, index_t r1, index_t C) {
  const float inv_c = 1.0f / static_cast<float>(C);
  const float rs_min = rstd_min(C);
  for (index_t row = r0; row < r1; ++row) {
    const float* gr = g + row * C;
    const float* vr = v + row * C;
    const float rs = rstd[row];
    const float mu = mean[row];
    if (rs < rs_min) {
      wide_row_backward(gr, gs != nullptr ? gs + row * C : nullptr, vr, w, dx + row * C,
                        kWeight ? dw : nullptr, db, C);
      continue;
    }
    float sum_dxhat = 0.0f, sum_dxhat_xhat = 0.0f;
#pragma omp simd reduction(+ : sum_dxhat, sum_dxhat_xhat)
    for (index_t i = 0; i < C; ++i) {
      const float xhat = (vr[i] - mu) * rs;
      const float dxhat = kWeight ? gr[i] * w[i] : gr[i];
      sum_dxhat += dxhat;
      sum_dxhat_xhat = madd<kFma>(dxhat, xhat, sum_dxhat_xhat);
      if constexpr (kWeight) dw[i] += static_cast<double>(gr[i] * xhat);
      db[i] += static_cast<double>(gr[i]);
    }
    const float a = sum_dxhat * inv_c;
    const float c = sum_dxhat_xhat * inv_c;
    float* dr = dx + row * C;
    const float* gsr = gs != nullptr ? gs + row * C : nullptr;
    if (gsr != nullptr) {
#pragma omp simd
      for (index_t i = 0; i < C; ++i) {
        const float xhat = (vr[i] - mu) * rs;
        const float dxhat = kWeight ? gr[i] * w[i] : gr[i];
        dr[i] = madd<kFma>(rs, dxhat - a - xhat * c, gsr[i]);
      }
    } else {
#pragma omp simd
      for (index_t i = 0; i < C; ++i) {
        const float xhat = (vr[i] - mu) * rs;
        const float dxhat = kWeight ? gr[i] * w[i] : gr[i];
        dr[i] = rs * (dxhat - a - xhat * c);
      }
    }
  }
}

template <bool kFma>
TG_INLINE void backward_rows(const float* g, const float* gs, const float* v, const float* w,
                             const float* mean, const float* rstd, float* dx, double* dw,
                             double* db, index_t r0, index_t r1, index_t C) {
  if (w != nullptr) {
    backward_rows_impl<kFma, true>(g, gs, v, w, mean, rstd, dx, dw, db, r0, r1, C);
  } else {
    backward_rows_impl<kFma, false>(g, gs, v, w, mean, rstd, dx, dw, db, r0, r1, C);
  }
}

// ------------------------------------------------------------------------ one copy per ISA
// FMA where the instruction set has it (avx2, avx512), a plain multiply-add on the baseline.
template <cpu::Isa I, class... A>
TG_INLINE void forward_body(A... a) {
  forward_rows<I != cpu::Isa::baseline>(a...);
}
template <cpu::Isa I, class... A>
TG_INLINE void backward_body(A... a) {
  backward_rows<I != cpu::Isa::baseline>(a...);
}
TG_PER_ISA(forward_block, forward_body)
TG_PER_ISA(backward_block, backward_body)

// ------------------------------------------------------------------------ drivers
// Parallel from 2^15 elements (128 KiB per float array, ~15 us on one thread): below that, waking the
// second thread costs more than it saves (the measurement behind the threshold is in BENCHMARKS.md).
constexpr index_t kParallelMinElems = index_t{1} << 15;

void forward(const float* x, const float* r, float* s, const float* w, const float* b, float* y,
             float* mean, float* rstd, index_t N, index_t C, float eps) {
  const index_t block = 16;  // rows per scheduling unit
  const index_t nblocks = (N + block - 1) / block;
#pragma omp parallel for schedule(static) if (N * C >= kParallelMinElems)
  for (index_t blk = 0; blk < nblocks; ++blk) {
    forward_block(x, r, s, w, b, y, mean, rstd, blk * block, std::min(N, (blk + 1) * block), C, eps);
  }
}

// Fills dx (N, C) and, when non-null, dw and db (C,).
void backward(const float* g, const float* gs, const float* v, const float* w, const float* mean,
              const float* rstd, float* dx, float* dw, float* db, index_t N, index_t C) {
  // Fixed chunking (depends on N only): at most 64 chunks of at least 16 rows.
  const index_t chunk_rows = std::max<index_t>(16, (N + 63) / 64);
  const index_t nchunks = std::max<index_t>(1, (N + chunk_rows - 1) / chunk_rows);
  std::vector<double> acc(static_cast<size_t>(nchunks) * 2 * C, 0.0);  // per chunk: dw, db
#pragma omp parallel for schedule(static) if (N * C >= kParallelMinElems)
  for (index_t k = 0; k < nchunks; ++k) {
    double* dwk = acc.data() + k * 2 * C;
    backward_block(g, gs, v, w, mean, rstd, dx, dwk, dwk + C, k * chunk_rows, std::min(N, (k + 1) * chunk_rows), C);
  }
  for (index_t i = 0; i < C; ++i) {
    double sw = 0.0, sb = 0.0;
    for (index_t k = 0; k < nchunks; ++k) {
      sw += acc[k * 2 * C + i];
      sb += acc[k * 2 * C + C + i];
    }
    if (dw != nullptr) dw[i] = static_cast<float>(sw);
    db[i] = static_cast<float>(sb);
  }
}

// ------------------------------------------------------------------------ bindings
std::vector<py::ssize_t> shape_of(const py::array& a) {
  return std::vector<py::ssize_t>(a.shape(), a.shape() + a.ndim());
}

// x: float32, C-contiguous, at least 1-D with a non-empty last axis. Returns (N, C).
std::pair<index_t, index_t> rows_of(const py::array& x, const char* what) {
  check_array<float>(x, what);
  TG_CHECK(x.ndim() >= 1, what, " must have at least 1 dimension, got shape ", shape_str(x));
  const index_t C = x.shape(x.ndim() - 1);
  TG_CHECK(C >= 1, what, " must have a non-empty last axis, got shape ", shape_str(x));
  return {static_cast<index_t>(x.size()) / C, C};
}

// `a` must be float32, C-contiguous and shaped like `ref`.
const float* like(const py::array& a, const char* what, const py::array& ref) {
  check_array<float>(a, what);
  const bool same = a.ndim() == ref.ndim() && std::equal(a.shape(), a.shape() + a.ndim(), ref.shape());
  TG_CHECK(same, what, " must have shape ", shape_str(ref), ", got ", shape_str(a));
  return static_cast<const float*>(a.data());
}

const float* optional_vector(const std::optional<py::array>& a, const char* what, index_t C) {
  return a ? input_ptr<float>(*a, what, {static_cast<py::ssize_t>(C)}) : nullptr;
}

// saved[i] as an array (never converted: it must be what forward returned).
py::array saved_item(const py::tuple& saved, size_t i, const char* what) {
  TG_CHECK(py::isinstance<py::array>(saved[i]), what, " must be a numpy array, got ",
           std::string(py::str(py::type::of(saved[i]))));
  return py::reinterpret_borrow<py::array>(saved[i]);
}

// The (mean, rstd) tail of a saved tuple, starting at `first`.
std::pair<const float*, const float*> row_stats_of(const py::tuple& saved, size_t first,
                                                   const char* op, index_t N) {
  TG_CHECK(saved.size() == first + 2, op, ": saved must be the tuple its forward returned (",
           first + 2, " items), got ", saved.size(), " items");
  const std::string m = std::string(op) + ": saved mean";
  const std::string r = std::string(op) + ": saved rstd";
  const py::ssize_t n = static_cast<py::ssize_t>(N);
  return {input_ptr<float>(saved_item(saved, first, m.c_str()), m.c_str(), {n}),
          input_ptr<float>(saved_item(saved, first + 1, r.c_str()), r.c_str(), {n})};
}

py::tuple layer_norm_forward_py(const py::array& x, const std::optional<py::array>& weight,
                               const std::optional<py::array>& bias, double eps) {
  const auto [N, C] = rows_of(x, "layer_norm_forward: x");
  const float* xp = static_cast<const float*>(x.data());
  const float* wp = optional_vector(weight, "layer_norm_forward: weight", C);
  const float* bp = optional_vector(bias, "layer_norm_forward: bias", C);
  py::array_t<float> y(shape_of(x));
  py::array_t<float> mean(static_cast<py::ssize_t>(N)), rstd(static_cast<py::ssize_t>(N));
  float *yp = y.mutable_data(), *mp = mean.mutable_data(), *rp = rstd.mutable_data();
  {
    py::gil_scoped_release nogil;
    forward(xp, nullptr, nullptr, wp, bp, yp, mp, rp, N, C, static_cast<float>(eps));
  }
  return py::make_tuple(y, py::make_tuple(mean, rstd));
}

py::tuple layer_norm_backward_py(const py::array& grad, const py::array& x,
                                const std::optional<py::array>& weight, const py::tuple& saved) {
  const auto [N, C] = rows_of(x, "layer_norm_backward: x");
  const float* xp = static_cast<const float*>(x.data());
  const float* gp = like(grad, "layer_norm_backward: grad", x);
  const float* wp = optional_vector(weight, "layer_norm_backward: weight", C);
  const auto [mp, rp] = row_stats_of(saved, 0, "layer_norm_backward", N);
  py::array_t<float> dx(shape_of(x));
  py::array_t<float> db(static_cast<py::ssize_t>(C));
  py::object dw_obj = py::none();
  float* dwp = nullptr;
  if (wp != nullptr) {
    py::array_t<float> dw(static_cast<py::ssize_t>(C));
    dwp = dw.mutable_data();
    dw_obj = dw;
  }
  float *dxp = dx.mutable_data(), *dbp = db.mutable_data();
  {
    py::gil_scoped_release nogil;
    backward(gp, nullptr, xp, wp, mp, rp, dxp, dwp, dbp, N, C);
  }
  return py::make_tuple(dx, dw_obj, db);
}

py::tuple add_layer_norm_forward_py(const py::array& x, const py::array& residual,
                                   const std::optional<py::array>& weight,
                                   const std::optional<py::array>& bias, double eps) {
  const auto [N, C] = rows_of(x, "add_layer_norm_forward: x");
  const float* xp = static_cast<const float*>(x.data());
  const float* rp_in = like(residual, "add_layer_norm_forward: residual", x);
  const float* wp = optional_vector(weight, "add_layer_norm_forward: weight", C);
  const float* bp = optional_vector(bias, "add_layer_norm_forward: bias", C);
  py::array_t<float> s(shape_of(x)), y(shape_of(x));
  py::array_t<float> mean(static_cast<py::ssize_t>(N)), rstd(static_cast<py::ssize_t>(N));
  float *sp = s.mutable_data(), *yp = y.mutable_data();
  float *mp = mean.mutable_data(), *rp = rstd.mutable_data();
  {
    py::gil_scoped_release nogil;
    forward(xp, rp_in, sp, wp, bp, yp, mp, rp, N, C, static_cast<float>(eps));
  }
  return py::make_tuple(py::make_tuple(s, y), py::make_tuple(s, mean, rstd));
}

py::tuple add_layer_norm_backward_py(const std::optional<py::array>& grad_s,
                                    const py::array& grad_y, const py::array& x,
                                    const py::array& residual,
                                    const std::optional<py::array>& weight,
                                    const py::tuple& saved) {
  const auto [N, C] = rows_of(x, "add_layer_norm_backward: x");
  like(residual, "add_layer_norm_backward: residual", x);
  const float* gyp = like(grad_y, "add_layer_norm_backward: grad_y", x);
  const float* gsp = grad_s ? like(*grad_s, "add_layer_norm_backward: grad_s", x) : nullptr;
  const float* wp = optional_vector(weight, "add_layer_norm_backward: weight", C);
  TG_CHECK(saved.size() == 3, "add_layer_norm_backward: saved must be the tuple its forward "
           "returned (3 items), got ", saved.size(), " items");
  const float* sp = like(saved_item(saved, 0, "add_layer_norm_backward: saved s"),
                         "add_layer_norm_backward: saved s", x);
  const auto [mp, rp] = row_stats_of(saved, 1, "add_layer_norm_backward", N);
  py::array_t<float> dx(shape_of(x));
  py::array_t<float> db(static_cast<py::ssize_t>(C));
  py::object dw_obj = py::none();
  float* dwp = nullptr;
  if (wp != nullptr) {
    py::array_t<float> dw(static_cast<py::ssize_t>(C));
    dwp = dw.mutable_data();
    dw_obj = dw;
  }
  float *dxp = dx.mutable_data(), *dbp = db.mutable_data();
  {
    py::gil_scoped_release nogil;
    backward(gyp, gsp, sp, wp, mp, rp, dxp, dwp, dbp, N, C);
  }
  return py::make_tuple(dx, dx, dw_obj, db);
}

}  // namespace

namespace cpu {

void layer_norm_rows(const float* x, const float* r, float* s, const float* w, const float* b, float* y, float* mean,
                     float* rstd, int64_t rows, int64_t C, float eps) {
  forward(x, r, s, w, b, y, mean, rstd, rows, C, eps);
}

void bind_layer_norm(py::module_& m) {
  m.def("layer_norm_forward", &layer_norm_forward_py, py::arg("x"), py::arg("weight").none(true),
        py::arg("bias").none(true), py::arg("eps"),
        "LayerNorm over the last axis of float32 x (..., C): (y, (mean, rstd)).");
  m.def("layer_norm_backward", &layer_norm_backward_py, py::arg("grad"), py::arg("x"),
        py::arg("weight").none(true), py::arg("saved"),
        "Gradients (dx, dweight or None, dbias) of layer_norm_forward.");
  m.def("add_layer_norm_forward", &add_layer_norm_forward_py, py::arg("x"), py::arg("residual"),
        py::arg("weight").none(true), py::arg("bias").none(true), py::arg("eps"),
        "s = x + residual and y = layer_norm(s) in one pass: ((s, y), (s, mean, rstd)).");
  m.def("add_layer_norm_backward", &add_layer_norm_backward_py, py::arg("grad_s").none(true),
        py::arg("grad_y"), py::arg("x"), py::arg("residual"), py::arg("weight").none(true),
        py::arg("saved"),
        "Gradients (dx, dresidual, dweight or None, dbias) of add_layer_norm_forward; "
        "grad_s None counts as zero; dx and dresidual are the same array.");
}

}  // namespace cpu
}  // namespace tinygpt
