// cached_blocks: a cached inference step through a stack of GPT blocks in one call.
//
// tinygpt/models/fastpath.py hands it the blocks of GPT.hidden_states under a KV cache, each layer as a
// tuple of its arrays. Every op is the compute its own binding runs (ops.h): layer_norm, add_layer_norm,
// linear / linear_gelu or quantized_linear(_gelu), kv_attention, gelu, the residual adds; the same calls
// on the same inputs as fastpath's per-op path, so the same numbers bit for bit, without returning to
// Python between them (about 60 kernel calls per GPT-2 token). Returns None, before touching the caches,
// when an array is not one the native kernels take (float32 / int8 / uint8, C-contiguous, aligned: the
// rule of tinygpt.kernels._qualifies); fastpath then runs its per-op path, which picks the reference for
// such arrays as the modules do. Shape mismatches are ValueErrors.
//
// Layer tuple: (pre_norm, n_head, window or None, gelu_tanh, ln_1, ln_2, c_attn, c_proj, c_fc, mlp_proj)
//   ln_*: (weight, bias or None, eps); a linear: (weight, None, bias or None) for float32 weights (out, in),
//   (q, scale, bias or None) for int8 q (out, in) with scale (out,) or packed int4 q (out, in/2) with
//   group scales (out, groups).
#include <cmath>
#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "ops.h"
#include "py_common.h"
#include "registry.h"

namespace tinygpt {
namespace cpu {
namespace {

// Whether `a` is an array of T the native kernels take (tinygpt.kernels._qualifies): C-contiguous, aligned.
template <typename T>
bool takes(const py::handle& a) {
  if (!py::isinstance<py::array_t<T>>(a)) return false;
  const auto arr = py::reinterpret_borrow<py::array>(a);
  return (arr.flags() & py::array::c_style) && reinterpret_cast<std::uintptr_t>(arr.data()) % alignof(T) == 0;
}

const float* floats(const py::handle& a) {
  return static_cast<const float*>(py::reinterpret_borrow<py::array>(a).data());
}

struct Norm {
  const float *w = nullptr, *b = nullptr;
  float eps = 0.0f;
};

struct Lin {
  const void* w = nullptr;     // float32 weight or int8 / packed int4 q
  const float* s = nullptr;    // scales (quantized) or nullptr
  const float* b = nullptr;    // bias or nullptr
  int64_t in = 0, out = 0, groups = 0;
};

struct Layer {
  bool pre = true, tanh = true;
  int64_t n_head = 1;
  std::optional<int64_t> window;
  int64_t cache_len = 0;  // the caches' max_length
  Norm ln_1, ln_2;
  Lin c_attn, c_proj, c_fc, mlp_proj;
  float *k = nullptr, *v = nullptr;
};

// false: an array the native kernels do not take (the caller returns None).
bool parse_norm(const py::handle& t, int64_t C, const std::string& what, Norm& n) {
  const auto tup = py::reinterpret_borrow<py::tuple>(t);
  TG_CHECK(tup.size() == 3, what, " must be (weight, bias or None, eps)");
  if (!takes<float>(tup[0]) || !(tup[1].is_none() || takes<float>(tup[1]))) return false;
  check_shape(py::reinterpret_borrow<py::array>(tup[0]), (what + ": weight").c_str(), {C});
  if (!tup[1].is_none()) check_shape(py::reinterpret_borrow<py::array>(tup[1]), (what + ": bias").c_str(), {C});
  n.w = floats(tup[0]);
  n.b = tup[1].is_none() ? nullptr : floats(tup[1]);
  n.eps = static_cast<float>(tup[2].cast<double>());
  return true;
}

bool parse_linear(const py::handle& t, int64_t in, const std::string& what, Lin& l) {
  const auto tup = py::reinterpret_borrow<py::tuple>(t);
  TG_CHECK(tup.size() == 3, what, " must be (weight, scale or None, bias or None)");
  const py::handle w = tup[0], s = tup[1], b = tup[2];
  l.in = in;
  if (s.is_none()) {
    if (!takes<float>(w)) return false;
    const auto a = py::reinterpret_borrow<py::array>(w);
    TG_CHECK(a.ndim() == 2 && a.shape(1) == in, what, ": weight must be (out, ", in, "), got ", shape_str(a));
    l.out = a.shape(0);
  } else {
    const bool int8 = takes<int8_t>(w), int4 = takes<uint8_t>(w);
    if ((!int8 && !int4) || !takes<float>(s)) return false;
    const auto q = py::reinterpret_borrow<py::array>(w), sc = py::reinterpret_borrow<py::array>(s);
    TG_CHECK(q.ndim() == 2 && q.shape(1) * (int4 ? 2 : 1) == in, what, ": q must be (out, ", int4 ? in / 2 : in,
             "), got ", shape_str(q));
    l.out = q.shape(0);
    if (int4) {
      TG_CHECK(sc.ndim() == 2 && sc.shape(0) == l.out && sc.shape(1) >= 1 && in % sc.shape(1) == 0 &&
                   (in / sc.shape(1)) % 2 == 0,
               what, ": int4 scale must be (", l.out, ", in / group_size), got ", shape_str(sc));
      l.groups = sc.shape(1);
    } else {
      check_shape(sc, (what + ": scale").c_str(), {l.out});
    }
    l.s = floats(s);
  }
  l.w = py::reinterpret_borrow<py::array>(w).data();
  if (!b.is_none()) {
    if (!takes<float>(b)) return false;
    check_shape(py::reinterpret_borrow<py::array>(b), (what + ": bias").c_str(), {l.out});
    l.b = floats(b);
  }
  return true;
}

// y (rows, out) = x @ W^T + b; with h (the pre-activation, scratch) y = gelu_tanh of it.
void run_linear(const Lin& l, const float* x, int64_t rows, float* y, float* h = nullptr) {
  if (l.s == nullptr) {
    if (h == nullptr) {
      linear_rows(x, static_cast<const float*>(l.w), l.b, rows, l.in, l.out, y, nullptr);
    } else {
      linear_rows(x, static_cast<const float*>(l.w), l.b, rows, l.in, l.out, h, y);
    }
  } else {
    quantized_linear_rows(x, l.w, l.s, l.b, rows, l.in, l.out, l.groups, y, h);
  }
}

py::object cached_blocks(const py::array& x_in, const py::list& layers, const py::list& k_caches,
                         const py::list& v_caches, const py::object& batch_in, const py::object& start_in) {
  const char* op = "cached_blocks";
  if (!takes<float>(x_in)) return py::none();
  TG_CHECK(x_in.ndim() == 2, op, ": x must be (rows, n_embd), got shape ", shape_str(x_in));
  const int64_t N = x_in.shape(0), C = x_in.shape(1), B = int64_from_py(batch_in, "cached_blocks: batch");
  const int64_t start = int64_from_py(start_in, "cached_blocks: start");
  TG_CHECK(B >= 1 && N % B == 0, op, ": ", N, " rows are not a whole number of rows per sequence for batch ", B);
  const int64_t T = N / B;
  const size_t n_layer = layers.size();
  TG_CHECK(k_caches.size() == n_layer && v_caches.size() == n_layer, op, ": ", n_layer, " layers need as many k and v "
           "caches, got ", k_caches.size(), " and ", v_caches.size());
  std::vector<Layer> L(n_layer);
  int64_t F = 0;
  for (size_t i = 0; i < n_layer; ++i) {
    const std::string at = std::string(op) + ": layer " + std::to_string(i);
    const auto t = layers[i].cast<py::tuple>();
    TG_CHECK(t.size() == 10, at, " must be a 10-tuple (see csrc/cpu/decode.cpp), got ", t.size(), " items");
    Layer& l = L[i];
    l.pre = t[0].cast<bool>();
    l.n_head = int64_from_py(t[1], (at + ": n_head").c_str());
    TG_CHECK(l.n_head >= 1 && C % l.n_head == 0, at, ": n_head ", l.n_head, " must divide n_embd ", C);
    if (!t[2].is_none()) {
      l.window = int64_from_py(t[2], (at + ": window").c_str());
      TG_CHECK(*l.window >= 1, at, ": window must be >= 1, got ", *l.window);
    }
    l.tanh = t[3].cast<bool>();
    if (!parse_norm(t[4], C, at + " ln_1", l.ln_1) || !parse_norm(t[5], C, at + " ln_2", l.ln_2) ||
        !parse_linear(t[6], C, at + " c_attn", l.c_attn) || !parse_linear(t[7], C, at + " attn.c_proj", l.c_proj) ||
        !parse_linear(t[8], C, at + " c_fc", l.c_fc))
      return py::none();
    TG_CHECK(l.c_attn.out == 3 * C && l.c_proj.out == C, at, ": c_attn must have ", 3 * C, " outputs and c_proj ", C);
    if (!parse_linear(t[9], l.c_fc.out, at + " mlp.c_proj", l.mlp_proj)) return py::none();
    TG_CHECK(l.mlp_proj.out == C, at, ": mlp.c_proj must have ", C, " outputs, got ", l.mlp_proj.out);
    F = std::max(F, l.c_fc.out);
    const std::vector<py::ssize_t> shape = {B, l.n_head, 0, C / l.n_head};
    for (const auto& [list, ptr] : {std::pair{&k_caches, &l.k}, std::pair{&v_caches, &l.v}}) {
      const py::handle c = (*list)[i];
      if (!takes<float>(c)) return py::none();
      auto a = py::reinterpret_borrow<py::array>(c);
      TG_CHECK(a.ndim() == 4 && a.shape(0) == B && a.shape(1) == l.n_head && a.shape(3) == C / l.n_head, at,
               ": caches must be (B ", B, ", n_head ", l.n_head, ", max_length, head size ", C / l.n_head, "), got ",
               shape_str(a));
      TG_CHECK(a.writeable(), at, ": caches must be writeable");
      TG_CHECK(start >= 0 && start + T <= a.shape(2), at, ": ", T, " new tokens at position ", start,
               " do not fit the cache's ", a.shape(2), " positions");
      l.cache_len = a.shape(2);
      *ptr = static_cast<float*>(a.mutable_data());
    }
    TG_CHECK(l.k != l.v, at, ": k and v caches must be different arrays");
  }
  // x is updated in place through the stack: a fresh (N, C) copy, returned
  py::array_t<float> x = aligned_array({N, C}), s = aligned_array({N, C}), h = aligned_array({N, C}),
                     a = aligned_array({N, C}), att = aligned_array({N, C}), qkv = aligned_array({N, 3 * C}),
                     f = aligned_array({N, std::max<int64_t>(F, 1)}), fh = aligned_array({N, std::max<int64_t>(F, 1)});
  std::vector<float> mean(N), rstd(N);
  float *xp = x.mutable_data(), *sp = s.mutable_data(), *hp = h.mutable_data(), *ap = a.mutable_data(),
        *attp = att.mutable_data(), *qkvp = qkv.mutable_data(), *fp = f.mutable_data(), *fhp = fh.mutable_data();
  std::copy(floats(x_in), floats(x_in) + N * C, xp);
  {
    py::gil_scoped_release nogil;
    for (const Layer& l : L) {
      const double scale = 1.0 / std::sqrt(static_cast<double>(C / l.n_head));
      // attention: pre-norm on ln_1(x), post-norm on x; out in ap
      const float* ain = xp;
      if (l.pre) {
        layer_norm_rows(xp, nullptr, nullptr, l.ln_1.w, l.ln_1.b, hp, mean.data(), rstd.data(), N, C, l.ln_1.eps);
        ain = hp;
      }
      run_linear(l.c_attn, ain, N, qkvp);
      kv_attention_rows(qkvp, l.k, l.v, B, T, l.n_head, C, l.cache_len, start, l.window, 0.0, 0, scale, attp);
      run_linear(l.c_proj, attp, N, ap);
      if (l.pre) {  // s = x + a, h = ln_2(s) in one pass; then x = s + mlp(h)
        layer_norm_rows(xp, ap, sp, l.ln_2.w, l.ln_2.b, hp, mean.data(), rstd.data(), N, C, l.ln_2.eps);
        std::swap(xp, sp);
      } else {  // x = ln_1(x + a); then x = ln_2(x + mlp(x))
        for (int64_t i = 0; i < N * C; ++i) sp[i] = xp[i] + ap[i];
        layer_norm_rows(sp, nullptr, nullptr, l.ln_1.w, l.ln_1.b, xp, mean.data(), rstd.data(), N, C, l.ln_1.eps);
      }
      const float* min = l.pre ? hp : xp;
      if (l.tanh) {
        run_linear(l.c_fc, min, N, fp, fhp);
      } else {
        run_linear(l.c_fc, min, N, fhp);
        gelu_forward_rows(false, fhp, fp, N * l.c_fc.out);
      }
      run_linear(l.mlp_proj, fp, N, ap);
      if (l.pre) {
        for (int64_t i = 0; i < N * C; ++i) xp[i] = xp[i] + ap[i];
      } else {
        for (int64_t i = 0; i < N * C; ++i) sp[i] = xp[i] + ap[i];
        layer_norm_rows(sp, nullptr, nullptr, l.ln_2.w, l.ln_2.b, xp, mean.data(), rstd.data(), N, C, l.ln_2.eps);
      }
    }
  }
  return xp == x.mutable_data() ? py::object(x) : py::object(s);
}

}  // namespace

void bind_decode(py::module_& m) {
  m.def("cached_blocks", &cached_blocks, py::arg("x"), py::arg("layers"), py::arg("k_caches"), py::arg("v_caches"),
        py::arg("batch"), py::arg("start"),
        "One cached inference step through a stack of GPT blocks (models/fastpath.py): x (B T, C) -> (B T, C), the "
        "new keys and values stored in the caches at start..start+T-1; None when an array is not one the native "
        "kernels take. Layer tuples: see csrc/cpu/decode.cpp.");
}

}  // namespace cpu
}  // namespace tinygpt
