// The emulated tinygpt._C.cuda: csrc/cuda/registry.cpp's bindings over the translated kernels.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <string>

#include "registry.h"
#include "tg_emu.h"

void tg_emu_selftest(const std::string& name, std::uintptr_t out, std::uintptr_t in, int arg);  // selftest.cu

PYBIND11_MODULE(tg_cuda_emu, m) {
  m.doc() = "tinygpt._C.cuda's launchers running csrc/cuda's kernels on the CPU emulator (tests only).";
  tinygpt::KernelFamilies families;
  tinygpt::register_cuda_kernels(m, families);
  m.attr("families") = families;
  m.def("set_sm_count", &tg_emu::set_sm_count, pybind11::arg("n"),
        "Set the SM count the kernels' heuristics see (default 132, an H100 SXM); returns the old one.");
  m.def("selftest", &tg_emu_selftest, pybind11::arg("name"), pybind11::arg("out"), pybind11::arg("in") = 0,
        pybind11::arg("arg") = 0, "Launch one of selftest.cu's kernels (tests/test_cuda_emulator.py).");
}
