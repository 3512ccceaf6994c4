// NumPy-argument checks for host-compiled binding code (never included by .cu files).
// Kernels take pybind11::array (NumPy arrays only, never converted or copied) and get typed
// pointers through these helpers, which throw ValueError naming the offending argument.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cstdint>
#include <initializer_list>
#include <iterator>
#include <string>
#include <vector>

#include "common.h"

namespace tinygpt {

namespace py = pybind11;

// Formats dims as a Python tuple: "()", "(4,)", "(2, 3)".
template <typename It>
std::string tuple_str(It begin, It end) {
  std::string s = "(";
  for (It it = begin; it != end; ++it) s += (it == begin ? "" : ", ") + std::to_string(*it);
  return s + (std::distance(begin, end) == 1 ? ",)" : ")");
}

inline std::string shape_str(const py::array& a) {
  return tuple_str(a.shape(), a.shape() + a.ndim());
}

// Checks that `a` holds T and is C-contiguous, with `ndim` dimensions unless ndim < 0.
// `what` names the argument in messages, op first: "layernorm_forward: weight".
template <typename T>
void check_array(const py::array& a, const char* what, py::ssize_t ndim = -1) {
  TG_CHECK(py::isinstance<py::array_t<T>>(a), what, " must be ",
           std::string(py::str(py::dtype::of<T>())), ", got ", std::string(py::str(a.dtype())));
  TG_CHECK(a.flags() & py::array::c_style, what, " must be C-contiguous");
  TG_CHECK(ndim < 0 || a.ndim() == ndim, what, " must have ", ndim, " dimensions, got shape ",
           shape_str(a));
}

// Checks that `a` has exactly `shape` (which also fixes ndim).
template <typename It>
void check_shape(const py::array& a, const char* what, It begin, It end) {
  const bool same = a.ndim() == static_cast<py::ssize_t>(end - begin) && std::equal(begin, end, a.shape());
  TG_CHECK(same, what, " must have shape ", tuple_str(begin, end), ", got ", shape_str(a));
}
inline void check_shape(const py::array& a, const char* what, std::initializer_list<py::ssize_t> shape) {
  check_shape(a, what, shape.begin(), shape.end());
}
inline void check_shape(const py::array& a, const char* what, const std::vector<py::ssize_t>& shape) {
  check_shape(a, what, shape.begin(), shape.end());
}

// Read-only typed pointer to a checked input with `ndim` dimensions.
template <typename T>
const T* input_ptr(const py::array& a, const char* what, py::ssize_t ndim) {
  check_array<T>(a, what, ndim);
  return static_cast<const T*>(a.data());
}

// Read-only typed pointer to a checked input of exactly `shape`.
template <typename T>
const T* input_ptr(const py::array& a, const char* what, std::initializer_list<py::ssize_t> shape) {
  check_array<T>(a, what);
  check_shape(a, what, shape);
  return static_cast<const T*>(a.data());
}

// Writable typed pointer to a checked, writeable output of exactly `shape`.
template <typename T>
T* output_ptr(py::array& a, const char* what, std::initializer_list<py::ssize_t> shape) {
  check_array<T>(a, what);
  check_shape(a, what, shape);
  TG_CHECK(a.writeable(), what, " must be writeable");
  return static_cast<T*>(a.mutable_data());
}

// A new C-contiguous float32 array whose data is 64-byte aligned (NumPy's allocator gives 16): full
// vector stores cover whole cache lines instead of straddling two, and threads writing neighbouring
// 64-byte-multiple blocks (GEMM tiles, attention heads of a (B, T, C) output) never share a line. The
// memory still comes from NumPy (a view into a slightly larger array), so large outputs keep its
// huge-page hint and allocation cache: fresh 4 KiB page faults would cost more than the alignment.
inline py::array_t<float> aligned_array(const std::vector<py::ssize_t>& shape) {
  py::ssize_t n = 1;
  for (py::ssize_t d : shape) n *= d;
  py::array_t<float> buf(n + 16);
  float* p = buf.mutable_data();
  const size_t misalign = reinterpret_cast<uintptr_t>(p) % 64;
  float* aligned = p + (misalign == 0 ? 0 : (64 - misalign) / sizeof(float));
  // The result's base is a capsule holding `buf`, not `buf` itself: to Python it is a fresh array that
  // owns its memory (not a view of another array), so the autograd hands it to .grad uncopied.
  const void* held = buf.release().ptr();  // the capsule's reference, dropped with the capsule
  py::capsule owner(held, [](void* o) { Py_DECREF(static_cast<PyObject*>(o)); });
  return py::array_t<float>(shape, aligned, owner);
}

}  // namespace tinygpt
