// A cached inference step of GPT in one native call (tinygpt/models/fastpath.py):
//   cached_logits  token ids (B, T) -> float32 logits (B, vocab) of each sequence's last position: the
//                  embeddings (float or int8 / int4 rows, dequantized as QuantizedEmbedding does), every
//                  block, the final LayerNorm and the head, the new keys and values stored in the caches
//   cached_blocks  the blocks alone, on embeddings x (B T, C)
// Every op is the compute its own binding runs (ops.h): layer_norm, add_layer_norm, linear / linear_gelu or
// quantized_linear(_gelu), kv_attention, gelu, the residual adds; the same calls on the same inputs as the
// modules and fastpath's per-op path, so the same numbers bit for bit, without returning to Python between
// them (about 60 kernel calls per GPT-2 token). Both return None, before touching the caches, when an array
// is not one the native kernels take (float32 / int8 / uint8, C-contiguous, aligned: the rule of
// tinygpt.kernels._qualifies); fastpath then runs the per-op path or the modules, which pick the reference
// for such arrays. Shape mismatches and token ids out of range are ValueErrors.
//
// Layer tuple: (pre_norm, n_head, window or None, gelu_tanh, ln_1, ln_2, c_attn, c_proj, c_fc, mlp_proj)
//   ln_*: (weight, bias or None, eps); a linear: (weight, None, bias or None) for float32 weights (out, in),
//   (q, scale, bias or None) for int8 q (out, in) with scale (out,) or packed int4 q (out, in/2) with
//   group scales (out, groups).
// Embedding tables (wte, wpe): laid out as a linear's weight (rows = out, C = in): (table, None, None) for float32,
// (q, scale, None) for int8 / int4.
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
  TG_CHECK(py::isinstance<py::tuple>(t), what, " must be a tuple (weight, bias or None, eps)");
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
  TG_CHECK(py::isinstance<py::tuple>(t), what, " must be a tuple (weight, scale or None, bias or None)");
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

// One step's blocks, parsed: rows N = B T of width C, the new tokens at positions start..start+T-1.
struct Step {
  int64_t B = 1, T = 1, N = 1, C = 1, start = 0, F = 1;
  std::vector<Layer> L;
};

// Parses the layer tuples and their caches into st (B, T, C, start set); false: an array the native kernels do
// not take (the caller returns None, nothing touched).
bool parse_step(const char* op, const py::list& layers, const py::list& k_caches, const py::list& v_caches, Step& st) {
  const size_t n_layer = layers.size();
  const int64_t B = st.B, T = st.T, C = st.C, start = st.start;
  TG_CHECK(k_caches.size() == n_layer && v_caches.size() == n_layer, op, ": ", n_layer, " layers need as many k and v "
           "caches, got ", k_caches.size(), " and ", v_caches.size());
  st.L.assign(n_layer, Layer());
  for (size_t i = 0; i < n_layer; ++i) {
    const std::string at = std::string(op) + ": layer " + std::to_string(i);
    TG_CHECK(py::isinstance<py::tuple>(layers[i]), at, " must be a tuple (see csrc/cpu/decode.cpp)");
    const auto t = py::reinterpret_borrow<py::tuple>(layers[i]);
    TG_CHECK(t.size() == 10, at, " must be a 10-tuple (see csrc/cpu/decode.cpp), got ", t.size(), " items");
    Layer& l = st.L[i];
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
      return false;
    TG_CHECK(l.c_attn.out == 3 * C && l.c_proj.out == C, at, ": c_attn must have ", 3 * C, " outputs and c_proj ", C);
    if (!parse_linear(t[9], l.c_fc.out, at + " mlp.c_proj", l.mlp_proj)) return false;
    TG_CHECK(l.mlp_proj.out == C, at, ": mlp.c_proj must have ", C, " outputs, got ", l.mlp_proj.out);
    st.F = std::max(st.F, l.c_fc.out);
    for (const auto& [list, ptr] : {std::pair{&k_caches, &l.k}, std::pair{&v_caches, &l.v}}) {
      const py::handle c = (*list)[i];
      if (!takes<float>(c)) return false;
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
  return true;
}

// out = a + b over n floats (the residual adds; NumPy's float32 add, the same numbers).
void add_rows(const float* a, const float* b, float* out, int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[i] = a[i] + b[i];
}

// Runs the blocks on x (N, C), with s (N, C) a second buffer of the residual stream: returns whichever holds
// the result. No GIL needed.
float* run_blocks(const Step& st, float* x, float* s) {
  const int64_t N = st.N, C = st.C;
  std::vector<float> hbuf(N * C), abuf(N * C), attbuf(N * C), qkvbuf(N * 3 * C), fbuf(N * st.F), fhbuf(N * st.F);
  std::vector<float> mean(N), rstd(N);
  float *hp = hbuf.data(), *ap = abuf.data(), *attp = attbuf.data(), *qkvp = qkvbuf.data(), *fp = fbuf.data(),
        *fhp = fhbuf.data();
  for (const Layer& l : st.L) {
    const double scale = 1.0 / std::sqrt(static_cast<double>(C / l.n_head));
    // attention: pre-norm on ln_1(x), post-norm on x; out in ap
    const float* ain = x;
    if (l.pre) {
      layer_norm_rows(x, nullptr, nullptr, l.ln_1.w, l.ln_1.b, hp, mean.data(), rstd.data(), N, C, l.ln_1.eps);
      ain = hp;
    }
    run_linear(l.c_attn, ain, N, qkvp);
    kv_attention_rows(qkvp, l.k, l.v, st.B, st.T, l.n_head, C, l.cache_len, st.start, l.window, 0.0, 0, scale, attp);
    run_linear(l.c_proj, attp, N, ap);
    if (l.pre) {  // s = x + a, h = ln_2(s) in one pass; then x = s + mlp(h)
      layer_norm_rows(x, ap, s, l.ln_2.w, l.ln_2.b, hp, mean.data(), rstd.data(), N, C, l.ln_2.eps);
      std::swap(x, s);
    } else {  // x = ln_1(x + a); then x = ln_2(x + mlp(x))
      add_rows(x, ap, s, N * C);
      layer_norm_rows(s, nullptr, nullptr, l.ln_1.w, l.ln_1.b, x, mean.data(), rstd.data(), N, C, l.ln_1.eps);
    }
    const float* min = l.pre ? hp : x;
    if (l.tanh) {
      run_linear(l.c_fc, min, N, fp, fhp);
    } else {
      run_linear(l.c_fc, min, N, fhp);
      gelu_forward_rows(false, fhp, fp, N * l.c_fc.out);
    }
    run_linear(l.mlp_proj, fp, N, ap);
    if (l.pre) {
      add_rows(x, ap, x, N * C);
    } else {
      add_rows(x, ap, s, N * C);
      layer_norm_rows(s, nullptr, nullptr, l.ln_2.w, l.ln_2.b, x, mean.data(), rstd.data(), N, C, l.ln_2.eps);
    }
  }
  return x;
}

py::object cached_blocks(const py::array& x_in, const py::list& layers, const py::list& k_caches,
                         const py::list& v_caches, const py::object& batch_in, const py::object& start_in) {
  const char* op = "cached_blocks";
  if (!takes<float>(x_in)) return py::none();
  TG_CHECK(x_in.ndim() == 2, op, ": x must be (rows, n_embd), got shape ", shape_str(x_in));
  Step st;
  st.N = x_in.shape(0), st.C = x_in.shape(1), st.B = int64_from_py(batch_in, "cached_blocks: batch");
  st.start = int64_from_py(start_in, "cached_blocks: start");
  TG_CHECK(st.B >= 1 && st.N % st.B == 0, op, ": ", st.N, " rows are not a whole number of rows per sequence for "
           "batch ", st.B);
  st.T = st.N / st.B;
  if (!parse_step(op, layers, k_caches, v_caches, st)) return py::none();
  // the residual stream alternates between two fresh (N, C) arrays; the one holding the result is returned
  py::array_t<float> x = aligned_array({st.N, st.C}), s = aligned_array({st.N, st.C});
  std::copy(floats(x_in), floats(x_in) + st.N * st.C, x.mutable_data());
  float* out;
  {
    py::gil_scoped_release nogil;
    out = run_blocks(st, x.mutable_data(), s.mutable_data());
  }
  return out == x.mutable_data() ? py::object(x) : py::object(s);
}

// out (C,) = row r of an embedding table held as a linear's weight (out = rows, in = C): copied when float32,
// dequantized as QuantizedEmbedding does otherwise (q as float32 times its scale).
void table_row(const Lin& t, int64_t r, float* out) {
  if (t.s == nullptr) {
    const float* w = static_cast<const float*>(t.w) + r * t.in;
    std::copy(w, w + t.in, out);
  } else {
    quantized_dequantize_rows(t.w, t.s, t.in, t.groups, r, 1, out);
  }
}

py::object cached_logits(const py::array& ids, const py::tuple& wte, const py::tuple& wpe, const py::list& layers,
                         const py::object& ln_f, const py::tuple& head, const py::list& k_caches,
                         const py::list& v_caches, const py::object& start_in) {
  const char* op = "cached_logits";
  check_array<int64_t>(ids, "cached_logits: ids", 2);
  Step st;
  st.B = ids.shape(0), st.T = ids.shape(1), st.N = st.B * st.T;
  st.start = int64_from_py(start_in, "cached_logits: start");
  TG_CHECK(st.N >= 1, op, ": ids must not be empty, got shape ", shape_str(ids));
  Lin tok, pos;
  TG_CHECK(wte.size() == 3, op, ": wte must be (table, scale or None, None)");
  if (!py::isinstance<py::array>(wte[0])) return py::none();  // a CuPy table, say: not the CPU kernels' arrays
  const auto wte_t = py::reinterpret_borrow<py::array>(wte[0]);
  TG_CHECK(wte_t.ndim() == 2, op, ": wte must be a 2-D table, got shape ", shape_str(wte_t));
  st.C = wte_t.shape(1) * (py::isinstance<py::array_t<uint8_t>>(wte_t) ? 2 : 1);
  Norm fin;
  Lin out;
  if (!parse_linear(wte, st.C, "cached_logits: wte", tok) || !parse_linear(wpe, st.C, "cached_logits: wpe", pos) ||
      !parse_step(op, layers, k_caches, v_caches, st) || !(ln_f.is_none() || parse_norm(ln_f, st.C, "ln_f", fin)) ||
      !parse_linear(head, st.C, "cached_logits: head", out))
    return py::none();
  TG_CHECK(st.start + st.T <= pos.out, op, ": positions up to ", st.start + st.T, " exceed the position table's ",
           pos.out);
  const int64_t* idp = static_cast<const int64_t*>(ids.data());
  for (int64_t i = 0; i < st.N; ++i)
    TG_CHECK(idp[i] >= 0 && idp[i] < tok.out, op, ": token id ", idp[i], " is out of the vocabulary [0, ", tok.out,
             ")");
  const int64_t N = st.N, C = st.C, B = st.B;
  py::array_t<float> logits = aligned_array({B, out.out});
  float* lp = logits.mutable_data();
  {
    py::gil_scoped_release nogil;
    std::vector<float> xbuf(N * C), sbuf(N * C), prow(C);
    for (int64_t i = 0; i < N; ++i) {  // x = wte[id] + wpe[position], as GPT.hidden_states
      float* xr = xbuf.data() + i * C;
      table_row(tok, idp[i], xr);
      table_row(pos, st.start + i % st.T, prow.data());
      add_rows(xr, prow.data(), xr, C);
    }
    const float* h = run_blocks(st, xbuf.data(), sbuf.data());
    std::vector<float> last(B * C), mean(B), rstd(B);
    for (int64_t b = 0; b < B; ++b)  // each sequence's last position
      std::copy(h + (b * st.T + st.T - 1) * C, h + (b * st.T + st.T) * C, last.data() + b * C);
    if (!ln_f.is_none()) {  // row-wise: the last rows' norms are those of the whole (B, T, C)
      std::vector<float> normed(B * C);
      layer_norm_rows(last.data(), nullptr, nullptr, fin.w, fin.b, normed.data(), mean.data(), rstd.data(), B, C,
                      fin.eps);
      last.swap(normed);
    }
    run_linear(out, last.data(), B, lp);
  }
  return logits;
}

}  // namespace

void bind_decode(py::module_& m) {
  m.def("cached_logits", &cached_logits, py::arg("ids"), py::arg("wte"), py::arg("wpe"), py::arg("layers"),
        py::arg("ln_f"), py::arg("head"), py::arg("k_caches"), py::arg("v_caches"), py::arg("start"),
        "A whole cached inference step of GPT (models/fastpath.py): ids (B, T) int64 -> float32 logits (B, vocab) of "
        "the last position, the new keys and values stored at start..start+T-1; None when an array is not one the "
        "native kernels take. Table, layer and head tuples: see csrc/cpu/decode.cpp.");
  m.def("cached_blocks", &cached_blocks, py::arg("x"), py::arg("layers"), py::arg("k_caches"), py::arg("v_caches"),
        py::arg("batch"), py::arg("start"),
        "One cached inference step through a stack of GPT blocks (models/fastpath.py): x (B T, C) -> (B T, C), the "
        "new keys and values stored in the caches at start..start+T-1; None when an array is not one the native "
        "kernels take. Layer tuples: see csrc/cpu/decode.cpp.");
}

}  // namespace cpu
}  // namespace tinygpt
