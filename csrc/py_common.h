// NumPy-argument checks for host-compiled binding code (never included by .cu files).
// Kernels take pybind11::array (NumPy arrays only, never converted or copied) and get typed
// pointers through these helpers, which throw ValueError naming the offending argument.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cstddef>
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

// Checks that `a` holds T, is C-contiguous and aligned for T, with `ndim` dimensions unless ndim < 0.
// `what` names the argument in messages, op first: "layernorm_forward: weight".
// Unaligned arrays are legal NumPy (np.frombuffer at an odd offset, a field of a packed structured
// array) but reading them through T* is undefined behaviour: they are refused, not copied (the
// kernels never copy their arguments); tinygpt.kernels runs the reference on them instead.
template <typename T>
void check_array(const py::array& a, const char* what, py::ssize_t ndim = -1) {
  TG_CHECK(py::isinstance<py::array_t<T>>(a), what, " must be ",
           std::string(py::str(py::dtype::of<T>())), ", got ", std::string(py::str(a.dtype())));
  TG_CHECK(a.flags() & py::array::c_style, what, " must be C-contiguous");
  TG_CHECK(reinterpret_cast<std::uintptr_t>(a.data()) % alignof(T) == 0, what,
           " must be aligned to ", alignof(T), " bytes (its data starts at an odd address); copy it first, "
           "e.g. with numpy.array(a, order='C')");
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

// The number of elements of an array of T of `shape` (made from several arguments' dims), checked
// before anything is multiplied in a way that could overflow: a ValueError naming `what` when the
// array could not be addressed (its bytes, with slack, exceed PTRDIFF_MAX) or a dim is negative.
template <typename T>
py::ssize_t checked_numel(const std::vector<py::ssize_t>& shape, const char* what) {
  const py::ssize_t limit = (PTRDIFF_MAX - 4096) / static_cast<py::ssize_t>(sizeof(T));
  py::ssize_t n = 1;
  for (py::ssize_t d : shape) TG_CHECK(d >= 0, what, " would have a negative dimension: ", tuple_str(shape.begin(), shape.end()));
  for (py::ssize_t d : shape) if (d == 0) return 0;
  for (py::ssize_t d : shape) {
    TG_CHECK(!__builtin_mul_overflow(n, d, &n) && n <= limit, what, " of shape ", tuple_str(shape.begin(), shape.end()),
             " would be too large to address");
  }
  return n;
}

// A Python int (or anything with __index__) as int64; a ValueError naming `what` when it does not
// fit and a TypeError when it is not an integer (instead of pybind11's generic "incompatible
// function arguments" for an int64_t parameter).
inline int64_t int64_from_py(const py::handle& value, const char* what) {
  PyObject* index = PyNumber_Index(value.ptr());
  if (index == nullptr) {
    PyErr_Clear();
    throw py::type_error(std::string(what) + " must be an int, got " + std::string(py::str(py::type::of(value))));
  }
  int overflow = 0;
  const long long v = PyLong_AsLongLongAndOverflow(index, &overflow);
  const std::string repr = overflow != 0 ? std::string(py::str(index)) : "";
  Py_DECREF(index);
  TG_CHECK(overflow == 0, what, " = ", repr, " is out of range: it must fit a signed 64-bit integer");
  return static_cast<int64_t>(v);
}

// A Python int (or anything with __index__) taken mod 2^64, as reference.dropout_mask takes a seed.
inline uint64_t seed_from_py(const py::handle& seed, const char* what) {
  PyObject* index = PyNumber_Index(seed.ptr());
  if (index == nullptr) {
    PyErr_Clear();
    TG_CHECK(false, what, " must be an int, got ", std::string(py::str(py::type::of(seed))));
  }
  const unsigned long long value = PyLong_AsUnsignedLongLongMask(index);  // mod 2^64
  Py_DECREF(index);
  return static_cast<uint64_t>(value);
}

// A new C-contiguous float32 array whose data is 64-byte aligned (NumPy's allocator gives 16): full
// vector stores cover whole cache lines instead of straddling two, and threads writing neighbouring
// 64-byte-multiple blocks (GEMM tiles, attention heads of a (B, T, C) output) never share a line. The
// memory still comes from NumPy (a view into a slightly larger array), so large outputs keep its
// huge-page hint and allocation cache: fresh 4 KiB page faults would cost more than the alignment.
inline py::array_t<float> aligned_array(const std::vector<py::ssize_t>& shape) {
  const py::ssize_t n = checked_numel<float>(shape, "output");
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
