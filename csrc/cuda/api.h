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

// ----------------------------------------------------------------------------- cugemm families
// (csrc/cuda/matmul.cu, layernorm.cu, gelu.cu, adamw.cu; wrappers in tinygpt/kernels/cuda.py).
// All arrays float32, C-contiguous; pointers of absent optional arrays are 0.

// matmul.cu. precision: 0 = tf32, 1 = fp32 (3xTF32), 2 = bf16 (inputs rounded on load).
// out (rows, n_out) = x (rows, n_in) @ weight (n_out, n_in)^T + bias; gelu_out (if given) =
// gelu_tanh(out), with out then being the saved pre-activation h.
void tg_linear_forward_cuda(std::uintptr_t out, std::uintptr_t gelu_out, std::uintptr_t x,
                            std::uintptr_t weight, std::uintptr_t bias, int rows, int n_in,
                            int n_out, int precision, std::uintptr_t stream);
// dx (rows, n_in) = grad (rows, n_out) @ weight (n_out, n_in)
void tg_linear_backward_dx_cuda(std::uintptr_t dx, std::uintptr_t grad, std::uintptr_t weight,
                                int rows, int n_in, int n_out, int precision,
                                std::uintptr_t stream);
// dw (n_out, n_in) = grad (rows, n_out)^T @ x (rows, n_in); with splits > 1 (split-K over rows)
// workspace holds splits * n_out * n_in floats (0 when splits == 1).
void tg_linear_backward_dw_cuda(std::uintptr_t dw, std::uintptr_t grad, std::uintptr_t x,
                                std::uintptr_t workspace, int rows, int n_in, int n_out,
                                int splits, int precision, std::uintptr_t stream);
// The split count tg_linear_backward_dw_cuda should use on the current device (1: no split).
int tg_linear_dw_splits_cuda(int rows, int n_in, int n_out);
// out (n,) = column sums of g (rows, n); partial: workspace of chunks * n floats.
void tg_colsum_cuda(std::uintptr_t out, std::uintptr_t g, std::uintptr_t partial, int rows, int n,
                    int chunks, std::uintptr_t stream);

// layernorm.cu. Forward: s_out = x + residual (both 0 for plain layernorm), y, mean (N,),
// rstd (N,). Backward: xs = x (or the saved s), grad_s optional (added to dx); partial: workspace
// of chunks * C floats, twice that when weight is given; dweight 0 iff weight 0.
void tg_layernorm_forward_cuda(std::uintptr_t y, std::uintptr_t s_out, std::uintptr_t mean,
                               std::uintptr_t rstd, std::uintptr_t x, std::uintptr_t residual,
                               std::uintptr_t weight, std::uintptr_t bias, int N, int C, float eps,
                               std::uintptr_t stream);
void tg_layernorm_backward_cuda(std::uintptr_t dx, std::uintptr_t dweight, std::uintptr_t dbias,
                                std::uintptr_t partial, std::uintptr_t grad, std::uintptr_t xs,
                                std::uintptr_t weight, std::uintptr_t mean, std::uintptr_t rstd,
                                std::uintptr_t grad_s, int N, int C, int chunks,
                                std::uintptr_t stream);

// gelu.cu (n elements; tanh_approx: 'tanh' vs exact 'none').
void tg_gelu_forward_cuda(std::uintptr_t y, std::uintptr_t x, long long n, bool tanh_approx,
                          std::uintptr_t stream);
void tg_gelu_backward_cuda(std::uintptr_t dx, std::uintptr_t grad, std::uintptr_t x, long long n,
                           bool tanh_approx, std::uintptr_t stream);

// adamw.cu. In place on param, exp_avg, exp_avg_sq (n elements each).
void tg_adamw_step_cuda(std::uintptr_t param, std::uintptr_t grad, std::uintptr_t exp_avg,
                        std::uintptr_t exp_avg_sq, long long n, double lr, double beta1,
                        double beta2, double eps, double weight_decay, long long step,
                        std::uintptr_t stream);
// Elements per block of the multi-tensor launch.
long long tg_adamw_multi_chunk();
// table: int64 device array (num_tensors, 5) = (param, grad, exp_avg, exp_avg_sq, n);
// block_start: int64 device array (num_tensors + 1,) of first block indices (cumulative
// ceil(n / chunk)), block_start[num_tensors] = num_blocks.
void tg_adamw_multi_step_cuda(std::uintptr_t table, std::uintptr_t block_start, int num_tensors,
                              long long num_blocks, double lr, double beta1, double beta2,
                              double eps, double weight_decay, long long step,
                              std::uintptr_t stream);

// grad_norm.cu (clip_grad_norm_). table: int64 device array (num_tensors, 2) = (pointer, n) of float32
// tensors; block_start as for adamw_multi_step with tg_grad_norm_chunk() elements per block.
// out: 0-d float64 = sum of g^2 over all tensors (max |g| when max_abs); partial: num_blocks doubles.
long long tg_grad_norm_chunk();
void tg_grad_norm_cuda(std::uintptr_t out, std::uintptr_t partial, std::uintptr_t table, std::uintptr_t block_start,
                       int num_tensors, long long num_blocks, bool max_abs, std::uintptr_t stream);
// Every tensor of the table *= float32(scale), in place.
void tg_grad_scale_cuda(std::uintptr_t table, std::uintptr_t block_start, int num_tensors, long long num_blocks,
                        double scale, std::uintptr_t stream);

// embedding.cu. weight (V, C) float32, ids (n,) int64, out (n, C); an id outside [0, V) gives a NaN row.
void tg_embedding_forward_cuda(std::uintptr_t out, std::uintptr_t weight, std::uintptr_t ids, int64_t n, int64_t V,
                               int64_t C, std::uintptr_t stream);
// keys (n,) int64 = ids * n + position (V * n + position for ids outside [0, V)), to be sorted ascending.
void tg_embedding_keys_cuda(std::uintptr_t keys, std::uintptr_t ids, int64_t n, int64_t V, std::uintptr_t stream);
// dw (V, C) = grad (n, C) rows summed per id in position order, from the sorted keys (zeroes dw first).
void tg_embedding_backward_cuda(std::uintptr_t dw, std::uintptr_t grad, std::uintptr_t sorted_keys, int64_t n,
                                int64_t V, int64_t C, std::uintptr_t stream);

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
// The same on c_attn's packed qkv (B, T, 3C), C = n_head * hs, read in place: out (and grad) are the
// merged (B, T, C), row_max / row_sum (B, n_head, T), dqkv (B, T, 3C); drow a (B * n_head * T) workspace.
void tg_attention_qkv_forward_cuda(std::uintptr_t out, std::uintptr_t row_max, std::uintptr_t row_sum,
                                   std::uintptr_t qkv, int64_t B, int64_t T, int64_t n_head, int64_t hs, bool causal,
                                   int64_t window, double dropout_p, uint64_t seed, double scale,
                                   std::uintptr_t stream);
void tg_attention_qkv_backward_cuda(std::uintptr_t dqkv, std::uintptr_t drow, std::uintptr_t grad, std::uintptr_t qkv,
                                    std::uintptr_t out, std::uintptr_t row_max, std::uintptr_t row_sum, int64_t B,
                                    int64_t T, int64_t n_head, int64_t hs, bool causal, int64_t window,
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
