// The quantized_linear family: y = x @ (q * s).T + b from int8 / packed int4 weights, never building the
// float weight matrix (tinygpt/quantize.py's layouts, unchanged):
//   int8   q (out, in) int8 in [-127, 127], s (out,) float32: one scale per output channel
//   int4   q (out, in/2) uint8, element 2i in the low nibble (two's complement), s (out, in/gs) float32
//
//   quantized_linear_forward(x, q, scale, bias)  -> (y, ())
//   quantized_linear_backward(grad, q, scale)    -> dx = grad @ (q * s)   (the input gradient only)
//   quantized_linear_gelu_forward(x, q, scale, bias) -> (gelu_tanh(h), (h,)), h the product above: the
//     quantized MLP's first projection with its GELU applied by the thread that computed h
//   quantized_linear_gelu_backward(grad, q, scale, (h,)) -> (grad * gelu_tanh'(h)) @ (q * s)
//
// Two paths, by rows = prod(x.shape[:-1]):
//  - GEMV (rows <= kGemvRows, int4 only with groups of 32): decode. Each thread takes a contiguous range
//    of output channels (multiples of 16: whole cache lines of y and s), quantizes the x rows itself to
//    int8 per block of 32 (d_b = amax_b / 127, round half to even: q8_0's activations), so there is no
//    barrier, and runs integer dot products four channels at a time (quantized_linear_tiles.h).
//    Weights stream once per call.
//    Error: the activation rounding, |x_k - d_b xq_k| <= d_b / 2, plus float rounding of the block sums.
//  - Tiled (more rows, or other group sizes): panels of kPanel output channels are dequantized to float
//    (exactly numpy's float32 q * s) and multiplied by the packed SGEMM (gemm.h), bias in its epilogue;
//    the dequantization is < 1% of the GEMM's work at 512 rows. Error: float32 GEMM rounding only.
// A non-finite x element makes its block's scale NaN, so the outputs of its row are NaN (never finite).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <limits>
#include <string>
#include <vector>

#include "gemm.h"
#include "isa.h"
#include "ops.h"
#include "parallel.h"
#include "py_common.h"
#include "registry.h"
#if TG_X86_ISAS
#include <immintrin.h>
#endif

namespace tinygpt {
namespace cpu {
namespace {

// Up to 4 output channels (nc) per call, weights ldw bytes apart (quantized_linear_tiles.h).
struct QlKernels {
  void (*dot4_w8)(const int8_t* w, int64_t ldw, const int8_t* xq, const int8_t* xa, const float* d, int64_t in,
                  int nc, float* out);
  void (*dot4_w4)(const uint8_t* w, int64_t ldw, const float* s, int64_t lds, const int8_t* xq, const float* d,
                  const float* c, int64_t G, int nc, float* out);
};

#define TG_TILES "quantized_linear_tiles.h"
#include "per_isa.h"

// The copy for isa(). The avx512 copy also needs AVX512-VNNI (vpdpbusd): an AVX-512 CPU without it
// (Skylake-X) runs the avx2 copy.
const QlKernels& ql_kernels() {
#if TG_X86_ISAS
  static const QlKernels table[] = {portable::kernels, avx2::kernels, avx512::kernels};
  static const bool vnni = (__builtin_cpu_init(), __builtin_cpu_supports("avx512vnni"));
  const Isa i = isa();
  return table[static_cast<int>(i == Isa::avx512 && !vnni ? Isa::avx2 : i)];
#else
  return portable::kernels;
#endif
}

constexpr int64_t kGemvRows = 8;   // decode batches; above this the tiled path (the GEMM) wins
constexpr int64_t kBlock = 32;     // activation block = int4 group size of the fast path
constexpr int64_t kPanel = 128;    // output channels dequantized per tiled step
constexpr int64_t kChannelGrain = 16;

// A grow-only 64-byte aligned byte buffer, one per thread and use (the OpenMP pool keeps its threads).
class Bytes {
 public:
  Bytes() = default;
  Bytes(const Bytes&) = delete;
  Bytes& operator=(const Bytes&) = delete;
  ~Bytes() { std::free(p_); }
  char* get(size_t n) {
    if (n > cap_) {
      std::free(p_);
      cap_ = (std::max<size_t>(n, 4096) + 63) / 64 * 64;
      p_ = static_cast<char*>(std::aligned_alloc(64, cap_));
      if (p_ == nullptr) {
        cap_ = 0;
        throw std::bad_alloc();
      }
    }
    return p_;
  }

 private:
  char* p_ = nullptr;
  size_t cap_ = 0;
};

// Round half to even for |v| < 2^22 (v = x * 127 / amax is within [-127, 127]): adding and removing
// 1.5 * 2^23 leaves the integer part in the mantissa (the build never reassociates float math);
// identical on every ISA and vectorisable, unlike a libm call.
inline float round_even(float v) {
  constexpr float kMagic = 12582912.0f;
  return (v + kMagic) - kMagic;
}

// One block of n <= 32 activations -> xq (int8) and its scale d = amax / 127 (NaN if any element is
// not finite; then xq = 0 and every output of the row is NaN).
inline float quantize_block(const float* x, int64_t n, int8_t* xq) {
  float amax = 0.0f;
  bool finite = true;
  for (int64_t k = 0; k < n; ++k) {
    const float a = std::fabs(x[k]);
    finite = finite && std::isfinite(a);
    amax = a > amax ? a : amax;
  }
  if (!finite) {
    std::fill(xq, xq + n, int8_t{0});
    return std::numeric_limits<float>::quiet_NaN();
  }
  const float inv = amax > 0.0f ? 127.0f / amax : 0.0f;
  for (int64_t k = 0; k < n; ++k) xq[k] = static_cast<int8_t>(round_even(x[k] * inv));
  return amax / 127.0f;
}

// int8 weights: xq (in, padded to whole blocks with 0), xa = |xq|, d (blocks).
struct W8Row {
  int8_t* xq;
  int8_t* xa;
  float* d;
};

void prepare_w8(const float* x, int64_t in, W8Row r) {
  const int64_t nb = (in + kBlock - 1) / kBlock;
  for (int64_t b = 0; b < nb; ++b) {
    const int64_t n = std::min(kBlock, in - b * kBlock);
    r.d[b] = quantize_block(x + b * kBlock, n, r.xq + b * kBlock);
    for (int64_t k = n; k < kBlock; ++k) r.xq[b * kBlock + k] = 0;
  }
  for (int64_t k = 0; k < nb * kBlock; ++k) r.xa[k] = static_cast<int8_t>(r.xq[k] < 0 ? -r.xq[k] : r.xq[k]);
}

// int4 weights, groups of 32: xq in the pair layout of quantized_linear_tiles.h, d and c = -8 d sum(xq)
// per group.
struct W4Row {
  int8_t* xq;
  float* d;
  float* c;
};

void prepare_w4(const float* x, int64_t G, W4Row r) {
  int8_t block[kBlock];
  for (int64_t g = 0; g < G; ++g) {
    const float d = quantize_block(x + g * kBlock, kBlock, block);
    int32_t sum = 0;
    int8_t* even = r.xq + (g >> 2) * 128 + (g & 3) * 16;
    for (int i = 0; i < 16; ++i) {
      even[i] = block[2 * i];
      even[64 + i] = block[2 * i + 1];
      sum += block[2 * i] + block[2 * i + 1];
    }
    r.d[g] = d;
    r.c[g] = -8.0f * d * static_cast<float>(sum);
  }
}

struct Dims {
  int64_t rows, in, out, groups;  // groups: int4 scale groups per row (0 for int8)
  bool int4;
};

std::vector<py::ssize_t> shape_of(const py::array& a) { return {a.shape(), a.shape() + a.ndim()}; }

// Checks q (int8 (out, in) or uint8 (out, in/2)) and scale ((out,) or (out, in/gs)); in = logical inputs.
Dims check_weights(const char* op, const py::array& q, const py::array& scale, int64_t in) {
  const std::string o(op);
  Dims d{1, in, 0, 0, false};
  if (py::isinstance<py::array_t<int8_t>>(q)) {
    check_array<int8_t>(q, (o + ": q").c_str(), 2);
    TG_CHECK(q.shape(1) == in, op, ": int8 q must have shape (out, ", in, "), got ", shape_str(q));
    d.out = q.shape(0);
    check_array<float>(scale, (o + ": scale").c_str());
    check_shape(scale, (o + ": scale (one per output channel)").c_str(), {static_cast<py::ssize_t>(d.out)});
  } else {
    TG_CHECK(py::isinstance<py::array_t<uint8_t>>(q), op, ": q must be int8 (int8 weights) or uint8 (packed int4), got ",
             std::string(py::str(q.dtype())));
    check_array<uint8_t>(q, (o + ": q").c_str(), 2);
    TG_CHECK(in % 2 == 0 && q.shape(1) * 2 == in, op, ": packed int4 q must have shape (out, ", in / 2,
             ") for ", in, " inputs, got ", shape_str(q));
    d.out = q.shape(0);
    d.int4 = true;
    check_array<float>(scale, (o + ": scale").c_str(), 2);
    TG_CHECK(scale.shape(0) == d.out && scale.shape(1) >= 1 && in % scale.shape(1) == 0 &&
                 (in / scale.shape(1)) % 2 == 0,
             op, ": int4 scale must have shape (", d.out, ", in / group_size) with an even group_size dividing ", in,
             ", got ", shape_str(scale));
    d.groups = scale.shape(1);
  }
  return d;
}

// Dequantizes output channels [o0, o0 + n) to w (n, in) float32: exactly numpy's q.astype(float32) * s.
void dequantize_panel(const void* q, const float* s, const Dims& d, int64_t o0, int64_t n, float* w) {
  parallel_blocks(n, d.in, [&](int64_t c0, int64_t c1, int) {
    for (int64_t c = c0; c < c1; ++c) {
      const int64_t o = o0 + c;
      float* wr = w + c * d.in;
      if (!d.int4) {
        const int8_t* qr = static_cast<const int8_t*>(q) + o * d.in;
        const float so = s[o];
        for (int64_t k = 0; k < d.in; ++k) wr[k] = static_cast<float>(qr[k]) * so;
      } else {
        const int64_t half = d.in / d.groups / 2;  // bytes per group (the group size is even)
        for (int64_t g = 0; g < d.groups; ++g) {
          const uint8_t* qg = static_cast<const uint8_t*>(q) + o * (d.in / 2) + g * half;
          const float sg = s[o * d.groups + g];
          float* wg = wr + 2 * g * half;
          for (int64_t i = 0; i < half; ++i) {
            // sign-extend each nibble: (n ^ 8) - 8
            wg[2 * i] = static_cast<float>(static_cast<int>((qg[i] & 0x0F) ^ 8) - 8) * sg;
            wg[2 * i + 1] = static_cast<float>(static_cast<int>((qg[i] >> 4) ^ 8) - 8) * sg;
          }
        }
      }
    }
  });
}

thread_local Bytes tl_panel;

// y (rows, out) = x @ W^T + b, one dequantized panel of channels at a time.
void forward_tiled(const float* x, const void* q, const float* s, const float* bias, const Dims& d, float* y) {
  float* w = reinterpret_cast<float*>(tl_panel.get(static_cast<size_t>(kPanel * d.in) * sizeof(float)));
  for (int64_t o0 = 0; o0 < d.out; o0 += kPanel) {
    const int64_t n = std::min(kPanel, d.out - o0);
    dequantize_panel(q, s, d, o0, n, w);
    GemmEpilogue ep;
    ep.bias = bias == nullptr ? nullptr : bias + o0;
    // y[:, o0:o0+n] (rows, n) = x (rows, in) @ w^T: B[k, j] = w[j, k] -> rsb = 1, csb = in.
    sgemm(d.rows, n, d.in, x, d.in, 1, w, 1, d.in, y + o0, d.out, false, ep);
  }
}

// dx (rows, in) = g (rows, out) @ W, summed over panels of channels.
void backward_tiled(const float* g, const void* q, const float* s, const Dims& d, float* dx) {
  float* w = reinterpret_cast<float*>(tl_panel.get(static_cast<size_t>(kPanel * d.in) * sizeof(float)));
  if (d.out == 0) std::fill(dx, dx + d.rows * d.in, 0.0f);
  for (int64_t o0 = 0; o0 < d.out; o0 += kPanel) {
    const int64_t n = std::min(kPanel, d.out - o0);
    dequantize_panel(q, s, d, o0, n, w);
    // dx += g[:, o0:o0+n] (rows, n) @ w (n, in)
    sgemm(d.rows, d.in, n, g + o0, d.out, 1, w, d.in, 1, dx, d.in, o0 > 0);
  }
}

thread_local Bytes tl_act;

// The GEMV path: threads over channel blocks, each preparing the activation rows itself; four channels
// per kernel call. gelu: y = gelu_tanh(h) of each row's channel range, h kept in `pre` when not null.
void forward_gemv(const float* x, const void* q, const float* s, const float* bias, const Dims& d, float* y,
                  bool gelu = false, float* pre = nullptr) {
  const QlKernels& k = ql_kernels();
  const int64_t nb = (d.in + kBlock - 1) / kBlock;
  const int64_t nblocks = (d.out + kChannelGrain - 1) / kChannelGrain;
  parallel_blocks(nblocks, kChannelGrain * d.in / (d.int4 ? 8 : 4), [&](int64_t b0, int64_t b1, int) {
    // per row: xq (nb * 32 bytes, rounded up to whole quads of blocks for int4's layout), xa (nb * 32) for
    // int8 or unused, d and c (nb floats each)
    const int64_t xq_bytes = (nb + 3) / 4 * 4 * kBlock;
    const size_t row_bytes = static_cast<size_t>(xq_bytes + nb * kBlock) + static_cast<size_t>(nb) * 2 * sizeof(float) + 64;
    char* buf = tl_act.get(row_bytes * static_cast<size_t>(d.rows));
    int8_t* xq[kGemvRows];
    int8_t* xa[kGemvRows];
    float* dd[kGemvRows];
    float* cc[kGemvRows];
    for (int64_t r = 0; r < d.rows; ++r) {
      char* p = buf + row_bytes * static_cast<size_t>(r);
      xq[r] = reinterpret_cast<int8_t*>(p);
      xa[r] = xq[r] + xq_bytes;
      dd[r] = reinterpret_cast<float*>(xa[r] + nb * kBlock);
      cc[r] = dd[r] + nb;
      if (d.int4) {
        prepare_w4(x + r * d.in, d.groups, W4Row{xq[r], dd[r], cc[r]});
      } else {
        prepare_w8(x + r * d.in, d.in, W8Row{xq[r], xa[r], dd[r]});
      }
    }
    const int64_t o0 = b0 * kChannelGrain, o1 = std::min(d.out, b1 * kChannelGrain);
    float dots[4];
    for (int64_t o = o0; o < o1; o += 4) {
      const int nc = static_cast<int>(std::min<int64_t>(4, o1 - o));
      for (int64_t r = 0; r < d.rows; ++r) {
        float* yr = y + r * d.out + o;
        if (d.int4) {
          k.dot4_w4(static_cast<const uint8_t*>(q) + o * (d.in / 2), d.in / 2, s + o * d.groups, d.groups, xq[r], dd[r],
                    cc[r], d.groups, nc, dots);
          for (int j = 0; j < nc; ++j) yr[j] = dots[j] + (bias == nullptr ? 0.0f : bias[o + j]);
        } else {
          k.dot4_w8(static_cast<const int8_t*>(q) + o * d.in, d.in, xq[r], xa[r], dd[r], d.in, nc, dots);
          for (int j = 0; j < nc; ++j) yr[j] = dots[j] * s[o + j] + (bias == nullptr ? 0.0f : bias[o + j]);
        }
      }
    }
    if (gelu) {
      for (int64_t r = 0; r < d.rows; ++r) {
        float* yr = y + r * d.out + o0;
        if (pre != nullptr) std::copy(yr, yr + (o1 - o0), pre + r * d.out + o0);
        gelu_tanh_rows(yr, yr, o1 - o0);
      }
    }
  });
}

bool use_gemv(const Dims& d) { return d.rows <= kGemvRows && (!d.int4 || d.in == d.groups * kBlock); }

// y = x @ W.T + b, or with gelu y = gelu_tanh(h) for that h, which it returns as the saved (h,).
py::tuple forward_impl(const char* op, const py::array& x, const py::array& q, const py::array& scale,
                       const py::object& bias, bool gelu) {
  const std::string o(op);
  check_array<float>(x, (o + ": x").c_str());
  TG_CHECK(x.ndim() >= 1, op, ": x must have at least 1 dimension (..., in), got shape ", shape_str(x));
  Dims d = check_weights(op, q, scale, x.shape(x.ndim() - 1));
  for (py::ssize_t i = 0; i + 1 < x.ndim(); ++i) d.rows *= x.shape(i);
  const float* bp = nullptr;
  if (!bias.is_none()) {
    TG_CHECK(py::isinstance<py::array>(bias), op, ": bias must be a numpy array or None, got ",
             std::string(py::str(py::type::of(bias))));
    bp = input_ptr<float>(py::reinterpret_borrow<py::array>(bias), (o + ": bias").c_str(), {d.out});
  }
  std::vector<py::ssize_t> yshape = shape_of(x);
  yshape.back() = d.out;
  py::array_t<float> y = aligned_array(yshape);
  py::array_t<float> h = gelu ? aligned_array(yshape) : py::array_t<float>();
  const float* xp = static_cast<const float*>(x.data());
  float* yp = y.mutable_data();
  float* hp = gelu ? h.mutable_data() : nullptr;
  const float* sp = static_cast<const float*>(scale.data());
  {
    py::gil_scoped_release nogil;
    quantized_linear_rows(xp, q.data(), sp, bp, d.rows, d.in, d.out, d.groups, yp, hp);
  }
  if (gelu) return py::make_tuple(y, py::make_tuple(h));
  return py::make_tuple(y, py::tuple());
}

py::tuple quantized_linear_forward(const py::array& x, const py::array& q, const py::array& scale,
                                   const py::object& bias) {
  return forward_impl("quantized_linear_forward", x, q, scale, bias, false);
}

py::tuple quantized_linear_gelu_forward(const py::array& x, const py::array& q, const py::array& scale,
                                        const py::object& bias) {
  return forward_impl("quantized_linear_gelu_forward", x, q, scale, bias, true);
}

// dx = grad @ W; with gelu, dx = (grad * gelu_tanh'(h)) @ W for the h its forward saved.
py::array_t<float> backward_impl(const char* op, const py::array& grad, const py::array& q, const py::array& scale,
                                 const py::array* h) {
  const std::string o(op);
  check_array<float>(grad, (o + ": grad").c_str());
  TG_CHECK(grad.ndim() >= 1, op, ": grad must have at least 1 dimension (..., out), got shape ", shape_str(grad));
  const int64_t in = py::isinstance<py::array_t<uint8_t>>(q) && q.ndim() == 2 ? 2 * q.shape(1)
                     : q.ndim() == 2                                          ? q.shape(1)
                                                                              : 0;
  Dims d = check_weights(op, q, scale, in);
  TG_CHECK(grad.shape(grad.ndim() - 1) == d.out, op, ": grad must have shape (..., ", d.out, ") to match q ",
           shape_str(q), ", got ", shape_str(grad));
  for (py::ssize_t i = 0; i + 1 < grad.ndim(); ++i) d.rows *= grad.shape(i);
  std::vector<py::ssize_t> shape = shape_of(grad);
  const float* gp = static_cast<const float*>(grad.data());
  py::array_t<float> dh;
  if (h != nullptr) {
    check_array<float>(*h, (o + ": saved h").c_str());
    check_shape(*h, (o + ": saved h (the forward's pre-activation)").c_str(), shape);
    dh = aligned_array(shape);
    const float* hp = static_cast<const float*>(h->data());
    float* dp = dh.mutable_data();
    py::gil_scoped_release nogil;
    parallel_blocks(d.rows * d.out, 16, [&](int64_t i0, int64_t i1, int) {
      gelu_tanh_grad_rows(gp + i0, hp + i0, dp + i0, i1 - i0);
    });
    gp = dp;
  }
  shape.back() = d.in;
  py::array_t<float> dx = aligned_array(shape);
  {
    py::gil_scoped_release nogil;
    if (d.rows > 0 && d.in > 0) backward_tiled(gp, q.data(), static_cast<const float*>(scale.data()), d, dx.mutable_data());
  }
  return dx;
}

py::array_t<float> quantized_linear_backward(const py::array& grad, const py::array& q, const py::array& scale) {
  return backward_impl("quantized_linear_backward", grad, q, scale, nullptr);
}

py::array_t<float> quantized_linear_gelu_backward(const py::array& grad, const py::array& q, const py::array& scale,
                                                  const py::tuple& saved) {
  const char* op = "quantized_linear_gelu_backward";
  TG_CHECK(saved.size() == 1 && py::isinstance<py::array>(saved[0]), op,
           ": saved must be the (h,) tuple quantized_linear_gelu_forward returned");
  const py::array h = py::reinterpret_borrow<py::array>(saved[0]);
  return backward_impl(op, grad, q, scale, &h);
}

}  // namespace

void quantized_dequantize_rows(const void* q, const float* s, int64_t in, int64_t groups, int64_t r0, int64_t n,
                               float* w) {
  dequantize_panel(q, s, Dims{0, in, 0, groups, groups > 0}, r0, n, w);
}

void quantized_linear_rows(const float* x, const void* q, const float* s, const float* b, int64_t rows, int64_t in,
                           int64_t out, int64_t groups, float* y, float* h) {
  const Dims d{rows, in, out, groups, groups > 0};
  const bool gelu = h != nullptr;
  if (rows <= 0 || out <= 0) return;
  if (use_gemv(d)) {
    forward_gemv(x, q, s, b, d, y, gelu, h);
    return;
  }
  forward_tiled(x, q, s, b, d, gelu ? h : y);
  if (gelu) {
    parallel_blocks(rows * out, 16, [&](int64_t i0, int64_t i1, int) { gelu_tanh_rows(h + i0, y + i0, i1 - i0); });
  }
}

void bind_quantized_linear(py::module_& m) {
  m.def("quantized_linear_forward", &quantized_linear_forward, py::arg("x"), py::arg("q"), py::arg("scale"),
        py::arg("bias"),
        "y = x @ (q * scale).T + bias from int8 (out, in) / packed int4 (out, in/2) weights without a float copy; "
        "returns (y, ()). Up to 8 rows: int8 x int8 dots (x quantized per block of 32); more: float GEMM.");
  m.def("quantized_linear_backward", &quantized_linear_backward, py::arg("grad"), py::arg("q"), py::arg("scale"),
        "dx = grad @ (q * scale): the input gradient (quantized weights have none).");
  m.def("quantized_linear_gelu_forward", &quantized_linear_gelu_forward, py::arg("x"), py::arg("q"), py::arg("scale"),
        py::arg("bias"),
        "y = gelu_tanh(h), h = x @ (q * scale).T + bias, in the same pass (the quantized MLP's first product); "
        "returns (y, (h,)).");
  m.def("quantized_linear_gelu_backward", &quantized_linear_gelu_backward, py::arg("grad"), py::arg("q"),
        py::arg("scale"), py::arg("saved"), "dx = (grad * gelu_tanh'(h)) @ (q * scale) for saved = (h,).");
}

}  // namespace cpu
}  // namespace tinygpt
