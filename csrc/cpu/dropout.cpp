// Inverted dropout on float32 arrays of any shape: y = x * keep * (1 / (1 - p)).
//
// The keep-mask is counter-based (rng.h, identical to reference.dropout_mask), so forward
// saves only (seed, shape) and backward regenerates the mask: no mask is stored. Each element
// is computed as the reference does, x * keep (0 or 1) * float32(1 / (1 - p)), so native and
// reference outputs agree bit for bit. Memory-bound: one read and one write per element, plus
// a 64-bit hash that GCC vectorises (one copy per instruction set, isa.h).
#include <cstdint>
#include <vector>

#include "isa.h"
#include "py_common.h"
#include "registry.h"
#include "rng.h"

namespace tinygpt {
namespace {

// y[i] = x[i] * keep(i) * scale for i in [begin, end) (i is the flat mask index).
template <cpu::Isa>
TG_INLINE void dropout_span_body(float* y, const float* x, int64_t begin, int64_t end, uint64_t seed,
                  uint32_t threshold, float scale) {
  for (int64_t i = begin; i < end; ++i) {
    const float k = rng::bits24(seed, static_cast<uint64_t>(i)) >= threshold ? 1.0f : 0.0f;
    y[i] = x[i] * k * scale;
  }
}
TG_PER_ISA(dropout_span, dropout_span_body)

void dropout_apply(float* y, const float* x, int64_t n, uint64_t seed, double p) {
  const uint32_t threshold = rng::keep_threshold(p);
  const float scale = static_cast<float>(1.0 / (1.0 - p));  // as NumPy: float32(python float)
  constexpr int64_t kChunk = 1 << 15;
  constexpr int64_t kParallelMin = 1 << 18;  // below ~0.1 ms of work a thread team costs more than it saves
  const int64_t chunks = (n + kChunk - 1) / kChunk;
#pragma omp parallel for schedule(static) if (n >= kParallelMin)
  for (int64_t c = 0; c < chunks; ++c) {
    const int64_t begin = c * kChunk, end = begin + kChunk < n ? begin + kChunk : n;
    dropout_span(y, x, begin, end, seed, threshold, scale);
  }
}

void check_p(double p, const char* op) {
  TG_CHECK(p >= 0.0 && p < 1.0, op, ": p must be in [0, 1), got ", p);
}

std::vector<py::ssize_t> shape_of(const py::array& a) { return {a.shape(), a.shape() + a.ndim()}; }

}  // namespace

namespace cpu {

void bind_dropout(py::module_& m) {
  m.def(
      "dropout_forward",
      [](const py::array& x, double p, const py::object& seed) {
        check_array<float>(x, "dropout_forward: x");
        check_p(p, "dropout_forward");
        const uint64_t s = seed_from_py(seed, "dropout_forward: seed");
        py::array_t<float> y(shape_of(x));
        const float* xp = static_cast<const float*>(x.data());
        float* yp = y.mutable_data();
        const int64_t n = x.size();
        {
          py::gil_scoped_release nogil;
          dropout_apply(yp, xp, n, s, p);
        }
        // saved: the seed and shape; backward regenerates the mask from them
        py::tuple shape(x.ndim());
        for (py::ssize_t i = 0; i < x.ndim(); ++i) shape[i] = x.shape(i);
        return py::make_tuple(y, py::make_tuple(py::int_(s), shape));
      },
      py::arg("x"), py::arg("p"), py::arg("seed"),
      "Inverted dropout; returns (y, saved) with saved = (seed, shape): the mask is regenerated.");

  m.def(
      "dropout_backward",
      [](const py::array& grad, double p, const py::tuple& saved) {
        TG_CHECK(saved.size() == 2, "dropout_backward: saved must be the (seed, shape) from dropout_forward");
        check_array<float>(grad, "dropout_backward: grad");
        check_p(p, "dropout_backward");
        const uint64_t s = seed_from_py(saved[0], "dropout_backward: saved seed");
        const py::tuple shape = saved[1].cast<py::tuple>();
        bool same = static_cast<py::ssize_t>(shape.size()) == grad.ndim();
        for (py::ssize_t i = 0; same && i < grad.ndim(); ++i) same = shape[i].cast<py::ssize_t>() == grad.shape(i);
        TG_CHECK(same, "dropout_backward: grad must have the forward input's shape ",
                 std::string(py::str(shape)), ", got ", shape_str(grad));
        py::array_t<float> dx(shape_of(grad));
        const float* gp = static_cast<const float*>(grad.data());
        float* dp = dx.mutable_data();
        const int64_t n = grad.size();
        {
          py::gil_scoped_release nogil;
          dropout_apply(dp, gp, n, s, p);  // the same mask and scale: dx = grad * keep * scale
        }
        return dx;
      },
      py::arg("grad"), py::arg("p"), py::arg("saved"),
      "Gradient of dropout_forward: grad * keep * (1 / (1 - p)), the mask regenerated from the seed.");
}

}  // namespace cpu
}  // namespace tinygpt
