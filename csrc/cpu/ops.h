// The compute of CPU ops on raw pointers, for C++ callers: each is defined in its family's file
// (csrc/cpu/<family>.cpp), whose bindings run it too, so an op has one implementation. decode.cpp
// chains them into a whole cached inference step. Arguments are trusted (the callers check them);
// every array is float32 and C-contiguous, rows of `n` values; none takes the GIL.
#pragma once

#include <cstdint>
#include <optional>

namespace tinygpt {
namespace cpu {

// layer_norm.cpp: y = layer_norm(x + r) over rows of C (r may be null; s = x + r stored when not null),
// with each row's mean and 1 / std.
void layer_norm_rows(const float* x, const float* r, float* s, const float* w, const float* b, float* y, float* mean,
                     float* rstd, int64_t rows, int64_t C, float eps);

// gelu.cpp: y = gelu(x) over n values, tanh form or exact (erf).
void gelu_forward_rows(bool tanh, const float* x, float* y, int64_t n);

// linear.cpp: h (rows, out) = x (rows, in) @ w^T + b (b may be null); y = gelu_tanh(h) as well when y is
// not null (linear_gelu).
void linear_rows(const float* x, const float* w, const float* b, int64_t rows, int64_t in, int64_t out, float* h,
                 float* y);

// quantized_linear.cpp: y = x @ (q * s)^T + b, q int8 (out, in) with s (out,), or packed int4 (out, in/2) with
// s (out, groups) when groups > 0; with h not null, h gets that product and y = gelu_tanh(h).
void quantized_linear_rows(const float* x, const void* q, const float* s, const float* b, int64_t rows, int64_t in,
                           int64_t out, int64_t groups, float* y, float* h);

// quantized_linear.cpp: rows r0..r0+n-1 of a quantized table (as quantized_linear_rows takes it, `in` logical
// columns) to float32 w (n, in): q as float32 times its scale, exactly as NumPy dequantizes them.
void quantized_dequantize_rows(const void* q, const float* s, int64_t in, int64_t groups, int64_t r0, int64_t n,
                               float* w);

// attention.cpp: kv_attention on qkv (B, T, 3C): the new keys and values go into the caches (B, nh, L, hs) at
// start..start+T-1, then out (B, T, C) = causal attention (within `window`) over positions 0..start+T-1.
void kv_attention_rows(const float* qkv, float* k_cache, float* v_cache, int64_t B, int64_t T, int64_t n_head,
                       int64_t C, int64_t L, int64_t start, std::optional<int64_t> window, double dropout_p,
                       uint64_t seed, double scale, float* out);

}  // namespace cpu
}  // namespace tinygpt
