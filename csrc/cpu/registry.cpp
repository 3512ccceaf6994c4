// The controls every CPU kernel shares, in tinygpt._C.cpu next to the kernel families (registry.h):
// the OpenMP thread count and the instruction set (isa.h). Each family's bind function checks arguments with the GIL held, then
// computes with it released so other Python threads can run, e.g. csrc/cpu/gelu.cpp:
//
//   m.def("gelu_forward", &gelu_forward_py, py::arg("x"), py::arg("approximate"), "...");
//   py::tuple gelu_forward_py(const py::array& x, const std::string& approximate) {
//     check_array<float>(x, "gelu_forward: x");          // ValueError naming the argument
//     py::array_t<float> y(shape_of(x));
//     { py::gil_scoped_release nogil; run(...); }
//     return py::make_tuple(y, py::tuple());             // what reference.gelu_forward returns
//   }
#include "isa.h"
#include "py_common.h"
#include "registry.h"

#ifdef TINYGPT_WITH_OPENMP
#include <omp.h>
#endif

namespace tinygpt {
namespace cpu {

void bind_controls(py::module_& m) {
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
      [](const py::object& n_in) {
        const int64_t n64 = int64_from_py(n_in, "set_num_threads: n");
        TG_CHECK(n64 >= 1 && n64 <= 65536, "set_num_threads: n must be in [1, 65536], got ", n64);
        const int n = static_cast<int>(n64);
#ifdef TINYGPT_WITH_OPENMP
        omp_set_num_threads(n);
#endif
      },
      py::arg("n"),
      "Sets the number of threads the CPU kernels use (no effect when built without OpenMP).");
  m.def(
      "isa", [] { return std::string(isa_name(isa())); },
      "The instruction set whose kernel copies run: 'avx512', 'avx2' or 'baseline' (the widest this CPU "
      "supports, capped by TINYGPT_CPU_ISA).");
  m.def(
      "set_isa",
      [](const std::string& name) {
        Isa chosen = default_isa();
        TG_CHECK(name == "auto" || isa_from_name(name, &chosen),
                 "set_isa: name must be 'auto', 'avx512', 'avx2' or 'baseline', got '", name, "'");
        TG_CHECK(isa_supported(chosen), "set_isa: this CPU (or build) does not support '", name, "'");
        set_isa(chosen);
        return std::string(isa_name(chosen));
      },
      py::arg("name"),
      "Runs the kernel copies of one instruction set from now on ('auto': the default choice); returns "
      "its name. For tests and benchmarks: not while kernels run on other threads.");
}

}  // namespace cpu
}  // namespace tinygpt
