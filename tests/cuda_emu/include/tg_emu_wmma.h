// tg_emu: nvcuda::wmma on the CPU.
//
// A fragment of an R x C tile holds R * C / 32 elements per lane; in this emulation lane l holds
// the tile's row-major elements l, l + 32, l + 64, ... (the hardware's mapping is opaque to WMMA
// code, which may only apply the same operation to every element). load/store/fill touch only
// the calling lane's elements; mma_sync is warp-collective: the last lane to arrive computes
// every lane's result from all lanes' fragments.
//
// Numerics: precision::tf32 inputs are truncated to TF32 (the tensor core ignores the low 13
// mantissa bits; __float_to_tf32 rounds to nearest, ties away, as cvt.rna.tf32.f32); bf16
// inputs are exact in fp32 products; every product is exact in fp32 and added to the fp32
// accumulator in k order. load_matrix_sync checks the 32-byte pointer alignment and the
// 16-byte leading-dimension multiple that the hardware requires.
#pragma once

#include <cstdint>
#include <cstring>
#include <string>

#include "tg_emu.h"
#include "tg_emu_bf16.h"

namespace nvcuda {
namespace wmma {

struct row_major {};
struct col_major {};
struct matrix_a {};
struct matrix_b {};
struct accumulator {};
namespace precision {
struct tf32 {};
}  // namespace precision
enum layout_t { mem_row_major, mem_col_major };

namespace detail {
template <class T>
struct storage {
  using type = T;
};
template <>
struct storage<precision::tf32> {
  using type = float;
};
template <class Use, int M, int N, int K>
struct dims;
template <int M, int N, int K>
struct dims<matrix_a, M, N, K> {
  static constexpr int R = M, C = K;
};
template <int M, int N, int K>
struct dims<matrix_b, M, N, K> {
  static constexpr int R = K, C = N;
};
template <int M, int N, int K>
struct dims<accumulator, M, N, K> {
  static constexpr int R = M, C = N;
};

inline float to_float(float v) { return v; }
inline float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }
inline float tf32_truncate(float v) {
  uint32_t u;
  std::memcpy(&u, &v, 4);
  u &= 0xffffe000u;
  std::memcpy(&v, &u, 4);
  return v;
}
}  // namespace detail

template <class Use, int M, int N, int K, class T, class Layout = void>
struct fragment {
  using element_type = typename detail::storage<T>::type;
  static constexpr int R = detail::dims<Use, M, N, K>::R, C = detail::dims<Use, M, N, K>::C;
  static constexpr int num_elements = R * C / 32;
  element_type x[num_elements];
};

inline float __float_to_tf32(float v) {
  uint32_t u;
  std::memcpy(&u, &v, 4);
  if ((u & 0x7f800000u) == 0x7f800000u) return v;  // inf, NaN
  u = (u + 0x1000u) & 0xffffe000u;
  std::memcpy(&v, &u, 4);
  return v;
}

template <class Use, int M, int N, int K, class T, class Layout>
inline void fill_fragment(fragment<Use, M, N, K, T, Layout>& f,
                          typename fragment<Use, M, N, K, T, Layout>::element_type v) {
  for (int t = 0; t < f.num_elements; ++t) f.x[t] = v;
}

template <class Use, int M, int N, int K, class T, class Layout, class P>
inline void load_matrix_sync(fragment<Use, M, N, K, T, Layout>& f, const P* p, unsigned ldm) {
  using F = fragment<Use, M, N, K, T, Layout>;
  if (reinterpret_cast<std::uintptr_t>(p) % 32 != 0)
    tg_emu::fail("wmma::load_matrix_sync: pointer not 32-byte aligned");
  if ((ldm * sizeof(P)) % 16 != 0)
    tg_emu::fail("wmma::load_matrix_sync: ldm " + std::to_string(ldm) + " is not a multiple of 16 bytes");
  const int lane = tg_emu::lane_id();
  for (int t = 0; t < F::num_elements; ++t) {
    const int e = t * 32 + lane, r = e / F::C, c = e % F::C;
    const P v = std::is_same<Layout, col_major>::value ? p[static_cast<size_t>(c) * ldm + r]
                                                       : p[static_cast<size_t>(r) * ldm + c];
    f.x[t] = v;
  }
}

template <int M, int N, int K, class T>
inline void store_matrix_sync(float* p, const fragment<accumulator, M, N, K, T>& f, unsigned ldm,
                              layout_t layout) {
  using F = fragment<accumulator, M, N, K, T>;
  if (reinterpret_cast<std::uintptr_t>(p) % 32 != 0)
    tg_emu::fail("wmma::store_matrix_sync: pointer not 32-byte aligned");
  if ((ldm * sizeof(float)) % 16 != 0)
    tg_emu::fail("wmma::store_matrix_sync: ldm is not a multiple of 16 bytes");
  const int lane = tg_emu::lane_id();
  for (int t = 0; t < F::num_elements; ++t) {
    const int e = t * 32 + lane, r = e / F::C, c = e % F::C;
    if (layout == mem_row_major)
      p[static_cast<size_t>(r) * ldm + c] = f.x[t];
    else
      p[static_cast<size_t>(c) * ldm + r] = f.x[t];
  }
}

namespace detail {
template <class D, class A, class B, class Cf>
struct MmaArgs {
  D* d;
  const A* a;
  const B* b;
  const Cf* c;
};

template <class D, class A, class B, class Cf, bool TF32>
void mma_all(const uint64_t* all, int n) {
  if (n != 32) tg_emu::fail("wmma::mma_sync needs a full warp");
  constexpr int M = D::R, N = D::C, K = A::C;
  float a[M * K], b[K * N];
  const MmaArgs<D, A, B, Cf>* lanes[32];
  for (int l = 0; l < 32; ++l) lanes[l] = reinterpret_cast<const MmaArgs<D, A, B, Cf>*>(all[l]);
  for (int e = 0; e < M * K; ++e) {
    const float v = to_float(lanes[e % 32]->a->x[e / 32]);
    a[e] = TF32 ? tf32_truncate(v) : v;
  }
  for (int e = 0; e < K * N; ++e) {
    const float v = to_float(lanes[e % 32]->b->x[e / 32]);
    b[e] = TF32 ? tf32_truncate(v) : v;
  }
  for (int e = 0; e < M * N; ++e) {  // d may be c: element e of c is read before e of d is written
    const int r = e / N, col = e % N;
    float acc = lanes[e % 32]->c->x[e / 32];
    for (int k = 0; k < K; ++k) acc += a[r * K + k] * b[k * N + col];  // exact products
    const_cast<D*>(lanes[e % 32]->d)->x[e / 32] = acc;
  }
}
}  // namespace detail

template <int M, int N, int K, class T, class LA, class LB>
inline void mma_sync(fragment<accumulator, M, N, K, float>& d,
                     const fragment<matrix_a, M, N, K, T, LA>& a,
                     const fragment<matrix_b, M, N, K, T, LB>& b,
                     const fragment<accumulator, M, N, K, float>& c) {
  using D = fragment<accumulator, M, N, K, float>;
  using A = fragment<matrix_a, M, N, K, T, LA>;
  using B = fragment<matrix_b, M, N, K, T, LB>;
  detail::MmaArgs<D, A, B, D> mine{&d, &a, &b, &c};
  tg_emu::warp_exchange(reinterpret_cast<uint64_t>(&mine),
                        &detail::mma_all<D, A, B, D, std::is_same<T, precision::tf32>::value>);
}

}  // namespace wmma
}  // namespace nvcuda
