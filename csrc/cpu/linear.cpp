// The linear family: the ops built on the GEMM engine (gemm.h), with their bindings:
//   linear_forward(x, weight, bias)                    -> (y, ())        y = x @ weight.T + bias
//   linear_backward(grad, x, weight, has_bias, saved)  -> (dx, dweight, dbias | None)
//   linear_gelu_forward(x, weight, bias)               -> (y, (h,))      h = x @ weight.T + bias, y = gelu_tanh(h)
//   linear_gelu_backward(grad, x, weight, has_bias, saved)
// plus sgemm(a, b, transpose_a, transpose_b), the engine's raw product (tests, benchmarks).
//
// Backward products (g = grad as (N_rows, out)): dx = g @ W, dW = g^T @ x, db = column sums of g;
// for linear_gelu, g is first replaced by dh = g * gelu'(h).
#include <cstdint>
#include <string>
#include <vector>

#include "gemm.h"
#include "ops.h"
#include "parallel.h"
#include "py_common.h"
#include "registry.h"

namespace tinygpt {
namespace cpu {
namespace {

// Column sums of g (rows x n) into out (n,), accumulated in double per thread then combined.
void column_sums(const float* g, int64_t rows, int64_t n, float* out) {
  int nt = max_threads();
  if (static_cast<double>(rows) * n < 65536.0) nt = 1;
  std::vector<double> partial(static_cast<size_t>(nt) * n, 0.0);
#pragma omp parallel num_threads(nt) if (nt > 1)
  {
    const int tid = thread_id();
    int64_t r0, r1;
    split(rows, nt, tid, &r0, &r1);
    double* acc = partial.data() + static_cast<size_t>(tid) * n;
    for (int64_t i = r0; i < r1; ++i) {
      const float* gi = g + i * n;
#pragma omp simd
      for (int64_t j = 0; j < n; ++j) acc[j] += gi[j];
    }
  }
  for (int64_t j = 0; j < n; ++j) {
    double s = 0.0;
    for (int t = 0; t < nt; ++t) s += partial[static_cast<size_t>(t) * n + j];
    out[j] = static_cast<float>(s);
  }
}

// dh = g * gelu'(h) over rows x n, in parallel.
void gelu_grad(const float* g, const float* h, float* dh, int64_t rows, int64_t n) {
  int nt = max_threads();
  if (static_cast<double>(rows) * n < 16384.0) nt = 1;
#pragma omp parallel for num_threads(nt) if (nt > 1) schedule(static)
  for (int64_t i = 0; i < rows; ++i) gelu_tanh_grad_rows(g + i * n, h + i * n, dh + i * n, n);
}

struct LinearDims {
  int64_t rows, in, out;  // x viewed as (rows, in), weight (out, in)
};

std::vector<py::ssize_t> shape_of(const py::array& a) { return {a.shape(), a.shape() + a.ndim()}; }

// Checks x (..., in), weight (out, in) and bias (out,) or None; returns their sizes.
LinearDims check_linear_inputs(const char* op, const py::array& x, const py::array& weight, const py::object& bias,
                               const float** bias_ptr) {
  const std::string o(op);
  check_array<float>(x, (o + ": x").c_str());
  TG_CHECK(x.ndim() >= 1, op, ": x must have at least 1 dimension (..., in), got shape ", shape_str(x));
  check_array<float>(weight, (o + ": weight").c_str(), 2);
  const int64_t in = x.shape(x.ndim() - 1);
  TG_CHECK(weight.shape(1) == in, op, ": weight must have shape (out, ", in, ") to match x ", shape_str(x),
           ", got ", shape_str(weight));
  LinearDims d{1, in, weight.shape(0)};
  for (py::ssize_t i = 0; i + 1 < x.ndim(); ++i) d.rows *= x.shape(i);  // rows = prod(x.shape[:-1])
  if (bias_ptr != nullptr) {
    *bias_ptr = nullptr;
    if (!bias.is_none()) {
      TG_CHECK(py::isinstance<py::array>(bias), op, ": bias must be a numpy array or None, got ",
               std::string(py::str(py::type::of(bias))));
      *bias_ptr = input_ptr<float>(py::reinterpret_borrow<py::array>(bias), (o + ": bias").c_str(), {d.out});
    }
  }
  return d;
}

// grad (and saved h) must have shape x.shape[:-1] + (out,).
void check_grad_shape(const char* what, const py::array& g, const py::array& x, int64_t out) {
  std::vector<py::ssize_t> want = shape_of(x);
  want.back() = out;
  check_array<float>(g, what);
  check_shape(g, what, want);
}

py::tuple linear_forward_impl(const char* op, const py::array& x, const py::array& weight, const py::object& bias,
                              bool gelu) {
  const float* bp = nullptr;
  const LinearDims d = check_linear_inputs(op, x, weight, bias, &bp);
  std::vector<py::ssize_t> yshape = shape_of(x);
  yshape.back() = d.out;
  py::array_t<float> h = aligned_array(yshape);
  py::array_t<float> y = gelu ? aligned_array(yshape) : h;
  const float* xp = static_cast<const float*>(x.data());
  const float* wp = static_cast<const float*>(weight.data());
  float* hp = h.mutable_data();
  float* yp = y.mutable_data();
  {
    py::gil_scoped_release nogil;
    linear_rows(xp, wp, bp, d.rows, d.in, d.out, hp, gelu ? yp : nullptr);
  }
  if (gelu) return py::make_tuple(y, py::make_tuple(h));
  return py::make_tuple(y, py::tuple());
}

// dx = g @ W, dW = g^T @ x, db = column sums of g, for g (rows, out).
py::tuple linear_grads(const float* g, const py::array& x, const py::array& weight, const LinearDims& d,
                       bool has_bias) {
  py::array_t<float> dx = aligned_array(shape_of(x));
  py::array_t<float> dw = aligned_array({static_cast<py::ssize_t>(d.out), static_cast<py::ssize_t>(d.in)});
  py::object db = py::none();
  float* dbp = nullptr;
  if (has_bias) {
    py::array_t<float> dba = aligned_array({static_cast<py::ssize_t>(d.out)});
    dbp = dba.mutable_data();
    db = dba;
  }
  const float* xp = static_cast<const float*>(x.data());
  const float* wp = static_cast<const float*>(weight.data());
  float* dxp = dx.mutable_data();
  float* dwp = dw.mutable_data();
  {
    py::gil_scoped_release nogil;
    // dx (rows, in) = g (rows, out) @ W (out, in)
    sgemm(d.rows, d.in, d.out, g, d.out, 1, wp, d.in, 1, dxp, d.in);
    // dW (out, in) = g^T (out, rows) @ x (rows, in): A[i, k] = g[k, i] -> rsa = 1, csa = out.
    sgemm(d.out, d.in, d.rows, g, 1, d.out, xp, d.in, 1, dwp, d.in);
    if (dbp != nullptr) column_sums(g, d.rows, d.out, dbp);
  }
  return py::make_tuple(dx, dw, db);
}

py::tuple linear_forward(const py::array& x, const py::array& weight, const py::object& bias) {
  return linear_forward_impl("linear_forward", x, weight, bias, false);
}

py::tuple linear_backward(const py::array& grad, const py::array& x, const py::array& weight, bool has_bias,
                          const py::object& /*saved*/) {
  const LinearDims d = check_linear_inputs("linear_backward", x, weight, py::none(), nullptr);
  check_grad_shape("linear_backward: grad", grad, x, d.out);
  return linear_grads(static_cast<const float*>(grad.data()), x, weight, d, has_bias);
}

py::tuple linear_gelu_forward(const py::array& x, const py::array& weight, const py::object& bias) {
  return linear_forward_impl("linear_gelu_forward", x, weight, bias, true);
}

py::tuple linear_gelu_backward(const py::array& grad, const py::array& x, const py::array& weight, bool has_bias,
                               const py::tuple& saved) {
  const LinearDims d = check_linear_inputs("linear_gelu_backward", x, weight, py::none(), nullptr);
  check_grad_shape("linear_gelu_backward: grad", grad, x, d.out);
  TG_CHECK(saved.size() == 1 && py::isinstance<py::array>(saved[0]),
           "linear_gelu_backward: saved must be the (h,) tuple linear_gelu_forward returned");
  const py::array h = py::reinterpret_borrow<py::array>(saved[0]);
  check_grad_shape("linear_gelu_backward: saved h", h, x, d.out);
  py::array_t<float> dh = aligned_array(shape_of(h));
  {
    py::gil_scoped_release nogil;
    gelu_grad(static_cast<const float*>(grad.data()), static_cast<const float*>(h.data()), dh.mutable_data(), d.rows,
              d.out);
  }
  return linear_grads(dh.data(), x, weight, d, has_bias);
}

// C = op(a) @ op(b) for 2-D float32 arrays; op transposes when asked (no copy: strides).
py::array_t<float> sgemm_py(const py::array& a, const py::array& b, bool transpose_a, bool transpose_b) {
  check_array<float>(a, "sgemm: a", 2);
  check_array<float>(b, "sgemm: b", 2);
  const int64_t M = transpose_a ? a.shape(1) : a.shape(0), K = transpose_a ? a.shape(0) : a.shape(1);
  const int64_t Kb = transpose_b ? b.shape(1) : b.shape(0), N = transpose_b ? b.shape(0) : b.shape(1);
  TG_CHECK(K == Kb, "sgemm: b must have ", K, (transpose_b ? " columns" : " rows"), " to match a ",
           shape_str(a), ", got shape ", shape_str(b));
  py::array_t<float> c = aligned_array({static_cast<py::ssize_t>(M), static_cast<py::ssize_t>(N)});
  const float* ap = static_cast<const float*>(a.data());
  const float* bp = static_cast<const float*>(b.data());
  float* cp = c.mutable_data();
  const int64_t lda = a.shape(1), ldb = b.shape(1);
  py::gil_scoped_release nogil;
  sgemm(M, N, K, ap, transpose_a ? 1 : lda, transpose_a ? lda : 1, bp, transpose_b ? 1 : ldb, transpose_b ? ldb : 1,
        cp, N);
  return c;
}

}  // namespace

void linear_rows(const float* x, const float* w, const float* b, int64_t rows, int64_t in, int64_t out, float* h,
                 float* y) {
  GemmEpilogue ep;
  ep.bias = b;
  if (y != nullptr) ep.gelu_out = y, ep.ld_gelu = out;
  // h (rows, out) = x (rows, in) @ W^T: B[k, j] = W[j, k] -> rsb = 1, csb = in.
  sgemm(rows, out, in, x, in, 1, w, 1, in, h, out, false, ep);
}
}  // namespace cpu

namespace cpu {

void bind_linear(py::module_& m) {
  m.def("linear_forward", &cpu::linear_forward, py::arg("x"), py::arg("weight"), py::arg("bias"),
        "y = x @ weight.T + bias for x (..., in), weight (out, in), bias (out,) or None; returns (y, ()).");
  m.def("linear_backward", &cpu::linear_backward, py::arg("grad"), py::arg("x"), py::arg("weight"),
        py::arg("has_bias"), py::arg("saved"),
        "(dx, dweight, dbias or None) = (grad @ weight, grad^T @ x, grad summed over rows).");
  m.def("linear_gelu_forward", &cpu::linear_gelu_forward, py::arg("x"), py::arg("weight"), py::arg("bias"),
        "y = gelu_tanh(x @ weight.T + bias), fused; returns (y, (h,)) with h the pre-activation.");
  m.def("linear_gelu_backward", &cpu::linear_gelu_backward, py::arg("grad"), py::arg("x"), py::arg("weight"),
        py::arg("has_bias"), py::arg("saved"),
        "Gradients of linear_gelu_forward: dh = grad * gelu'(h), then as linear_backward with dh.");
  m.def("sgemm", &cpu::sgemm_py, py::arg("a"), py::arg("b"), py::arg("transpose_a") = false,
        py::arg("transpose_b") = false, "op(a) @ op(b) for 2-D float32 arrays (op = transpose when asked).");
}

}  // namespace cpu
}  // namespace tinygpt
