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
#include "cuda/api.h"
#include "registry.h"

#include <cstdint>

namespace tinygpt {

namespace {

namespace py = pybind11;
using U = std::uintptr_t;

// --- attention, softmax, cross-entropy, dropout (cuattn) ---------------------------------------
void bind_cuda_attention(py::module_& m) {
  m.def("attention_forward",
        [](U out, U row_max, U row_sum, U q, U k, U v, int64_t BH, int64_t Tq, int64_t Tk, int64_t D, int64_t Dv,
           bool causal, int64_t window, double dropout_p, uint64_t seed, double scale, U stream) {
          tg_attention_forward_cuda(out, row_max, row_sum, q, k, v, BH, Tq, Tk, D, Dv, causal, window, dropout_p,
                                    seed, scale, stream);
        },
        py::arg("out"), py::arg("row_max"), py::arg("row_sum"), py::arg("q"), py::arg("k"), py::arg("v"),
        py::arg("BH"), py::arg("Tq"), py::arg("Tk"), py::arg("D"), py::arg("Dv"), py::arg("causal"),
        py::arg("window"), py::arg("dropout_p"), py::arg("seed"), py::arg("scale"), py::arg("stream"),
        py::call_guard<py::gil_scoped_release>(),
        "Flash attention forward on raw device pointers (window 0: none).");
  m.def("attention_backward",
        [](U dq, U dk, U dv, U drow, U grad, U q, U k, U v, U out, U row_max, U row_sum, int64_t BH, int64_t Tq,
           int64_t Tk, int64_t D, int64_t Dv, bool causal, int64_t window, double dropout_p, uint64_t seed,
           double scale, U stream) {
          tg_attention_backward_cuda(dq, dk, dv, drow, grad, q, k, v, out, row_max, row_sum, BH, Tq, Tk, D, Dv,
                                     causal, window, dropout_p, seed, scale, stream);
        },
        py::arg("dq"), py::arg("dk"), py::arg("dv"), py::arg("drow"), py::arg("grad"), py::arg("q"), py::arg("k"),
        py::arg("v"), py::arg("out"), py::arg("row_max"), py::arg("row_sum"), py::arg("BH"), py::arg("Tq"),
        py::arg("Tk"), py::arg("D"), py::arg("Dv"), py::arg("causal"), py::arg("window"), py::arg("dropout_p"),
        py::arg("seed"), py::arg("scale"), py::arg("stream"), py::call_guard<py::gil_scoped_release>(),
        "Flash attention backward (dq, dk, dv) on raw device pointers; drow is a (BH, Tq) workspace.");
}

void bind_cuda_softmax(py::module_& m) {
  m.def("softmax_forward", &tg_softmax_forward_cuda, py::arg("y"), py::arg("x"), py::arg("rows"), py::arg("C"),
        py::arg("stream"), py::call_guard<py::gil_scoped_release>(), "y = softmax(x) over rows of C floats.");
  m.def("softmax_backward", &tg_softmax_backward_cuda, py::arg("dx"), py::arg("grad"), py::arg("y"),
        py::arg("rows"), py::arg("C"), py::arg("stream"), py::call_guard<py::gil_scoped_release>(),
        "dx = y * (grad - rowsum(grad * y)).");
  m.def("log_softmax_forward", &tg_log_softmax_forward_cuda, py::arg("y"), py::arg("x"), py::arg("rows"),
        py::arg("C"), py::arg("stream"), py::call_guard<py::gil_scoped_release>(),
        "y = log_softmax(x) over rows of C floats.");
  m.def("log_softmax_backward", &tg_log_softmax_backward_cuda, py::arg("dx"), py::arg("grad"), py::arg("y"),
        py::arg("rows"), py::arg("C"), py::arg("stream"), py::call_guard<py::gil_scoped_release>(),
        "dx = grad - exp(y) * rowsum(grad).");
}

void bind_cuda_cross_entropy(py::module_& m) {
  m.def("cross_entropy_forward", &tg_cross_entropy_forward_cuda, py::arg("loss"), py::arg("count"),
        py::arg("row_max"), py::arg("row_logsum"), py::arg("row_loss"), py::arg("logits"), py::arg("targets"),
        py::arg("N"), py::arg("V"), py::arg("ignore_index"), py::arg("stream"),
        py::call_guard<py::gil_scoped_release>(), "Mean cross-entropy and its row statistics, on the device.");
  m.def("cross_entropy_backward", &tg_cross_entropy_backward_cuda, py::arg("dlogits"), py::arg("logits"),
        py::arg("targets"), py::arg("row_max"), py::arg("row_logsum"), py::arg("grad"), py::arg("count"),
        py::arg("N"), py::arg("V"), py::arg("ignore_index"), py::arg("stream"),
        py::call_guard<py::gil_scoped_release>(), "dlogits = (softmax - onehot) * grad / count (0 on ignored rows).");
}

void bind_cuda_dropout(py::module_& m) {
  // one launcher, two names: backward is the same map (same mask and scale) applied to the gradient
  for (const char* name : {"dropout_forward", "dropout_backward"})
    m.def(name, &tg_dropout_cuda, py::arg("y"), py::arg("x"), py::arg("n"), py::arg("p"), py::arg("seed"),
          py::arg("stream"), py::call_guard<py::gil_scoped_release>(),
          "y = x * keep * (1 / (1 - p)) with the counter-based mask of `seed` (forward; backward on the gradient).");
}
// --- end cuattn --------------------------------------------------------------------------------

}  // namespace

void register_cuda_kernels(pybind11::module_& m, KernelFamilies& families) {
  // --- cuattn
  bind_cuda_attention(m);
  families.push_back("cuda.attention");
  bind_cuda_softmax(m);
  families.push_back("cuda.softmax");
  bind_cuda_cross_entropy(m);
  families.push_back("cuda.cross_entropy");
  bind_cuda_dropout(m);
  families.push_back("cuda.dropout");
  // --- end cuattn
}

}  // namespace tinygpt
