// Softmax and log-softmax over the last axis of a float32 array (..., C), forward and backward,
// matching tinygpt/kernels/reference.py softmax_* / log_softmax_* (same arguments and returns).
//
// Each row (C floats, at most a few KB in GPT use) is read from memory once and then stays in
// L1/L2 for the remaining passes over it:
//   softmax      fwd  m = max x;  y = exp(x - m) (stored), s = sum y;  y *= 1/s
//                bwd  d = sum g*y;  dx = y * (g - d)
//   log_softmax  fwd  m = max x;  s = sum exp(x - m);  y = (x - m) - log s
//                bwd  gs = sum g;  dx = g - exp(y) * gs
// Row sums are blocked (cpu::blocked_sum: float within 512-term blocks, float64 across) so the
// error does not grow with C. `saved` is the empty tuple, as in the reference: backward needs
// only y. Only the last axis is handled; kernels.select sends other axes to the reference
// (functional.py passes native_ok=False for them) and the bindings reject them.
#include <cmath>
#include <limits>
#include <vector>

#include "cpu/rowwise.h"
#include "py_common.h"
#include "registry.h"

namespace tinygpt {
namespace {

using cpu::exp_lanes;
using cpu::Scalar;
using cpu::blocked_sum;
using cpu::row_max;

template <cpu::Isa I>
TG_INLINE void softmax_forward_rows_body(float* __restrict y, const float* __restrict x, int64_t r0, int64_t r1,
                          int64_t C) {
  for (int64_t r = r0; r < r1; ++r) {
    const float* xr = x + r * C;
    float* yr = y + r * C;
    const float m = row_max(xr, C);
    const double s = blocked_sum(C, [&](int64_t c) {
      const float e = exp_lanes<Scalar<I>>(xr[c] - m);
      yr[c] = e;
      return e;
    });
    const float inv = static_cast<float>(1.0 / s);
#pragma omp simd
    for (int64_t c = 0; c < C; ++c) yr[c] *= inv;
  }
}
TG_PER_ISA(softmax_forward_rows, softmax_forward_rows_body)

template <cpu::Isa I>
TG_INLINE void softmax_backward_rows_body(float* __restrict dx, const float* __restrict g,
                           const float* __restrict y, int64_t r0, int64_t r1, int64_t C) {
  for (int64_t r = r0; r < r1; ++r) {
    const float* gr = g + r * C;
    const float* yr = y + r * C;
    float* dr = dx + r * C;
    const double d = blocked_sum(C, [&](int64_t c) { return gr[c] * yr[c]; });
    const float df = static_cast<float>(d);
#pragma omp simd
    for (int64_t c = 0; c < C; ++c) dr[c] = yr[c] * (gr[c] - df);
  }
}
TG_PER_ISA(softmax_backward_rows, softmax_backward_rows_body)

template <cpu::Isa I>
TG_INLINE void log_softmax_forward_rows_body(float* __restrict y, const float* __restrict x, int64_t r0,
                              int64_t r1, int64_t C) {
  for (int64_t r = r0; r < r1; ++r) {
    const float* xr = x + r * C;
    float* yr = y + r * C;
    const float m = row_max(xr, C);
    const double s = blocked_sum(C, [&](int64_t c) { return exp_lanes<Scalar<I>>(xr[c] - m); });
    const float ls = std::log(static_cast<float>(s));  // s in [1, C]
#pragma omp simd
    for (int64_t c = 0; c < C; ++c) yr[c] = (xr[c] - m) - ls;
  }
}
TG_PER_ISA(log_softmax_forward_rows, log_softmax_forward_rows_body)

template <cpu::Isa I>
TG_INLINE void log_softmax_backward_rows_body(float* __restrict dx, const float* __restrict g,
                               const float* __restrict y, int64_t r0, int64_t r1, int64_t C) {
  for (int64_t r = r0; r < r1; ++r) {
    const float* gr = g + r * C;
    const float* yr = y + r * C;
    float* dr = dx + r * C;
    const double gs = blocked_sum(C, [&](int64_t c) { return gr[c]; });
    const float gsf = static_cast<float>(gs);
#pragma omp simd
    for (int64_t c = 0; c < C; ++c) dr[c] = gr[c] - exp_lanes<Scalar<I>>(yr[c]) * gsf;
  }
}
TG_PER_ISA(log_softmax_backward_rows, log_softmax_backward_rows_body)

// Checks x (float32, C-contiguous, ndim >= 1) and that axis is its last; returns (rows, C).
std::pair<int64_t, int64_t> rows_of(const py::array& x, const char* what, int64_t axis,
                                    const char* op) {
  check_array<float>(x, what);
  const int64_t nd = x.ndim();
  TG_CHECK(nd >= 1, what, " must have at least 1 dimension, got shape ", shape_str(x));
  TG_CHECK(axis == -1 || axis == nd - 1, op, ": axis must be the last axis (-1 or ", nd - 1,
           "), got ", axis, " (tinygpt.kernels.select sends other axes to the reference)");
  const int64_t C = x.shape(nd - 1);
  return {C == 0 ? 0 : static_cast<int64_t>(x.size()) / C, C};
}

py::array_t<float> empty_like(const py::array& x) {
  return py::array_t<float>(std::vector<py::ssize_t>(x.shape(), x.shape() + x.ndim()));
}

// out = f(x) row by row; the shared body of both forwards.
template <typename Rows>
py::tuple forward(const py::array& x, int64_t axis, const char* op, const char* what, Rows rows_fn) {
  const auto [rows, C] = rows_of(x, what, axis, op);
  const float* xp = static_cast<const float*>(x.data());
  py::array_t<float> y = empty_like(x);
  float* yp = y.mutable_data();
  {
    py::gil_scoped_release nogil;
    cpu::parallel_blocks(rows, 3 * C, [&](int64_t r0, int64_t r1, int) { rows_fn(yp, xp, r0, r1, C); });
  }
  return py::make_tuple(y, py::tuple());
}

// dx = f(grad, y) row by row; the shared body of both backwards.
template <typename Rows>
py::array_t<float> backward(const py::array& grad, const py::array& y, int64_t axis,
                            const char* op, const char* grad_what, const char* y_what,
                            Rows rows_fn) {
  const auto [rows, C] = rows_of(y, y_what, axis, op);
  check_array<float>(grad, grad_what);
  TG_CHECK(grad.ndim() == y.ndim() && std::equal(y.shape(), y.shape() + y.ndim(), grad.shape()),
           grad_what, " must have the shape of y ", shape_str(y), ", got ", shape_str(grad));
  const float* gp = static_cast<const float*>(grad.data());
  const float* yp = static_cast<const float*>(y.data());
  py::array_t<float> dx = empty_like(y);
  float* dp = dx.mutable_data();
  {
    py::gil_scoped_release nogil;
    cpu::parallel_blocks(rows, 3 * C,
                         [&](int64_t r0, int64_t r1, int) { rows_fn(dp, gp, yp, r0, r1, C); });
  }
  return dx;
}

}  // namespace

namespace cpu {

void bind_softmax(py::module_& m) {
  m.def(
      "softmax_forward",
      [](const py::array& x, const py::object& axis) {
        return forward(x, int64_from_py(axis, "softmax_forward: axis"), "softmax_forward", "softmax_forward: x", softmax_forward_rows);
      },
      py::arg("x"), py::arg("axis"),
      "softmax over the last axis of float32 x (..., C) -> (y, ()); axis must be -1 or ndim-1.");
  m.def(
      "softmax_backward",
      [](const py::array& grad, const py::array& y, const py::object& axis, const py::object& /*saved*/) {
        return backward(grad, y, int64_from_py(axis, "softmax_backward: axis"), "softmax_backward", "softmax_backward: grad",
                        "softmax_backward: y", softmax_backward_rows);
      },
      py::arg("grad"), py::arg("y"), py::arg("axis"), py::arg("saved"),
      "dx = y * (grad - sum(grad * y, last axis)) for y = softmax(x).");
  m.def(
      "log_softmax_forward",
      [](const py::array& x, const py::object& axis) {
        return forward(x, int64_from_py(axis, "log_softmax_forward: axis"), "log_softmax_forward", "log_softmax_forward: x",
                       log_softmax_forward_rows);
      },
      py::arg("x"), py::arg("axis"),
      "log_softmax over the last axis of float32 x (..., C) -> (y, ()); axis must be -1 or ndim-1.");
  m.def(
      "log_softmax_backward",
      [](const py::array& grad, const py::array& y, const py::object& axis, const py::object& /*saved*/) {
        return backward(grad, y, int64_from_py(axis, "log_softmax_backward: axis"), "log_softmax_backward", "log_softmax_backward: grad",
                        "log_softmax_backward: y", log_softmax_backward_rows);
      },
      py::arg("grad"), py::arg("y"), py::arg("axis"), py::arg("saved"),
      "dx = grad - exp(y) * sum(grad, last axis) for y = log_softmax(x).");
}

}  // namespace cpu
}  // namespace tinygpt
