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

#include <cstdint>

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

  m.def("grad_norm_chunk", &tg_grad_norm_chunk, "Elements per block of grad_norm_launch / grad_scale_launch.");
  m.def("grad_norm_launch", &tg_grad_norm_cuda, py::arg("out"), py::arg("partial"), py::arg("table"),
        py::arg("block_start"), py::arg("num_tensors"), py::arg("num_blocks"), py::arg("max_abs"),
        py::arg("stream"), nogil,
        "out (0-d float64) = sum of squares (or max |g|) over a list of float32 tensors, one multi-tensor launch.");
  m.def("grad_scale_launch", &tg_grad_scale_cuda, py::arg("table"), py::arg("block_start"),
        py::arg("num_tensors"), py::arg("num_blocks"), py::arg("scale"), py::arg("stream"), nogil,
        "Every tensor of the list *= float32(scale), in place, one launch.");
  families.push_back("cuda.grad_norm");
}

}  // namespace
// ----------------------------------------------------------------------------- end cugemm

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
  m.def("attention_qkv_forward", &tg_attention_qkv_forward_cuda, py::arg("out"), py::arg("row_max"),
        py::arg("row_sum"), py::arg("qkv"), py::arg("B"), py::arg("T"), py::arg("n_head"), py::arg("hs"),
        py::arg("causal"), py::arg("window"), py::arg("dropout_p"), py::arg("seed"), py::arg("scale"),
        py::arg("stream"), py::call_guard<py::gil_scoped_release>(),
        "Flash attention forward reading c_attn's packed qkv (B, T, 3C) in place; out is the merged (B, T, C).");
  m.def("attention_qkv_backward", &tg_attention_qkv_backward_cuda, py::arg("dqkv"), py::arg("drow"),
        py::arg("grad"), py::arg("qkv"), py::arg("out"), py::arg("row_max"), py::arg("row_sum"), py::arg("B"),
        py::arg("T"), py::arg("n_head"), py::arg("hs"), py::arg("causal"), py::arg("window"), py::arg("dropout_p"),
        py::arg("seed"), py::arg("scale"), py::arg("stream"), py::call_guard<py::gil_scoped_release>(),
        "Flash attention backward into a packed dqkv (B, T, 3C); grad is the merged (B, T, C).");
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

// --- embedding (csrc/cuda/embedding.cu) ---
void bind_cuda_embedding(py::module_& m) {
  m.def("embedding_forward_launch", &tg_embedding_forward_cuda, py::arg("out"), py::arg("weight"), py::arg("ids"),
        py::arg("n"), py::arg("V"), py::arg("C"), py::arg("stream"), py::call_guard<py::gil_scoped_release>(),
        "out (n, C) = weight[ids] for int64 ids (n,).");
  m.def("embedding_keys_launch", &tg_embedding_keys_cuda, py::arg("keys"), py::arg("ids"), py::arg("n"), py::arg("V"),
        py::arg("stream"), py::call_guard<py::gil_scoped_release>(),
        "keys = ids * n + position (int64), the sort keys of embedding_backward_launch.");
  m.def("embedding_backward_launch", &tg_embedding_backward_cuda, py::arg("dw"), py::arg("grad"),
        py::arg("sorted_keys"), py::arg("n"), py::arg("V"), py::arg("C"), py::arg("stream"),
        py::call_guard<py::gil_scoped_release>(),
        "dw (V, C) = grad rows summed per id in position order (deterministic), from the sorted keys.");
}

}  // namespace

void register_cuda_kernels(pybind11::module_& m, KernelFamilies& families) {
  bind_cugemm_families(m, families);
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
  bind_cuda_embedding(m);
  families.push_back("cuda.embedding");
}

}  // namespace tinygpt
