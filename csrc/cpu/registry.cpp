// Registers the CPU kernel families into tinygpt._C.cpu, plus the OpenMP thread controls
// they share. A family's bind function checks arguments with the GIL held, then computes with
// it released so other Python threads can run:
//
//   void bind_layernorm(py::module_& m) {  // csrc/cpu/layernorm.cpp
//     m.def("layernorm_forward", [](const py::array& x, const py::array& w, py::array& out) {
//       const float* xp = input_ptr<float>(x, "layernorm_forward: x", 2);
//       const py::ssize_t N = x.shape(0), C = x.shape(1);
//       const float* wp = input_ptr<float>(w, "layernorm_forward: weight", {C});
//       float* op = output_ptr<float>(out, "layernorm_forward: out", {N, C});
//       py::gil_scoped_release nogil;
//       layernorm_forward(op, xp, wp, N, C);
//     }, py::arg("x"), py::arg("weight"), py::arg("out"));
//   }
//
// and is registered below with: bind_layernorm(m); families.push_back("cpu.layernorm");
#include "py_common.h"
#include "registry.h"

#ifdef TINYGPT_WITH_OPENMP
#include <omp.h>
#endif

namespace tinygpt {

void register_cpu_kernels(py::module_& m, KernelFamilies& families) {
  m.def(
      "get_num_threads",
      [] {
#ifdef TINYGPT_WITH_OPENMP
        return omp_get_max_threads();
#else
        return 1;
#endif
      },
      "Number of threads the CPU kernels use (1 when built without OpenMP).");
  m.def(
      "set_num_threads",
      [](int n) {
        TG_CHECK(n >= 1, "set_num_threads: n must be >= 1, got ", n);
#ifdef TINYGPT_WITH_OPENMP
        omp_set_num_threads(n);
#endif
      },
      py::arg("n"),
      "Sets the number of threads the CPU kernels use (no effect when built without OpenMP).");
  bind_attention(m);
  families.push_back("cpu.attention");
  bind_dropout(m);
  families.push_back("cpu.dropout");
  bind_softmax(m);
  families.push_back("cpu.softmax");
  bind_cross_entropy(m);
  families.push_back("cpu.cross_entropy");
  bind_adamw(m);
  families.push_back("cpu.adamw");
  bind_layernorm(m);
  families.push_back("cpu.layernorm");
  bind_gelu(m);
  families.push_back("cpu.gelu");
  bind_matmul(m);
  families.push_back("cpu.matmul");
  bind_embedding(m);
  families.push_back("cpu.embedding");
}

}  // namespace tinygpt
