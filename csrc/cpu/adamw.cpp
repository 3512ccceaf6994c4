// Fused in-place AdamW update of one float32 parameter (any shape, treated as flat), matching
// reference.adamw_step, i.e. torch.optim.AdamW's order of operations:
//   p *= 1 - lr * wd                         (skipped when wd == 0)
//   m += (g - m) * (1 - beta1)               (lerp towards g)
//   v  = v * beta2 + g * g * (1 - beta2)
//   p -= lr / (1 - beta1^step) * (m / (sqrt(v) / sqrt(1 - beta2^step) + eps))
// One pass over the four arrays (read p, g, m, v; write p, m, v: 28 bytes per element) instead
// of the reference's ~10 NumPy passes and temporaries. Scalars are formed in float64 exactly as
// the reference's Python floats and rounded to float32 once, as NumPy does when it applies them.
#include <cmath>

#include "isa.h"
#include "parallel.h"
#include "py_common.h"
#include "registry.h"

namespace tinygpt {
namespace {

struct AdamWScalars {
  float decay;      // 1 - lr * wd (1 when wd == 0: p * 1 == p exactly, so no branch)
  float one_m_b1;   // 1 - beta1
  float beta2;
  float one_m_b2;   // 1 - beta2
  float bc2_sqrt;   // sqrt(1 - beta2^step)
  float eps;
  float step_size;  // lr / (1 - beta1^step)
};

template <cpu::Isa>
TG_INLINE void adamw_block_body(float* __restrict p, const float* __restrict g, float* __restrict m,
                 float* __restrict v, int64_t begin, int64_t end, AdamWScalars s) {
#pragma omp simd
  for (int64_t i = begin; i < end; ++i) {
    const float gi = g[i];
    const float mi = m[i] + (gi - m[i]) * s.one_m_b1;
    const float vi = v[i] * s.beta2 + gi * gi * s.one_m_b2;
    m[i] = mi;
    v[i] = vi;
    const float denom = std::sqrt(vi) / s.bc2_sqrt + s.eps;
    p[i] = p[i] * s.decay - s.step_size * (mi / denom);
  }
}
TG_PER_ISA(adamw_block, adamw_block_body)

float* state_ptr(py::array& a, const char* what, py::ssize_t n) {
  check_array<float>(a, what);
  TG_CHECK(a.size() == n, what, " must have param's size ", n, ", got shape ", shape_str(a));
  TG_CHECK(a.writeable(), what, " must be writeable");
  return static_cast<float*>(a.mutable_data());
}

void adamw_step(py::array& param, const py::array& grad, py::array& exp_avg,
                py::array& exp_avg_sq, double lr, double beta1, double beta2, double eps,
                double weight_decay, const py::object& step_in) {
  const int64_t step = int64_from_py(step_in, "adamw_step: step");
  check_array<float>(param, "adamw_step: param");
  TG_CHECK(param.writeable(), "adamw_step: param must be writeable");
  const py::ssize_t n = param.size();
  float* pp = static_cast<float*>(param.mutable_data());
  check_array<float>(grad, "adamw_step: grad");
  TG_CHECK(grad.size() == n, "adamw_step: grad must have param's size ", n, ", got shape ",
           shape_str(grad));
  const float* gp = static_cast<const float*>(grad.data());
  float* mp = state_ptr(exp_avg, "adamw_step: exp_avg", n);
  float* vp = state_ptr(exp_avg_sq, "adamw_step: exp_avg_sq", n);
  TG_CHECK(step >= 1, "adamw_step: step must be >= 1 (it counts from 1), got ", step);

  AdamWScalars s;
  s.decay = static_cast<float>(1.0 - lr * weight_decay);
  s.one_m_b1 = static_cast<float>(1.0 - beta1);
  s.beta2 = static_cast<float>(beta2);
  s.one_m_b2 = static_cast<float>(1.0 - beta2);
  s.bc2_sqrt = static_cast<float>(std::sqrt(1.0 - std::pow(beta2, static_cast<double>(step))));
  s.eps = static_cast<float>(eps);
  s.step_size = static_cast<float>(lr / (1.0 - std::pow(beta1, static_cast<double>(step))));

  py::gil_scoped_release nogil;
  cpu::parallel_blocks(n, 7, [&](int64_t begin, int64_t end, int) {
    adamw_block(pp, gp, mp, vp, begin, end, s);
  });
}

}  // namespace

namespace cpu {

void bind_adamw(py::module_& m) {
  // noconvert: these are updated in place, so a list must not become a temporary array.
  m.def("adamw_step", &adamw_step, py::arg("param").noconvert(), py::arg("grad").noconvert(),
        py::arg("exp_avg").noconvert(), py::arg("exp_avg_sq").noconvert(), py::kw_only(), py::arg("lr"), py::arg("beta1"), py::arg("beta2"),
        py::arg("eps"), py::arg("weight_decay"), py::arg("step"),
        "In-place AdamW update of float32 param, exp_avg, exp_avg_sq from grad (torch.optim.AdamW's "
        "order of operations; any shape, all four of one size).");
}

}  // namespace cpu
}  // namespace tinygpt
