// SPDX-License-Identifier: MIT
#pragma once
// Bit-exact port of the float Box-Muller transform PyTorch (CPU capability AVX2 or AVX512, i.e. every
// x86-64 CPU of the last decade) applies in torch.randn for n >= 16: chunks of 16 uniforms, u1 = 1 - data[j],
// u2 = data[j + 8], radius = sqrt(-2 log u1), theta = 2 pi u2, evaluated with Julien Pommier's Cephes-based
// log256_ps / sincos256_ps (ATen's avx_mathfun.h).
//
// Bit-exactness also depends on which multiply-adds GCC 12 fused when it compiled libtorch (it contracts
// vmulps + vaddps into vfmadd at -O2). The fusion pattern below was identified by comparing
// against torch 1.13's output over 100k values: every fused step is an explicit fma here, and every product
// that torch rounded separately goes through opaque() so that our own compiler cannot fuse it either.
// The vector version is written once over xsimd (any register width; 16 lanes take two chunks at a time) and
// performs the same operations as the scalar lane, so its output is the same whatever the width.

#include <cmath>
#include <cstdint>
#include <cstring>

#include "kexue/core.hpp"
#include "kexue/detail/arch/ops.hpp"
#include "kexue/detail/simd.hpp"

namespace kexue::detail {

/// Hides a value from the optimiser so that a product feeding an addition is rounded on its own
/// (no contraction into an FMA that PyTorch did not perform).
inline float opaque(float v) {
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
  __asm__("" : "+x"(v));
#else
  volatile float t = v;
  v = t;
#endif
  return v;
}

inline std::uint32_t float_bits(float x) {
  std::uint32_t u;
  std::memcpy(&u, &x, sizeof u);
  return u;
}
inline float bits_float(std::uint32_t u) {
  float x;
  std::memcpy(&x, &u, sizeof x);
  return x;
}

// Cephes constants as spelled in avx_mathfun.h (rounded to float by the compiler, as there).
constexpr float kCephesSqrtHf = 0.707106781186547524f;
constexpr float kCephesLogP[9] = {7.0376836292E-2f,  -1.1514610310E-1f, 1.1676998740E-1f,
                                  -1.2420140846E-1f, +1.4249322787E-1f, -1.6668057665E-1f,
                                  +2.0000714765E-1f, -2.4999993993E-1f, +3.3333331174E-1f};
constexpr float kCephesLogQ1 = -2.12194440e-4f;
constexpr float kCephesLogQ2 = 0.693359375f;
constexpr float kCephesFopi = 1.27323954473516f;  // 4 / pi
constexpr float kCephesDp1 = -0.78515625f;
constexpr float kCephesDp2 = -2.4187564849853515625e-4f;
constexpr float kCephesDp3 = -3.77489497744594108e-8f;
constexpr float kSincofP0 = -1.9515295891E-4f, kSincofP1 = 8.3321608736E-3f, kSincofP2 = -1.6666654611E-1f;
constexpr float kCoscofP0 = 2.443315711809948E-005f, kCoscofP1 = -1.388731625493765E-003f,
                kCoscofP2 = 4.166664568298827E-002f;
// 2.0f * c10::pi<double>, rounded to float as torch's AVX2 broadcast (vbroadcastss) does.
constexpr float kTorchTwoPi = static_cast<float>(2.0f * 3.14159265358979323846);

/// One lane of log256_ps, with torch's fusion pattern (scalar fallback and test oracle).
inline float torch_log_lane(float x) {
  const bool invalid = x <= 0.0f;
  x = x > bits_float(0x00800000u) ? x : bits_float(0x00800000u);  // vmaxps(x, min_norm_pos) in torch
  const std::int32_t exponent = static_cast<std::int32_t>(float_bits(x) >> 23) - 0x7f;
  x = bits_float((float_bits(x) & ~0x7f800000u) | float_bits(0.5f));
  float e = static_cast<float>(exponent) + 1.0f;
  const bool below = x < kCephesSqrtHf;
  const float tmp = below ? x : 0.0f;
  x = x - 1.0f;
  e = e - (below ? 1.0f : 0.0f);
  x = x + tmp;
  const float z = x * x;
  float y = kCephesLogP[0];
  for (int k = 1; k < 9; ++k) y = std::fma(y, x, kCephesLogP[k]);
  y = y * x;
  y = std::fma(y, z, opaque(e * kCephesLogQ1));
  y = y - opaque(z * 0.5f);
  x = x + y;
  x = x + opaque(e * kCephesLogQ2);
  return invalid ? bits_float(0x7fc00000u) : x;
}

/// One lane of sincos256_ps with torch's fusion pattern.
inline void torch_sincos_lane(float x, float* s, float* c) {
  std::uint32_t sign_sin = float_bits(x) & 0x80000000u;
  x = std::fabs(x);
  float y = x * kCephesFopi;
  std::int32_t j = static_cast<std::int32_t>(y);  // truncation, as vcvttps2dq
  j = (j + 1) & ~1;
  y = static_cast<float>(j);
  const std::uint32_t swap_sign = static_cast<std::uint32_t>(j & 4) << 29;
  const bool sin_poly = (j & 2) == 0;
  x = x + opaque(y * kCephesDp1);
  x = x + opaque(y * kCephesDp2);
  x = x + opaque(y * kCephesDp3);
  const std::uint32_t sign_cos = static_cast<std::uint32_t>(~(j - 2) & 4) << 29;
  sign_sin ^= swap_sign;
  const float z = x * x;
  float yc = std::fma(kCoscofP0, z, kCoscofP1);
  yc = std::fma(yc, z, kCoscofP2);
  yc = yc * z;
  yc = std::fma(yc, z, -opaque(z * 0.5f));
  yc = yc + 1.0f;
  float ys = std::fma(kSincofP0, z, kSincofP1);
  ys = std::fma(ys, z, kSincofP2);
  ys = ys * z;
  ys = std::fma(ys, x, x);
  // The polynomial selection is done with masks and additions in avx_mathfun; x + 0 and x - x are
  // mirrored so that signed zeros come out as in torch.
  const float ysin2 = sin_poly ? ys : 0.0f, ysin1 = sin_poly ? 0.0f : yc;
  const float sin_v = ysin1 + ysin2, cos_v = (yc - ysin1) + (ys - ysin2);
  *s = bits_float(float_bits(sin_v) ^ sign_sin);
  *c = bits_float(float_bits(cos_v) ^ sign_cos);
}

/// Scalar version of torch's normal_fill_16_AVX2 (mean 0, std 1): data[0..16) uniforms in, normals out.
inline void torch_normal_fill_16_scalar(float* data) {
  for (int j = 0; j < 8; ++j) {
    const float u1 = 1.0f - data[j];
    const float u2 = data[j + 8];
    const float radius = std::sqrt(-2.0f * torch_log_lane(u1));
    const float theta = kTorchTwoPi * u2;
    float s, c;
    torch_sincos_lane(theta, &s, &c);
    data[j] = radius * c;
    data[j + 8] = radius * s;
  }
}

namespace torch_vec {
using F = Batch<float>;
using I = Batch<std::int32_t>;
using U = Batch<std::uint32_t>;

inline F from_bits(std::uint32_t u) { return reinterpret<float>(U(u)); }

/// log256_ps on every lane (torch_log_lane's operations; the NaN for x <= 0 is all ones, as torch's vorps makes it).
inline F log(F x) {
  const F one(1.0f);
  const auto invalid = x <= F(0.0f);
  x = xsimd::max(x, from_bits(0x00800000u));
  const U xb = reinterpret<std::uint32_t>(x);
  const I imm0 = reinterpret<std::int32_t>(xb >> 23) - I(0x7f);
  x = reinterpret<float>((xb & U(~0x7f800000u)) | U(float_bits(0.5f)));
  F e = xsimd::batch_cast<float>(imm0) + one;
  const auto mask = x < F(kCephesSqrtHf);
  const F tmp = xsimd::select(mask, x, F(0.0f));
  x = x - one;
  e = e - xsimd::select(mask, one, F(0.0f));
  x = x + tmp;
  const F z = x * x;
  F y(kCephesLogP[0]);
  for (int k = 1; k < 9; ++k) y = fmadd(y, x, F(kCephesLogP[k]));
  y = y * x;
  y = fmadd(y, z, opaque(e * F(kCephesLogQ1)));
  y = y - opaque(z * F(0.5f));
  x = x + y;
  x = x + opaque(e * F(kCephesLogQ2));
  return xsimd::select(invalid, from_bits(0xFFFFFFFFu), x);
}

/// sincos256_ps on every lane (torch_sincos_lane's operations).
inline void sincos(F x, F* s, F* c) {
  const U sign(0x80000000u);
  U sign_sin = reinterpret<std::uint32_t>(x) & sign;
  x = reinterpret<float>(reinterpret<std::uint32_t>(x) & U(0x7fffffffu));
  F y = x * F(kCephesFopi);
  I j = xsimd::batch_cast<std::int32_t>(y);  // truncation, as vcvttps2dq
  j = (j + I(1)) & I(~1);
  y = xsimd::batch_cast<float>(j);
  const U swap_sign = reinterpret<std::uint32_t>((j & I(4)) << 29);
  const auto sin_poly = (j & I(2)) == I(0);
  x = x + opaque(y * F(kCephesDp1));
  x = x + opaque(y * F(kCephesDp2));
  x = x + opaque(y * F(kCephesDp3));
  const U sign_cos = reinterpret<std::uint32_t>((~(j - I(2)) & I(4)) << 29);
  sign_sin = sign_sin ^ swap_sign;
  const F z = x * x;
  F yc = fmadd(F(kCoscofP0), z, F(kCoscofP1));
  yc = fmadd(yc, z, F(kCoscofP2));
  yc = yc * z;
  yc = fmsub(yc, z, opaque(z * F(0.5f)));
  yc = yc + F(1.0f);
  F ys = fmadd(F(kSincofP0), z, F(kSincofP1));
  ys = fmadd(ys, z, F(kSincofP2));
  ys = ys * z;
  ys = fmadd(ys, x, x);
  // The polynomial selection with masks (and, andnot) as in avx_mathfun, on the bits.
  const I ysi = reinterpret<std::int32_t>(ys), yci = reinterpret<std::int32_t>(yc), zero(0);
  const F ysin2 = reinterpret<float>(xsimd::select(sin_poly, ysi, zero));
  const F ysin1 = reinterpret<float>(xsimd::select(sin_poly, zero, yci));
  const F sin_v = ysin1 + ysin2, cos_v = (yc - ysin1) + (ys - ysin2);
  *s = reinterpret<float>(reinterpret<std::uint32_t>(sin_v) ^ sign_sin);
  *c = reinterpret<float>(reinterpret<std::uint32_t>(cos_v) ^ sign_cos);
}

/// normal_fill_16 on the lanes: u1 = 1 - a, u2 = b -> a = r cos, b = r sin.
inline void box_muller(F* a, F* b) {
  const F u1 = F(1.0f) - *a;
  const F radius = detail::sqrt_ieee(F(-2.0f) * log(u1));
  const F theta = F(kTorchTwoPi) * *b;
  F s, c;
  sincos(theta, &s, &c);
  *a = radius * c;
  *b = radius * s;
}
}  // namespace torch_vec

/// torch's normal_fill_16 on `chunks` consecutive chunks of 16 floats (data[16 c .. 16 c + 16) each), in order.
/// Vector lanes where xsimd's multiply-add rounds as the scalar std::fma does (kFusedFma), else the scalar port.
inline void torch_normal_fill_chunks(float* data, Index chunks) {
  using F = torch_vec::F;
  constexpr Index L = kLanes<float>;
  static_assert(L <= 8 ? 8 % L == 0 : L == 16, "kexue: torch_normal_fill_chunks handles 1, 2, 4, 8 or 16 lanes");
  if constexpr (!kFusedFma) {
    for (Index c = 0; c < chunks; ++c) torch_normal_fill_16_scalar(data + 16 * c);
  } else if constexpr (L <= 8) {
    // A chunk is 8 / L register pairs (u1 from the first 8 values, u2 from the next 8).
    for (Index c = 0; c < chunks; ++c) {
      float* d = data + 16 * c;
      for (Index h = 0; h < 8; h += L) {
        F a = F::load_unaligned(d + h), b = F::load_unaligned(d + 8 + h);
        torch_vec::box_muller(&a, &b);
        a.store_unaligned(d + h);
        b.store_unaligned(d + 8 + h);
      }
    }
  } else {
    // Two chunks per register pair: lanes [0, 8) from chunk c, [8, 16) from chunk c + 1.
    Index c = 0;
    for (; c + 2 <= chunks; c += 2) {
      float* d = data + 16 * c;
      F a = load_halves(d, d + 16), b = load_halves(d + 8, d + 24);
      torch_vec::box_muller(&a, &b);
      store_halves(d, d + 16, a);
      store_halves(d + 8, d + 24, b);
    }
    if (c < chunks) {  // an odd last chunk: its lanes padded with a copy of itself
      float* d = data + 16 * c;
      F a = load_halves(d, d), b = load_halves(d + 8, d + 8);
      torch_vec::box_muller(&a, &b);
      alignas(64) float ra[16], rb[16];
      a.store_aligned(ra);
      b.store_aligned(rb);
      std::memcpy(d, ra, 8 * sizeof(float));
      std::memcpy(d + 8, rb, 8 * sizeof(float));
    }
  }
}

/// torch's normal_fill_16 for one chunk of 16 floats (vector lanes where kFusedFma).
inline void torch_normal_fill_16(float* data) { torch_normal_fill_chunks(data, 1); }

}  // namespace kexue::detail
