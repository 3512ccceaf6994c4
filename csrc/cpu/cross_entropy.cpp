// Fused cross-entropy over the vocabulary: log-softmax + NLL forward, and its gradient, for
// float32 logits (N, V) and int64 targets (N,), matching reference.cross_entropy_* (same
// arguments and returns; rows whose target is ignore_index count for nothing).
//
// forward   per row, in one read of the row from memory (it then stays in L1/L2, 200 KB at
//           V = 50257): m = max x, s = sum exp(x - m) (blocked: float in 512-term blocks,
//           float64 across them), log s in float32 (logf: 1 ulp <= 1e-6 for s <= V, and
//           3x cheaper than log, which showed at V = 65), and loss_row = (m - x[t]) + log s
//           in float64 (m - x[t] exact). loss = sum(valid rows) / count, in float64.
//           No probability matrix is kept: saved = (row_max (N,), row_logsum (N,) = log s,
//           ignore_index, count), 8 bytes per row.
// backward  per row, one pass: dlogits = exp((x - m) - log s) * g/count, minus g/count at the
//           target ((p - 1) * scale there, so p ~ 1 does not cancel badly); ignored rows get
//           exactly 0, also when every row is ignored (count = 0: nan loss, zero gradient, as PyTorch).
// Keeping m and log s apart (instead of lse = m + log s) keeps x - m exact near the max even for
// logits of magnitude 1e4, where lse itself would carry an absolute error of ulp(1e4) ~ 1e-3.
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

// Rows [r0, r1): fills row_max / row_logsum and returns the sum of loss_row over valid rows.
template <cpu::Isa I>
TG_INLINE double forward_rows_body(float* __restrict rmax, float* __restrict rlogsum,
                    const float* __restrict logits, const int64_t* __restrict targets,
                    int64_t ignore_index, int64_t r0, int64_t r1, int64_t V) {
  double total = 0.0;
  for (int64_t r = r0; r < r1; ++r) {
    const float* x = logits + r * V;
    const float m = row_max(x, V);
    const double s = blocked_sum(V, [&](int64_t c) { return exp_lanes<Scalar<I>>(x[c] - m); });
    const double ls = std::log(static_cast<float>(s));  // logf (see top)
    rmax[r] = m;
    rlogsum[r] = static_cast<float>(ls);
    const int64_t t = targets[r];
    if (t != ignore_index) total += (static_cast<double>(m) - x[t]) + ls;
  }
  return total;
}
TG_PER_ISA(forward_rows, forward_rows_body)

template <cpu::Isa I>
TG_INLINE void backward_rows_body(float* __restrict dlogits, const float* __restrict logits,
                   const int64_t* __restrict targets, const float* __restrict rmax,
                   const float* __restrict rlogsum, int64_t ignore_index, float scale, int64_t r0,
                   int64_t r1, int64_t V) {
  const float fill = 0.0f;  // ignored rows: exactly 0, whatever g is (PyTorch's gradient)
  for (int64_t r = r0; r < r1; ++r) {
    const float* x = logits + r * V;
    float* d = dlogits + r * V;
    const int64_t t = targets[r];
    if (t == ignore_index) {
#pragma omp simd
      for (int64_t c = 0; c < V; ++c) d[c] = fill;
      continue;
    }
    const float m = rmax[r], ls = rlogsum[r];
#pragma omp simd
    for (int64_t c = 0; c < V; ++c) d[c] = exp_lanes<Scalar<I>>((x[c] - m) - ls) * scale;
    d[t] = (exp_lanes<Scalar<I>>((x[t] - m) - ls) - 1.0f) * scale;
  }
}
TG_PER_ISA(backward_rows, backward_rows_body)

// Checks targets (int64 (N,)) lie in [0, V) wherever they are not ignore_index; returns how
// many are not (the number of rows the loss averages over).
int64_t count_valid(const int64_t* targets, int64_t N, int64_t V, int64_t ignore_index,
                    const char* what) {
  int64_t count = 0;
  for (int64_t i = 0; i < N; ++i) {
    const int64_t t = targets[i];
    if (t == ignore_index) continue;
    TG_CHECK(t >= 0 && t < V, what, "[", i, "] = ", t, " is out of range [0, ", V,
             ") and is not ignore_index (", ignore_index, ")");
    ++count;
  }
  return count;
}

// The loss gradient: a 0-d array, a NumPy scalar or a Python number, of a real dtype.
double grad_value(const py::object& grad) {
  const py::array a = py::array::ensure(grad);  // scalars -> 0-d arrays; null if not convertible
  TG_CHECK(a && a.ndim() == 0 && std::string("fiu").find(a.dtype().kind()) != std::string::npos,
           "cross_entropy_backward: grad must be a 0-d real array or number (the loss's "
           "gradient), got ", std::string(py::str(py::type::of(grad))),
           a ? " of dtype " + std::string(py::str(a.dtype())) + " and shape " + shape_str(a) : "");
  return a.attr("item")().cast<double>();
}

py::tuple cross_entropy_forward(const py::array& logits, const py::array& targets,
                                const py::object& ignore_index_in) {
  const int64_t ignore_index = int64_from_py(ignore_index_in, "cross_entropy_forward: ignore_index");
  const float* lp = input_ptr<float>(logits, "cross_entropy_forward: logits", 2);
  const int64_t N = logits.shape(0), V = logits.shape(1);
  TG_CHECK(V >= 1, "cross_entropy_forward: logits must have at least one class, got shape ",
           shape_str(logits));
  const int64_t* tp = input_ptr<int64_t>(targets, "cross_entropy_forward: targets", {N});
  const int64_t count = count_valid(tp, N, V, ignore_index, "cross_entropy_forward: targets");

  py::array_t<float> rmax(N), rlogsum(N);
  py::array_t<float> loss(std::vector<py::ssize_t>{});  // 0-d
  float* mp = rmax.mutable_data();
  float* sp = rlogsum.mutable_data();
  double total = 0.0;
  {
    py::gil_scoped_release nogil;
    std::vector<double> partial(cpu::max_threads(), 0.0);
    cpu::parallel_blocks(N, 2 * V, [&](int64_t r0, int64_t r1, int thread) {
      partial[thread] = forward_rows(mp, sp, lp, tp, ignore_index, r0, r1, V);
    });
    for (double p : partial) total += p;
  }
  // Mean over valid rows; 0/0 = nan when every target is ignored, as the reference.
  *loss.mutable_data() = count > 0 ? static_cast<float>(total / static_cast<double>(count))
                                   : std::numeric_limits<float>::quiet_NaN();
  return py::make_tuple(loss, py::make_tuple(rmax, rlogsum, ignore_index, count));
}

py::array_t<float> cross_entropy_backward(const py::object& grad, const py::array& logits,
                                          const py::array& targets, const py::tuple& saved) {
  const double g = grad_value(grad);
  const float* lp = input_ptr<float>(logits, "cross_entropy_backward: logits", 2);
  const int64_t N = logits.shape(0), V = logits.shape(1);
  const int64_t* tp = input_ptr<int64_t>(targets, "cross_entropy_backward: targets", {N});
  TG_CHECK(saved.size() == 4,
           "cross_entropy_backward: saved must be the 4-tuple cross_entropy_forward returned, got ",
           saved.size(), " items");
  const py::array rmax_a = saved[0].cast<py::array>(), rlogsum_a = saved[1].cast<py::array>();
  const float* mp = input_ptr<float>(rmax_a, "cross_entropy_backward: saved[0] (row max)", {N});
  const float* sp = input_ptr<float>(rlogsum_a, "cross_entropy_backward: saved[1] (row log-sum)", {N});
  const int64_t ignore_index = saved[2].cast<int64_t>();
  const int64_t count = saved[3].cast<int64_t>();
  count_valid(tp, N, V, ignore_index, "cross_entropy_backward: targets");
  // g / count in float64, then float32, as the reference. count == 0: every row is ignored (all
  // zeros), so scale is never used and 1/0 never formed.
  const float scale = count > 0 ? static_cast<float>(g / static_cast<double>(count)) : 0.0f;

  py::array_t<float> dlogits({N, V});
  float* dp = dlogits.mutable_data();
  {
    py::gil_scoped_release nogil;
    cpu::parallel_blocks(N, 2 * V, [&](int64_t r0, int64_t r1, int) {
      backward_rows(dp, lp, tp, mp, sp, ignore_index, scale, r0, r1, V);
    });
  }
  return dlogits;
}

}  // namespace

namespace cpu {

void bind_cross_entropy(py::module_& m) {
  m.def("cross_entropy_forward", &cross_entropy_forward, py::arg("logits"), py::arg("targets"),
        py::arg("ignore_index"),
        "Mean cross-entropy of float32 logits (N, V) against int64 targets (N,), skipping "
        "ignore_index -> (loss 0-d float32, saved).");
  m.def("cross_entropy_backward", &cross_entropy_backward, py::arg("grad"), py::arg("logits"),
        py::arg("targets"), py::arg("saved"),
        "dlogits (N, V) = (softmax(logits) - onehot(targets)) * grad / count (0 on ignored rows).");
}

}  // namespace cpu
}  // namespace tinygpt
