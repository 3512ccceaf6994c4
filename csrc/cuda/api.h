// Plain C++ entry points defined in csrc/cuda/*.cu and bound by host-compiled code. Free of
// pybind11 and of CUDA headers. Kernel launchers follow one convention: device pointers and
// the stream arrive as std::uintptr_t (CuPy's `array.data.ptr` and
// `cupy.cuda.get_current_stream().ptr`), the launch goes on that stream, nothing allocates
// (outputs and workspaces come from CuPy's pool), and errors throw via TG_CUDA_CHECK.
#pragma once

#include <cstdint>
#include <string>

// CUDART_VERSION this module was compiled and statically linked against, e.g. 13000.
int tg_cuda_runtime_version();

// Number of visible CUDA devices; 0 (never an exception) when there is no driver or device,
// with the reason written to *reason when given.
int tg_cuda_device_count(std::string* reason = nullptr);

// --- attention, softmax, cross-entropy, dropout (csrc/cuda/{attention,softmax,cross_entropy,dropout}.cu)
// Shapes are flattened: q (BH, Tq, D), k (BH, Tk, D), v (BH, Tk, Dv), out (BH, Tq, Dv); row_max
// and row_sum (BH, Tq) are written by forward and read by backward; window 0 means none.
void tg_attention_forward_cuda(std::uintptr_t out, std::uintptr_t row_max, std::uintptr_t row_sum, std::uintptr_t q,
                               std::uintptr_t k, std::uintptr_t v, int64_t BH, int64_t Tq, int64_t Tk, int64_t D,
                               int64_t Dv, bool causal, int64_t window, double dropout_p, uint64_t seed,
                               double scale, std::uintptr_t stream);
// drow: a (BH, Tq) float32 workspace (D = rowsum(grad * out)).
void tg_attention_backward_cuda(std::uintptr_t dq, std::uintptr_t dk, std::uintptr_t dv, std::uintptr_t drow,
                                std::uintptr_t grad, std::uintptr_t q, std::uintptr_t k, std::uintptr_t v,
                                std::uintptr_t out, std::uintptr_t row_max, std::uintptr_t row_sum, int64_t BH,
                                int64_t Tq, int64_t Tk, int64_t D, int64_t Dv, bool causal, int64_t window,
                                double dropout_p, uint64_t seed, double scale, std::uintptr_t stream);
// Row-wise over (rows, C) float32 arrays.
void tg_softmax_forward_cuda(std::uintptr_t y, std::uintptr_t x, int64_t rows, int64_t C, std::uintptr_t stream);
void tg_softmax_backward_cuda(std::uintptr_t dx, std::uintptr_t grad, std::uintptr_t y, int64_t rows, int64_t C,
                              std::uintptr_t stream);
void tg_log_softmax_forward_cuda(std::uintptr_t y, std::uintptr_t x, int64_t rows, int64_t C,
                                 std::uintptr_t stream);
void tg_log_softmax_backward_cuda(std::uintptr_t dx, std::uintptr_t grad, std::uintptr_t y, int64_t rows,
                                  int64_t C, std::uintptr_t stream);
// logits (N, V) float32, targets (N,) int64; loss 0-d float32 and count 0-d int64 on the device;
// row_max, row_logsum (N,) float32; row_loss (N,) float64 workspace. grad: 0-d float64 on the device.
void tg_cross_entropy_forward_cuda(std::uintptr_t loss, std::uintptr_t count, std::uintptr_t row_max,
                                   std::uintptr_t row_logsum, std::uintptr_t row_loss, std::uintptr_t logits,
                                   std::uintptr_t targets, int64_t N, int64_t V, int64_t ignore_index,
                                   std::uintptr_t stream);
void tg_cross_entropy_backward_cuda(std::uintptr_t dlogits, std::uintptr_t logits, std::uintptr_t targets,
                                    std::uintptr_t row_max, std::uintptr_t row_logsum, std::uintptr_t grad,
                                    std::uintptr_t count, int64_t N, int64_t V, int64_t ignore_index,
                                    std::uintptr_t stream);
// y = x * keep * float32(1 / (1 - p)) over n floats; the same call with the same seed is the backward.
void tg_dropout_cuda(std::uintptr_t y, std::uintptr_t x, int64_t n, double p, uint64_t seed, std::uintptr_t stream);
