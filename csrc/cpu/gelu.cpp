// GELU, elementwise, forward and backward, on float32 arrays of any shape.
//
//   gelu_forward(x, approximate) -> (y, ())          approximate: 'tanh' | 'none'
//   gelu_backward(grad, x, approximate, saved) -> dx  (saved: the () forward returned)
//
// Same arguments and results as tinygpt/kernels/reference.py; nothing is saved (backward
// recomputes from x, which costs arithmetic but no memory traffic).
//
// 'tanh' (GPT-2): the one GELU of the SIMD layer (simd.h: gelu_lanes), the GEMM epilogue's, run by
//   gemm.h's gelu_tanh_rows: y = x / (1 + exp(-2u)), u = sqrt(2/pi) (x + 0.044715 x^3).
// 'none' (exact): y = x Phi(x), Phi(x) = erfc(-x / sqrt 2) / 2, erfc(t) = k exp(-t^2) S(k),
//   k = 1 / (1 + t/2) (the form of Numerical Recipes' erfcc, with our own fit of S); the
//   backward shares exp(-t^2) with the normal pdf: one exp per element either way.
// exp: the SIMD layer's (simd.h: exp_lanes), as plain float code so the loops vectorise.
// Max error vs the float64 reference on float32 inputs (3e6 points in [-12, 12] and N(0, 3)):
// see tests/ops/test_gelu.py (relative <= 2e-6, absolute <= 5e-7).
//
// SIMD: the erf form in `#pragma omp simd` loops, one copy per instruction set (isa.h: TG_PER_ISA);
// OpenMP threads split the array.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "gemm.h"
#include "isa.h"
#include "ops.h"
#include "simd.h"
#include "py_common.h"
#include "registry.h"

namespace tinygpt {
namespace {

using index_t = std::int64_t;

using cpu::Isa;
using cpu::Scalar;

constexpr float kInvSqrt2 = 0.7071067811865476f;
constexpr float kInvSqrt2Pi = 0.3989422804014327f;

// Exact form: y = x Phi(x), Phi(x) = erfc(-x / sqrt 2) / 2, with (t = |x| / sqrt 2)
//   erfc(t) = k exp(-t^2) S(k), k = 1 / (1 + t / 2), S a degree-10 polynomial fitted to
//   erfc(t) e^(t^2) / k on k in (0, 1] (all t >= 0; 1.1e-8 relative before rounding, 1.5e-7
//   evaluated in float32), so Phi is accurate relative to itself in the negative tail too.
//   dy/dx = Phi(x) + x pdf(x), pdf(x) = exp(-t^2) / sqrt(2 pi): the same exponential.
template <Isa I, bool kGrad>
TG_INLINE float gelu_erf(float v) {
  using L = Scalar<I>;
  const float t = std::fabs(v) * kInvSqrt2;
  const float k = 1.0f / L::fma(0.5f, t, 1.0f);
  float p = 0.04235319048166275f;
  p = L::fma(p, k, -0.2308603823184967f);
  p = L::fma(p, k, 0.48618412017822266f);
  p = L::fma(p, k, -0.4469830095767975f);
  p = L::fma(p, k, 0.12709295749664307f);
  p = L::fma(p, k, -0.05723382160067558f);
  p = L::fma(p, k, 0.09300088882446289f);
  p = L::fma(p, k, 0.1753767877817154f);
  p = L::fma(p, k, 0.24688059091567993f);
  p = L::fma(p, k, 0.2820938527584076f);
  p = L::fma(p, k, 0.282094806432724f);
  const float neg_t2 = -t * t;
  const float e = cpu::exp_lanes<L>(neg_t2);  // 0 for neg_t2 < -87
  const float half_erfc = 0.5f * k * e * p;
  const float cdf = v < 0.0f ? half_erfc : 1.0f - half_erfc;
  if constexpr (!kGrad) {
    return v * cdf;
  } else {
    const float x_pdf = neg_t2 < -87.0f ? 0.0f : v * (kInvSqrt2Pi * e);  // 0 in float beyond
    return cdf + x_pdf;
  }
}

// One chunk [0, n): y = f(x) (forward) or dx = g * f'(x) (backward, g != null).
template <Isa I>
TG_INLINE void erf_chunk_body(const float* __restrict x, const float* __restrict g, float* __restrict out, index_t n) {
  if (g == nullptr) {
#pragma omp simd
    for (index_t i = 0; i < n; ++i) out[i] = gelu_erf<I, false>(x[i]);
  } else {
#pragma omp simd
    for (index_t i = 0; i < n; ++i) out[i] = g[i] * gelu_erf<I, true>(x[i]);
  }
}
TG_PER_ISA(erf_chunk, erf_chunk_body)

// Parallel only from 2^20 elements (4 MiB per float array, ~0.3-0.5 ms on one thread): waking
// a second thread costs a few microseconds on an idle machine but a whole scheduler time slice
// (~10 ms) when another process holds the other core, and every OpenMP region ends in a
// barrier that waits for it; below this size that risk is not worth the at most 2x.
constexpr index_t kParallelMinElems = index_t{1} << 20;
constexpr index_t kBlock = 1 << 12;  // elements per scheduling unit (16 KiB: cache-line aligned)

void run(bool tanh, const float* x, const float* g, float* out, index_t n) {
  const index_t nblocks = (n + kBlock - 1) / kBlock;
#pragma omp parallel for schedule(static) if (n >= kParallelMinElems)
  for (index_t b = 0; b < nblocks; ++b) {
    const index_t lo = b * kBlock;
    const float* gb = g != nullptr ? g + lo : nullptr;
    const index_t len = std::min(n, lo + kBlock) - lo;
    if (tanh && gb == nullptr) {
      cpu::gelu_tanh_rows(x + lo, out + lo, len);
    } else if (tanh) {
      cpu::gelu_tanh_grad_rows(gb, x + lo, out + lo, len);
    } else {
      erf_chunk(x + lo, gb, out + lo, len);
    }
  }
}

bool is_tanh(const std::string& approximate, const char* op) {
  TG_CHECK(approximate == "tanh" || approximate == "none", op,
           ": approximate must be 'tanh' or 'none', got '", approximate, "'");
  return approximate == "tanh";
}

std::vector<py::ssize_t> shape_of(const py::array& a) {
  return std::vector<py::ssize_t>(a.shape(), a.shape() + a.ndim());
}

py::tuple gelu_forward_py(const py::array& x, const std::string& approximate) {
  const bool tanh = is_tanh(approximate, "gelu_forward");
  check_array<float>(x, "gelu_forward: x");
  const float* xp = static_cast<const float*>(x.data());
  py::array_t<float> y(shape_of(x));
  float* yp = y.mutable_data();
  const index_t n = static_cast<index_t>(x.size());
  {
    py::gil_scoped_release nogil;
    run(tanh, xp, nullptr, yp, n);
  }
  return py::make_tuple(y, py::tuple());
}

py::array gelu_backward_py(const py::array& grad, const py::array& x,
                           const std::string& approximate, const py::object& /*saved*/) {
  const bool tanh = is_tanh(approximate, "gelu_backward");
  check_array<float>(x, "gelu_backward: x");
  check_array<float>(grad, "gelu_backward: grad");
  const bool same = grad.ndim() == x.ndim() && std::equal(x.shape(), x.shape() + x.ndim(), grad.shape());
  TG_CHECK(same, "gelu_backward: grad must have shape ", shape_str(x), ", got ", shape_str(grad));
  const float* xp = static_cast<const float*>(x.data());
  const float* gp = static_cast<const float*>(grad.data());
  py::array_t<float> dx(shape_of(x));
  float* dxp = dx.mutable_data();
  const index_t n = static_cast<index_t>(x.size());
  {
    py::gil_scoped_release nogil;
    run(tanh, xp, gp, dxp, n);
  }
  return std::move(dx);
}

}  // namespace

namespace cpu {

void gelu_forward_rows(bool tanh, const float* x, float* y, int64_t n) { run(tanh, x, nullptr, y, n); }

void bind_gelu(py::module_& m) {
  m.def("gelu_forward", &gelu_forward_py, py::arg("x"), py::arg("approximate"),
        "GELU of float32 x (any shape): (y, ()); approximate 'tanh' or 'none' (exact, erf).");
  m.def("gelu_backward", &gelu_backward_py, py::arg("grad"), py::arg("x"), py::arg("approximate"),
        py::arg("saved"), "Gradient grad * gelu'(x) of gelu_forward.");
}

}  // namespace cpu
}  // namespace tinygpt
