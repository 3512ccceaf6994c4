// Embedding lookup and its gradient: out[i] = weight[ids[i]], dW[v] = sum of grad[i] over ids[i] = v.
//
// Forward gathers rows (threads split the rows). Backward zero-fills dW (V, C) and adds each grad row into its id's row in
// index order, which is exactly what reference.embedding_backward's numpy.add.at does, so the two
// agree bit for bit, at a fraction of numpy.add.at's per-element cost (BENCHMARKS.md). Threads split
// the columns, never the rows: every dW element is still summed by one thread in index order
// (deterministic for any thread count).
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "parallel.h"
#include "py_common.h"
#include "registry.h"

namespace tinygpt {
namespace {

using Ids = py::array_t<int64_t, py::array::c_style | py::array::forcecast>;

constexpr int64_t kParallelMin = int64_t{1} << 17;  // elements: below ~50 us a thread team costs more

// ids as C-contiguous int64 (a copy only when they are another integer type or not contiguous).
Ids int_ids(const char* op, const py::handle& ids) {
  TG_CHECK(py::isinstance<py::array>(ids), op, ": ids must be a numpy integer array, got ",
           std::string(py::str(py::type::of(ids))));
  const char kind = py::reinterpret_borrow<py::array>(ids).dtype().kind();
  TG_CHECK(kind == 'i' || kind == 'u', op, ": ids must have an integer dtype, got ",
           std::string(py::str(py::reinterpret_borrow<py::array>(ids).dtype())));
  return Ids::ensure(ids);
}

// Range-checks ids (already int64, C-contiguous) against the vocabulary size V.
void check_ids(const char* op, const int64_t* ids, int64_t n, int64_t V) {
  for (int64_t i = 0; i < n; ++i)
    TG_CHECK(ids[i] >= 0 && ids[i] < V, op, ": id ", ids[i], " at flat position ", i, " is out of range [0, ", V, ")");
}

// Columns [c0, c1) of dW += grad rows at ids, rows in index order.
void scatter_columns(float* dw, const float* g, const int64_t* ids, int64_t n, int64_t C, int64_t c0, int64_t c1) {
  for (int64_t i = 0; i < n; ++i) {
    float* dst = dw + ids[i] * C;
    const float* src = g + i * C;
#pragma omp simd
    for (int64_t c = c0; c < c1; ++c) dst[c] += src[c];
  }
}

void embedding_backward_impl(float* dw, const float* g, const int64_t* ids, int64_t n, int64_t V, int64_t C) {
  std::fill(dw, dw + V * C, 0.0f);
  // column blocks in whole 64-byte lines, so no two threads write one cache line; a line of 16 floats
  // touches 16 n floats of grad: 4 n per line keeps the serial cut-off at n * C ~ 2^17 (about 50 us)
  cpu::parallel_blocks((C + 15) / 16, 4 * n, [&](int64_t l0, int64_t l1, int) {
    scatter_columns(dw, g, ids, n, C, std::min(C, 16 * l0), std::min(C, 16 * l1));
  });
}

}  // namespace

namespace cpu {

void bind_embedding(py::module_& m) {
  m.def(
      "embedding_forward",
      [](const py::handle& ids_in, const py::array& weight) {
        const float* wp = input_ptr<float>(weight, "embedding_forward: weight", 2);
        const Ids ids = int_ids("embedding_forward", ids_in);
        const int64_t V = weight.shape(0), C = weight.shape(1), n = ids.size();
        std::vector<py::ssize_t> shape(ids.shape(), ids.shape() + ids.ndim());
        shape.push_back(C);
        py::array_t<float> out(shape);
        const int64_t* ip = ids.data();
        check_ids("embedding_forward", ip, n, V);
        float* op = out.mutable_data();
        {
          py::gil_scoped_release nogil;
#pragma omp parallel for schedule(static) if (n * C >= kParallelMin)
          for (int64_t i = 0; i < n; ++i) std::memcpy(op + i * C, wp + ip[i] * C, sizeof(float) * C);
        }
        return py::make_tuple(out, py::tuple());
      },
      py::arg("ids"), py::arg("weight"), "out = weight[ids] for weight (V, C); returns (out, ()).");
  m.def(
      "embedding_backward",
      [](const py::array& grad, const py::handle& ids_in, const py::tuple& weight_shape, const py::object& /*saved*/) {
        TG_CHECK(weight_shape.size() == 2, "embedding_backward: weight_shape must be (V, C), got ",
                 std::string(py::str(weight_shape)));
        const int64_t V = weight_shape[0].cast<int64_t>(), C = weight_shape[1].cast<int64_t>();
        const Ids ids = int_ids("embedding_backward", ids_in);
        const int64_t n = ids.size();
        std::vector<py::ssize_t> gshape(ids.shape(), ids.shape() + ids.ndim());
        gshape.push_back(C);
        check_array<float>(grad, "embedding_backward: grad");
        check_shape(grad, "embedding_backward: grad", gshape);
        const float* gp = static_cast<const float*>(grad.data());
        const int64_t* ip = ids.data();
        check_ids("embedding_backward", ip, n, V);
        py::array_t<float> dw({V, C});
        float* dp = dw.mutable_data();
        {
          py::gil_scoped_release nogil;
          embedding_backward_impl(dp, gp, ip, n, V, C);
        }
        return dw;
      },
      py::arg("grad"), py::arg("ids"), py::arg("weight_shape"), py::arg("saved"),
      "dW (V, C): grad rows summed per id, in index order (bit-identical to numpy.add.at).");
}

}  // namespace cpu
}  // namespace tinygpt
