// Registers the CUDA kernel families into tinygpt._C.cuda (host-compiled; the kernels are in
// the .cu files, declared in cuda/api.h). A binding hands CuPy's raw pointers and current
// stream to the launcher and releases the GIL around the launch:
//
//   m.def("layernorm_forward",
//         [](std::uintptr_t out, std::uintptr_t x, std::uintptr_t w, int N, int C,
//            std::uintptr_t stream) { tg_layernorm_forward_cuda(out, x, w, N, C, stream); },
//         py::arg("out"), py::arg("x"), py::arg("weight"), py::arg("N"), py::arg("C"),
//         py::arg("stream"), py::call_guard<py::gil_scoped_release>());
//   families.push_back("cuda.layernorm");
#include <cstdint>

#include "cuda/api.h"
#include "registry.h"

namespace tinygpt {

namespace py = pybind11;

// ----------------------------------------------------------------------------- cugemm families
// matmul, layernorm, gelu, adamw (csrc/cuda/{matmul,layernorm,gelu,adamw}.cu); wrappers with the
// reference signatures in tinygpt/kernels/cuda.py.
namespace {

void bind_cugemm_families(py::module_& m, KernelFamilies& families) {
  const auto nogil = py::call_guard<py::gil_scoped_release>();
  m.def("linear_forward_launch", &tg_linear_forward_cuda, py::arg("out"), py::arg("gelu_out"),
        py::arg("x"), py::arg("weight"), py::arg("bias"), py::arg("rows"), py::arg("n_in"),
        py::arg("n_out"), py::arg("precision"), py::arg("stream"), nogil,
        "out = x @ weight^T + bias (and gelu_out = gelu_tanh(out) when gelu_out != 0).");
  m.def("linear_backward_dx_launch", &tg_linear_backward_dx_cuda, py::arg("dx"), py::arg("grad"),
        py::arg("weight"), py::arg("rows"), py::arg("n_in"), py::arg("n_out"),
        py::arg("precision"), py::arg("stream"), nogil, "dx = grad @ weight.");
  m.def("linear_backward_dw_launch", &tg_linear_backward_dw_cuda, py::arg("dw"), py::arg("grad"),
        py::arg("x"), py::arg("workspace"), py::arg("rows"), py::arg("n_in"), py::arg("n_out"),
        py::arg("splits"), py::arg("precision"), py::arg("stream"), nogil,
        "dw = grad^T @ x (split-K over rows when splits > 1, via workspace).");
  m.def("linear_dw_splits", &tg_linear_dw_splits_cuda, py::arg("rows"), py::arg("n_in"),
        py::arg("n_out"), nogil, "The split-K count for dw on the current device (1: none).");
  m.def("colsum_launch", &tg_colsum_cuda, py::arg("out"), py::arg("g"), py::arg("partial"),
        py::arg("rows"), py::arg("n"), py::arg("chunks"), py::arg("stream"), nogil,
        "out = column sums of g (rows, n), deterministic, via a (chunks, n) workspace.");
  families.push_back("cuda.matmul");

  m.def("layernorm_forward_launch", &tg_layernorm_forward_cuda, py::arg("y"), py::arg("s_out"),
        py::arg("mean"), py::arg("rstd"), py::arg("x"), py::arg("residual"), py::arg("weight"),
        py::arg("bias"), py::arg("N"), py::arg("C"), py::arg("eps"), py::arg("stream"), nogil,
        "Layernorm (of x + residual when residual != 0, writing s_out) over rows of C.");
  m.def("layernorm_backward_launch", &tg_layernorm_backward_cuda, py::arg("dx"),
        py::arg("dweight"), py::arg("dbias"), py::arg("partial"), py::arg("grad"), py::arg("xs"),
        py::arg("weight"), py::arg("mean"), py::arg("rstd"), py::arg("grad_s"), py::arg("N"),
        py::arg("C"), py::arg("chunks"), py::arg("stream"), nogil,
        "Layernorm backward (+ grad_s when != 0); dweight/dbias via a chunked workspace.");
  families.push_back("cuda.layernorm");

  m.def("gelu_forward_launch", &tg_gelu_forward_cuda, py::arg("y"), py::arg("x"), py::arg("n"),
        py::arg("tanh"), py::arg("stream"), nogil, "y = gelu(x), tanh or exact (erf).");
  m.def("gelu_backward_launch", &tg_gelu_backward_cuda, py::arg("dx"), py::arg("grad"),
        py::arg("x"), py::arg("n"), py::arg("tanh"), py::arg("stream"), nogil,
        "dx = grad * gelu'(x).");
  families.push_back("cuda.gelu");

  m.def("adamw_step_launch", &tg_adamw_step_cuda, py::arg("param"), py::arg("grad"),
        py::arg("exp_avg"), py::arg("exp_avg_sq"), py::arg("n"), py::arg("lr"), py::arg("beta1"),
        py::arg("beta2"), py::arg("eps"), py::arg("weight_decay"), py::arg("step"),
        py::arg("stream"), nogil, "In-place AdamW update of one parameter.");
  m.def("adamw_multi_chunk", &tg_adamw_multi_chunk,
        "Elements per block of adamw_multi_step_launch.");
  m.def("adamw_multi_step_launch", &tg_adamw_multi_step_cuda, py::arg("table"),
        py::arg("block_start"), py::arg("num_tensors"), py::arg("num_blocks"), py::arg("lr"),
        py::arg("beta1"), py::arg("beta2"), py::arg("eps"), py::arg("weight_decay"),
        py::arg("step"), py::arg("stream"), nogil,
        "In-place AdamW update of a list of parameters (one param group) in one launch.");
  families.push_back("cuda.adamw");
}

}  // namespace
// ----------------------------------------------------------------------------- end cugemm

void register_cuda_kernels(pybind11::module_& m, KernelFamilies& families) {
  bind_cugemm_families(m, families);
}

}  // namespace tinygpt
