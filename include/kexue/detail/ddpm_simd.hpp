// SPDX-License-Identifier: MIT
#pragma once
// Elementwise DDPM kernels. Every coefficient is computed once per call in double (ddpm.hpp) and rounded to
// T here; the per-element work is two or three FMAs, so these loops are bound by memory bandwidth and the
// only goal is to stream each array exactly once.

#include <algorithm>

#include "kexue/core.hpp"
#include "kexue/detail/simd.hpp"

namespace kexue::detail {

/// The step as out = c0 clamp(ax x + am m) + c1 x + s z (clip), or out = a x + b m + s z (no clip),
/// with x the sample, m the model output and z the noise.
template <class T>
struct DdpmStepCoef {
  T ax, am;      // x0_hat = ax * x + am * m
  T c0, c1;      // posterior mean = c0 * x0_hat + c1 * x
  T fold_x, fold_m;  // without clipping: mean = fold_x * x + fold_m * m
  T s;           // noise scale; 0 means no noise (z is not read)
  bool clip;
  T lo, hi;
};

/// One contiguous range. z may be null when s == 0. out may be the same pointer as x or m (each element
/// is read before it is written, at the same index).
template <class T>
inline void ddpm_step_range(const DdpmStepCoef<T>& c, const T* m, const T* x, const T* z, T* out, Index n) {
  constexpr Index L = kLanes<T>;
  const bool noise = c.s != T(0) && z != nullptr;
  Index i = 0;
  if (c.clip) {
    const Batch<T> ax(c.ax), am(c.am), c0(c.c0), c1(c.c1), s(c.s), lo(c.lo), hi(c.hi);
    for (; i + L <= n; i += L) {
      const Batch<T> xv = load(x + i);
      const Batch<T> x0 = xsimd::min(xsimd::max(xsimd::fma(ax, xv, am * load(m + i)), lo), hi);
      Batch<T> r = xsimd::fma(c0, x0, c1 * xv);
      if (noise) r = xsimd::fma(s, load(z + i), r);
      store(out + i, r);
    }
    for (; i < n; ++i) {
      const T x0 = std::min(std::max(std::fma(c.ax, x[i], c.am * m[i]), c.lo), c.hi);
      T r = std::fma(c.c0, x0, c.c1 * x[i]);
      if (noise) r = std::fma(c.s, z[i], r);
      out[i] = r;
    }
    return;
  }
  const Batch<T> fx(c.fold_x), fm(c.fold_m), s(c.s);
  if (noise) {
    // Two loops instead of a branch per register: the noiseless step is the bandwidth benchmark.
    for (; i + L <= n; i += L)
      store(out + i, xsimd::fma(s, load(z + i), xsimd::fma(fx, load(x + i), fm * load(m + i))));
    for (; i < n; ++i) out[i] = std::fma(c.s, z[i], std::fma(c.fold_x, x[i], c.fold_m * m[i]));
  } else {
    for (; i + L <= n; i += L) store(out + i, xsimd::fma(fx, load(x + i), fm * load(m + i)));
    for (; i < n; ++i) out[i] = std::fma(c.fold_x, x[i], c.fold_m * m[i]);
  }
}

/// out = a * u + b * v over a contiguous range (add_noise, velocity). out may be u or v itself.
template <class T>
inline void axpby_range(T a, const T* u, T b, const T* v, T* out, Index n) {
  constexpr Index L = kLanes<T>;
  const Batch<T> va(a), vb(b);
  Index i = 0;
  for (; i + L <= n; i += L) store(out + i, xsimd::fma(va, load(u + i), vb * load(v + i)));
  for (; i < n; ++i) out[i] = std::fma(a, u[i], b * v[i]);
}

}  // namespace kexue::detail
