// GELU, elementwise, forward and backward, on float32 arrays of any shape.
//
//   gelu_forward(x, approximate) -> (y, ())          approximate: 'tanh' | 'none'
//   gelu_backward(grad, x, approximate, saved) -> dx  (saved: the () forward returned)
//
// Same arguments and results as tinygpt/kernels/reference.py; nothing is saved (backward
// recomputes from x, which costs arithmetic but no memory traffic).
//
// 'tanh' (GPT-2): y = 0.5 x (1 + tanh(u)), u = sqrt(2/pi) (x + 0.044715 x^3). We use
//   0.5 (1 + tanh(u)) = 1 / (1 + e), e = exp(-2u), so y = x / (1 + e): no cancellation in
//   the negative tail; beyond |2u| = 87 the results are their float limits.
// 'none' (exact): y = x Phi(x), Phi(x) = erfc(-x / sqrt 2) / 2, erfc(t) = k exp(-t^2) S(k),
//   k = 1 / (1 + t/2) (the form of Numerical Recipes' erfcc, with our own fit of S); the
//   backward shares exp(-t^2) with the normal pdf: one exp per element either way.
// exp: Cody-Waite reduction + Cephes' degree-6 polynomial (about 1 ulp), written as plain
// float code so the loops vectorise.
// Max error vs the float64 reference on float32 inputs (3e6 points in [-12, 12] and N(0, 3)):
// see tests/test_native_gelu.py (relative <= 2e-6, absolute <= 5e-7).
//
// SIMD: `#pragma omp simd` loops, one copy per instruction set (isa.h: TG_PER_ISA); OpenMP threads
// split the array.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "isa.h"
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

// exp(x) for x <= 0, about 1 ulp; x is clamped below at -87 (exp(-inf) gives 1.6e-38: the
// callers only need "tiny" there); NaN stays NaN. (One-sided: a two-sided clamp costs the
// vectorised loop several mask instructions per vector.)
template <bool kFma>
TG_INLINE float exp_nonpositive(float x) {
  x = x < -87.0f ? -87.0f : x;
  const float shifter = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer
  const float n = madd<kFma>(x, 1.44269504088896341f, shifter) - shifter;  // round(x / ln 2)
  float r = madd<kFma>(n, -0.693359375f, x);  // x - n ln2, ln2 split in two (Cody-Waite)
  r = madd<kFma>(n, 2.12194440e-4f, r);
  float p = 1.9875691500e-4f;
  p = madd<kFma>(p, r, 1.3981999507e-3f);
  p = madd<kFma>(p, r, 8.3334519073e-3f);
  p = madd<kFma>(p, r, 4.1665795894e-2f);
  p = madd<kFma>(p, r, 1.6666665459e-1f);
  p = madd<kFma>(p, r, 5.0000001201e-1f);
  p = madd<kFma>(p, r * r, r) + 1.0f;
  const std::int32_t bits = (static_cast<std::int32_t>(n) + 127) << 23;  // 2^n
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return p * scale;
}

constexpr float kSqrt2OverPi = 0.7978845608028654f;
constexpr float kTanhC = 0.044715f;
constexpr float kInvSqrt2 = 0.7071067811865476f;
constexpr float kInvSqrt2Pi = 0.3989422804014327f;

// tanh form: 0.5 (1 + tanh(u)) = sigmoid(-a), a = -2u = x (-2 sqrt(2/pi)) (1 + 0.044715 x^2).
// With e = exp(-|a|) <= 1 and r = 1 / (1 + e): sigmoid(-a) = r (a <= 0) or e r (a > 0), and
// 1 - sigmoid(-a) is the other one; nothing overflows, no cancellation in either tail.
// Beyond |a| = 87 (|x| >~ 9.95) y is 0 or x and dy/dx 0 or 1 in float, set explicitly where
// x^3 may overflow.
template <bool kFma, bool kGrad>
TG_INLINE float gelu_tanh(float v) {
  const float v2 = v * v;
  const float a = v * madd<kFma>(-2.0f * kSqrt2OverPi * kTanhC, v2, -2.0f * kSqrt2OverPi);
  const float e = exp_nonpositive<kFma>(-std::fabs(a));
  const float r = 1.0f / (1.0f + e);
  const float er = e * r;
  const bool neg = a > 0.0f;
  const float sig = neg ? er : r;
  if constexpr (!kGrad) {
    return a > 87.0f ? 0.0f : v * sig;
  } else {
    // dy/dx = sig + x sig (1 - sig) da', da' = -da/dx = 2 sqrt(2/pi) (1 + 3 * 0.044715 x^2)
    const float one_minus_sig = neg ? r : er;
    const float du2 = madd<kFma>(6.0f * kSqrt2OverPi * kTanhC, v2, 2.0f * kSqrt2OverPi);
    const float d = sig * madd<kFma>(v * du2, one_minus_sig, 1.0f);
    return a > 87.0f ? 0.0f : (a < -87.0f ? 1.0f : d);
  }
}

// Exact form: y = x Phi(x), Phi(x) = erfc(-x / sqrt 2) / 2, with (t = |x| / sqrt 2)
//   erfc(t) = k exp(-t^2) S(k), k = 1 / (1 + t / 2), S a degree-10 polynomial fitted to
//   erfc(t) e^(t^2) / k on k in (0, 1] (all t >= 0; 1.1e-8 relative before rounding, 1.5e-7
//   evaluated in float32), so Phi is accurate relative to itself in the negative tail too.
//   dy/dx = Phi(x) + x pdf(x), pdf(x) = exp(-t^2) / sqrt(2 pi): the same exponential.
template <bool kFma, bool kGrad>
TG_INLINE float gelu_erf(float v) {
  const float t = std::fabs(v) * kInvSqrt2;
  const float k = 1.0f / madd<kFma>(0.5f, t, 1.0f);
  float p = 0.04235319048166275f;
  p = madd<kFma>(p, k, -0.2308603823184967f);
  p = madd<kFma>(p, k, 0.48618412017822266f);
  p = madd<kFma>(p, k, -0.4469830095767975f);
  p = madd<kFma>(p, k, 0.12709295749664307f);
  p = madd<kFma>(p, k, -0.05723382160067558f);
  p = madd<kFma>(p, k, 0.09300088882446289f);
  p = madd<kFma>(p, k, 0.1753767877817154f);
  p = madd<kFma>(p, k, 0.24688059091567993f);
  p = madd<kFma>(p, k, 0.2820938527584076f);
  p = madd<kFma>(p, k, 0.282094806432724f);
  const float neg_t2 = -t * t;
  const float e = exp_nonpositive<kFma>(neg_t2);  // clamped: neg_t2 < -87 gives 1.6e-38
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
template <bool kFma, bool kTanh>
TG_INLINE void chunk(const float* __restrict x, const float* __restrict g, float* __restrict out,
                       index_t n) {
  if (g == nullptr) {
#pragma omp simd
    for (index_t i = 0; i < n; ++i)
      out[i] = kTanh ? gelu_tanh<kFma, false>(x[i]) : gelu_erf<kFma, false>(x[i]);
  } else {
#pragma omp simd
    for (index_t i = 0; i < n; ++i)
      out[i] = g[i] * (kTanh ? gelu_tanh<kFma, true>(x[i]) : gelu_erf<kFma, true>(x[i]));
  }
}

// One copy per ISA (isa.h): FMA where the instruction set has it (avx2, avx512).
template <cpu::Isa I, class... A>
TG_INLINE void tanh_body(A... a) {
  chunk<I != cpu::Isa::baseline, true>(a...);
}
template <cpu::Isa I, class... A>
TG_INLINE void erf_body(A... a) {
  chunk<I != cpu::Isa::baseline, false>(a...);
}
TG_PER_ISA(tanh_chunk, tanh_body)
TG_PER_ISA(erf_chunk, erf_body)

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
    if (tanh) {
      tanh_chunk(x + lo, gb, out + lo, len);
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

void bind_gelu(py::module_& m) {
  m.def("gelu_forward", &gelu_forward_py, py::arg("x"), py::arg("approximate"),
        "GELU of float32 x (any shape): (y, ()); approximate 'tanh' or 'none' (exact, erf).");
  m.def("gelu_backward", &gelu_backward_py, py::arg("grad"), py::arg("x"), py::arg("approximate"),
        py::arg("saved"), "Gradient grad * gelu'(x) of gelu_forward.");
}

}  // namespace cpu
}  // namespace tinygpt
