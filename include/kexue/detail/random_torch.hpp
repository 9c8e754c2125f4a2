// SPDX-License-Identifier: MIT
#pragma once
// Bit-exact port of the float Box-Muller transform PyTorch (CPU capability AVX2 or AVX512, i.e. every
// x86-64 CPU of the last decade) applies in torch.randn for n >= 16: chunks of 16 uniforms, u1 = 1 - data[j],
// u2 = data[j + 8], radius = sqrt(-2 log u1), theta = 2 pi u2, evaluated with Julien Pommier's Cephes-based
// log256_ps / sincos256_ps (ATen's avx_mathfun.h).
//
// Bit-exactness also depends on which multiply-adds GCC 12 fused when it compiled libtorch (it contracts
// _mm256_mul_ps + _mm256_add_ps into vfmadd at -O2). The fusion pattern below was identified by comparing
// against torch 1.13's output over 100k values: every fused step is an explicit fma here, and every product
// that torch rounded separately goes through opaque() so that our own compiler cannot fuse it either.
// This is a SIMD helper file: it talks to the intrinsics directly because it must mirror intrinsics code.

#include <cmath>
#include <cstdint>
#include <cstring>

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#endif

#include "kexue/core.hpp"

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
// 2.0f * c10::pi<double>, rounded to float as _mm256_set1_ps does.
constexpr float kTorchTwoPi = static_cast<float>(2.0f * 3.14159265358979323846);

/// One lane of log256_ps, with torch's fusion pattern (scalar fallback and test oracle).
inline float torch_log_lane(float x) {
  const bool invalid = x <= 0.0f;
  x = x > bits_float(0x00800000u) ? x : bits_float(0x00800000u);  // _mm256_max_ps(x, min_norm_pos)
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
  std::int32_t j = static_cast<std::int32_t>(y);  // truncation, as _mm256_cvttps_epi32
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

#if defined(__AVX2__) && defined(__FMA__)
inline __m256 opaque(__m256 v) {
#if defined(__GNUC__)
  __asm__("" : "+x"(v));
#endif
  return v;
}

inline __m256 torch_log256(__m256 x) {
  const __m256 one = _mm256_set1_ps(1.0f);
  const __m256 invalid = _mm256_cmp_ps(x, _mm256_setzero_ps(), _CMP_LE_OS);
  x = _mm256_max_ps(x, _mm256_castsi256_ps(_mm256_set1_epi32(0x00800000)));
  __m256i imm0 = _mm256_srli_epi32(_mm256_castps_si256(x), 23);
  x = _mm256_and_ps(x, _mm256_castsi256_ps(_mm256_set1_epi32(~0x7f800000)));
  x = _mm256_or_ps(x, _mm256_set1_ps(0.5f));
  imm0 = _mm256_sub_epi32(imm0, _mm256_set1_epi32(0x7f));
  __m256 e = _mm256_add_ps(_mm256_cvtepi32_ps(imm0), one);
  const __m256 mask = _mm256_cmp_ps(x, _mm256_set1_ps(kCephesSqrtHf), _CMP_LT_OS);
  const __m256 tmp = _mm256_and_ps(x, mask);
  x = _mm256_sub_ps(x, one);
  e = _mm256_sub_ps(e, _mm256_and_ps(one, mask));
  x = _mm256_add_ps(x, tmp);
  const __m256 z = _mm256_mul_ps(x, x);
  __m256 y = _mm256_set1_ps(kCephesLogP[0]);
  for (int k = 1; k < 9; ++k) y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(kCephesLogP[k]));
  y = _mm256_mul_ps(y, x);
  y = _mm256_fmadd_ps(y, z, opaque(_mm256_mul_ps(e, _mm256_set1_ps(kCephesLogQ1))));
  y = _mm256_sub_ps(y, opaque(_mm256_mul_ps(z, _mm256_set1_ps(0.5f))));
  x = _mm256_add_ps(x, y);
  x = _mm256_add_ps(x, opaque(_mm256_mul_ps(e, _mm256_set1_ps(kCephesLogQ2))));
  return _mm256_or_ps(x, invalid);
}

inline void torch_sincos256(__m256 x, __m256* s, __m256* c) {
  const __m256 sign_mask = _mm256_castsi256_ps(_mm256_set1_epi32(static_cast<int>(0x80000000u)));
  __m256 sign_bit_sin = _mm256_and_ps(x, sign_mask);
  x = _mm256_andnot_ps(sign_mask, x);
  __m256 y = _mm256_mul_ps(x, _mm256_set1_ps(kCephesFopi));
  __m256i imm2 = _mm256_cvttps_epi32(y);
  imm2 = _mm256_add_epi32(imm2, _mm256_set1_epi32(1));
  imm2 = _mm256_and_si256(imm2, _mm256_set1_epi32(~1));
  y = _mm256_cvtepi32_ps(imm2);
  __m256i imm4 = imm2;
  __m256i imm0 = _mm256_slli_epi32(_mm256_and_si256(imm2, _mm256_set1_epi32(4)), 29);
  imm2 = _mm256_cmpeq_epi32(_mm256_and_si256(imm2, _mm256_set1_epi32(2)), _mm256_setzero_si256());
  const __m256 swap_sign_bit_sin = _mm256_castsi256_ps(imm0);
  const __m256 poly_mask = _mm256_castsi256_ps(imm2);
  x = _mm256_add_ps(x, opaque(_mm256_mul_ps(y, _mm256_set1_ps(kCephesDp1))));
  x = _mm256_add_ps(x, opaque(_mm256_mul_ps(y, _mm256_set1_ps(kCephesDp2))));
  x = _mm256_add_ps(x, opaque(_mm256_mul_ps(y, _mm256_set1_ps(kCephesDp3))));
  imm4 = _mm256_sub_epi32(imm4, _mm256_set1_epi32(2));
  imm4 = _mm256_andnot_si256(imm4, _mm256_set1_epi32(4));
  imm4 = _mm256_slli_epi32(imm4, 29);
  const __m256 sign_bit_cos = _mm256_castsi256_ps(imm4);
  sign_bit_sin = _mm256_xor_ps(sign_bit_sin, swap_sign_bit_sin);
  const __m256 z = _mm256_mul_ps(x, x);
  __m256 yc = _mm256_fmadd_ps(_mm256_set1_ps(kCoscofP0), z, _mm256_set1_ps(kCoscofP1));
  yc = _mm256_fmadd_ps(yc, z, _mm256_set1_ps(kCoscofP2));
  yc = _mm256_mul_ps(yc, z);
  yc = _mm256_fmsub_ps(yc, z, opaque(_mm256_mul_ps(z, _mm256_set1_ps(0.5f))));
  yc = _mm256_add_ps(yc, _mm256_set1_ps(1.0f));
  __m256 ys = _mm256_fmadd_ps(_mm256_set1_ps(kSincofP0), z, _mm256_set1_ps(kSincofP1));
  ys = _mm256_fmadd_ps(ys, z, _mm256_set1_ps(kSincofP2));
  ys = _mm256_mul_ps(ys, z);
  ys = _mm256_fmadd_ps(ys, x, x);
  const __m256 ysin2 = _mm256_and_ps(poly_mask, ys);
  const __m256 ysin1 = _mm256_andnot_ps(poly_mask, yc);
  const __m256 sin_v = _mm256_add_ps(ysin1, ysin2);
  const __m256 cos_v = _mm256_add_ps(_mm256_sub_ps(yc, ysin1), _mm256_sub_ps(ys, ysin2));
  *s = _mm256_xor_ps(sin_v, sign_bit_sin);
  *c = _mm256_xor_ps(cos_v, sign_bit_cos);
}

inline void torch_normal_fill_16_avx2(float* data) {
  const __m256 u1 = _mm256_sub_ps(_mm256_set1_ps(1.0f), _mm256_loadu_ps(data));
  const __m256 u2 = _mm256_loadu_ps(data + 8);
  const __m256 radius = _mm256_sqrt_ps(_mm256_mul_ps(_mm256_set1_ps(-2.0f), torch_log256(u1)));
  const __m256 theta = _mm256_mul_ps(_mm256_set1_ps(kTorchTwoPi), u2);
  __m256 s, c;
  torch_sincos256(theta, &s, &c);
  _mm256_storeu_ps(data, _mm256_mul_ps(radius, c));
  _mm256_storeu_ps(data + 8, _mm256_mul_ps(radius, s));
}
#endif

/// torch's normal_fill_16 for one chunk of 16 floats, vectorised when compiled for AVX2+FMA.
inline void torch_normal_fill_16(float* data) {
#if defined(__AVX2__) && defined(__FMA__)
  torch_normal_fill_16_avx2(data);
#else
  torch_normal_fill_16_scalar(data);
#endif
}

}  // namespace kexue::detail
